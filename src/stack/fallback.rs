//! Admission to the route a call falls back to.
//!
//! The stack admits a call for the route its model names. When that route
//! fails and the router falls back to another model's route, the call lands
//! where no layer looked: the key may not be allowed that model, and that
//! route's own limits would be skipped. The router cannot ask the stack (it
//! is to the stack's right), so the rate layer installs this admission on
//! the call's context ([`CallContext::admit_route`]) and the router calls
//! it for each fallback route before sending the call there:
//! - the key must be allowed the fallback's model (PERMISSION_DENIED);
//! - the route's calls in flight must have room (RESOURCE_EXHAUSTED);
//! - the route's requests and tokens per minute are charged, and its
//!   tokens settled from what the call used when the stream ends.
//!
//! What the route admits is held in a [`RoutePermit`] until the stream
//! ends, as the stack's own layers hold theirs.
//!
//! [`CallContext::admit_route`]: crate::chat::CallContext::admit_route

use std::fmt;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::guard::{Guard, KeyPolicy};
use super::in_flight::route_permit;
use super::rate::{Settlement, Whose};
use crate::chat::admit::{AdmitRoute, RouteHeld, RoutePermit};
use crate::chat::hold::{End, OnEnd};
use crate::chat::{CallContext, ChatRequest};
use crate::error::GatewayError;

/// The stack's admission of one call to the routes it falls back to.
pub(crate) struct FallbackAdmission {
    /// The snapshot the call was admitted under.
    guard: Arc<Guard>,
    /// The caller's key, when keys are required.
    key: Option<Arc<KeyPolicy>>,
    /// The prompt estimate each route is charged at admission.
    estimate: u32,
}

/// What a call holds on the route it fell back to.
struct Landed {
    /// The route's in-flight room, when capped.
    _permit: Option<OwnedSemaphorePermit>,
    /// The route's rate charges, settled from what the call used.
    settlement: Settlement,
}

/// Installs the fallback admission on `req`'s context, when there is
/// anything to check: a key with its model list, or routes with limits.
pub(super) fn install(guard: &Arc<Guard>, req: &ChatRequest, estimate: u32) {
    let key = guard.key(&req.caller).cloned();
    if key.is_none() && !guard.limits_routes() {
        return;
    }
    req.call.set_route_admission(Arc::new(FallbackAdmission {
        guard: guard.clone(),
        key,
        estimate,
    }));
}

// === impl FallbackAdmission ===

impl AdmitRoute for FallbackAdmission {
    fn admit_route(&self, call: &CallContext, model: &str) -> Result<RoutePermit, GatewayError> {
        if let Some(key) = &self.key {
            key.authorize(model)?;
        }
        let Some(quota) = self.guard.route(model) else {
            return Ok(RoutePermit::default());
        };
        let permit = route_permit(&self.guard, model)?;
        let mut settlement = Settlement::new(self.estimate, call.clone(), self.guard.clone());
        settlement.charge(Whose::Route(model), quota)?;
        Ok(RoutePermit::new(Box::new(Landed {
            _permit: permit,
            settlement,
        })))
    }
}

impl fmt::Debug for FallbackAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackAdmission")
            .field("key", &self.key.as_ref().map(|key| &key.name))
            .field("estimate", &self.estimate)
            .finish_non_exhaustive()
    }
}

// === impl Landed ===

impl RouteHeld for Landed {
    fn on_token(&mut self, text: &str) {
        self.settlement.on_token(text);
    }

    fn on_end(self: Box<Self>, end: End<'_>) {
        let Landed {
            settlement,
            _permit,
        } = *self;
        // Settled first, then the room given back with the permit.
        settlement.on_end(end);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Layer, service_fn};

    use super::*;
    use crate::chat::ChatStream;
    use crate::chat::hold::Hold;
    use crate::chat::testing::{End, done, scripted, token};
    use crate::error::ErrorKind;
    use crate::stack::ChatService;
    use crate::stack::guard::SharedGuard;
    use crate::stack::guard::testing::policy;
    use crate::stack::rate::RateLimitLayer;
    use crate::stack::rate::tests::{boxed, call, stub_router};

