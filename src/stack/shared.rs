//! The hook for limits shared by every replica ([`crate::state`]): after
//! the local limits admitted a call, the shared ones (requests, tokens and
//! calls in flight per key and per route, counted in Redis) must admit it
//! too. Without `state.redis` it passes calls straight on.
//!
//! Unlike the other guarding layers its admission may wait, for the store
//! (at most `state.redis.timeout`, and only when this replica's lease is
//! empty), so it is a layer of its own rather than an
//! [`Admission`](super::guard::Admission).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};

use super::rate::estimate_input;
use crate::chat::ChatRequest;
use crate::chat::hold::{Hold, HoldOnReady};
use crate::error::GatewayError;
use crate::state::{Reservation, SharedLimits};

/// Wraps a chat service in [`Shared`].
#[derive(Clone)]
pub(crate) struct SharedLayer {
    /// The shared limits, when `state.redis` is set.
    limits: Option<Arc<SharedLimits>>,
}

/// Admits a call only within its key's and route's shared limits.
#[derive(Clone)]
pub(crate) struct Shared<S> {
    /// The rest of the stack.
    inner: S,
    /// The shared limits, when `state.redis` is set.
    limits: Option<Arc<SharedLimits>>,
}

type Admitting<R> = Pin<Box<dyn Future<Output = Result<R, GatewayError>> + Send>>;

// === impl SharedLayer ===

impl SharedLayer {
    /// Guards calls with `limits` (none: passes them on).
    pub(crate) fn new(limits: Option<Arc<SharedLimits>>) -> Self {
        SharedLayer { limits }
    }
}

impl<S> Layer<S> for SharedLayer {
    type Service = Shared<S>;

    fn layer(&self, inner: S) -> Shared<S> {
        Shared {
            inner,
            limits: self.limits.clone(),
        }
    }
}

// === impl Shared ===

impl<S> Service<ChatRequest> for Shared<S>
where
    S: Service<ChatRequest, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Hold,
{
    type Response = <S::Response as Hold>::Holding<Option<Reservation>>;
    type Error = GatewayError;
    type Future = Either<HoldOnReady<S::Future, Reservation>, Admitting<Self::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let Some(limits) = self.limits.clone() else {
            return Either::Left(HoldOnReady::new(self.inner.call(req), None));
        };
        // The service polled ready goes with the call; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let key = req.caller.key_name().cloned();
            let held = limits
                .admit(key.as_deref(), &req.model, estimate_input(&req))
                .await?;
            HoldOnReady::new(inner.call(req), held).await
        }))
    }
}
