//! The request body as the front door reads it: no gRPC message (or HTTP
//! body) larger than `limits.max_request_size`, and no silence longer than
//! `limits.request_idle_timeout` while it is still arriving. Both fronts
//! read through the same guard, so both hold the same configured limits.
//!
//! tonic enforces its own message size limit too, but answers OUT_OF_RANGE;
//! gRPC's status code table says a message larger than the receiver's limit
//! is RESOURCE_EXHAUSTED, which is what clients written against other gRPC
//! servers expect. So the length prefix of each message is checked here,
//! before tonic reads (or allocates for) the message. A stream that stops
//! sending in the middle of its request would otherwise hold its stream
//! slot, and the task serving it, for as long as the connection lives;
//! the idle limit turns it into DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::Arc;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::config::human_size;

/// Errors a guarded body yields: the inner body's, or its refusal: a
/// `tonic::Status` (which tonic sends to the caller as it is) for gRPC,
/// a [`BodyRefusal`] for a whole HTTP body.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body was refused while it was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyRefusal {
    /// More than the limit arrived, or was announced.
    #[error(
        "the request body is {size} long; this gateway takes at most {limit}. Send a shorter \
         conversation"
    )]
    TooLarge {
        /// What arrived or was announced, as a human size.
        size: String,
        /// The limit, as a human size.
        limit: String,
    },
    /// Nothing arrived for the idle limit.
    #[error(
        "the request stopped arriving for {0} (request_idle_timeout); send the whole request \
         without pausing"
    )]
    Stalled(String),
    /// The gateway holds as many request bytes as its budget allows.
    #[error(
        "the gateway is receiving as many request bytes as it holds at once ({0}, \
         limits.max_buffered_bytes); retry shortly"
    )]
    Busy(String),
}

/// The request bytes the whole gateway holds while bodies arrive, shared
/// by every connection on both fronts. Each body's size is capped on its
/// own, but a thousand slow bodies under that cap would still fill memory;
/// past the budget, a body is refused (RESOURCE_EXHAUSTED, 429) instead.
#[derive(Debug, Clone)]
pub(crate) struct BufferBudget {
    /// One permit per byte held.
    bytes: Arc<Semaphore>,
    /// The budget, for messages.
    total: usize,
}

impl BufferBudget {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> Self {
        let total = bytes.min(Semaphore::MAX_PERMITS);
        BufferBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Takes `len` bytes of the budget, if they are free.
    fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let len = u32::try_from(len).ok()?;
        self.bytes.clone().try_acquire_many_owned(len).ok()
    }

    /// Bytes of the budget free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    fn refusal(&self) -> BodyRefusal {
        BodyRefusal::Busy(human_size(self.total))
    }
}

/// How the guarded body is framed, which decides what the size limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Length-prefixed gRPC messages: each message is held to the limit,
    /// checked from its prefix before it is read.
    GrpcMessages,
    /// One whole body (JSON on the HTTP front): its total is held to the
    /// limit.
    Whole,
}

/// Everything a front holds its request bodies to: each body's limits,
/// and the budget all of them share.
#[derive(Debug, Clone)]
pub(crate) struct BodyRules {
    /// Size and idle limits of each body.
    pub limits: BodyLimits,
    /// The bytes all bodies arriving at once may hold.
    pub budget: BufferBudget,
}

impl BodyRules {
    /// `body` held to these rules, counted as `framing` says.
    pub(crate) fn guard<B>(&self, body: B, framing: Framing) -> GuardedBody<B> {
        GuardedBody::framed(body, self.limits, framing).within(self.budget.clone())
    }
}

/// Length of a gRPC message's prefix: a compression flag and a 4-byte
/// big-endian length.
const PREFIX: usize = 5;

/// The limits a [`GuardedBody`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest gRPC message, in bytes.
    pub max_message: usize,
    /// Longest wait for the next piece of a body still arriving.
    pub idle: Duration,
}

