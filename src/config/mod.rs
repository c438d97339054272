//! The routing file: parse → validate → a [`Config`] the rest of the gateway
//! can trust.
//!
//! Validation collects every problem in the file, each with its line and
//! column, instead of stopping at the first, so an operator fixes a broken
//! file in one pass. A file that fails changes nothing: callers keep the
//! table they had.

mod schema;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::{Location, MessageFormatter as _, Spanned, UserMessageFormatter};

use crate::sim::SimSettings;
use schema::{RawConfig, RawPool, RawRoute, RawSim, RawUpstream};

/// Where the gRPC front end listens when the file does not say.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50051";
/// Where `/metrics`, `/healthz` and `/readyz` are served when the file does
/// not say: loopback, so nothing is exposed by accident; a pod sets
/// `0.0.0.0:9090` so Prometheus and the kubelet can reach it.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// The `listen.metrics` value that turns the admin listener off.
pub const METRICS_OFF: &str = "off";
/// How long in-flight calls may finish after a shutdown signal, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Cap on one upstream call when the file sets none: long enough for any
/// real generation, short enough that a hung upstream cannot hold a call
/// (and its caller) forever when the caller sent no deadline.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);

/// A validated routing file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener addresses.
    pub listen: ListenConfig,
    /// How long in-flight calls may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
}

/// `listen:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// The gRPC front end's address.
    pub grpc: SocketAddr,
    /// The admin listener's address (metrics and probes); `None` when the
    /// file says `off`.
    pub metrics: Option<SocketAddr>,
}

/// One upstream: a set of servers speaking one wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Its name in the file, used in logs and errors.
    pub name: String,
    /// The wire it speaks.
    pub kind: UpstreamKind,
    /// Base URLs of its servers (empty for `sim`).
    pub endpoints: Vec<http::Uri>,
    /// The bearer token read from `api_key_env` when the file was loaded.
    pub api_key: Option<Secret>,
    /// Time limits on calls to it.
    pub timeouts: UpstreamTimeouts,
    /// How the simulator behaves (`kind: sim`).
    pub sim: SimSettings,
}

/// The wire formats an upstream can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// OpenAI's chat completions API: vLLM, OpenAI and compatible servers.
    OpenAi,
    /// The built-in simulator, in process.
    Sim,
}

/// Time limits on one upstream's calls; together with the caller's deadline
/// they make sure no call can hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Cap on one whole call.
    pub total: Duration,
    /// Longest wait for the first token of a stream.
    pub first_token: Option<Duration>,
    /// Longest silence between two tokens of a stream.
    pub idle: Option<Duration>,
}

/// One route: a model name and the pools that serve it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The name clients send.
    pub model: String,
    /// Other names for the same route.
    pub aliases: Vec<String>,
    /// Where its calls go.
    pub pools: Vec<PoolConfig>,
}

/// One pool of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// The upstream's name.
    pub upstream: String,
    /// Share of the route's calls.
    pub weight: u32,
    /// The model name the upstream knows.
    pub model: String,
}

/// A credential. Its `Debug` never prints the value, so it cannot leak
/// through a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// A routing file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file's name as given, for the `file:line:column` prefix.
    pub source: String,
    /// Each problem, in file order.
    pub problems: Vec<Problem>,
}

/// One problem in a routing file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the file has one for it.
    pub line: u64,
    /// 1-based column, when the file has one for it.
    pub column: u64,
    /// What is wrong and how to fix it.
    pub message: String,
}

// === impl Config ===

impl Config {
    /// Reads and validates a routing file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            source: source.clone(),
            problems: vec![Problem::at(None, format!("cannot read the file: {err}"))],
        })?;
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
    pub fn model_names(&self) -> impl Iterator<Item = (&str, &RouteConfig)> {
        self.routes.iter().flat_map(|route| {
            std::iter::once(route.model.as_str())
                .chain(route.aliases.iter().map(String::as_str))
                .map(move |name| (name, route))
        })
    }
}

