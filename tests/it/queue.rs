//! A route's queue seen from outside: with the only endpoint at
//! `max_in_flight: 1` and its calls held open, further calls wait in line
//! and are served by class as the slot frees, time out with a retry-after,
//! leave when their caller does, and are shed past `max_len`.

use std::sync::Arc;
use std::time::Duration;

use llmgate::proto::CompleteRequest;
use llmgate::proto::llm_service_client::LlmServiceClient;
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::support::*;

/// An upstream that holds each call until the test adds a permit to the
/// returned gate, then answers it.
async fn held_upstream() -> (FakeUpstream, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let upstream = FakeUpstream::start(move |_| {
        let mut steps = vec![Step::Gate(held.clone())];
        steps.extend(paris_reply());
        steps
    })
    .await;
    (upstream, gate)
}

/// A routing file with route `model` on `url` at `max_in_flight: 1`, with
/// `queue` (the route's `queue:` line) and the keys `low`, `high` and
/// `picker` (which may set its class by header).
fn routing(model: &str, url: &str, queue: &str) -> String {
    format!(
        "upstreams:
  up: {{ kind: openai, endpoints: [{url}], max_in_flight: 1 }}
routes:
  - model: {model}
    pools: [{{ upstream: up }}]
    {queue}
auth:
  keys:
    - {{ name: low, env: KEY_LOW, models: ['*'], priority: low }}
    - {{ name: high, env: KEY_HIGH, models: ['*'], priority: high }}
    - {{ name: picker, env: KEY_PICKER, models: ['*'], priority: low, priority_header: true }}
"
    )
}

fn keys(name: &str) -> Option<String> {
    match name {
        "KEY_LOW" => Some("sk-low".into()),
        "KEY_HIGH" => Some("sk-high".into()),
        "KEY_PICKER" => Some("sk-picker".into()),
        _ => None,
    }
}

/// A gRPC request for `model` carrying `prompt`, `key`, and any
/// `x-llmgate-priority`.
fn call(
    model: &str,
    prompt: &str,
    key: &str,
    priority: Option<&str>,
) -> tonic::Request<CompleteRequest> {
    let mut req = with_timeout(request(model, prompt), Duration::from_secs(60));
    let metadata = req.metadata_mut();
    metadata.insert(
        "authorization",
        format!("Bearer {key}").parse().expect("ascii"),
    );
    if let Some(priority) = priority {
        metadata.insert("x-llmgate-priority", priority.parse().expect("ascii"));
    }
    req
}

/// Starts `req` on its own connection.
fn spawn_call(
    gateway: &Gateway,
    req: tonic::Request<CompleteRequest>,
) -> tokio::task::JoinHandle<Result<String, tonic::Status>> {
    let url = format!("http://{}", gateway.addr);
    tokio::spawn(async move {
        let mut client = LlmServiceClient::connect(url)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let answer = client.complete(req).await?.into_inner();
        Ok(answer.text)
    })
}

/// `POST path` (either HTTP front: both read `authorization: Bearer`) as
/// the picker key, asking for `high`.
async fn http_call(
    addr: std::net::SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> crate::http::Answer {
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-picker")
        .header("x-llmgate-priority", "high")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .expect("request");
    // It waits in the queue while the test lines up the other calls, which
    // on a loaded machine can take longer than one PATIENCE.
    crate::http::send_within(request, Duration::from_secs(60)).await
}

/// Calls of `route` and class `priority` waiting, as `/metrics` says.
async fn queued(gateway: &Gateway, route: &str, priority: &str) -> f64 {
    gateway
        .scrape()
        .await
        .samples
        .into_iter()
        .find(|s| {
            s.metric == "llmgate_queue_length"
                && s.labels.get("route") == Some(route)
                && s.labels.get("priority") == Some(priority)
        })
        .map_or(0.0, |s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            _ => f64::NAN,
        })
}

