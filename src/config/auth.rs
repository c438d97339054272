//! `auth:`: who may call the gateway. An API key is kept only as its
//! SHA-256 digest, whether the file gave the digest or named an environment
//! variable or a file holding the key, so a config can be logged, compared
//! and printed by `llmgate check` without leaking. Also the exposure rule:
//! a listener other hosts can reach must say who may call it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::{Checker, Problem};
use super::limits::{CallerLimits, RawCallerLimits};
use super::listen::{ListenConfig, RawListen};
use super::queue::Priority;
use super::{Config, RouteConfig};

/// Largest API key file read.
const MAX_KEY_FILE: u64 = 4096;

// === raw (as written) ===

/// `auth:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    /// `keys` (the default) or `none`.
    #[serde(default)]
    pub(crate) mode: Option<Spanned<String>>,
    /// The keys callers may present.
    #[serde(default)]
    pub(crate) keys: Vec<Spanned<RawKey>>,
}

/// One entry of `auth.keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    /// What to call the key.
    pub(crate) name: Spanned<String>,
    /// The key's SHA-256 digest in hex.
    #[serde(default)]
    pub(crate) sha256: Option<Spanned<String>>,
    /// An environment variable holding the key.
    #[serde(default)]
    pub(crate) env: Option<Spanned<String>>,
    /// A file holding the key.
    #[serde(default)]
    pub(crate) file: Option<Spanned<String>>,
    /// Models it may call; `"*"` for all.
    pub(crate) models: Spanned<Vec<Spanned<String>>>,
    /// Its own limits.
    #[serde(default)]
    pub(crate) limits: Option<Spanned<RawCallerLimits>>,
    /// Its class in route queues: `high`, `normal` or `low`.
    #[serde(default)]
    pub(crate) priority: Option<Spanned<String>>,
    /// Whether its callers may pick their class per call with the
    /// `x-llmgate-priority` header.
    #[serde(default)]
    pub(crate) priority_header: Option<Spanned<bool>>,
}

// === validated ===

/// `auth:`: whether callers must present an API key, and which.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum AuthConfig {
    /// The file has no `auth:`. Allowed only while every listener is on
    /// loopback (or requires client certificates): the way Redis's protected
    /// mode lets an unconfigured server answer local clients only.
    #[default]
    Unset,
    /// `mode: none`: the operator chose to let anyone in.
    Off,
    /// Callers must present one of these keys.
    Keys(Vec<ApiKeyConfig>),
}

/// One API key of `auth.keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiKeyConfig {
    /// Its name: in errors, logs and limits, never the key itself.
    pub name: String,
    /// SHA-256 of the key, which is all the gateway keeps of it.
    pub digest: KeyDigest,
    /// Where the file said the key comes from, for `llmgate check`.
    pub source: KeySource,
    /// The models it may call.
    pub models: ModelGrant,
    /// Its own limits.
    pub limits: CallerLimits,
    /// Its calls' class in route queues.
    pub priority: Priority,
    /// Whether a call may set its own class with `x-llmgate-priority`;
    /// without this the header is ignored, so a key cannot jump the queue
    /// its operator placed it in.
    pub priority_header: bool,
}

/// Where a key's secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// `sha256:` gave the digest itself.
    Digest,
    /// `env:` named this environment variable.
    Env(String),
    /// `file:` named this file.
    File(PathBuf),
}

/// The models a key may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModelGrant {
    /// `models: ["*"]`: every routed model, today's and tomorrow's.
    All,
    /// These models only.
    Only {
        /// The names as the file lists them, for messages.
        listed: Vec<String>,
        /// Every name that reaches one of their routes: a route's model and
        /// all its aliases, whichever of them the file listed.
        names: BTreeSet<String>,
    },
}

/// A SHA-256 digest of an API key. `Debug` does not print it: it is not
/// the key, but nothing about a key belongs in a log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyDigest([u8; 32]);

// === impl KeyDigest ===

impl KeyDigest {
    /// The digest of `key` as a caller sends it.
    pub(crate) fn of(key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        KeyDigest(bytes)
    }

    /// Parses 64 hex digits.
    pub(crate) fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16);
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let value = digit(pair[0])? * 16 + digit(pair[1])?;
            *byte = u8::try_from(value).ok()?;
        }
        Some(KeyDigest(bytes))
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(***)")
    }
}

// === impl ModelGrant ===

impl ModelGrant {
    /// Whether a call for `model` (a route's name or alias) is allowed.
    pub(crate) fn allows(&self, model: &str) -> bool {
        match self {
            ModelGrant::All => true,
            ModelGrant::Only { names, .. } => names.contains(model),
        }
    }
}

impl fmt::Display for ModelGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelGrant::All => f.write_str("every model"),
            ModelGrant::Only { listed, .. } => f.write_str(&listed.join(", ")),
        }
    }
}

