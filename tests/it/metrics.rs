//! `/metrics` as Prometheus scrapes it: counts and histogram observations
//! after successful, failed, cancelled and timed-out calls, parsed with a
//! Prometheus text-format parser.
//!
//! The recorder is process-wide and these tests run beside others, so each
//! test routes model names of its own and reads only their series (or, for
//! the shared `unknown` label, the change it caused).

use futures_util::StreamExt;
use llmgate::internals::metrics::{
    CALL_DURATION_SECONDS, CALLS_IN_FLIGHT, CALLS_TOTAL, CATALOG, INPUT_TOKENS_TOTAL,
    INTER_TOKEN_LATENCY_SECONDS, OUTPUT_TOKENS_TOTAL, TIME_TO_FIRST_TOKEN_BUCKETS,
    TIME_TO_FIRST_TOKEN_SECONDS, UNKNOWN,
};
use prometheus_parse::{HistogramCount, Sample, Scrape, Value};
use serde_json::json;
use tonic::Code;

use crate::support::*;

/// The samples of `name` carrying every label of `labels`.
fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The sum of the counter, gauge or untyped (`_sum`, `_count`) samples of
/// `name` carrying `labels`; 0 when there are none.
fn total(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(scrape, name, labels)
        .iter()
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            ref other => panic!("{name} is not a scalar: {other:?}"),
        })
        .sum()
}

