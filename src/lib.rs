//! llmgate: a cluster-wide LLM gateway.
//!
//! Services call one gRPC endpoint; the gateway routes each call by model
//! name to weighted pools of upstreams (vLLM and other OpenAI-compatible
//! servers, Ollama, Anthropic, or the built-in simulator) and streams the
//! tokens back.
//!
//! # Layout
//! The modules follow the path of a call:
//! - `frontend`: the `llm.v1.LLMService` gRPC service (grpc-web too,
//!   for browsers), the OpenAI-compatible HTTP API and Anthropic's Messages
//!   API beside it; wire → `chat`.
//!   All stand on one edge (request id, key checked before the body,
//!   deadline, refusals recorded, listings) and one body guard (size and
//!   idle limits).
//! - `stack`: tower layers every call passes: API keys and their models,
//!   request limits, calls in flight (shed when full), requests and tokens
//!   per minute, and the caller's deadline; observation (metrics and the
//!   access log) outermost.
//! - `route`: the routing table and the router service (model → route →
//!   pool by weight), with retries, fallbacks and the panic pick inside the
//!   deadline, and the continuation of a stream that broke mid-answer; it
//!   calls an upstream.
//! - `balance`: the `Upstream` (its time limits and its balancer), P2C
//!   over its endpoints per call (on the engines' own load when scraped,
//!   by prompt prefix when a route asks), each endpoint's load, discovery,
//!   outlier ejection per endpoint and per model, health-check and
//!   reconnect probes.
//! - `backend`: what an endpoint calls: the adapter contract (`Dispatch`),
//!   one `Adapter` trait for the HTTP wires (`openai`, `ollama`,
//!   `anthropic`) plus the in-process `sim`, each mapping its wire into
//!   `chat`, and SSE/NDJSON decoding.
//!
//! Each of these imports only modules to its right (and those beside
//! them), never one to its left. They are crate-private (see
//! `cargo doc --document-private-items`).
//!
//! Beside them: `chat` (the internal vocabulary), `error` (the one error
//! type), [`config`] (the routing file), `reload` (live reloads of it),
//! `telemetry` (metrics, health, access logs and the admin listener),
//! `state` (limits shared by every replica through Redis),
//! [`sim`] (the simulated model and its HTTP server), `tls` (rustls for
//! the listener and upstreams), `server` (`run`, and each connection's
//! handshake and limits),
//! [`client`] (the `llmgate chat` client) and [`proto`] (generated code).
//!
//! # Public API
//! Deliberately small: what an embedder (and the `llmgate` binary, which
//! is a separate crate) needs to serve, check and call the gateway.
//! - [`proto`]: the `llm.v1` contract, for clients;
//! - [`config`]: load and check a routing file ([`config::Config`],
//!   [`config::describe`], [`config::warnings`]);
//! - [`run`], [`run_with`], [`Server`] and [`Listeners`]: serve it (the
//!   caller binds), with [`Connectors`] and [`Resolve`] for the outside
//!   world, [`AdminKey`] for `POST /-/reload`, and the [`Reloader`] a
//!   server watching its routing file exposes;
//! - [`logging`], [`client`] and [`sim`]: the log formats, the
//!   `llmgate chat` client and the simulated model behind `llmgate sim`.
//!
//! Every other module is `pub(crate)`, and the `unreachable_pub` lint keeps
//! `pub` for what is reachable from here. `internals` (hidden from the
//! docs) lends a few internals to the integration tests and benchmarks.

pub(crate) mod backend;
pub(crate) mod balance;
/// Entry points for the micro-benchmarks of the per-token path
/// (`benches/token_path.rs`); not API.
#[doc(hidden)]
pub mod bench_support;
pub(crate) mod chat;
pub mod client;
pub mod config;
pub(crate) mod error;
pub(crate) mod frontend;
pub mod proto;
pub(crate) mod reload;
pub(crate) mod route;
pub(crate) mod server;
pub mod sim;
pub(crate) mod stack;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod tls;

pub use balance::discover::Resolve;
pub use balance::upstream::Connectors;
pub use reload::{ReloadOutcome, Reloader};
pub use server::admin::AdminKey;
pub use server::{Listeners, ServeError, Server, run, run_with};
pub use telemetry::logging;

/// Internals lent to the integration tests (`tests/it`) and benchmarks
/// (`benches/`): they are separate crates, so they see only `pub` items,
/// and what they check (stream decoders, the body guard, metric names,
/// the shared limit store) is not part of the public API.
///
/// Not a stable API: anything here may change or go without notice.
#[doc(hidden)]
pub mod internals {
    pub use crate::backend::{ndjson, sse};
    pub use crate::config::resilience::Discovery;
    pub use crate::frontend::body::{BodyLimits, GuardedBody};
    pub use crate::server::admin::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
    pub use crate::state::SharedLimits;
    pub use crate::telemetry::call::ACCESS_LOG_TARGET;
    pub use crate::tls::{client_config_trusting, server_config};

    use std::sync::Arc;

    use crate::Reloader;
    use crate::balance::Upstream;
    use crate::config::{Config, RedisConfig};

    /// Metric names and the catalog `/metrics` is described from.
    pub mod metrics {
        pub use crate::telemetry::metrics::{
            CALL_DURATION_SECONDS, CALLS_IN_FLIGHT, CALLS_TOTAL, CATALOG, INPUT_TOKENS_TOTAL,
            INTER_TOKEN_LATENCY_SECONDS, MetricKind, OUTPUT_TOKENS_TOTAL,
            TIME_TO_FIRST_TOKEN_BUCKETS, TIME_TO_FIRST_TOKEN_SECONDS, UNKNOWN, install,
        };
    }

    /// Each upstream of `config` by name, with how its endpoints are found.
    pub fn discovery(config: &Config) -> impl Iterator<Item = (&str, &Discovery)> {
        config
            .upstreams
            .iter()
            .map(|(name, upstream)| (name.as_str(), &upstream.discovery))
    }

    /// The upstream `name` in the table `reloader` keeps, to see what a
    /// reload kept, rebuilt or let go.
    pub fn upstream(reloader: &Reloader, name: &str) -> Option<Arc<Upstream>> {
        reloader.table().upstream(name).cloned()
    }

    /// `state.redis` of `config`, when set.
    pub fn redis(config: &Config) -> Option<&RedisConfig> {
        config.state.redis.as_ref()
    }
}
