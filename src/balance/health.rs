//! What the balancer knows about each endpoint: calls in flight, failures in
//! a row, ejections, and the verdict of active health checks.
//!
//! Failures are judged where they belong. A refused or reset connection is
//! the endpoint's fault and counts against it for every model it serves; a
//! 5xx answer or an error inside a stream is about one model on it (an
//! overloaded or unloaded model, a provider's busy model) and counts
//! against that (endpoint, model) pair only, so one model's trouble never
//! takes the endpoint away from the others it serves.
//!
//! Each scope keeps its own [`Record`] and follows Envoy's outlier model:
//! `consecutive_failures` in a row eject it for a back-off that doubles on
//! each repeat, never more than `max_ejected_share` of the pool at once.
//! When the back-off ends it takes calls again on probation: one more
//! failure ejects it for twice as long, a success clears its record. An
//! ejected endpoint is also probed (see [`super::probe::reconnect`]) and
//! readmitted at the first connection that succeeds, so a server that comes
//! back is used again at once rather than when its back-off ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use super::clock::epoch;
use super::engine::{EngineLoad, EngineSample};
use crate::config::OutlierPolicy;
use crate::telemetry::metrics::EndpointMetrics;

/// The shared record of one endpoint. Held by its balancer, by every call
/// in flight on it, and weakly by its background tasks.
#[derive(Debug)]
pub(crate) struct EndpointState {
    /// The endpoint's base URL, for introspection and probes.
    pub url: http::Uri,
    /// What metrics and logs call it.
    pub label: Arc<str>,
    /// Its health and load series.
    metrics: EndpointMetrics,
    /// Calls in flight, each counted until its last token.
    in_flight: AtomicUsize,
    /// Failures of the connection itself: they count for every model.
    transport: Record,
    /// Failures of one model on this endpoint, by upstream model name;
    /// created at a model's first failure, so a healthy endpoint has none.
    /// Read on every call, so swapped rather than locked.
    models: ArcSwap<HashMap<Arc<str>, Arc<Record>>>,
    /// The engine's own load, when its metrics are scraped.
    pub engine: EngineLoad,
    /// The active health check's verdict (true when none is configured).
    healthy: AtomicBool,
    /// A reconnect probe is running for this endpoint.
    probing: AtomicBool,
    /// The pool it belongs to, for the ejection cap.
    pool: Weak<PoolHealth>,
    /// When to eject.
    policy: OutlierPolicy,
    /// Dropped with the state: tells its background tasks to stop at once
    /// rather than at their next tick.
    gone: tokio::sync::watch::Sender<()>,
}

/// Failures in a row and ejections of one scope: an endpoint's connection,
/// or one model on it. Atomics, so every call can read it without a lock.
#[derive(Debug, Default)]
struct Record {
    /// Failures since the last success.
    consecutive_failures: AtomicU32,
    /// When the last failure happened, in nanoseconds after [`epoch`].
    last_failure: AtomicU64,
    /// Ejected until this many nanoseconds after [`epoch`]; 0 when not.
    ejected_until: AtomicU64,
    /// When the current (or last) ejection began, after [`epoch`]: the
    /// panic pick prefers the ejection that is oldest.
    ejected_at: AtomicU64,
    /// Ejections since the last success; sets the next back-off.
    ejections: AtomicU32,
}

/// The endpoints of one pool, for decisions that need them all: the cap on
/// ejections, whether the pool can take a call at all, introspection.
#[derive(Debug, Default)]
pub(crate) struct PoolHealth {
    /// Current members, kept in step with discovery; read on every call, so
    /// swapped rather than locked.
    members: ArcSwap<Vec<Arc<EndpointState>>>,
    /// Told whenever a call ends and frees a slot: the queues of the
    /// routes this pool serves, so a waiting call is woken by the slot
    /// itself rather than by polling.
    slot_listeners: SlotListeners,
}

/// Something waiting for a free slot on a pool: a route's queue.
pub(crate) trait SlotListener: Send + Sync {
    /// A call on one of the pool's endpoints ended. Called from the end of
    /// that call, so it must be quick and must not call back into the pool.
    fn slot_freed(&self);
}

