//! The per-minute bucket behind every rate limit (requests and tokens, of
//! a key or a route), on its own so that the policy that holds it
//! ([`Guard`](super::guard::Guard)'s quotas) and the layer that charges it
//! ([`rate`](super::rate)) both import it and neither imports the other
//! for it.
//!
//! GCRA (the generic cell rate algorithm of ATM networks, ITU-T I.371): a
//! bucket of a minute's worth that refills continuously, so a caller may
//! burst up to its minute and then proceeds at the steady rate. The whole
//! state is one instant, the theoretical arrival time (TAT): the bucket is
//! full when it is not after now, and each unit charged moves it one
//! emission interval (a minute over the rate) later.
//!
//! Written here rather than taken from `governor` because a call refused
//! by a later layer (its route is not found, its route is over its own
//! limit) must get back what its key was charged, and `governor` has no way
//! to give cells back. With GCRA a refund is the charge in reverse: move
//! the TAT back, never before now (a bucket never holds more than a
//! minute). The clock is Tokio's, so tests prove refills with paused time.

use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A limit of so many units (requests or tokens) per minute.
pub(crate) struct TokenBucket {
    /// The theoretical arrival time: when the bucket is full again.
    tat: Mutex<Instant>,
    /// A minute over the rate: how much later one unit moves the TAT.
    interval: Duration,
    /// The bucket's size: a minute's units. No single charge can be larger.
    capacity: NonZeroU32,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A full bucket of `n` units a minute.
    pub(crate) fn per_minute(n: NonZeroU32) -> Self {
        TokenBucket {
            tat: Mutex::new(Instant::now()),
            // At least a nanosecond, so each unit costs something.
            interval: (Duration::from_secs(60) / n.get()).max(Duration::from_nanos(1)),
            capacity: n,
        }
    }

    /// The bucket's size, for the message that refuses a call.
    pub(crate) fn capacity(&self) -> NonZeroU32 {
        self.capacity
    }

    /// Takes `estimate` units now (at least one, at most a whole bucket, so
    /// a prompt bigger than a minute's budget can still run once the bucket
    /// is full) and returns what it took, or how long until they fit.
    pub(crate) fn admit(&self, estimate: u32) -> Result<u32, Duration> {
        let charge = estimate.clamp(1, self.capacity.get());
        let now = Instant::now();
        let mut tat = self.lock();
        let after = (*tat).max(now) + self.cost(charge);
        let limit = now + self.window();
        if after > limit {
            return Err(after - limit);
        }
        *tat = after;
        Ok(charge)
    }

    /// Takes `extra` units a call used beyond its charge, or as many as the
    /// bucket holds now: the call already happened, so this never waits
    /// and never fails; an empty bucket makes the next calls wait instead.
    pub(crate) fn settle(&self, extra: u32) {
        if extra == 0 {
            return;
        }
        let now = Instant::now();
        let mut tat = self.lock();
        *tat = ((*tat).max(now) + self.cost(extra)).min(now + self.window());
    }

    /// Gives back `units` a call was charged but never used: it was refused
    /// before anything was sent. The bucket never ends up fuller than full.
    pub(crate) fn refund(&self, units: u32) {
        let now = Instant::now();
        let mut tat = self.lock();
        *tat = tat.checked_sub(self.cost(units)).unwrap_or(now).max(now);
    }

    /// How far `units` move the TAT.
    fn cost(&self, units: u32) -> Duration {
        self.interval.saturating_mul(units.min(self.capacity.get()))
    }

    /// How far ahead of now the TAT may be: the whole bucket.
    fn window(&self) -> Duration {
        self.cost(self.capacity.get())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // Every write leaves a valid instant, so a panic elsewhere cannot
        // leave the state half written.
        self.tat.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(n: u32) -> TokenBucket {
        TokenBucket::per_minute(NonZeroU32::new(n).expect("positive"))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_admits_a_minutes_worth_then_says_how_long_to_wait() {
        // Ten a minute: one every six seconds.
        let tokens = bucket(10);
        assert_eq!(tokens.admit(10), Ok(10));
        assert_eq!(tokens.admit(1), Err(Duration::from_secs(6)));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(tokens.admit(1), Ok(1), "one refilled in six seconds");
        assert!(tokens.admit(1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_larger_than_the_bucket_is_charged_one_full_bucket() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(50), Ok(10));
        assert!(tokens.admit(1).is_err(), "the bucket is empty");
    }

    #[tokio::test(start_paused = true)]
    async fn settling_takes_what_the_bucket_holds_and_never_more() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(3), Ok(3));
        // The call used far more than its estimate: the bucket empties, and
        // the next call waits for one unit's refill, not for the overspend.
        tokens.settle(1000);
        assert_eq!(tokens.admit(1), Err(Duration::from_secs(6)));
    }

    #[tokio::test(start_paused = true)]
    async fn settling_less_than_the_bucket_leaves_the_rest() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(2), Ok(2));
        tokens.settle(4);
        assert_eq!(tokens.admit(4), Ok(4), "10 - 2 - 4 = 4 left");
        assert!(tokens.admit(1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_gives_back_what_was_charged() {
        let requests = bucket(2);
        assert_eq!(requests.admit(1), Ok(1));
        assert_eq!(requests.admit(1), Ok(1));
        assert!(requests.admit(1).is_err(), "both spent");
        requests.refund(1);
        assert_eq!(requests.admit(1), Ok(1), "the refunded one is back");
        assert!(requests.admit(1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_never_fills_the_bucket_past_full() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(4), Ok(4));
        // A minute passes: the bucket refilled on its own.
        tokio::time::advance(Duration::from_secs(60)).await;
        tokens.refund(4);
        assert_eq!(tokens.admit(10), Ok(10));
        assert!(tokens.admit(1).is_err(), "ten a minute, not fourteen");
    }
}
