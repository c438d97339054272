//! What one call leaves behind: its metrics and its access log line.
//!
//! A [`CallRecord`] follows a call from arrival to its end, whatever the
//! end is: the last token, an error, or the caller going away (the record
//! is dropped unfinished, which counts as CANCELLED). Everything is recorded
//! once, at the end, except the token timings, which are observed as tokens
//! pass through handles resolved once per call, so a token costs a clock
//! read and two atomic updates, not a label lookup.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Histogram, Label, SharedString};
use tokio::time::Instant;
use tonic::Code;

use super::metrics::{self as m, label};
use crate::chat::{CallContext, Completion, Placement, Usage};
use crate::error::GatewayError;

/// The tracing target of access log lines, for filtering
/// (`RUST_LOG=llmgate::access=info`) and for routing them elsewhere.
pub const ACCESS_LOG_TARGET: &str = "llmgate::access";

/// One call, from arrival to its end.
#[derive(Debug)]
pub(crate) struct CallRecord {
    /// Who the call is and where it went.
    call: CallContext,
    /// The model name the caller sent; a label only if the table routes it.
    model: Arc<str>,
    /// Whether the caller asked for a stream (only streams have a time to
    /// first token).
    stream: bool,
    /// When the call arrived.
    start: Instant,
    /// When the first token left, for streams.
    first_token: Option<Duration>,
    /// When the previous token left.
    last_token: Option<Instant>,
    /// Tokens passed to the caller.
    chunks: u64,
    /// What the upstream reported at the end.
    usage: Option<Usage>,
    /// Token timing handles, resolved once the call is placed.
    timing: Option<TokenTiming>,
    /// Whether the end has been recorded.
    finished: bool,
}

/// The histograms a streamed call's tokens are observed in.
#[derive(Debug)]
struct TokenTiming {
    /// [`m::TIME_TO_FIRST_TOKEN_SECONDS`].
    ttft: Histogram,
    /// [`m::INTER_TOKEN_LATENCY_SECONDS`].
    inter_token: Histogram,
}

// === impl CallRecord ===

impl CallRecord {
    /// A call for `model` has arrived.
    pub(crate) fn start(call: CallContext, model: &str, stream: bool) -> Self {
        metrics::gauge!(m::CALLS_IN_FLIGHT).increment(1.0);
        CallRecord {
            call,
            model: Arc::from(model),
            stream,
            start: Instant::now(),
            first_token: None,
            last_token: None,
            chunks: 0,
            usage: None,
            timing: None,
            finished: false,
        }
    }

    /// The call was placed and its answer is about to stream: resolve the
    /// token timing handles now, while the labels are known.
    pub(crate) fn answering(&mut self) {
        if self.stream {
            let labels = labels(&self.model, &self.call.placement());
            self.timing = Some(TokenTiming {
                ttft: metrics::histogram!(m::TIME_TO_FIRST_TOKEN_SECONDS, labels.iter()),
                inter_token: metrics::histogram!(m::INTER_TOKEN_LATENCY_SECONDS, labels.iter()),
            });
        }
    }

    /// A token passed to the caller.
    pub(crate) fn token(&mut self) {
        self.chunks += 1;
        let Some(timing) = &self.timing else {
            return;
        };
        let now = Instant::now();
        match self.last_token {
            None => {
                let ttft = now - self.start;
                self.first_token = Some(ttft);
                timing.ttft.record(ttft);
            }
            Some(previous) => timing.inter_token.record(now - previous),
        }
        self.last_token = Some(now);
    }

    /// The call finished with its final event.
    pub(crate) fn done(&mut self, completion: &Completion) {
        self.usage = completion.usage;
        self.finish(Code::Ok, None);
    }

    /// The call failed with `err`.
    pub(crate) fn failed(&mut self, err: &GatewayError) {
        self.finish(err.kind().grpc_code(), Some(err.message()));
    }

    /// Records the end of the call, once.
    pub(crate) fn finish(&mut self, code: Code, error: Option<&str>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let duration = self.start.elapsed();
        metrics::gauge!(m::CALLS_IN_FLIGHT).decrement(1.0);
        let placement = self.call.placement();
        let mut labels = labels(&self.model, &placement);
        if let Some(usage) = self.usage {
            metrics::counter!(m::INPUT_TOKENS_TOTAL, labels.iter())
                .increment(u64::from(usage.input_tokens));
            metrics::counter!(m::OUTPUT_TOKENS_TOTAL, labels.iter())
                .increment(u64::from(usage.output_tokens));
        }
        labels.push(Label::new(label::CODE, m::code_label(code)));
        metrics::counter!(m::CALLS_TOTAL, labels.iter()).increment(1);
        metrics::histogram!(m::CALL_DURATION_SECONDS, labels.iter()).record(duration);

        let [route, upstream, endpoint] = [labels[1].value(), labels[2].value(), labels[3].value()];
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            request_id = %self.call.request_id(),
            // Logs are not bound by label cardinality: say what was asked,
            // up to a sane length.
            model = logged_model(&self.model),
            route,
            upstream,
            endpoint,
            code = m::code_label(code),
            stream = self.stream,
            ttft_ms = self.first_token.map(millis),
            duration_ms = millis(duration),
            tokens_in = self.usage.map(|u| u.input_tokens),
            tokens_out = self.usage.map(|u| u.output_tokens),
            chunks = self.chunks,
            // Set when the stream broke mid-answer: how it was continued
            // (prefill, replay) or that it could not be (failed).
            rescued = placement.rescue,
            error,
            "call"
        );
    }
}

impl Drop for CallRecord {
    /// A call dropped before its end was abandoned by its caller (or cut at
    /// shutdown): it counts as CANCELLED, so it is never missing from the
    /// metrics. Dropped while its task unwinds, it was a panic in the
    /// gateway: INTERNAL, logged at error level and counted apart, so a bug
    /// is never mistaken for an impatient caller.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.finished {
                tracing::error!(
                    request_id = %self.call.request_id(),
                    "a call panicked inside the gateway; this is a bug, please report it"
                );
                m::call_panicked();
            }
            self.finish(
                Code::Internal,
                Some("the gateway panicked serving this call"),
            );
            return;
        }
        self.finish(Code::Cancelled, Some("the caller went away"));
    }
}

/// The per-call labels: names from the routing table only. The model is
/// the caller's name only once the router found it in the table.
fn labels(model: &Arc<str>, placement: &Placement) -> Vec<Label> {
    let name = |value: &Option<Arc<str>>| {
        value
            .clone()
            .map_or(SharedString::const_str(m::UNKNOWN), SharedString::from)
    };
    let model = if placement.route.is_some() {
        SharedString::from(model.clone())
    } else {
        SharedString::const_str(m::UNKNOWN)
    };
    let mut labels = Vec::with_capacity(5);
    labels.push(Label::new(label::MODEL, model));
    labels.push(Label::new(label::ROUTE, name(&placement.route)));
    labels.push(Label::new(label::UPSTREAM, name(&placement.upstream)));
    labels.push(Label::new(label::ENDPOINT, name(&placement.endpoint)));
    labels
}

/// The longest model name an access line repeats.
const MAX_LOGGED_MODEL: usize = 128;

/// The model name as asked, cut at [`MAX_LOGGED_MODEL`] characters.
fn logged_model(model: &str) -> &str {
    match model.char_indices().nth(MAX_LOGGED_MODEL) {
        Some((cut, _)) => &model[..cut],
        None => model,
    }
}

/// A duration in milliseconds, to a tenth.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}
