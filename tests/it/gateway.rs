//! The gateway as a caller sees it: the contract, request validation,
//! routing by model, the simulator, and shutdown.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use llmgate::proto::{ListModelsRequest, Message};
use serde_json::json;
use tonic::Code;

use crate::support::*;

/// The client generated from the original, unextended `llm.v1` proto.
mod seed {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    include!(concat!(env!("OUT_DIR"), "/seed/llm.v1.rs"));
}

#[tokio::test]
async fn the_shipped_routing_file_serves_the_demo_model_end_to_end() {
    let mut config = llmgate::config::Config::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/routing.yaml"
    )))
    .expect("shipped routing.yaml is valid");
    config.listen.grpc = "127.0.0.1:0".parse().expect("addr");
    let gateway = Gateway::start_config(config).await;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("demo", "Say hello"))
        .await
        .expect("stream starts")
        .into_inner();
    let mut tokens = 0;
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        tokens += usize::from(!chunk.token.is_empty());
        last = Some(chunk);
    }
    let last = last.expect("final chunk");
    assert!(last.done);
    assert_eq!(last.finish_reason, "stop");
    assert_eq!(last.usage.map(|u| u.output_tokens), Some(48));
    assert_eq!(tokens, 48);
}

#[tokio::test]
async fn a_client_generated_from_the_original_proto_works_unchanged() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut client = seed::llm_service_client::LlmServiceClient::connect(gateway.url())
        .await
        .expect("connect");
    let request = || seed::CompleteRequest {
        model: "demo".into(),
        messages: vec![seed::Message {
            role: "user".into(),
            content: "one two three".into(),
        }],
        max_tokens: 3,
    };
    let answer = client
        .complete(request())
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!(answer.text, "The gateway routes");
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (4, 3));

    let mut stream = client
        .complete_stream(request())
        .await
        .expect("stream")
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.expect("chunk"));
    }
    let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(tokens, ["The", " gateway", " routes", ""]);
    assert!(chunks.last().is_some_and(|c| c.done && c.usage.is_some()));
}

#[tokio::test]
async fn an_unknown_model_is_not_found_and_says_how_to_list_models() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut client = gateway.client().await;
    let status = client
        .complete(request("gpt-17", "hi"))
        .await
        .expect_err("not routed");
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("'gpt-17'"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("ListModels"),
        "{}",
        status.message()
    );
    let status = client
        .complete_stream(request("gpt-17", "hi"))
        .await
        .expect_err("not routed");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument_naming_the_field() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut client = gateway.client().await;
    let mut no_messages = request("demo", "hi");
    no_messages.messages.clear();
    let mut bad_role = request("demo", "hi");
    bad_role.messages.push(Message {
        role: "wizard".into(),
        content: "x".into(),
        ..Default::default()
    });
    let mut negative = request("demo", "hi");
    negative.max_tokens = -5;
    let mut hot = request("demo", "hi");
    hot.temperature = Some(7.0);
    let mut nan = request("demo", "hi");
    nan.top_p = Some(f32::NAN);
    let no_model = request("", "hi");
    let cases = [
        (no_messages, "messages"),
        (bad_role, "messages[1].role"),
        (negative, "max_tokens"),
        (hot, "temperature"),
        (nan, "top_p"),
        (no_model, "model"),
    ];
    for (req, field) in cases {
        let status = client.complete(req.clone()).await.expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
        let status = client.complete_stream(req).await.expect_err("rejected");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
    }
}

#[tokio::test]
async fn a_message_larger_than_the_grpc_limit_is_refused_and_others_carry_on() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut client = gateway.client().await;
    let huge = request("demo", &"x".repeat(5 * 1024 * 1024));
    let status = client.complete(huge).await.expect_err("too large");
    // gRPC's status table: a message over the receiver's limit is
    // RESOURCE_EXHAUSTED (tonic's own check would say OUT_OF_RANGE).
    assert_status(&status, Code::ResourceExhausted, &["at most 4 MiB"]);
    client
        .complete(request("demo", "small"))
        .await
        .expect("a normal call still works");
}

#[tokio::test]
async fn list_models_names_every_route_and_alias() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let models = gateway
        .client()
        .await
        .list_models(ListModelsRequest {})
        .await
        .expect("list")
        .into_inner()
        .models;
    let listed: Vec<(String, Vec<String>)> =
        models.into_iter().map(|m| (m.name, m.aliases)).collect();
    assert_eq!(
        listed,
        [
            (
                "demo".to_string(),
                vec!["demo-latest".to_string(), "d".to_string()]
            ),
            ("other".to_string(), vec![]),
        ]
    );
}

