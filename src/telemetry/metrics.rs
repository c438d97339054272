//! Every metric the gateway exports, declared in one place.
//!
//! Names follow Prometheus conventions: the `llmgate_` prefix, base units in
//! the name (`_seconds`), `_total` on counters. Each one is listed in
//! [`CATALOG`] with its help text and labels, described to the recorder at
//! start-up, and read by the deploy tests, which check that every metric a
//! dashboard query names is one the code exports.
//!
//! Label values come only from bounded sets: names from the routing table
//! (routes, aliases, upstreams, endpoints), gRPC codes, and a few fixed
//! words. Whatever a caller sends that the table does not know counts as
//! [`UNKNOWN`], so no caller can create new series.
//!
//! The recorder is process-wide (the `metrics` facade has one global
//! recorder), so [`install`] builds it once and every gateway in the
//! process shares it; tests that run many gateways tell their calls apart by
//! model names of their own.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Gauge, Label, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Calls that ended, by model, route, upstream, endpoint and gRPC code.
pub const CALLS_TOTAL: &str = "llmgate_calls_total";
/// How long whole calls took, from arrival to last token or error.
pub const CALL_DURATION_SECONDS: &str = "llmgate_call_duration_seconds";
/// Time from a streamed call's arrival to its first token.
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "llmgate_time_to_first_token_seconds";
/// Time between two consecutive tokens of a streamed call.
pub const INTER_TOKEN_LATENCY_SECONDS: &str = "llmgate_inter_token_latency_seconds";
/// Prompt tokens, as upstreams reported them.
pub const INPUT_TOKENS_TOTAL: &str = "llmgate_input_tokens_total";
/// Generated tokens, as upstreams reported them.
pub const OUTPUT_TOKENS_TOTAL: &str = "llmgate_output_tokens_total";
/// Calls being served right now.
pub const CALLS_IN_FLIGHT: &str = "llmgate_calls_in_flight";
/// Whether an endpoint is taking calls (1) or ejected (0).
pub(crate) const ENDPOINT_UP: &str = "llmgate_endpoint_up";
/// Calls an endpoint is serving right now, streams until their last token.
pub(crate) const ENDPOINT_IN_FLIGHT: &str = "llmgate_endpoint_in_flight";
/// Requests waiting in an endpoint's engine, as its metrics page says.
pub(crate) const ENGINE_REQUESTS_WAITING: &str = "llmgate_engine_requests_waiting";
/// Requests running in an endpoint's engine, as its metrics page says.
pub(crate) const ENGINE_REQUESTS_RUNNING: &str = "llmgate_engine_requests_running";
/// Share of an endpoint's engine KV cache in use, 0 to 1.
pub(crate) const ENGINE_KV_CACHE_USAGE: &str = "llmgate_engine_kv_cache_usage";
/// Calls of a route with prefix affinity, by whether they went to the
/// preferred endpoint (`hit`) or elsewhere (`spill`).
pub(crate) const PREFIX_AFFINITY_TOTAL: &str = "llmgate_prefix_affinity_total";
/// Calls waiting in a route's queue for a free slot, by route and class.
pub(crate) const QUEUE_LENGTH: &str = "llmgate_queue_length";
/// How long calls waited in a route's queue, by route, class and how the
/// wait ended (`served`, `timeout`, `cancelled`).
pub(crate) const QUEUE_WAIT_SECONDS: &str = "llmgate_queue_wait_seconds";
/// Ejections of an endpoint (scope `endpoint`) or of one model on it
/// (scope `model`) after failures in a row.
pub(crate) const EJECTIONS_TOTAL: &str = "llmgate_ejections_total";
/// Streams that broke mid-answer, by how they were rescued: `prefill` or
/// `replay` (continued on another endpoint), `failed` (ended in an error).
pub(crate) const STREAM_RESCUES_TOTAL: &str = "llmgate_stream_rescues_total";
/// Calls retried on another endpoint.
pub(crate) const RETRIES_TOTAL: &str = "llmgate_retries_total";
/// Calls that fell back to another route's model.
pub(crate) const FALLBACKS_TOTAL: &str = "llmgate_fallbacks_total";
/// Attempts to load a changed routing file, by result.
pub(crate) const CONFIG_RELOADS_TOTAL: &str = "llmgate_config_reloads_total";
/// 1 when the last reload of the routing file was applied, 0 when it was
/// rejected (as Prometheus's own `..._config_last_reload_successful`).
pub(crate) const CONFIG_LAST_RELOAD_SUCCESSFUL: &str = "llmgate_config_last_reload_successful";
/// How many routing tables this process has put in force (1 at start).
pub(crate) const CONFIG_GENERATION: &str = "llmgate_config_generation";
/// Calls that ended in a panic inside the gateway (a bug to report).
pub(crate) const CALL_PANICS_TOTAL: &str = "llmgate_call_panics_total";
/// Store calls that failed or timed out (`reason` `timeout`, `error`), or
/// were not tried because the store was down (`down`).
pub(crate) const STATE_STORE_ERRORS_TOTAL: &str = "llmgate_state_store_errors_total";
/// 1 while the shared limit store answers, 0 while calls decide without it.
pub(crate) const STATE_STORE_UP: &str = "llmgate_state_store_up";
/// Always 1; its `version` label says which build runs.
pub(crate) const BUILD_INFO: &str = "llmgate_build_info";

