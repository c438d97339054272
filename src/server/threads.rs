//! Threads that serve connections, each running a runtime of its own.
//!
//! On one shared multi-thread runtime a call's work moves between worker
//! threads: hyper's HTTP/2 server runs each stream as a task apart from its
//! connection's task, and any idle worker may steal either, so a token can
//! wake another thread (a futex and a cache miss) on its way out. Here each
//! accepted connection is handed to one thread, and everything it starts
//! (its streams, its calls, their upstream connections) stays on that
//! thread. On the proxy bench a single-threaded runtime measured about a
//! fifth less gateway CPU per call and per token than the shared runtime;
//! with a thread per core that holds for every core.

use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The serving threads; dropping this stops them (a connection still on
/// one is dropped with it).
pub(crate) struct ServingThreads {
    /// Where to spawn onto each thread's runtime.
    handles: Vec<Handle>,
    /// The thread the next connection goes to.
    next: AtomicUsize,
    /// Dropped to stop the threads.
    _stop: Vec<oneshot::Sender<()>>,
}

impl ServingThreads {
    /// Starts `count` threads, each with a single-threaded runtime that
    /// runs until this is dropped.
    pub(crate) fn start(count: NonZeroUsize) -> io::Result<Self> {
        let mut handles = Vec::with_capacity(count.get());
        let mut stop = Vec::with_capacity(count.get());
        for index in 0..count.get() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("llmgate-serve-{index}"))
                .spawn(move || {
                    // The runtime's tasks run while it waits for the stop.
                    let _ = runtime.block_on(stop_rx);
                })?;
            stop.push(stop_tx);
        }
        Ok(ServingThreads {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// The runtime of the thread the next connection goes to, in turn:
    /// connections are many and alike enough that turns spread them evenly.
    pub(crate) fn next(&self) -> &Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[turn % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_each_thread_in_turn_and_stay_there() {
        let count = NonZeroUsize::new(2).expect("non-zero");
        let threads = ServingThreads::start(count).expect("threads start");
        let mut names = Vec::new();
        for _ in 0..4 {
            let task = threads.next().spawn(async {
                let before = std::thread::current().name().map(str::to_string);
                tokio::task::yield_now().await;
                let after = std::thread::current().name().map(str::to_string);
                (before, after)
            });
            let (before, after) = task.await.expect("task ran");
            assert_eq!(before, after, "a task stays on its thread");
            names.push(before.expect("named thread"));
        }
        assert_eq!(
            names,
            [
                "llmgate-serve-0",
                "llmgate-serve-1",
                "llmgate-serve-0",
                "llmgate-serve-1"
            ]
        );
    }
}