/// The buckets of the one histogram series of `name` with `labels`.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<HistogramCount> {
    let found = samples(scrape, name, labels);
    assert_eq!(
        found.len(),
        1,
        "one {name} series for {labels:?}: {found:#?}"
    );
    match &found[0].value {
        Value::Histogram(buckets) => buckets.clone(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// The cumulative count of observations `<= le`.
fn at_most(buckets: &[HistogramCount], le: f64) -> f64 {
    buckets
        .iter()
        .find(|b| b.less_than == le)
        .unwrap_or_else(|| panic!("no bucket le={le} in {buckets:?}"))
        .count
}

/// The fake upstream's answer to each prompt.
fn by_prompt(req: &Received) -> Vec<Step> {
    let prompt = req.body["messages"][0]["content"].as_str().unwrap_or("");
    let stream = req.body["stream"].as_bool().unwrap_or(false);
    match prompt {
        "ok" if stream => vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token("a").into_bytes()),
            Step::Chunk(sse_token("b").into_bytes()),
            Step::Chunk(sse_token("c").into_bytes()),
            Step::Chunk(sse_finish("stop", 5, 3).into_bytes()),
            Step::End,
        ],
        "ok" => json_reply(
            200,
            &json!({
                "model": "upstream-model",
                "choices": [{"message": {"content": "abc"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            }),
        ),
        "fail" => json_reply(500, &json!({"error": {"message": "out of memory"}})),
        "hang" => vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token("a").into_bytes()),
            Step::Hang,
        ],
        _ => vec![Step::Hang],
    }
}

#[tokio::test]
async fn a_scrape_counts_successful_failed_cancelled_and_late_calls_with_their_timings() {
    let mut upstream = FakeUpstream::start(by_prompt).await;
    let yaml = format!(
        "upstreams:
  up: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: metrics-mix
    aliases: [metrics-mix-alias]
    pools: [{{ upstream: up, model: upstream-model }}]
",
        upstream.url()
    );
    let gateway = Gateway::start_with_admin(&yaml).await;
    let mut client = gateway.client().await;

    // Three streams that finish, one unary call through the alias.
    for _ in 0..3 {
        let stream = client
            .complete_stream(request("metrics-mix", "ok"))
            .await
            .expect("stream");
        read_to_end(stream.into_inner()).await;
    }
    client
        .complete(request("metrics-mix-alias", "ok"))
        .await
        .expect("unary");
    // The upstream fails one.
    let status = client
        .complete(request("metrics-mix", "fail"))
        .await
        .expect_err("upstream 500");
    assert_eq!(status.code(), Code::Unavailable);
    // The caller cancels one after its first token.
    let mut stream = client
        .complete_stream(request("metrics-mix", "hang"))
        .await
        .expect("stream")
        .into_inner();
    stream.next().await.expect("a token").expect("a token");
    let in_flight = total(&gateway.scrape().await, CALLS_IN_FLIGHT, &[]);
    assert!(
        in_flight >= 1.0,
        "the open stream is in flight: {in_flight}"
    );
    drop(stream);
    upstream.wait_closed().await;
    // One runs out of time before the upstream answers (a raw client, so
    // only the gateway's own DEADLINE_EXCEEDED can end it).
    let (code, _) = raw_complete(gateway.addr, &request("metrics-mix", "stall"), "200m").await;
    assert_eq!(code, Code::DeadlineExceeded);
    upstream.wait_closed().await;

    let scrape = gateway.scrape().await;
    let endpoint = upstream.url();
    let series = [
        ("route", "metrics-mix"),
        ("upstream", "up"),
        ("endpoint", endpoint.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = series.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let calls = |code| total(&scrape, CALLS_TOTAL, &with(&[("code", code)]));
    assert_eq!(calls("OK"), 4.0);
    assert_eq!(calls("UNAVAILABLE"), 1.0);
    assert_eq!(calls("CANCELLED"), 1.0);
    assert_eq!(calls("DEADLINE_EXCEEDED"), 1.0);
    assert_eq!(
        total(
            &scrape,
            CALLS_TOTAL,
            &with(&[("model", "metrics-mix-alias"), ("code", "OK")])
        ),
        1.0,
        "an alias is its own model label under its route"
    );

    // Every call is timed, under the code it ended with.
    let durations = |code| {
        total(
            &scrape,
            &format!("{CALL_DURATION_SECONDS}_count"),
            &with(&[("code", code)]),
        )
    };
    assert_eq!(durations("OK"), 4.0);
    assert_eq!(durations("CANCELLED"), 1.0);
    let late = buckets(
        &scrape,
        CALL_DURATION_SECONDS,
        &with(&[("model", "metrics-mix"), ("code", "DEADLINE_EXCEEDED")]),
    );
    assert_eq!(at_most(&late, 0.1), 0.0, "it waited for its deadline");
    assert_eq!(at_most(&late, f64::INFINITY), 1.0);
    let late_seconds = total(
        &scrape,
        &format!("{CALL_DURATION_SECONDS}_sum"),
        &with(&[("code", "DEADLINE_EXCEEDED")]),
    );
    assert!(late_seconds >= 0.18, "{late_seconds}");

    // Time to first token: the four streams that produced one (unary calls
    // have none), in buckets fit for LLM latencies.
    let ttft = buckets(
        &scrape,
        TIME_TO_FIRST_TOKEN_SECONDS,
        &with(&[("model", "metrics-mix")]),
    );
    let bounds: Vec<f64> = ttft.iter().map(|b| b.less_than).collect();
    let mut expected = TIME_TO_FIRST_TOKEN_BUCKETS.to_vec();
    expected.push(f64::INFINITY);
    assert_eq!(bounds, expected);
    assert_eq!(at_most(&ttft, f64::INFINITY), 4.0);
    assert!(
        ttft.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative: {ttft:?}"
    );
    // Two gaps in each finished three-token stream; none in the cancelled
    // stream's single token.
    assert_eq!(
        total(
            &scrape,
            &format!("{INTER_TOKEN_LATENCY_SECONDS}_count"),
            &series
        ),
        6.0
    );
    // Tokens as the upstream reported them, for the four finished calls.
    assert_eq!(total(&scrape, INPUT_TOKENS_TOTAL, &series), 20.0);
    assert_eq!(total(&scrape, OUTPUT_TOKENS_TOTAL, &series), 12.0);
}

#[tokio::test]
async fn every_exported_metric_carries_its_help_text() {
    let gateway = Gateway::start_with_admin(
        "upstreams:\n  sim: { kind: sim, sim: { ttft: 1ms, tokens_per_second: 0, output_tokens: 3 } }\nroutes:\n  - model: metrics-described\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let stream = gateway
        .client()
        .await
        .complete_stream(request("metrics-described", "hi"))
        .await
        .expect("stream");
    read_to_end(stream.into_inner()).await;
    let scrape = gateway.scrape().await;
    let mut seen = 0;
    for def in CATALOG {
        if samples(&scrape, def.name, &[]).is_empty() {
            continue;
        }
        seen += 1;
        assert_eq!(
            scrape.docs.get(def.name).map(String::as_str),
            Some(def.help),
            "{}",
            def.name
        );
    }
    // At least every per-call series, the in-flight gauge and build info.
    assert!(seen >= 8, "only {seen} metrics exported");
}

#[tokio::test]
async fn unknown_models_count_under_one_bounded_label() {
    let gateway = Gateway::start_with_admin(
        "upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: metrics-known\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let not_found = [
        ("model", UNKNOWN),
        ("route", UNKNOWN),
        ("code", "NOT_FOUND"),
    ];
    let before = total(&gateway.scrape().await, CALLS_TOTAL, &not_found);
    let mut client = gateway.client().await;
    let names: Vec<String> = (0..3)
        .map(|i| format!("made-up-model-{}-{i}", std::process::id()))
        .collect();
    for name in &names {
        let status = client
            .complete(request(name, "hi"))
            .await
            .expect_err("not routed");
        assert_eq!(status.code(), Code::NotFound);
    }
    let scrape = gateway.scrape().await;
    let after = total(&scrape, CALLS_TOTAL, &not_found);
    // Other tests in this process may add their own unknown calls.
    assert!(after - before >= 3.0, "before {before}, after {after}");
    for sample in &scrape.samples {
        for value in sample.labels.values() {
            assert!(
                !names.iter().any(|name| value.contains(name.as_str())),
                "a caller's model name became a label: {sample:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_refused_request_is_counted_as_invalid_argument_under_its_route() {
    let gateway = Gateway::start_with_admin(
        "upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: metrics-refused\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let mut bad = request("metrics-refused", "hi");
    bad.max_tokens = -1;
    let status = gateway
        .client()
        .await
        .complete_stream(bad)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    let scrape = gateway.scrape().await;
    assert_eq!(
        total(
            &scrape,
            CALLS_TOTAL,
            &[
                ("model", "metrics-refused"),
                ("route", "metrics-refused"),
                ("upstream", UNKNOWN),
                ("code", "INVALID_ARGUMENT"),
            ]
        ),
        1.0
    );
}

#[tokio::test]
async fn the_admin_listener_serves_probes_and_the_prometheus_text_format() {
    let gateway = Gateway::start_with_admin(
        "upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: metrics-admin\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let healthz = gateway.admin_get("/healthz").await;
    assert_eq!(healthz.status, 200);
    let readyz = gateway.admin_get("/readyz").await;
    assert_eq!(readyz.status, 200, "ready once the table is loaded");
    let metrics = gateway.admin_get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let content_type = metrics
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(gateway.admin_get("/nothing-here").await.status, 404);
}
