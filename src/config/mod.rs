//! The routing file: parse → validate → a [`Config`] the rest of the gateway
//! can trust.
//!
//! Validation collects every problem in the file, each with its line and
//! column, instead of stopping at the first, so an operator fixes a broken
//! file in one pass. A file that fails changes nothing: callers keep the
//! table they had.

mod access;
mod resilience;
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
pub use access::{
    ApiKeyConfig, AuthConfig, CallerLimits, ConnectionLimits, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGES, DEFAULT_MAX_REQUEST_SIZE, DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_REQUEST_IDLE_TIMEOUT, KeyDigest, KeySource, Limits, ModelGrant, PemFile, TlsConfig,
    human_size, warnings,
};
pub use resilience::{
    DEFAULT_DNS_INTERVAL, Discovery, EndpointPolicy, HealthCheck, OutlierPolicy, RetryPolicy,
};
use schema::{RawConfig, RawCors, RawPool, RawRoute, RawSim, RawUpstream};

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
/// `max_tokens` sent to an Anthropic upstream when neither the caller nor
/// the file sets one: every current Claude model can write this many, and
/// it is long enough for an ordinary answer.
pub const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;
/// Headers the gateway writes itself on every upstream request (or that
/// belong to the connection, not the request); `headers:` cannot set them.
const GATEWAY_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "content-type",
    "accept",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
];

/// A validated routing file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Listener addresses.
    pub listen: ListenConfig,
    /// How long in-flight calls may run on after SIGTERM before they are cut.
    pub shutdown_grace: Duration,
    /// Which browser pages may call the gateway.
    pub cors: CorsConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Who may call (`auth:`).
    pub auth: AuthConfig,
    /// What a request may hold and how much the gateway takes on
    /// (`limits:`).
    pub limits: Limits,
}

/// `listen:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// The gRPC front end's address.
    pub grpc: SocketAddr,
    /// The admin listener's address (metrics and probes); `None` when the
    /// file says `off`.
    pub metrics: Option<SocketAddr>,
    /// TLS on the front listener, when set.
    pub tls: Option<TlsConfig>,
    /// The OpenAI-compatible HTTP front end's address; `None` (the default)
    /// serves no HTTP front, so a routing file opens no port it did not ask
    /// for.
    pub http: Option<SocketAddr>,
}

/// `cors:`: the origins whose web pages a browser lets call the gateway
/// (grpc-web on the gRPC port, and the HTTP front). Without it no cross-origin
/// page may call; non-browser clients never need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorsConfig {
    /// Origins as browsers send them (`https://app.example.com`, lowercase,
    /// no path), or `*` alone for any origin.
    pub allowed_origins: Vec<String>,
}

/// One upstream: a set of servers speaking one wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Its name in the file, used in logs and errors.
    pub name: String,
    /// The wire it speaks.
    pub kind: UpstreamKind,
    /// Where its servers are: a fixed list of base URLs (empty for `sim`)
    /// or a DNS name.
    pub discovery: Discovery,
    /// Admission and health of each endpoint.
    pub policy: EndpointPolicy,
    /// The bearer token read from `api_key_env` when the file was loaded.
    pub api_key: Option<Secret>,
    /// Time limits on calls to it.
    pub timeouts: UpstreamTimeouts,
    /// How the simulator behaves (`kind: sim`).
    pub sim: SimSettings,
    /// Extra headers sent with every request (`headers:`), for providers
    /// that want them. Values read from the environment are marked
    /// sensitive: `Debug` prints `Sensitive` instead of them.
    pub headers: http::HeaderMap,
    /// `kind: openai`: the request field that carries `max_tokens`.
    pub max_tokens_field: MaxTokensField,
    /// `kind: anthropic`: the `max_tokens` sent when the caller sets none
    /// (Anthropic refuses a request without it).
    pub default_max_tokens: u32,
    /// `kind: ollama`: how long Ollama keeps the model loaded after a call;
    /// `None` leaves it to Ollama (5 minutes unless its server says else).
    pub keep_alive: Option<KeepAlive>,
    /// `tls: { ca }`: the only CA its `https://` servers are trusted under;
    /// `None` trusts the web PKI roots.
    pub tls_ca: Option<PemFile>,
}

