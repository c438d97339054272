//! Who may call the gateway and how much: the routing file's `listen.tls`,
//! `auth`, `limits`, the `limits` of each route and the `tls` of each
//! upstream.
//!
//! Secrets never appear in the validated config. An API key is kept only
//! as its SHA-256 digest, whether the file gave the digest or named an
//! environment variable or a file holding the key; the server's private key
//! is held as file contents whose `Debug` prints only the path. So a config
//! can be logged, compared and printed by `llmgate check` without leaking.
//!
//! Files named here (certificates, keys, CAs) are read when the routing
//! file is loaded, like `api_key_env`, so a missing or broken file is
//! reported at its line and column, and a reload sees new contents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read as _;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Checker, Config, RouteConfig};

/// Largest request the gateway reads when the file sets none: gRPC's own
/// default receive limit, so clients tuned for gRPC servers fit.
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 4 * 1024 * 1024;
/// Most messages in one request by default: far beyond any real
/// conversation, low enough that a request cannot be a million tiny ones.
pub const DEFAULT_MAX_MESSAGES: u32 = 1024;
/// Calls the whole gateway serves at once by default; past it, new calls
/// are shed at once instead of queueing behind the ones already streaming.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 4096;
/// How often an idle HTTP/2 connection is pinged, by default.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to finish its TLS handshake (or, in
/// plain text, to send its first bytes).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while a request body is being received.
pub const DEFAULT_REQUEST_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams one HTTP/2 connection may open by default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Largest certificate, key or CA file read: PEM files are a few KiB, so a
/// bigger one is the wrong file (or a device that never ends).
const MAX_PEM_FILE: u64 = 1024 * 1024;
/// Largest API key file read.
const MAX_KEY_FILE: u64 = 4096;
/// Smallest `max_request_size`: below it not even a short prompt fits.
const MIN_REQUEST_SIZE: usize = 1024;
/// Largest `max_request_size`: a request is held in memory whole.
const MAX_REQUEST_SIZE: usize = 1024 * 1024 * 1024;

// === validated ===

/// A file the routing file names, read when the file was loaded. `Debug`
/// shows the path only: the contents may be a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct PemFile {
    /// The path as written in the routing file.
    pub path: PathBuf,
    /// What the file held.
    contents: Arc<[u8]>,
}

/// `listen.tls:`: the front listener serves TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain, leaf first (PEM).
    pub cert: PemFile,
    /// The server's private key (PEM).
    pub key: PemFile,
    /// With it, callers must present a certificate this CA issued (mTLS).
    pub client_ca: Option<PemFile>,
}

/// `auth:`: whether callers must present an API key, and which.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthConfig {
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
pub struct ApiKeyConfig {
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
}

/// Where a key's secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `sha256:` gave the digest itself.
    Digest,
    /// `env:` named this environment variable.
    Env(String),
    /// `file:` named this file.
    File(PathBuf),
}

/// The models a key may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelGrant {
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
pub struct KeyDigest([u8; 32]);

/// Rate and concurrency limits of one caller (a key) or one route; `None`
/// is no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallerLimits {
    /// Calls admitted per minute.
    pub requests_per_minute: Option<NonZeroU32>,
    /// Tokens (in and out) per minute: the prompt is estimated when the
    /// call starts and the upstream's reported usage settles it at the end.
    pub tokens_per_minute: Option<NonZeroU32>,
    /// Calls in flight at once; more are refused at once.
    pub max_in_flight: Option<NonZeroU32>,
}

/// `limits:`: what one request may hold and how much the gateway takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message in bytes, as received.
    pub max_request_size: usize,
    /// Most messages in one request.
    pub max_messages: u32,
    /// Most bytes of message content in one request; `None` leaves it to
    /// `max_request_size`.
    pub max_content_length: Option<usize>,
    /// Calls the whole gateway serves at once.
    pub max_in_flight: Option<NonZeroU32>,
    /// What one connection may hold and for how long.
    pub connection: ConnectionLimits,
}

/// Limits on each client connection, applied when it is accepted (so they
/// change on restart, not on reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How often an idle HTTP/2 connection is pinged.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// How long the TLS handshake (or a plain connection's first bytes) may
    /// take.
    pub handshake_timeout: Duration,
    /// Longest silence while a request body is received.
    pub request_idle_timeout: Duration,
    /// Concurrent streams one HTTP/2 connection may open.
    pub max_streams: u32,
}

