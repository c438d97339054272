//! `upstreams:`: the servers behind the gateway, the wire each speaks, and
//! how each call to them is shaped (keys, timeouts, kind-specific extras).

use super::placement::RawLoad;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Checker, MAX_DURATION, Problem, too_long};
use super::headers::Headers;
use super::resilience::{Discovery, EndpointPolicy, RawDiscover, RawHealthCheck, RawOutlier};
use super::tls::{PemFile, RawUpstreamTls};
use crate::sim::SimSettings;

/// Cap on one upstream call when the file sets none: long enough for any
/// real generation, short enough that a hung upstream cannot hold a call
/// (and its caller) forever when the caller sent no deadline.
pub(crate) const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(600);
/// `max_tokens` sent to an Anthropic upstream when neither the caller nor
/// the file sets one: every current Claude model can write this many, and
/// it is long enough for an ordinary answer.
pub(crate) const DEFAULT_ANTHROPIC_MAX_TOKENS: u32 = 4096;

/// Slowest simulated generation, in tokens per second: one token every
/// ~17 minutes. Slower rates put a token's due time past what a clock can
/// hold.
pub(crate) const MIN_SIM_TOKENS_PER_SECOND: f64 = 0.001;

// === raw (as written) ===

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
    /// How a stream broken mid-answer is continued here.
    #[serde(default)]
    pub(crate) continuation: Option<Spanned<String>>,
    /// Where the balancer reads the engine's own load.
    #[serde(default)]
    pub(crate) load: Option<Spanned<RawLoad>>,
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

// === validated ===

/// One upstream: a set of servers speaking one wire format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamConfig {
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
    /// Credential headers (such as `authorization`) whose value the file
    /// writes out instead of reading `${VAR}`: `llmgate check` warns.
    pub literal_secret_headers: Vec<String>,
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
    /// How this upstream continues an answer another endpoint broke off.
    pub continuation: Continuation,
}

/// How an upstream can continue an answer whose stream broke after tokens
/// reached the caller (`continuation:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continuation {
    /// Send the text already delivered as the start of the assistant's
    /// message, and stream only the rest: vLLM (`continue_final_message`),
    /// Anthropic and Ollama continue a final assistant message.
    Prefill,
    /// Resend the original request and skip what was already delivered,
    /// checking the new answer starts with exactly that text. Only for
    /// deterministic decoding (temperature 0, or the simulator).
    Replay,
    /// Do not continue here: a broken stream ends in an error, unless
    /// another pool or fallback can continue it.
    None,
}

/// The wire formats an upstream can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamKind {
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
pub(crate) enum MaxTokensField {
    /// `max_tokens`: vLLM, llama.cpp and most compatible servers.
    #[default]
    MaxTokens,
    /// `max_completion_tokens`: OpenAI's current API.
    MaxCompletionTokens,
}

/// How long Ollama keeps a model in memory after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAlive {
    /// Unload it this long after the call (zero: at once).
    For(Duration),
    /// Never unload it.
    Forever,
}

/// Time limits on one upstream's calls; together with the caller's deadline
/// they make sure no call can hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpstreamTimeouts {
    /// Cap on one whole call.
    pub total: Duration,
    /// Longest wait for the first token of a stream.
    pub first_token: Option<Duration>,
    /// Longest silence between two tokens of a stream.
    pub idle: Option<Duration>,
}

/// A credential. Its `Debug` never prints the value, so it cannot leak
/// through a log line or an error.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

// === impl UpstreamKind ===

impl UpstreamKind {
    /// The kind's name in the routing file.
    pub(crate) fn as_str(self) -> &'static str {
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
    pub(crate) fn new(value: String) -> Self {
        Secret(value)
    }