    /// A router whose `demo` route fails at its upstream and falls back to
    /// `paid` the way `route::retry` does: admitted to `paid` first, then
    /// placed there, its stream holding the permit. The answer reports 60
    /// tokens used; any other model is [`stub_router`]'s.
    async fn falling_back(req: ChatRequest) -> Result<ChatStream, GatewayError> {
        if req.model != "demo" {
            return stub_router(req).await;
        }
        req.call.place_route(Arc::from("demo"));
        req.call.place_upstream(Arc::from("primary"));
        let permit = req.call.admit_route("paid")?;
        req.call.place_route(Arc::from("paid"));
        req.call.place_upstream(Arc::from("spare"));
        let script = vec![(Duration::ZERO, token("a")), (Duration::ZERO, done(30, 30))];
        Ok(Box::pin(scripted(script, End::Stop).0.hold(permit)))
    }

    /// The rate layer (which installs the admission) over [`falling_back`].
    fn stack(guard: &SharedGuard) -> ChatService {
        boxed(RateLimitLayer::new(guard.clone()).layer(service_fn(falling_back)))
    }

    /// A key `search` that may call `models`, and a route `paid` with
    /// `paid_limits` beside `demo` (with `demo_limits`).
    fn with_paid(models: &str, demo_limits: &str, paid_limits: &str) -> SharedGuard {
        let key = format!("    - {{ name: search, env: SEARCH_KEY, models: [{models}] }}");
        let demo = format!("    limits: {{ {demo_limits} }}");
        let paid = format!("    limits: {{ {paid_limits} }}");
        policy(
            &["auth:", "  keys:", &key],
            &[
                &demo,
                "  - model: paid",
                &paid,
                "    pools:",
                "      - upstream: local",
            ],
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_to_a_model_the_key_may_not_call_is_refused() {
        let guard = with_paid("demo", "max_in_flight: 9", "max_in_flight: 9");
        let err = call(&stack(&guard), "demo")
            .await
            .expect_err("the key may not call paid");
        assert_eq!(err.kind(), ErrorKind::PermissionDenied);
        assert!(
            err.message()
                .starts_with("key 'search' may not call model 'paid'"),
            "{}",
            err.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_is_held_to_its_routes_calls_in_flight() {
        let guard = with_paid("demo, paid", "max_in_flight: 9", "max_in_flight: 1");
        let svc = stack(&guard);
        let first =
            tower::ServiceExt::oneshot(svc.clone(), crate::stack::rate::tests::by_search("demo"))
                .await
                .expect("room for one on paid");
        let err = call(&svc, "demo").await.expect_err("paid is full");
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(
            err.message(),
            "model 'paid' is at its limit of 1 calls in flight; retry shortly"
        );
        drop(first);
        assert_eq!(call(&svc, "demo").await, Ok(()), "room again once it ended");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_is_charged_to_the_route_it_lands_on() {
        // Each call is estimated at 5 tokens and reports 60 used.
        let guard = with_paid(
            "demo, paid",
            "tokens_per_minute: 60",
            "tokens_per_minute: 60",
        );
        let svc = stack(&guard);
        assert_eq!(call(&svc, "demo").await, Ok(()));
        let quota = |model: &str| guard.load().route(model).cloned().expect("limited");
        let paid = quota("paid");
        let demo = quota("demo");
        let tokens = |q: &Arc<crate::stack::guard::Quota>, n: u32| {
            q.tokens.as_ref().expect("a token limit").admit(n)
        };
        assert!(tokens(&paid, 1).is_err(), "paid was charged the 60 used");
        assert_eq!(tokens(&demo, 55), Ok(55), "demo kept only the prompt's 5");
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_call_leaves_nothing_behind() {
        let guard = with_paid(
            "demo, paid",
            "tokens_per_minute: 600",
            "tokens_per_minute: 600",
        );
        let snapshot = guard.load_full();
        let before = Arc::strong_count(&snapshot);
        let svc = stack(&guard);
        let req = crate::stack::rate::tests::by_search("demo");
        let context = req.call.clone();
        let stream = tower::ServiceExt::oneshot(svc, req).await.expect("served");
        assert!(Arc::strong_count(&snapshot) > before, "held while it runs");
        drop(stream);
        drop(context);
        assert_eq!(
            Arc::strong_count(&snapshot),
            before,
            "the call's admission, settlement and pins are all gone"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_is_charged_its_routes_requests() {
        let guard = with_paid("demo, paid", "max_in_flight: 9", "requests_per_minute: 1");
        let svc = stack(&guard);
        assert_eq!(call(&svc, "demo").await, Ok(()));
        let err = call(&svc, "demo")
            .await
            .expect_err("paid's one request is spent");
        assert_eq!(
            err.message(),
            "model 'paid' is over its limit of 1 requests per minute; retry in 60s"
        );
    }
}
