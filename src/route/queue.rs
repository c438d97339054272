//! A route's queue: where a call waits for a free slot when every endpoint
//! of the route is at `max_in_flight`, instead of failing at once.
//!
//! A cap on calls in flight protects the engines, but without a queue a
//! burst one call over it is refused outright, and callers retry blindly.
//! Here the call waits its turn instead: no longer than the route's
//! `queue.timeout` nor its own deadline (less a margin, so the caller hears
//! RESOURCE_EXHAUSTED with a retry-after rather than its own timeout), and
//! only while fewer than `queue.max_len` calls wait (past it, the call is
//! shed at once, as without a queue). Only busy pools queue: a pool whose
//! endpoints are ejected or failing checks fails fast as before, because a
//! slot there is not about to free.
//!
//! Waiters are served by class (`high`, `normal`, `low`; a key's
//! `priority:`), oldest first within a class. A waiter counts as one class
//! higher for each `queue.promote_after` it has waited, so a steady stream
//! of urgent calls delays batch calls but never starves them (aging, as in
//! classic priority schedulers).
//!
//! Nothing polls. Each pool of the route tells the queue when a call on it
//! ends ([`SlotListener`]); the queue then wakes the waiter at the head,
//! which tries the route's pools again. A waiter that loses the race for
//! the slot (another route shares the pool) goes back in at its old place.
//! A caller that leaves drops its wait, which takes it out of the queue; a
//! wake it received and never used is passed to the next waiter.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::retry::{Answer, Ask, attempt_on};
use super::table::Route;
use crate::balance::{Pick, SlotListener};
use crate::chat::ChatRequest;
use crate::config::{Priority, QueueConfig};
use crate::error::{ErrorKind, GatewayError, human_duration, whole_seconds};
use crate::telemetry::metrics;

/// How much of the caller's deadline a wait leaves unspent, so the caller
/// gets the queue's answer (with its retry-after) rather than a timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);
/// The retry-after given to a call that timed out in the queue: slots free
/// as generations end, typically within seconds.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most times one call may be woken and find the slot taken; each needs a
/// call to end, so this only bounds a pathological race.
const MAX_TURNS: usize = 64;

/// The queue of one route.
pub struct Queue {
    /// The route's model name, for messages and metric labels.
    route: Arc<str>,
    /// Its limits and aging.
    config: QueueConfig,
    /// Who waits; locked briefly, never across an `.await`.
    inner: Mutex<Inner>,
}

/// The waiters of a queue.
#[derive(Default)]
struct Inner {
    /// Next arrival's number: the order within a class.
    next_seq: u64,
    /// Who waits, in arrival order; a few hundred at most by `max_len`,
    /// so the head is found by a scan.
    waiting: Vec<Waiter>,
    /// Waiters per class, for the gauge.
    counts: [usize; 3],
    /// Slots freed so far: a call that failed at capacity and finds this
    /// changed since before its try knows a slot freed meanwhile, and tries
    /// again rather than wait for the next.
    freed: u64,
}

/// One waiting call.
struct Waiter {
    /// Its place in line.
    place: Place,
    /// Fired when it is its turn.
    wake: oneshot::Sender<()>,
}

/// A call's place in line, kept when it goes back in after losing a race,
/// so it keeps its turn.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// Arrival order.
    seq: u64,
    /// When it first joined, for aging and the wait metric.
    since: Instant,
    /// Its class.
    priority: Priority,
}

/// Why a call stopped waiting without a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    /// `max_len` calls were already waiting.
    Full,
    /// Its time ran out.
    TimedOut,
}

/// A call in the queue; dropped (the caller left, or its time ran out), it
/// leaves the queue, and passes on a wake it got but did not use.
struct Ticket<'a> {
    queue: &'a Queue,
    seq: u64,
    woken: oneshot::Receiver<()>,
    used: bool,
}

/// Records how a wait ended, `cancelled` when the caller left mid-wait.
struct WaitRecord<'a> {
    queue: &'a Queue,
    place: Option<Place>,
    outcome: &'static str,
}

// === impl Queue ===

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("route", &self.route)
            .field("config", &self.config)
            .finish()
    }
}

impl Queue {
    /// An empty queue for `route`.
    pub fn new(route: Arc<str>, config: QueueConfig) -> Arc<Self> {
        Arc::new(Queue {
            route,
            config,
            inner: Mutex::default(),
        })
    }

    /// Runs `first`, and while it (or a later try from `again`) finds every
    /// endpoint at capacity, waits in line for a slot and tries `again`.
    pub(crate) async fn serve<T, F, G>(
        &self,
        priority: Priority,
        deadline: Option<Instant>,
        first: F,
        mut again: impl FnMut() -> G,
    ) -> Result<T, GatewayError>
    where
        F: Future<Output = Result<T, GatewayError>>,
        G: Future<Output = Result<T, GatewayError>>,
    {
        let mut seen = self.freed();
        let mut last = match first.await {
            Err(err) if err.is_at_capacity() => err,
            other => return other,
        };
        let mut record = WaitRecord {
            queue: self,
            place: None,
            outcome: "cancelled",
        };
        let mut until = None;
        for _ in 0..MAX_TURNS {
            let now = Instant::now();
            let until = *until.get_or_insert_with(|| {
                let own = now + self.config.timeout;
                deadline
                    .map(|d| d.checked_sub(DEADLINE_MARGIN).unwrap_or(now).min(own))
                    .unwrap_or(own)
            });
            match self
                .wait_turn(&mut record.place, priority, seen, until)
                .await
            {
                Ok(()) => {}
                Err(Left::Full) => {
                    record.outcome = "";
                    return Err(last.context(&format!(
                        "route '{}' already has {} calls waiting (queue.max_len)",
                        self.route, self.config.max_len
                    )));
                }
                Err(Left::TimedOut) => {
                    record.outcome = "timeout";
                    let waited = record.place.map_or(Duration::ZERO, |p| now_since(p.since));
                    return Err(self.timed_out(waited));
                }
            }
            seen = self.freed();
            last = match again().await {
                Err(err) if err.is_at_capacity() => err,
                other => {
                    record.outcome = "served";
                    return other;
                }
            };
        }
        record.outcome = "timeout";
        Err(last)
    }

