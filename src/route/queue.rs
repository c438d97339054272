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
use super::table::{Pool, Route};
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
pub(crate) struct Queue {
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
    pub(crate) fn new(route: Arc<str>, config: QueueConfig) -> Arc<Self> {
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

/// A queued route's first attempt: on the pool the route picked, and when
/// that pool is busy, on any other pool with room, before the call joins
/// the queue (without a queue, a retry would have gone there).
pub(super) async fn first_attempt(
    route: &Route,
    pool: &Pool,
    req: &Arc<ChatRequest>,
    ask: &Ask,
    pick: &Pick,
) -> Result<Answer, GatewayError> {
    match attempt_on(pool, req, ask, pick.clone()).await {
        Err(err) if err.is_at_capacity() && route.pools.len() > 1 => {
            attempt_any(route, req, ask, pick).await
        }
        other => other,
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;

    fn queue(max_len: u32, timeout: Duration) -> Arc<Queue> {
        Queue::new(
            Arc::from("m"),
            QueueConfig {
                max_len,
                timeout,
                promote_after: Duration::from_secs(2),
            },
        )
    }

    fn busy() -> GatewayError {
        GatewayError::unavailable("every endpoint at max_in_flight").at_capacity()
    }

    fn waiting(queue: &Queue) -> usize {
        queue.lock().waiting.len()
    }

    /// Lets spawned waiters run until they block.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A call that finds every endpoint busy, waits, and on its turn is
    /// served, noting `name` in `served`.
    fn waiter(
        queue: &Arc<Queue>,
        priority: Priority,
        name: &'static str,
        served: &Arc<StdMutex<Vec<&'static str>>>,
    ) -> tokio::task::JoinHandle<Result<(), GatewayError>> {
        let (queue, served) = (queue.clone(), served.clone());
        tokio::spawn(async move {
            let first = async { Err::<(), _>(busy()) };
            let again = || {
                let served = served.clone();
                async move {
                    served
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(name);
                    Ok(())
                }
            };
            queue.serve(priority, None, first, again).await
        })
    }

    /// Frees `n` slots one at a time, letting each woken waiter run.
    async fn free_slots(queue: &Queue, n: usize) {
        for _ in 0..n {
            queue.slot_freed();
            settle().await;
        }
    }

    fn served(log: &Arc<StdMutex<Vec<&'static str>>>) -> Vec<&'static str> {
        log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_by_class_then_by_arrival() {
        let queue = queue(16, Duration::from_secs(10));
        let log = Arc::default();
        let calls = [
            waiter(&queue, Priority::Low, "low", &log),
            waiter(&queue, Priority::Normal, "normal-1", &log),
            waiter(&queue, Priority::High, "high", &log),
            waiter(&queue, Priority::Normal, "normal-2", &log),
        ];
        settle().await;
        assert_eq!(waiting(&queue), 4);
        free_slots(&queue, 4).await;
        assert_eq!(served(&log), ["high", "normal-1", "normal-2", "low"]);
        for call in calls {
            assert!(matches!(call.await, Ok(Ok(()))));
        }
        assert_eq!(waiting(&queue), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_climbs_one_class_per_promote_after_so_low_is_not_starved() {
        let queue = queue(16, Duration::from_secs(30));
        let log = Arc::default();
        let _low = waiter(&queue, Priority::Low, "low", &log);
        settle().await;
        // One step (2s) makes it normal: a fresh high still goes first.
        tokio::time::advance(Duration::from_secs(2)).await;
        let _high = waiter(&queue, Priority::High, "high-1", &log);
        settle().await;
        free_slots(&queue, 1).await;
        assert_eq!(served(&log), ["high-1"]);
        // Two steps (4s) make it high, and older than any new high call.
        tokio::time::advance(Duration::from_secs(2)).await;
        let _high = waiter(&queue, Priority::High, "high-2", &log);
        settle().await;
        free_slots(&queue, 2).await;
        assert_eq!(served(&log), ["high-1", "low", "high-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_the_queue_timeout_with_resource_exhausted_and_retry_after() {
        let queue = queue(16, Duration::from_secs(10));
        let start = Instant::now();
        let first = async { Err::<(), _>(busy()) };
        let err = match queue
            .serve(Priority::Normal, None, first, || async { Ok(()) })
            .await
        {
            Err(err) => err,
            Ok(()) => panic!("no slot freed, yet the call was served"),
        };
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        assert_eq!(err.retry_after(), Some(RETRY_AFTER));
        assert!(!err.is_retryable(), "{err}");
        assert!(err.message().contains("route 'm' is at capacity"), "{err}");
        assert_eq!(waiting(&queue), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_short_of_the_callers_deadline() {
        let queue = queue(16, Duration::from_secs(10));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let first = async { Err::<(), _>(busy()) };
        let result = queue
            .serve(Priority::High, Some(deadline), first, || async { Ok(()) })
            .await;
        assert!(matches!(&result, Err(e) if e.kind() == ErrorKind::ResourceExhausted));
        assert_eq!(start.elapsed(), Duration::from_secs(3) - DEADLINE_MARGIN);
    }

    #[tokio::test(start_paused = true)]
    async fn past_max_len_a_call_is_shed_at_once_with_the_balancers_error() {
        let queue = queue(1, Duration::from_secs(10));
        let log = Arc::default();
        let _first = waiter(&queue, Priority::Normal, "first", &log);
        settle().await;
        let start = Instant::now();
        let first = async { Err::<(), _>(busy()) };
        let result = queue
            .serve(Priority::High, None, first, || async { Ok(()) })
            .await;
        let Err(err) = result else {
            panic!("a call past max_len was queued");
        };
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.message().contains("queue.max_len"), "{err}");
        assert_eq!(waiting(&queue), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_leaves_is_taken_out_of_line_and_the_slot_goes_to_the_next() {
        let queue = queue(16, Duration::from_secs(10));
        let log = Arc::default();
        let leaving = waiter(&queue, Priority::High, "leaving", &log);
        let staying = waiter(&queue, Priority::Low, "staying", &log);
        settle().await;
        assert_eq!(waiting(&queue), 2);
        leaving.abort();
        settle().await;
        assert_eq!(waiting(&queue), 1);
        free_slots(&queue, 1).await;
        assert_eq!(served(&log), ["staying"]);
        assert!(matches!(staying.await, Ok(Ok(()))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_the_caller_left_before_using_goes_to_the_next_waiter() {
        let queue = queue(16, Duration::from_secs(10));
        let log = Arc::default();
        let woken = waiter(&queue, Priority::High, "woken", &log);
        let next = waiter(&queue, Priority::Low, "next", &log);
        settle().await;
        // The wake reaches the high call, which leaves before it runs.
        queue.slot_freed();
        woken.abort();
        settle().await;
        assert_eq!(served(&log), ["next"]);
        assert!(matches!(next.await, Ok(Ok(()))));
        assert_eq!(waiting(&queue), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_during_the_try_is_used_without_waiting() {
        let queue = queue(16, Duration::from_secs(10));
        let start = Instant::now();
        let freeing = queue.clone();
        let first = async move {
            freeing.slot_freed();
            Err::<(), _>(busy())
        };
        let result = queue
            .serve(Priority::Normal, None, first, || async { Ok(()) })
            .await;
        assert!(result.is_ok());
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_loses_the_race_for_its_slot_keeps_its_place() {
        let queue = queue(16, Duration::from_secs(10));
        let log = Arc::default();
        let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let unlucky = {
            let (queue, tries) = (queue.clone(), tries.clone());
            tokio::spawn(async move {
                let first = async { Err::<(), _>(busy()) };
                // The first wake finds the slot taken by someone else.
                let again = || {
                    let n = tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async move { if n == 0 { Err(busy()) } else { Ok(()) } }
                };
                queue.serve(Priority::Normal, None, first, again).await
            })
        };
        settle().await;
        let _later = waiter(&queue, Priority::Normal, "later", &log);
        settle().await;
        free_slots(&queue, 2).await;
        assert!(matches!(unlucky.await, Ok(Ok(()))));
        assert!(
            served(&log).is_empty(),
            "the later call overtook: {:?}",
            served(&log)
        );
    }

    #[test]
    fn an_error_that_is_not_at_capacity_never_waits() {
        let queue = queue(16, Duration::from_secs(10));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build();
        let Ok(runtime) = runtime else {
            panic!("no runtime");
        };
        let result = runtime.block_on(queue.serve(
            Priority::Normal,
            None,
            async { Err::<(), _>(GatewayError::unavailable("every endpoint ejected")) },
            || async { Ok(()) },
        ));
        assert!(matches!(result, Err(e) if !e.is_at_capacity()));
        assert_eq!(waiting(&queue), 0);
    }
}
