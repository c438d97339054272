//! Where log lines go and how they look.
//!
//! Humans read the text format in a terminal; log pipelines (Loki,
//! Elasticsearch, Cloud Logging) read the JSON format, one object per line
//! with the event's fields at the top level, so an access line's
//! `request_id` or `code` can be queried without parsing text. `RUST_LOG`
//! filters either (default `info`, which includes the access log).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, fields at the top level.
    Json,
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter`
/// (`RUST_LOG` syntax), with terminal colours only if `ansi`. Tests use it
/// with their own writer to read what the gateway logs.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && format == LogFormat::Text)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Keeps the log writer's thread alive; dropping it writes out every line
/// still waiting. `main` holds it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    /// The lines and the writer thread's signal.
    lines: Arc<Batch>,
    /// The writer thread, joined on drop.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long the writer thread gathers lines before one write: at most this
/// late, a line reaches stderr.
const BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Bytes of lines waiting past which a logging call writes them itself: a
/// stderr that cannot keep up slows the calls that log rather than losing
/// lines or growing without bound.
const MAX_WAITING: usize = 4 << 20;

/// Log lines on their way to a sink, and the writer thread's signal.
struct Batch {
    waiting: Mutex<Waiting>,
    /// Rung when lines arrive in an empty batch, and at shutdown.
    ready: Condvar,
    /// Rung when the writer thread puts the sink back.
    sink_back: Condvar,
}

/// What [`Batch`]'s lock guards.
struct Waiting {
    /// Whole lines, in the order they were logged.
    lines: Vec<u8>,
    /// Where they go; `None` while the writer thread writes to it.
    sink: Option<Box<dyn Write + Send>>,
    /// The guard was dropped: write what is left and stop.
    closed: bool,
}

/// The [`MakeWriter`] of a [`Batch`]: each event's line is appended under
/// the lock, and nothing else happens on the logging thread.
#[derive(Clone)]
struct BatchWriter(Arc<Batch>);

/// Installs the process's subscriber: `format` lines on stderr, filtered by
/// `RUST_LOG` (default `info`). Colours only on a terminal: escape codes in
/// a log file or a pod's log are noise.
///
/// Lines are written by a thread of their own, in batches gathered for at
/// most [`BATCH_WINDOW`]: a write to stderr per call (the access log) cost
/// a system call and often a wake-up of the reading process on the serving
/// thread (a sixth of the gateway's CPU per unary call in a profile), and a
/// writer thread woken per line (as tracing-appender's is) still cost a
/// sixth of it at one call at a time.
pub fn init(format: LogFormat) -> LogGuard {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = batched(Box::new(std::io::stderr()));
    // Also bridges crates that log through `log` (rustls). Fails only when
    // a subscriber is already set, which then stays.
    let _ = subscriber(format, filter, ansi, writer).try_init();
    guard
}

/// A writer whose lines reach `sink` from a thread of their own, and the
/// guard that stops the thread once every line is written.
fn batched(sink: Box<dyn Write + Send>) -> (BatchWriter, LogGuard) {
    let lines = Arc::new(Batch {
        waiting: Mutex::new(Waiting {
            lines: Vec::new(),
            sink: Some(sink),
            closed: false,
        }),
        ready: Condvar::new(),
        sink_back: Condvar::new(),
    });
    let writer = lines.clone();
    let thread = std::thread::Builder::new()
        .name("llmgate-log".into())
        .spawn(move || writer.write_batches())
        .ok();
    let guard = LogGuard {
        lines: lines.clone(),
        thread,
    };
    (BatchWriter(lines), guard)
}

// === impl Batch ===

impl Batch {
    /// The lock, even if a thread panicked holding it: lines are bytes, and
    /// losing the log for that would hide the panic's own line.
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer thread: waits for lines, gathers them for a window, and
    /// writes them in one go; at shutdown, writes the rest and returns.
    fn write_batches(&self) {
        let mut spare = Vec::new();
        let mut waiting = self.lock();
        loop {
            while waiting.lines.is_empty() && !waiting.closed {
                waiting = self
                    .ready
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if !waiting.closed {
                waiting = self
                    .ready
                    .wait_timeout_while(waiting, BATCH_WINDOW, |w| !w.closed)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            std::mem::swap(&mut waiting.lines, &mut spare);
            let closed = waiting.closed;
            // The sink is written outside the lock, so logging calls never
            // wait on stderr, only on this swap; a logging call that must
            // write itself (see `MAX_WAITING`) waits for it to come back.
            let Some(mut sink) = waiting.sink.take() else {
                return;
            };
            drop(waiting);
            let _ = sink.write_all(&spare);
            let _ = sink.flush();
            spare.clear();
            waiting = self.lock();
            waiting.sink = Some(sink);
            self.sink_back.notify_all();
            if closed && waiting.lines.is_empty() {
                return;
            }
        }
    }
}

// === impl BatchWriter ===

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = &'a Batch;

    fn make_writer(&'a self) -> Self::Writer {
        &self.0
    }
}

impl Write for &Batch {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut waiting = self.lock();
        let was_empty = waiting.lines.is_empty();
        waiting.lines.extend_from_slice(line);
        if waiting.lines.len() >= MAX_WAITING {
            while waiting.sink.is_none() {
                waiting = self
                    .sink_back
                    .wait(waiting)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let Waiting { lines, sink, .. } = &mut *waiting;
            if let Some(sink) = sink {
                let written = sink.write_all(lines);
                lines.clear();
                written?;
            }
        } else if was_empty {
            self.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// === impl LogGuard ===

impl Drop for LogGuard {
    /// Stops the writer thread once it has written every line. Lines still
    /// waiting after it (none, unless the thread could not be started)
    /// are written here.
    fn drop(&mut self) {
        self.lines.lock().closed = true;
        self.lines.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut waiting = self.lines.lock();
        let Waiting { lines, sink, .. } = &mut *waiting;
        if let Some(sink) = sink
            && !lines.is_empty()
        {
            let _ = sink.write_all(lines);
            let _ = sink.flush();
            lines.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_reaches_the_sink_in_order_by_the_time_the_guard_drops() {
        let sink = Shared::default();
        let (writer, guard) = batched(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let line = format!("thread {t} line {i}\n");
                        let _ = writer.make_writer().write_all(line.as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            let _ = thread.join();
        }
        drop(guard);
        let written = sink
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let text = String::from_utf8(written).expect("whole lines");
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|line| line.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..2_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(mine, expected, "thread {t}'s lines, whole and in order");
        }
    }

    #[test]
    fn a_burst_past_the_bound_is_written_by_the_caller_and_nothing_is_lost() {
        let sink = Shared::default();
        let (writer, guard) = batched(Box::new(sink.clone()));
        let line = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            let _ = writer.make_writer().write_all(&line);
        }
        drop(guard);
        assert_eq!(
            sink.0.lock().unwrap_or_else(PoisonError::into_inner).len(),
            10 << 20
        );
    }
}
