//! `limits:`: what one request may hold, how much the gateway takes on, and
//! what each connection may hold; plus the rate and concurrency `limits:`
//! of a key or a route.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::Checker;

/// Largest request the gateway reads when the file sets none: gRPC's own
/// default receive limit, so clients tuned for gRPC servers fit.
pub(crate) const DEFAULT_MAX_REQUEST_SIZE: usize = 4 * 1024 * 1024;
/// Most messages in one request by default: far beyond any real
/// conversation, low enough that a request cannot be a million tiny ones.
pub(crate) const DEFAULT_MAX_MESSAGES: u32 = 1024;
/// Calls the whole gateway serves at once by default; past it, new calls
/// are shed at once instead of queueing behind the ones already streaming.
pub(crate) const DEFAULT_MAX_IN_FLIGHT: u32 = 4096;
/// How often an idle HTTP/2 connection is pinged, by default.
pub(crate) const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub(crate) const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to finish its TLS handshake (or, in
/// plain text, to send its first bytes).
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence while a request body is being received.
pub(crate) const DEFAULT_REQUEST_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams one HTTP/2 connection may open by default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Request bytes held at once while bodies arrive, by default: sixteen
/// bodies of the default 4 MiB limit. Ordinary prompts are kilobytes, so
/// only a flood reaches it.
pub(crate) const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// Connections one listener keeps open by default.
pub(crate) const DEFAULT_MAX_CONNECTIONS: u32 = 16_384;

/// Smallest `max_request_size`: below it not even a short prompt fits.
const MIN_REQUEST_SIZE: usize = 1024;
/// Largest `max_request_size`: a request is held in memory whole.
const MAX_REQUEST_SIZE: usize = 1024 * 1024 * 1024;

// === raw (as written) ===

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
    /// Request bytes held at once while bodies arrive, over both fronts.
    #[serde(default)]
    pub(crate) max_buffered_bytes: Option<Spanned<RawSize>>,
    /// Open connections per listener.
    #[serde(default)]
    pub(crate) max_connections: Option<Spanned<u32>>,
}

/// A size as written: a number of bytes, or text such as `4MiB`.
#[derive(Debug)]
pub(crate) enum RawSize {
    /// A bare number.
    Bytes(u64),
    /// Text to parse.
    Text(String),
}

// === validated ===

/// Rate and concurrency limits of one caller (a key) or one route; `None`
/// is no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CallerLimits {
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
pub(crate) struct Limits {
    /// Largest request message in bytes, as received.
    pub max_request_size: usize,
    /// Most messages in one request.
    pub max_messages: u32,
    /// Most bytes of message content in one request; `None` leaves it to
    /// `max_request_size`.
    pub max_content_length: Option<usize>,
    /// Calls the whole gateway serves at once.
    pub max_in_flight: Option<NonZeroU32>,
    /// Request bytes the gateway holds at once while bodies arrive, over
    /// both fronts: a flood of slow bodies is refused past it instead of
    /// filling memory.
    pub max_buffered_bytes: usize,
    /// What one connection may hold and for how long.
    pub connection: ConnectionLimits,
}

/// Limits on each client connection, applied when it is accepted (so they
/// change on restart, not on reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnectionLimits {
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
    /// Connections one listener keeps open; more are closed at accept.
    pub max_connections: u32,
}

// === impl CallerLimits ===

impl CallerLimits {
    /// Whether it limits anything.
    pub(crate) fn is_unlimited(&self) -> bool {
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
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
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
            max_connections: DEFAULT_MAX_CONNECTIONS,
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
pub(crate) fn human_size(bytes: usize) -> String {
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
        if let Some(n) = &raw.max_connections {
            if n.value == 0 {
                self.report(n, "limits: max_connections must be 1 or more");
            } else {
                limits.connection.max_connections = n.value;
            }
        }
        if let Some(at) = &raw.max_buffered_bytes
            && let Some(size) = self.size(at, "max_buffered_bytes")
        {
            if size < limits.max_request_size {
                self.report(
                    at,
                    format!(
                        "limits: max_buffered_bytes must be at least max_request_size ({}), \
                         or no request that size could ever be received",
                        human_size(limits.max_request_size)
                    ),
                );
            } else {
                limits.max_buffered_bytes = size;
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
}
