//! `listen:` and `cors:`: where the gateway accepts calls and which browser
//! pages may make them.

use std::net::SocketAddr;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::Checker;
use super::tls::{RawTls, TlsConfig};

/// Where the gRPC front end listens when the file does not say.
pub(crate) const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:50051";
/// Where `/metrics`, `/healthz` and `/readyz` are served when the file does
/// not say: loopback, so nothing is exposed by accident; a pod sets
/// `0.0.0.0:9090` so Prometheus and the kubelet can reach it.
pub(crate) const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9090";
/// The `listen.metrics` value that turns the admin listener off.
pub(crate) const METRICS_OFF: &str = "off";

// === raw (as written) ===

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

// === validated ===

/// `listen:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenConfig {
    /// The gRPC front end's address.
    pub grpc: SocketAddr,
    /// The admin listener's address (metrics and probes); `None` when the
    /// file says `off`.
    pub metrics: Option<SocketAddr>,
    /// TLS on the front listener, when set.
    pub(crate) tls: Option<TlsConfig>,
    /// The OpenAI-compatible HTTP front end's address; `None` (the default)
    /// serves no HTTP front, so a routing file opens no port it did not ask
    /// for.
    pub http: Option<SocketAddr>,
}

/// `cors:`: the origins whose web pages a browser lets call the gateway
/// (grpc-web on the gRPC port, and the HTTP front). Without it no cross-origin
/// page may call; non-browser clients never need it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct CorsConfig {
    /// Origins as browsers send them (`https://app.example.com`, lowercase,
    /// no path), or `*` alone for any origin.
    pub allowed_origins: Vec<String>,
}

// === impl RawListen ===

impl RawListen {
    /// Where the file sets `listen.<key>`, for a problem about it.
    pub(super) fn address(&self, key: &str) -> Option<&Spanned<String>> {
        match key {
            "grpc" => self.grpc.as_ref(),
            "http" => self.http.as_ref(),
            "metrics" => self.metrics.as_ref(),
            _ => None,
        }
    }
}

// === impl ListenConfig ===

impl ListenConfig {
    /// The listeners that serve model calls, by their key under `listen:`:
    /// the rules about who may call apply to each of them alike. The admin
    /// port is not one (it serves metrics and probes, and reload behind
    /// its own key).
    pub(crate) fn serving(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> {
        std::iter::once(("grpc", self.grpc)).chain(self.http.map(|addr| ("http", addr)))
    }
}

// === checks ===

impl Checker {
    /// `listen:`: every address, with the defaults for those not given.
    pub(super) fn listen(&mut self, raw: Option<&Spanned<RawListen>>) -> ListenConfig {
        let raw = raw.map(|listen| &listen.value);
        let default_grpc = DEFAULT_GRPC_LISTEN
            .parse()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 50051)));
        let grpc = raw
            .and_then(|listen| listen.grpc.as_ref())
            .and_then(|addr| self.socket_addr(addr, "0.0.0.0:50051"));
        let tls = raw
            .and_then(|listen| listen.tls.as_ref())
            .and_then(|tls| self.listen_tls(tls));
        let http = raw
            .and_then(|listen| listen.http.as_ref())
            .and_then(|addr| self.socket_addr(addr, "0.0.0.0:8080"));
        let metrics = match raw.and_then(|listen| listen.metrics.as_ref()) {
            Some(addr) if addr.value.trim() == METRICS_OFF => None,
            Some(addr) => self.socket_addr(addr, "0.0.0.0:9090 (or off to disable)"),
            None => DEFAULT_METRICS_LISTEN.parse().ok(),
        };
        ListenConfig {
            grpc: grpc.unwrap_or(default_grpc),
            metrics,
            tls,
            http,
        }
    }

    /// `cors:`. Browsers send an origin as `scheme://host[:port]` in
    /// lowercase and compare it byte for byte, so anything else (a trailing
    /// slash, a path) would silently never match: it is refused here.
    pub(super) fn cors(&mut self, raw: RawCors) -> CorsConfig {
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
    pub(super) fn socket_addr(
        &mut self,
        raw: &Spanned<String>,
        example: &str,
    ) -> Option<SocketAddr> {
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
