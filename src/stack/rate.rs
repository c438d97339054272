//! Requests and tokens per minute, per key and per route, so one caller
//! cannot starve the rest and one model's budget holds across callers.
//!
//! Each limit is a GCRA bucket ([`bucket`](super::bucket)) of a minute's
//! worth that refills continuously, so a caller may burst up to its minute
//! and then proceeds at the steady rate. Tokens are known only when a call
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
//!
//! A refusal refunds: a call that never reached an upstream (its route
//! refused it here, its model is not routed, every pool of its route is
//! down) gets back the requests and tokens its key and route were charged,
//! so a caller pays only for prompts that were sent. A call that falls back
//! to another model's route is charged there by that route's permit
//! (the `fallback` module); its first route keeps only the estimate
//! of the prompt it was sent.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::fallback;
use super::guard::{Admission, Guard, GuardLayer, Quota};
use crate::chat::hold::{End, OnEnd};
use crate::chat::{CallContext, ChatRequest};
use crate::error::{ErrorKind, GatewayError, whole_seconds};

/// Bytes of text per token, for estimates: close for English with the
/// tokenizers in use, and an estimate is all admission needs.
const BYTES_PER_TOKEN: usize = 4;
/// Tokens each message costs beyond its text (role and separators).
const TOKENS_PER_MESSAGE: usize = 4;

/// Wraps a chat service in a guard that admits a call only within its key's and its route's rates before the inner
/// service sees it.
pub(crate) type RateLimitLayer = GuardLayer<Meter>;

/// Names the concern of [`RateLimitLayer`].
#[derive(Debug)]
pub(crate) enum Meter {}

/// A call's charges, settled once when its stream ends or is dropped: by
/// what it used when it reached an upstream, refunded whole when it never
/// did.
pub(crate) struct Settlement {
    /// The prompt estimate the call was admitted on.
    estimate: u32,
    /// Each quota charged, with what it was charged.
    charges: Vec<Charge>,
    /// The call, to learn at the end whether it reached an upstream and
    /// which route it landed on.
    call: CallContext,
    /// The policy the call was admitted under, to name that route's quota.
    guard: Arc<Guard>,
    /// Text bytes streamed so far, for when no usage is reported.
    streamed_bytes: usize,
    /// Tokens the upstream reported, in and out.
    reported: Option<u32>,
    /// Whether a stream was answered: its tokens or its end were seen.
    answered: bool,
    /// Whether it was settled already.
    settled: bool,
}

/// What one quota was charged for a call.
struct Charge {
    /// The quota charged.
    quota: Arc<Quota>,
    /// Whether a request was taken from its requests per minute.
    request: bool,
    /// Tokens taken from its tokens per minute.
    tokens: u32,
    /// Whether it is a route's quota: a route is charged for what the call
    /// used only when the call landed on it, not when it fell back
    /// elsewhere (the fallback route's permit charges that one).
    route: bool,
}

// === impl Meter ===

impl Admission for Meter {
    type Held = Settlement;

    /// A call refused before it reached an upstream (by a later layer, or
    /// because its model is not routed) gets back everything it was
    /// charged; one that reached an upstream keeps at least its estimate,
    /// since the prompt was sent.
    fn admit(
        guard: &Arc<Guard>,
        req: &mut ChatRequest,
    ) -> Result<Option<Settlement>, GatewayError> {
        let settlement = settlement(guard, req)?;
        fallback::install(guard, req, estimate_input(req));
        Ok(settlement)
    }
}

/// Checks the key's quota, then the route's; a refusal by the route gives
/// the key back what it took. `Ok(None)` when no rate applies, so the
/// stream needs no metering.
fn settlement(guard: &Arc<Guard>, req: &ChatRequest) -> Result<Option<Settlement>, GatewayError> {
    let key = guard
        .key(&req.caller)
        .map(|key| (Whose::Key(&key.name), &key.quota));
    let route = guard
        .route(&req.model)
        .map(|quota| (Whose::Route(&req.model), quota));
    let mut settlement = Settlement::new(estimate_input(req), req.call.clone(), guard.clone());
    for (whose, quota) in key.into_iter().chain(route) {
        // Dropping `settlement` on a refusal refunds what it holds: the
        // call reached no upstream.
        settlement.charge(whose, quota)?;
    }
    Ok((!settlement.charges.is_empty()).then_some(settlement))
}

