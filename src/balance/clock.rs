//! The instant the balancer's stored times count from: ejections and
//! engine readings are kept as nanoseconds after it in atomics, so every
//! call reads them without a lock.

use std::sync::OnceLock;

use tokio::time::Instant;

/// The instant stored times are counted from, fixed at first use.
pub(super) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}