/// Label keys.
pub(crate) mod label {
    /// The model name the caller sent, when the table routes it.
    pub(crate) const MODEL: &str = "model";
    /// The route's own model name (aliases count under their route).
    pub(crate) const ROUTE: &str = "route";
    /// The upstream's name in the routing file.
    pub(crate) const UPSTREAM: &str = "upstream";
    /// The endpoint as the routing file names it.
    pub(crate) const ENDPOINT: &str = "endpoint";
    /// The gRPC status code the caller got, as `OK`, `NOT_FOUND`, ...
    pub(crate) const CODE: &str = "code";
    /// The model a call fell back to.
    pub(crate) const FALLBACK: &str = "fallback";
    /// How a reload ended: [`super::RELOAD_APPLIED`] or [`super::RELOAD_REJECTED`].
    pub(crate) const RESULT: &str = "result";
    /// The crate version, on [`super::BUILD_INFO`].
    pub(crate) const VERSION: &str = "version";
    /// What an ejection is about: `endpoint` or `model`.
    pub(crate) const SCOPE: &str = "scope";
    /// How a broken stream ended: `prefill`, `replay` or `failed`.
    pub(crate) const OUTCOME: &str = "outcome";
    /// A call's class in a route's queue: `high`, `normal` or `low`.
    pub(crate) const PRIORITY: &str = "priority";
    /// Why a shared-store call failed: `timeout`, `error` or `down`.
    pub(crate) const REASON: &str = "reason";
}

/// The value of a label the call never reached (no route for an unknown
/// model, no endpoint for a call refused before one was chosen), and of the
/// `model` label for a name the routing table does not know.
pub const UNKNOWN: &str = "unknown";
/// `result` of a reload whose new table is now in force.
pub(crate) const RELOAD_APPLIED: &str = "success";
/// `result` of a reload refused because the file was broken.
pub(crate) const RELOAD_REJECTED: &str = "failure";

/// Whole-call durations: a cached refusal takes milliseconds, a long
/// generation minutes.
pub(crate) const CALL_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];
/// Time to first token: milliseconds on a warm server, tens of seconds when
/// a long prompt waits in a busy server's queue.
pub const TIME_TO_FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Gaps between tokens: 10–100 ms is normal decoding; the upper buckets
/// catch stalls (preemption, a saturated batch) before `idle_timeout` cuts.
pub(crate) const INTER_TOKEN_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Queue waits: most end within one generation's time, none past the
/// route's `queue.timeout` (an hour at most).
pub(crate) const QUEUE_WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The name scraped.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// Its unit, for the description.
    pub unit: Unit,
    /// The `# HELP` text.
    pub help: &'static str,
    /// Its label keys.
    pub labels: &'static [&'static str],
    /// Bucket bounds, for histograms.
    pub buckets: &'static [f64],
}

