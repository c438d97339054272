//! The tokens-per-minute bucket, on its own so that the policy that holds
//! it ([`Guard`](super::guard::Guard)'s quotas) and the layer that charges
//! it ([`rate`](super::rate)) both import it and neither imports the other
//! for it.
//!
//! Built on `governor`'s GCRA (the generic cell rate algorithm of ATM
//! networks, ITU-T I.371): a bucket of a minute's worth that refills
//! continuously, so a caller may burst up to its minute and then proceeds
//! at the steady rate.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, NotUntil, Quota as Rate, RateLimiter};

/// A tokens-per-minute limit.
pub struct TokenBucket {
    /// The GCRA state.
    limiter: DefaultDirectRateLimiter,
    /// The bucket's size: a minute's tokens. No single charge can be larger.
    capacity: NonZeroU32,
}

// === impl TokenBucket ===

impl TokenBucket {
    /// A bucket of `n` tokens a minute.
    pub fn per_minute(n: NonZeroU32) -> Self {
        TokenBucket {
            limiter: RateLimiter::direct(Rate::per_minute(n)),
            capacity: n,
        }
    }

    /// The bucket's size, for the message that refuses a call.
    pub(crate) fn capacity(&self) -> NonZeroU32 {
        self.capacity
    }

    /// Takes `estimate` tokens now (at least one, at most a whole bucket, so
    /// a prompt bigger than a minute's budget can still run once the bucket
    /// is full) and returns what it took, or how long until they fit.
    pub(crate) fn admit(&self, estimate: u32) -> Result<u32, Duration> {
        let charge = estimate.clamp(1, self.capacity.get());
        let n = NonZeroU32::new(charge).unwrap_or(NonZeroU32::MIN);
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(charge),
            Ok(Err(not_until)) => Err(wait(&not_until)),
            // Unreachable: the charge is at most the capacity.
            Err(_) => Err(Duration::from_secs(60)),
        }
    }

    /// Takes `extra` tokens a call used beyond its charge, or as many as
    /// the bucket holds now: the call already happened, so this never waits
    /// and never fails; an empty bucket makes the next calls wait instead.
    pub(crate) fn settle(&self, extra: u32) {
        let mut remaining = extra.min(self.capacity.get());
        let mut chunk = remaining;
        // Take the largest pieces that fit, halving on each refusal: at
        // most a few dozen checks, and only for a call that overspent.
        while remaining > 0 {
            let Some(n) = NonZeroU32::new(chunk) else {
                break;
            };
            if matches!(self.limiter.check_n(n), Ok(Ok(()))) {
                remaining -= chunk;
                chunk = chunk.min(remaining);
            } else {
                chunk /= 2;
            }
        }
    }
}

/// How long from now until a refused charge (of tokens, or of a request
/// on a `governor` limiter) would fit.
pub(crate) fn wait(not_until: &NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(n: u32) -> TokenBucket {
        TokenBucket::per_minute(NonZeroU32::new(n).expect("positive"))
    }

    #[test]
    fn a_prompt_larger_than_the_bucket_is_charged_one_full_bucket() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(50), Ok(10));
        assert!(tokens.admit(1).is_err(), "the bucket is empty");
    }

    #[test]
    fn settling_takes_what_the_bucket_holds_and_never_more() {
        // Ten a minute: one every six seconds, so nothing refills while the
        // test runs.
        let tokens = bucket(10);
        assert_eq!(tokens.admit(3), Ok(3));
        // The call used far more than its estimate: the bucket empties, and
        // the next call waits for the refill rather than failing the last.
        tokens.settle(1000);
        let wait = tokens.admit(1).expect_err("empty after settling");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(6),
            "{wait:?}"
        );
    }

    #[test]
    fn settling_less_than_the_bucket_leaves_the_rest() {
        let tokens = bucket(10);
        assert_eq!(tokens.admit(2), Ok(2));
        tokens.settle(4);
        assert_eq!(tokens.admit(4), Ok(4), "10 - 2 - 4 = 4 left");
        assert!(tokens.admit(1).is_err());
    }
}
