//! A route's `queue:` and a key's `priority:`: how long, and in which
//! order, calls wait for a free slot when every endpoint of the route is at
//! `max_in_flight`, instead of failing at once.

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::Checker;

/// Most calls one route's queue may hold: past this a queue is no longer
/// smoothing a burst but hiding an outage, and its scans grow.
pub(crate) const MAX_QUEUE_LEN: u32 = 100_000;

// === raw (as written) ===

/// `routes[].queue:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    /// Most calls waiting at once.
    #[serde(default)]
    pub(crate) max_len: Option<Spanned<u32>>,
    /// Longest a call waits.
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// A waiter climbs one class each time it has waited this long.
    #[serde(default)]
    pub(crate) promote_after: Option<Spanned<String>>,
}

// === validated ===

/// A route's queue: calls that find every endpoint at `max_in_flight`
/// wait here for a slot rather than failing with UNAVAILABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueConfig {
    /// Most calls waiting at once; one more is shed at once, as without a
    /// queue.
    pub max_len: u32,
    /// Longest a call waits (never past its own deadline).
    pub timeout: Duration,
    /// A waiter is treated as one class higher for each `promote_after`
    /// it has waited, so a steady stream of `high` calls cannot starve
    /// `low` ones.
    pub promote_after: Duration,
}

/// A caller's class in a route's queue; only the order of waiters depends
/// on it, never whether a call is admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Priority {
    /// Served first (interactive traffic).
    High,
    /// The default.
    #[default]
    Normal,
    /// Served when nothing more urgent waits (batch jobs).
    Low,
}

// === impl Priority ===

impl Priority {
    /// Every class, highest first.
    pub(crate) const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The class named `name` (`high`, `normal`, `low`, any case), as a
    /// key's `priority:` or an `x-llmgate-priority` header gives it.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Its name, for the file, headers and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Its rank: 0 is served first.
    pub(crate) fn rank(self) -> u8 {
        self as u8
    }
}

// === checks ===

impl Checker {
    /// A route's `queue:`.
    pub(super) fn queue(&mut self, route: &str, raw: &Spanned<RawQueue>) -> Option<QueueConfig> {
        let raw = &raw.value;
        let max_len = match &raw.max_len {
            Some(n) if n.value == 0 || n.value > MAX_QUEUE_LEN => {
                self.report(
                    n,
                    format!(
                        "route '{route}': queue.max_len {} must be between 1 and \
                         {MAX_QUEUE_LEN}; remove queue: to fail at once when every endpoint \
                         is at max_in_flight",
                        n.value
                    ),
                );
                return None;
            }
            Some(n) => n.value,
            None => 256,
        };
        let timeout = match &raw.timeout {
            Some(t) => self.queue_duration(route, "timeout", t)?,
            None => Duration::from_secs(10),
        };
        let promote_after = match &raw.promote_after {
            Some(t) => self.queue_duration(route, "promote_after", t)?,
            None => Duration::from_secs(2),
        };
        Some(QueueConfig {
            max_len,
            timeout,
            promote_after,
        })
    }

    /// A queue time: more than zero, and at most an hour (no caller waits
    /// longer for a slot; a longer value is a typo).
    fn queue_duration(
        &mut self,
        route: &str,
        field: &str,
        raw: &Spanned<String>,
    ) -> Option<Duration> {
        let d = self.duration(raw)?;
        if d > Duration::from_secs(3600) {
            self.report(
                raw,
                format!(
                    "route '{route}': queue.{field} {} is longer than an hour; a queued \
                     call should wait seconds, not hours",
                    raw.value
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A key's `priority:`.
    pub(super) fn priority(&mut self, key: &str, raw: &Spanned<String>) -> Option<Priority> {
        let priority = Priority::from_name(&raw.value);
        if priority.is_none() {
            self.report(
                raw,
                format!(
                    "auth: key '{key}': priority '{}' is not a class; use high, normal or low",
                    raw.value
                ),
            );
        }
        priority
    }
}
