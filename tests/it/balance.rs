//! Per-call balancing and resilience, seen from one client connection:
//! weights, P2C, ejection and readmission, DNS discovery, retries and
//! fallbacks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use llmgate::proto::ListModelsRequest;
use serde_json::json;
use tonic::Code;

use crate::support::*;

/// A fast upstream whose answers name it.
async fn named(name: &'static str) -> FakeUpstream {
    FakeUpstream::start(move |_| {
        json_reply(
            200,
            &json!({"model": name, "choices": [{"message": {"content": name}, "finish_reason": "stop"}]}),
        )
    })
    .await
}

/// Runs `calls` unary calls over one connection, `concurrency` at a time,
/// and counts answers by text. Panics on any failed call.
async fn spread(
    gateway: &Gateway,
    model: &str,
    calls: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let client = gateway.client().await;
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let mut client = client.clone();
            let counts = counts.clone();
            let model = model.to_string();
            tokio::spawn(async move {
                for _ in (worker..calls).step_by(concurrency) {
                    let answer = client
                        .complete(request(&model, "hi"))
                        .await
                        .unwrap_or_else(|status| panic!("a call failed: {status:?}"))
                        .into_inner();
                    *counts.lock().expect("lock").entry(answer.text).or_insert(0) += 1;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    counts.lock().expect("lock").clone()
}

#[tokio::test]
async fn thousands_of_calls_on_one_connection_follow_the_pool_weights() {
    let gateway = Gateway::start(
        "upstreams:
  fast: { kind: sim, sim: { ttft: 0s, tokens_per_second: 0, output_tokens: 1 } }
routes:
  - model: m
    pools:
      - { upstream: fast, weight: 5, model: five }
      - { upstream: fast, weight: 3, model: three }
      - { upstream: fast, weight: 2, model: two }
",
    )
    .await;
    let mut client = gateway.client().await;
    let mut served: HashMap<String, u32> = HashMap::new();
    let calls = 4000;
    for _ in 0..calls {
        let answer = client
            .complete(request("m", "hi"))
            .await
            .expect("call")
            .into_inner();
        *served.entry(answer.model).or_default() += 1;
    }
    for (model, weight) in [("five", 0.5), ("three", 0.3), ("two", 0.2)] {
        let share = f64::from(served.get(model).copied().unwrap_or(0)) / f64::from(calls);
        // ±3 points is over four standard deviations at 4,000 calls.
        assert!(
            (share - weight).abs() < 0.03,
            "pool {model}: {share:.3} of calls, weight {weight}: {served:?}"
        );
    }
}

#[tokio::test]
async fn p2c_spreads_calls_evenly_over_equal_endpoints() {
    let upstreams = [
        named("e1").await,
        named("e2").await,
        named("e3").await,
        named("e4").await,
    ];
    let urls: Vec<String> = upstreams.iter().map(FakeUpstream::url).collect();
    let gateway = Gateway::start(&format!(
        "upstreams:\n  pool: {{ kind: openai, endpoints: [{}] }}\nroutes:\n  - model: m\n    pools: [{{ upstream: pool }}]\n",
        urls.join(", ")
    ))
    .await;
    let counts = spread(&gateway, "m", 2000, 16).await;
    for name in ["e1", "e2", "e3", "e4"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (300..=700).contains(&n),
            "{name} served {n} of 2000: {counts:?}"
        );
    }
}

#[tokio::test]
async fn an_endpoint_ten_times_slower_receives_far_fewer_calls() {
    let slow_reply = |name: &'static str, delay: Duration| {
        move |_: &Received| {
            let mut steps = vec![Step::Delay(delay)];
            steps.extend(json_reply(
                200,
                &json!({"choices": [{"message": {"content": name}}]}),
            ));
            steps
        }
    };
    let fast = FakeUpstream::start(slow_reply("fast", Duration::from_millis(10))).await;
    let slow = FakeUpstream::start(slow_reply("slow", Duration::from_millis(100))).await;
    let gateway = Gateway::start(&format!(
        "upstreams:\n  pool: {{ kind: openai, endpoints: [{}, {}] }}\nroutes:\n  - model: m\n    pools: [{{ upstream: pool }}]\n",
        fast.url(),
        slow.url()
    ))
    .await;
    let counts = spread(&gateway, "m", 300, 8).await;
    let (f, s) = (
        counts.get("fast").copied().unwrap_or(0),
        counts.get("slow").copied().unwrap_or(0),
    );
    assert!(
        s * 3 < f,
        "slow served {s}, fast {f}: load should steer calls away from it"
    );
}

#[tokio::test]
async fn a_killed_endpoint_fails_no_call_is_ejected_and_comes_back() {
    let a = named("a").await;
    let b = named("b").await;
    let a_addr = a.addr;
    let gateway = Gateway::start(&format!(
        "upstreams:
  pool:
    kind: openai
    endpoints: [{}, {}]
    outlier: {{ consecutive_failures: 2, base_ejection: 300ms }}
routes:
  - model: m
    pools: [{{ upstream: pool }}]
",
        a.url(),
        b.url()
    ))
    .await;
    let counts = spread(&gateway, "m", 50, 1).await;
    assert!(counts.get("a").copied().unwrap_or(0) > 0, "{counts:?}");

    drop(a); // killed: its connections reset, its port refuses
    let a_url = format!("http://{a_addr}/");
    let mut client = gateway.client().await;
    let mut calls = 0;
    // Each failure on it is retried on b; after a recent failure the
    // balancer prefers b, and once the penalty fades a call probes a again:
    // two failures in a row eject it. No call may fail meanwhile.
    tokio::time::timeout(PATIENCE, async {
        while endpoint_state(&gateway, &a_url).await != "ejected" {
            let answer = client
                .complete(request("m", "hi"))
                .await
                .expect("no call fails while an endpoint dies")
                .into_inner();
            assert_eq!(answer.text, "b");
            calls += 1;
        }
    })
    .await
    .expect("the dead endpoint is ejected");
    assert!(calls > 0);

    // Back on the same port: after its ejection ends, a probe call succeeds
    // and it serves again.
    let a = FakeUpstream::start_at(a_addr, |_| {
        json_reply(200, &json!({"choices": [{"message": {"content": "a"}}]}))
    })
    .await;
    tokio::time::timeout(PATIENCE, async {
        while a.count() == 0 {
            client
                .complete(request("m", "hi"))
                .await
                .expect("no call fails");
        }
    })
    .await
    .expect("the endpoint is readmitted");
    assert_eq!(endpoint_state(&gateway, &a_url).await, "up");
}

/// The state ListModels reports for the endpoint at `url`.
async fn endpoint_state(gateway: &Gateway, url: &str) -> String {
    let models = gateway
        .client()
        .await
        .list_models(ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .models;
    models
        .iter()
        .flat_map(|m| &m.pools)
        .flat_map(|p| &p.endpoints)
        .find(|e| e.url == url)
        .map(|e| e.state.clone())
        .unwrap_or_else(|| panic!("no endpoint {url} in {models:?}"))
}

/// A resolver whose answer the test sets.
#[derive(Clone, Default)]
struct TestResolver(Arc<Mutex<Vec<SocketAddr>>>);

impl llmgate::Resolve for TestResolver {
    fn resolve(
        &self,
        _host: &str,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    {
        let answer = self.0.lock().expect("lock").clone();
        Box::pin(async move { Ok(answer) })
    }
}

#[tokio::test]
async fn a_dns_name_whose_answer_changes_moves_traffic_to_the_new_addresses() {
    let a = named("a").await;
    let b = named("b").await;
    let resolver = TestResolver::default();
    *resolver.0.lock().expect("lock") = vec![a.addr];
    let config = llmgate::config::Config::parse(
        "upstreams:
  pool:
    kind: openai
    discover: { dns: vllm.test.svc:8000, interval: 20ms }
routes:
  - model: m
    pools: [{ upstream: pool }]
",
        "test.yaml",
        &|_| None,
    )
    .expect("valid");
    let connectors = llmgate::Connectors::with_resolver(Arc::new(resolver.clone()));
    let gateway = Gateway::start_with_connectors(config, connectors).await;
    let mut client = gateway.client().await;
    // The first resolution may not have landed yet: calls fail fast until it
    // does, never hang.
    tokio::time::timeout(PATIENCE, async {
        while client.complete(request("m", "hi")).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first answer is used");
    assert_eq!(spread(&gateway, "m", 20, 2).await.get("a"), Some(&20));

    *resolver.0.lock().expect("lock") = vec![b.addr];
    tokio::time::timeout(PATIENCE, async {
        while b.count() == 0 {
            let _ = client.complete(request("m", "hi")).await;
        }
    })
    .await
    .expect("traffic moves to the new address");
    let counts = spread(&gateway, "m", 20, 2).await;
    assert_eq!(
        counts.get("b"),
        Some(&20),
        "the old address is gone: {counts:?}"
    );
}

#[tokio::test]
async fn every_pool_down_is_unavailable_long_before_the_deadline() {
    let closed = |listener: std::net::TcpListener| listener.local_addr().expect("addr");
    let dead1 = closed(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let dead2 = closed(std::net::TcpListener::bind("127.0.0.1:0").expect("bind"));
    let gateway = Gateway::start(&format!(
        "upstreams:
  one: {{ kind: openai, endpoints: [http://{dead1}] }}
  two: {{ kind: openai, endpoints: [http://{dead2}] }}
routes:
  - model: m
    pools: [{{ upstream: one }}, {{ upstream: two }}]
"
    ))
    .await;
    let mut client = gateway.client().await;
    for _ in 0..5 {
        let status = client
            .complete(with_timeout(request("m", "hi"), Duration::from_secs(60)))
            .await
            .expect_err("nothing can serve");
        // Waiting for the deadline would have been DEADLINE_EXCEEDED.
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    }
}

#[tokio::test]
async fn fallback_serves_unary_calls_and_streams_that_failed_before_their_first_token() {
    let primary = FakeUpstream::start(|received| {
        if received.body["stream"] == true {
            // Headers, then an error before any token.
            vec![
                Step::Head(200, "text/event-stream"),
                Step::Chunk(b"data: {\"error\": {\"message\": \"engine died\"}}\n\n".to_vec()),
                Step::End,
            ]
        } else {
            json_reply(503, &json!({"error": {"message": "overloaded"}}))
        }
    })
    .await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  primary: {{ kind: openai, endpoints: [{}] }}
  backup: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 3 }} }}
routes:
  - model: big
    fallback: [small]
    retry: {{ attempts: 2 }}
    pools: [{{ upstream: primary }}]
  - model: small
    pools: [{{ upstream: backup }}]
",
        primary.url()
    ))
    .await;
    let mut client = gateway.client().await;
    let answer = client
        .complete(request("big", "hi"))
        .await
        .expect("served by the fallback")
        .into_inner();
    assert_eq!(
        answer.model, "small",
        "the response names the model that served"
    );
    assert_eq!(answer.text, "The gateway routes");

    let mut stream = client
        .complete_stream(request("big", "hi"))
        .await
        .expect("served by the fallback")
        .into_inner();
    let mut text = String::new();
    let mut model = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        text.push_str(&chunk.token);
        model = chunk.model;
    }
    assert_eq!(text, "The gateway routes");
    assert_eq!(model, "small");
    assert_eq!(primary.count(), 4, "two attempts each on the primary first");
}

#[tokio::test]
async fn a_stream_cut_where_no_upstream_continues_answers_ends_in_an_error_never_a_second_answer() {
    let primary = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}{}", sse_token("half"), sse_token(" an")).into_bytes()),
            Step::Cut,
        ]
    })
    .await;
    let backup = named("backup").await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  primary: {{ kind: openai, endpoints: [{}], continuation: none }}
  backup: {{ kind: openai, endpoints: [{}], continuation: none }}
routes:
  - model: m
    fallback: [b]
    pools: [{{ upstream: primary }}]
  - model: b
    pools: [{{ upstream: backup }}]
",
        primary.url(),
        backup.url()
    ))
    .await;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("the stream starts")
        .into_inner();
    let mut tokens = Vec::new();
    let status = loop {
        match stream.next().await.expect("an error ends the stream") {
            Ok(chunk) => tokens.push(chunk.token),
            Err(status) => break status,
        }
    };
    assert_eq!(tokens, ["half", " an"]);
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("could not be continued"),
        "{}",
        status.message()
    );
    assert_eq!(primary.count(), 1, "never replayed");
    assert_eq!(
        backup.count(),
        0,
        "never asked for a fresh answer to splice after the first one's tokens"
    );
}

