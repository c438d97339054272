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

use std::sync::Arc;

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::guard::{Admission, Capacity, Guard, GuardLayer};
use crate::chat::ChatRequest;
use crate::chat::hold::OnEnd;
use crate::error::{ErrorKind, GatewayError};

/// What a shed call is told to wait before trying again: calls end all the
/// time, so room comes back soon; a second keeps a flood of retries slower
/// than the calls it waits for.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Wraps a chat service in a guard that admits a call only if the gateway, its route and its key have room before the inner
/// service sees it.
pub(crate) type InFlightLayer = GuardLayer<Admit>;

/// Names the concern of [`InFlightLayer`].
#[derive(Debug)]
pub(crate) enum Admit {}

/// One permit from each cap that applies, held until the call's last
/// token (released when the stream ends, fails or is dropped).
pub(crate) struct Permits {
    /// Held for their drop, which gives the room back.
    _held: Vec<OwnedSemaphorePermit>,
}

// === impl Admit ===

impl Admission for Admit {
    type Held = Permits;

    fn admit(guard: &Arc<Guard>, req: &mut ChatRequest) -> Result<Option<Permits>, GatewayError> {
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
    if let Some(permit) = route_permit(guard, &req.model)? {
        permits.push(permit);
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

/// A permit from the in-flight cap of the route `model` names, if it has
/// one; RESOURCE_EXHAUSTED naming the model when it is full.
pub(super) fn route_permit(
    guard: &Guard,
    model: &str,
) -> Result<Option<OwnedSemaphorePermit>, GatewayError> {
    let Some(capacity) = guard
        .route(model)
        .and_then(|quota| quota.in_flight.as_ref())
    else {
        return Ok(None);
    };
    take(capacity, || {
        GatewayError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "model '{model}' is at its limit of {} calls in flight; retry shortly",
                capacity.max
            ),
        )
    })
    .map(Some)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;
    use crate::chat::testing::{End, done, drain, request, scripted, token};
    use crate::chat::{Caller, ChatEvent, ChatStream};
    use crate::stack::guard::SharedGuard;
    use crate::stack::guard::testing::policy;

    const MS: Duration = Duration::from_millis(1);

    /// The layer over a stub that streams a token at once, then its final
    /// event 100ms later.
    fn in_flight(
        guard: &SharedGuard,
    ) -> impl Service<
        ChatRequest,
        Response = impl futures_util::Stream<Item = Result<ChatEvent, GatewayError>> + Unpin,
        Error = GatewayError,
    > + Clone {
        InFlightLayer::new(guard.clone()).layer(service_fn(|req: ChatRequest| async move {
            if req.model == "refused-upstream" {
                return Err(GatewayError::unavailable("connection refused"));
            }
            let script = vec![(Duration::ZERO, token("a")), (MS * 100, done(1, 1))];
            Ok::<ChatStream, _>(scripted(script, End::Stop).0)
        }))
    }

    fn gateway_cap_of_one() -> SharedGuard {
        policy(&["limits:", "  max_in_flight: 1"], &[])
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_gateway_sheds_the_next_call_at_once_with_unavailable_and_a_retry_hint() {
        let guard = gateway_cap_of_one();
        let svc = in_flight(&guard);
        let _streaming = svc.clone().oneshot(request("demo")).await;
        let start = tokio::time::Instant::now();
        let Err(err) = svc.clone().oneshot(request("demo")).await else {
            panic!("a second call fit under a cap of one");
        };
        assert_eq!(start.elapsed(), Duration::ZERO, "shed at once, not queued");
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert_eq!(
            err.message(),
            "the gateway is at its limit of 1 calls in flight; retry shortly \
             (another replica may have room)"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_holds_its_slot_until_its_last_token_and_not_a_moment_longer() {
        let guard = gateway_cap_of_one();
        let svc = in_flight(&guard);
        let Ok(mut stream) = svc.clone().oneshot(request("demo")).await else {
            panic!("the first call fits");
        };
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Token(_)))));
        assert!(
            svc.clone().oneshot(request("demo")).await.is_err(),
            "still full after the first token"
        );
        assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Done(_)))));
        assert!(
            svc.clone().oneshot(request("demo")).await.is_ok(),
            "free at the final event, before the stream is dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_stream_frees_its_slot() {
        let guard = gateway_cap_of_one();
        let svc = in_flight(&guard);
        let first = svc.clone().oneshot(request("demo")).await;
        assert!(first.is_ok());
        drop(first);
        assert!(svc.clone().oneshot(request("demo")).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_fails_before_streaming_frees_its_slot() {
        let guard = gateway_cap_of_one();
        let svc = in_flight(&guard);
        let Err(err) = svc.clone().oneshot(request("refused-upstream")).await else {
            panic!("the stub refuses this model");
        };
        assert_eq!(err.message(), "connection refused", "the upstream's error");
        let (tokens, end) = match svc.clone().oneshot(request("demo")).await {
            Ok(stream) => drain(stream).await,
            Err(err) => panic!("the slot was kept: {err}"),
        };
        assert_eq!(tokens, ["a"]);
        assert!(matches!(end, Some(Ok(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_route_is_resource_exhausted_naming_the_model() {
        let guard = policy(&[], &["    limits: { max_in_flight: 1 }"]);
        let svc = in_flight(&guard);
        let _streaming = svc.clone().oneshot(request("demo")).await;
        let Err(err) = svc.clone().oneshot(request("demo")).await else {
            panic!("the route is full");
        };
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(
            err.message(),
            "model 'demo' is at its limit of 1 calls in flight; retry shortly"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert!(
            svc.clone().oneshot(request("other")).await.is_ok(),
            "another route is not held back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_key_is_resource_exhausted_naming_the_key() {
        let guard = policy(
            &[
                "auth:",
                "  keys:",
                "    - { name: search, env: SEARCH_KEY, models: [\"*\"], limits: { max_in_flight: 1 } }",
            ],
            &[],
        );
        let svc = in_flight(&guard);
        let keyed = || {
            let mut req = request("demo");
            req.caller = Caller::Key("search".into());
            req
        };
        let _streaming = svc.clone().oneshot(keyed()).await;
        let Err(err) = svc.clone().oneshot(keyed()).await else {
            panic!("the key is full");
        };
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(
            err.message(),
            "key 'search' is at its limit of 1 calls in flight; retry when one of its calls ends"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_refused_by_a_full_route_keeps_no_gateway_slot() {
        let guard = policy(
            &["limits:", "  max_in_flight: 2"],
            &["    limits: { max_in_flight: 1 }"],
        );
        let svc = in_flight(&guard);
        let _streaming = svc.clone().oneshot(request("demo")).await;
        assert!(svc.clone().oneshot(request("demo")).await.is_err());
        assert!(
            svc.clone().oneshot(request("other")).await.is_ok(),
            "the refused call gave back the gateway permit it took first"
        );
    }
}
