//! What `llmgate check` prints about a valid file: the human summary (what
//! it listens on, who may call, where each model goes) and the warnings
//! (what it does that an operator should think twice about). Never a
//! secret: keys appear as where they come from, headers by name only.

use super::auth::exposed_without_client_certs;
use super::{
    AuthConfig, Config, Discovery, KeySource, METRICS_OFF, RouteConfig, UpstreamKind, human_size,
};

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
                if key.priority != super::Priority::Normal || key.priority_header {
                    let header = if key.priority_header {
                        " (its calls may choose with x-llmgate-priority)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "    queue class: {}{header}", key.priority.as_str());
                }
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
    let _ = writeln!(out, "{}", state(config));
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
        if let Some(queue) = &route.queue {
            let _ = writeln!(
                out,
                "  queue: up to {} calls wait up to {} for a slot when every endpoint is at \
                 max_in_flight (one class up per {} waited)",
                queue.max_len,
                crate::error::human_duration(queue.timeout),
                crate::error::human_duration(queue.promote_after)
            );
        }
    }
    out
}

/// Where limits are counted. A file with per-key or per-route limits and
/// no `state.redis` gets a note, not an error: one replica is a fine
/// deployment, but behind a Service of N replicas each one grants the
/// whole limit.
fn state(config: &Config) -> String {
    match &config.state.redis {
        Some(redis) => format!(
            "state: limits shared through {} (keys under '{}', timeout {}, on_error: {}{})",
            redis.url,
            redis.key_prefix,
            crate::error::human_duration(redis.timeout),
            redis.on_error,
            redis
                .password_source
                .as_ref()
                .map_or(String::new(), |source| format!(", password {source}")),
        ),
        None if sets_shared_limits(config) => "state: local; note: limits are counted by each replica alone, so N replicas grant N times them; set state.redis to share them"
            .to_string(),
        None => "state: local".to_string(),
    }
}

/// Whether any key or route has requests, tokens or calls in flight to
/// count: what `state.redis` would share.
fn sets_shared_limits(config: &Config) -> bool {
    let keys = match &config.auth {
        AuthConfig::Keys(keys) => keys.iter().any(|k| !k.limits.is_unlimited()),
        _ => false,
    };
    keys || config.routes.iter().any(|r| !r.limits.is_unlimited())
}

/// What a valid file does that an operator should think twice about, for
/// `llmgate check` and the log at start-up. Never mentions a secret.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, addr) in config.listen.serving() {
        let exposed = !addr.ip().is_loopback();
        if config.auth == AuthConfig::Off && exposed_without_client_certs(&config.listen, addr) {
            warnings.push(format!(
                "listen.{key} {addr} is reachable from other hosts and auth is off (mode: \
                 none): anyone who reaches it can call every model, paid ones included"
            ));
        }
        if exposed && config.listen.tls.is_none() && matches!(config.auth, AuthConfig::Keys(_)) {
            warnings.push(format!(
                "listen.{key} {addr} is reachable from other hosts without TLS, so API keys \
                 cross the network in clear text; set listen.tls"
            ));
        }
    }
    for up in config.upstreams.values() {
        for header in &up.literal_secret_headers {
            warnings.push(format!(
                "upstream '{}': header '{header}' holds a credential written in the file; \
                 read it from the environment instead, such as {header}: \"Bearer \
                 ${{PROVIDER_KEY}}\", so the file can be shared and stored without it",
                up.name
            ));
        }
    }
    warnings.extend(
        config
            .routes
            .iter()
            .filter_map(|route| no_embeddings(config, route)),
    );
    warnings
}

/// A route with pools whose wire has no embeddings API (Anthropic's): its
/// embedding calls that land there are refused, and with other pools
/// beside them, only some are, as the weights fall.
fn no_embeddings(config: &Config, route: &RouteConfig) -> Option<String> {
    let without: Vec<&str> = route
        .pools
        .iter()
        .filter(|pool| {
            config
                .upstreams
                .get(&pool.upstream)
                .is_some_and(|up| up.kind == UpstreamKind::Anthropic)
        })
        .map(|pool| pool.upstream.as_str())
        .collect();
    if without.is_empty() {
        return None;
    }
    let share = if without.len() == route.pools.len() {
        "every embedding call (Embed, POST /v1/embeddings) to it is refused"
    } else {
        "embedding calls (Embed, POST /v1/embeddings) that its weights send there are refused \
         while others succeed"
    };
    Some(format!(
        "route '{}': upstream {} (kind: anthropic) has no embeddings API, so {share}; serve \
         embeddings from a route of openai, ollama or sim upstreams",
        route.model,
        without
            .iter()
            .map(|name| format!("'{name}'"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}
