//! A replica's lease on one shared per-minute limit: capacity taken from
//! the shared bucket in small batches and spent locally, so most calls
//! never wait on Redis.
//!
//! The shared bucket (in Redis, see [`super::redis`]) is a token bucket of
//! a minute's worth refilling continuously, the same GCRA semantics as the
//! local limiters. A replica asks it for `size` units at a time (a
//! hundredth of the minute's limit, at least one), spends them on calls as
//! they come, asks again before they run out (in the background, off the
//! call's path), and gives back what it did not spend once the lease has
//! sat idle for [`LEASE_IDLE`]. Token charges settle in the lease too: a
//! call that used fewer tokens than it reserved credits the rest, one that
//! used more leaves a debt (a negative balance) that the next request to
//! the bucket pays first.
//!
//! **Overshoot.** Units in a lease were taken from the bucket when the
//! lease was filled, so they are never counted twice; but they may be
//! spent up to [`LEASE_IDLE`] later, after the bucket refilled. Over any
//! minute the replicas together admit at most the limit, plus the refill,
//! plus `replicas × size` (what each may hold unspent), which for the
//! default size is `replicas` percent of the limit. Under-use is the other
//! side: units one replica holds are not available to another until spent
//! or returned.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a lease may sit unused before what is left goes back to the
/// shared bucket: short enough that idle replicas do not hoard capacity,
/// long enough that a replica serving a steady trickle keeps its lease.
pub(crate) const LEASE_IDLE: Duration = Duration::from_secs(2);
/// The share of a minute's limit one lease takes: 1%.
const LEASE_DIVISOR: u32 = 100;
/// The largest lease, whatever the limit.
const MAX_LEASE: u32 = 10_000;

/// One replica's lease on one shared limit.
#[derive(Debug)]
pub(crate) struct Lease {
    /// The minute's limit, the shared bucket's size.
    limit: NonZeroU32,
    /// How many units one refill asks for.
    size: u32,
    /// What is held now.
    state: Mutex<Held>,
}

/// The mutable part of a [`Lease`].
#[derive(Debug, Default)]
struct Held {
    /// Units held and unspent; negative when calls used more than they
    /// reserved (a debt the next refill pays).
    balance: i64,
    /// When the lease last changed, for giving idle leases back.
    touched: Option<Instant>,
    /// Whether a background refill is on its way, so only one is.
    refilling: bool,
}

/// What taking from a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken from the lease. `refill` asks the caller to top the lease up
    /// in the background, as it is running low.
    Taken {
        /// Whether to start a background refill (of [`Lease::size`]).
        refill: bool,
    },
    /// The lease is short: ask the shared bucket for `want` units, at
    /// least `need` of them, before the call can go on.
    Short {
        /// What to ask for: enough for this call, the debt, and a batch.
        want: u32,
        /// The least that lets this call go on.
        need: u32,
    },
}

// === impl Lease ===

impl Lease {
    /// An empty lease on a limit of `limit` a minute.
    pub(crate) fn new(limit: NonZeroU32) -> Lease {
        Lease {
            limit,
            size: (limit.get() / LEASE_DIVISOR).clamp(1, MAX_LEASE),
            state: Mutex::new(Held::default()),
        }
    }

    /// The minute's limit.
    pub(crate) fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// How many units one refill takes: the most this replica holds
    /// unspent beyond what calls asked for, and so its share of the
    /// overshoot bound.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }

    /// Takes `n` units (clamped to the limit, so a call larger than a
    /// minute's budget can still run once the bucket is full) if the lease
    /// holds them.
    pub(crate) fn take(&self, n: u32, now: Instant) -> Take {
        let n = i64::from(n.clamp(1, self.limit.get()));
        let mut held = self.lock();
        if held.balance >= n {
            held.balance -= n;
            held.touched = Some(now);
            let low = held.balance < i64::from(self.size / 2).max(1) && self.size > 1;
            let refill = low && !held.refilling;
            if refill {
                held.refilling = true;
            }
            return Take::Taken { refill };
        }
        let need = n - held.balance;
        let want = need.max(i64::from(self.size));
        Take::Short {
            want: clamp_u32(want),
            need: clamp_u32(need),
        }
    }

    /// Adds `granted` units from the shared bucket, and ends the
    /// background refill if one was on its way.
    pub(crate) fn credit(&self, granted: u32, now: Instant) {
        let mut held = self.lock();
        held.balance += i64::from(granted);
        held.touched = Some(now);
        held.refilling = false;
    }

    /// A background refill failed or was refused: the next call may try.
    pub(crate) fn refill_failed(&self) {
        self.lock().refilling = false;
    }

    /// Settles a call: `reserved` units were taken at admission, `used`
    /// were spent. The difference is credited, or owed.
    pub(crate) fn settle(&self, reserved: u32, used: u32, now: Instant) {
        let mut held = self.lock();
        held.balance += i64::from(reserved) - i64::from(used);
        held.touched = Some(now);
    }

    /// Gives back a call's reservation untouched (a later check refused
    /// the call).
    pub(crate) fn refund(&self, n: u32, now: Instant) {
        self.settle(n, 0, now);
    }