// === raw (as written) ===

/// `listen.tls:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// Certificate chain file.
    pub(crate) cert: Spanned<String>,
    /// Private key file.
    pub(crate) key: Spanned<String>,
    /// CA whose client certificates are required.
    #[serde(default)]
    pub(crate) client_ca: Option<Spanned<String>>,
}

/// `tls:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    /// The CA its servers' certificates are checked against.
    pub(crate) ca: Spanned<String>,
}

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
}

/// `limits:` of a key or a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCallerLimits {
    /// Calls per minute.
    #[serde(default)]
    pub(crate) requests_per_minute: Option<Spanned<u32>>,
    /// Tokens per minute.
    #[serde(default)]
    pub(crate) tokens_per_minute: Option<Spanned<u32>>,
    /// Calls in flight at once.
    #[serde(default)]
    pub(crate) max_in_flight: Option<Spanned<u32>>,
}

/// The top-level `limits:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    /// Largest request, in bytes or with a unit (`4MiB`).
    #[serde(default)]
    pub(crate) max_request_size: Option<Spanned<RawSize>>,
    /// Most messages per request.
    #[serde(default)]
    pub(crate) max_messages: Option<Spanned<u32>>,
    /// Most content bytes per request.
    #[serde(default)]
    pub(crate) max_content_length: Option<Spanned<RawSize>>,
    /// Calls in flight in the whole gateway.
    #[serde(default)]
    pub(crate) max_in_flight: Option<Spanned<u32>>,
    /// HTTP/2 ping interval.
    #[serde(default)]
    pub(crate) keepalive_interval: Option<Spanned<String>>,
    /// HTTP/2 ping answer limit.
    #[serde(default)]
    pub(crate) keepalive_timeout: Option<Spanned<String>>,
    /// TLS handshake limit.
    #[serde(default)]
    pub(crate) handshake_timeout: Option<Spanned<String>>,
    /// Request body silence limit.
    #[serde(default)]
    pub(crate) request_idle_timeout: Option<Spanned<String>>,
    /// Concurrent streams per connection.
    #[serde(default)]
    pub(crate) max_streams_per_connection: Option<Spanned<u32>>,
}

/// A size as written: a number of bytes, or text such as `4MiB`.
#[derive(Debug)]
pub(crate) enum RawSize {
    /// A bare number.
    Bytes(u64),
    /// Text to parse.
    Text(String),
}

// === impl PemFile ===

impl PemFile {
    /// A file's contents as read from `path`.
    pub fn new(path: PathBuf, contents: Vec<u8>) -> Self {
        PemFile {
            path,
            contents: contents.into(),
        }
    }

    /// What the file held.
    pub fn contents(&self) -> &[u8] {
        &self.contents
    }
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemFile({})", self.path.display())
    }
}

// === impl KeyDigest ===