/// A request body held to [`BodyLimits`].
pub struct GuardedBody<B> {
    /// The body as received.
    inner: B,
    /// What it is held to.
    limits: BodyLimits,
    /// What the size limit counts.
    framing: Framing,
    /// Bytes read so far, for [`Framing::Whole`].
    total: u64,
    /// The prefix of the message being read, while incomplete.
    prefix: [u8; PREFIX],
    /// How many prefix bytes have been read.
    prefix_len: usize,
    /// Bytes of the current message still to come after its prefix.
    remaining: u64,
    /// Fires when the body has been silent too long; armed while waiting.
    idle: Option<Pin<Box<Sleep>>>,
    /// Whether the body failed already: nothing follows an error.
    failed: bool,
    /// The gateway-wide budget its bytes are counted against, if any.
    budget: Option<BufferBudget>,
    /// The share of the budget this body holds, until it is dropped (or
    /// handed on with [`GuardedBody::into_held`]).
    held: Option<OwnedSemaphorePermit>,
}

// === impl GuardedBody ===

impl<B> GuardedBody<B> {
    /// A gRPC body, `inner`, held to `limits` message by message.
    pub fn new(inner: B, limits: BodyLimits) -> Self {
        Self::framed(inner, limits, Framing::GrpcMessages)
    }

    /// `inner` held to `limits`, counted as `framing` says.
    pub(crate) fn framed(inner: B, limits: BodyLimits, framing: Framing) -> Self {
        GuardedBody {
            inner,
            limits,
            framing,
            total: 0,
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            idle: None,
            failed: false,
            budget: None,
            held: None,
        }
    }

