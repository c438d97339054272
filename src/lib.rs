//! llmgate: a cluster-wide LLM gateway.
//!
//! Services call one gRPC endpoint; the gateway routes each call by model
//! name to weighted pools of upstreams (vLLM and other OpenAI-compatible
//! servers, Ollama, Anthropic, or the built-in simulator) and streams the
//! tokens back.
//!
//! # Layout
//! The modules follow the path of a call:
//! - [`frontend`]: the `llm.v1.LLMService` gRPC service (grpc-web too,
//!   for browsers), the OpenAI-compatible HTTP API and Anthropic's Messages
//!   API beside it; wire → [`chat`].
//!   All stand on one edge (request id, key checked before the body,
//!   deadline, refusals recorded, listings) and one body guard (size and
//!   idle limits).
//! - [`stack`]: tower layers every call passes: API keys and their models,
//!   request limits, calls in flight (shed when full), requests and tokens
//!   per minute, and the caller's deadline; observation (metrics and the
//!   access log) outermost.
//! - [`route`]: the routing table and the router service (model → route →
//!   pool by weight), with retries, fallbacks and the panic pick inside the
//!   deadline, and the continuation of a stream that broke mid-answer; it
//!   calls an upstream.
//! - [`balance`]: the [`Upstream`](balance::Upstream) (its time limits and
//!   its balancer), P2C over its endpoints per call (on the engines' own
//!   load when scraped, by prompt prefix when a route asks), each
//!   endpoint's load, discovery, outlier ejection per endpoint and per
//!   model, health-check and reconnect probes.
//! - [`backend`]: what an endpoint calls: the adapter contract
//!   ([`Dispatch`](backend::Dispatch)), one `Adapter` trait for the HTTP
//!   wires (`openai`, `ollama`, `anthropic`) plus the in-process `sim`,
//!   each mapping its wire into [`chat`], and SSE/NDJSON decoding.
//!
//! Each of these imports only modules to its right (and those beside
//! them), never one to its left.
//!
//! Beside them: [`chat`] (the internal vocabulary), [`error`] (the one error
//! type), [`config`] (the routing file), [`reload`] (live reloads of it),
//! [`telemetry`] (metrics, health, access logs and the admin listener),
//! [`state`] (limits shared by every replica through Redis),
//! [`sim`] (the simulated model and its HTTP server), [`tls`] (rustls for
//! the listener and upstreams), [`server`] (`run`, and each connection's
//! handshake and limits),
//! [`client`] (the `llmgate chat` client) and [`proto`] (generated code).

pub mod backend;
pub mod balance;
/// Entry points for the micro-benchmarks of the per-token path
/// (`benches/token_path.rs`); not API.
#[doc(hidden)]
pub mod bench_support;
pub mod chat;
pub mod client;
pub mod config;
pub mod error;
pub mod frontend;
pub mod proto;
pub mod reload;
pub(crate) mod route;
pub mod server;
pub mod sim;
pub(crate) mod stack;
pub mod state;
pub mod telemetry;
pub mod tls;

pub use server::{Listeners, run};
