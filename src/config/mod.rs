//! The routing file: parse → check → a [`Config`] the rest of the gateway
//! can trust.
//!
//! Checking collects every problem in the file, each with its line and
//! column, instead of stopping at the first, so an operator fixes a broken
//! file in one pass. A file that fails changes nothing: callers keep the
//! table they had.
//!
//! # Layout
//! One file per topic of the routing file, in the file's own order:
//! - `listen`: `listen:` addresses and `cors:`.
//! - `tls`: `listen.tls` and each upstream's `tls.ca` (files read at load).
//! - `auth`: `auth:` keys, and the rule that an exposed listener says who
//!   may call it.
//! - `limits`: top-level `limits:` and the `limits:` of keys and routes.
//! - `upstream`, `headers`, `resilience`: `upstreams:`, their `headers:`,
//!   and their discovery, ejection and health checks (and routes' retries).
//! - `route`: `routes:`, pools and fallbacks.
//! - `state`: `state:`, the store replicas share limits through.
//! - `check`: the `Checker` driver, the problem types, and the
//!   checks every topic shares (durations).
//! - `describe`: the summary `llmgate check` prints.
//!
//! **Where a type lives:** each topic file holds, in this order, its raw
//! serde types (as written, `Raw*`, `deny_unknown_fields`, with positions),
//! its validated types (what the gateway uses), and its `impl Checker`
//! block that turns one into the other. Only the whole file's
//! `RawConfig` and [`Config`] live here. The rest of the crate names
//! everything as `crate::config::X`; the re-exports below keep it so.

mod auth;
mod check;
mod describe;
mod headers;
mod limits;
mod listen;
mod placement;
mod queue;
pub(crate) mod resilience;
mod route;
mod state;
#[cfg(test)]
mod tests;
mod tls;
mod upstream;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{MessageFormatter as _, Spanned, UserMessageFormatter};

pub(crate) use auth::{AuthConfig, KeyDigest, KeySource, ModelGrant};
pub use check::{ConfigError, Problem};
pub use describe::{describe, warnings};
pub use limits::DEFAULT_MAX_STREAMS_PER_CONNECTION;
pub(crate) use limits::{CallerLimits, ConnectionLimits, Limits, human_size};
pub use listen::ListenConfig;
pub(crate) use listen::{CorsConfig, METRICS_OFF};
pub(crate) use placement::{EngineMetrics, PrefixAffinity};
pub(crate) use queue::{Priority, QueueConfig};
pub(crate) use resilience::{Discovery, EndpointPolicy, HealthCheck, OutlierPolicy, RetryPolicy};
pub(crate) use route::RouteConfig;
pub(crate) use state::{OnStoreError, RedisConfig, StateConfig};
pub(crate) use upstream::{
    Continuation, KeepAlive, MaxTokensField, Secret, UpstreamConfig, UpstreamKind, UpstreamTimeouts,
};
// Named by this module's tests only.
#[cfg(test)]
use {
    check::MAX_DURATION,
    limits::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGES},
    listen::{DEFAULT_GRPC_LISTEN, DEFAULT_METRICS_LISTEN},
    route::PoolConfig,
    tls::PemFile,
    upstream::{DEFAULT_ANTHROPIC_MAX_TOKENS, DEFAULT_UPSTREAM_TIMEOUT},
};

use auth::RawAuth;
use check::Checker;
use limits::RawLimits;
use listen::{RawCors, RawListen};
use route::RawRoute;
use state::RawState;
use upstream::RawUpstream;

/// How long in-flight calls may finish after a shutdown signal, by default.
pub(crate) const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

// === raw (as written) ===

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
    /// Where limits are counted.
    #[serde(default)]
    pub(crate) state: Option<Spanned<RawState>>,
}

// === validated ===

/// A validated routing file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener addresses.
    pub listen: ListenConfig,
    /// How long in-flight calls may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// Which browser pages may call the gateway.
    pub(crate) cors: CorsConfig,
    /// Upstreams by name.
    pub(crate) upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub(crate) routes: Vec<RouteConfig>,
    /// Who may call (`auth:`).
    pub(crate) auth: AuthConfig,
    /// What a request may hold and how much the gateway takes on
    /// (`limits:`).
    pub(crate) limits: Limits,
    /// Where the limits of keys and routes are counted (`state:`): in each
    /// replica alone, or shared through Redis.
    pub(crate) state: StateConfig,
}

// === impl Config ===

impl Config {
    /// Reads and validates a routing file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|err| ConfigError::unreadable(&source, &err))?;
        Config::parse(&text, &source, &|name| std::env::var(name).ok())
    }

    /// Parses and validates routing-file text. `env` looks up environment
    /// variables (a parameter so tests need not touch the process
    /// environment).
    pub fn parse(
        text: &str,
        source: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source: source.to_string(),
            problems,
        };
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|err| {
            // The library's Display carries its own position (and advice
            // aimed at programmers); take the bare message so the
            // `file:line:column:` prefix is the one place a position appears.
            let message: String = UserMessageFormatter
                .format_message(&err)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            fail(vec![Problem::at(err.location(), message)])
        })?;
        let mut checker = Checker::default();
        let config = checker.config(raw, env);
        if checker.problems.is_empty() {
            Ok(config)
        } else {
            checker.problems.sort_by_key(|p| (p.line, p.column));
            Err(fail(checker.problems))
        }
    }

    /// Every name a caller can send, with the route it belongs to.
    #[cfg(test)]
    pub(crate) fn model_names(&self) -> impl Iterator<Item = (&str, &RouteConfig)> {
        self.routes.iter().flat_map(|route| {
            std::iter::once(route.model.as_str())
                .chain(route.aliases.iter().map(String::as_str))
                .map(move |name| (name, route))
        })
    }
}