// === checks ===

impl Checker {
    /// `auth:`, checked after the routes so that each key's models can be
    /// matched to them.
    pub(super) fn auth(
        &mut self,
        raw: Option<Spanned<RawAuth>>,
        routes: &[RouteConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> AuthConfig {
        let Some(raw) = raw else {
            return AuthConfig::Unset;
        };
        let auth = raw.value;
        match auth.mode.as_ref().map(|m| m.value.as_str()) {
            None | Some("keys") => {}
            Some("none") => {
                if let Some(first) = auth.keys.first() {
                    self.report(
                        first,
                        "auth: mode: none lets anyone in, so keys would never be checked; \
                         remove the keys, or remove mode: none",
                    );
                }
                return AuthConfig::Off;
            }
            Some(other) => {
                if let Some(mode) = &auth.mode {
                    self.report(
                        mode,
                        format!(
                            "auth: mode '{other}' is not a mode; use keys (callers present \
                             an API key) or none (anyone may call)"
                        ),
                    );
                }
                return AuthConfig::Unset;
            }
        }
        if auth.keys.is_empty() {
            self.problems.push(Problem::at(
                Some(raw.referenced),
                "auth: declares no keys, so no caller could get in; add keys, or write \
                 mode: none to let anyone call",
            ));
            return AuthConfig::Unset;
        }
        let route_names = route_names(routes);
        let mut names: HashMap<String, u64> = HashMap::new();
        let mut digests: HashMap<KeyDigest, String> = HashMap::new();
        let mut keys = Vec::new();
        for key in auth.keys {
            let Some(checked) = self.api_key(&key, &route_names, env) else {
                continue;
            };
            let line = key.value.name.referenced.line();
            if let Some(first) = names.get(&checked.name) {
                self.report(
                    &key.value.name,
                    format!(
                        "auth: key name '{}' is already used (line {first}); give each key \
                         its own name",
                        checked.name
                    ),
                );
                continue;
            }
            if let Some(other) = digests.get(&checked.digest) {
                self.report(
                    &key.value.name,
                    format!(
                        "auth: key '{}' has the same secret as key '{other}', so their \
                         callers could not be told apart; give each its own key",
                        checked.name
                    ),
                );
                continue;
            }
            names.insert(checked.name.clone(), line);
            digests.insert(checked.digest, checked.name.clone());
            keys.push(checked);
        }
        AuthConfig::Keys(keys)
    }

    fn api_key(
        &mut self,
        raw: &Spanned<RawKey>,
        route_names: &BTreeMap<&str, Vec<&str>>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<ApiKeyConfig> {
        let key = &raw.value;
        let name = key.name.value.clone();
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            self.report(
                &key.name,
                format!(
                    "auth: key name '{name}' must be letters, digits, '-', '_' or '.'; it \
                     appears in logs and errors in place of the key"
                ),
            );
        }
        let sources = [&key.sha256, &key.env, &key.file];
        let given = sources.iter().filter(|s| s.is_some()).count();
        let source = match (&key.sha256, &key.env, &key.file) {
            _ if given > 1 => {
                self.report(
                    raw,
                    format!(
                        "auth: key '{name}': give exactly one of sha256:, env: or file:, \
                         not {given}"
                    ),
                );
                None
            }
            (Some(hex), None, None) => match KeyDigest::from_hex(hex.value.trim()) {
                Some(digest) => Some((digest, KeySource::Digest)),
                None => {
                    self.report(
                        hex,
                        format!(
                            "auth: key '{name}': sha256 must be 64 hex digits, the SHA-256 \
                             of the key (printf %s \"$KEY\" | sha256sum)"
                        ),
                    );
                    None
                }
            },
            (None, Some(var), None) => match env(&var.value) {
                Some(secret) => self
                    .key_secret(
                        &name,
                        var,
                        &secret,
                        &format!("environment variable {}", var.value),
                    )
                    .map(|digest| (digest, KeySource::Env(var.value.clone()))),
                None => {
                    self.report(
                        var,
                        format!(
                            "auth: key '{name}': environment variable {} is not set; export \
                             it before starting the gateway",
                            var.value
                        ),
                    );
                    None
                }
            },
            (None, None, Some(path)) => {
                let secret =
                    self.read_bounded(path, &format!("auth: key '{name}': file"), MAX_KEY_FILE);
                secret.and_then(|bytes| match String::from_utf8(bytes) {
                    Ok(secret) => self
                        .key_secret(&name, path, &secret, &format!("file {}", path.value))
                        .map(|digest| (digest, KeySource::File(PathBuf::from(&path.value)))),
                    Err(_) => {
                        self.report(
                            path,
                            format!("auth: key '{name}': file {} is not text", path.value),
                        );
                        None
                    }
                })
            }
            _ => {
                self.report(
                    raw,
                    format!(
                        "auth: key '{name}' has no secret; give sha256: (the key's SHA-256 \
                         digest), env: (a variable holding the key) or file: (a file \
                         holding it)"
                    ),
                );
                None
            }
        };
        let models = self.model_grant(&name, &key.models, route_names);
        let limits = key
            .limits
            .as_ref()
            .map(|l| self.caller_limits(&format!("auth: key '{name}'"), &l.value))
            .unwrap_or_default();
        let priority = match &key.priority {
            Some(raw) => self.priority(&name, raw)?,
            None => Priority::default(),
        };
        let (digest, source) = source?;
        if !valid_name {
            return None;
        }
        Some(ApiKeyConfig {
            name,
            digest,
            source,
            models: models?,
            limits,
            priority,
            priority_header: key.priority_header.as_ref().is_some_and(|p| p.value),
        })
    }

    /// The digest of a key read from the environment or a file. The key
    /// must be something a caller can send in an `authorization` header;
    /// the message never quotes it.
    fn key_secret(
        &mut self,
        name: &str,
        at: &Spanned<String>,
        secret: &str,
        from: &str,
    ) -> Option<KeyDigest> {
        let secret = secret.trim();
        if secret.is_empty() {
            self.report(at, format!("auth: key '{name}': {from} is empty"));
            return None;
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            self.report(
                at,
                format!(
                    "auth: key '{name}': the key in {from} has spaces or characters outside \
                     printable ASCII, so no caller could send it in an authorization header"
                ),
            );
            return None;
        }
        Some(KeyDigest::of(secret.as_bytes()))
    }

    fn model_grant(
        &mut self,
        name: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
        route_names: &BTreeMap<&str, Vec<&str>>,
    ) -> Option<ModelGrant> {
        if raw.value.is_empty() {
            self.report(
                raw,
                format!(
                    "auth: key '{name}': models: is empty; list the models it may call, or \
                     [\"*\"] for every model"
                ),
            );
            return None;
        }
        if raw.value.iter().any(|m| m.value == "*") {
            if raw.value.len() > 1 {
                self.report(
                    raw,
                    format!(
                        "auth: key '{name}': \"*\" already allows every model; list either \
                         \"*\" or models, not both"
                    ),
                );
                return None;
            }
            return Some(ModelGrant::All);
        }
        let mut names = BTreeSet::new();
        let mut ok = true;
        for model in &raw.value {
            match route_names.get(model.value.as_str()) {
                Some(all) => names.extend(all.iter().map(|n| n.to_string())),
                None => {
                    ok = false;
                    self.report(
                        model,
                        format!(
                            "auth: key '{name}': model '{}' is not routed; routed models: {}",
                            model.value,
                            route_names.keys().copied().collect::<Vec<_>>().join(", ")
                        ),
                    );
                }
            }
        }
        ok.then(|| ModelGrant::Only {
            listed: raw.value.iter().map(|m| m.value.clone()).collect(),
            names,
        })
    }

    /// Refuses every listener that serves calls (`listen.grpc`,
    /// `listen.http`), is reachable from other hosts and lets in callers
    /// without a client certificate, while the file says nothing about who
    /// may call: one rule for all of them, since each serves every model.
    pub(super) fn exposed_without_auth(
        &mut self,
        config: &Config,
        raw: Option<&Spanned<RawListen>>,
    ) {
        if config.auth != AuthConfig::Unset {
            return;
        }
        for (key, addr) in config.listen.serving() {
            if !exposed_without_client_certs(&config.listen, addr) {
                continue;
            }
            let message = format!(
                "listen.{key} {addr} accepts calls from other hosts, but the file has no \
                 auth:; declare API keys under auth: keys:, require client certificates \
                 with listen.tls.client_ca, or write auth: {{ mode: none }} to let anyone \
                 call"
            );
            match raw.and_then(|listen| listen.value.address(key)) {
                Some(at) => self.report(at, message),
                None => self.problems.push(Problem::at(None, message)),
            }
        }
    }
}

/// Every routed name (route models and aliases) → all names of its route.
fn route_names(routes: &[RouteConfig]) -> BTreeMap<&str, Vec<&str>> {
    let mut map = BTreeMap::new();
    for route in routes {
        let all: Vec<&str> = std::iter::once(route.model.as_str())
            .chain(route.aliases.iter().map(String::as_str))
            .collect();
        for name in &all {
            map.insert(*name, all.clone());
        }
    }
    map
}

/// Whether the listener at `addr` is reachable from other hosts and lets
/// in callers without a client certificate.
pub(super) fn exposed_without_client_certs(listen: &ListenConfig, addr: SocketAddr) -> bool {
    let mtls = listen
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    !addr.ip().is_loopback() && !mtls
}
