//! Compiles `proto/llm/v1/llm.proto` with a pure-Rust proto compiler
//! (`protox`), so a fresh machine needs no system `protoc`. The encoded
//! descriptor set is kept too, for gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/llm/v1/llm.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("llm_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::compile_fds(descriptors)?;
    Ok(())
}
