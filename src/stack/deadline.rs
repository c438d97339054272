//! Holds every call to the caller's deadline, from routing to the last token.
//!
//! tonic's own server timeout answers CANCELLED and stops at the response
//! headers, so the gateway enforces `grpc-timeout` itself: the wait for the
//! upstream's headers and the whole token stream both end at the deadline
//! with DEADLINE_EXCEEDED, and the upstream request is dropped with them.

use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::chat::timed::{StreamLimits, TimedStream, TimeoutMessages};
use crate::chat::{ChatRequest, ChatStream};
use crate::error::{GatewayError, human_duration};

/// Wraps a chat service in [`Deadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

/// Enforces [`ChatRequest::deadline`] on the inner service's response and
/// on its whole stream.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

/// Error messages naming the caller's deadline.
struct CallerDeadline {
    /// The budget the caller gave, for the message.
    budget: Duration,
}

// === impl DeadlineLayer ===

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline { inner }
    }
}

// === impl Deadline ===

impl<S> Service<ChatRequest> for Deadline<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<ChatStream, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let Some(deadline) = req.deadline else {
            return self.inner.call(req).boxed();
        };
        let start = Instant::now();
        let messages = CallerDeadline {
            budget: deadline.saturating_duration_since(start),
        };
        let response = self.inner.call(req);
        async move {
            let stream = match tokio::time::timeout_at(deadline, response).await {
                Ok(result) => result?,
                Err(_) => return Err(messages.deadline()),
            };
            let limits = StreamLimits {
                deadline: Some(deadline),
                ..StreamLimits::default()
            };
            Ok(Box::pin(TimedStream::new(stream, limits, start, messages)) as ChatStream)
        }
        .boxed()
    }
}

// === impl CallerDeadline ===

impl TimeoutMessages for CallerDeadline {
    fn deadline(&self) -> GatewayError {
        GatewayError::deadline_exceeded(format!(
            "the call's deadline ({}) passed before the upstream finished; \
             the upstream request was cancelled. Raise the client's timeout \
             or ask for fewer tokens",
            human_duration(self.budget)
        ))
    }

    fn first_token(&self, _waited: Duration) -> GatewayError {
        self.deadline()
    }

    fn idle(&self, _waited: Duration) -> GatewayError {
        self.deadline()
    }
}