    /// Slots freed so far.
    fn freed(&self) -> u64 {
        self.lock().freed
    }

    /// Waits until it is this call's turn (or its time runs out). `place`
    /// is its place from an earlier wait, kept; `seen` the slots freed
    /// before its last try.
    async fn wait_turn(
        &self,
        place: &mut Option<Place>,
        priority: Priority,
        seen: u64,
        until: Instant,
    ) -> Result<(), Left> {
        let (wake, woken) = oneshot::channel();
        let seq = {
            let mut inner = self.lock();
            if place.is_none() && inner.waiting.len() >= self.config.max_len as usize {
                return Err(Left::Full);
            }
            let place = *place.get_or_insert_with(|| {
                inner.next_seq += 1;
                Place {
                    seq: inner.next_seq,
                    since: Instant::now(),
                    priority,
                }
            });
            if inner.freed != seen && inner.waiting.is_empty() {
                // A slot freed while this call was trying and nobody
                // waited for it: try again now.
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(Left::TimedOut);
            }
            inner.waiting.push(Waiter { place, wake });
            inner.counts[usize::from(place.priority.rank())] += 1;
            self.publish(&inner, place.priority);
            place.seq
        };
        let mut ticket = Ticket {
            queue: self,
            seq,
            woken,
            used: false,
        };
        match tokio::time::timeout_at(until, &mut ticket.woken).await {
            Ok(_) => {
                ticket.used = true;
                Ok(())
            }
            Err(_) => Err(Left::TimedOut),
        }
    }

    /// The error of a call whose wait ran out.
    fn timed_out(&self, waited: Duration) -> GatewayError {
        GatewayError::new(
            ErrorKind::ResourceExhausted,
            format!(
                "route '{}' is at capacity: every endpoint stayed at max_in_flight for the {} \
                 this call waited in its queue; retry after {}s",
                self.route,
                human_duration(waited),
                whole_seconds(RETRY_AFTER)
            ),
        )
        .with_retry_after(RETRY_AFTER)
        // It already waited its share; another attempt would wait again.
        .not_retryable()
    }

    /// The index of the waiter to serve next: highest class after aging,
    /// then first come.
    fn head(&self, inner: &Inner, now: Instant) -> Option<usize> {
        let step = self.config.promote_after.as_nanos().max(1);
        let rank = |place: &Place| {
            let steps = now.saturating_duration_since(place.since).as_nanos() / step;
            let rank = u128::from(place.priority.rank()).saturating_sub(steps);
            (rank, place.seq)
        };
        (0..inner.waiting.len()).min_by_key(|&i| rank(&inner.waiting[i].place))
    }

    /// Takes waiter `i` out of line.
    fn remove(&self, inner: &mut Inner, i: usize) -> Waiter {
        let waiter = inner.waiting.remove(i);
        let class = usize::from(waiter.place.priority.rank());
        inner.counts[class] = inner.counts[class].saturating_sub(1);
        self.publish(inner, waiter.place.priority);
        waiter
    }

    /// Sets the queue-length gauge of `priority`.
    fn publish(&self, inner: &Inner, priority: Priority) {
        metrics::queue_length(
            &self.route,
            priority.as_str(),
            inner.counts[usize::from(priority.rank())],
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SlotListener for Queue {
    fn slot_freed(&self) {
        let mut inner = self.lock();
        inner.freed = inner.freed.wrapping_add(1);
        let now = Instant::now();
        // A waiter whose caller just left cannot take the wake: the next can.
        while let Some(i) = self.head(&inner, now) {
            let waiter = self.remove(&mut inner, i);
            if waiter.wake.send(()).is_ok() {
                return;
            }
        }
    }
}

/// Time since `since`.
fn now_since(since: Instant) -> Duration {
    Instant::now().saturating_duration_since(since)
}

// === impl Ticket ===

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.used {
            return;
        }
        {
            let mut inner = self.queue.lock();
            if let Some(i) = inner.waiting.iter().position(|w| w.place.seq == self.seq) {
                self.queue.remove(&mut inner, i);
                return;
            }
        }
        // Woken, but leaving without using the turn: hand it on.
        if self.woken.try_recv().is_ok() {
            self.queue.slot_freed();
        }
    }
}

// === impl WaitRecord ===

impl Drop for WaitRecord<'_> {
    fn drop(&mut self) {
        if let Some(place) = self.place
            && !self.outcome.is_empty()
        {
            metrics::queue_wait(
                &self.queue.route,
                place.priority.as_str(),
                self.outcome,
                now_since(place.since),
            );
        }
    }
}

/// One attempt on `route` after a wait: the pools in turn, skipping those
/// still at capacity (which answer at once), until one takes the call.
pub(super) async fn attempt_any(
    route: &Route,
    req: &Arc<ChatRequest>,
    ask: &Ask,
    pick: &Pick,
) -> Result<Answer, GatewayError> {
    let mut last = None;
    for pool in route
        .pools
        .iter()
        .filter(|p| p.upstream.is_available(&p.model))
    {
        match attempt_on(pool, req, ask, pick.clone()).await {
            Err(err) if err.is_at_capacity() => last = Some(err),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| {
        GatewayError::unavailable(format!(
            "every pool of route '{}' went down while the call waited in its queue; \
             retry later",
            route.model
        ))
    }))
}
