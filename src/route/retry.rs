//! Retries and fallbacks, inside one deadline.
//!
//! A call tries its route's pools (by weight, each attempt balanced over the
//! pool's endpoints) up to `retry.attempts` times, then the route's
//! `fallback` models in order. Only failures that another server could
//! avoid are retried (unavailable, overloaded, too slow); a request the model
//! refused is not. A prompt too long for the model goes to the route's
//! `context_fallback` instead.
//!
//! Every attempt shares the caller's deadline: no attempt starts, and no
//! back-off waits, past what is left of it (peers time each attempt on its
//! own, so a call with retries can run several times longer than its
//! caller waits). Retries draw on a per-route budget, so a fleet-wide outage
//! does not multiply its own load, and back off exponentially with jitter,
//! honouring an upstream's `Retry-After` when the deadline allows.
//!
//! A stream is retried only until its first token: the router waits for the
//! first event before handing the stream on, and an error there is retried
//! like any other. After a token has gone out, an error goes to the caller.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tower::retry::budget::Budget;

use super::table::{Route, RoutingTable};
use crate::chat::{ChatRequest, ChatStream};
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::metrics;

/// Longest single back-off, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Serves `req` from `table`, retrying and falling back as its route says.
pub async fn serve(
    table: Arc<RoutingTable>,
    req: Arc<ChatRequest>,
) -> Result<ChatStream, GatewayError> {
    let Some(route) = table.lookup(&req.model) else {
        return Err(GatewayError::new(
            ErrorKind::NotFound,
            format!(
                "model '{}' is not routed by this gateway; the ListModels RPC \
                 (GET /v1/models over HTTP, or `llmgate check` on the routing file) \
                 lists the models it serves",
                req.model
            ),
        ));
    };
    req.call.place_route(route.model.clone());
    route.budget.deposit();
    let err = match try_route(route, &req).await {
        Ok(stream) => return Ok(stream),
        Err(err) => err,
    };
    if err.is_context_length_exceeded() {
        if let Some(bigger) = route
            .context_fallback
            .as_deref()
            .and_then(|m| table.lookup(m))
        {
            return try_route(bigger, &req)
                .await
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
        if out_of_time(&req, Duration::ZERO) {
            break;
        }
        tracing::debug!(route = %route.model, fallback = %fallback.model, "falling back");
        metrics::fallback(&route.model, &fallback.model);
        req.call.place_route(fallback.model.clone());
        match try_route(fallback, &req).await {
            Ok(stream) => return Ok(stream),
            Err(err) if err.is_retryable() => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(last)
}

/// Up to `retry.attempts` attempts on the route's pools.
async fn try_route(route: &Route, req: &Arc<ChatRequest>) -> Result<ChatStream, GatewayError> {
    // Pools already tried by this call, as bits (a route has a handful).
    let mut tried: u64 = 0;
    let mut last: Option<GatewayError> = None;
    // The `timeout` of the upstream that failed last: the longest its
    // `Retry-After` may hold the call.
    let mut last_timeout = Duration::ZERO;
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
        let Some(index) = route.pick_pool(tried) else {
            return Err(last.unwrap_or_else(|| {
                GatewayError::unavailable(format!(
                    "every pool of route '{}' is down (all endpoints ejected or failing \
                     health checks); retry later",
                    route.model
                ))
            }));
        };
        tried |= 1u64.checked_shl(index as u32).unwrap_or(0);
        let pool = &route.pools[index];
        last_timeout = pool.upstream.config().timeouts.total;
        let attempt = pool.upstream.call(pool.model.clone(), req.clone());
        match attempt.await {
            Ok(stream) => match first_event(stream).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            },
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

/// Waits for the stream's first event, so that a failure before any token
/// can still be retried; hands on a stream that starts with that event.
async fn first_event(mut stream: ChatStream) -> Result<ChatStream, GatewayError> {
    match stream.next().await {
        Some(Ok(event)) => {
            let first = futures_util::stream::iter([Ok(event)]);
            Ok(Box::pin(first.chain(stream)))
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
fn out_of_time(req: &ChatRequest, wait: Duration) -> bool {
    req.deadline.is_some_and(|deadline| {
        Instant::now()
            .checked_add(wait)
            .is_none_or(|then| then >= deadline)
    })
}
