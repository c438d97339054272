//! Every failure as Anthropic's clients expect it: the status Anthropic
//! gives the same failure, its `{"type": "error", "error": {type,
//! message}}` body, and `Retry-After` where waiting helps. The one mapping
//! from [`GatewayError`] to this wire, beside the OpenAI front's own.
//!
//! The statuses are Anthropic's, not the OpenAI front's: UNAVAILABLE is
//! 529 `overloaded_error` (the status the Anthropic SDKs retry as
//! "overloaded"), a body over the size limit 413 `request_too_large`, a
//! bug 500 `api_error`.

use axum::response::{IntoResponse, Json, Response};
use http::{HeaderValue, StatusCode, header};

use super::super::error::retry_after;
use super::wire::{OutError, OutErrorDetail};
use crate::error::{ErrorKind, GatewayError};

/// Anthropic's status for "overloaded": what the gateway answers when no
/// upstream could serve the call.
const OVERLOADED: u16 = 529;

/// `err` as Anthropic's error answer.
pub(super) fn error_response(err: &GatewayError) -> Response {
    let (status, kind) = status_and_type(err.kind());
    let mut response = anthropic_error(status, kind, err.message());
    if let Some(wait) = retry_after(err) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

/// A refusal the OpenAI front already answered (a body refused while it
/// was read), re-said in Anthropic's words: its status and `Retry-After`
/// kept, the body Anthropic's.
pub(super) fn reworded(err: &GatewayError, openai: &Response) -> Response {
    let status = openai.status();
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::REQUEST_TIMEOUT => "timeout_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        _ => status_and_type(err.kind()).1,
    };
    let mut response = anthropic_error(status, kind, err.message());
    if let Some(wait) = openai.headers().get(header::RETRY_AFTER) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, wait.clone());
    }
    response
}

/// An error body with `status`.
pub(super) fn anthropic_error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    (status, Json(error_body(kind, message))).into_response()
}

/// The body (and the data of a stream's `error` event).
pub(super) fn error_body<'a>(kind: &'static str, message: &'a str) -> OutError<'a> {
    OutError {
        kind: "error",
        error: OutErrorDetail { kind, message },
    }
}

/// Anthropic's status and error type for each kind.
pub(super) fn status_and_type(kind: ErrorKind) -> (StatusCode, &'static str) {
    let overloaded = StatusCode::from_u16(OVERLOADED).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match kind {
        ErrorKind::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "authentication_error"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_error"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found_error"),
        ErrorKind::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ErrorKind::Unavailable => (overloaded, "overloaded_error"),
        ErrorKind::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        // A caller that left reads nothing; say what happened anyway.
        ErrorKind::Cancelled => (kind.http_status(), "api_error"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_answers_with_anthropics_status_and_type() {
        let cases = [
            (ErrorKind::InvalidArgument, 400, "invalid_request_error"),
            (ErrorKind::Unauthenticated, 401, "authentication_error"),
            (ErrorKind::PermissionDenied, 403, "permission_error"),
            (ErrorKind::NotFound, 404, "not_found_error"),
            (ErrorKind::ResourceExhausted, 429, "rate_limit_error"),
            (ErrorKind::Unavailable, 529, "overloaded_error"),
            (ErrorKind::DeadlineExceeded, 504, "timeout_error"),
            (ErrorKind::Internal, 500, "api_error"),
        ];
        for (kind, status, name) in cases {
            let (got_status, got_name) = status_and_type(kind);
            assert_eq!((got_status.as_u16(), got_name), (status, name), "{kind:?}");
        }
    }
}
