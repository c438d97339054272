//! Issue 13, "a call the fleet can serve never fails", as a caller sees it:
//! failures judged per (endpoint, model) pair, ejected endpoints probed
//! back, the panic pick, per-attempt timeouts retried inside the caller's
//! deadline, and streams broken after tokens continued elsewhere by prefill
//! or replay, or ended with a clear error.
//!
//! Every upstream here is a scripted server on 127.0.0.1. Scripts shared by
//! both endpoints of a pool answer by what the request *is* (a fresh call or
//! a continuation, told apart by `continue_final_message`), never by which
//! endpoint P2C happened to pick, so each test holds whichever endpoint
//! serves first.
//!
//! The recorder is process-wide and tests run side by side, so each test
//! routes model names of its own and reads only its own metric series.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use llmgate::proto::{CompleteRequest, ListModelsRequest, TokenChunk};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::support::*;

/// The counter of broken streams and what became of them.
const RESCUES: &str = "llmgate_stream_rescues_total";

/// The whole answer, one SSE event per entry. Every event but " the lazy"
/// is one word; the scripted upstreams count a word as a token, so an
/// honest usage for the whole answer is 9 output tokens, whichever
/// attempts delivered it.
const ANSWER: [&str; 8] = [
    "The",
    " quick",
    " brown",
    " fox",
    " jumps",
    " over",
    " the lazy",
    " dog.",
];

/// The whole answer as text.
fn answer_text() -> String {
    ANSWER.concat()
}

/// The output tokens the scripted upstreams report for `text`: its words.
fn words(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count()).expect("a short text")
}

/// The prompt tokens the scripted upstreams report for a fresh call.
const PROMPT_TOKENS: u32 = 10;

// === scripts ===

/// Whether the gateway sent `received` to continue a broken answer.
fn is_continuation(received: &Received) -> bool {
    received.body.get("continue_final_message").is_some()
}

/// SSE events for `tokens`, as one chunk of bytes.
fn sse(tokens: &[&str]) -> Vec<u8> {
    tokens
        .iter()
        .map(|t| sse_token(t))
        .collect::<String>()
        .into_bytes()
}

/// Headers, then the first `n` events of the answer in one chunk.
fn first_tokens(n: usize) -> Vec<Step> {
    vec![
        Step::Head(200, "text/event-stream"),
        Step::Chunk(sse(&ANSWER[..n])),
    ]
}

/// The first `n` events of the answer, then the connection is cut.
fn cut_after(n: usize) -> Vec<Step> {
    let mut steps = first_tokens(n);
    steps.push(Step::Cut);
    steps
}

/// A whole streamed answer of `tokens`, with usage counting its words.
fn whole(tokens: &[&str]) -> Vec<Step> {
    let text: String = tokens.concat();
    openai_stream(tokens, "stop", PROMPT_TOKENS, words(&text))
}

/// What a model that honours `continue_final_message` streams: the rest of
/// the answer after the assistant text the request ends with. A prefix that
/// is not a start of the answer gets a marker the caller's text will show,
/// so a wrong prefix fails the test where it is visible.
fn continue_answer(received: &Received) -> Vec<Step> {
    let prefix = received.body["messages"]
        .as_array()
        .and_then(|messages| messages.last())
        .and_then(|last| last["content"].as_str())
        .unwrap_or_default()
        .to_string();
    match (0..=ANSWER.len()).find(|&k| ANSWER[..k].concat() == prefix) {
        Some(k) => {
            let rest: String = ANSWER[k..].concat();
            openai_stream(
                &ANSWER[k..],
                "stop",
                PROMPT_TOKENS + words(&prefix),
                words(&rest),
            )
        }
        None => openai_stream(&["[prefix not from the answer]"], "stop", PROMPT_TOKENS, 1),
    }
}

/// vLLM's answer to a request option it does not accept.
fn refuse_prefill() -> Vec<Step> {
    json_reply(
        400,
        &json!({"object": "error", "type": "BadRequestError", "code": 400,
                "message": "continue_final_message is not supported by this server"}),
    )
}

/// Two scripted endpoints answering with the same `script`.
async fn two_endpoints(
    script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
) -> [FakeUpstream; 2] {
    let script = Arc::new(script);
    let other = script.clone();
    [
        FakeUpstream::start(move |received| script(received)).await,
        FakeUpstream::start(move |received| other(received)).await,
    ]
}

