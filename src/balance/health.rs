//! What the balancer knows about each endpoint: calls in flight, failures in
//! a row, ejections, and the verdict of active health checks.
//!
//! Passive outlier ejection follows Envoy's model: an endpoint that fails
//! `consecutive_failures` times in a row is ejected for a back-off that
//! doubles on each repeat, never more than `max_ejected_share` of its pool at
//! once. When the back-off ends the endpoint takes calls again on probation:
//! one more failure ejects it for twice as long, a success clears its record.
//! Probation is the "trickle" that probes a failed server back in.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::OutlierPolicy;
use crate::telemetry::metrics::EndpointMetrics;

/// The shared record of one endpoint. Held by its balancer service, by every
/// call in flight on it, and weakly by its health-check task.
#[derive(Debug)]
pub struct EndpointState {
    /// The endpoint's base URL, for introspection and probes.
    pub url: http::Uri,
    /// What metrics and logs call it.
    pub label: Arc<str>,
    /// Its health and load series.
    metrics: EndpointMetrics,
    /// Calls in flight, each counted until its last token.
    in_flight: AtomicUsize,
    /// Failures since the last success.
    consecutive_failures: AtomicU32,
    /// When the last failure happened, in nanoseconds after [`epoch`].
    last_failure: AtomicU64,
    /// Ejected until this many nanoseconds after [`epoch`]; 0 when not.
    /// An atomic so every call can check it without a lock.
    ejected_until: AtomicU64,
    /// Ejections since the last success; sets the next back-off.
    ejections: Mutex<u32>,
    /// The active health check's verdict (true when none is configured).
    healthy: AtomicBool,
    /// Wakes the balancer when the endpoint may have become ready again (a
    /// call ended under a cap, a health check passed).
    ready_waker: AtomicWaker,
    /// The pool it belongs to, for the ejection cap.
    pool: Weak<PoolHealth>,
    /// When to eject.
    policy: OutlierPolicy,
    /// Dropped with the state: tells its background tasks to stop at once
    /// rather than at their next tick.
    gone: tokio::sync::watch::Sender<()>,
}

/// The endpoints of one pool, for decisions that need them all: the cap on
/// ejections, whether the pool can take a call at all, introspection.
#[derive(Debug, Default)]
pub struct PoolHealth {
    /// Current members, kept in step with discovery; read on every call, so
    /// swapped rather than locked.
    members: ArcSwap<Vec<Arc<EndpointState>>>,
}

/// How one call ended, as evidence about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (even if the answer was a refusal of the
    /// request itself): it works.
    Success,
    /// Connect error, reset or 5xx: the endpoint is in trouble.
    Failure,
    /// 429: the endpoint works but is saturated. It should get fewer calls,
    /// but is not ejected: callers must keep seeing RESOURCE_EXHAUSTED, the
    /// signal to back off, not an UNAVAILABLE from an emptied pool.
    Throttled,
    /// Says nothing about the endpoint (the caller left).
    Neutral,
}

/// A point-in-time view of an endpoint, for introspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    /// Base URL.
    pub url: String,
    /// `up`, `ejected` or `unhealthy`.
    pub state: &'static str,
    /// Calls in flight.
    pub in_flight: usize,
    /// Failures since the last success.
    pub consecutive_failures: u32,
}

// === impl EndpointState ===