/// The listeners of one pool, held weakly so a route (and its queue)
/// replaced by a reload is forgotten rather than kept alive by the pool.
#[derive(Default)]
struct SlotListeners(ArcSwap<Vec<Weak<dyn SlotListener>>>);

impl std::fmt::Debug for SlotListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotListeners")
    }
}

/// Who a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The endpoint itself (its connection): every model it serves.
    Endpoint,
    /// One model on the endpoint.
    Model,
}

/// How one call ended, as evidence about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint answered (even if the answer was a refusal of the
    /// request itself): it works.
    Success,
    /// Connect error, reset, 5xx or a broken answer: in trouble, at the
    /// given scope.
    Failure(Scope),
    /// 429: the model on the endpoint works but is saturated. It should get
    /// fewer calls, but is not ejected: callers must keep seeing
    /// RESOURCE_EXHAUSTED, the signal to back off, not an UNAVAILABLE from
    /// an emptied pool.
    Throttled,
    /// Says nothing about the endpoint (the caller left).
    Neutral,
}

/// A point-in-time view of an endpoint for one model, for introspection.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// Base URL.
    pub(crate) url: String,
    /// `up`, `ejected` or `unhealthy`.
    pub state: &'static str,
    /// What an ejection is about: `endpoint`, `model`, or empty when none.
    pub(crate) ejected_for: &'static str,
    /// Calls in flight.
    pub(crate) in_flight: usize,
    /// Failures since the last success (the connection's and the model's).
    pub(crate) consecutive_failures: u32,
    /// The engine's own load, when scraped and fresh.
    pub(crate) engine: Option<EngineSample>,
}

// === impl EndpointState ===

impl EndpointState {
    /// A fresh, healthy endpoint of `pool`.
    pub(crate) fn new(
        url: http::Uri,
        label: Arc<str>,
        metrics: EndpointMetrics,
        pool: &Arc<PoolHealth>,
        policy: OutlierPolicy,
    ) -> Arc<Self> {
        // Fix the epoch before any ejection time is computed from it.
        let _ = epoch();
        metrics.set_up(true);
        Arc::new(EndpointState {
            url,
            label,
            metrics,
            in_flight: AtomicUsize::new(0),
            transport: Record::default(),
            models: ArcSwap::default(),
            engine: EngineLoad::default(),
            healthy: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            pool: Arc::downgrade(pool),
            policy,
            gone: tokio::sync::watch::channel(()).0,
        })
    }

    /// Completes (with an error) when this endpoint is dropped, for the
    /// tasks that serve it.
    pub(crate) fn gone(&self) -> tokio::sync::watch::Receiver<()> {
        self.gone.subscribe()
    }

    /// Calls in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failures since the last success, of the connection and of `model`.
    pub(crate) fn consecutive_failures(&self, model: &str) -> u32 {
        let of_model = self
            .model_record(model)
            .map_or(0, |r| r.consecutive_failures.load(Ordering::Relaxed));
        self.transport.consecutive_failures.load(Ordering::Relaxed) + of_model
    }

    /// Whether the endpoint (or `model` on it) failed within the last
    /// [`FAILURE_PENALTY`] and has not succeeded since. The balancer prefers
    /// any endpoint without a recent failure, so a retry moves elsewhere at
    /// once; the penalty fades so a recovered endpoint gets calls again and
    /// can prove itself.
    pub(crate) fn failed_recently(&self, model: &str, now: Instant) -> bool {
        self.transport.failed_recently(now)
            || self
                .model_record(model)
                .is_some_and(|r| r.failed_recently(now))
    }

