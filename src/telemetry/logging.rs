//! Where log lines go and how they look.
//!
//! Humans read the text format in a terminal; log pipelines (Loki,
//! Elasticsearch, Cloud Logging) read the JSON format, one object per line
//! with the event's fields at the top level, so an access line's
//! `request_id` or `code` can be queried without parsing text. `RUST_LOG`
//! filters either (default `info`, which includes the access log).

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
/// still queued. `main` holds it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _writer: tracing_appender::non_blocking::WorkerGuard,
}

/// Lines a writer thread holds before a logging call waits for it: a burst
/// of access lines is absorbed, and a stderr that cannot keep up slows the
/// calls that log rather than losing lines.
const QUEUED_LINES: usize = 8 * 1024;

/// Installs the process's subscriber: `format` lines on stderr, filtered by
/// `RUST_LOG` (default `info`). Colours only on a terminal: escape codes in
/// a log file or a pod's log are noise.
///
/// Lines are written by a thread of their own, in as few writes as the
/// queue allows: a write to stderr per call (the access log) cost a system
/// call and often a wake-up of the reading process on the calling worker
/// thread, about a sixth of the gateway's CPU per unary call in a profile.
pub fn init(format: LogFormat) -> LogGuard {
    use std::io::IsTerminal as _;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("llmgate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    // Also bridges crates that log through `log` (rustls). Fails only when
    // a subscriber is already set, which then stays.
    let _ = subscriber(format, filter, ansi, writer).try_init();
    LogGuard { _writer: guard }
}