/// The wire formats an upstream can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// OpenAI's chat completions API: vLLM, OpenAI and compatible servers.
    OpenAi,
    /// Ollama's native chat API (`/api/chat`, NDJSON streams).
    Ollama,
    /// Anthropic's Messages API (`/v1/messages`, SSE events).
    Anthropic,
    /// The built-in simulator, in process.
    Sim,
}

/// Which request field carries an OpenAI-style call's token cap. OpenAI's
/// reasoning models refuse `max_tokens`; vLLM and most compatible servers
/// only know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxTokensField {
    /// `max_tokens`: vLLM, llama.cpp and most compatible servers.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current API.
    MaxCompletionTokens,
}

/// How long Ollama keeps a model in memory after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload it this long after the call (zero: at once).
    For(Duration),
    /// Never unload it.
    Forever,
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
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// Models tried in order when every pool of this route failed.
    pub fallback: Vec<String>,
    /// A larger-context model for calls rejected as too long.
    pub context_fallback: Option<String>,
    /// Limits on the route across all its callers.
    pub limits: CallerLimits,
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
    if let Some(tls) = &config.listen.tls {
        let _ = writeln!(
            out,
            "  tls: cert {}, key {}{}",
            tls.cert.path.display(),
            tls.key.path.display(),
            tls.client_ca.as_ref().map_or(String::new(), |ca| format!(
                ", client certificates required (CA {})",
                ca.path.display()
            ))
        );
    }
    match &config.auth {
        AuthConfig::Unset => {
            let _ = writeln!(out, "auth: not set (loopback or mTLS callers only)");
        }
        AuthConfig::Off => {
            let _ = writeln!(out, "auth: off (mode: none)");
        }
        AuthConfig::Keys(keys) => {
            let _ = writeln!(out, "auth: {} API key(s)", keys.len());
            for key in keys {
                // Where the secret comes from, never the secret.
                let source = match &key.source {
                    KeySource::Digest => "sha256 digest".to_string(),
                    KeySource::Env(var) => format!("from env {var}"),
                    KeySource::File(path) => format!("from file {}", path.display()),
                };
                let _ = writeln!(
                    out,
                    "  key {} ({source}): {}; {}",
                    key.name, key.models, key.limits
                );
            }
        }
    }
    let limits = &config.limits;
    let _ = writeln!(
        out,
        "limits: requests up to {}, {} messages{}; {} calls in flight",
        human_size(limits.max_request_size),
        limits.max_messages,
        limits
            .max_content_length
            .map_or(String::new(), |n| format!(", {} of content", human_size(n))),
        limits
            .max_in_flight
            .map_or("unlimited".to_string(), |n| n.to_string()),
    );
    if let Some(http) = config.listen.http {
        let _ = writeln!(out, "listen http {http} (OpenAI-compatible API)");
    }
    if !config.cors.allowed_origins.is_empty() {
        let _ = writeln!(
            out,
            "cors: browsers may call from {}",
            config.cors.allowed_origins.join(", ")
        );
    }
    for up in config.upstreams.values() {
        let endpoints: Vec<String> = match &up.discovery {
            Discovery::Static(list) => list.iter().map(ToString::to_string).collect(),
            Discovery::Dns {
                host,
                port,
                interval,
                ..
            } => vec![format!(
                "every address of {host}:{port} (resolved every {})",
                crate::error::human_duration(*interval)
            )],
        };
        // Header names only: a value may be a credential.
        let headers: Vec<&str> = up.headers.keys().map(http::HeaderName::as_str).collect();
        let _ = writeln!(
            out,
            "upstream {} ({}) {}{}{}",
            up.name,
            up.kind.as_str(),
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
            if headers.is_empty() {
                String::new()
            } else {
                format!(", headers: {}", headers.join(", "))
            },
        );
        if let Some(ca) = &up.tls_ca {
            let _ = writeln!(out, "  trusts CA {} only", ca.path.display());
        }
    }
    for route in &config.routes {
        let aliases = if route.aliases.is_empty() {
            String::new()
        } else {
            format!(" (aliases: {})", route.aliases.join(", "))
        };
        let _ = writeln!(out, "route {}{aliases}", route.model);
        if !route.limits.is_unlimited() {
            let _ = writeln!(out, "  limits: {}", route.limits);
        }
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
        if !route.fallback.is_empty() {
            let _ = writeln!(out, "  fallback: {}", route.fallback.join(", "));
        }
        if let Some(bigger) = &route.context_fallback {
            let _ = writeln!(out, "  context_fallback: {bigger}");
        }
    }
    out
}

