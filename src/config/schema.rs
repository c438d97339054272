//! The routing file as written: serde types that mirror `routing.yaml` one to
//! one, with the source position of every value an operator can get wrong.
//!
//! Nothing here is checked beyond its YAML type; `config::validate` turns
//! these into a [`crate::config::Config`] and reports every problem with its
//! line and column. Unknown keys are refused here, so a typo such as
//! `timout:` is an error instead of a silently ignored setting.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::access::{RawAuth, RawCallerLimits, RawLimits, RawTls, RawUpstreamTls};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// Where the gateway listens.
    #[serde(default)]
    pub(crate) listen: Option<Spanned<RawListen>>,
    /// How long in-flight calls may run on after SIGTERM.
    #[serde(default)]
    pub(crate) shutdown_grace: Option<Spanned<String>>,
    /// Which browser origins may call the gateway.
    #[serde(default)]
    pub(crate) cors: Option<Spanned<RawCors>>,
    /// Upstreams by name.
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Routes, in file order.
    pub(crate) routes: Spanned<Vec<Spanned<RawRoute>>>,
    /// Who may call.
    #[serde(default)]
    pub(crate) auth: Option<Spanned<RawAuth>>,
    /// Request size and load limits.
    #[serde(default)]
    pub(crate) limits: Option<Spanned<RawLimits>>,
}

/// `listen:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    /// The gRPC listener's `host:port`.
    #[serde(default)]
    pub(crate) grpc: Option<Spanned<String>>,
    /// The admin listener's `host:port` (metrics and probes), or `off`.
    #[serde(default)]
    pub(crate) metrics: Option<Spanned<String>>,
    /// TLS (and client certificates) on the front listener.
    #[serde(default)]
    pub(crate) tls: Option<Spanned<RawTls>>,
    /// The OpenAI-compatible HTTP listener's `host:port`; none when absent.
    #[serde(default)]
    pub(crate) http: Option<Spanned<String>>,
}

/// `cors:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    /// Origins whose pages may call, or `*` alone for any.
    #[serde(default)]
    pub(crate) allowed_origins: Vec<Spanned<String>>,
}

/// One entry of `upstreams:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// Which wire the upstream speaks.
    pub(crate) kind: Spanned<String>,
    /// Base URLs of its servers.
    #[serde(default)]
    pub(crate) endpoints: Vec<Spanned<String>>,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub(crate) api_key_env: Option<Spanned<String>>,
    /// Cap on one whole call.
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// Longest wait for the first token.
    #[serde(default)]
    pub(crate) first_token_timeout: Option<Spanned<String>>,
    /// Longest silence between two tokens.
    #[serde(default)]
    pub(crate) idle_timeout: Option<Spanned<String>>,
    /// Simulator settings (`kind: sim`).
    #[serde(default)]
    pub(crate) sim: Option<Spanned<RawSim>>,
    /// Endpoints from DNS instead of `endpoints:`.
    #[serde(default)]
    pub(crate) discover: Option<Spanned<RawDiscover>>,
    /// Cap on calls in flight per endpoint.
    #[serde(default)]
    pub(crate) max_in_flight: Option<Spanned<u32>>,
    /// Passive outlier ejection.
    #[serde(default)]
    pub(crate) outlier: Option<Spanned<RawOutlier>>,
    /// Active health checks.
    #[serde(default)]
    pub(crate) health_check: Option<Spanned<RawHealthCheck>>,
    /// Extra HTTP headers for every request; `${VAR}` in a value reads an
    /// environment variable.
    #[serde(default)]
    pub(crate) headers: Option<Spanned<HashMap<Spanned<String>, Spanned<String>>>>,
    /// `kind: openai`: `max_tokens` or `max_completion_tokens`.
    #[serde(default)]
    pub(crate) max_tokens_field: Option<Spanned<String>>,
    /// `kind: anthropic`: max_tokens sent when the caller sets none.
    #[serde(default)]
    pub(crate) default_max_tokens: Option<Spanned<u32>>,
    /// `kind: ollama`: how long Ollama keeps the model loaded after a call.
    #[serde(default)]
    pub(crate) keep_alive: Option<Spanned<String>>,
    /// A private CA for its `https://` endpoints.
    #[serde(default)]
    pub(crate) tls: Option<Spanned<RawUpstreamTls>>,
}

