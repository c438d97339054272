//! The tower layers every call passes through between a front end and the
//! router.
//!
//! Each concern is one small `Service` plus its `Layer`; the assembled stack
//! is type-erased into [`ChatService`] so front ends depend on nothing but
//! the request and response types.
//!
//! In order, outermost first:
//! - [`observe`]: metrics and the access log, for every call, refused or
//!   served;
//! - [`auth`]: only known keys, only their models (UNAUTHENTICATED,
//!   PERMISSION_DENIED);
//! - [`limits`]: what one request may hold (INVALID_ARGUMENT);
//! - [`in_flight`]: room in the gateway, the route and the key, shed at
//!   once when full (UNAVAILABLE, RESOURCE_EXHAUSTED);
//! - [`rate`]: requests and tokens per minute (RESOURCE_EXHAUSTED);
//! - [`shared`]: the same limits counted across replicas, when
//!   `state.redis` is set ([`crate::state`]);
//! - [`deadline`]: the caller's deadline over the whole call.
//!
//! Refusals come first and cost nothing downstream: a caller refused by
//! one layer has taken nothing from the layers after it, and a call refused
//! after [`rate`] charged it (its model is not routed) is refunded. The
//! policy the guarding layers read is one [`guard::Guard`] snapshot,
//! swapped on reload and pinned to each call with its routing table
//! ([`guard::pin`]); the token bucket its quotas hold and [`rate`] charges
//! is [`bucket`]. A call the router sends on to a fallback route is
//! admitted there by the hook `fallback` installs on the call.

pub(crate) mod auth;
pub(crate) mod bucket;
pub(crate) mod deadline;
mod fallback;
pub(crate) mod guard;
pub(crate) mod in_flight;
pub(crate) mod limits;
pub(crate) mod observe;
pub(crate) mod rate;
pub(crate) mod shared;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::chat::{ChatRequest, ChatStream};
use crate::error::GatewayError;
use crate::route::Router;
use crate::state::SharedLimits;
use guard::SharedGuard;
use std::sync::Arc;

/// The whole call path behind a front end, as one cloneable service.
pub(crate) type ChatService = BoxCloneSyncService<ChatRequest, ChatStream, GatewayError>;

/// Assembles the layers around the router, outermost first, guarded by
/// the policy in `guard`. Observation is outermost so it times the whole
/// call and records the code the caller gets, refusals and the caller's
/// deadline included. `shared` counts limits across replicas, when set.
pub(crate) fn build(
    router: Router,
    guard: SharedGuard,
    shared: Option<Arc<SharedLimits>>,
) -> ChatService {
    let stack = ServiceBuilder::new()
        .layer(observe::ObserveLayer)
        .layer(auth::AuthLayer::new(guard.clone()))
        .layer(limits::RequestLimitsLayer::new(guard.clone()))
        .layer(in_flight::InFlightLayer::new(guard.clone()))
        .layer(rate::RateLimitLayer::new(guard))
        .layer(shared::SharedLayer::new(shared))
        .layer(deadline::DeadlineLayer)
        .service(router);
    BoxCloneSyncService::new(stack)
}