/// Every request either endpoint received, split into fresh calls and
/// continuations.
fn received_by(endpoints: &[FakeUpstream]) -> (Vec<Received>, Vec<Received>) {
    endpoints
        .iter()
        .flat_map(FakeUpstream::received)
        .filter(|r| r.path == "/v1/chat/completions")
        .partition(|r| !is_continuation(r))
}

/// A routing file with one `openai` upstream `pool` over `endpoints`
/// (with `upstream_extra` keys, indented four spaces) and route `route` to
/// it (with `route_extra` keys, indented four spaces).
fn pool_routes(
    route: &str,
    endpoints: &[&FakeUpstream],
    upstream_extra: &str,
    route_extra: &str,
) -> String {
    let urls: Vec<String> = endpoints.iter().map(|e| e.url()).collect();
    format!(
        "upstreams:\n  pool:\n    kind: openai\n    endpoints: [{}]\n{upstream_extra}\
         routes:\n  - model: {route}\n{route_extra}    pools: [{{ upstream: pool, model: upstream-model }}]\n",
        urls.join(", ")
    )
}

// === calls ===

/// The longest any call here may take: far above what each needs, so only
/// a gateway that waits where it should not reaches it.
const DEADLINE: Duration = Duration::from_secs(5);

/// A request with temperature 0: deterministic decoding, so replay is
/// allowed.
fn greedy(model: &str) -> CompleteRequest {
    CompleteRequest {
        temperature: Some(0.0),
        ..request(model, "hi")
    }
}

/// One streamed call with a `DEADLINE` deadline, gathered.
async fn stream(gateway: &Gateway, request: CompleteRequest) -> Result<Vec<TokenChunk>, Status> {
    use futures_util::StreamExt;
    let mut client = gateway.client().await;
    let mut stream = client
        .complete_stream(with_timeout(request, DEADLINE))
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

/// A stream that must fail after some tokens: the chunks before the error,
/// and the error.
async fn broken_stream(gateway: &Gateway, request: CompleteRequest) -> (Vec<TokenChunk>, Status) {
    let mut client = gateway.client().await;
    tokio::time::timeout(PATIENCE, stream_until_error(&mut client, request))
        .await
        .expect("the stream ends in time")
}

/// Checks that `chunks` are one whole answer: exactly `text` (no token
/// repeated, none missing), one final chunk (the last) with finish reason
/// `stop`, and `output_tokens` of usage on it.
#[track_caller]
fn assert_one_answer(chunks: &[TokenChunk], text: &str, output_tokens: u32) {
    assert_eq!(text_of(chunks), text, "the caller's text: {chunks:#?}");
    let (last, tokens) = chunks.split_last().expect("a final chunk");
    assert!(last.done, "the last chunk is done: {chunks:#?}");
    assert_eq!(last.finish_reason, "stop");
    assert!(
        tokens
            .iter()
            .all(|c| !c.done && c.finish_reason.is_empty() && c.usage.is_none()),
        "one final chunk, the last: {chunks:#?}"
    );
    assert_eq!(
        last.usage.map(|u| u.output_tokens),
        Some(i32::try_from(output_tokens).expect("small")),
        "output tokens are the tokens delivered"
    );
}

// === metrics ===

/// The rescue counter of `route` with `outcome`; 0 before its first count.
fn rescues(scrape: &Scrape, route: &str, outcome: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == RESCUES)
        .filter(|s| {
            s.labels.get("route") == Some(route) && s.labels.get("outcome") == Some(outcome)
        })
        .map(|s| match s.value {
            Value::Counter(v) | Value::Untyped(v) => v,
            ref other => panic!("{RESCUES} is not a counter: {other:?}"),
        })
        .sum()
}

/// Scrapes before and after `call`, and returns its result with how much
/// each rescue outcome of `route` went up meanwhile (prefill, replay,
/// failed).
async fn counting_rescues<T>(
    gateway: &Gateway,
    route: &str,
    call: impl std::future::Future<Output = T>,
) -> (T, [f64; 3]) {
    const OUTCOMES: [&str; 3] = ["prefill", "replay", "failed"];
    let before = gateway.scrape().await;
    let result = call.await;
    let after = gateway.scrape().await;
    let delta = OUTCOMES.map(|o| rescues(&after, route, o) - rescues(&before, route, o));
    (result, delta)
}

// === ListModels, with the field the issue adds ===

