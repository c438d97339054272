//! Requests and tokens per minute, per key and per route, so one caller
//! cannot starve the rest and one model's budget holds across callers.
//!
//! Built on `governor` (GCRA): each limit is a bucket of a minute's worth
//! that refills continuously, so a caller may burst up to its minute and
//! then proceeds at the steady rate. Tokens are known only when a call
//! ends, so a call is admitted on an estimate of its prompt (about four
//! bytes a token) and settled from the usage the upstream reports (or,
//! when none is reported, from the text that streamed) when it ends or the
//! caller leaves. What it used beyond the estimate is taken from the bucket
//! then, as far as the bucket holds it: a call never fails after it
//! started, and a caller who overspent waits for the refill.
//!
//! The key's limits are checked before the route's, so a caller refused
//! for its own limit spends nothing of the route's budget, and cannot drain
//! a model's quota for everyone else by hammering it. A refusal is
//! RESOURCE_EXHAUSTED with how long until the call would fit, which the
//! front end sends as `retry-after`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::bucket::wait;
use super::guard::{Admission, Guard, GuardLayer, Guarded, Quota};
use crate::chat::ChatRequest;
use crate::chat::hold::{End, OnEnd};
use crate::error::{ErrorKind, GatewayError, whole_seconds};

/// Bytes of text per token, for estimates: close for English with the
/// tokenizers in use, and an estimate is all admission needs.
const BYTES_PER_TOKEN: usize = 4;
/// Tokens each message costs beyond its text (role and separators).
const TOKENS_PER_MESSAGE: usize = 4;

/// Wraps a chat service in [`RateLimit`].
pub type RateLimitLayer = GuardLayer<Meter>;

/// Admits a call only within its key's and its route's rates.
pub type RateLimit<S> = Guarded<Meter, S>;

/// Names the concern of [`RateLimit`].
#[derive(Debug)]
pub enum Meter {}

/// A call's token charges, settled once when its stream ends or is dropped.
pub struct Settlement {
    /// The prompt estimate the call was admitted on.
    estimate: u32,
    /// Each bucket charged, with what it was charged.
    charges: Vec<(Arc<Quota>, u32)>,
    /// Text bytes streamed so far, for when no usage is reported.
    streamed_bytes: usize,
    /// Tokens the upstream reported, in and out.
    reported: Option<u32>,
    /// Whether it was settled already.
    settled: bool,
}

// === impl Meter ===

impl Admission for Meter {
    type Held = Settlement;

    /// A call that fails before streaming drops its settlement, which
    /// charges what was estimated: the prompt was sent.
    fn admit(guard: &Guard, req: &mut ChatRequest) -> Result<Option<Settlement>, GatewayError> {
        settlement(guard, req)
    }
}

/// Checks the key's quota, then the route's. `Ok(None)` when no token
/// limit applies, so the stream needs no metering.
fn settlement(guard: &Guard, req: &ChatRequest) -> Result<Option<Settlement>, GatewayError> {
    let key = guard
        .key(&req.caller)
        .map(|key| (Whose::Key(&key.name), &key.quota));
    let route = guard
        .route(&req.model)
        .map(|quota| (Whose::Route(&req.model), quota));
    let estimate = estimate_input(req);
    let mut charges = Vec::new();
    for (whose, quota) in key.into_iter().chain(route) {
        if let Some(requests) = &quota.requests
            && let Err(not_until) = requests.check()
        {
            let limit = not_until.quota().burst_size();
            return Err(over_limit(whose, limit, "requests", wait(&not_until)));
        }
        if let Some(tokens) = &quota.tokens {
            match tokens.admit(estimate) {
                Ok(charge) => charges.push((quota.clone(), charge)),
                Err(wait) => return Err(over_limit(whose, tokens.capacity(), "tokens", wait)),
            }
        }
    }
    Ok((!charges.is_empty()).then_some(Settlement {
        estimate,
        charges,
        streamed_bytes: 0,
        reported: None,
        settled: false,
    }))
}

/// Whose limit a call is over, for the message.
#[derive(Clone, Copy)]
enum Whose<'a> {
    /// A key, by name.
    Key(&'a str),
    /// A route, by the model name the caller used.
    Route(&'a str),
}

/// RESOURCE_EXHAUSTED for a call over `whose` limit of `limit` `what` per
/// minute, with how long until it would fit.
fn over_limit(whose: Whose<'_>, limit: NonZeroU32, what: &str, wait: Duration) -> GatewayError {
    let whose = match whose {
        Whose::Key(name) => format!("key '{name}'"),
        Whose::Route(model) => format!("model '{model}'"),
    };
    GatewayError::new(
        ErrorKind::ResourceExhausted,
        format!(
            "{whose} is over its limit of {limit} {what} per minute; retry in {}s",
            whole_seconds(wait)
        ),
    )
    .with_retry_after(wait)
}

/// The tokens a request's prompt is likely to count.
pub fn estimate_input(req: &ChatRequest) -> u32 {
    let bytes = req.content_len();
    let tokens = bytes.div_ceil(BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * req.messages.len();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

// === impl Settlement ===

impl Settlement {
    /// Charges each bucket what the call used beyond its charge.
    fn settle(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let streamed =
            u32::try_from(self.streamed_bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX);
        let used = self
            .reported
            .unwrap_or_else(|| self.estimate.saturating_add(streamed));
        for (quota, charged) in &self.charges {
            if let Some(tokens) = &quota.tokens {
                tokens.settle(used.saturating_sub(*charged));
            }
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Counts the text that streams, takes the usage the upstream reports at
/// the end, and settles when dropped (right after the end, or when the
/// caller leaves).
impl OnEnd for Settlement {
    fn on_token(&mut self, text: &str) {
        self.streamed_bytes += text.len();
    }

    fn on_end(mut self, end: End<'_>) {
        if let End::Finished(completion) = end {
            self.reported = completion
                .usage
                .map(|u| u.input_tokens.saturating_add(u.output_tokens));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{ChatMessage, Role};

    #[test]
    fn the_estimate_counts_about_four_bytes_a_token_and_a_few_per_message() {
        let req = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::text(Role::System, "x".repeat(40)),
                ChatMessage::text(Role::User, "y".repeat(2)),
            ],
            params: Default::default(),
            extras: Default::default(),
            stream: false,
            deadline: None,
            call: Default::default(),
            caller: Default::default(),
            prefill: false,
        };
        assert_eq!(estimate_input(&req), 11 + 2 * 4);
    }
}