    /// Whether the last active health verdict was good.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether the connection itself is ejected now.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        self.transport.ejected_until(now).is_some()
    }

    /// Whether a call for `model` could be sent here now (caps aside).
    pub(crate) fn is_admissible(&self, model: &str, now: Instant) -> bool {
        self.is_healthy()
            && self.transport.ejected_until(now).is_none()
            && self
                .model_record(model)
                .is_none_or(|r| r.ejected_until(now).is_none())
    }

    /// Since when `model` on this endpoint has been out, when it is: the
    /// panic pick sends a call to the endpoint out the longest. An endpoint
    /// failing its health check counts as out since now.
    pub(crate) fn out_since(&self, model: &str, now: Instant) -> Option<Instant> {
        let ejected = [Some(&self.transport), self.model_record(model).as_deref()]
            .into_iter()
            .flatten()
            .filter(|r| r.ejected_until(now).is_some())
            .map(Record::ejected_at)
            .min();
        ejected.or_else(|| (!self.is_healthy()).then_some(now))
    }

    /// Counts a call as started, unless `cap` calls are already in flight.
    pub(crate) fn try_start(&self, cap: Option<usize>) -> bool {
        let started = match cap {
            None => {
                self.in_flight.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(cap) => self
                .in_flight
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .is_ok(),
        };
        if started {
            self.metrics.call_started();
        }
        started
    }

    /// Whether `cap` calls are in flight.
    pub(crate) fn at_cap(&self, cap: Option<usize>) -> bool {
        cap.is_some_and(|cap| self.in_flight() >= cap)
    }

    /// Counts a call for `model` as ended and learns from how it ended.
    /// Returns the scope the call's failure ejected, if it did.
    pub(crate) fn call_ended(&self, model: &Arc<str>, outcome: Outcome) -> Option<Scope> {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.call_ended();
        if let Some(pool) = self.pool.upgrade() {
            pool.slot_freed();
        }
        match outcome {
            Outcome::Success => {
                if self.transport.succeeded() {
                    self.metrics.set_up(self.is_healthy());
                }
                if let Some(record) = self.model_record(model) {
                    record.succeeded();
                }
                None
            }
            Outcome::Failure(Scope::Endpoint) => {
                let failures = self.transport.failed();
                (failures >= self.policy.consecutive_failures
                    && self.try_eject(None, &self.transport))
                .then_some(Scope::Endpoint)
            }
            Outcome::Failure(Scope::Model) => {
                let record = self.model_record_or_new(model);
                let failures = record.failed();
                (failures >= self.policy.consecutive_failures
                    && self.try_eject(Some(model), &record))
                .then_some(Scope::Model)
            }
            Outcome::Throttled => {
                self.model_record_or_new(model).failed();
                None
            }
            Outcome::Neutral => None,
        }
    }

    /// Sets the active health verdict.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
        self.metrics
            .set_up(healthy && !self.is_ejected(Instant::now()));
    }

    /// Publishes an engine reading as this endpoint's gauges.
    pub(crate) fn set_engine_metrics(&self, sample: &EngineSample) {
        self.metrics
            .set_engine(sample.waiting, sample.running, sample.kv_cache_usage);
    }

    /// Takes the endpoint back after a probe reached it: its connection's
    /// ejection ends now. Its failure count stays, so the next failure
    /// ejects it again at once, for longer.
    pub(crate) fn readmit(&self) {
        self.transport.ejected_until.store(0, Ordering::Release);
        self.metrics.set_up(self.is_healthy());
        tracing::info!(endpoint = %self.url, "endpoint reachable again; readmitted");
    }

    /// Claims the one reconnect probe of this endpoint; `false` when one
    /// already runs.
    pub(crate) fn start_probing(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Releases the claim of [`start_probing`](Self::start_probing).
    pub(crate) fn stop_probing(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// The record of `model`, if it ever failed here.
    fn model_record(&self, model: &str) -> Option<Arc<Record>> {
        let models = self.models.load();
        if models.is_empty() {
            return None;
        }
        models.get(model).cloned()
    }

    /// The record of `model`, created at its first failure.
    fn model_record_or_new(&self, model: &Arc<str>) -> Arc<Record> {
        if let Some(record) = self.model_record(model) {
            return record;
        }
        self.models.rcu(|models| {
            let mut models = HashMap::clone(models);
            models.entry(model.clone()).or_default();
            models
        });
        self.model_record(model).unwrap_or_default()
    }

    /// Ejects `record` (the connection's when `model` is `None`) unless it
    /// already is, or the pool's cap on ejections for that scope is
    /// reached. Returns whether it ejected.
    fn try_eject(&self, model: Option<&Arc<str>>, record: &Record) -> bool {
        let now = Instant::now();
        if record.ejected_until(now).is_some() {
            return false;
        }
        if let Some(pool) = self.pool.upgrade() {
            let (members, ejected) = pool.ejection_counts(model.map(|m| &**m), now);
            let cap = ((members as f64 * self.policy.max_ejected_share).floor() as usize).max(1);
            if ejected >= cap {
                return false;
            }
        }
        let length = record.eject(now, &self.policy);
        self.metrics.ejected(model.map(|m| &**m));
        if model.is_none() {
            self.metrics.set_up(false);
        }
        tracing::warn!(
            endpoint = %self.url,
            model = model.map_or("", |m| &**m),
            scope = if model.is_some() { "model" } else { "endpoint" },
            failures = record.consecutive_failures.load(Ordering::Relaxed),
            ejected_for = ?length,
            "ejected after failing repeatedly"
        );
        true
    }

    /// A point-in-time view for calls of `model`.
    pub(crate) fn snapshot(&self, model: &str, now: Instant) -> EndpointSnapshot {
        let model_ejected = self
            .model_record(model)
            .is_some_and(|r| r.ejected_until(now).is_some());
        let (state, ejected_for) = if self.is_ejected(now) {
            ("ejected", "endpoint")
        } else if model_ejected {
            ("ejected", "model")
        } else if !self.is_healthy() {
            ("unhealthy", "")
        } else {
            ("up", "")
        };
        EndpointSnapshot {
            url: self.url.to_string(),
            state,
            ejected_for,
            in_flight: self.in_flight(),
            consecutive_failures: self.consecutive_failures(model),
            engine: self.engine.fresh(now),
        }
    }
}

// === impl Record ===

impl Record {
    /// Counts a failure; returns the failures in a row.
    fn failed(&self) -> u32 {
        let since = Instant::now().saturating_duration_since(epoch());
        self.last_failure
            .store(since.as_nanos() as u64, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Clears the record after a success; returns whether there was
    /// anything to clear.
    fn succeeded(&self) -> bool {
        if self.consecutive_failures.swap(0, Ordering::Relaxed) == 0 {
            return false;
        }
        self.ejections.store(0, Ordering::Relaxed);
        self.ejected_until.store(0, Ordering::Release);
        true
    }

    fn failed_recently(&self, now: Instant) -> bool {
        if self.consecutive_failures.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let at = epoch() + Duration::from_nanos(self.last_failure.load(Ordering::Relaxed));
        now.saturating_duration_since(at) < FAILURE_PENALTY
    }

    /// Until when the scope is ejected, if it is now.
    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(epoch() + Duration::from_nanos(nanos)).filter(|until| *until > now),
        }
    }

    fn ejected_at(&self) -> Instant {
        epoch() + Duration::from_nanos(self.ejected_at.load(Ordering::Relaxed))
    }

    /// Ejects the scope from `now` for its next back-off; returns how long.
    fn eject(&self, now: Instant, policy: &OutlierPolicy) -> Duration {
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed);
        let factor = 2u32.saturating_pow(ejections.min(16));
        let length = policy
            .base_ejection
            .saturating_mul(factor)
            .min(policy.max_ejection);
        let from = now.saturating_duration_since(epoch());
        let until = from.saturating_add(length);
        self.ejected_at
            .store(from.as_nanos() as u64, Ordering::Relaxed);
        self.ejected_until
            .store(until.as_nanos().max(1) as u64, Ordering::Release);
        length
    }
}