// `EndpointInfo.ejected_for = 5` is being added to the contract alongside
// this behaviour. Until it is in `llm.proto`, these messages read
// ListModels' answer with it, so the tests compile on both sides of the
// change; once it lands, `llmgate::proto::ListModelsResponse` can replace
// them.

/// `ListModelsResponse`, with only the fields these tests read.
#[derive(Clone, PartialEq, prost::Message)]
struct WireModels {
    #[prost(message, repeated, tag = "1")]
    models: Vec<WireModel>,
}

/// `ModelInfo`, with only the fields these tests read.
#[derive(Clone, PartialEq, prost::Message)]
struct WireModel {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "3")]
    pools: Vec<WirePool>,
}

/// `PoolInfo`, with only the fields these tests read.
#[derive(Clone, PartialEq, prost::Message)]
struct WirePool {
    #[prost(string, tag = "3")]
    model: String,
    #[prost(message, repeated, tag = "4")]
    endpoints: Vec<WireEndpoint>,
}

/// `EndpointInfo`, with `ejected_for`.
#[derive(Clone, PartialEq, prost::Message)]
struct WireEndpoint {
    #[prost(string, tag = "1")]
    url: String,
    #[prost(string, tag = "2")]
    state: String,
    /// "endpoint" or "model" while ejected, empty when up.
    #[prost(string, tag = "5")]
    ejected_for: String,
}

/// The endpoints ListModels shows for `route`'s pools, in order.
async fn endpoints_of(gateway: &Gateway, route: &str) -> Vec<WireEndpoint> {
    let mut grpc = tonic::client::Grpc::new(gateway.channel().await);
    grpc.ready().await.expect("the gateway takes calls");
    let codec = tonic_prost::ProstCodec::<ListModelsRequest, WireModels>::default();
    let models = grpc
        .unary(
            tonic::Request::new(ListModelsRequest {}),
            http::uri::PathAndQuery::from_static("/llm.v1.LLMService/ListModels"),
            codec,
        )
        .await
        .expect("ListModels")
        .into_inner()
        .models;
    models
        .iter()
        .find(|m| m.name == route)
        .unwrap_or_else(|| panic!("no route {route} in {models:#?}"))
        .pools
        .iter()
        .flat_map(|p| p.endpoints.clone())
        .collect()
}

// === failures judged where they belong ===

#[tokio::test]
async fn a_model_failing_on_an_endpoint_leaves_its_other_models_served() {
    let upstream = FakeUpstream::start(|received| {
        if received.body["model"] == "bad" {
            json_reply(503, &json!({"error": {"message": "model is overloaded"}}))
        } else {
            json_reply(
                200,
                &json!({"model": "good", "choices": [{"message": {"content": "fine"},
                        "finish_reason": "stop"}]}),
            )
        }
    })
    .await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  shared: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: res-scope-bad
    pools: [{{ upstream: shared, model: bad }}]
  - model: res-scope-good
    pools: [{{ upstream: shared, model: good }}]
",
        upstream.url()
    ))
    .await;
    let mut client = gateway.client().await;
    for call in 0..10 {
        let status = client
            .complete(with_timeout(request("res-scope-bad", "hi"), DEADLINE))
            .await
            .expect_err("the bad model fails");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "call {call}: {}",
            status.message()
        );
    }
    for call in 0..20 {
        let answer = client
            .complete(with_timeout(request("res-scope-good", "hi"), DEADLINE))
            .await
            .unwrap_or_else(|status| panic!("call {call} to the good model failed: {status:?}"))
            .into_inner();
        assert_eq!(answer.text, "fine");
    }

    let bad = endpoints_of(&gateway, "res-scope-bad").await;
    let good = endpoints_of(&gateway, "res-scope-good").await;
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(
        (bad[0].state.as_str(), bad[0].ejected_for.as_str()),
        ("ejected", "model"),
        "the failing model's pool shows its pair ejected: {bad:?}"
    );
    assert_eq!(
        (good[0].state.as_str(), good[0].ejected_for.as_str()),
        ("up", ""),
        "the same endpoint is up for the other model: {good:?}"
    );
}

