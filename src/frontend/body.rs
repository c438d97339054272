//! The request body as the front door reads it: no gRPC message larger
//! than `limits.max_request_size`, and no silence longer than
//! `limits.request_idle_timeout` while it is still arriving.
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

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::config::human_size;

/// Errors a guarded body yields: the inner body's, or a `tonic::Status`
/// that tonic sends to the caller as it is.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// A gRPC request body held to [`BodyLimits`].
pub struct GuardedBody<B> {
    /// The body as received.
    inner: B,
    /// What it is held to.
    limits: BodyLimits,
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
}

// === impl GuardedBody ===

impl<B> GuardedBody<B> {
    /// `inner` held to `limits`.
    pub fn new(inner: B, limits: BodyLimits) -> Self {
        GuardedBody {
            inner,
            limits,
            prefix: [0; PREFIX],
            prefix_len: 0,
            remaining: 0,
            idle: None,
            failed: false,
        }
    }

    /// Follows the message framing through `data`; an error for a message
    /// whose announced length is over the limit.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
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
                    && let Err(status) = this.inspect(data)
                {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(status))));
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
                Poll::Ready(Some(Err(Box::new(tonic::Status::deadline_exceeded(
                    format!(
                        "the request stopped arriving for {} (request_idle_timeout); send \
                         the whole request without pausing",
                        crate::error::human_duration(limit)
                    ),
                )))))
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