impl KeyDigest {
    /// The digest of `key` as a caller sends it.
    pub fn of(key: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        KeyDigest(bytes)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
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
    pub fn allows(&self, model: &str) -> bool {
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

// === impl CallerLimits ===

impl CallerLimits {
    /// Whether it limits anything.
    pub fn is_unlimited(&self) -> bool {
        *self == CallerLimits::default()
    }
}

impl fmt::Display for CallerLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.requests_per_minute {
            parts.push(format!("{n} requests/min"));
        }
        if let Some(n) = self.tokens_per_minute {
            parts.push(format!("{n} tokens/min"));
        }
        if let Some(n) = self.max_in_flight {
            parts.push(format!("{n} in flight"));
        }
        if parts.is_empty() {
            f.write_str("unlimited")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

// === defaults ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_content_length: None,
            max_in_flight: NonZeroU32::new(DEFAULT_MAX_IN_FLIGHT),
            connection: ConnectionLimits::default(),
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            request_idle_timeout: DEFAULT_REQUEST_IDLE_TIMEOUT,
            max_streams: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

// === impl RawSize ===

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 4MiB, 512KiB or 1048576")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Parses `4MiB`, `512 KiB`, `1MB`, `65536` into bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// A size for people: `4 MiB`, `1536 KiB`, `100 bytes`.
pub fn human_size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

// === checks ===

impl Checker {
    /// `listen.tls:`: every file readable, and rustls accepts the result
    /// (the key fits the certificate).
    pub(super) fn listen_tls(&mut self, raw: &Spanned<RawTls>) -> Option<TlsConfig> {
        let tls = &raw.value;
        let cert = self.pem_file(&tls.cert, "listen.tls.cert");
        let key = self.pem_file(&tls.key, "listen.tls.key");
        let client_ca = match &tls.client_ca {
            Some(path) => Some(self.pem_file(path, "listen.tls.client_ca")?),
            None => None,
        };
        let (cert, key) = (cert?, key?);
        if let Err(err) = crate::tls::server_config(
            cert.contents(),
            key.contents(),
            client_ca.as_ref().map(PemFile::contents),
        ) {
            self.report(raw, format!("listen.tls: {err}"));
            return None;
        }
        Some(TlsConfig {
            cert,
            key,
            client_ca,
        })
    }

    /// An upstream's `tls:`: a CA file for `https://` endpoints.
    pub(super) fn upstream_tls(
        &mut self,
        name: &str,
        raw: &Spanned<RawUpstreamTls>,
        https: bool,
    ) -> Option<PemFile> {
        if !https {
            self.report(
                raw,
                format!(
                    "upstream '{name}': tls: applies to https:// endpoints, and this upstream \
                     has none; use https:// URLs (or scheme: https under discover:), or \
                     remove tls:"
                ),
            );
            return None;
        }
        let ca = self.pem_file(&raw.value.ca, &format!("upstream '{name}': tls.ca"))?;
        if let Err(err) = crate::tls::root_store(ca.contents()) {
            self.report(&raw.value.ca, format!("upstream '{name}': tls.ca {err}"));
            return None;
        }
        Some(ca)
    }

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
            self.problems.push(super::Problem::at(
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

    /// The `limits:` of a key or a route; `whose` starts each message.
    pub(super) fn caller_limits(&mut self, whose: &str, raw: &RawCallerLimits) -> CallerLimits {
        let mut positive = |value: &Option<Spanned<u32>>, key: &str| {
            let value = value.as_ref()?;
            let n = NonZeroU32::new(value.value);
            if n.is_none() {
                self.report(
                    value,
                    format!("{whose}: {key} must be 1 or more (omit it for no limit)"),
                );
            }
            n
        };
        CallerLimits {
            requests_per_minute: positive(&raw.requests_per_minute, "requests_per_minute"),
            tokens_per_minute: positive(&raw.tokens_per_minute, "tokens_per_minute"),
            max_in_flight: positive(&raw.max_in_flight, "max_in_flight"),
        }
    }

    /// The top-level `limits:`.
    pub(super) fn limits(&mut self, raw: Option<&Spanned<RawLimits>>) -> Limits {
        let mut limits = Limits::default();
        let Some(raw) = raw else {
            return limits;
        };
        let raw = &raw.value;
        if let Some(size) = raw
            .max_request_size
            .as_ref()
            .and_then(|s| self.size(s, "max_request_size"))
        {
            if (MIN_REQUEST_SIZE..=MAX_REQUEST_SIZE).contains(&size) {
                limits.max_request_size = size;
            } else if let Some(at) = &raw.max_request_size {
                self.report(
                    at,
                    format!(
                        "limits: max_request_size must be between {} and {}",
                        human_size(MIN_REQUEST_SIZE),
                        human_size(MAX_REQUEST_SIZE)
                    ),
                );
            }
        }
        if let Some(n) = &raw.max_messages {
            if n.value == 0 {
                self.report(n, "limits: max_messages must be 1 or more");
            } else {
                limits.max_messages = n.value;
            }
        }
        if let Some(at) = &raw.max_content_length
            && let Some(size) = self.size(at, "max_content_length")
        {
            if size == 0 {
                self.report(at, "limits: max_content_length must be more than 0");
            } else {
                limits.max_content_length = Some(size);
            }
        }
        if let Some(n) = &raw.max_in_flight {
            match NonZeroU32::new(n.value) {
                Some(n) => limits.max_in_flight = Some(n),
                None => self.report(n, "limits: max_in_flight must be 1 or more"),
            }
        }
        let connection = &mut limits.connection;
        for (raw, slot) in [
            (&raw.keepalive_interval, &mut connection.keepalive_interval),
            (&raw.keepalive_timeout, &mut connection.keepalive_timeout),
            (&raw.handshake_timeout, &mut connection.handshake_timeout),
            (
                &raw.request_idle_timeout,
                &mut connection.request_idle_timeout,
            ),
        ] {
            if let Some(d) = raw.as_ref().and_then(|d| self.duration(d)) {
                *slot = d;
            }
        }
        if let Some(n) = &raw.max_streams_per_connection {
            if n.value == 0 {
                self.report(n, "limits: max_streams_per_connection must be 1 or more");
            } else {
                limits.connection.max_streams = n.value;
            }
        }
        limits
    }

    fn size(&mut self, raw: &Spanned<RawSize>, key: &str) -> Option<usize> {
        let bytes = match &raw.value {
            RawSize::Bytes(n) => Some(*n),
            RawSize::Text(text) => parse_size(text),
        };
        let size = bytes.and_then(|b| usize::try_from(b).ok());
        if size.is_none() {
            self.report(
                raw,
                format!(
                    "limits: {key} is not a size; write it like 4MiB, 512KiB or 1048576 \
                     (bytes)"
                ),
            );
        }
        size
    }

    /// Reads a PEM file named at `at`.
    fn pem_file(&mut self, at: &Spanned<String>, what: &str) -> Option<PemFile> {
        let contents = self.read_bounded(at, what, MAX_PEM_FILE)?;
        Some(PemFile::new(PathBuf::from(&at.value), contents))
    }

    /// Reads the file named at `at`, refusing one larger than `limit`.
    fn read_bounded(&mut self, at: &Spanned<String>, what: &str, limit: u64) -> Option<Vec<u8>> {
        if at.value.is_empty() {
            self.report(at, format!("{what}: the path is empty"));
            return None;
        }
        let read = std::fs::File::open(Path::new(&at.value)).and_then(|file| {
            let mut bytes = Vec::new();
            file.take(limit + 1).read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) if bytes.len() as u64 > limit => {
                self.report(
                    at,
                    format!(
                        "{what}: {} is larger than {}; is it the right file?",
                        at.value,
                        human_size(usize::try_from(limit).unwrap_or(usize::MAX))
                    ),
                );
                None
            }
            Ok(bytes) => Some(bytes),
            Err(err) => {
                self.report(at, format!("{what}: cannot read {}: {err}", at.value));
                None
            }
        }
    }

    /// Refuses a listener that other hosts can reach while the file says
    /// nothing about who may call it.
    pub(super) fn exposed_without_auth(&mut self, config: &Config, at: Option<&Spanned<String>>) {
        if config.auth != AuthConfig::Unset || !exposed_without_client_certs(config) {
            return;
        }
        let message = format!(
            "listen.grpc {} accepts calls from other hosts, but the file has no auth:; \
             declare API keys under auth: keys:, require client certificates with \
             listen.tls.client_ca, or write auth: {{ mode: none }} to let anyone call",
            config.listen.grpc
        );
        match at {
            Some(at) => self.report(at, message),
            None => self.problems.push(super::Problem::at(None, message)),
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

/// Whether the listener is reachable from other hosts and lets in callers
/// without a client certificate.
fn exposed_without_client_certs(config: &Config) -> bool {
    let mtls = config
        .listen
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    !config.listen.grpc.ip().is_loopback() && !mtls
}

/// What a valid file does that an operator should think twice about, for
/// `llmgate check` and the log at start-up. Never mentions a secret.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let exposed = !config.listen.grpc.ip().is_loopback();
    if config.auth == AuthConfig::Off && exposed_without_client_certs(config) {
        warnings.push(format!(
            "listen.grpc {} is reachable from other hosts and auth is off (mode: none): \
             anyone who reaches it can call every model, paid ones included",
            config.listen.grpc
        ));
    }
    if exposed && config.listen.tls.is_none() && matches!(config.auth, AuthConfig::Keys(_)) {
        warnings.push(format!(
            "listen.grpc {} is reachable from other hosts without TLS, so API keys cross \
             the network in clear text; set listen.tls",
            config.listen.grpc
        ));
    }
    warnings
}
