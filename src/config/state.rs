//! `state:`: where the limits of keys and routes are counted. Without it
//! each replica counts alone (a key allowed 600 requests a minute gets 600
//! from every replica); with `state.redis` the replicas share one count in
//! Redis, and `on_error` says what a call meets while Redis cannot answer.

use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::Secret;
use super::check::Checker;

/// How long a store call may take by default: Redis on the same network
/// answers in well under a millisecond, and a call waits at most this long
/// before the gateway decides without it.
pub(crate) const DEFAULT_STATE_TIMEOUT: Duration = Duration::from_millis(5);
/// The prefix of every key the gateway writes, by default.
pub(crate) const DEFAULT_KEY_PREFIX: &str = "llmgate:";
/// Longest store timeout: a limit check must never be what a caller waits
/// for, so anything longer is a mistake.
const MAX_STATE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest password file read.
const MAX_PASSWORD_FILE: u64 = 4096;

// === raw (as written) ===

/// The top-level `state:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    /// The shared store.
    #[serde(default)]
    pub(crate) redis: Option<Spanned<RawRedis>>,
}

/// `state.redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    /// `redis://host:port/db` or `rediss://` for TLS.
    pub(crate) url: Spanned<String>,
    /// Prefix of every key written.
    #[serde(default)]
    pub(crate) key_prefix: Option<Spanned<String>>,
    /// Bound on every store call.
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// `allow` or `deny`.
    #[serde(default)]
    pub(crate) on_error: Option<Spanned<String>>,
    /// The variable holding the password.
    #[serde(default)]
    pub(crate) password_env: Option<Spanned<String>>,
    /// The file holding the password.
    #[serde(default)]
    pub(crate) password_file: Option<Spanned<String>>,
}

// === validated ===

/// Where limits are counted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StateConfig {
    /// The store the replicas share; `None` counts in each replica alone.
    pub redis: Option<RedisConfig>,
}

/// A Redis the replicas share limits through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The URL as written (never with a password: that is refused).
    pub url: String,
    /// Prefix of every key the gateway writes, so several gateways (or
    /// other tenants) can share one Redis.
    pub(crate) key_prefix: String,
    /// Bound on every store call; past it the call is decided without the
    /// store, as `on_error` says.
    pub(crate) timeout: Duration,
    /// What calls meet while the store cannot answer.
    pub(crate) on_error: OnStoreError,
    /// The password, read from the environment or a file.
    pub(crate) password: Option<Secret>,
    /// Where the password came from, for `llmgate check`.
    pub(crate) password_source: Option<String>,
}

/// What a call meets while the shared store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OnStoreError {
    /// Served under each replica's local limits: an outage of Redis is no
    /// outage of the gateway, at the price of counting per replica
    /// meanwhile.
    #[default]
    Allow,
    /// Refused with UNAVAILABLE: for budgets that must never be exceeded.
    Deny,
}

// === impl ===

impl RedisConfig {
    /// The connection settings for the client, password included.
    pub(crate) fn connection_info(&self) -> redis::RedisResult<redis::ConnectionInfo> {
        let info = self.url.as_str().into_connection_info()?;
        Ok(match &self.password {
            Some(password) => {
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_password(password.expose());
                info.set_redis_settings(settings)
            }
            None => info,
        })
    }
}

impl fmt::Display for OnStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        })
    }
}

// === checks ===

