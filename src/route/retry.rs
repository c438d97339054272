//! Retries, fallbacks and the panic pick, inside one deadline.
//!
//! A call tries its route's pools (by weight, each attempt balanced over the
//! pool's endpoints) up to `retry.attempts` times, then the route's
//! `fallback` models in order. Only failures that another server could
//! avoid are retried (unavailable, overloaded, too slow: an upstream's own
//! `timeout`, `first_token_timeout` or `idle_timeout` included); a request
//! the model refused is not. A prompt too long for the model goes to the
//! route's `context_fallback` instead. When every pool of the route and of
//! its fallbacks is out, the call goes to the endpoint out the longest
//! rather than failing untried (Envoy's panic mode): a lone server that came
//! back is then used by the very next call.
//!
//! Every attempt shares the caller's deadline: no attempt starts, and no
//! back-off waits, past what is left of it, and attempts stop only when it
//! is spent or the attempts are. Retries draw on a per-route budget, so a
//! fleet-wide outage does not multiply its own load, and back off
//! exponentially with jitter, honouring an upstream's `Retry-After` when the
//! deadline allows.
//!
//! A stream is handed on only once its first event came: a failure before
//! it is retried like any other. The same attempts serve a continuation of
//! a broken stream ([`Ask::Continue`]), each shaped for the upstream it
//! lands on (see [`super::continuation`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::continuation::{self, Delivered, SkipLeadingSpace, SkipPrefix};
use super::queue;
use super::table::{Pool, Route, RoutingTable};
use crate::balance::{Affinity, Pick, prefix_key};
use crate::chat::hold::{Hold, OnEnd};
use crate::chat::{ChatRequest, ChatStream};
use crate::config::Continuation;
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::metrics;

/// Longest single back-off, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the attempts of a call ask for.
pub(crate) enum Ask {
    /// The caller's request.
    Fresh,
    /// The rest of an answer whose stream broke after this much reached
    /// the caller.
    Continue(Delivered),
}

/// A stream that produced its first event, and how it was asked for.
pub(crate) struct Answer {
    /// The tokens, starting with the first.
    pub stream: ChatStream,
    /// How it was asked for.
    pub how: How,
}

impl Answer {
    /// The same answer, keeping `held` until its stream ends.
    fn holding(self, held: impl OnEnd) -> Self {
        Answer {
            stream: Box::pin(self.stream.hold(held)),
            how: self.how,
        }
    }
}

/// How an answer was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// The caller's request as it came.
    Fresh,
    /// A continuation of the delivered text (prefill).
    Prefill,
    /// The original request again, its start checked and skipped (replay).
    Replay,
}

/// The route for `req`, or NOT_FOUND saying where to look.
pub(crate) fn route_of(
    table: &RoutingTable,
    req: &ChatRequest,
) -> Result<Arc<Route>, GatewayError> {
    table.lookup(&req.model).cloned().ok_or_else(|| {
        GatewayError::new(
            ErrorKind::NotFound,
            format!(
                "model '{}' is not routed by this gateway; the ListModels RPC \
                 (GET /v1/models over HTTP, or `llmgate check` on the routing file) \
                 lists the models it serves",
                req.model
            ),
        )
    })
}

