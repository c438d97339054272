//! One endpoint: the leaf the P2C balancer picks.
//!
//! Its load is the number of calls in flight, where a streamed call counts
//! until its last token (the count lives in a guard moved into the token
//! stream), not until its response headers: otherwise a server busy with
//! long generations would look idle to P2C. An endpoint that failed in the
//! last second compares as more loaded than any that did not, so a retry
//! moves to another endpoint even before the failing one is ejected.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::engine::LoadRank;
use super::health::{EndpointState, Outcome, Scope};
use super::probe;
use crate::backend::{Dispatch, EndpointCall};
use crate::chat::ChatStream;
use crate::chat::hold::{End, Hold, OnEnd};
use crate::error::{ErrorKind, GatewayError};

/// The balancer's view of one endpoint.
pub(crate) struct Endpoint {
    /// Shared record: load, failures, ejections, health.
    pub(super) state: Arc<EndpointState>,
    /// Sends calls to it.
    dispatch: Dispatch,
    /// Most calls in flight at once.
    max_in_flight: Option<usize>,
    /// Its place in prefix-affinity rankings.
    pub(super) key: u64,
}

/// Keeps a call counted on its endpoint until the call ends, and reports
/// how it ended.
struct CallGuard {
    state: Arc<EndpointState>,
    /// The upstream model the call asked for: failures of the answer count
    /// against this model on the endpoint.
    model: Arc<str>,
    outcome: Outcome,
}

// === impl Endpoint ===

impl Endpoint {
    /// The endpoint behind `state`, sending through `dispatch`.
    pub(crate) fn new(
        state: Arc<EndpointState>,
        dispatch: Dispatch,
        max_in_flight: Option<u32>,
    ) -> Self {
        Endpoint {
            key: super::affinity::endpoint_key(&state.url),
            state,
            dispatch,
            max_in_flight: max_in_flight.map(|n| n as usize),
        }
    }

    /// Whether a call for `model` could go here now: admitted, and under
    /// its cap.
    pub(crate) fn is_ready(&self, model: &str, now: Instant) -> bool {
        self.state.is_admissible(model, now) && !self.state.at_cap(self.max_in_flight)
    }

    /// What P2C compares for `model`: a recent failure first, then the
    /// engine's own load when scraped, else calls in flight.
    pub(crate) fn load(&self, model: &str, now: Instant) -> LoadRank {
        self.state.engine.rank(
            self.state.failed_recently(model, now),
            self.state.in_flight(),
            now,
        )
    }

    /// Sends `call` here; `None` when the endpoint reached its cap since it
    /// was picked.
    pub(crate) fn call(
        &self,
        call: EndpointCall,
    ) -> Option<BoxFuture<'static, Result<ChatStream, GatewayError>>> {
        if !self.state.try_start(self.max_in_flight) {
            return None;
        }
        call.req.call.place_endpoint(self.state.label.clone());
        let mut guard = CallGuard {
            state: self.state.clone(),
            model: call.model.clone(),
            outcome: Outcome::Neutral,
        };
        let response = (self.dispatch)(call);
        Some(
            async move {
                match response.await {
                    Ok(inner) => Ok(Box::pin(inner.hold(guard)) as ChatStream),
                    Err(err) => {
                        guard.set_outcome(outcome_of(&err));
                        Err(err)
                    }
                }
            }
            .boxed(),
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
        let ejected = self.state.call_ended(&self.model, self.outcome);
        if ejected == Some(Scope::Endpoint) {
            probe::reconnect(&self.state);
        }
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

/// What an error says about the endpoint that produced it, and about whom:
/// a connection that failed is the endpoint's, an answer that failed is
/// the model's.
fn outcome_of(err: &GatewayError) -> Outcome {
    match err.kind() {
        ErrorKind::Unavailable if err.is_transport() => Outcome::Failure(Scope::Endpoint),
        ErrorKind::Unavailable => Outcome::Failure(Scope::Model),
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
