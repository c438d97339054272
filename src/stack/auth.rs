//! Lets in only callers with a key the routing file declares, and only to
//! the models that key may call.
//!
//! The front end puts what the caller presented into
//! [`ChatRequest::caller`](crate::chat::ChatRequest::caller); this layer
//! checks it against the [`Guard`](super::guard::Guard) in force and
//! replaces it with the key's name, which is all the layers after it see.
//! No key → UNAUTHENTICATED; a model outside the key's list →
//! PERMISSION_DENIED, before anything is routed or counted.

use std::sync::Arc;

use super::guard::{Admission, Guard, GuardLayer};
use crate::chat::{Caller, ChatRequest};
use crate::error::GatewayError;

/// Wraps a chat service in a guard that authenticates and authorizes each call before the inner
/// service sees it.
pub(crate) type AuthLayer = GuardLayer<Authenticate>;

/// Names the concern of [`AuthLayer`].
#[derive(Debug)]
pub(crate) enum Authenticate {}

// === impl Authenticate ===

impl Admission for Authenticate {
    type Held = std::convert::Infallible;

    fn admit(
        guard: &Arc<Guard>,
        req: &mut ChatRequest,
    ) -> Result<Option<Self::Held>, GatewayError> {
        if let Some(key) = guard.authenticate(&req.caller)? {
            key.authorize(&req.model)?;
            req.caller = Caller::Key(key.name.clone());
            req.call.grant_priority(key.priority, key.priority_header);
        }
        Ok(None)
    }
}