/// A human summary of what a config routes, as `llmgate check` prints it.
/// Secrets are never shown; only the variable they came from.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "listen grpc {}", config.listen.grpc);
    let _ = match config.listen.metrics {
        Some(addr) => writeln!(out, "listen metrics {addr} (/metrics, /healthz, /readyz)"),
        None => writeln!(out, "listen metrics {METRICS_OFF}"),
    };
    for up in config.upstreams.values() {
        let kind = match up.kind {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Sim => "sim",
        };
        let endpoints: Vec<String> = up.endpoints.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "upstream {} ({kind}) {}{}",
            up.name,
            if endpoints.is_empty() {
                "in process".to_string()
            } else {
                endpoints.join(", ")
            },
            if up.api_key.is_some() {
                ", with api key"
            } else {
                ""
            },
        );
    }
    for route in &config.routes {
        let aliases = if route.aliases.is_empty() {
            String::new()
        } else {
            format!(" (aliases: {})", route.aliases.join(", "))
        };
        let _ = writeln!(out, "route {}{aliases}", route.model);
        let total: u64 = route.pools.iter().map(|p| u64::from(p.weight)).sum();
        for pool in &route.pools {
            let share = if total == 0 {
                0.0
            } else {
                100.0 * f64::from(pool.weight) / total as f64
            };
            let _ = writeln!(
                out,
                "  -> {} as '{}', weight {} ({share:.0}%)",
                pool.upstream, pool.model, pool.weight
            );
        }
    }
    out
}

// === impl Secret ===