/// Waits until `route` has `n` calls of `priority` waiting.
async fn until_queued(gateway: &Gateway, route: &str, priority: &str, n: f64) {
    tokio::time::timeout(PATIENCE, async {
        while queued(gateway, route, priority).await != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} {priority} calls of {route} never waited"));
}

/// Waits until the upstream has received `n` calls.
async fn until_received(upstream: &FakeUpstream, n: usize) {
    tokio::time::timeout(PATIENCE, async {
        while upstream.count() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the upstream never got {n} calls"));
}

/// The prompts the upstream received, in order.
fn prompts(upstream: &FakeUpstream) -> Vec<String> {
    upstream
        .received()
        .iter()
        .map(|r| {
            r.body["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// A gateway (with its admin port, for the queue gauges) whose route for
/// `model` queues calls to `upstream` in strict class order: no
/// promotion within a test's time.
async fn ordered_queue_gateway(model: &str, upstream: &FakeUpstream) -> Gateway {
    Gateway::start_with_admin_env(
        &routing(
            model,
            &upstream.url(),
            "queue: { max_len: 8, timeout: 30s, promote_after: 1h }",
        ),
        &keys,
    )
    .await
}

/// Waits for every call in `handles` and checks each was answered.
async fn all_answered<const N: usize>(
    handles: [tokio::task::JoinHandle<Result<String, tonic::Status>>; N],
) {
    for handle in handles {
        let answer = handle.await.expect("the call's task ran");
        assert_eq!(
            answer.as_deref().map_err(|s| s.message().to_string()),
            Ok("Paris.")
        );
    }
}

#[tokio::test]
async fn queued_calls_are_served_by_class_as_the_slot_frees_on_both_fronts() {
    let (upstream, gate) = held_upstream().await;
    let model = "queue-order";
    let gateway = ordered_queue_gateway(model, &upstream).await;
    let holder = spawn_call(&gateway, call(model, "holder", "sk-high", None));
    until_received(&upstream, 1).await;
    // Arrivals, oldest first: low, a picker asking low by default, a
    // picker asking high over HTTP, then a high key.
    let low = spawn_call(&gateway, call(model, "low", "sk-low", None));
    until_queued(&gateway, model, "low", 1.0).await;
    let picker_low = spawn_call(&gateway, call(model, "picker-default", "sk-picker", None));
    until_queued(&gateway, model, "low", 2.0).await;
    let http_call = tokio::spawn(http_call(
        gateway.http_addr,
        "/v1/chat/completions",
        json!({"model": model, "messages": [{"role": "user", "content": "picker-high"}]}),
    ));
    until_queued(&gateway, model, "high", 1.0).await;
    // A low key asking for high without permission stays low.
    let sneaky = spawn_call(&gateway, call(model, "sneaky", "sk-low", Some("high")));
    until_queued(&gateway, model, "low", 3.0).await;
    let picker_grpc = spawn_call(
        &gateway,
        call(model, "picker-grpc-high", "sk-picker", Some("high")),
    );
    until_queued(&gateway, model, "high", 2.0).await;
    let high = spawn_call(&gateway, call(model, "high", "sk-high", None));
    until_queued(&gateway, model, "high", 3.0).await;
    gate.add_permits(16);
    all_answered([holder, low, picker_low, sneaky, picker_grpc, high]).await;
    let http_answer = http_call.await.expect("the HTTP call's task ran");
    assert_eq!(http_answer.status, 200);
    assert_eq!(
        prompts(&upstream),
        [
            "holder",
            "picker-high",
            "picker-grpc-high",
            "high",
            "low",
            "picker-default",
            "sneaky"
        ]
    );
    assert_eq!(queued(&gateway, model, "low").await, 0.0);
    assert_eq!(queued(&gateway, model, "high").await, 0.0);
}

/// The Messages front reads `x-llmgate-priority` as the OpenAI front does:
/// a picker key asking for `high` there is queued, and served, ahead of a
/// low call that arrived first.
#[tokio::test]
async fn a_messages_call_is_queued_in_the_class_its_header_asks_for() {
    let (upstream, gate) = held_upstream().await;
    let model = "queue-messages";
    let gateway = ordered_queue_gateway(model, &upstream).await;
    let holder = spawn_call(&gateway, call(model, "holder", "sk-high", None));
    until_received(&upstream, 1).await;
    let low = spawn_call(&gateway, call(model, "low", "sk-low", None));
    until_queued(&gateway, model, "low", 1.0).await;
    let messages_call = tokio::spawn(http_call(
        gateway.http_addr,
        "/v1/messages",
        json!({
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "messages-high"}]
        }),
    ));
    until_queued(&gateway, model, "high", 1.0).await;
    gate.add_permits(16);
    all_answered([holder, low]).await;
    let messages_answer = messages_call.await.expect("the Messages call's task ran");
    assert_eq!(messages_answer.status, 200, "{:?}", messages_answer.body);
    assert_eq!(prompts(&upstream), ["holder", "messages-high", "low"]);
    assert_eq!(queued(&gateway, model, "low").await, 0.0);
    assert_eq!(queued(&gateway, model, "high").await, 0.0);
}

#[tokio::test]
async fn a_call_that_waits_past_queue_timeout_gets_resource_exhausted_with_retry_after() {
    let (upstream, gate) = held_upstream().await;
    let model = "queue-timeout";
    let gateway = Gateway::start_with_admin_env(
        &routing(
            model,
            &upstream.url(),
            "queue: { max_len: 8, timeout: 300ms }",
        ),
        &keys,
    )
    .await;
    let holder = spawn_call(&gateway, call(model, "holder", "sk-high", None));
    until_received(&upstream, 1).await;
    let started = tokio::time::Instant::now();
    let status = gateway
        .client()
        .await
        .complete(call(model, "late", "sk-high", None))
        .await
        .expect_err("the slot never freed");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["route 'queue-timeout' is at capacity", "retry after 1s"],
    );
    assert_eq!(
        status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        upstream.count(),
        1,
        "the timed-out call never reached the upstream"
    );
    assert_eq!(queued(&gateway, model, "high").await, 0.0);
    gate.add_permits(1);
    assert!(holder.await.expect("task ran").is_ok());
}

#[tokio::test]
async fn a_caller_that_leaves_the_queue_is_never_sent_upstream() {
    let (upstream, gate) = held_upstream().await;
    let model = "queue-cancel";
    let gateway = Gateway::start_with_admin_env(
        &routing(
            model,
            &upstream.url(),
            "queue: { max_len: 8, timeout: 30s }",
        ),
        &keys,
    )
    .await;
    let holder = spawn_call(&gateway, call(model, "holder", "sk-high", None));
    until_received(&upstream, 1).await;
    let leaver = spawn_call(&gateway, call(model, "leaver", "sk-low", None));
    until_queued(&gateway, model, "low", 1.0).await;
    leaver.abort();
    until_queued(&gateway, model, "low", 0.0).await;
    gate.add_permits(16);
    assert!(holder.await.expect("task ran").is_ok());
    let after = gateway
        .client()
        .await
        .complete(request_as(model, "after", "sk-low"))
        .await;
    assert_eq!(
        after
            .map(|a| a.into_inner().text)
            .map_err(|s| s.to_string()),
        Ok("Paris.".to_string())
    );
    assert_eq!(prompts(&upstream), ["holder", "after"]);
}

#[tokio::test]
async fn past_max_len_a_call_is_shed_at_once_as_without_a_queue() {
    let (upstream, gate) = held_upstream().await;
    let model = "queue-full";
    let gateway = Gateway::start_with_admin_env(
        &routing(
            model,
            &upstream.url(),
            "queue: { max_len: 1, timeout: 30s }",
        ),
        &keys,
    )
    .await;
    let holder = spawn_call(&gateway, call(model, "holder", "sk-high", None));
    until_received(&upstream, 1).await;
    let waiter = spawn_call(&gateway, call(model, "waiter", "sk-low", None));
    until_queued(&gateway, model, "low", 1.0).await;
    let started = tokio::time::Instant::now();
    let status = gateway
        .client()
        .await
        .complete(call(model, "shed", "sk-high", None))
        .await
        .expect_err("the queue is full");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_status(
        &status,
        Code::Unavailable,
        &["queue.max_len", "max_in_flight"],
    );
    gate.add_permits(16);
    assert!(holder.await.expect("task ran").is_ok());
    assert!(waiter.await.expect("task ran").is_ok());
    assert_eq!(prompts(&upstream), ["holder", "waiter"]);
}

/// A unary gRPC request for `model` with `key`.
fn request_as(model: &str, prompt: &str, key: &str) -> tonic::Request<CompleteRequest> {
    call(model, prompt, key, None)
}

#[tokio::test]
async fn a_queued_route_sends_a_call_to_a_pool_with_room_before_waiting() {
    let (busy, gate) = held_upstream().await;
    let free = FakeUpstream::start(|_| paris_reply()).await;
    let model = "queue-spill";
    let gateway = Gateway::start(&format!(
        "upstreams:
  busy: {{ kind: openai, endpoints: [{}], max_in_flight: 1 }}
  free: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: {model}
    pools: [{{ upstream: busy }}, {{ upstream: free }}]
    retry: {{ attempts: 1 }}
    queue: {{ max_len: 8, timeout: 30s }}
",
        busy.url(),
        free.url()
    ))
    .await;
    // Calls land on either pool by weight; the first on `busy` stays there.
    let mut holders = Vec::new();
    for _ in 0..64 {
        if busy.count() > 0 {
            break;
        }
        let holder = spawn_call(&gateway, with_timeout(request(model, "holder"), PATIENCE));
        tokio::time::timeout(PATIENCE, async {
            while busy.count() + free.count() < holders.len() + 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the call reached a pool");
        holders.push(holder);
    }
    assert_eq!(busy.count(), 1, "no call landed on the busy pool");
    let before = free.count();
    // Half of these pick the busy pool first; each must go to the free one
    // at once rather than wait for the held slot.
    for i in 0..10 {
        let answer = gateway
            .client()
            .await
            .complete(with_timeout(
                request(model, "spill"),
                Duration::from_secs(5),
            ))
            .await;
        assert!(answer.is_ok(), "call {i}: {answer:?}");
    }
    assert_eq!(free.count(), before + 10);
    assert_eq!(busy.count(), 1);
    gate.add_permits(1);
    for holder in holders {
        assert!(holder.await.expect("task ran").is_ok());
    }
}

#[tokio::test]
async fn a_pool_that_is_down_fails_fast_rather_than_queueing() {
    // Nothing listens on port 1: every connection is refused.
    let model = "queue-down";
    let gateway = Gateway::start(&format!(
        "upstreams:
  gone: {{ kind: openai, endpoints: ['http://127.0.0.1:1'], max_in_flight: 1 }}
routes:
  - model: {model}
    pools: [{{ upstream: gone }}]
    queue: {{ max_len: 8, timeout: 30s }}
"
    ))
    .await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let status = gateway
            .client()
            .await
            .complete(with_timeout(request(model, "hi"), Duration::from_secs(20)))
            .await
            .expect_err("nothing serves the model");
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a broken pool held the call {:?}",
            started.elapsed()
        );
    }
}
