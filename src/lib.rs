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
//!   for browsers) and the OpenAI-compatible HTTP API; wire → [`chat`].
//! - [`stack`]: tower layers every call passes (the caller's deadline).
//! - [`route`]: the routing table and the router service (model → route →
//!   pool by weight).
//! - [`balance`]: choosing an endpoint inside an upstream, per call.
//! - [`backend`]: upstream adapters (`openai`, `ollama`, `anthropic`,
//!   `sim`), each mapping its wire into [`chat`], and SSE/NDJSON decoding.
//!
//! Beside them: [`chat`] (the internal vocabulary), [`error`] (the one error
//! type), [`config`] (the routing file), [`reload`] (live reloads of it),
//! [`sim`] (the simulated model and
//! its HTTP server), [`server`] (`run`), [`client`] (the `llmgate chat`
//! client) and [`proto`] (generated code).

pub mod backend;
pub mod balance;
pub mod chat;
pub mod client;
pub mod config;
pub mod error;
pub mod frontend;
pub mod proto;
pub mod reload;
pub mod route;
pub mod server;
pub mod sim;
pub mod stack;

pub use server::{Listeners, run};