impl Secret {
    /// Wraps a credential.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The credential itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// === impl ConfigError / Problem ===

impl Problem {
    fn at(location: Option<Location>, message: impl Into<String>) -> Self {
        let (line, column) = location.map_or((0, 0), |l| (l.line(), l.column()));
        Problem {
            line,
            column,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if problem.line > 0 {
                write!(f, "{}:{}:{}: ", self.source, problem.line, problem.column)?;
            } else {
                write!(f, "{}: ", self.source)?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === Checker ===

/// Walks the raw file, collecting problems and building the validated
/// config from whatever is usable, so that one pass reports everything.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(Some(at.referenced), message));
    }

    fn config(&mut self, raw: RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let grpc = raw
            .listen
            .as_ref()
            .and_then(|listen| listen.value.grpc.as_ref())
            .and_then(|addr| self.socket_addr(addr, "0.0.0.0:50051"));
        let default_grpc = DEFAULT_GRPC_LISTEN
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
        let metrics = match raw
            .listen
            .as_ref()
            .and_then(|listen| listen.value.metrics.as_ref())
        {
            Some(addr) if addr.value.trim() == METRICS_OFF => None,
            Some(addr) => self.socket_addr(addr, "0.0.0.0:9090 (or off to disable)"),
            None => DEFAULT_METRICS_LISTEN.parse().ok(),
        };
        let shutdown_grace = raw
            .shutdown_grace
            .as_ref()
            .and_then(|d| self.duration(d))
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE);
        // Every upstream the file defines, even one with problems of its
        // own: a pool naming it is not also "unknown".
        let defined_upstreams: Vec<String> = raw.upstreams.keys().cloned().collect();
        let known_upstreams: Vec<&str> = defined_upstreams.iter().map(String::as_str).collect();
        let upstreams: BTreeMap<String, UpstreamConfig> = raw
            .upstreams
            .into_iter()
            .filter_map(|(name, up)| {
                let checked = self.upstream(&name, up, env)?;
                Some((name, checked))
            })
            .collect();
        if raw.routes.value.is_empty() {
            self.report(
                &raw.routes,
                "routes: is empty; add at least one route so the gateway can serve a model",
            );
        }
        let mut names_seen: HashMap<String, Location> = HashMap::new();
        let routes = raw
            .routes
            .value
            .into_iter()
            .map(|route| self.route(route, &known_upstreams, &mut names_seen))
            .collect();
        Config {
            listen: ListenConfig {
                grpc: grpc.unwrap_or(default_grpc),
                metrics,
            },
            shutdown_grace,
            upstreams,
            routes,
        }
    }

    fn upstream(
        &mut self,
        name: &str,
        raw: Spanned<RawUpstream>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<UpstreamConfig> {
        let at = raw.referenced;
        let up = raw.value;
        let kind = match up.kind.value.as_str() {
            "openai" => Some(UpstreamKind::OpenAi),
            "sim" => Some(UpstreamKind::Sim),
            other => {
                self.report(
                    &up.kind,
                    format!(
                        "upstream '{name}': unknown kind '{other}'; expected openai or sim \
                         (ollama and anthropic are not supported yet)"
                    ),
                );
                None
            }
        };
        let endpoints: Vec<http::Uri> = up.endpoints.iter().filter_map(|e| self.url(e)).collect();
        match kind {
            Some(UpstreamKind::OpenAi) if up.endpoints.is_empty() => {
                self.problems.push(Problem::at(
                    Some(at),
                    format!(
                        "upstream '{name}': endpoints: is empty; list at least one base URL \
                         such as http://127.0.0.1:8000"
                    ),
                ));
            }
            Some(UpstreamKind::Sim) if !up.endpoints.is_empty() => {
                self.report(
                    &up.endpoints[0],
                    format!(
                        "upstream '{name}': kind sim runs in process and takes no endpoints; \
                         remove them, or use kind openai to reach `llmgate sim` over HTTP"
                    ),
                );
            }
            _ => {}
        }
        if let (Some(UpstreamKind::OpenAi), Some(sim)) = (kind, &up.sim) {
            self.report(
                sim,
                format!(
                    "upstream '{name}': sim: applies to kind sim only; remove it, \
                     or set kind: sim"
                ),
            );
        }
        let api_key = up
            .api_key_env
            .as_ref()
            .and_then(|var| match env(&var.value) {
                Some(value) if !value.is_empty() => Some(Secret::new(value)),
                _ => {
                    self.report(
                        var,
                        format!(
                            "upstream '{name}': environment variable {} is not set (or empty); \
                         export it before starting the gateway, or remove api_key_env",
                            var.value
                        ),
                    );
                    None
                }
            });
        let total = up.timeout.as_ref().and_then(|d| self.duration(d));
        let first_token = up
            .first_token_timeout
            .as_ref()
            .and_then(|d| self.duration(d));
        let idle = up.idle_timeout.as_ref().and_then(|d| self.duration(d));
        let sim = up
            .sim
            .map(|sim| self.sim(name, sim.value))
            .unwrap_or_default();
        Some(UpstreamConfig {
            name: name.to_string(),
            kind: kind?,
            endpoints,
            api_key,
            timeouts: UpstreamTimeouts {
                total: total.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
                first_token,
                idle,
            },
            sim,
        })
    }

    fn sim(&mut self, name: &str, raw: RawSim) -> SimSettings {
        let mut settings = SimSettings::default();
        // A simulated model may answer instantly (benchmarks do).
        if let Some(ttft) = raw
            .ttft
            .as_ref()
            .and_then(|d| self.duration_from(d, Duration::ZERO))
        {
            settings.ttft = ttft;
        }
        if let Some(tps) = raw.tokens_per_second {
            if tps.value.is_finite() && tps.value >= 0.0 {
                settings.tokens_per_second = tps.value;
            } else {
                self.report(
                    &tps,
                    format!("upstream '{name}': tokens_per_second must be 0 (no pacing) or more"),
                );
            }
        }
        if let Some(tokens) = raw.output_tokens {
            settings.output_tokens = tokens.value;
        }
        if let Some(rate) = raw.error_rate {
            if (0.0..=1.0).contains(&rate.value) {
                settings.error_rate = rate.value;
            } else {
                self.report(
                    &rate,
                    format!("upstream '{name}': error_rate must be between 0 and 1"),
                );
            }
        }
        settings
    }

    fn route(
        &mut self,
        raw: Spanned<RawRoute>,
        known_upstreams: &[&str],
        names_seen: &mut HashMap<String, Location>,
    ) -> RouteConfig {
        let route = raw.value;
        let model = route.model.value.clone();
        for name in std::iter::once(&route.model).chain(route.aliases.iter()) {
            if name.value.is_empty() {
                self.report(name, "a model name cannot be empty");
            } else if let Some(first) = names_seen.get(&name.value) {
                self.report(
                    name,
                    format!(
                        "model name '{}' is already routed (line {}); each name may \
                         appear once across all routes and aliases",
                        name.value,
                        first.line()
                    ),
                );
            } else {
                names_seen.insert(name.value.clone(), name.referenced);
            }
        }
        if route.pools.is_empty() {
            self.problems.push(Problem::at(
                Some(raw.referenced),
                format!("route '{model}': pools: is empty; add at least one pool"),
            ));
        }
        let pools: Vec<PoolConfig> = route
            .pools
            .into_iter()
            .map(|pool| self.pool(&model, pool.value, known_upstreams))
            .collect();
        if !pools.is_empty() && pools.iter().all(|p| p.weight == 0) {
            self.problems.push(Problem::at(
                Some(route.model.referenced),
                format!(
                    "route '{model}': every pool has weight 0, so no call could be served; \
                     give at least one pool a positive weight"
                ),
            ));
        }
        RouteConfig {
            model,
            aliases: route.aliases.into_iter().map(|a| a.value).collect(),
            pools,
        }
    }

    fn pool(&mut self, route: &str, raw: RawPool, known_upstreams: &[&str]) -> PoolConfig {
        if !known_upstreams.contains(&raw.upstream.value.as_str()) {
            self.report(
                &raw.upstream,
                format!(
                    "route '{route}': unknown upstream '{}'; defined upstreams: {}",
                    raw.upstream.value,
                    if known_upstreams.is_empty() {
                        "none".to_string()
                    } else {
                        known_upstreams.join(", ")
                    }
                ),
            );
        }
        PoolConfig {
            upstream: raw.upstream.value,
            weight: raw.weight.map_or(1, |w| w.value),
            model: raw.model.map_or_else(|| route.to_string(), |m| m.value),
        }
    }

    /// A time limit: zero would fail every call, so it is refused.
    fn duration(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration_from(raw, Duration::from_nanos(1))
    }

    /// A duration of at least `min`.
    fn duration_from(&mut self, raw: &Spanned<String>, min: Duration) -> Option<Duration> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(d) if d >= min => Some(d),
            Ok(_) => {
                self.report(
                    raw,
                    format!("duration '{}' must be more than zero", raw.value),
                );
                None
            }
            Err(err) => {
                self.report(
                    raw,
                    format!(
                        "'{}' is not a duration ({err}); write it like 250ms, 30s or 2m",
                        raw.value
                    ),
                );
                None
            }
        }
    }

    /// A listen address; `example` shows the operator a valid value.
    fn socket_addr(&mut self, raw: &Spanned<String>, example: &str) -> Option<SocketAddr> {
        match raw.value.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.report(
                    raw,
                    format!(
                        "'{}' is not a listen address; write ip:port such as {example}",
                        raw.value
                    ),
                );
                None
            }
        }
    }

    fn url(&mut self, raw: &Spanned<String>) -> Option<http::Uri> {
        let problem = match raw.value.parse::<http::Uri>() {
            Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                (Some("http" | "https"), Some(_)) if uri.query().is_none() => return Some(uri),
                (Some("http" | "https"), Some(_)) => "must not have a query string",
                (Some(_), _) => "must start with http:// or https://",
                (None, _) => "needs a scheme and host, such as http://10.0.0.5:8000",
            },
            Err(_) => "is not a URL; write a base URL such as http://10.0.0.5:8000",
        };
        self.report(raw, format!("endpoint '{}' {problem}", raw.value));
        None
    }
}