#[tokio::test]
async fn a_request_the_model_refused_is_not_retried_but_too_long_goes_to_the_bigger_model() {
    let small = FakeUpstream::start(|received| {
        let prompt = received.body["messages"][0]["content"].as_str().unwrap_or_default();
        if prompt == "long" {
            json_reply(
                400,
                &json!({"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."}),
            )
        } else {
            json_reply(400, &json!({"object": "error", "message": "temperature must be positive"}))
        }
    })
    .await;
    let big = named("big").await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  small: {{ kind: openai, endpoints: [{}] }}
  big: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: s
    context_fallback: l
    fallback: [l]
    pools: [{{ upstream: small }}]
  - model: l
    pools: [{{ upstream: big }}]
",
        small.url(),
        big.url()
    ))
    .await;
    let mut client = gateway.client().await;
    let status = client
        .complete(request("s", "short"))
        .await
        .expect_err("the model refused the request");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(small.count(), 1, "a refused request is not retried");
    assert_eq!(big.count(), 0, "nor sent to a fallback");

    let answer = client
        .complete(request("s", "long"))
        .await
        .expect("the larger model serves it")
        .into_inner();
    assert_eq!(answer.text, "big");
    assert_eq!(small.count(), 2);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_deadline_is_not_waited_for() {
    let limited = FakeUpstream::start(|_| {
        vec![
            Step::Head(429, "application/json"),
            Step::Chunk(br#"{"error": {"message": "slow down"}}"#.to_vec()),
            Step::End,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&limited.url(), "")).await;
    let status = gateway
        .client()
        .await
        .complete(with_timeout(request("m", "hi"), Duration::from_secs(30)))
        .await
        .expect_err("rate limited");
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_full_endpoint_sends_calls_elsewhere_and_a_full_pool_fails_fast() {
    let hanging =
        FakeUpstream::start(|_| vec![Step::Head(200, "text/event-stream"), Step::Hang]).await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  pool: {{ kind: openai, endpoints: [{}], max_in_flight: 1 }}
routes:
  - model: m
    pools: [{{ upstream: pool }}]
",
        hanging.url()
    ))
    .await;
    let mut client = gateway.client().await;
    let mut first = client.clone();
    let held = tokio::spawn(async move { first.complete_stream(request("m", "hi")).await });
    tokio::time::timeout(PATIENCE, async {
        while hanging.count() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the first call reaches the endpoint");
    let status = client
        .complete(with_timeout(request("m", "hi"), Duration::from_secs(60)))
        .await
        .expect_err("the only endpoint is full");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("max_in_flight"),
        "{}",
        status.message()
    );
    assert_eq!(hanging.count(), 1, "the full endpoint got no second call");
    held.abort();
}

#[tokio::test]
async fn a_failing_health_check_takes_an_endpoint_out() {
    let sick = FakeUpstream::start(|received| {
        if received.path == "/health" {
            json_reply(503, &json!({"status": "loading"}))
        } else {
            json_reply(200, &json!({"choices": [{"message": {"content": "sick"}}]}))
        }
    })
    .await;
    let well = named("well").await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  pool:
    kind: openai
    endpoints: [{}, {}]
    health_check: {{ interval: 20ms, unhealthy_after: 1 }}
routes:
  - model: m
    pools: [{{ upstream: pool }}]
",
        sick.url(),
        well.url()
    ))
    .await;
    let sick_url = format!("{}/", sick.url());
    tokio::time::timeout(PATIENCE, async {
        while endpoint_state(&gateway, &sick_url).await != "unhealthy" {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the health check marks it");
    let counts = spread(&gateway, "m", 50, 2).await;
    assert_eq!(counts.get("well"), Some(&50), "{counts:?}");
}
