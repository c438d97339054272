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

/// The protobuf codec of every `llm.v1` RPC, tonic-prost's own with a small
/// first buffer: tonic keeps an encode buffer per open call for as long as
/// its stream lasts, 8 KiB by default, where a streamed token's message is
/// tens of bytes. With 10,000 streams open that default alone would be
/// 80 MiB; the buffer still grows for a large message when it must.
#[derive(Debug, Clone, Default)]
pub struct LeanCodec<T, U>(tonic_prost::ProstCodec<T, U>);

/// First size of a call's encode buffer, which lives as long as the call:
/// a streamed token's message is 10 to 30 bytes and its last one (usage,
/// reason, model) under 100, and the buffer is reused once the connection
/// has written what was taken from it.
const ENCODE_BUFFER_SIZE: usize = 128;
/// First size of a call's decode buffer, dropped once a unary or
/// server-streaming request is read.
const DECODE_BUFFER_SIZE: usize = 512;
/// Encoded bytes gathered before they are handed to the connection even if
/// more messages are ready: tonic's default.
const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(tonic::codec::BufferSettings::new(
            ENCODE_BUFFER_SIZE,
            CODEC_YIELD_THRESHOLD,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(tonic::codec::BufferSettings::new(
            DECODE_BUFFER_SIZE,
            CODEC_YIELD_THRESHOLD,
        ))
    }
}