/// `discover:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscover {
    /// `name:port` to resolve.
    pub(crate) dns: Spanned<String>,
    /// How often to resolve it.
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
    /// `http` or `https` for the discovered addresses.
    #[serde(default)]
    pub(crate) scheme: Option<Spanned<String>>,
}

/// `outlier:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    /// Failures in a row that eject an endpoint.
    #[serde(default)]
    pub(crate) consecutive_failures: Option<Spanned<u32>>,
    /// First ejection's length; doubles on each repeat.
    #[serde(default)]
    pub(crate) base_ejection: Option<Spanned<String>>,
    /// Longest ejection.
    #[serde(default)]
    pub(crate) max_ejection: Option<Spanned<String>>,
    /// Largest share of the endpoints that may be ejected at once.
    #[serde(default)]
    pub(crate) max_ejected_share: Option<Spanned<f64>>,
}

/// `health_check:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    /// Path probed with GET.
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    /// Time between probes.
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
    /// Longest wait for one probe.
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// Failed probes in a row that take an endpoint out.
    #[serde(default)]
    pub(crate) unhealthy_after: Option<Spanned<u32>>,
    /// Passed probes in a row that bring it back.
    #[serde(default)]
    pub(crate) healthy_after: Option<Spanned<u32>>,
}

/// `retry:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// Attempts in all, the first included.
    #[serde(default)]
    pub(crate) attempts: Option<Spanned<u32>>,
    /// First back-off between attempts.
    #[serde(default)]
    pub(crate) backoff: Option<Spanned<String>>,
    /// Retries allowed as a percentage of calls.
    #[serde(default)]
    pub(crate) budget_percent: Option<Spanned<f64>>,
}

/// `sim:` of a simulated upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSim {
    /// Time to first token.
    #[serde(default)]
    pub(crate) ttft: Option<Spanned<String>>,
    /// Generation speed; 0 means as fast as possible.
    #[serde(default)]
    pub(crate) tokens_per_second: Option<Spanned<f64>>,
    /// Tokens per answer when max_tokens does not cut it shorter.
    #[serde(default)]
    pub(crate) output_tokens: Option<Spanned<u32>>,
    /// Share of calls that fail, 0 to 1.
    #[serde(default)]
    pub(crate) error_rate: Option<Spanned<f64>>,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// The name clients send.
    pub(crate) model: Spanned<String>,
    /// Other names for the same route.
    #[serde(default)]
    pub(crate) aliases: Vec<Spanned<String>>,
    /// Where calls go, by weight.
    pub(crate) pools: Vec<Spanned<RawPool>>,
    /// Retries on other endpoints and pools.
    #[serde(default)]
    pub(crate) retry: Option<Spanned<RawRetry>>,
    /// Models tried in order when every pool of this route failed.
    #[serde(default)]
    pub(crate) fallback: Vec<Spanned<String>>,
    /// A larger-context model for calls this route's model rejects as too
    /// long.
    #[serde(default)]
    pub(crate) context_fallback: Option<Spanned<String>>,
    /// Rate and concurrency limits on the route, across all callers.
    #[serde(default)]
    pub(crate) limits: Option<Spanned<RawCallerLimits>>,
}

/// One entry of a route's `pools:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    /// The upstream's name under `upstreams:`.
    pub(crate) upstream: Spanned<String>,
    /// Share of the route's calls; 0 disables the pool.
    #[serde(default)]
    pub(crate) weight: Option<Spanned<u32>>,
    /// The model name the upstream knows.
    #[serde(default)]
    pub(crate) model: Option<Spanned<String>>,
}