impl Checker {
    /// `state:`.
    pub(super) fn state(
        &mut self,
        raw: Option<&Spanned<RawState>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> StateConfig {
        let Some(redis) = raw.and_then(|state| state.value.redis.as_ref()) else {
            return StateConfig::default();
        };
        StateConfig {
            redis: self.redis(&redis.value, env),
        }
    }

    fn redis(
        &mut self,
        raw: &RawRedis,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<RedisConfig> {
        let url = self.redis_url(&raw.url);
        let key_prefix = match &raw.key_prefix {
            Some(prefix)
                if prefix.value.is_empty() || prefix.value.contains(char::is_whitespace) =>
            {
                self.report(
                    prefix,
                    "state.redis.key_prefix must be non-empty and without spaces, such as \
                     llmgate:",
                );
                None
            }
            Some(prefix) => Some(prefix.value.clone()),
            None => Some(DEFAULT_KEY_PREFIX.to_string()),
        };
        let timeout = match &raw.timeout {
            Some(timeout) => match self.duration(timeout) {
                Some(d) if d > MAX_STATE_TIMEOUT => {
                    self.report(
                        timeout,
                        format!(
                            "state.redis.timeout '{}' is too long: a limit check must not \
                             hold a call up; write at most 1s (5ms suits a Redis nearby)",
                            timeout.value
                        ),
                    );
                    None
                }
                other => other,
            },
            None => Some(DEFAULT_STATE_TIMEOUT),
        };
        let on_error = match raw.on_error.as_ref().map(|v| (v, v.value.trim())) {
            None => Some(OnStoreError::Allow),
            Some((_, "allow")) => Some(OnStoreError::Allow),
            Some((_, "deny")) => Some(OnStoreError::Deny),
            Some((at, other)) => {
                self.report(
                    at,
                    format!(
                        "state.redis.on_error '{other}' is not allow or deny: allow serves \
                         calls under each replica's own limits while Redis is away, deny \
                         refuses them"
                    ),
                );
                None
            }
        };
        let password = match (&raw.password_env, &raw.password_file) {
            (Some(_), Some(file)) => {
                self.report(
                    file,
                    "state.redis: give password_env or password_file, not both",
                );
                None
            }
            (Some(var), None) => match env(&var.value) {
                Some(secret) if !secret.trim().is_empty() => Some(Some((
                    Secret::new(secret.trim().to_string()),
                    format!("from env {}", var.value),
                ))),
                _ => {
                    self.report(
                        var,
                        format!(
                            "state.redis.password_env: environment variable {} is not set \
                             (or empty); export it before starting the gateway",
                            var.value
                        ),
                    );
                    None
                }
            },
            (None, Some(path)) => self
                .read_bounded(path, "state.redis.password_file", MAX_PASSWORD_FILE)
                .and_then(|bytes| match String::from_utf8(bytes) {
                    Ok(text) if !text.trim().is_empty() => Some(Some((
                        Secret::new(text.trim().to_string()),
                        format!("from file {}", path.value),
                    ))),
                    _ => {
                        self.report(
                            path,
                            format!(
                                "state.redis.password_file: {} is empty or not text",
                                path.value
                            ),
                        );
                        None
                    }
                }),
            (None, None) => Some(None),
        };
        let password = password?;
        Some(RedisConfig {
            url: url?,
            key_prefix: key_prefix?,
            timeout: timeout?,
            on_error: on_error?,
            password_source: password.as_ref().map(|(_, source)| source.clone()),
            password: password.map(|(secret, _)| secret),
        })
    }

    /// `redis://` or `rediss://` with a host, and no credentials: URLs
    /// land in logs, and the password has `password_env` and
    /// `password_file`.
    fn redis_url(&mut self, raw: &Spanned<String>) -> Option<String> {
        let url = raw.value.trim();
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        if authority.contains('@') {
            self.report(
                raw,
                "state.redis.url must not carry a user name or password (user:pass@host): \
                 URLs appear in logs; put the password in password_env or password_file",
            );
            return None;
        }
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        if !scheme_ok || authority.is_empty() {
            self.report(
                raw,
                format!(
                    "state.redis.url '{url}' must be redis://host:port/db, or rediss:// for \
                     TLS, such as redis://redis:6379/0"
                ),
            );
            return None;
        }
        if let Err(err) = url.into_connection_info() {
            self.report(
                raw,
                format!(
                    "state.redis.url '{url}' is not a Redis URL ({err}); write it like \
                     redis://redis:6379/0"
                ),
            );
            return None;
        }
        Some(url.to_string())
    }
}