/// Labels of every per-call series.
const CALL_LABELS: &[&str] = &[label::MODEL, label::ROUTE, label::UPSTREAM, label::ENDPOINT];
/// Per-call labels plus the outcome.
const CALL_CODE_LABELS: &[&str] = &[
    label::MODEL,
    label::ROUTE,
    label::UPSTREAM,
    label::ENDPOINT,
    label::CODE,
];
/// Labels of per-endpoint series.
const ENDPOINT_LABELS: &[&str] = &[label::UPSTREAM, label::ENDPOINT];

/// Every metric the gateway exports.
pub const CATALOG: &[MetricDef] = &[
    MetricDef {
        name: CALLS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Calls that ended, by model, route, upstream, endpoint and gRPC status code.",
        labels: CALL_CODE_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: CALL_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        help: "Whole-call duration, from arrival to the last token or the error.",
        labels: CALL_CODE_LABELS,
        buckets: CALL_DURATION_BUCKETS,
    },
    MetricDef {
        name: TIME_TO_FIRST_TOKEN_SECONDS,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        help: "Time from a streamed call's arrival at the gateway to its first token.",
        labels: CALL_LABELS,
        buckets: TIME_TO_FIRST_TOKEN_BUCKETS,
    },
    MetricDef {
        name: INTER_TOKEN_LATENCY_SECONDS,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        help: "Time between consecutive tokens of a streamed call.",
        labels: CALL_LABELS,
        buckets: INTER_TOKEN_LATENCY_BUCKETS,
    },
    MetricDef {
        name: INPUT_TOKENS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Prompt tokens of finished calls, as the upstream reported them.",
        labels: CALL_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: OUTPUT_TOKENS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Generated tokens of finished calls, as the upstream reported them.",
        labels: CALL_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: CALLS_IN_FLIGHT,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Calls being served right now, streams until their last token.",
        labels: &[],
        buckets: &[],
    },
    MetricDef {
        name: ENDPOINT_UP,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "1 while an endpoint takes calls, 0 while it is ejected after failures.",
        labels: ENDPOINT_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: ENDPOINT_IN_FLIGHT,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Calls an endpoint is serving right now (the balancer's load), streams until their last token.",
        labels: ENDPOINT_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: ENGINE_REQUESTS_WAITING,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Requests waiting in the endpoint's engine (vLLM, SGLang), from its own metrics (load: { metrics }).",
        labels: ENDPOINT_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: ENGINE_REQUESTS_RUNNING,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Requests running in the endpoint's engine, from its own metrics (every caller's, not only this gateway's).",
        labels: ENDPOINT_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: ENGINE_KV_CACHE_USAGE,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Share of the endpoint's engine KV cache in use, 0 to 1, from its own metrics.",
        labels: ENDPOINT_LABELS,
        buckets: &[],
    },
    MetricDef {
        name: PREFIX_AFFINITY_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Calls of routes with prefix affinity: hit (the endpoint ranked first for the prompt's prefix) or spill (it was loaded past max_load_factor).",
        labels: &[label::ROUTE, label::OUTCOME],
        buckets: &[],
    },
    MetricDef {
        name: QUEUE_LENGTH,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Calls waiting in a route's queue for a free slot (every endpoint at max_in_flight), by route and priority class.",
        labels: &[label::ROUTE, label::PRIORITY],
        buckets: &[],
    },
    MetricDef {
        name: QUEUE_WAIT_SECONDS,
        kind: MetricKind::Histogram,
        unit: Unit::Seconds,
        help: "How long calls waited in a route's queue, by route, priority class and outcome (served, timeout, cancelled).",
        labels: &[label::ROUTE, label::PRIORITY, label::OUTCOME],
        buckets: QUEUE_WAIT_BUCKETS,
    },
    MetricDef {
        name: EJECTIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Ejections after failures in a row: of an endpoint (scope endpoint, model empty) or of one model on it (scope model).",
        labels: &[label::UPSTREAM, label::ENDPOINT, label::SCOPE, label::MODEL],
        buckets: &[],
    },
    MetricDef {
        name: STREAM_RESCUES_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Streams that broke after tokens reached the caller: continued by prefill or replay, or failed (ended in an error).",
        labels: &[label::ROUTE, label::OUTCOME],
        buckets: &[],
    },
    MetricDef {
        name: RETRIES_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Calls retried on another endpoint, by route, the upstream that failed and its gRPC code.",
        labels: &[label::ROUTE, label::UPSTREAM, label::CODE],
        buckets: &[],
    },
    MetricDef {
        name: FALLBACKS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Calls that fell back from their route to a fallback model.",
        labels: &[label::ROUTE, label::FALLBACK],
        buckets: &[],
    },
    MetricDef {
        name: CONFIG_RELOADS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Attempts to load a changed routing file: success, or failure (the old table stays).",
        labels: &[label::RESULT],
        buckets: &[],
    },
    MetricDef {
        name: CONFIG_LAST_RELOAD_SUCCESSFUL,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "1 if the last reload of the routing file was applied, 0 if it was rejected.",
        labels: &[],
        buckets: &[],
    },
    MetricDef {
        name: CONFIG_GENERATION,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "How many routing tables this process has put in force; 1 after start-up.",
        labels: &[],
        buckets: &[],
    },
    MetricDef {
        name: CALL_PANICS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Calls that ended in a panic inside the gateway (answered INTERNAL); a bug to report.",
        labels: &[],
        buckets: &[],
    },
    MetricDef {
        name: STATE_STORE_ERRORS_TOTAL,
        kind: MetricKind::Counter,
        unit: Unit::Count,
        help: "Shared limit store (Redis) calls that timed out or failed, or were skipped while it was down; calls meanwhile follow state.redis.on_error.",
        labels: &[label::REASON],
        buckets: &[],
    },
    MetricDef {
        name: STATE_STORE_UP,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "1 while the shared limit store (Redis) answers, 0 while limits are decided without it.",
        labels: &[],
        buckets: &[],
    },
    MetricDef {
        name: BUILD_INFO,
        kind: MetricKind::Gauge,
        unit: Unit::Count,
        help: "Always 1; the version label names the running build.",
        labels: &[label::VERSION],
        buckets: &[],
    },
];

/// How often histogram samples are folded in when nobody scrapes, so
/// memory stays bounded. The recorder keeps every sample (8 bytes, in
/// blocks of 64) until it is folded in, and inter-token latency records one
/// per token: at 300k tokens/s, 5 s between folds held about 12 MiB more
/// RSS after a load; 250 ms holds well under 1 MiB, and a fold of a few
/// hundred histograms costs microseconds.
const UPKEEP_EVERY: Duration = Duration::from_millis(250);

/// The recorder could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the Prometheus recorder: {0}")]
pub struct InstallError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs the process-wide Prometheus recorder (once; later calls return
/// the same handle) and describes every metric, so `/metrics` shows help
/// text and types from the first scrape.
///
/// Only a gateway that serves `/metrics` installs it: without one, metrics
/// stay no-ops and cost nothing.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let mut builder = PrometheusBuilder::new();
    for def in CATALOG.iter().filter(|d| d.kind == MetricKind::Histogram) {
        builder =
            builder.set_buckets_for_metric(Matcher::Full(def.name.to_string()), def.buckets)?;
    }
    let handle = HANDLE.get_or_init(|| {
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "another metrics recorder is already installed; /metrics will show nothing"
            );
        }
        describe();
        metrics::gauge!(BUILD_INFO, label::VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
        let upkeep = handle.clone();
        // A thread rather than a task: the recorder outlives any one
        // runtime (tests start many).
        let spawned = std::thread::Builder::new()
            .name("llmgate-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    // Its own OS thread, not a runtime's: blocking is fine.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "no metrics upkeep thread; histograms are folded in at scrape time only");
        }
        handle
    });
    Ok(handle.clone())
}

/// Describes every metric of [`CATALOG`] to the installed recorder.
fn describe() {
    for def in CATALOG {
        match def.kind {
            MetricKind::Counter => metrics::describe_counter!(def.name, def.unit, def.help),
            MetricKind::Gauge => metrics::describe_gauge!(def.name, def.unit, def.help),
            MetricKind::Histogram => metrics::describe_histogram!(def.name, def.unit, def.help),
        }
    }
}

/// The gRPC code's canonical name, as grpcurl and the gRPC docs spell it;
/// a bounded label value.
pub(crate) fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

// === recording, for the balancer, retries and reloads ===

/// The health and load series of one endpoint, registered once when the
/// endpoint is created so the hot path only touches atomics.
#[derive(Debug, Clone)]
pub(crate) struct EndpointMetrics {
    /// [`ENDPOINT_UP`].
    up: Gauge,
    /// [`ENDPOINT_IN_FLIGHT`].
    in_flight: Gauge,
    /// [`ENGINE_REQUESTS_WAITING`], [`ENGINE_REQUESTS_RUNNING`],
    /// [`ENGINE_KV_CACHE_USAGE`].
    engine: [Gauge; 3],
    /// The upstream's name, for [`EJECTIONS_TOTAL`].
    upstream: Arc<str>,
    /// The endpoint's label, for [`EJECTIONS_TOTAL`].
    endpoint: Arc<str>,
}

impl EndpointMetrics {
    /// The series of `endpoint` (its label as the routing file names it)
    /// in `upstream`.
    pub(crate) fn new(upstream: &Arc<str>, endpoint: &Arc<str>) -> Self {
        let labels = [
            Label::new(label::UPSTREAM, SharedString::from(upstream.clone())),
            Label::new(label::ENDPOINT, SharedString::from(endpoint.clone())),
        ];
        EndpointMetrics {
            up: metrics::gauge!(ENDPOINT_UP, labels.iter()),
            in_flight: metrics::gauge!(ENDPOINT_IN_FLIGHT, labels.iter()),
            engine: [
                metrics::gauge!(ENGINE_REQUESTS_WAITING, labels.iter()),
                metrics::gauge!(ENGINE_REQUESTS_RUNNING, labels.iter()),
                metrics::gauge!(ENGINE_KV_CACHE_USAGE, labels.iter()),
            ],
            upstream: upstream.clone(),
            endpoint: endpoint.clone(),
        }
    }

    /// Publishes the engine's own load, as last scraped.
    pub(crate) fn set_engine(&self, waiting: u32, running: u32, kv_cache_usage: f64) {
        self.engine[0].set(f64::from(waiting));
        self.engine[1].set(f64::from(running));
        self.engine[2].set(kv_cache_usage);
    }

    /// Counts an ejection of the endpoint, or of `model` on it.
    pub(crate) fn ejected(&self, model: Option<&str>) {
        metrics::counter!(
            EJECTIONS_TOTAL,
            label::UPSTREAM => self.upstream.clone(),
            label::ENDPOINT => self.endpoint.clone(),
            label::SCOPE => if model.is_some() { "model" } else { "endpoint" },
            label::MODEL => model.unwrap_or("").to_string(),
        )
        .increment(1);
    }

    /// Records whether the endpoint takes calls.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    /// A call started on the endpoint.
    pub(crate) fn call_started(&self) {
        self.in_flight.increment(1.0);
    }

    /// A call on the endpoint ended (after its last token).
    pub(crate) fn call_ended(&self) {
        self.in_flight.decrement(1.0);
    }
}

/// Counts a call of `route` placed by prefix affinity: `hit` or `spill`.
pub(crate) fn prefix_affinity(route: &Arc<str>, outcome: &'static str) {
    metrics::counter!(
        PREFIX_AFFINITY_TOTAL,
        label::ROUTE => route.clone(),
        label::OUTCOME => outcome,
    )
    .increment(1);
}

/// Sets how many calls of class `priority` wait in `route`'s queue.
pub(crate) fn queue_length(route: &Arc<str>, priority: &'static str, waiting: usize) {
    metrics::gauge!(
        QUEUE_LENGTH,
        label::ROUTE => route.clone(),
        label::PRIORITY => priority,
    )
    .set(waiting as f64);
}

/// Records a wait in `route`'s queue and how it ended: `served`,
/// `timeout` or `cancelled`.
pub(crate) fn queue_wait(
    route: &Arc<str>,
    priority: &'static str,
    outcome: &'static str,
    waited: Duration,
) {
    metrics::histogram!(
        QUEUE_WAIT_SECONDS,
        label::ROUTE => route.clone(),
        label::PRIORITY => priority,
        label::OUTCOME => outcome,
    )
    .record(waited.as_secs_f64());
}

/// Counts a stream of `route` that broke mid-answer, by how it ended:
/// `prefill`, `replay` or `failed`.
pub(crate) fn stream_rescue(route: &Arc<str>, outcome: &'static str) {
    metrics::counter!(
        STREAM_RESCUES_TOTAL,
        label::ROUTE => route.clone(),
        label::OUTCOME => outcome,
    )
    .increment(1);
}

/// Counts a call retried on another endpoint after `upstream` failed it
/// with `code`.
pub(crate) fn retry(route: &Arc<str>, upstream: &Arc<str>, code: tonic::Code) {
    metrics::counter!(
        RETRIES_TOTAL,
        label::ROUTE => route.clone(),
        label::UPSTREAM => upstream.clone(),
        label::CODE => code_label(code),
    )
    .increment(1);
}

/// Counts a call of `route` that fell back to the route `fallback`.
pub(crate) fn fallback(route: &Arc<str>, fallback: &Arc<str>) {
    metrics::counter!(
        FALLBACKS_TOTAL,
        label::ROUTE => route.clone(),
        label::FALLBACK => fallback.clone(),
    )
    .increment(1);
}

/// Counts a reload attempt: `applied` when its table is now in force.
pub(crate) fn config_reload(applied: bool) {
    let result = if applied {
        RELOAD_APPLIED
    } else {
        RELOAD_REJECTED
    };
    metrics::counter!(CONFIG_RELOADS_TOTAL, label::RESULT => result).increment(1);
    metrics::gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(if applied { 1.0 } else { 0.0 });
}

/// Counts a failed (or skipped) call to the shared limit store.
pub(crate) fn state_store_error(reason: &'static str) {
    metrics::counter!(STATE_STORE_ERRORS_TOTAL, label::REASON => reason).increment(1);
}

/// Whether the shared limit store answers.
pub(crate) fn state_store_up(up: bool) {
    metrics::gauge!(STATE_STORE_UP).set(if up { 1.0 } else { 0.0 });
}

/// Counts a call that ended in a panic inside the gateway: a bug, never
/// the caller's doing, so it is alerted on apart from upstream errors.
pub(crate) fn call_panicked() {
    metrics::counter!(CALL_PANICS_TOTAL).increment(1);
}

/// Records which routing table is in force (1 for the one built at start).
pub(crate) fn config_generation(generation: u64) {
    // Exact in an f64 for any count of reloads a process will see.
    metrics::gauge!(CONFIG_GENERATION).set(generation as f64);
}
