//! Every failure as the OpenAI SDKs expect it: the HTTP status of the
//! error's kind, OpenAI's `{"error": {message, type, param, code}}` body,
//! and `Retry-After` where waiting helps. The one mapping from
//! [`GatewayError`] to HTTP, as `From<GatewayError> for Status` is for gRPC.

use std::time::Duration;

use axum::response::{IntoResponse, Json, Response};
use http::{HeaderValue, StatusCode, header};

use super::wire::{ErrorBody, ErrorDetail};
use crate::error::{ErrorKind, GatewayError};

/// The one mapping from [`GatewayError`] to an HTTP answer: the status of
/// its kind, OpenAI's error body, and `Retry-After` where waiting helps.
pub(crate) fn error_response(err: &GatewayError) -> Response {
    let mut response = (err.kind().http_status(), Json(error_body(err))).into_response();
    if let Some(wait) = retry_after(err) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

pub(super) fn error_body(err: &GatewayError) -> ErrorBody<'_> {
    ErrorBody {
        error: ErrorDetail {
            message: err.message(),
            kind: error_type(err.kind()),
            param: err.field(),
            code: Some(error_code(err)),
        },
    }
}

pub(super) fn openai_error(
    status: StatusCode,
    kind: &'static str,
    message: &str,
    param: Option<&str>,
    code: Option<&'static str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    };
    (status, Json(body)).into_response()
}

/// Seconds a caller should wait before trying again. A 429 always says
/// (the upstream's own wait, else one second), since SDKs retry it at once
/// otherwise; a 503 says only when the upstream did.
pub(super) fn retry_after(err: &GatewayError) -> Option<u64> {
    let seconds = |wait: Duration| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    match err.kind() {
        ErrorKind::ResourceExhausted => Some(err.retry_after().map_or(1, seconds)),
        ErrorKind::Unavailable => err.retry_after().map(seconds),
        _ => None,
    }
}

/// OpenAI's `type` for each kind.
fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::ResourceExhausted => "rate_limit_error",
        ErrorKind::Unavailable => "service_unavailable_error",
        ErrorKind::DeadlineExceeded => "timeout_error",
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::Cancelled => "cancelled_error",
        ErrorKind::Internal => "server_error",
    }
}

/// OpenAI's `code`: its own well-known codes where clients look for them
/// (`model_not_found`, `rate_limit_exceeded`, `context_length_exceeded`),
/// else the gRPC code's name, so both fronts name a failure alike.
fn error_code(err: &GatewayError) -> &'static str {
    if err.is_context_length_exceeded() {
        return "context_length_exceeded";
    }
    match err.kind() {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "model_not_found",
        ErrorKind::ResourceExhausted => "rate_limit_exceeded",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Internal => "internal",
    }
}