/// Answers `ask` for `req` from `route`, retrying and falling back as the
/// route says, and in panic when everything is out.
pub(crate) async fn answer(
    table: &RoutingTable,
    route: &Route,
    req: &Arc<ChatRequest>,
    ask: &Ask,
) -> Result<Answer, GatewayError> {
    // Whether any attempt reached a balancer: if none did, every pool was
    // out, and the panic pick gets its chance.
    let mut tried = false;
    let err = match try_route(route, req, ask, &mut tried).await {
        Ok(answer) => return Ok(answer),
        Err(err) => err,
    };
    if err.is_context_length_exceeded() {
        if let Some(bigger) = route
            .context_fallback
            .as_deref()
            .and_then(|m| table.lookup(m))
            // Admitted like any fallback; refused, the caller sees why the
            // prompt did not fit.
            && let Ok(permit) = req.call.admit_route(&bigger.model)
        {
            req.call.place_route(bigger.model.clone());
            return try_route(bigger, req, ask, &mut tried)
                .await
                .map(|answer| answer.holding(permit))
                .map_err(|e| e.context(&format!("context fallback '{}'", bigger.model)));
        }
        return Err(err);
    }
    if !err.is_retryable() {
        return Err(err);
    }
    let mut last = err;
    for name in &route.fallback {
        let Some(fallback) = table.lookup(name) else {
            continue;
        };
        if out_of_time(req, Duration::ZERO) {
            return Err(last);
        }
        // The key's model list and the fallback route's own limits apply
        // there; a fallback the caller may not use is skipped.
        let permit = match req.call.admit_route(&fallback.model) {
            Ok(permit) => permit,
            Err(refused) => {
                tracing::debug!(route = %route.model, fallback = %fallback.model, %refused, "fallback not admitted");
                continue;
            }
        };
        tracing::debug!(route = %route.model, fallback = %fallback.model, "falling back");
        metrics::fallback(&route.model, &fallback.model);
        req.call.place_route(fallback.model.clone());
        match try_route(fallback, req, ask, &mut tried).await {
            Ok(answer) => return Ok(answer.holding(permit)),
            Err(err) if err.is_retryable() => last = err,
            Err(err) => return Err(err),
        }
    }
    if tried || out_of_time(req, Duration::ZERO) {
        return Err(last);
    }
    match in_panic(table, route, req, ask).await {
        Some(answer) => answer,
        None => Err(last),
    }
}