// === impl UpstreamKind ===

impl UpstreamKind {
    /// The kind's name in the routing file.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::OpenAi => "openai",
            UpstreamKind::Ollama => "ollama",
            UpstreamKind::Anthropic => "anthropic",
            UpstreamKind::Sim => "sim",
        }
    }

    /// The header that carries this kind's API key.
    fn key_header(self) -> &'static str {
        match self {
            UpstreamKind::Anthropic => "x-api-key",
            _ => "authorization",
        }
    }
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

impl ConfigError {
    /// The file could not be read at all.
    pub fn unreadable(source: &str, err: &std::io::Error) -> Self {
        Self::whole_file(source, format!("cannot read the file: {err}"))
    }

    /// The file is valid but the gateway cannot build a table from it.
    pub fn unusable(source: &str, why: &str) -> Self {
        Self::whole_file(source, why.to_string())
    }

    fn whole_file(source: &str, message: String) -> Self {
        ConfigError {
            source: source.to_string(),
            problems: vec![Problem::at(None, message)],
        }
    }
}

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
        let grpc_at = raw
            .listen
            .as_ref()
            .and_then(|listen| listen.value.grpc.as_ref());
        let grpc = grpc_at.and_then(|addr| self.socket_addr(addr, "0.0.0.0:50051"));
        let tls = raw
            .listen
            .as_ref()
            .and_then(|listen| listen.value.tls.as_ref())
            .and_then(|tls| self.listen_tls(tls));
        let limits = self.limits(raw.limits.as_ref());
        let http = raw
            .listen
            .as_ref()
            .and_then(|listen| listen.value.http.as_ref())
            .and_then(|addr| self.socket_addr(addr, "0.0.0.0:8080"));
        let cors = raw
            .cors
            .map(|cors| self.cors(cors.value))
            .unwrap_or_default();
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
        let fallbacks: Vec<(String, Vec<String>, Vec<Spanned<String>>)> = raw
            .routes
            .value
            .iter()
            .map(|route| {
                let own = std::iter::once(&route.value.model)
                    .chain(&route.value.aliases)
                    .map(|n| n.value.clone())
                    .collect();
                let targets = route
                    .value
                    .fallback
                    .iter()
                    .chain(&route.value.context_fallback)
                    .cloned()
                    .collect();
                (route.value.model.value.clone(), own, targets)
            })
            .collect();
        let routes: Vec<RouteConfig> = raw
            .routes
            .value
            .into_iter()
            .map(|route| self.route(route, &known_upstreams, &mut names_seen))
            .collect();
        for (model, own, targets) in fallbacks {
            for target in targets {
                if own.contains(&target.value) {
                    self.report(
                        &target,
                        format!("route '{model}': a route cannot fall back to itself"),
                    );
                } else if !names_seen.contains_key(&target.value) {
                    self.report(
                        &target,
                        format!(
                            "route '{model}': fallback '{}' is not a routed model; add a route \
                             for it or remove it",
                            target.value
                        ),
                    );
                }
            }
        }
        let auth = self.auth(raw.auth, &routes, env);
        let config = Config {
            listen: ListenConfig {
                grpc: grpc.unwrap_or(default_grpc),
                metrics,
                tls,
                http,
            },
            shutdown_grace,
            cors,
            upstreams,
            routes,
            auth,
            limits,
        };
        self.exposed_without_auth(&config, grpc_at);
        config
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
            "ollama" => Some(UpstreamKind::Ollama),
            "anthropic" => Some(UpstreamKind::Anthropic),
            "sim" => Some(UpstreamKind::Sim),
            other => {
                self.report(
                    &up.kind,
                    format!(
                        "upstream '{name}': unknown kind '{other}'; expected openai, ollama, \
                         anthropic or sim"
                    ),
                );
                None
            }
        };
        let endpoints: Vec<http::Uri> = up.endpoints.iter().filter_map(|e| self.url(e)).collect();
        let dns = up.discover.as_ref().and_then(|d| self.discovery(name, d));
        match (&up.discover, up.endpoints.first()) {
            (Some(discover), Some(_)) => self.report(
                discover,
                format!("upstream '{name}': give either endpoints: or discover:, not both"),
            ),
            (Some(discover), None) if kind == Some(UpstreamKind::Sim) => self.report(
                discover,
                format!("upstream '{name}': kind sim runs in process and takes no discover:"),
            ),
            _ => {}
        }
        match kind {
            Some(UpstreamKind::Sim) if !up.endpoints.is_empty() => {
                self.report(
                    &up.endpoints[0],
                    format!(
                        "upstream '{name}': kind sim runs in process and takes no endpoints; \
                         remove them, or use kind openai to reach `llmgate sim` over HTTP"
                    ),
                );
            }
            Some(kind)
                if kind != UpstreamKind::Sim
                    && up.endpoints.is_empty()
                    && up.discover.is_none() =>
            {
                let example = match kind {
                    UpstreamKind::Ollama => "http://127.0.0.1:11434",
                    UpstreamKind::Anthropic => "https://api.anthropic.com",
                    _ => "http://127.0.0.1:8000",
                };
                self.problems.push(Problem::at(
                    Some(at),
                    format!(
                        "upstream '{name}': endpoints: is empty; list at least one base URL \
                         such as {example}, or use discover: {{ dns: name:port }}"
                    ),
                ));
            }
            _ => {}
        }
        if let (Some(kind), Some(sim)) = (kind, &up.sim)
            && kind != UpstreamKind::Sim
        {
            self.report(
                sim,
                format!(
                    "upstream '{name}': sim: applies to kind sim only; remove it, \
                     or set kind: sim"
                ),
            );
        }
        if let Some(kind) = kind {
            self.only_for(
                name,
                kind,
                UpstreamKind::OpenAi,
                "max_tokens_field",
                &up.max_tokens_field,
            );
            self.only_for(
                name,
                kind,
                UpstreamKind::Anthropic,
                "default_max_tokens",
                &up.default_max_tokens,
            );
            self.only_for(
                name,
                kind,
                UpstreamKind::Ollama,
                "keep_alive",
                &up.keep_alive,
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
        let headers = match (&up.headers, kind) {
            (Some(headers), Some(UpstreamKind::Sim)) => {
                self.report(
                    headers,
                    format!(
                        "upstream '{name}': headers: apply to HTTP upstreams only; \
                         kind sim runs in process"
                    ),
                );
                http::HeaderMap::new()
            }
            (Some(headers), Some(kind)) => {
                let key_header = up.api_key_env.is_some().then(|| kind.key_header());
                self.headers(name, &headers.value, key_header, env)
            }
            _ => http::HeaderMap::new(),
        };
        let max_tokens_field = up
            .max_tokens_field
            .as_ref()
            .and_then(|field| match field.value.as_str() {
                "max_tokens" => Some(MaxTokensField::MaxTokens),
                "max_completion_tokens" => Some(MaxTokensField::MaxCompletionTokens),
                other => {
                    self.report(
                        field,
                        format!(
                            "upstream '{name}': max_tokens_field '{other}' is not a field; \
                             use max_tokens (vLLM and most servers) or max_completion_tokens \
                             (OpenAI's current models)"
                        ),
                    );
                    None
                }
            })
            .unwrap_or_default();
        let default_max_tokens = match &up.default_max_tokens {
            Some(tokens) if tokens.value == 0 => {
                self.report(
                    tokens,
                    format!(
                        "upstream '{name}': default_max_tokens must be at least 1; it is the \
                         cap sent when a caller sets none"
                    ),
                );
                DEFAULT_ANTHROPIC_MAX_TOKENS
            }
            Some(tokens) => tokens.value,
            None => DEFAULT_ANTHROPIC_MAX_TOKENS,
        };
        let keep_alive = up
            .keep_alive
            .as_ref()
            .and_then(|raw| self.keep_alive(name, raw));
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
        let max_in_flight = match &up.max_in_flight {
            Some(n) if n.value == 0 => {
                self.report(
                    n,
                    format!(
                        "upstream '{name}': max_in_flight must be 1 or more (omit it for no cap)"
                    ),
                );
                None
            }
            other => other.as_ref().map(|n| n.value),
        };
        let tls_ca = match (&up.tls, kind) {
            (Some(tls), Some(UpstreamKind::Sim)) => {
                self.report(
                    tls,
                    format!("upstream '{name}': tls: does not apply to kind sim (in process)"),
                );
                None
            }
            (Some(tls), _) => {
                let https = endpoints.iter().any(|e| e.scheme_str() == Some("https"))
                    || matches!(&dns, Some(Discovery::Dns { scheme, .. }) if scheme == "https");
                self.upstream_tls(name, tls, https)
            }
            (None, _) => None,
        };
        let policy = EndpointPolicy {
            max_in_flight,
            outlier: up
                .outlier
                .as_ref()
                .map(|o| self.outlier(name, &o.value))
                .unwrap_or_default(),
            health_check: up
                .health_check
                .as_ref()
                .and_then(|h| self.health_check(name, kind, h)),
        };
        Some(UpstreamConfig {
            name: name.to_string(),
            kind: kind?,
            discovery: dns.unwrap_or(Discovery::Static(endpoints)),
            policy,
            api_key,
            timeouts: UpstreamTimeouts {
                total: total.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
                first_token,
                idle,
            },
            sim,
            headers,
            max_tokens_field,
            default_max_tokens,
            keep_alive,
            tls_ca,
        })
    }

    /// Reports a key set on an upstream of a kind it does not apply to.
    fn only_for<T>(
        &mut self,
        name: &str,
        kind: UpstreamKind,
        wanted: UpstreamKind,
        key: &str,
        value: &Option<Spanned<T>>,
    ) {
        if let Some(value) = value
            && kind != wanted
        {
            self.report(
                value,
                format!(
                    "upstream '{name}': {key}: applies to kind {} only; remove it from this \
                     {} upstream",
                    wanted.as_str(),
                    kind.as_str()
                ),
            );
        }
    }

    /// `headers:`: each name a valid header the gateway does not write
    /// itself, each value valid once `${VAR}`s are read. Values that read
    /// the environment are marked sensitive, as they usually hold a key.
    fn headers(
        &mut self,
        name: &str,
        raw: &HashMap<Spanned<String>, Spanned<String>>,
        key_header: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> http::HeaderMap {
        let mut entries: Vec<_> = raw.iter().collect();
        entries.sort_by_key(|(key, _)| (key.referenced.line(), key.referenced.column()));
        let mut headers = http::HeaderMap::new();
        for (key, value) in entries {
            let Ok(header) = http::HeaderName::from_bytes(key.value.as_bytes()) else {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': '{}' is not a valid HTTP header name",
                        key.value
                    ),
                );
                continue;
            };
            if GATEWAY_HEADERS.contains(&header.as_str()) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' is written by the gateway on every \
                         request; remove it from headers:",
                        key.value
                    ),
                );
                continue;
            }
            if key_header == Some(header.as_str()) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' carries the key from api_key_env; \
                         remove one of the two",
                        key.value
                    ),
                );
                continue;
            }
            if headers.contains_key(&header) {
                self.report(
                    key,
                    format!(
                        "upstream '{name}': header '{}' is given twice (header names ignore \
                         case)",
                        key.value
                    ),
                );
                continue;
            }
            let Some((text, from_env)) = self.interpolate(name, &header, value, env) else {
                continue;
            };
            match http::HeaderValue::try_from(text) {
                Ok(mut header_value) => {
                    header_value.set_sensitive(from_env);
                    headers.insert(header, header_value);
                }
                Err(_) => {
                    // Never quote the value: it may hold a key.
                    self.report(
                        value,
                        format!(
                            "upstream '{name}': the value of header '{header}' is not a valid \
                             header value (printable ASCII on one line)"
                        ),
                    );
                }
            }
        }
        headers
    }

    /// A header value with each `${VAR}` replaced by the variable's value;
    /// also says whether any variable was read.
    fn interpolate(
        &mut self,
        name: &str,
        header: &http::HeaderName,
        raw: &Spanned<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<(String, bool)> {
        let mut out = String::new();
        let mut rest = raw.value.as_str();
        let mut from_env = false;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let var = after.find('}').map(|end| &after[..end]).filter(|var| {
                var.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            let Some(var) = var else {
                self.report(
                    raw,
                    format!(
                        "upstream '{name}': header '{header}': '${{' must start a variable \
                         such as ${{PROVIDER_KEY}}"
                    ),
                );
                return None;
            };
            match env(var) {
                Some(value) if !value.is_empty() => out.push_str(&value),
                _ => {
                    self.report(
                        raw,
                        format!(
                            "upstream '{name}': environment variable {var} (for header \
                             '{header}') is not set (or empty); export it before starting \
                             the gateway"
                        ),
                    );
                    return None;
                }
            }
            from_env = true;
            rest = &after[var.len() + 1..];
        }
        out.push_str(rest);
        Some((out, from_env))
    }

    /// `keep_alive:`: a duration, `0` to unload the model after each call,
    /// or `-1` to keep it loaded.
    fn keep_alive(&mut self, name: &str, raw: &Spanned<String>) -> Option<KeepAlive> {
        let text = raw.value.trim();
        if text == "-1" {
            return Some(KeepAlive::Forever);
        }
        if text == "0" {
            return Some(KeepAlive::For(Duration::ZERO));
        }
        match humantime::parse_duration(text) {
            Ok(d) => Some(KeepAlive::For(d)),
            Err(_) => {
                self.report(
                    raw,
                    format!(
                        "upstream '{name}': keep_alive '{}' is not a duration; write it like \
                         10m or 1h, 0 to unload the model after each call, or -1 to keep it \
                         loaded",
                        raw.value
                    ),
                );
                None
            }
        }
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
        let retry = route
            .retry
            .as_ref()
            .map(|r| self.retry(&model, &r.value))
            .unwrap_or_default();
        let limits = route
            .limits
            .as_ref()
            .map(|l| self.caller_limits(&format!("route '{model}': limits"), &l.value))
            .unwrap_or_default();
        RouteConfig {
            model,
            aliases: route.aliases.into_iter().map(|a| a.value).collect(),
            pools,
            retry,
            fallback: route.fallback.iter().map(|f| f.value.clone()).collect(),
            context_fallback: route.context_fallback.as_ref().map(|f| f.value.clone()),
            limits,
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

    /// `cors:`. Browsers send an origin as `scheme://host[:port]` in
    /// lowercase and compare it byte for byte, so anything else (a trailing
    /// slash, a path) would silently never match: it is refused here.
    fn cors(&mut self, raw: RawCors) -> CorsConfig {
        let mut allowed_origins = Vec::with_capacity(raw.allowed_origins.len());
        for origin in &raw.allowed_origins {
            if origin.value == "*" {
                if raw.allowed_origins.len() > 1 {
                    self.report(
                        origin,
                        "cors: '*' allows every origin, so it must stand alone in \
                         allowed_origins; remove it or the other origins",
                    );
                }
                allowed_origins.push(origin.value.clone());
                continue;
            }
            match origin_problem(&origin.value) {
                None => allowed_origins.push(origin.value.to_ascii_lowercase()),
                Some(problem) => self.report(
                    origin,
                    format!(
                        "cors: '{}' is not an origin: {problem}; write scheme://host[:port] \
                         as the browser's address bar shows it, such as https://app.example.com",
                        origin.value
                    ),
                ),
            }
        }
        CorsConfig { allowed_origins }
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

/// What is wrong with `value` as a browser origin, if anything.
fn origin_problem(value: &str) -> Option<&'static str> {
    let Some((scheme, host)) = value.split_once("://") else {
        return Some("it has no scheme");
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some("its scheme is not http or https");
    }
    if host.contains(['/', '?', '#']) {
        return Some("an origin has no path, not even a trailing slash");
    }
    if host.contains('@') || host.parse::<http::uri::Authority>().is_err() {
        return Some("its host is not a host name or address");
    }
    None
}