    /// When the lease has sat unchanged for [`LEASE_IDLE`], empties it and
    /// returns its balance for the shared bucket: positive is given back,
    /// negative is a debt to charge. `None` when there is nothing to do.
    pub(crate) fn expire(&self, now: Instant) -> Option<i64> {
        let mut held = self.lock();
        let idle = held
            .touched
            .is_some_and(|t| now.saturating_duration_since(t) >= LEASE_IDLE);
        if !idle || held.balance == 0 || held.refilling {
            return None;
        }
        held.touched = None;
        Some(std::mem::take(&mut held.balance))
    }

    /// Puts back what [`Lease::expire`] took when the shared bucket could
    /// not be told, so nothing is lost while the store is away.
    pub(crate) fn restore(&self, balance: i64) {
        self.lock().balance += balance;
    }

    /// What the lease holds now (negative: owed).
    #[cfg(test)]
    pub(crate) fn balance(&self) -> i64 {
        self.lock().balance
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A poisoned lock means a panic mid-update of two integers: the
        // numbers are still numbers, so carry on with them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(limit: u32) -> Lease {
        Lease::new(NonZeroU32::new(limit).expect("positive"))
    }

    #[test]
    fn a_lease_is_a_hundredth_of_the_limit_at_least_one_at_most_ten_thousand() {
        assert_eq!(lease(60).size(), 1);
        assert_eq!(lease(6_000).size(), 60);
        assert_eq!(lease(100_000_000).size(), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_lease_asks_for_the_call_and_a_batch_and_serves_calls_from_it() {
        let l = lease(6_000);
        let now = Instant::now();
        assert_eq!(l.take(1, now), Take::Short { want: 60, need: 1 });
        l.credit(60, now);
        // 60 units: the first 30 calls take without a refill; the call that
        // leaves fewer than half a batch starts exactly one.
        for _ in 0..30 {
            assert_eq!(l.take(1, now), Take::Taken { refill: false });
        }
        assert_eq!(l.take(1, now), Take::Taken { refill: true });
        assert_eq!(
            l.take(1, now),
            Take::Taken { refill: false },
            "one refill at a time"
        );
        l.credit(60, now);
        assert_eq!(l.balance(), 88);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_larger_than_the_lease_asks_for_what_it_lacks() {
        let l = lease(6_000);
        let now = Instant::now();
        l.credit(10, now);
        assert_eq!(
            l.take(500, now),
            Take::Short {
                want: 490,
                need: 490
            }
        );
        // Larger than the whole minute: charged one minute.
        assert_eq!(
            l.take(1_000_000, now),
            Take::Short {
                want: 5_990,
                need: 5_990
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn settling_credits_what_a_call_did_not_use_and_owes_what_it_overspent() {
        let l = lease(100_000);
        let now = Instant::now();
        l.credit(1_000, now);
        assert_eq!(l.take(400, now), Take::Taken { refill: false });
        l.settle(400, 100, now);
        assert_eq!(l.balance(), 900, "300 unused tokens are back in the lease");
        assert_eq!(l.take(900, now), Take::Taken { refill: true });
        l.settle(900, 1_500, now);
        assert_eq!(l.balance(), -600, "overspent: a debt");
        // The next call pays the debt before it is served.
        assert_eq!(
            l.take(10, now),
            Take::Short {
                want: 1_000,
                need: 610
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_lease_gives_back_its_balance_after_two_seconds_and_not_before() {
        let l = lease(6_000);
        l.credit(60, Instant::now());
        assert_eq!(l.take(1, Instant::now()), Take::Taken { refill: false });
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(l.expire(Instant::now()), None, "still fresh");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.expire(Instant::now()), Some(59));
        assert_eq!(l.balance(), 0);
        assert_eq!(l.expire(Instant::now()), None, "given back once");
        // A give-back the store missed is put back, not lost.
        l.restore(59);
        assert_eq!(l.balance(), 59);
    }

    #[tokio::test(start_paused = true)]
    async fn a_debt_is_handed_to_the_bucket_when_the_lease_goes_idle() {
        let l = lease(6_000);
        l.settle(0, 25, Instant::now());
        tokio::time::advance(LEASE_IDLE).await;
        assert_eq!(l.expire(Instant::now()), Some(-25));
    }

    #[tokio::test(start_paused = true)]
    async fn the_overshoot_of_n_replicas_is_at_most_n_leases() {
        // Three replicas fill their leases from one bucket of 6,000 a
        // minute, then the bucket refills for a minute. What they can spend
        // in that minute: the bucket's 6,000 plus what they held, 3 × 60.
        let bucket_limit = 6_000u32;
        let replicas: Vec<Lease> = (0..3).map(|_| lease(bucket_limit)).collect();
        let now = Instant::now();
        for r in &replicas {
            let Take::Short { want, .. } = r.take(1, now) else {
                panic!("empty at first");
            };
            r.credit(want, now);
        }
        let held: i64 = replicas.iter().map(Lease::balance).sum();
        assert_eq!(held, 3 * 60);
    }
}