/// Up to `retry.attempts` attempts on the route's pools; `tried` is set
/// once one reaches a balancer.
async fn try_route(
    route: &Route,
    req: &Arc<ChatRequest>,
    ask: &Ask,
    tried: &mut bool,
) -> Result<Answer, GatewayError> {
    // Pools already tried by this call, as bits (a route has a handful).
    let mut pools_tried: u64 = 0;
    let mut last: Option<GatewayError> = None;
    // The `timeout` of the upstream that failed last: the longest its
    // `Retry-After` may hold the call.
    let mut last_timeout = Duration::ZERO;
    let pick = pick_for(route, req);
    for attempt in 0..route.retry.attempts {
        if let Some(err) = &last {
            let wait = backoff(route, attempt, err, last_timeout);
            if !err.is_retryable() || err.is_context_length_exceeded() || out_of_time(req, wait) {
                break;
            }
            if !route.budget.withdraw() {
                tracing::debug!(route = %route.model, "retry budget spent; not retrying");
                break;
            }
            if let Some(upstream) = req.call.placement().upstream {
                metrics::retry(&route.model, &upstream, err.kind().grpc_code());
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let Some(index) = route.pick_pool(pools_tried) else {
            return Err(last.unwrap_or_else(|| {
                GatewayError::unavailable(format!(
                    "every pool of route '{}' is down (all endpoints ejected or failing \
                     health checks); retry later",
                    route.model
                ))
            }));
        };
        pools_tried |= 1u64.checked_shl(index as u32).unwrap_or(0);
        *tried = true;
        let pool = &route.pools[index];
        last_timeout = pool.upstream.config().timeouts.total;
        let result = match &route.queue {
            // Every endpoint busy: wait in the route's queue for a slot.
            Some(queue) => {
                let pick = &pick;
                let first = queue::first_attempt(route, pool, req, ask, pick);
                let again = || queue::attempt_any(route, req, ask, pick);
                (queue.serve(req.call.priority(), req.deadline, first, again)).await
            }
            None => attempt_on(pool, req, ask, pick.clone()).await,
        };
        match result {
            Ok(answer) => return Ok(answer),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        GatewayError::unavailable(format!(
            "route '{}' allows no attempt; set retry.attempts to 1 or more",
            route.model
        ))
    }))
}

/// How the route's attempts pick endpoints: by prompt prefix when the
/// route has affinity, else P2C.
fn pick_for(route: &Route, req: &ChatRequest) -> Pick {
    match &route.prefix_affinity {
        // An embedding has no conversation (every one would hash alike)
        // and no KV cache to reuse: plain P2C spreads them.
        Some(_) if req.extras.embed.is_some() => Pick::Ready,
        Some(affinity) => Pick::Affine(Affinity {
            key: prefix_key(
                req.messages
                    .iter()
                    .map(|m| (m.role.as_str(), m.content.as_str())),
                affinity.chars,
            ),
            max_load_factor: affinity.max_load_factor,
            route: route.model.clone(),
        }),
        None => Pick::Ready,
    }
}

/// The panic pick: one attempt on the pool, among the route's and its
/// fallbacks', whose endpoint has been out the longest. `None` when no
/// pool has an endpoint at all.
async fn in_panic(
    table: &RoutingTable,
    route: &Route,
    req: &Arc<ChatRequest>,
    ask: &Ask,
) -> Option<Result<Answer, GatewayError>> {
    let routes = std::iter::once(route).chain(
        route
            .fallback
            .iter()
            .filter_map(|name| table.lookup(name).map(|r| &**r)),
    );
    let (_, owner, pool) = routes
        .flat_map(|r| r.pools.iter().map(move |pool| (r, pool)))
        .filter_map(|(r, pool)| Some((pool.upstream.oldest_out(&pool.model)?, r, pool)))
        .min_by_key(|(since, _, _)| *since)?;
    tracing::info!(
        route = %route.model,
        upstream = %pool.upstream.name(),
        "every endpoint is out; trying the one out the longest"
    );
    if owner.model == route.model {
        return Some(attempt_on(pool, req, ask, Pick::Panic).await);
    }
    // A fallback's pool: admitted by that route, as any fallback is.
    let permit = req.call.admit_route(&owner.model).ok()?;
    req.call.place_route(owner.model.clone());
    let answer = attempt_on(pool, req, ask, Pick::Panic).await;
    Some(answer.map(|answer| answer.holding(permit)))
}

/// One attempt on `pool`, shaped for what `ask` wants and the upstream's
/// way of continuing, until the answer's first event.
pub(super) async fn attempt_on(
    pool: &Pool,
    req: &Arc<ChatRequest>,
    ask: &Ask,
    pick: Pick,
) -> Result<Answer, GatewayError> {
    let upstream = &pool.upstream;
    let call = |req: Arc<ChatRequest>| upstream.call(pool.model.clone(), req, pick.clone());
    let Ask::Continue(delivered) = ask else {
        let stream = call(req.clone()).await?;
        return first_event(stream, How::Fresh).await;
    };
    let replayable = continuation::replayable(req, upstream.config());
    match upstream.config().continuation {
        Continuation::Prefill => {
            let continued = Arc::new(continuation::prefill_request(req, delivered));
            match call(continued).await {
                Ok(stream) => {
                    let stream = SkipLeadingSpace::new(stream, delivered);
                    first_event(Box::pin(stream), How::Prefill).await
                }
                // The server does not take a prefill: a replay may do.
                Err(err) if err.kind() == ErrorKind::InvalidArgument && replayable => {
                    tracing::debug!(upstream = %upstream.name(), %err, "prefill refused; replaying");
                    replay(call(req.clone()).await?, delivered).await
                }
                Err(err) => Err(err),
            }
        }
        Continuation::Replay if replayable => replay(call(req.clone()).await?, delivered).await,
        Continuation::Replay => Err(GatewayError::unavailable(format!(
            "upstream '{}' continues answers by replay, which needs temperature 0",
            upstream.name()
        ))),
        Continuation::None => Err(GatewayError::unavailable(format!(
            "upstream '{}' does not continue answers (continuation: none)",
            upstream.name()
        ))),
    }
}

/// A replayed answer, past what the caller already has.
async fn replay(stream: ChatStream, delivered: &Delivered) -> Result<Answer, GatewayError> {
    first_event(Box::pin(SkipPrefix::new(stream, delivered)), How::Replay).await
}

/// Waits for the stream's first event, so that a failure before any token
/// can still be retried; hands on a stream that starts with that event.
async fn first_event(mut stream: ChatStream, how: How) -> Result<Answer, GatewayError> {
    match stream.next().await {
        Some(Ok(event)) => {
            let first = futures_util::stream::iter([Ok(event)]);
            Ok(Answer {
                stream: Box::pin(first.chain(stream)),
                how,
            })
        }
        Some(Err(err)) => Err(err),
        None => Err(GatewayError::unavailable(
            "the upstream ended its answer before sending anything; retry, and if it \
             persists check the upstream's logs",
        )),
    }
}

/// The wait before retry number `attempt` (1 for the first retry):
/// exponential with full jitter, or the upstream's `Retry-After` if longer,
/// but never past `cap` (the failing upstream's own timeout).
fn backoff(route: &Route, attempt: u32, err: &GatewayError, cap: Duration) -> Duration {
    let exponential = route
        .retry
        .backoff
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(MAX_BACKOFF);
    let jittered = exponential.mul_f64(rand::random_range(0.5..1.0));
    err.retry_after()
        .map_or(jittered, |asked| asked.min(cap).max(jittered))
}

/// Whether waiting `wait` and then starting an attempt would leave nothing
/// of the caller's deadline.
pub(crate) fn out_of_time(req: &ChatRequest, wait: Duration) -> bool {
    req.deadline.is_some_and(|deadline| {
        Instant::now()
            .checked_add(wait)
            .is_none_or(|then| then >= deadline)
    })
}

#[cfg(test)]
mod tests {
    use tower::retry::budget::TpsBudget;

    use super::*;
    use crate::chat::testing::request;
    use crate::config::RetryPolicy;

    fn route(backoff: Duration) -> Route {
        Route {
            model: Arc::from("m"),
            aliases: Vec::new(),
            pools: Vec::new(),
            retry: RetryPolicy {
                attempts: 5,
                backoff,
                budget_percent: 20.0,
            },
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
            fallback: Vec::new(),
            context_fallback: None,
            continues: false,
            prefix_affinity: None,
            queue: None,
        }
    }

    #[test]
    fn back_off_doubles_with_jitter_and_is_capped() {
        let route = route(Duration::from_millis(100));
        let err = GatewayError::unavailable("down");
        for _ in 0..50 {
            let first = backoff(&route, 1, &err, Duration::from_secs(60));
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
            let third = backoff(&route, 3, &err, Duration::from_secs(60));
            assert!(third >= Duration::from_millis(200) && third < Duration::from_millis(400));
            let late = backoff(&route, 30, &err, Duration::from_secs(60));
            assert!(late <= MAX_BACKOFF, "{late:?}");
        }
    }

    #[test]
    fn an_upstream_s_retry_after_is_obeyed_up_to_its_own_timeout() {
        let route = route(Duration::from_millis(10));
        let asked = GatewayError::unavailable("busy").with_retry_after(Duration::from_secs(3));
        assert_eq!(
            backoff(&route, 1, &asked, Duration::from_secs(60)),
            Duration::from_secs(3)
        );
        let absurd = GatewayError::unavailable("busy").with_retry_after(Duration::MAX);
        assert_eq!(
            backoff(&route, 1, &absurd, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_wait_or_attempt_runs_past_the_caller_s_deadline() {
        let mut req = request("m");
        assert!(
            !out_of_time(&req, Duration::MAX),
            "no deadline: never out of time"
        );
        req.deadline = Some(Instant::now() + Duration::from_secs(1));
        assert!(!out_of_time(&req, Duration::from_millis(900)));
        assert!(out_of_time(&req, Duration::from_secs(1)));
        assert!(
            out_of_time(&req, Duration::MAX),
            "an overflowing wait is out of time"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(out_of_time(&req, Duration::ZERO));
    }
}