    /// The credential itself, for the one place that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// === checks ===

impl Checker {
    /// One entry of `upstreams:`, concern by concern. Each check reports
    /// its own problems and stands in a default, so one pass finds all of
    /// them; the upstream is built only when its kind is known.
    pub(super) fn upstream(
        &mut self,
        name: &str,
        raw: Spanned<RawUpstream>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<UpstreamConfig> {
        let at = raw.referenced;
        let up = raw.value;
        let kind = self.kind(name, &up.kind);
        let discovery = self.endpoints(name, kind, &up, at);
        if let Some(kind) = kind {
            self.kind_specific_keys(name, kind, &up);
        }
        let api_key = self.api_key_env(name, up.api_key_env.as_ref(), env);
        let headers = self.upstream_headers(name, kind, &up, env);
        let max_tokens_field = self.max_tokens_field(name, up.max_tokens_field.as_ref());
        let default_max_tokens = self.default_max_tokens(name, up.default_max_tokens.as_ref());
        let keep_alive = up
            .keep_alive
            .as_ref()
            .and_then(|raw| self.keep_alive(name, raw));
        let timeouts = self.timeouts(&up);
        let tls_ca = self.tls_ca(name, kind, up.tls.as_ref(), discovery.as_ref());
        let policy = self.endpoint_policy(name, kind, &up);
        let continuation =
            self.continuation(name, kind, up.continuation.as_ref(), discovery.as_ref());
        let sim = up
            .sim
            .map(|sim| self.sim(name, sim.value))
            .unwrap_or_default();
        Some(UpstreamConfig {
            name: name.to_string(),
            kind: kind?,
            discovery: discovery.unwrap_or(Discovery::Static(Vec::new())),
            policy,
            api_key,
            timeouts,
            sim,
            headers: headers.map,
            literal_secret_headers: headers.literal_secrets,
            max_tokens_field,
            default_max_tokens,
            keep_alive,
            tls_ca,
            continuation,
        })
    }

    /// `continuation:`, or the kind's default: prefill where the wire can
    /// continue a final assistant message, replay for OpenAI's own cloud
    /// (which cannot) and the deterministic simulator.
    fn continuation(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        raw: Option<&Spanned<String>>,
        discovery: Option<&Discovery>,
    ) -> Continuation {
        if let Some(raw) = raw {
            match raw.value.as_str() {
                "prefill" => return Continuation::Prefill,
                "replay" => return Continuation::Replay,
                "none" => return Continuation::None,
                other => self.report(
                    raw,
                    format!(
                        "upstream '{name}': continuation '{other}' is not a strategy; use \
                         prefill (vLLM, Anthropic, Ollama), replay (deterministic calls) or none"
                    ),
                ),
            }
        }
        let openai_cloud = matches!(discovery, Some(Discovery::Static(urls))
            if urls.iter().any(|url| url.host() == Some("api.openai.com")));
        match kind {
            Some(UpstreamKind::Sim) => Continuation::Replay,
            Some(UpstreamKind::OpenAi) if openai_cloud => Continuation::Replay,
            _ => Continuation::Prefill,
        }
    }

    /// `kind:`: one of the wires the gateway speaks.
    fn kind(&mut self, name: &str, raw: &Spanned<String>) -> Option<UpstreamKind> {
        let kind = match raw.value.as_str() {
            "openai" => UpstreamKind::OpenAi,
            "ollama" => UpstreamKind::Ollama,
            "anthropic" => UpstreamKind::Anthropic,
            "sim" => UpstreamKind::Sim,
            other => {
                self.report(
                    raw,
                    format!(
                        "upstream '{name}': unknown kind '{other}'; expected openai, ollama, \
                         anthropic or sim"
                    ),
                );
                return None;
            }
        };
        Some(kind)
    }

    /// `endpoints:` or `discover:`: exactly one of them for an HTTP
    /// upstream, neither for the in-process simulator. `None` when the
    /// endpoints cannot be known.
    fn endpoints(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        up: &RawUpstream,
        at: serde_saphyr::Location,
    ) -> Option<Discovery> {
        let endpoints: Vec<http::Uri> = up
            .endpoints
            .iter()
            .filter_map(|e| self.url(name, e))
            .collect();
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
        match up.discover {
            Some(_) => dns,
            None => Some(Discovery::Static(endpoints)),
        }
    }

    /// Keys that apply to one kind only (`sim:`, `max_tokens_field:`,
    /// `default_max_tokens:`, `keep_alive:`), set on another kind.
    fn kind_specific_keys(&mut self, name: &str, kind: UpstreamKind, up: &RawUpstream) {
        if let Some(sim) = &up.sim
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

    /// `api_key_env:`: the variable must hold a key now, not at the first
    /// call.
    fn api_key_env(
        &mut self,
        name: &str,
        var: Option<&Spanned<String>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let var = var?;
        match env(&var.value) {
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
        }
    }

    /// `headers:`, for HTTP upstreams only.
    fn upstream_headers(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        up: &RawUpstream,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Headers {
        match (&up.headers, kind) {
            (Some(headers), Some(UpstreamKind::Sim)) => {
                self.report(
                    headers,
                    format!(
                        "upstream '{name}': headers: apply to HTTP upstreams only; \
                         kind sim runs in process"
                    ),
                );
                Headers::default()
            }
            (Some(headers), Some(kind)) => {
                let key_header = up.api_key_env.is_some().then(|| kind.key_header());
                self.headers(name, &headers.value, key_header, env)
            }
            _ => Headers::default(),
        }
    }

    /// `max_tokens_field:` (`kind: openai`).
    fn max_tokens_field(&mut self, name: &str, raw: Option<&Spanned<String>>) -> MaxTokensField {
        raw.and_then(|field| match field.value.as_str() {
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
        .unwrap_or_default()
    }

    /// `default_max_tokens:` (`kind: anthropic`): at least 1.
    fn default_max_tokens(&mut self, name: &str, raw: Option<&Spanned<u32>>) -> u32 {
        match raw {
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
        }
    }

    /// `timeout:`, `first_token_timeout:` and `idle_timeout:`.
    fn timeouts(&mut self, up: &RawUpstream) -> UpstreamTimeouts {
        let total = up.timeout.as_ref().and_then(|d| self.duration(d));
        let first_token = up
            .first_token_timeout
            .as_ref()
            .and_then(|d| self.duration(d));
        let idle = up.idle_timeout.as_ref().and_then(|d| self.duration(d));
        UpstreamTimeouts {
            total: total.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
            first_token,
            idle,
        }
    }

    /// `tls:`: a private CA, for upstreams reached over `https://`.
    fn tls_ca(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        raw: Option<&Spanned<RawUpstreamTls>>,
        discovery: Option<&Discovery>,
    ) -> Option<PemFile> {
        let tls = raw?;
        if kind == Some(UpstreamKind::Sim) {
            self.report(
                tls,
                format!("upstream '{name}': tls: does not apply to kind sim (in process)"),
            );
            return None;
        }
        let https = match discovery {
            Some(Discovery::Static(endpoints)) => {
                endpoints.iter().any(|e| e.scheme_str() == Some("https"))
            }
            Some(Discovery::Dns { scheme, .. }) => scheme == "https",
            None => false,
        };
        self.upstream_tls(name, tls, https)
    }

    /// `max_in_flight:`, `outlier:` and `health_check:`.
    fn endpoint_policy(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        up: &RawUpstream,
    ) -> EndpointPolicy {
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
        EndpointPolicy {
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
            engine_metrics: up.load.as_ref().and_then(|l| self.load(name, l)),
        }
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
            Ok(d) if d > MAX_DURATION => {
                self.report(raw, too_long(&raw.value));
                None
            }
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
            let rate = tps.value;
            if rate == 0.0 || (rate.is_finite() && rate >= MIN_SIM_TOKENS_PER_SECOND) {
                settings.tokens_per_second = rate;
            } else {
                self.report(
                    &tps,
                    format!(
                        "upstream '{name}': tokens_per_second must be 0 (no pacing) or more, \
                         and at least {MIN_SIM_TOKENS_PER_SECOND} when it paces"
                    ),
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

    /// An endpoint's base URL. A user name or password in it is refused
    /// (without quoting it): URLs land in logs and metric labels.
    pub(super) fn url(&mut self, name: &str, raw: &Spanned<String>) -> Option<http::Uri> {
        if has_userinfo(&raw.value) {
            self.report(
                raw,
                format!(
                    "upstream '{name}': an endpoint must not carry a user name or password \
                     (user:pass@host): URLs appear in logs and metrics; put the key in \
                     api_key_env, or in a headers: value read from ${{VAR}}"
                ),
            );
            return None;
        }
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

/// Whether a URL's authority (between `://` and the path) has a
/// `user[:password]@` part.
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority.contains('@')
}
