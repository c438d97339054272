//! The checker that walks a parsed file: one pass that collects every
//! problem with its line and column (so an operator fixes a broken file in
//! one go) while building the validated [`Config`] from whatever is usable.
//! The topic files add their own `impl Checker` blocks; this one holds the
//! driver, the problem types and the checks every topic shares.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::*;

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
    pub(super) fn at(location: Option<Location>, message: impl Into<String>) -> Self {
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
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    pub(super) fn report<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems
            .push(Problem::at(Some(at.referenced), message));
    }

    pub(super) fn config(
        &mut self,
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Config {
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
    /// A time limit: zero would fail every call, so it is refused.
    pub(super) fn duration(&mut self, raw: &Spanned<String>) -> Option<Duration> {
        self.duration_from(raw, Duration::from_nanos(1))
    }

    /// A duration of at least `min`.
    pub(super) fn duration_from(
        &mut self,
        raw: &Spanned<String>,
        min: Duration,
    ) -> Option<Duration> {
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
}
