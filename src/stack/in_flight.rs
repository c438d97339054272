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

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::guard::{Admission, Capacity, Guard, GuardLayer, Guarded};
use crate::chat::ChatRequest;
use crate::chat::hold::OnEnd;
use crate::error::{ErrorKind, GatewayError};

/// What a shed call is told to wait before trying again: calls end all the
/// time, so room comes back soon; a second keeps a flood of retries slower
/// than the calls it waits for.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Wraps a chat service in [`InFlight`].
pub type InFlightLayer = GuardLayer<Admit>;

/// Admits a call only if the gateway, its route and its key have room.
pub type InFlight<S> = Guarded<Admit, S>;

/// Names the concern of [`InFlight`].
#[derive(Debug)]
pub enum Admit {}

/// One permit from each cap that applies, held until the call's last
/// token (released when the stream ends, fails or is dropped).
pub struct Permits {
    /// Held for their drop, which gives the room back.
    _held: Vec<OwnedSemaphorePermit>,
}

// === impl Admit ===

impl Admission for Admit {
    type Held = Permits;

    fn admit(guard: &Guard, req: &mut ChatRequest) -> Result<Option<Permits>, GatewayError> {
        let permits = permits(guard, req)?;
        Ok((!permits.is_empty()).then_some(Permits { _held: permits }))
    }
}

/// One permit from each cap that applies, or the error for the first
/// that is full. Permits taken before a full cap are dropped with the
/// vector, so a refused call holds nothing.
fn permits(guard: &Guard, req: &ChatRequest) -> Result<Vec<OwnedSemaphorePermit>, GatewayError> {
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

// === impl Permits ===

/// Released by being dropped; how the call ended does not matter.
impl OnEnd for Permits {}
