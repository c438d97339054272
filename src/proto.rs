//! The generated `llm.v1` gRPC code. Only the gRPC front end and clients
//! (`llmgate chat`, tests, benchmarks) use these types; the rest of the
//! gateway speaks `crate::chat`.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// `package llm.v1`.
pub mod llm {
    pub mod v1 {
        tonic::include_proto!("llm.v1");
    }
}

pub use llm::v1::*;

/// The encoded descriptors of `llm.proto`, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/llm_descriptor.bin"));
