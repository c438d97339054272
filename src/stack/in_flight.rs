//! Caps calls in flight (in the whole gateway, per route, per key) and
//! sheds what does not fit at once.
//!
//! A call holds its permits until its last token, not until its response
//! headers: an LLM call's headers come back in milliseconds and its tokens
//! for minutes, so tower's `ConcurrencyLimit` (which releases when the
//! response future resolves) would count nothing that matters. A call that
//! finds no room is refused at once rather than queued: waiting would only
//! add its latency to the caller's and hold a connection open, and the calls
//! already streaming keep every resource they had. A full gateway answers
//! UNAVAILABLE (another replica may have room, so clients and balancers
//! retry elsewhere); a full route or key answers RESOURCE_EXHAUSTED. Both
//! say when to retry.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::future::{Either, Ready};
use futures_util::{FutureExt, Stream};
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};

use super::guard::{Capacity, SharedGuard};
use crate::chat::{ChatEvent, ChatRequest, ChatStream};
use crate::error::{ErrorKind, GatewayError};

/// What a shed call is told to wait before trying again: calls end all the
/// time, so room comes back soon; a second keeps a flood of retries slower
/// than the calls it waits for.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Wraps a chat service in [`InFlight`].
#[derive(Clone)]
pub struct InFlightLayer {
    /// The policy in force.
    guard: SharedGuard,
}

/// Admits a call only if the gateway, its route and its key have room.
#[derive(Clone)]
pub struct InFlight<S> {
    inner: S,
    /// The policy in force.
    guard: SharedGuard,
}

/// A stream that holds `T` (permits, a settlement) until it ends, and
/// releases it the moment it does rather than when the front end drops it.
pub struct Holding<T> {
    /// The stream; `None` once it ended.
    inner: Option<ChatStream>,
    /// Released with the stream.
    held: Option<T>,
}

// === impl InFlightLayer ===

impl InFlightLayer {
    /// Caps calls by the limits in `guard`.
    pub fn new(guard: SharedGuard) -> Self {
        InFlightLayer { guard }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            guard: self.guard.clone(),
        }
    }
}

// === impl InFlight ===

type Permits = Vec<OwnedSemaphorePermit>;

impl<S> Service<ChatRequest> for InFlight<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = Either<
        Ready<Result<ChatStream, GatewayError>>,
        futures_util::future::BoxFuture<'static, Result<ChatStream, GatewayError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let permits = match self.admit(&req) {
            Ok(permits) => permits,
            Err(err) => return Either::Left(futures_util::future::ready(Err(err))),
        };
        if permits.is_empty() {
            return Either::Right(self.inner.call(req).boxed());
        }
        let response = self.inner.call(req);
        Either::Right(
            async move {
                let stream = response.await?;
                Ok(Box::pin(Holding::new(stream, permits)) as ChatStream)
            }
            .boxed(),
        )
    }
}

impl<S> InFlight<S> {
    /// One permit from each cap that applies, or the error for the first
    /// that is full. Permits taken before a full cap are dropped with the
    /// vector, so a refused call holds nothing.
    fn admit(&self, req: &ChatRequest) -> Result<Permits, GatewayError> {
        let guard = self.guard.load();
        let mut permits = Vec::new();
        if let Some(global) = &guard.in_flight {
            permits.push(take(global, || {
                GatewayError::unavailable(format!(
                    "the gateway is at its limit of {} calls in flight; retry shortly \
                     (another replica may have room)",
                    global.max
                ))
            })?);
        }
        if let Some(capacity) = guard
            .route(&req.model)
            .and_then(|quota| quota.in_flight.as_ref())
        {
            permits.push(take(capacity, || {
                GatewayError::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "model '{}' is at its limit of {} calls in flight; retry shortly",
                        req.model, capacity.max
                    ),
                )
            })?);
        }
        if let Some(key) = guard.key(&req.caller)
            && let Some(capacity) = &key.quota.in_flight
        {
            permits.push(take(capacity, || {
                GatewayError::new(
                    ErrorKind::ResourceExhausted,
                    format!(
                        "key '{}' is at its limit of {} calls in flight; retry when one of \
                         its calls ends",
                        key.name, capacity.max
                    ),
                )
            })?);
        }
        Ok(permits)
    }
}

/// A permit from `capacity` now, or `full()` with a retry hint.
fn take(
    capacity: &Capacity,
    full: impl FnOnce() -> GatewayError,
) -> Result<OwnedSemaphorePermit, GatewayError> {
    capacity
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| full().with_retry_after(SHED_RETRY_AFTER))
}

// === impl Holding ===

impl<T> Holding<T> {
    /// `inner`, holding `held` until it ends.
    pub fn new(inner: ChatStream, held: T) -> Self {
        Holding {
            inner: Some(inner),
            held: Some(held),
        }
    }
}

impl<T: Unpin> Stream for Holding<T> {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = ready!(inner.as_mut().poll_next(cx));
        if !matches!(item, Some(Ok(ChatEvent::Token(_)))) {
            // Done, failed or ended: release now.
            self.inner = None;
            self.held = None;
        }
        Poll::Ready(item)
    }
}
