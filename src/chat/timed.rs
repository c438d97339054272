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
pub struct StreamLimits {
    /// The instant by which the whole stream must be done.
    pub deadline: Option<Instant>,
    /// Longest wait from the start for the first token.
    pub first_token: Option<Duration>,
    /// Longest wait between two tokens.
    pub idle: Option<Duration>,
}

/// Says, in the caller's terms, which limit passed.
pub trait TimeoutMessages: Send + Unpin + 'static {
    /// The deadline passed.
    fn deadline(&self) -> GatewayError;
    /// No first token in time.
    fn first_token(&self, waited: Duration) -> GatewayError;
    /// Silence between tokens too long.
    fn idle(&self, waited: Duration) -> GatewayError;
}

/// A [`ChatStream`] held to [`StreamLimits`].
pub struct TimedStream<M> {
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
    pub fn new(inner: ChatStream, limits: StreamLimits, start: Instant, messages: M) -> Self {
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
                Some(Ok(ChatEvent::Token(_))) => {
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
