//! The checker that walks a parsed file: one pass that collects every
//! problem with its line and column (so an operator fixes a broken file in
//! one go) while building the validated [`Config`] from whatever is usable.
//! The topic files add their own `impl Checker` blocks; this one holds the
//! driver, the problem types and the checks every topic shares.

use std::collections::BTreeMap;
use std::fmt;
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
    pub(crate) fn unreadable(source: &str, err: &std::io::Error) -> Self {
        Self::whole_file(source, format!("cannot read the file: {err}"))
    }

    /// The file is valid but the gateway cannot build a table from it.
    pub(crate) fn unusable(source: &str, why: &str) -> Self {
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

/// Longest duration the file may give anywhere (timeouts, intervals,
/// back-offs, grace periods, ejections, keep-alives): a week is beyond any
/// sane setting, and far enough below what a clock can add that no
/// deadline computed from it can overflow (and panic) mid-call.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The message for a duration over [`MAX_DURATION`].
pub(super) fn too_long(value: &str) -> String {
    format!(
        "duration '{value}' is longer than {}, the longest any duration in the file may \
         be; write a shorter one such as 10m or 1h",
        humantime::format_duration(MAX_DURATION)
    )
}

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

    /// The whole file, topic by topic. Routes are checked after upstreams
    /// (pools name them) and auth after routes (keys name models); the
    /// exposure rule last, as it weighs listeners against auth.
    pub(super) fn config(
        &mut self,
        raw: RawConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Config {
        let listen = self.listen(raw.listen.as_ref());
        let limits = self.limits(raw.limits.as_ref());
        let cors = raw
            .cors
            .map(|cors| self.cors(cors.value))
            .unwrap_or_default();
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
        let routes = self.routes(raw.routes, &known_upstreams);
        let auth = self.auth(raw.auth, &routes, env);
        let state = self.state(raw.state.as_ref(), env);
        let config = Config {
            listen,
            shutdown_grace,
            cors,
            upstreams,
            routes,
            auth,
            limits,
            state,
        };
        self.exposed_without_auth(&config, raw.listen.as_ref());
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
            Ok(d) if d > MAX_DURATION => {
                self.report(raw, too_long(&raw.value));
                None
            }
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