impl EndpointState {
    /// A fresh, healthy endpoint of `pool`.
    pub fn new(
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
            consecutive_failures: AtomicU32::new(0),
            last_failure: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: Mutex::new(0),
            healthy: AtomicBool::new(true),
            ready_waker: AtomicWaker::new(),
            pool: Arc::downgrade(pool),
            policy,
            gone: tokio::sync::watch::channel(()).0,
        })
    }

    /// Completes (with an error) when this endpoint is dropped, for the
    /// tasks that serve it.
    pub fn gone(&self) -> tokio::sync::watch::Receiver<()> {
        self.gone.subscribe()
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Whether the endpoint failed within the last [`FAILURE_PENALTY`] and
    /// has not succeeded since. The balancer prefers any endpoint without a
    /// recent failure, so a retry moves elsewhere at once; the penalty fades
    /// so a recovered endpoint gets calls again and can prove itself.
    pub fn failed_recently(&self, now: Instant) -> bool {
        if self.consecutive_failures() == 0 {
            return false;
        }
        let at = epoch() + Duration::from_nanos(self.last_failure.load(Ordering::Relaxed));
        now.saturating_duration_since(at) < FAILURE_PENALTY
    }

    /// Until when the endpoint is ejected, if it is now.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            nanos => Some(epoch() + Duration::from_nanos(nanos)).filter(|until| *until > now),
        }
    }

    /// Whether the last active health verdict was good.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether a call could be sent here now (caps aside).
    pub fn is_admissible(&self, now: Instant) -> bool {
        self.is_healthy() && self.ejected_until(now).is_none()
    }

    /// Registers the task to wake when the endpoint may become ready.
    pub fn register_ready_waker(&self, waker: &std::task::Waker) {
        self.ready_waker.register(waker);
    }

    /// Counts a call as started.
    pub fn call_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.call_started();
    }

    /// Counts a call as ended and learns from how it ended.
    pub fn call_ended(&self, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.call_ended();
        match outcome {
            Outcome::Success => {
                if self.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
                    *self.ejections.lock().unwrap_or_else(|e| e.into_inner()) = 0;
                    self.metrics.set_up(self.is_healthy());
                }
            }
            Outcome::Failure => {
                self.note_failure_time();
                let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= self.policy.consecutive_failures {
                    self.try_eject();
                }
            }
            Outcome::Throttled => {
                self.note_failure_time();
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Neutral => {}
        }
        self.ready_waker.wake();
    }

    fn note_failure_time(&self) {
        let since = Instant::now().saturating_duration_since(epoch());
        self.last_failure
            .store(since.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Sets the active health verdict.
    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        self.metrics
            .set_up(healthy && self.ejected_until(Instant::now()).is_none());
        if healthy && !was {
            self.ready_waker.wake();
        }
    }

    /// Ejects the endpoint unless it already is, or the pool's cap on
    /// ejections is reached.
    fn try_eject(&self) {
        let now = Instant::now();
        if self.ejected_until(now).is_some() {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            let (members, ejected) = pool.ejection_counts(now);
            let cap = ((members as f64 * self.policy.max_ejected_share).floor() as usize).max(1);
            if ejected >= cap {
                return;
            }
        }
        let mut ejections = self.ejections.lock().unwrap_or_else(|e| e.into_inner());
        let factor = 2u32.saturating_pow((*ejections).min(16));
        let length = self
            .policy
            .base_ejection
            .saturating_mul(factor)
            .min(self.policy.max_ejection);
        let until = (now + length).saturating_duration_since(epoch());
        self.ejected_until
            .store(until.as_nanos().max(1) as u64, Ordering::Release);
        *ejections += 1;
        self.metrics.set_up(false);
        tracing::warn!(
            endpoint = %self.url,
            failures = self.consecutive_failures(),
            ejected_for = ?length,
            "endpoint ejected after failing repeatedly"
        );
    }

    /// A point-in-time view.
    pub fn snapshot(&self, now: Instant) -> EndpointSnapshot {
        let state = if self.ejected_until(now).is_some() {
            "ejected"
        } else if !self.is_healthy() {
            "unhealthy"
        } else {
            "up"
        };
        EndpointSnapshot {
            url: self.url.to_string(),
            state,
            in_flight: self.in_flight(),
            consecutive_failures: self.consecutive_failures(),
        }
    }
}

// === impl PoolHealth ===

impl PoolHealth {
    /// Adds a member discovered.
    pub fn insert(&self, endpoint: Arc<EndpointState>) {
        self.members.rcu(|members| {
            let mut members = Vec::clone(members);
            members.push(endpoint.clone());
            members
        });
    }

    /// Drops a member no longer discovered.
    pub fn remove(&self, url: &http::Uri) {
        self.members.rcu(|members| {
            let mut members = Vec::clone(members);
            members.retain(|e| &e.url != url);
            members
        });
    }

    /// Whether any member could take a call now: a pool with none is down,
    /// and calls go to other pools or fall back at once instead of waiting.
    pub fn any_admissible(&self) -> bool {
        let now = Instant::now();
        self.members.load().iter().any(|e| e.is_admissible(now))
    }

    /// Every member's state.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let now = Instant::now();
        self.members
            .load()
            .iter()
            .map(|e| e.snapshot(now))
            .collect()
    }

    /// Members, and how many of them are ejected.
    fn ejection_counts(&self, now: Instant) -> (usize, usize) {
        let members = self.members.load();
        let ejected = members
            .iter()
            .filter(|e| e.ejected_until(now).is_some())
            .count();
        (members.len(), ejected)
    }
}

/// How long a failure makes an endpoint less preferred than its peers.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The instant ejection times are counted from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
