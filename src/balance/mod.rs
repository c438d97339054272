//! Choosing an endpoint inside one upstream, per call.
//!
//! Every call picks on its own, never per connection: that is what spreads
//! calls arriving on one long-lived HTTP/2 connection over every server.
//! Today the choice is a lock-free round robin; power-of-two-choices over
//! live load replaces it behind the same `pick`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A fixed set of endpoints taken in turn.
#[derive(Debug)]
pub struct RoundRobin<T> {
    /// The endpoints; never empty.
    items: Vec<T>,
    /// Which one the next call takes.
    next: AtomicUsize,
}

impl<T> RoundRobin<T> {
    /// A rotation over `items`, or `None` when there is nothing to pick.
    pub fn new(items: Vec<T>) -> Option<Self> {
        (!items.is_empty()).then(|| RoundRobin {
            items,
            next: AtomicUsize::new(0),
        })
    }

    /// The endpoint for the next call.
    pub fn pick(&self) -> &T {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.items.len();
        &self.items[index]
    }
}
