//! Refuses requests that hold more than the gateway takes: too many
//! messages, or more message content than `limits.max_content_length`.
//!
//! The size of the request on the wire is bounded earlier, by the front end
//! (nothing bigger than `max_request_size` is even read); this layer bounds
//! what a request that fits may ask of an upstream, in the terms the caller
//! wrote it in. Both answers are INVALID_ARGUMENT naming the field: sending
//! the same request again cannot succeed.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::guard::{RequestShape, SharedGuard};
use crate::chat::{ChatRequest, ChatStream};
use crate::config::human_size;
use crate::error::GatewayError;

/// Wraps a chat service in [`RequestLimits`].
#[derive(Clone)]
pub struct RequestLimitsLayer {
    /// The policy in force.
    guard: SharedGuard,
}

/// Checks each request's message count and content length.
#[derive(Clone)]
pub struct RequestLimits<S> {
    inner: S,
    /// The policy in force.
    guard: SharedGuard,
}

// === impl RequestLimitsLayer ===

impl RequestLimitsLayer {
    /// Checks requests against the limits in `guard`.
    pub fn new(guard: SharedGuard) -> Self {
        RequestLimitsLayer { guard }
    }
}

impl<S> Layer<S> for RequestLimitsLayer {
    type Service = RequestLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLimits {
            inner,
            guard: self.guard.clone(),
        }
    }
}

// === impl RequestLimits ===

impl<S> Service<ChatRequest> for RequestLimits<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = GatewayError>,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = Either<Ready<Result<ChatStream, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let shape = self.guard.load().request;
        match check(&shape, &req) {
            Ok(()) => Either::Right(self.inner.call(req)),
            Err(err) => Either::Left(ready(Err(err))),
        }
    }
}

/// The request against the shape limits.
fn check(shape: &RequestShape, req: &ChatRequest) -> Result<(), GatewayError> {
    let messages = req.messages.len();
    if messages > shape.max_messages as usize {
        return Err(GatewayError::invalid_argument(
            "messages",
            &format!(
                "has {messages} entries; this gateway takes at most {} per request. Shorten \
                 the conversation",
                shape.max_messages
            ),
        ));
    }
    if let Some(max) = shape.max_content_length {
        let content: usize = req.messages.iter().map(|m| m.content.len()).sum();
        if content > max {
            return Err(GatewayError::invalid_argument(
                "messages",
                &format!(
                    "hold {} of content; this gateway takes at most {} per request. Shorten \
                     the conversation",
                    human_size(content),
                    human_size(max)
                ),
            ));
        }
    }
    Ok(())
}
