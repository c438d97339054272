//! Time limits on a streamed call: a total deadline, a wait for the first
//! token, and a longest silence between tokens.
//!
//! A gRPC or HTTP server timeout only covers the wait for response headers;
//! an LLM call's headers come back in milliseconds and its body can run for
//! minutes. So the limits live on the token stream itself (the same split as
//! linkerd's stream timeouts: headers, idle gaps, total). When a limit
//! passes, the stream yields one error and drops its inner stream at once,
//! which closes the upstream request: nothing keeps generating tokens that
//! nobody will receive.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::chat::{ChatEvent, ChatStream};
use crate::error::GatewayError;

/// The limits on one stream; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamLimits {
    /// The instant by which the whole stream must be done.
    pub deadline: Option<Instant>,
    /// Longest wait from the start for the first token.
    pub first_token: Option<Duration>,
    /// Longest wait between two tokens.
    pub idle: Option<Duration>,
}

/// Says, in the caller's terms, which limit passed.
pub(crate) trait TimeoutMessages: Send + Unpin + 'static {
    /// The deadline passed.
    fn deadline(&self) -> GatewayError;
    /// No first token in time.
    fn first_token(&self, waited: Duration) -> GatewayError;
    /// Silence between tokens too long.
    fn idle(&self, waited: Duration) -> GatewayError;
}

/// A [`ChatStream`] held to [`StreamLimits`].
pub(crate) struct TimedStream<M> {
    /// The stream being timed; `None` once it ended or was cut.
    inner: Option<ChatStream>,
    /// Fires at the total deadline.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Fires when the current wait (first token, then each gap) is too long.
    gap: Option<Pin<Box<Sleep>>>,
    /// How long the current gap may last; switches from the first-token
    /// limit to the idle limit once a token arrived.
    gap_limit: Option<Duration>,
    /// The idle limit, kept for after the first token.
    idle: Option<Duration>,
    /// Whether a token has been seen yet.
    started: bool,
    /// Builds the error for whichever limit passes.
    messages: M,
}

// === impl TimedStream ===

impl<M: TimeoutMessages> TimedStream<M> {
    /// Holds `inner` to `limits`, timing the first token from `start` (the
    /// moment the call began, before the upstream's headers arrived).
    pub(crate) fn new(
        inner: ChatStream,
        limits: StreamLimits,
        start: Instant,
        messages: M,
    ) -> Self {
        let gap_limit = limits.first_token.or(limits.idle);
        TimedStream {
            inner: Some(inner),
            deadline: limits
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            gap: gap_limit.map(|limit| Box::pin(tokio::time::sleep_until(start + limit))),
            gap_limit,
            idle: limits.idle,
            started: false,
            messages,
        }
    }

    /// Ends the stream with `err`, dropping the upstream request now.
    fn cut(&mut self, err: GatewayError) -> Poll<Option<Result<ChatEvent, GatewayError>>> {
        self.inner = None;
        self.deadline = None;
        self.gap = None;
        Poll::Ready(Some(Err(err)))
    }
}

