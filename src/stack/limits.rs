//! Refuses requests that hold more than the gateway takes: too many
//! messages, or more message content than `limits.max_content_length`.
//!
//! The size of the request on the wire is bounded earlier, by the front end
//! (nothing bigger than `max_request_size` is even read); this layer bounds
//! what a request that fits may ask of an upstream, in the terms the caller
//! wrote it in. Both answers are INVALID_ARGUMENT naming the field: sending
//! the same request again cannot succeed.

use std::sync::Arc;

use super::guard::{Admission, Guard, GuardLayer, RequestShape};
use crate::chat::ChatRequest;
use crate::config::human_size;
use crate::error::GatewayError;

/// Wraps a chat service in a guard that checks each request's message count and content length before the inner
/// service sees it.
pub(crate) type RequestLimitsLayer = GuardLayer<CheckShape>;

/// Names the concern of [`RequestLimitsLayer`].
#[derive(Debug)]
pub(crate) enum CheckShape {}

// === impl CheckShape ===

impl Admission for CheckShape {
    type Held = std::convert::Infallible;

    fn admit(
        guard: &Arc<Guard>,
        req: &mut ChatRequest,
    ) -> Result<Option<Self::Held>, GatewayError> {
        check(&guard.request, req).map(|()| None)
    }
}

/// The request against the shape limits.
fn check(shape: &RequestShape, req: &ChatRequest) -> Result<(), GatewayError> {
    let messages = req.messages.len();
    if messages > shape.max_messages as usize {
        return Err(GatewayError::invalid_argument(
            "messages",
            &format!(
                "has {messages} entries; this gateway takes at most {} per request. Shorten \
                 the conversation",
                shape.max_messages
            ),
        ));
    }
    if let Some(max) = shape.max_content_length {
        let content = req.content_len();
        if content > max {
            return Err(GatewayError::invalid_argument(
                "messages",
                &format!(
                    "hold {} of content; this gateway takes at most {} per request. Shorten \
                     the conversation",
                    human_size(content),
                    human_size(max)
                ),
            ));
        }
    }
    Ok(())
}
