//! What the stack hands the router through a call's [`CallContext`]: the
//! snapshot the call was admitted under, and the hook that admits the call
//! to a route it falls back to.
//!
//! The stack is left of the router and the router may not import it, so
//! neither travels as a stack type:
//! - **Pins.** The edge pins one snapshot of the policy and the routing
//!   table to the call ([`CallContext::pin`]), and every layer and the
//!   router read that one ([`CallContext::pinned`]) instead of loading the
//!   live one each; the router takes its table off the call
//!   ([`CallContext::take_pinned`]), so a call in flight does not keep a
//!   replaced table alive. A reload between two layers therefore cannot give one
//!   call the keys of one file and the routes of the next. Pins are typed
//!   by what they hold, like `http::Extensions`, so this module names no
//!   stage's types.
//! - **Route admission.** A call is admitted by the stack for the route its
//!   model names. When the router falls back to another model's route, the
//!   call lands somewhere the stack never checked: [`CallContext::admit_route`]
//!   asks the stack whether the caller's key may call that model and
//!   whether that route's own limits have room, and returns a
//!   [`RoutePermit`] that charges the route for what the call uses, held
//!   until the stream ends (`stream.hold(permit)`).

use std::any::Any;
use std::sync::{Arc, PoisonError};

use super::CallContext;
use super::hold::{End, OnEnd};
use crate::error::GatewayError;

/// The stack's side of [`CallContext::admit_route`], installed once per
/// call by the layer that admitted it.
pub(crate) trait AdmitRoute: std::fmt::Debug + Send + Sync {
    /// Admits `call` to the route `model` names (the route's own model
    /// name, as the table lists it), or refuses it with the error its
    /// caller should see. The call is passed in, not held: the context
    /// holds the admission, so an admission holding the context would
    /// keep both alive forever.
    fn admit_route(&self, call: &CallContext, model: &str) -> Result<RoutePermit, GatewayError>;
}

/// What a call holds on a route it fell back to, released (and settled
/// against that route's limits) when its stream ends. Hold it with
/// [`Hold::hold`](super::hold::Hold::hold) on the stream the route serves.
#[derive(Default)]
pub(crate) struct RoutePermit {
    /// The stack's holding; `None` when nothing applies.
    held: Option<Box<dyn RouteHeld>>,
}

/// What a [`RoutePermit`] holds: [`OnEnd`] in a form that can be boxed.
pub(crate) trait RouteHeld: Send + 'static {
    /// A token passed.
    fn on_token(&mut self, text: &str);

    /// The stream ended this way; the holding is dropped right after.
    fn on_end(self: Box<Self>, end: End<'_>);
}

/// A pinned value, by its type.
pub(super) type Pinned = Arc<dyn Any + Send + Sync>;

// === impl CallContext ===

impl CallContext {
    /// Pins `value` to the call, replacing an earlier pin of its type.
    pub(crate) fn pin<T: Any + Send + Sync>(&self, value: Arc<T>) {
        let mut pins = self.pins();
        pins.retain(|pin| !pin.is::<T>());
        pins.push(value);
    }

    /// The value of type `T` pinned to the call, if any.
    pub(crate) fn pinned<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.pins()
            .iter()
            .find_map(|pin| pin.clone().downcast::<T>().ok())
    }

    /// Takes the value of type `T` off the call, for its one reader: the
    /// call then no longer keeps it alive.
    pub(crate) fn take_pinned<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let mut pins = self.pins();
        let at = pins.iter().position(|pin| pin.is::<T>())?;
        pins.swap_remove(at).downcast::<T>().ok()
    }

    /// Installs the stack's route admission for this call.
    pub(crate) fn set_route_admission(&self, admission: Arc<dyn AdmitRoute>) {
        *self
            .inner
            .route_admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(admission);
    }

    /// Admits the call to the route `model` names before the router sends
    /// it there as a fallback: PERMISSION_DENIED when the caller's key may
    /// not call that model, RESOURCE_EXHAUSTED (or UNAVAILABLE) when the
    /// route's own limits are full. The permit charges that route for the
    /// call; hold it until the stream ends. Without a stack (a router on
    /// its own) nothing applies and the permit is empty.
    pub(crate) fn admit_route(&self, model: &str) -> Result<RoutePermit, GatewayError> {
        let admission = self
            .inner
            .route_admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match admission {
            Some(admission) => admission.admit_route(self, model),
            None => Ok(RoutePermit::default()),
        }
    }

    fn pins(&self) -> std::sync::MutexGuard<'_, Vec<Pinned>> {
        // A pin is pushed or removed whole, so a panic elsewhere cannot
        // leave the list half written.
        self.inner
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl RoutePermit ===

impl RoutePermit {
    /// A permit holding `held` until the stream ends.
    pub(crate) fn new(held: Box<dyn RouteHeld>) -> Self {
        RoutePermit { held: Some(held) }
    }
}

impl OnEnd for RoutePermit {
    fn on_token(&mut self, text: &str) {
        if let Some(held) = &mut self.held {
            held.on_token(text);
        }
    }

    fn on_end(self, end: End<'_>) {
        if let Some(held) = self.held {
            held.on_end(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_found_by_its_type_and_shared_by_clones_of_the_context() {
        let call = CallContext::default();
        let seen_by_router = call.clone();
        call.pin(Arc::new(7_u32));
        call.pin(Arc::new(String::from("table")));
        call.pin(Arc::new(8_u32));
        assert_eq!(seen_by_router.pinned::<u32>().as_deref(), Some(&8));
        assert_eq!(
            seen_by_router
                .pinned::<String>()
                .as_deref()
                .map(String::as_str),
            Some("table")
        );
        assert!(seen_by_router.pinned::<i64>().is_none());
        assert_eq!(seen_by_router.take_pinned::<u32>().as_deref(), Some(&8));
        assert!(call.pinned::<u32>().is_none(), "taken");
        assert!(call.pinned::<String>().is_some(), "the others stay");
    }

    #[test]
    fn without_a_stack_every_route_is_admitted_with_an_empty_permit() {
        let permit = CallContext::default().admit_route("anything");
        assert!(permit.is_ok_and(|p| p.held.is_none()));
    }
}
