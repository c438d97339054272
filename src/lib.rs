//! llmgate: a cluster-wide LLM gateway.
//!
//! Services call one gRPC endpoint; the gateway routes each call by model
//! name to a weighted pool of upstreams (vLLM and other OpenAI-compatible
//! servers, or the built-in simulator) and streams the tokens back.
//!
//! # Layout
//! The modules follow the path of a call:
//! - [`frontend`]: the `llm.v1.LLMService` gRPC service; wire → [`chat`].
//! - [`stack`]: tower layers every call passes (observation: metrics and
//!   the access log; the caller's deadline).
//! - [`route`]: the routing table and the router service (model → route →
//!   pool by weight).
//! - [`balance`]: choosing an endpoint inside an upstream, per call.
//! - [`backend`]: upstream adapters (`openai`, `sim`) and SSE decoding.
//!
//! Beside them: [`chat`] (the internal vocabulary), [`error`] (the one error
//! type), [`config`] (the routing file), [`telemetry`] (metrics, health,
//! access logs and the admin listener), [`sim`] (the simulated model and
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
pub mod route;
pub mod server;
pub mod sim;
pub mod stack;
pub mod telemetry;

pub use server::{Listeners, run};
