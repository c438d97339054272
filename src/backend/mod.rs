//! Backend adapters: the last stage of a call, where the internal request
//! becomes an upstream's wire format and its answer becomes a token stream.
//!
//! What a backend offers the balancer to its left is [`dispatch`]: an
//! upstream's [`Backend`] binds itself to each endpoint's base URL and
//! answers each [`EndpointCall`] with a stream. Nothing here knows about
//! balancing, routing or the stack.
//!
//! Each wire lives in its own module (`openai`, `ollama`, `anthropic`, the
//! in-process `sim`) and maps into the one internal vocabulary, so callers
//! see the same contract whichever pool served them. The three HTTP wires
//! are each an `Adapter` (`adapter`: request body, stream dialect, whole
//! answer), sent by one generic function; what they do alike (sending,
//! error mapping, driving a streamed body) is in `wire`; the framings they
//! stream in are [`sse`] and [`ndjson`]; the pooled client, and the probe
//! request health checks send, are in [`http`].

mod adapter;
mod anthropic;
pub mod dispatch;
pub mod http;
pub mod ndjson;
mod ollama;
mod openai;
mod sim;
pub mod sse;
mod wire;

pub use dispatch::{Backend, Binding, Dispatch, EndpointCall};
pub use sim::IN_PROCESS_ENDPOINT;