#[tokio::test]
async fn a_refusing_endpoint_is_ejected_for_every_model() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let live = FakeUpstream::start(|_| {
        json_reply(
            200,
            &json!({"choices": [{"message": {"content": "live"}, "finish_reason": "stop"}]}),
        )
    })
    .await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  pool:
    kind: openai
    endpoints: [http://{dead}, {}]
    outlier: {{ consecutive_failures: 1, base_ejection: 30s }}
routes:
  - model: res-refused
    pools: [{{ upstream: pool, model: one }}]
  - model: res-refused-other
    pools: [{{ upstream: pool, model: other }}]
",
        live.url()
    ))
    .await;
    let dead_url = format!("http://{dead}/");
    let mut client = gateway.client().await;
    // Each call is served (a refused attempt is retried on the live
    // endpoint); within a few the balancer tries the dead one and ejects it.
    let ejected = tokio::time::timeout(PATIENCE, async {
        loop {
            let answer = client
                .complete(with_timeout(request("res-refused", "hi"), DEADLINE))
                .await
                .expect("the live endpoint serves every call")
                .into_inner();
            assert_eq!(answer.text, "live");
            let endpoints = endpoints_of(&gateway, "res-refused").await;
            let found = endpoints
                .into_iter()
                .find(|e| e.url == dead_url)
                .expect("the dead endpoint is listed");
            if found.state == "ejected" {
                return found;
            }
        }
    })
    .await
    .expect("the refusing endpoint is ejected");
    assert_eq!(
        ejected.ejected_for, "endpoint",
        "a refused connection is the endpoint's, not one model's"
    );
    let other = endpoints_of(&gateway, "res-refused-other").await;
    let other = other
        .iter()
        .find(|e| e.url == dead_url)
        .expect("the dead endpoint is listed for the other model");
    assert_eq!(
        (other.state.as_str(), other.ejected_for.as_str()),
        ("ejected", "endpoint"),
        "out for the model it was never called for too"
    );
}

// === probed back; the panic pick ===

#[tokio::test]
async fn a_lone_endpoint_restarted_is_served_within_three_seconds() {
    let ok = |_: &Received| {
        json_reply(
            200,
            &json!({"choices": [{"message": {"content": "back"}, "finish_reason": "stop"}]}),
        )
    };
    let upstream = FakeUpstream::start(ok).await;
    let addr = upstream.addr;
    let gateway = Gateway::start(&format!(
        "upstreams:
  lone: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: res-lone
    pools: [{{ upstream: lone }}]
",
        upstream.url()
    ))
    .await;
    let mut client = gateway.client().await;
    client
        .complete(with_timeout(request("res-lone", "hi"), DEADLINE))
        .await
        .expect("served while it runs");

    drop(upstream); // killed: its port refuses
    for call in 0..5 {
        let status = client
            .complete(with_timeout(request("res-lone", "hi"), DEADLINE))
            .await
            .expect_err("nothing can serve");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "call {call}: {}",
            status.message()
        );
    }

    let upstream = FakeUpstream::start_at(addr, ok).await;
    let restarted = Instant::now();
    let give_up = restarted + Duration::from_secs(3);
    loop {
        match client
            .complete(with_timeout(
                request("res-lone", "hi"),
                Duration::from_secs(1),
            ))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.into_inner().text, "back");
                break;
            }
            Err(status) if Instant::now() < give_up => {
                assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!(
                "still not served {:?} after the restart: {status:?}",
                restarted.elapsed()
            ),
        }
    }
    assert!(upstream.count() >= 1);
}