#[tokio::test]
async fn aliases_reach_the_same_route_and_the_pool_model_is_what_the_upstream_sees() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut client = gateway.client().await;
    for name in ["demo", "demo-latest", "d"] {
        let answer = client
            .complete(request(name, "hi"))
            .await
            .expect("routed")
            .into_inner();
        assert_eq!(answer.model, "demo", "{name}");
    }
    let answer = client
        .complete(request("other", "hi"))
        .await
        .expect("routed")
        .into_inner();
    assert_eq!(answer.model, "other-upstream-name");
}

#[tokio::test]
async fn calls_on_one_connection_spread_over_endpoints_and_weighted_pools() {
    let answer = |name: &'static str| {
        move |_: &Received| {
            json_reply(
                200,
                &json!({"model": name, "choices": [{"message": {"content": name}}]}),
            )
        }
    };
    let a1 = FakeUpstream::start(answer("a1")).await;
    let a2 = FakeUpstream::start(answer("a2")).await;
    let b = FakeUpstream::start(answer("b")).await;
    let off = FakeUpstream::start(answer("off")).await;
    let yaml = format!(
        "upstreams:
  a: {{ kind: openai, endpoints: [{}, {}] }}
  b: {{ kind: openai, endpoints: [{}] }}
  off: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: m
    pools:
      - {{ upstream: a, weight: 3 }}
      - {{ upstream: b, weight: 1 }}
      - {{ upstream: off, weight: 0 }}
",
        a1.url(),
        a2.url(),
        b.url(),
        off.url()
    );
    let gateway = Gateway::start(&yaml).await;
    let mut client = gateway.client().await; // one HTTP/2 connection
    let mut served: HashMap<String, usize> = HashMap::new();
    for _ in 0..200 {
        let text = client
            .complete(request("m", "hi"))
            .await
            .expect("call")
            .into_inner()
            .text;
        *served.entry(text).or_default() += 1;
    }
    // Weighted random: pool a (both endpoints) gets about three quarters.
    // The bounds are many standard deviations wide, so this cannot flake.
    let a = served.get("a1").copied().unwrap_or(0) + served.get("a2").copied().unwrap_or(0);
    assert!(
        (110..=190).contains(&a),
        "pool a served {a} of 200: {served:?}"
    );
    assert!(served.get("a1").copied().unwrap_or(0) > 40, "{served:?}");
    assert!(served.get("a2").copied().unwrap_or(0) > 40, "{served:?}");
    assert!(served.get("b").copied().unwrap_or(0) > 10, "{served:?}");
    assert_eq!(served.get("off"), None, "a weight-0 pool gets nothing");
    assert!(off.received().is_empty());
}

#[tokio::test]
async fn the_gateway_serves_through_llmgate_sim_over_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sim_addr = listener.local_addr().expect("addr");
    let settings = llmgate::sim::SimSettings {
        ttft: Duration::from_millis(1),
        tokens_per_second: 0.0,
        output_tokens: 6,
        error_rate: 0.0,
    };
    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(llmgate::sim::serve(listener, settings, async {
        let _ = sim_stopped.await;
    }));
    let gateway = Gateway::start(&one_upstream(&format!("http://{sim_addr}"), "")).await;
    let mut client = gateway.client().await;

    let answer = client
        .complete(request("m", "hello sim"))
        .await
        .expect("unary")
        .into_inner();
    assert_eq!(answer.text, "The gateway routes every call to");
    assert_eq!(answer.model, "upstream-model");
    assert_eq!(
        answer.usage.map(|u| (u.input_tokens, u.output_tokens)),
        Some((3, 6))
    );

    let mut req = request("m", "hello sim");
    req.max_tokens = 4;
    let mut stream = client
        .complete_stream(req)
        .await
        .expect("stream")
        .into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        text.push_str(&chunk.token);
        last = Some(chunk);
    }
    assert_eq!(text, "The gateway routes every");
    let last = last.expect("final chunk");
    assert_eq!(last.finish_reason, "length");
    assert_eq!(last.usage.map(|u| u.output_tokens), Some(4));

    // The simulator's other endpoints answer as vLLM's do.
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for path in ["/health", "/v1/models"] {
        let response = http
            .get(format!("http://{sim_addr}{path}").parse().expect("uri"))
            .await
            .expect("sim answers");
        assert_eq!(response.status(), 200, "{path}");
    }
    let _ = stop_sim.send(());
    sim.await.expect("sim task").expect("sim stops cleanly");
}

