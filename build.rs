//! Compiles `proto/llm/v1/llm.proto` with a pure-Rust proto compiler
//! (`protox`), so a fresh machine needs no system `protoc`. The encoded
//! descriptor set is kept too, for gRPC reflection.
//!
//! It also generates a client from the original, unextended contract
//! (`tests/proto/seed`) into `OUT_DIR/seed`, which the integration tests use
//! to prove that old clients keep working.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let proto = "proto/llm/v1/llm.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    std::fs::write(
        out_dir.join("llm_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Every RPC's codec is `proto::LeanCodec` (tonic-prost's with smaller
    // per-call buffers).
    tonic_prost_build::configure()
        .codec_path("crate::proto::LeanCodec")
        .compile_fds(descriptors)?;

    let seed = "tests/proto/seed/llm/v1/llm.proto";
    println!("cargo:rerun-if-changed={seed}");
    let seed_out = out_dir.join("seed");
    std::fs::create_dir_all(&seed_out)?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(&seed_out)
        .compile_fds(protox::compile([seed], ["tests/proto/seed"])?)?;
    Ok(())
}
