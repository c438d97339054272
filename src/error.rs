//! The one error type a call can fail with, from any layer.
//!
//! Each error carries its canonical kind (which decides the gRPC code and the
//! HTTP status) and a message written for the caller: what went wrong and,
//! where there is one, what to do next. The mapping to a wire status happens
//! exactly once, at the front end's edge.

use std::fmt;

/// Canonical failure classes. They are the gRPC codes a caller can act on;
/// the set is deliberately small so every layer agrees on what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong; retrying it unchanged cannot help.
    InvalidArgument,
    /// The model is not routed here, or the upstream does not have it.
    NotFound,
    /// A rate limit tripped (ours or the upstream's 429); retry with back-off.
    ResourceExhausted,
    /// No upstream could serve the call right now; safe to retry.
    Unavailable,
    /// The caller's deadline or an upstream timeout passed.
    DeadlineExceeded,
    /// The caller presented no valid key, or the upstream refused ours.
    Unauthenticated,
    /// The caller's key may not call this model, or the upstream refused
    /// the call for our credentials.
    PermissionDenied,
    /// The caller went away before the call finished.
    Cancelled,
    /// A bug in the gateway.
    Internal,
}

/// A failed call: its kind and a message for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    kind: ErrorKind,
    message: String,
    /// How long the upstream asked us to wait (its `Retry-After`).
    retry_after: Option<std::time::Duration>,
    /// The model refused the prompt as longer than its context window: no
    /// retry on the same model can help, a larger one might.
    context_length: bool,
    /// Retrying would only repeat the failure (a replayed answer that
    /// differs from what the caller already has).
    final_attempt: bool,
    /// The request field an `InvalidArgument` is about, for wires that
    /// report it apart from the message (OpenAI's `param`).
    field: Option<String>,
    /// The endpoint could not be reached or dropped the connection: a fault
    /// of the endpoint itself, not of one model it serves.
    transport: bool,
    /// Every endpoint that could take the call was at `max_in_flight`:
    /// busy, not broken, so a route's queue may wait for a slot (an
    /// ejected or failing pool is not worth waiting for).
    at_capacity: bool,
}

// === impl ErrorKind ===

impl ErrorKind {
    /// The gRPC status code for this kind.
    pub(crate) fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
            ErrorKind::Cancelled => tonic::Code::Cancelled,
            ErrorKind::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status an HTTP front end answers with for this kind.
    pub(crate) fn http_status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ErrorKind::InvalidArgument => S::BAD_REQUEST,
            ErrorKind::NotFound => S::NOT_FOUND,
            ErrorKind::ResourceExhausted => S::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorKind::DeadlineExceeded => S::GATEWAY_TIMEOUT,
            ErrorKind::Unauthenticated => S::UNAUTHORIZED,
            ErrorKind::PermissionDenied => S::FORBIDDEN,
            ErrorKind::Cancelled => S::from_u16(499).unwrap_or(S::BAD_REQUEST),
            ErrorKind::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind an upstream HTTP status means for our caller.
    pub(crate) fn from_upstream_status(status: http::StatusCode) -> ErrorKind {
        match status.as_u16() {
            400 | 413 | 422 => ErrorKind::InvalidArgument,
            401 => ErrorKind::Unauthenticated,
            // 402: the account cannot pay (Anthropic's billing_error);
            // retrying will not help until someone acts, as with 403.
            402 | 403 => ErrorKind::PermissionDenied,
            404 => ErrorKind::NotFound,
            408 | 504 => ErrorKind::DeadlineExceeded,
            429 => ErrorKind::ResourceExhausted,
            _ => ErrorKind::Unavailable,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.grpc_code())
    }
}

// === impl GatewayError ===

impl GatewayError {
    /// An error of `kind` with a caller-facing message.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            retry_after: None,
            context_length: false,
            final_attempt: false,
            field: None,
            transport: false,
            at_capacity: false,
        }
    }

    /// A request field is wrong: the message names the field.
    pub(crate) fn invalid_argument(field: &str, problem: &str) -> Self {
        let mut err = Self::new(ErrorKind::InvalidArgument, format!("{field} {problem}"));
        err.field = Some(field.to_string());
        err
    }

    /// No upstream could take the call.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// A deadline or timeout passed.
    pub(crate) fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::DeadlineExceeded, message)
    }

    /// Notes how long the caller should wait before trying again: an
    /// upstream's `Retry-After`, or when a local limit will have room.
    pub(crate) fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Marks the error as "prompt longer than the model's context window".
    pub(crate) fn with_context_length_exceeded(mut self) -> Self {
        self.context_length = true;
        self
    }

    /// Marks the error as one no retry should follow.
    pub(crate) fn not_retryable(mut self) -> Self {
        self.final_attempt = true;
        self
    }

    /// Marks the error as the connection's (refused, reset, TLS, connect
    /// timeout): it counts against the endpoint for every model it serves.
    pub(crate) fn in_transport(mut self) -> Self {
        self.transport = true;
        self
    }

    /// Marks the error as "every endpoint is at `max_in_flight`".
    pub(crate) fn at_capacity(mut self) -> Self {
        self.at_capacity = true;
        self
    }

    /// Whether the balancer found endpoints, all of them busy: a slot will
    /// free, so waiting can help.
    pub(crate) fn is_at_capacity(&self) -> bool {
        self.at_capacity
    }

    /// Whether the connection failed, rather than one model's answer.
    pub(crate) fn is_transport(&self) -> bool {
        self.transport
    }

    /// How long the upstream asked callers to wait before trying again.
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Whether the prompt was too long for the model.
    pub(crate) fn is_context_length_exceeded(&self) -> bool {
        self.context_length
    }

    /// Whether another endpoint, pool or fallback model could succeed where
    /// this attempt failed: the upstream was down, overloaded or too slow,
    /// not the request wrong.
    pub(crate) fn is_retryable(&self) -> bool {
        !self.final_attempt
            && matches!(
                self.kind,
                ErrorKind::Unavailable | ErrorKind::ResourceExhausted | ErrorKind::DeadlineExceeded
            )
    }

    /// The same error with `context` put before its message.
    pub(crate) fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The request field an invalid argument is about, when one is.
    pub(crate) fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What class of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The caller-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A duration as people write it in config files and timeouts (`250ms`,
/// `1.5s`), for error messages.
pub(crate) fn human_duration(d: std::time::Duration) -> String {
    if d < std::time::Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        let secs = d.as_secs_f64();
        if secs.fract() == 0.0 {
            format!("{secs:.0}s")
        } else {
            format!("{secs:.1}s")
        }
    }
}

/// A wait in whole seconds, rounded up and at least one: what a
/// `retry-after` can say without telling a client to retry at once.
pub(crate) fn whole_seconds(wait: std::time::Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl From<GatewayError> for tonic::Status {
    /// The status, with any wait the caller should honour as `retry-after`
    /// (whole seconds, as in HTTP) and `grpc-retry-pushback-ms` (which gRPC
    /// clients with a retry policy obey), in the trailers or, for a call
    /// refused before it started, the trailers-only response.
    fn from(err: GatewayError) -> Self {
        let mut status = tonic::Status::new(err.kind.grpc_code(), err.message);
        if let Some(wait) = err.retry_after {
            let seconds = whole_seconds(wait);
            let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            let metadata = status.metadata_mut();
            metadata.insert("retry-after", seconds.into());
            metadata.insert("grpc-retry-pushback-ms", millis.into());
        }
        status
    }
}