impl<M: TimeoutMessages> Stream for TimedStream<M> {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // The inner stream goes first: a token that is ready wins over a
        // timer that fired in the same instant.
        if let Poll::Ready(item) = inner.as_mut().poll_next(cx) {
            match &item {
                // A piece of a tool call is output as much as a token.
                Some(Ok(ChatEvent::Token(_) | ChatEvent::ToolCall(_))) => {
                    if !this.started {
                        this.started = true;
                        this.gap_limit = this.idle;
                        if this.gap_limit.is_none() {
                            this.gap = None;
                        }
                    }
                    if let (Some(gap), Some(limit)) = (this.gap.as_mut(), this.gap_limit) {
                        gap.as_mut().reset(Instant::now() + limit);
                    }
                }
                Some(Ok(ChatEvent::Done(_))) | Some(Err(_)) | None => {
                    this.inner = None;
                    this.deadline = None;
                    this.gap = None;
                }
            }
            return Poll::Ready(item);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let err = this.messages.deadline();
            return this.cut(err);
        }
        if let (Some(gap), Some(limit)) = (this.gap.as_mut(), this.gap_limit) {
            ready!(gap.as_mut().poll(cx));
            let err = if this.started {
                this.messages.idle(limit)
            } else {
                this.messages.first_token(limit)
            };
            return this.cut(err);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    use crate::chat::testing::{End, done, drain, scripted, token};
    use crate::error::ErrorKind;

    /// Names each limit, so a test sees which one fired and when.
    struct Named;

    impl TimeoutMessages for Named {
        fn deadline(&self) -> GatewayError {
            GatewayError::deadline_exceeded("total")
        }

        fn first_token(&self, waited: Duration) -> GatewayError {
            GatewayError::deadline_exceeded(format!("first token after {waited:?}"))
        }

        fn idle(&self, waited: Duration) -> GatewayError {
            GatewayError::deadline_exceeded(format!("idle for {waited:?}"))
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn limits(deadline: Option<Duration>, first: Option<u64>, idle: Option<u64>) -> StreamLimits {
        StreamLimits {
            deadline: deadline.map(|d| Instant::now() + d),
            first_token: first.map(|ms| MS * ms as u32),
            idle: idle.map(|ms| MS * ms as u32),
        }
    }

    /// The error that ended the stream, and when, from the start.
    async fn ends_with(stream: TimedStream<Named>) -> (Vec<String>, String, Duration) {
        let start = Instant::now();
        let (tokens, end) = drain(stream).await;
        let message = match end {
            Some(Err(err)) => {
                assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
                err.message().to_string()
            }
            other => panic!("expected a time limit to end the stream, got {other:?}"),
        };
        (tokens, message, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_token_in_time_ends_the_stream_and_drops_the_upstream() {
        let (inner, closed) = scripted(vec![(MS * 500, token("late"))], End::Stall);
        let timed = TimedStream::new(
            inner,
            limits(None, Some(200), Some(1000)),
            Instant::now(),
            Named,
        );
        let (tokens, message, at) = ends_with(timed).await;
        assert!(tokens.is_empty());
        assert_eq!(message, "first token after 200ms");
        assert_eq!(at, MS * 200);
        assert!(
            closed.get(),
            "the upstream request is dropped with the error"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_token_is_timed_from_the_start_of_the_call_not_of_the_stream() {
        let start = Instant::now();
        tokio::time::sleep(MS * 150).await; // waiting for the upstream's headers
        let (inner, _) = scripted(vec![(MS * 100, token("a"))], End::Stall);
        let timed = TimedStream::new(inner, limits(None, Some(200), None), start, Named);
        let (tokens, message, at) = ends_with(timed).await;
        assert!(tokens.is_empty(), "the token would have come at 250ms");
        assert_eq!(message, "first token after 200ms");
        assert_eq!(at, MS * 50, "200ms after the call started");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silence_after_a_token_longer_than_idle_ends_the_stream() {
        let (inner, closed) = scripted(
            vec![(MS * 150, token("a")), (MS * 90, token("b"))],
            End::Stall,
        );
        let timed = TimedStream::new(
            inner,
            limits(None, Some(200), Some(100)),
            Instant::now(),
            Named,
        );
        let (tokens, message, at) = ends_with(timed).await;
        assert_eq!(tokens, ["a", "b"], "each gap was within the idle limit");
        assert_eq!(message, "idle for 100ms");
        assert_eq!(at, MS * 340, "100ms after the last token");
        assert!(closed.get());
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_limit_times_the_first_token_when_there_is_no_first_token_limit() {
        let (inner, _) = scripted(vec![(MS * 300, token("a"))], End::Stall);
        let timed = TimedStream::new(inner, limits(None, None, Some(100)), Instant::now(), Named);
        let (_, message, at) = ends_with(timed).await;
        assert_eq!(message, "first token after 100ms");
        assert_eq!(at, MS * 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_ends_a_stream_that_keeps_sending() {
        let steady = (0..100).map(|_| (MS * 50, token("t"))).collect();
        let (inner, closed) = scripted(steady, End::Stall);
        let timed = TimedStream::new(
            inner,
            limits(Some(MS * 1000), Some(100), Some(100)),
            Instant::now(),
            Named,
        );
        let (tokens, message, at) = ends_with(timed).await;
        assert_eq!(message, "total");
        assert_eq!(at, MS * 1000);
        assert_eq!(tokens.len(), 20, "a token every 50ms until the deadline");
        assert!(closed.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_ready_when_the_deadline_passes_is_delivered_first() {
        let (inner, _) = scripted(vec![(MS * 100, token("just in time"))], End::Stall);
        let timed = TimedStream::new(
            inner,
            limits(Some(MS * 100), None, None),
            Instant::now(),
            Named,
        );
        let (tokens, message, at) = ends_with(timed).await;
        assert_eq!(tokens, ["just in time"]);
        assert_eq!(message, "total");
        assert_eq!(at, MS * 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_finishes_in_time_ends_normally_and_fires_nothing_later() {
        let (inner, closed) = scripted(
            vec![(MS * 50, token("a")), (MS * 50, done(1, 1))],
            End::Stall,
        );
        let mut timed = TimedStream::new(
            inner,
            limits(Some(MS * 1000), Some(100), Some(100)),
            Instant::now(),
            Named,
        );
        let (tokens, end) = drain(&mut timed).await;
        assert_eq!(tokens, ["a"]);
        assert!(matches!(end, Some(Ok(_))));
        assert!(closed.get(), "the upstream is released at the final event");
        tokio::time::sleep(MS * 2000).await;
        assert!(timed.next().await.is_none(), "no limit fires after the end");
    }
}