/// Whose limit a call is over, for the message.
#[derive(Clone, Copy)]
pub(super) enum Whose<'a> {
    /// A key, by name.
    Key(&'a str),
    /// A route, by the model name the caller used.
    Route(&'a str),
}

/// RESOURCE_EXHAUSTED for a call over `whose` limit of `limit` `what` per
/// minute, with how long until it would fit.
pub(super) fn over_limit(
    whose: Whose<'_>,
    limit: NonZeroU32,
    what: &str,
    wait: Duration,
) -> GatewayError {
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
pub(crate) fn estimate_input(req: &ChatRequest) -> u32 {
    let bytes = req.content_len();
    let tokens = bytes.div_ceil(BYTES_PER_TOKEN) + TOKENS_PER_MESSAGE * req.messages.len();
    u32::try_from(tokens).unwrap_or(u32::MAX)
}

// === impl Settlement ===

impl Settlement {
    /// Nothing charged yet, for a call estimated at `estimate` tokens.
    pub(super) fn new(estimate: u32, call: CallContext, guard: Arc<Guard>) -> Self {
        Settlement {
            estimate,
            charges: Vec::new(),
            call,
            guard,
            streamed_bytes: 0,
            reported: None,
            answered: false,
            settled: false,
        }
    }

    /// Takes a request and the estimate from `quota`, or refuses the call
    /// over `whose` limit (leaving charged only what was charged before).
    pub(super) fn charge(
        &mut self,
        whose: Whose<'_>,
        quota: &Arc<Quota>,
    ) -> Result<(), GatewayError> {
        let mut charge = Charge {
            quota: quota.clone(),
            request: false,
            tokens: 0,
            route: matches!(whose, Whose::Route(_)),
        };
        if let Some(requests) = &quota.requests {
            requests
                .admit(1)
                .map_err(|wait| over_limit(whose, requests.capacity(), "requests", wait))?;
            charge.request = true;
        }
        if let Some(tokens) = &quota.tokens {
            match tokens.admit(self.estimate) {
                Ok(charged) => charge.tokens = charged,
                Err(wait) => {
                    charge.refund();
                    return Err(over_limit(whose, tokens.capacity(), "tokens", wait));
                }
            }
        }
        if charge.request || charge.tokens > 0 {
            self.charges.push(charge);
        }
        Ok(())
    }

    /// Refunds a call that never reached an upstream; otherwise charges
    /// each bucket what the call used beyond its charge.
    fn settle(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let placement = self.call.placement();
        if !self.answered && placement.upstream.is_none() {
            self.charges.iter().for_each(Charge::refund);
            return;
        }
        let streamed =
            u32::try_from(self.streamed_bytes.div_ceil(BYTES_PER_TOKEN)).unwrap_or(u32::MAX);
        let used = self
            .reported
            .unwrap_or_else(|| self.estimate.saturating_add(streamed));
        let landed = placement.route.as_deref();
        for charge in &self.charges {
            let elsewhere = charge.route
                && landed.is_some_and(|route| {
                    !self
                        .guard
                        .route(route)
                        .is_some_and(|quota| Arc::ptr_eq(quota, &charge.quota))
                });
            if let Some(tokens) = &charge.quota.tokens
                && !elsewhere
            {
                tokens.settle(used.saturating_sub(charge.tokens));
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
        self.answered = true;
        self.streamed_bytes += text.len();
    }

    fn on_end(mut self, end: End<'_>) {
        self.answered = true;
        if let End::Finished(completion) = end {
            self.reported = completion
                .usage
                .map(|u| u.input_tokens.saturating_add(u.output_tokens));
        }
    }
}

// === impl Charge ===

impl Charge {
    /// Gives back what was taken.
    fn refund(&self) {
        if self.request
            && let Some(requests) = &self.quota.requests
        {
            requests.refund(1);
        }
        if let Some(tokens) = &self.quota.tokens {
            tokens.refund(self.tokens);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::*;
    use crate::chat::testing::{End, done, drain, request, scripted, token};
    use crate::chat::{Caller, ChatEvent, ChatMessage, ChatStream, Role};
    use crate::stack::ChatService;
    use crate::stack::guard::SharedGuard;
    use crate::stack::guard::testing::policy;

    /// The router as the rate layer sees it: `missing` is not routed (no
    /// upstream is tried), `refused-upstream` reaches an upstream that
    /// fails, and any other model streams a token and reports two tokens
    /// used.
    pub(crate) async fn stub_router(req: ChatRequest) -> Result<ChatStream, GatewayError> {
        match req.model.as_str() {
            "missing" => Err(GatewayError::new(
                ErrorKind::NotFound,
                "model 'missing' is not routed".to_string(),
            )),
            model => {
                req.call.place_route(Arc::from(model));
                req.call.place_upstream(Arc::from("local"));
                if model == "refused-upstream" {
                    return Err(GatewayError::unavailable("connection refused"));
                }
                let script = vec![(Duration::ZERO, token("a")), (Duration::ZERO, done(1, 1))];
                Ok(scripted(script, End::Stop).0)
            }
        }
    }

    /// The rate layer over [`stub_router`].
    fn rated(guard: &SharedGuard) -> ChatService {
        boxed(RateLimitLayer::new(guard.clone()).layer(service_fn(stub_router)))
    }

    /// `svc`, boxed as the stack is.
    pub(crate) fn boxed<S>(svc: S) -> ChatService
    where
        S: Service<ChatRequest, Error = GatewayError> + Clone + Send + Sync + 'static,
        S::Response: futures_util::Stream<Item = Result<ChatEvent, GatewayError>> + Send + 'static,
        S::Future: Send + 'static,
    {
        ChatService::new(svc.map_response(|stream| Box::pin(stream) as ChatStream))
    }

    /// A request for `model` by the key `search`.
    pub(crate) fn by_search(model: &str) -> ChatRequest {
        let mut req = request(model);
        req.caller = Caller::Key("search".into());
        req
    }

    /// The policy of a key `search` with `limits`, and `route_extra`
    /// under the route `demo`.
    fn search_key(limits: &str, route_extra: &[&str]) -> SharedGuard {
        let key = format!(
            "    - {{ name: search, env: SEARCH_KEY, models: [\"*\"], limits: {{ {limits} }} }}"
        );
        policy(&["auth:", "  keys:", &key], route_extra)
    }

    /// Calls `model` as `search` and reads the whole answer; the error of
    /// a refused call.
    pub(crate) async fn call(svc: &ChatService, model: &str) -> Result<(), GatewayError> {
        let stream = svc.clone().oneshot(by_search(model)).await?;
        match drain(stream).await.1 {
            Some(Ok(_)) => Ok(()),
            other => panic!("the stub always finishes: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_refused_by_its_routes_limit_gives_the_key_back_its_request() {
        let guard = search_key(
            "requests_per_minute: 2",
            &["    limits: { requests_per_minute: 1 }"],
        );
        let svc = rated(&guard);
        assert_eq!(call(&svc, "demo").await, Ok(()));
        let refused = call(&svc, "demo")
            .await
            .expect_err("the route's one request is spent");
        assert_eq!(
            refused.message(),
            "model 'demo' is over its limit of 1 requests per minute; retry in 60s"
        );
        assert_eq!(
            call(&svc, "other").await,
            Ok(()),
            "the key's second request"
        );
        let refused = call(&svc, "other")
            .await
            .expect_err("the key's two are spent");
        assert!(
            refused
                .message()
                .starts_with("key 'search' is over its limit of 2 requests"),
            "{}",
            refused.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_to_an_unrouted_model_gives_back_its_keys_requests_and_tokens() {
        // "hi" is estimated at 5 tokens, so the key has room for one call.
        let guard = search_key("requests_per_minute: 1, tokens_per_minute: 5", &[]);
        let svc = rated(&guard);
        for _ in 0..3 {
            let err = call(&svc, "missing").await.expect_err("not routed");
            assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.message());
        }
        assert_eq!(call(&svc, "demo").await, Ok(()), "nothing was spent");
        let refused = call(&svc, "demo").await.expect_err("now it was");
        assert_eq!(refused.kind(), ErrorKind::ResourceExhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_reached_an_upstream_keeps_its_charge() {
        let guard = search_key("requests_per_minute: 1", &[]);
        let svc = rated(&guard);
        let err = call(&svc, "refused-upstream")
            .await
            .expect_err("the upstream fails");
        assert_eq!(err.message(), "connection refused");
        let refused = call(&svc, "demo")
            .await
            .expect_err("the prompt was sent: spent");
        assert_eq!(refused.kind(), ErrorKind::ResourceExhausted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_who_leaves_before_an_upstream_is_tried_is_refunded() {
        let guard = search_key("requests_per_minute: 1", &[]);
        let svc = boxed(RateLimitLayer::new(guard.clone()).layer(service_fn(
            |req: ChatRequest| async move {
                // Queued for a route that never gets round to it.
                std::future::pending::<()>().await;
                stub_router(req).await
            },
        )));
        let waiting = svc.clone().oneshot(by_search("demo"));
        assert!(
            tokio::time::timeout(Duration::from_secs(1), waiting)
                .await
                .is_err()
        );
        let svc = rated(&guard);
        assert_eq!(call(&svc, "demo").await, Ok(()), "the request came back");
    }

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