#[tokio::test]
async fn an_ejected_endpoint_back_on_its_port_is_readmitted_by_probes_without_calls() {
    let ok = |name: &'static str| {
        move |_: &Received| {
            json_reply(
                200,
                &json!({"choices": [{"message": {"content": name}, "finish_reason": "stop"}]}),
            )
        }
    };
    let flaky = FakeUpstream::start(ok("flaky")).await;
    let steady = FakeUpstream::start(ok("steady")).await;
    let flaky_addr = flaky.addr;
    let flaky_url = format!("http://{flaky_addr}/");
    // A long back-off: only an active probe can bring it back in time.
    let gateway = Gateway::start(&pool_routes(
        "res-probe",
        &[&flaky, &steady],
        "    outlier: { consecutive_failures: 1, base_ejection: 60s }\n",
        "",
    ))
    .await;
    drop(flaky); // killed: its port refuses
    let mut client = gateway.client().await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            client
                .complete(with_timeout(request("res-probe", "hi"), DEADLINE))
                .await
                .expect("the steady endpoint serves every call");
            let endpoints = endpoints_of(&gateway, "res-probe").await;
            if endpoints
                .iter()
                .any(|e| e.url == flaky_url && e.state == "ejected")
            {
                return;
            }
        }
    })
    .await
    .expect("the killed endpoint is ejected");

    let _flaky = FakeUpstream::start_at(flaky_addr, ok("flaky")).await;
    let restarted = Instant::now();
    // No calls meanwhile: the steady endpoint would take them all anyway.
    loop {
        let endpoints = endpoints_of(&gateway, "res-probe").await;
        let state = endpoints
            .iter()
            .find(|e| e.url == flaky_url)
            .map(|e| e.state.clone())
            .expect("the endpoint is listed");
        if state == "up" {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(3),
            "still {state} {:?} after it came back: {endpoints:?}",
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn when_every_endpoint_is_ejected_the_call_is_still_tried() {
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = healthy.clone();
    let endpoints = two_endpoints(move |_| {
        if switch.load(Ordering::SeqCst) {
            json_reply(
                200,
                &json!({"choices": [{"message": {"content": "recovered"}, "finish_reason": "stop"}]}),
            )
        } else {
            json_reply(503, &json!({"error": {"message": "overloaded"}}))
        }
    })
    .await;
    let gateway = Gateway::start(&pool_routes(
        "res-panic",
        &[&endpoints[0], &endpoints[1]],
        "    outlier: { consecutive_failures: 1, base_ejection: 30s, max_ejected_share: 1.0 }\n",
        "",
    ))
    .await;
    let mut client = gateway.client().await;
    tokio::time::timeout(PATIENCE, async {
        loop {
            let status = client
                .complete(with_timeout(request("res-panic", "hi"), DEADLINE))
                .await
                .expect_err("every endpoint fails");
            assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
            let states = endpoints_of(&gateway, "res-panic").await;
            if states.iter().all(|e| e.state == "ejected") {
                return;
            }
        }
    })
    .await
    .expect("both endpoints are ejected");

    healthy.store(true, Ordering::SeqCst);
    let answer = client
        .complete(with_timeout(request("res-panic", "hi"), DEADLINE))
        .await
        .expect("the oldest ejection is tried rather than refusing at once")
        .into_inner();
    assert_eq!(answer.text, "recovered");
}

// === per-attempt timeouts inside the caller's deadline ===

/// Route `route` to upstream `primary` (with `primary_extra` keys) and,
/// when that fails, to the fallback route `route-backup` on `backup`.
fn with_fallback(
    route: &str,
    primary: &FakeUpstream,
    primary_extra: &str,
    backup: &FakeUpstream,
) -> String {
    format!(
        "upstreams:
  primary: {{ kind: openai, endpoints: [{}], {primary_extra} }}
  backup: {{ kind: openai, endpoints: [{}] }}
routes:
  - model: {route}
    fallback: [{route}-backup]
    pools: [{{ upstream: primary }}]
  - model: {route}-backup
    pools: [{{ upstream: backup }}]
",
        primary.url(),
        backup.url()
    )
}

/// A backup answering "from the backup", whole or streamed.
async fn backup() -> FakeUpstream {
    FakeUpstream::start(|received| {
        if received.body["stream"] == true {
            openai_stream(&["from", " the", " backup"], "stop", 3, 3)
        } else {
            json_reply(
                200,
                &json!({"choices": [{"message": {"content": "from the backup"},
                        "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 3}}),
            )
        }
    })
    .await
}

#[tokio::test]
async fn a_blackholed_upstream_past_its_timeout_is_answered_by_the_fallback() {
    let hole = FakeUpstream::start(|_| vec![Step::Hang]).await;
    let backup = backup().await;
    let gateway = Gateway::start(&with_fallback(
        "res-blackhole",
        &hole,
        "timeout: 500ms",
        &backup,
    ))
    .await;
    let started = Instant::now();
    let answer = gateway
        .client()
        .await
        .complete(with_timeout(request("res-blackhole", "hi"), DEADLINE))
        .await
        .expect("the fallback answers within the caller's deadline")
        .into_inner();
    assert_eq!(answer.text, "from the backup");
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    assert!(hole.count() >= 1, "the primary was tried first");
    assert_eq!(backup.count(), 1);
}

#[tokio::test]
async fn a_first_token_later_than_the_upstream_allows_is_answered_by_the_fallback() {
    // Headers at once, the first token after 2 s: past `first_token_timeout`
    // in one case, past the whole call's `timeout` in the other. Neither
    // ends the call while the caller's deadline has room.
    for (route, limit) in [
        ("res-slow-start", "first_token_timeout: 300ms"),
        ("res-slow-whole", "timeout: 500ms"),
    ] {
        let slow = FakeUpstream::start(|_| {
            let mut steps = vec![
                Step::Head(200, "text/event-stream"),
                Step::Delay(Duration::from_secs(2)),
            ];
            steps.extend(whole(&ANSWER).into_iter().skip(1));
            steps
        })
        .await;
        let backup = backup().await;
        let gateway = Gateway::start(&with_fallback(route, &slow, limit, &backup)).await;
        let chunks = stream(&gateway, request(route, "hi"))
            .await
            .unwrap_or_else(|status| panic!("{limit}: the fallback should answer: {status:?}"));
        assert_eq!(text_of(&chunks), "from the backup", "{limit}");
        assert_eq!(chunks.last().map(|c| c.done), Some(true), "{limit}");
        assert!(slow.count() >= 1, "{limit}: the primary was tried first");
    }
}

// === broken streams continued ===

#[tokio::test]
async fn a_stream_cut_after_tokens_is_continued_by_prefill_on_another_endpoint() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            cut_after(4)
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-cut",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let (chunks, [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-cut",
        stream(&gateway, request("res-cut", "hi")),
    )
    .await;
    let chunks = chunks.expect("the answer is continued");
    // 4 tokens from the first attempt, then the continuation's
    // completion_tokens (5: " the lazy" is two).
    assert_one_answer(&chunks, &answer_text(), 4 + 5);
    assert_eq!((prefill, replay, failed), (1.0, 0.0, 0.0));

    let (fresh, continued) = received_by(&endpoints);
    assert_eq!(fresh.len(), 1, "one fresh call: {fresh:#?}");
    assert_eq!(continued.len(), 1, "one continuation: {continued:#?}");
    let (fresh, continued) = (&fresh[0].body, &continued[0].body);
    assert!(
        fresh.get("add_generation_prompt").is_none(),
        "a fresh call carries no continuation keys: {fresh}"
    );
    // The original request, with the delivered text as one more message
    // and the two keys that make vLLM continue it rather than answer it.
    let mut expected = fresh.clone();
    expected["messages"]
        .as_array_mut()
        .expect("messages")
        .push(json!({"role": "assistant", "content": "The quick brown fox"}));
    expected["continue_final_message"] = json!(true);
    expected["add_generation_prompt"] = json!(false);
    assert_eq!(continued, &expected, "the continuation request");
}

#[tokio::test]
async fn prefill_refused_with_400_is_replayed_and_the_delivered_prefix_skipped() {
    let fresh_calls = Arc::new(AtomicUsize::new(0));
    let count = fresh_calls.clone();
    let endpoints = two_endpoints(move |received| {
        if is_continuation(received) {
            refuse_prefill()
        } else if count.fetch_add(1, Ordering::SeqCst) == 0 {
            cut_after(4)
        } else {
            // Temperature 0: the same answer again.
            whole(&ANSWER)
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-replay",
        &[&endpoints[0], &endpoints[1]],
        "",
        // Room for the first try, the refused prefill and the replay.
        "    retry: { attempts: 4 }\n",
    ))
    .await;
    let (chunks, [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-replay",
        stream(&gateway, greedy("res-replay")),
    )
    .await;
    let chunks = chunks.expect("the answer is continued by replay");
    // The replaying upstream generated, and reported, the whole answer.
    assert_one_answer(&chunks, &answer_text(), 9);
    assert_eq!((prefill, replay, failed), (0.0, 1.0, 0.0));

    let (fresh, continued) = received_by(&endpoints);
    assert!(!continued.is_empty(), "prefill was tried first");
    assert_eq!(fresh.len(), 2, "the first call and one replay: {fresh:#?}");
    assert_eq!(
        fresh[0].body, fresh[1].body,
        "the replay is the original request, unchanged"
    );
}

#[tokio::test]
async fn a_replay_that_regenerates_different_text_ends_with_a_clear_error() {
    let fresh_calls = Arc::new(AtomicUsize::new(0));
    let count = fresh_calls.clone();
    let endpoints = two_endpoints(move |received| {
        if is_continuation(received) {
            refuse_prefill()
        } else if count.fetch_add(1, Ordering::SeqCst) == 0 {
            cut_after(4)
        } else {
            whole(&["The", " quick", " red", " fox", " naps."])
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-mismatch",
        &[&endpoints[0], &endpoints[1]],
        "",
        "    retry: { attempts: 4 }\n",
    ))
    .await;
    let ((chunks, status), [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-mismatch",
        broken_stream(&gateway, greedy("res-mismatch")),
    )
    .await;
    assert_eq!(
        text_of(&chunks),
        "The quick brown fox",
        "the delivered tokens, and nothing of the different answer"
    );
    assert_status(&status, Code::Unavailable, &["could not be continued"]);
    assert_eq!((prefill, replay, failed), (0.0, 0.0, 1.0));
    assert!(
        fresh_calls.load(Ordering::SeqCst) >= 2,
        "a replay was attempted"
    );
}

#[tokio::test]
async fn prefill_refused_without_temperature_zero_is_not_replayed() {
    let fresh_calls = Arc::new(AtomicUsize::new(0));
    let count = fresh_calls.clone();
    let endpoints = two_endpoints(move |received| {
        if is_continuation(received) {
            refuse_prefill()
        } else if count.fetch_add(1, Ordering::SeqCst) == 0 {
            cut_after(4)
        } else {
            whole(&ANSWER)
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-no-replay",
        &[&endpoints[0], &endpoints[1]],
        "",
        "    retry: { attempts: 4 }\n",
    ))
    .await;
    // No temperature: a regenerated answer need not match, so replay is
    // not attempted.
    let ((chunks, status), [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-no-replay",
        broken_stream(&gateway, request("res-no-replay", "hi")),
    )
    .await;
    assert_eq!(text_of(&chunks), "The quick brown fox");
    assert_status(&status, Code::Unavailable, &["could not be continued"]);
    assert_eq!((prefill, replay, failed), (0.0, 0.0, 1.0));
    let (fresh, continued) = received_by(&endpoints);
    assert!(!continued.is_empty(), "prefill was tried");
    assert_eq!(fresh.len(), 1, "never replayed: {fresh:#?}");
}

#[tokio::test]
async fn a_stream_no_endpoint_can_continue_ends_with_a_clear_error_after_its_tokens() {
    // Every attempt, continuation or not, breaks before sending a token.
    let upstream = FakeUpstream::start(|received| {
        if is_continuation(received) {
            vec![Step::Head(200, "text/event-stream"), Step::Cut]
        } else {
            cut_after(4)
        }
    })
    .await;
    let gateway =
        Gateway::start_with_admin(&pool_routes("res-hopeless", &[&upstream], "", "")).await;
    let ((chunks, status), [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-hopeless",
        broken_stream(&gateway, request("res-hopeless", "hi")),
    )
    .await;
    assert_eq!(text_of(&chunks), "The quick brown fox");
    assert_status(&status, Code::Unavailable, &["could not be continued"]);
    assert_eq!((prefill, replay, failed), (0.0, 0.0, 1.0));
}

#[tokio::test]
async fn a_stream_silent_past_idle_timeout_is_continued() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            let mut steps = first_tokens(3);
            steps.push(Step::Hang);
            steps
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-stall",
        &[&endpoints[0], &endpoints[1]],
        "    idle_timeout: 300ms\n",
        "",
    ))
    .await;
    let (chunks, [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-stall",
        stream(&gateway, request("res-stall", "hi")),
    )
    .await;
    let chunks = chunks.expect("the stalled answer is continued");
    assert_one_answer(&chunks, &answer_text(), 9);
    assert_eq!((prefill, replay, failed), (1.0, 0.0, 0.0));
    let (_, continued) = received_by(&endpoints);
    let last = continued.first().expect("a continuation was sent").body["messages"]
        .as_array()
        .and_then(|m| m.last().cloned());
    assert_eq!(
        last,
        Some(json!({"role": "assistant", "content": "The quick brown"}))
    );
}

#[tokio::test]
async fn an_invalid_event_mid_stream_is_continued() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            // After the broken event, text a gateway that skipped it would
            // deliver.
            let mut rest = b"data: {\"choices\": [{\"delta\": {\"content\": \n\n".to_vec();
            rest.extend(sse(&[" [after the invalid event]"]));
            rest.extend(sse_finish("stop", PROMPT_TOKENS, 4).into_bytes());
            let mut steps = first_tokens(3);
            steps.extend([Step::Chunk(rest), Step::End]);
            steps
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-invalid",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let (chunks, [prefill, replay, failed]) = counting_rescues(
        &gateway,
        "res-invalid",
        stream(&gateway, request("res-invalid", "hi")),
    )
    .await;
    let chunks = chunks.expect("the answer is continued");
    assert_one_answer(&chunks, &answer_text(), 9);
    assert_eq!((prefill, replay, failed), (1.0, 0.0, 0.0));
}

#[tokio::test]
async fn an_error_event_mid_stream_is_continued() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            let mut steps = first_tokens(4);
            steps.extend([
                Step::Chunk(
                    b"data: {\"error\": {\"message\": \"engine died\", \"code\": 500}}\n\n"
                        .to_vec(),
                ),
                Step::End,
            ]);
            steps
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-error-event",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let (chunks, [prefill, _, _]) = counting_rescues(
        &gateway,
        "res-error-event",
        stream(&gateway, request("res-error-event", "hi")),
    )
    .await;
    let chunks = chunks.expect("the answer is continued");
    assert_one_answer(&chunks, &answer_text(), 9);
    assert_eq!(prefill, 1.0);
}

#[tokio::test]
async fn a_body_that_ends_without_a_finish_reason_is_continued() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            // A clean end of body, but no finish reason and no [DONE].
            let mut steps = first_tokens(4);
            steps.push(Step::End);
            steps
        }
    })
    .await;
    let gateway = Gateway::start_with_admin(&pool_routes(
        "res-unfinished",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let (chunks, [prefill, _, _]) = counting_rescues(
        &gateway,
        "res-unfinished",
        stream(&gateway, request("res-unfinished", "hi")),
    )
    .await;
    let chunks = chunks.expect("the answer is continued");
    assert_one_answer(&chunks, &answer_text(), 9);
    assert_eq!(prefill, 1.0);
}

#[tokio::test]
async fn a_unary_answer_cut_mid_body_is_retried_whole() {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = calls.clone();
    let endpoints = two_endpoints(move |_| {
        let answer = json!({"choices": [{"message": {"content": answer_text()},
                            "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 9}})
        .to_string()
        .into_bytes();
        if count.fetch_add(1, Ordering::SeqCst) == 0 {
            // Half the JSON body, then the connection drops.
            vec![
                Step::Head(200, "application/json"),
                Step::Chunk(answer[..answer.len() / 2].to_vec()),
                Step::Cut,
            ]
        } else {
            json_reply(200, &serde_json::from_slice(&answer).expect("JSON"))
        }
    })
    .await;
    let gateway = Gateway::start(&pool_routes(
        "res-unary-cut",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let answer = gateway
        .client()
        .await
        .complete(with_timeout(request("res-unary-cut", "hi"), DEADLINE))
        .await
        .expect("nothing reached the caller, so the call is retried")
        .into_inner();
    assert_eq!(answer.text, answer_text());
    assert_eq!(answer.usage.map(|u| u.output_tokens), Some(9));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// === through the OpenAI HTTP front ===

/// The `data` of each SSE event of `body`, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

#[tokio::test]
async fn a_cut_stream_continued_reads_whole_to_an_openai_client() {
    let endpoints = two_endpoints(|received| {
        if is_continuation(received) {
            continue_answer(received)
        } else {
            cut_after(4)
        }
    })
    .await;
    let gateway = Gateway::start(&pool_routes(
        "res-http",
        &[&endpoints[0], &endpoints[1]],
        "",
        "",
    ))
    .await;
    let answer = http_post_json(
        &format!("http://{}/v1/chat/completions", gateway.http_addr),
        &json!({"model": "res-http", "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let events = sse_data(&answer.body);
    let (done, chunks) = events.split_last().expect("events");
    assert_eq!(done, "[DONE]", "the stream ends with [DONE]: {events:#?}");
    let chunks: Vec<serde_json::Value> = chunks
        .iter()
        .map(|data| serde_json::from_str(data).expect("each event is JSON"))
        .collect();
    assert!(
        chunks.iter().all(|c| c.get("error").is_none()),
        "no error event: {chunks:#?}"
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, answer_text());
    let reasons: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(reasons, ["stop"], "one finish reason");
    let usage: Vec<&serde_json::Value> = chunks
        .iter()
        .filter_map(|c| c.get("usage").filter(|u| !u.is_null()))
        .collect();
    assert_eq!(usage.len(), 1, "{chunks:#?}");
    assert_eq!(usage[0]["completion_tokens"], 9);
}