#[tokio::test]
async fn a_simulated_failure_is_unavailable() {
    let gateway = Gateway::start(
        "upstreams:
  flaky: { kind: sim, sim: { error_rate: 1.0 } }
routes:
  - model: m
    pools: [{ upstream: flaky }]
",
    )
    .await;
    let status = gateway
        .client()
        .await
        .complete(request("m", "hi"))
        .await
        .expect_err("always fails");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn shutdown_lets_a_stream_in_flight_finish_and_refuses_new_connections() {
    stream_in_flight_finishes_at_shutdown(Gateway::start(SLOW_STREAM_ROUTES).await).await;
}

/// Starts a stream on `gateway` (on [`SLOW_STREAM_ROUTES`]), shuts it down
/// after the first token, and checks the stream still ends whole and the
/// listener is closed.
async fn stream_in_flight_finishes_at_shutdown(mut gateway: Gateway) {
    let addr = gateway.addr;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.next().await.expect("token").expect("token");
    assert!(!first.done);
    gateway.begin_shutdown();
    let mut rest = 0;
    let mut done = false;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the stream in flight completes");
        rest += 1;
        done |= chunk.done;
    }
    assert!(done, "stream ended with its final chunk");
    assert_eq!(rest, 10, "nine more tokens and the final chunk");
    gateway.stopped().await.expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_cuts_streams_still_running_when_the_grace_period_ends() {
    grace_period_cuts_a_running_stream(None).await;
}

/// A stream whose upstream hangs after one token, on a gateway with a
/// 50 ms grace period (on `threads` serving threads, when given): shutdown
/// cuts it, with its upstream request, and it never looks complete.
async fn grace_period_cuts_a_running_stream(threads: Option<usize>) {
    let mut upstream = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token("a").into_bytes()),
            Step::Hang,
        ]
    })
    .await;
    let yaml = format!(
        "shutdown_grace: 50ms\n{}",
        one_upstream(&upstream.url(), "")
    );
    let mut gateway = match threads {
        Some(threads) => Gateway::start_on_threads(&yaml, threads).await,
        None => Gateway::start(&yaml).await,
    };
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(stream.next().await.expect("a").expect("a").token, "a");
    gateway.begin_shutdown();
    gateway
        .stopped()
        .await
        .expect("exits after the grace period");
    upstream.wait_closed().await;
    let end = stream.next().await;
    assert!(
        !matches!(end, Some(Ok(ref chunk)) if chunk.done),
        "a cut stream never looks complete: {end:?}"
    );
}

// === serving threads (as `llmgate serve` runs) ===

#[tokio::test]
async fn on_serving_threads_both_fronts_answer_over_shared_upstream_connections() {
    let upstream = paris_and_abc_upstream().await;
    let gateway = Gateway::start_on_threads(&one_upstream(&upstream.url(), ""), 2).await;
    // A connection per client: they are handed to both threads in turn.
    for round in 0..4 {
        let mut client = gateway.client().await;
        unary_and_stream(&mut client, round).await;
        let url = format!("http://{}/v1/chat/completions", gateway.http_addr);
        let ask = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let http = http_post_json(&url, &ask).await;
        assert_eq!(http.status, 200, "{}", http.body);
        assert!(http.body.contains("Paris."), "{}", http.body);
    }
    assert_eq!(upstream.count(), 12);
    // One call at a time: each thread keeps the connection its calls share
    // (two when it is reused as intended; a few more when a busy machine
    // lets a call start before the last one's connection was put back,
    // but never one per call).
    assert!(
        upstream.connections() < 6,
        "{} upstream connections for 12 calls one after another",
        upstream.connections()
    );
}

#[tokio::test]
async fn on_serving_threads_shutdown_lets_a_stream_in_flight_finish() {
    stream_in_flight_finishes_at_shutdown(Gateway::start_on_threads(SLOW_STREAM_ROUTES, 2).await)
        .await;
}

#[tokio::test]
async fn on_serving_threads_the_grace_period_cuts_streams_still_running() {
    // The call, on its serving thread, is cut: its upstream request too.
    grace_period_cuts_a_running_stream(Some(2)).await;
}