    /// Counts this body's bytes against `budget` while it is held.
    pub(crate) fn within(mut self, budget: BufferBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The share of the budget the body's bytes hold, for a caller that
    /// keeps the bytes after the body is read.
    pub(crate) fn into_held(self) -> Option<OwnedSemaphorePermit> {
        self.held
    }

    /// Counts `len` more bytes against the budget.
    fn hold(&mut self, len: usize) -> Result<(), BoxError> {
        let Some(budget) = &self.budget else {
            return Ok(());
        };
        let Some(permit) = budget.take(len) else {
            let refusal = budget.refusal();
            return Err(match self.framing {
                Framing::GrpcMessages => {
                    Box::new(tonic::Status::resource_exhausted(refusal.to_string()))
                }
                Framing::Whole => Box::new(refusal),
            });
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }

    /// Counts `data` against the limit; an error once it is over.
    fn inspect(&mut self, data: &[u8]) -> Result<(), BoxError> {
        match self.framing {
            Framing::GrpcMessages => self.inspect_messages(data).map_err(Into::into),
            Framing::Whole => {
                self.total = self.total.saturating_add(data.len() as u64);
                if self.total > self.limits.max_message as u64 {
                    return Err(Box::new(BodyRefusal::TooLarge {
                        size: format!("over {}", human_size(self.limits.max_message)),
                        limit: human_size(self.limits.max_message),
                    }));
                }
                Ok(())
            }
        }
    }

    /// The refusal for a body silent for `limit`, as this framing's
    /// callers expect it.
    fn stalled(&self, limit: Duration) -> BoxError {
        let refusal = BodyRefusal::Stalled(crate::error::human_duration(limit));
        match self.framing {
            Framing::GrpcMessages => {
                Box::new(tonic::Status::deadline_exceeded(refusal.to_string()))
            }
            Framing::Whole => Box::new(refusal),
        }
    }

    /// Follows the message framing through `data`; an error for a message
    /// whose announced length is over the limit.
    fn inspect_messages(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= take as u64;
                data = &data[take..];
                continue;
            }
            let take = data.len().min(PREFIX - self.prefix_len);
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == PREFIX {
                self.prefix_len = 0;
                let mut length = &self.prefix[1..];
                let length = u64::from(length.get_u32());
                if length > self.limits.max_message as u64 {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "the request message is {} long; this gateway takes at most {}. \
                         Send a shorter conversation",
                        human_size(usize::try_from(length).unwrap_or(usize::MAX)),
                        human_size(self.limits.max_message)
                    )));
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Each piece restarts the idle wait.
                this.idle = None;
                if let Some(data) = frame.data_ref()
                    && let Err(refusal) = this.inspect(data).and_then(|()| this.hold(data.len()))
                {
                    this.failed = true;
                    return Poll::Ready(Some(Err(refusal)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => {
                this.idle = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let limit = this.limits.idle;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                ready!(idle.as_mut().poll(cx));
                this.failed = true;
                this.idle = None;
                Poll::Ready(Some(Err(this.stalled(limit))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    const LIMITS: BodyLimits = BodyLimits {
        max_message: 16,
        idle: Duration::from_secs(5),
    };

    fn frame(len: usize) -> Vec<u8> {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend(std::iter::repeat_n(b'x', len));
        frame
    }

    #[tokio::test]
    async fn a_grpc_message_within_the_limit_passes_whole() {
        let mut two = frame(16);
        two.extend(frame(3));
        let body = GuardedBody::new(Full::new(Bytes::from(two.clone())), LIMITS);
        let read = body.collect().await.expect("within the limit").to_bytes();
        assert_eq!(read, two);
    }

    #[tokio::test]
    async fn a_grpc_message_announced_over_the_limit_is_resource_exhausted() {
        // Only the prefix arrives: the announcement alone is refused.
        let body = GuardedBody::new(Full::new(Bytes::from(frame(17)[..5].to_vec())), LIMITS);
        let err = body.collect().await.expect_err("over the limit");
        let status = err.downcast::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[tokio::test]
    async fn a_whole_body_over_the_limit_is_refused_as_too_large() {
        let body = GuardedBody::framed(
            Full::new(Bytes::from(vec![b'{'; 17])),
            LIMITS,
            Framing::Whole,
        );
        let err = body.collect().await.expect_err("over the limit");
        let refusal = err.downcast::<BodyRefusal>().expect("a refusal");
        assert!(
            matches!(*refusal, BodyRefusal::TooLarge { .. }),
            "{refusal}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_silent_for_the_idle_limit_is_refused_then() {
        let silent = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let started = tokio::time::Instant::now();
        let err = GuardedBody::framed(silent, LIMITS, Framing::Whole)
            .collect()
            .await
            .expect_err("stalled");
        assert_eq!(
            started.elapsed(),
            LIMITS.idle,
            "refused when the limit passed"
        );
        let refusal = err.downcast::<BodyRefusal>().expect("a refusal");
        assert!(matches!(*refusal, BodyRefusal::Stalled(_)), "{refusal}");

        let silent = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let err = GuardedBody::new(silent, LIMITS)
            .collect()
            .await
            .expect_err("stalled");
        let status = err.downcast::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn bodies_past_the_shared_budget_are_refused_until_bytes_are_given_back() {
        let rules = BodyRules {
            limits: LIMITS,
            budget: BufferBudget::new(20),
        };
        let first = rules.guard(Full::new(Bytes::from(vec![b'a'; 16])), Framing::Whole);
        let first = first.collect().await.expect("within the budget");
        assert_eq!(
            rules.budget.available(),
            20,
            "a collected body gives its bytes back"
        );

        let mut holding = rules.guard(Full::new(Bytes::from(vec![b'a'; 16])), Framing::Whole);
        let _ = holding
            .frame()
            .await
            .expect("a frame")
            .expect("within the budget");
        assert_eq!(rules.budget.available(), 4);
        let second = rules.guard(Full::new(Bytes::from(vec![b'b'; 8])), Framing::Whole);
        let err = second.collect().await.expect_err("over the budget");
        let refusal = err.downcast::<BodyRefusal>().expect("a refusal");
        assert!(matches!(*refusal, BodyRefusal::Busy(_)), "{refusal}");

        let grpc = rules.guard(Full::new(Bytes::from(frame(8))), Framing::GrpcMessages);
        let err = grpc.collect().await.expect_err("over the budget");
        let status = err.downcast::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);

        drop(holding.into_held());
        assert_eq!(
            rules.budget.available(),
            20,
            "released when the holder is done"
        );
        drop(first);
    }
}
