//! One endpoint as a tower service: the leaf the P2C balancer picks.
//!
//! Its load is the number of calls in flight, where a streamed call counts
//! until its last token (the count lives in a guard moved into the token
//! stream), not until its response headers: otherwise a server busy with
//! long generations would look idle to P2C. An endpoint that failed in the
//! last second compares as more loaded than any that did not, so a retry
//! moves to another endpoint even before the failing one is ejected.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower::load::Load;

use super::health::{EndpointState, Outcome};
use crate::backend::{Dispatch, EndpointCall};
use crate::chat::ChatStream;
use crate::chat::hold::{End, Hold, OnEnd};
use crate::error::{ErrorKind, GatewayError};

/// The balancer's view of one endpoint.
pub struct Endpoint {
    /// Shared record: load, failures, ejection, health.
    state: Arc<EndpointState>,
    /// Sends calls to it.
    dispatch: Dispatch,
    /// Most calls in flight at once.
    max_in_flight: Option<usize>,
    /// Wakes the balancer when an ejection ends.
    ejection_timer: Option<Pin<Box<Sleep>>>,
}

/// Keeps a call counted on its endpoint until the call ends, and reports
/// how it ended.
struct CallGuard {
    state: Arc<EndpointState>,
    outcome: Outcome,
}

// === impl Endpoint ===

impl Endpoint {
    /// The service for one endpoint.
    pub fn new(state: Arc<EndpointState>, dispatch: Dispatch, max_in_flight: Option<u32>) -> Self {
        Endpoint {
            state,
            dispatch,
            max_in_flight: max_in_flight.map(|n| n as usize),
            ejection_timer: None,
        }
    }
}

impl Service<EndpointCall> for Endpoint {
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<ChatStream, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // Never an error: the balancer drops endpoints whose readiness fails,
        // and an ejected endpoint must come back when its time is up.
        if let Some(until) = self.state.ejected_until(Instant::now()) {
            let timer = self
                .ejection_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            timer.as_mut().reset(until);
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.ejection_timer = None;
        let at_cap = |state: &EndpointState, cap: Option<usize>| {
            cap.is_some_and(|cap| state.in_flight() >= cap)
        };
        if !self.state.is_healthy() || at_cap(&self.state, self.max_in_flight) {
            self.state.register_ready_waker(cx.waker());
            // Check again: the state may have changed before registering.
            if !self.state.is_healthy() || at_cap(&self.state, self.max_in_flight) {
                return Poll::Pending;
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: EndpointCall) -> Self::Future {
        call.req.call.place_endpoint(self.state.label.clone());
        self.state.call_started();
        let mut guard = CallGuard {
            state: self.state.clone(),
            outcome: Outcome::Neutral,
        };
        let response = (self.dispatch)(call);
        async move {
            match response.await {
                Ok(inner) => Ok(Box::pin(inner.hold(guard)) as ChatStream),
                Err(err) => {
                    guard.set_outcome(outcome_of(&err));
                    Err(err)
                }
            }
        }
        .boxed()
    }
}

impl Load for Endpoint {
    /// A recent failure first, then calls in flight.
    type Metric = (bool, usize);

    fn load(&self) -> Self::Metric {
        (
            self.state.failed_recently(Instant::now()),
            self.state.in_flight(),
        )
    }
}

// === impl CallGuard ===

impl CallGuard {
    /// Records how the call ended, reported when the guard drops.
    fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.state.call_ended(self.outcome);
    }
}

/// Learns from how the stream ended; the call stops counting on the
/// endpoint when the guard drops, right after.
impl OnEnd for CallGuard {
    fn on_end(mut self, end: End<'_>) {
        match end {
            End::Finished(_) => self.set_outcome(Outcome::Success),
            End::Failed(err) => self.set_outcome(outcome_of(err)),
            // A cut stream or a caller who left says nothing about the
            // endpoint.
            End::Cut | End::Dropped => {}
        }
    }
}

/// What an error says about the endpoint that produced it.
fn outcome_of(err: &GatewayError) -> Outcome {
    match err.kind() {
        ErrorKind::Unavailable => Outcome::Failure,
        ErrorKind::ResourceExhausted => Outcome::Throttled,
        // The server understood the request and refused it: it works.
        ErrorKind::InvalidArgument
        | ErrorKind::NotFound
        | ErrorKind::Unauthenticated
        | ErrorKind::PermissionDenied => Outcome::Success,
        ErrorKind::DeadlineExceeded | ErrorKind::Cancelled | ErrorKind::Internal => {
            Outcome::Neutral
        }
    }
}
