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
pub(crate) struct DeadlineLayer;

/// Enforces [`ChatRequest::deadline`] on the inner service's response and
/// on its whole stream.
#[derive(Debug, Clone)]
pub(crate) struct Deadline<S> {
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

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::chat::testing::{End, done, drain, request, scripted, token};
    use crate::error::ErrorKind;

    const MS: Duration = Duration::from_millis(1);

    /// A router stub whose answer starts after `headers` and then streams
    /// `items`, stalling after them.
    fn upstream(
        headers: Duration,
        items: Vec<(Duration, Result<crate::chat::ChatEvent, GatewayError>)>,
    ) -> Deadline<
        impl Service<ChatRequest, Response = ChatStream, Error = GatewayError, Future: Send + 'static>
        + Clone,
    > {
        DeadlineLayer.layer(service_fn(move |_req: ChatRequest| {
            let items = items.clone();
            async move {
                tokio::time::sleep(headers).await;
                Ok::<_, GatewayError>(scripted(items, End::Stall).0)
            }
        }))
    }

    fn with_deadline(after: Duration) -> ChatRequest {
        let mut req = request("demo");
        req.deadline = Some(Instant::now() + after);
        req
    }

    fn expect_deadline(err: &GatewayError) {
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
        assert!(
            err.message().starts_with("the call's deadline (2s) passed"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("Raise the client's timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_has_not_started_by_the_deadline_is_deadline_exceeded() {
        let start = Instant::now();
        let result = upstream(MS * 5000, vec![])
            .oneshot(with_deadline(MS * 2000))
            .await;
        let Err(err) = result else {
            panic!("the deadline passed before the answer started");
        };
        expect_deadline(&err);
        assert_eq!(start.elapsed(), MS * 2000, "at the deadline, not after");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_still_running_at_the_deadline_ends_with_deadline_exceeded() {
        let start = Instant::now();
        let steady = (0..100).map(|_| (MS * 300, token("t"))).collect();
        let stream = upstream(MS * 100, steady)
            .oneshot(with_deadline(MS * 2000))
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let (tokens, end) = drain(stream).await;
        let Some(Err(err)) = end else {
            panic!("expected the deadline, got {end:?}");
        };
        expect_deadline(&err);
        assert_eq!(start.elapsed(), MS * 2000);
        assert_eq!(
            tokens.len(),
            6,
            "tokens until the deadline reach the caller"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_finishes_before_its_deadline_is_untouched() {
        let stream = upstream(
            MS * 100,
            vec![(MS * 100, token("a")), (MS * 100, done(1, 1))],
        )
        .oneshot(with_deadline(MS * 2000))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let (tokens, end) = drain(stream).await;
        assert_eq!(tokens, ["a"]);
        assert!(matches!(end, Some(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_a_deadline_is_not_timed() {
        let start = Instant::now();
        let stream = upstream(MS * 60_000, vec![(MS * 60_000, done(1, 1))])
            .oneshot(request("demo"))
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        let (_, end) = drain(stream).await;
        assert!(matches!(end, Some(Ok(_))));
        assert_eq!(start.elapsed(), MS * 120_000);
    }
}