// === impl PoolHealth ===

impl PoolHealth {
    /// Tells `listener` of every slot freed from now on, while it lives.
    pub(crate) fn listen_for_slots(&self, listener: Weak<dyn SlotListener>) {
        self.slot_listeners.0.rcu(|listeners| {
            let mut listeners: Vec<_> = listeners
                .iter()
                .filter(|l| l.strong_count() > 0)
                .cloned()
                .collect();
            listeners.push(listener.clone());
            listeners
        });
    }

    /// A call ended: each listener may wake a waiting call. Read on every
    /// call's end, so swapped rather than locked; a pool no route queues
    /// for pays one atomic load.
    fn slot_freed(&self) {
        for listener in self.slot_listeners.0.load().iter() {
            if let Some(listener) = listener.upgrade() {
                listener.slot_freed();
            }
        }
    }

    /// Adds a member discovered.
    pub(crate) fn insert(&self, endpoint: Arc<EndpointState>) {
        self.members.rcu(|members| {
            let mut members = Vec::clone(members);
            members.push(endpoint.clone());
            members
        });
    }

    /// Drops a member no longer discovered.
    pub(crate) fn remove(&self, url: &http::Uri) {
        self.members.rcu(|members| {
            let mut members = Vec::clone(members);
            members.retain(|e| &e.url != url);
            members
        });
    }

