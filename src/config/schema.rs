//! The routing file as written: serde types that mirror `routing.yaml` one to
//! one, with the source position of every value an operator can get wrong.
//!
//! Nothing here is checked beyond its YAML type; `config::validate` turns
//! these into a [`crate::config::Config`] and reports every problem with its
//! line and column. Unknown keys are refused here, so a typo such as
//! `timout:` is an error instead of a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

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
    /// Upstreams by name.
    pub(crate) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    /// Routes, in file order.
    pub(crate) routes: Spanned<Vec<Spanned<RawRoute>>>,
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