    /// Whether any member could take a call for `model` now: a pool with
    /// none is down, and calls go to other pools or fall back at once
    /// instead of waiting.
    pub(crate) fn any_admissible(&self, model: &str) -> bool {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .any(|e| e.is_admissible(model, now))
    }

    /// Since when the member out the longest for `model` has been out.
    pub(crate) fn oldest_out(&self, model: &str) -> Option<Instant> {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .filter_map(|e| e.out_since(model, now))
            .min()
    }

    /// Every member's state for calls of `model`.
    pub(crate) fn snapshot(&self, model: &str) -> Vec<EndpointSnapshot> {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .map(|e| e.snapshot(model, now))
            .collect()
    }

    /// Members, and how many of them are out for the scope: the connection
    /// (`model` is `None`) or `model`, which the connection's ejection
    /// covers too.
    fn ejection_counts(&self, model: Option<&str>, now: Instant) -> (usize, usize) {
        let members = self.members.load();
        let ejected = members
            .iter()
            .filter(|e| match model {
                None => e.is_ejected(now),
                Some(model) => {
                    e.is_ejected(now)
                        || e.model_record(model)
                            .is_some_and(|r| r.ejected_until(now).is_some())
                }
            })
            .count();
        (members.len(), ejected)
    }
}

/// How long a failure makes an endpoint less preferred than its peers.
pub(crate) const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 1.0,
        }
    }

    fn pool_of(n: usize) -> (Arc<PoolHealth>, Vec<Arc<EndpointState>>) {
        let pool = Arc::new(PoolHealth::default());
        let members = (0..n)
            .map(|i| {
                let url = format!("http://10.0.0.{i}:8000");
                let label: Arc<str> = Arc::from(url.as_str());
                let state = EndpointState::new(
                    url.parse().unwrap_or_default(),
                    label.clone(),
                    EndpointMetrics::new(&Arc::from("up"), &label),
                    &pool,
                    policy(),
                );
                pool.insert(state.clone());
                state
            })
            .collect();
        (pool, members)
    }

    /// One call for `model` on `endpoint` that ends with `outcome`.
    fn call(endpoint: &EndpointState, model: &str, outcome: Outcome) -> Option<Scope> {
        assert!(endpoint.try_start(None));
        endpoint.call_ended(&Arc::from(model), outcome)
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_s_failures_eject_that_model_only() {
        let (pool, members) = pool_of(1);
        let endpoint = &members[0];
        let failing = Outcome::Failure(Scope::Model);
        assert_eq!(
            call(endpoint, "bad", failing),
            None,
            "one failure is not enough"
        );
        assert_eq!(call(endpoint, "bad", failing), Some(Scope::Model));
        let now = Instant::now();
        assert!(!endpoint.is_admissible("bad", now));
        assert!(
            endpoint.is_admissible("good", now),
            "other models stay served"
        );
        assert!(pool.any_admissible("good") && !pool.any_admissible("bad"));
        assert_eq!(endpoint.snapshot("bad", now).ejected_for, "model");
        assert_eq!(endpoint.snapshot("good", now).state, "up");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_failures_eject_the_endpoint_for_every_model() {
        let (_pool, members) = pool_of(1);
        let endpoint = &members[0];
        let refused = Outcome::Failure(Scope::Endpoint);
        call(endpoint, "a", refused);
        assert_eq!(call(endpoint, "b", refused), Some(Scope::Endpoint));
        let now = Instant::now();
        assert!(!endpoint.is_admissible("a", now) && !endpoint.is_admissible("c", now));
        assert_eq!(endpoint.snapshot("c", now).ejected_for, "endpoint");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejection_ends_after_its_back_off_and_doubles_on_repeat() {
        let (_pool, members) = pool_of(1);
        let endpoint = &members[0];
        let failing = Outcome::Failure(Scope::Model);
        call(endpoint, "m", failing);
        call(endpoint, "m", failing);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            endpoint.is_admissible("m", Instant::now()),
            "back on probation"
        );
        // One failure on probation ejects it again, for twice as long.
        assert_eq!(call(endpoint, "m", failing), Some(Scope::Model));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!endpoint.is_admissible("m", Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(endpoint.is_admissible("m", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_readmits_at_once_and_clears_the_record() {
        let (_pool, members) = pool_of(1);
        let endpoint = &members[0];
        let failing = Outcome::Failure(Scope::Model);
        call(endpoint, "m", failing);
        call(endpoint, "m", failing);
        // The panic pick sent a call anyway, and it worked.
        call(endpoint, "m", Outcome::Success);
        assert!(endpoint.is_admissible("m", Instant::now()));
        assert_eq!(endpoint.consecutive_failures("m"), 0);
        assert!(!endpoint.failed_recently("m", Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejected_share_of_a_pool_is_capped_per_model() {
        let (pool, members) = pool_of(2);
        for endpoint in &members {
            for _ in 0..2 {
                call(endpoint, "m", Outcome::Failure(Scope::Model));
            }
        }
        // max_ejected_share 1.0 lets both go: now cap it at one of two.
        let capped = OutlierPolicy {
            max_ejected_share: 0.5,
            ..policy()
        };
        let (capped_pool, capped_members) = {
            let pool = Arc::new(PoolHealth::default());
            let members: Vec<_> = members
                .iter()
                .map(|e| {
                    let state = EndpointState::new(
                        e.url.clone(),
                        e.label.clone(),
                        EndpointMetrics::new(&Arc::from("up"), &e.label),
                        &pool,
                        capped,
                    );
                    pool.insert(state.clone());
                    state
                })
                .collect();
            (pool, members)
        };
        assert!(!pool.any_admissible("m"), "uncapped: both out");
        for endpoint in &capped_members {
            for _ in 0..2 {
                call(endpoint, "m", Outcome::Failure(Scope::Model));
            }
        }
        assert!(capped_pool.any_admissible("m"), "capped: one stays in");
    }

    #[tokio::test(start_paused = true)]
    async fn the_pool_knows_which_member_has_been_out_the_longest() {
        let (pool, members) = pool_of(2);
        assert_eq!(pool.oldest_out("m"), None);
        let failing = Outcome::Failure(Scope::Model);
        call(&members[1], "m", failing);
        call(&members[1], "m", failing);
        let first_out = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        call(&members[0], "m", failing);
        call(&members[0], "m", failing);
        let now = Instant::now();
        assert_eq!(pool.oldest_out("m"), Some(first_out));
        assert_eq!(members[1].out_since("m", now), Some(first_out));
        assert!(members[0].out_since("m", now) > Some(first_out));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_model_is_less_preferred_but_never_ejected() {
        let (_pool, members) = pool_of(1);
        let endpoint = &members[0];
        for _ in 0..5 {
            assert_eq!(call(endpoint, "m", Outcome::Throttled), None);
        }
        let now = Instant::now();
        assert!(endpoint.is_admissible("m", now));
        assert!(endpoint.failed_recently("m", now));
        assert!(!endpoint.failed_recently("other", now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cap_on_calls_in_flight_is_never_exceeded() {
        let (_pool, members) = pool_of(1);
        let endpoint = &members[0];
        assert!(endpoint.try_start(Some(2)));
        assert!(endpoint.try_start(Some(2)));
        assert!(!endpoint.try_start(Some(2)), "a third call is refused");
        endpoint.call_ended(&Arc::from("m"), Outcome::Success);
        assert!(endpoint.try_start(Some(2)), "room again after one ended");
    }
}
