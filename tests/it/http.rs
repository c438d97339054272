//! The OpenAI-compatible HTTP front and grpc-web, as their clients see
//! them: answers parsed the way the OpenAI SDKs parse them (SSE read from
//! the raw bytes), every error status and body, cancellation by a client
//! that hangs up, the timeout header, grpc-web frames built by hand over
//! HTTP/1.1, and CORS preflights.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llmgate::proto::{CompleteResponse, TokenChunk};
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The one origin the CORS tests allow.
const APP_ORIGIN: &str = "https://app.example.com";

// === an HTTP/1.1 client, as SDKs use ===

/// An HTTP answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` on a new HTTP/1.1 connection and reads the answer.
pub(crate) async fn send(request: http::Request<Full<Bytes>>) -> Answer {
    send_within(request, PATIENCE).await
}

/// Like [`send`], waiting up to `patience` for the answer's head: for a
/// call that waits in a queue while the test sets up the others.
pub(crate) async fn send_within(request: http::Request<Full<Bytes>>, patience: Duration) -> Answer {
    read(respond(request, patience).await).await
}

/// Sends `request` on a new HTTP/1.1 connection; the answer's head.
async fn respond(
    request: http::Request<Full<Bytes>>,
    patience: Duration,
) -> http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    tokio::time::timeout(patience, client.request(request))
        .await
        .expect("the gateway answers in time")
        .unwrap_or_else(|err| panic!("no HTTP response: {err:?}"))
}

/// Reads the rest of an answer.
async fn read(response: http::Response<hyper::body::Incoming>) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("a body")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /v1/chat/completions` with `body` and extra `headers`.
async fn chat(gateway: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut request =
        http::Request::post(format!("http://{}/v1/chat/completions", gateway.http_addr))
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-anything");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(
        request
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request"),
    )
    .await
}

async fn get(gateway: &Gateway, path: &str) -> Answer {
    let request = http::Request::get(format!("http://{}{path}", gateway.http_addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(request).await
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
}

// === reading SSE as the OpenAI SDKs do ===

/// The `data` of each event in an SSE body, per the HTML spec's parsing
/// rules: `field: value` lines, one optional space after the colon, data
/// lines joined by newlines, a blank line ends an event.
fn sse_data(body: &str) -> Vec<String> {
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            events.extend(data.take());
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    assert!(data.is_none(), "an event was left unterminated: {body:?}");
    events
}

/// A stream as an OpenAI client accumulates it.
#[derive(Debug, Default)]
struct Streamed {
    chunks: Vec<Value>,
    text: String,
    role: Option<String>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    /// `data: [DONE]` arrived (and was last).
    done: bool,
    /// The `error` of an error event (which was last).
    error: Option<Value>,
}

fn read_stream(answer: &Answer) -> Streamed {
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    let events = sse_data(&answer.text());
    let mut out = Streamed::default();
    for (i, data) in events.iter().enumerate() {
        let last = i + 1 == events.len();
        if data == "[DONE]" {
            assert!(last, "nothing may follow [DONE]: {events:?}");
            out.done = true;
            break;
        }
        let chunk: Value = serde_json::from_str(data).expect("each event is JSON");
        if let Some(error) = chunk.get("error") {
            assert!(last, "nothing may follow an error event: {events:?}");
            out.error = Some(error.clone());
            break;
        }
        assert_eq!(chunk["object"], "chat.completion.chunk");
        if let Some(choice) = chunk["choices"].get(0) {
            let delta = &choice["delta"];
            if let Some(role) = delta["role"].as_str() {
                assert!(out.role.is_none(), "the role comes once");
                out.role = Some(role.to_string());
            }
            out.text.push_str(delta["content"].as_str().unwrap_or(""));
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert!(out.finish_reason.is_none(), "one finish reason");
                out.finish_reason = Some(reason.to_string());
            }
        }
        if chunk.get("usage").is_some_and(|u| !u.is_null()) {
            out.usage = Some(chunk["usage"].clone());
        }
        out.chunks.push(chunk);
    }
    let ids: Vec<&Value> = out.chunks.iter().map(|c| &c["id"]).collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one id per call: {ids:?}"
    );
    out
}

/// Checks an error answer: status, and OpenAI's error body with exactly
/// its four fields.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, kind: &str, code: &str, needles: &[&str]) -> Value {
    assert_eq!(answer.status, status, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    let error = body["error"].clone();
    let mut keys: Vec<&str> = error
        .as_object()
        .expect("error is an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], code, "{body}");
    let message = error["message"].as_str().expect("message is text");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
    error
}

fn hang_after(token: &'static str) -> impl Fn(&Received) -> Vec<Step> {
    move |_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token(token).into_bytes()),
            Step::Hang,
        ]
    }
}

// === chat completions ===

#[tokio::test]
async fn a_whole_answer_reads_as_an_openai_client_reads_it() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| paris_reply()).await;
    let answer = chat(
        &gateway,
        &json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Capital of France?"},
                    {"type": "text", "text": "One word."},
                ]},
            ],
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "\n",
            "user": "user-1234",
            "seed": 42,
            "logit_bias": {"50256": -100},
            "some_future_field": {"nested": [1, 2]},
        }),
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().is_some_and(|t| t > 1_700_000_000));
    assert_eq!(body["model"], "served-model");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(1));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Paris.");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14})
    );

    let sent = upstream
        .received()
        .pop()
        .expect("the upstream got the call");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "upstream-model");
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Capital of France?"},
                {"type": "text", "text": "One word."},
            ]},
        ]),
        "content parts go as parts, not flattened"
    );
    for (field, value) in [
        ("user", json!("user-1234")),
        ("seed", json!(42)),
        ("logit_bias", json!({"50256": -100})),
        ("some_future_field", json!({"nested": [1, 2]})),
    ] {
        assert_eq!(sent.body[field], value, "{field} arrives as sent");
    }
    assert_eq!(sent.body["max_tokens"], 7, "max_completion_tokens wins");
    assert!(
        sent.body.get("max_completion_tokens").is_none(),
        "only the configured token field is sent: {}",
        sent.body
    );
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(sent.body["stop"], json!(["\n"]));
    assert_eq!(sent.body["stream"], false);
    assert!(
        sent.header("authorization").is_none(),
        "the caller's key is not forwarded"
    );
}

#[tokio::test]
async fn a_streamed_answer_reads_as_an_openai_client_reads_it() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| {
        openai_stream(&["Hel", "lo"], "length", 3, 2)
    })
    .await;
    let answer = chat(&gateway, &ask("m", true), &[]).await;
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    let stream = read_stream(&answer);
    assert!(stream.done, "ends with [DONE]");
    assert_eq!(stream.error, None);
    assert_eq!(stream.text, "Hello");
    assert_eq!(stream.role.as_deref(), Some("assistant"));
    assert_eq!(stream.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(stream.finish_reason.as_deref(), Some("length"));
    let last = stream.chunks.last().expect("a finish chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["model"], "upstream-model");
    assert!(
        stream.chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked for"
    );
    assert_eq!(upstream.received()[0].body["stream"], true);
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_before_done() {
    let (_upstream, gateway) = gateway_to("openai", "", &no_env, |_| {
        openai_stream(&["ok"], "stop", 3, 1)
    })
    .await;
    let mut request = ask("m", true);
    request["stream_options"] = json!({"include_usage": true});
    let stream = read_stream(&chat(&gateway, &request, &[]).await);
    assert!(stream.done);
    assert_eq!(stream.text, "ok");
    let (usage_chunk, others) = stream.chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    );
    assert!(
        others
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some()),
        "every other chunk says usage: null, as OpenAI does"
    );
}

#[tokio::test]
async fn models_lists_every_route_and_alias_in_openais_shape() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let answer = get(&gateway, "/v1/models").await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let body = answer.json();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().expect("data");
    let ids: Vec<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["demo", "demo-latest", "d", "other"]);
    for model in data {
        assert_eq!(model["object"], "model");
        assert_eq!(model["owned_by"], "llmgate");
        assert!(model["created"].is_u64());
    }
    assert_eq!(data[2]["root"], "demo", "an alias names its route");

    let one = get(&gateway, "/v1/models/d").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "d");
    let missing = get(&gateway, "/v1/models/org/gpt-17").await;
    assert_error(
        &missing,
        404,
        "not_found_error",
        "model_not_found",
        &["'org/gpt-17'", "GET /v1/models"],
    );
}

#[tokio::test]
async fn simulated_answers_stream_through_the_http_front() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut request = ask("d", true);
    request["max_tokens"] = json!(3);
    let stream = read_stream(&chat(&gateway, &request, &[]).await);
    assert!(stream.done);
    assert_eq!(stream.text, "The gateway routes");
    assert_eq!(stream.finish_reason.as_deref(), Some("length"));
    let whole = chat(&gateway, &ask("other", false), &[]).await.json();
    assert_eq!(whole["model"], "other-upstream-name");
    assert_eq!(whole["usage"]["completion_tokens"], 5);
}

// === errors ===

#[tokio::test]
async fn malformed_requests_are_400_naming_the_field_in_param() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let cases = [
        (
            json!({"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "tool", "content": "x"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": ""}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"model": "demo", "messages": []}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": "x"}]}),
            "model",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "temperature": "hot"}),
            "temperature",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}], "n": 2}),
            "n",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "top_p": 3}),
            "top_p",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user", "content": "x"}],
                   "stop": vec!["s"; 17]}),
            "stop",
        ),
        (
            json!({"model": "demo", "messages": [{"role": "user",
                   "content": vec![json!({"type": "text", "text": "x"}); 257]}]}),
            "messages[0].content",
        ),
    ];
    for (body, field) in cases {
        for stream in [false, true] {
            let mut body = body.clone();
            body["stream"] = json!(stream);
            let answer = chat(&gateway, &body, &[]).await;
            let error = assert_error(
                &answer,
                400,
                "invalid_request_error",
                "invalid_argument",
                &[field],
            );
            assert_eq!(error["param"], field, "{body}");
        }
    }

    let not_json = send(
        http::Request::post(format!("http://{}/v1/chat/completions", gateway.http_addr))
            .body(Full::new(Bytes::from_static(b"{\"model\": ")))
            .expect("request"),
    )
    .await;
    let error = assert_error(
        &not_json,
        400,
        "invalid_request_error",
        "invalid_argument",
        &["JSON"],
    );
    assert_eq!(error["param"], "body");

    // Values no clock can reach are no limit rather than a failure.
    for huge in ["1e18", "18446744073709551615"] {
        let answer = chat(
            &gateway,
            &ask("demo", false),
            &[("x-request-timeout", huge)],
        )
        .await;
        assert_eq!(answer.status, 200, "{huge}: {}", answer.text());
    }
    let bad_timeout = chat(
        &gateway,
        &ask("demo", false),
        &[("x-request-timeout", "soon")],
    )
    .await;
    let error = assert_error(
        &bad_timeout,
        400,
        "invalid_request_error",
        "invalid_argument",
        &["x-request-timeout", "500ms"],
    );
    assert_eq!(error["param"], "x-request-timeout");
}

#[tokio::test]
async fn an_unknown_model_or_path_is_404() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    for stream in [false, true] {
        let answer = chat(&gateway, &ask("gpt-17", stream), &[]).await;
        let error = assert_error(
            &answer,
            404,
            "not_found_error",
            "model_not_found",
            &["'gpt-17'", "GET /v1/models"],
        );
        assert!(error["param"].is_null());
    }
    let answer = get(&gateway, "/v1/completions").await;
    assert_error(
        &answer,
        404,
        "invalid_request_error",
        "unknown_url",
        &["GET /v1/completions", "POST /v1/chat/completions"],
    );
    let answer = get(&gateway, "/v1/chat/completions").await;
    assert_eq!(
        answer.status, 404,
        "the wrong method is refused the same way"
    );
}

#[tokio::test]
async fn an_overloaded_or_failing_upstream_is_429_with_retry_after_or_503() {
    // (upstream status, status, type, code, Retry-After)
    let cases = [
        (
            429,
            429,
            "rate_limit_error",
            "rate_limit_exceeded",
            Some("1"),
        ),
        (503, 503, "service_unavailable_error", "unavailable", None),
    ];
    for (upstream_status, status, kind, code, retry_after) in cases {
        let (_upstream, gateway) = gateway_to("openai", "", &no_env, move |_| {
            json_reply(
                upstream_status,
                &json!({"error": {"message": "busy", "type": "x"}}),
            )
        })
        .await;
        for stream in [false, true] {
            let answer = chat(&gateway, &ask("m", stream), &[]).await;
            assert_error(&answer, status, kind, code, &["busy"]);
            assert_eq!(
                answer.header("retry-after"),
                retry_after,
                "429 always says when to retry (1s when the upstream did not); 503 only \
                 when the upstream did"
            );
        }
    }
}

#[tokio::test]
async fn the_timeout_header_gives_504_and_drops_the_upstream_request() {
    // The upstream's own limit is far away: only the header can end this.
    let timeout = "    timeout: 300s\n";
    let (mut upstream, gateway) =
        gateway_to("openai", timeout, &no_env, |_| vec![Step::Hang]).await;
    let answer = chat(&gateway, &ask("m", false), &[("x-request-timeout", "0.2")]).await;
    assert_error(
        &answer,
        504,
        "timeout_error",
        "deadline_exceeded",
        &["deadline (", "passed"],
    );
    upstream.wait_closed().await;

    // A stream that started: the deadline ends it with an error event.
    let (mut upstream, gateway) = gateway_to("openai", timeout, &no_env, hang_after("first")).await;
    let answer = chat(&gateway, &ask("m", true), &[("x-request-timeout", "200ms")]).await;
    let stream = read_stream(&answer);
    assert_eq!(stream.text, "first");
    assert!(!stream.done, "a cut stream never ends with [DONE]");
    let error = stream.error.expect("an error event");
    assert_eq!(error["code"], "deadline_exceeded", "{error}");
    assert_eq!(error["type"], "timeout_error", "{error}");
    upstream.wait_closed().await;
}

#[tokio::test]
async fn a_stream_that_breaks_after_tokens_ends_with_an_error_event_not_done() {
    let no_continuation = "    continuation: none\n";
    let (_upstream, gateway) = gateway_to("openai", no_continuation, &no_env, |_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}{}", sse_token("a"), sse_token("b")).into_bytes()),
            Step::Cut,
        ]
    })
    .await;
    let stream = read_stream(&chat(&gateway, &ask("m", true), &[]).await);
    assert_eq!(stream.text, "ab");
    assert!(!stream.done);
    assert_eq!(stream.finish_reason, None, "a broken answer has no finish");
    let error = stream.error.expect("an error event");
    assert_eq!(error["type"], "service_unavailable_error", "{error}");
    assert_eq!(error["code"], "unavailable", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
}

// === cancellation and shutdown ===

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_closes_the_upstream_connection() {
    let (mut upstream, gateway) = gateway_to("openai", "", &no_env, hang_after("first")).await;
    let mut socket = tokio::net::TcpStream::connect(gateway.http_addr)
        .await
        .expect("connect");
    let body = ask("m", true).to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    socket
        .write_all(format!("{head}{body}").as_bytes())
        .await
        .expect("send");
    // The first token arrives while the upstream is still generating: it
    // was flushed, not held back for more.
    let mut seen = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !String::from_utf8_lossy(&seen).contains("\"first\"") {
            let mut buf = [0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            assert!(n > 0, "the gateway closed the stream early");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first token arrives");
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(socket); // the client goes away mid-generation
    upstream.wait_closed().await;
}

#[tokio::test]
async fn shutdown_lets_an_http_stream_in_flight_finish() {
    let mut gateway = Gateway::start(SLOW_STREAM_ROUTES).await;
    let addr = gateway.http_addr;
    let request = http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .body(Full::new(Bytes::from(ask("m", true).to_string())))
        .expect("request");
    // The head comes once the first token is there.
    let response = respond(request, PATIENCE).await;
    gateway.begin_shutdown();
    let stream = read_stream(&read(response).await);
    assert!(stream.done);
    assert_eq!(stream.text.split_whitespace().count(), 10);
    gateway.stopped().await.expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the HTTP listener is closed"
    );
}

// === grpc-web ===

/// One grpc-web exchange read whole: the HTTP status and headers, the
/// messages, and the status from the trailer frame (or the headers, for a
/// call that failed before any message).
struct WebCall {
    status: u16,
    headers: http::HeaderMap,
    messages: Vec<Bytes>,
    grpc_status: Option<i32>,
    grpc_message: String,
}

/// Calls `method` of `llm.v1.LLMService` as a browser's grpc-web client
/// does: HTTP/1.1, `application/grpc-web+proto`, the message in one
/// length-prefixed frame.
async fn grpc_web(gateway: &Gateway, method: &str, message: &impl prost::Message) -> WebCall {
    grpc_web_as(gateway, method, message, WEB_BINARY).await
}

/// grpc-web's binary content type.
const WEB_BINARY: &str = "application/grpc-web+proto";
/// grpc-web's base64 text content type, for clients that cannot send bytes.
const WEB_TEXT: &str = "application/grpc-web-text";

/// [`grpc_web`] with the body as `content_type` says: binary frames, or
/// the same frames as base64 text both ways.
async fn grpc_web_as(
    gateway: &Gateway,
    method: &str,
    message: &impl prost::Message,
    content_type: &str,
) -> WebCall {
    use base64::Engine as _;
    let text = content_type == WEB_TEXT;
    let frame = grpc_frame(&message.encode_to_vec());
    let body = if text {
        Bytes::from(base64::engine::general_purpose::STANDARD.encode(&frame))
    } else {
        Bytes::from(frame)
    };
    let request = http::Request::post(format!(
        "http://{}/llm.v1.LLMService/{method}",
        gateway.addr
    ))
    .header("content-type", content_type)
    .header("accept", content_type)
    .header("x-grpc-web", "1")
    .header("origin", APP_ORIGIN)
    .body(Full::new(body))
    .expect("request");
    let mut answer = send(request).await;
    if text {
        // Each piece of a text answer is padded on its own, so decode it
        // four characters at a time.
        let decoded: Vec<u8> = answer
            .body
            .chunks(4)
            .flat_map(|group| {
                base64::engine::general_purpose::STANDARD
                    .decode(group)
                    .expect("base64 text")
            })
            .collect();
        answer.body = Bytes::from(decoded);
    }
    let mut messages = Vec::new();
    let mut trailers = String::new();
    let mut rest = &answer.body[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a frame header is 5 bytes: {rest:?}");
        let flags = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if flags & 0x80 != 0 {
            trailers = String::from_utf8_lossy(payload).into_owned();
            assert_eq!(rest.len(), 5 + len, "the trailer frame is last");
        } else {
            messages.push(Bytes::copy_from_slice(payload));
        }
        rest = &rest[5 + len..];
    }
    let trailer = |name: &str| {
        trailers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .or_else(|| answer.header(name).map(str::to_string))
    };
    WebCall {
        status: answer.status,
        grpc_status: trailer("grpc-status").and_then(|s| s.parse().ok()),
        grpc_message: trailer("grpc-message").unwrap_or_default(),
        headers: answer.headers,
        messages,
    }
}

#[tokio::test]
async fn grpc_web_serves_unary_and_server_streaming_calls_over_http1() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut req = request("demo", "one two three");
    req.max_tokens = 3;

    let unary = grpc_web(&gateway, "Complete", &req).await;
    assert_eq!(unary.status, 200);
    assert_eq!(
        unary
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/grpc-web+proto")
    );
    assert_eq!(unary.grpc_status, Some(0), "{}", unary.grpc_message);
    assert_eq!(unary.messages.len(), 1);
    let answer = CompleteResponse::decode(unary.messages[0].clone()).expect("a CompleteResponse");
    assert_eq!(answer.text, "The gateway routes");
    assert_eq!(answer.finish_reason, "length");

    let streamed = grpc_web(&gateway, "CompleteStream", &req).await;
    assert_eq!(streamed.grpc_status, Some(0), "{}", streamed.grpc_message);
    let chunks: Vec<TokenChunk> = streamed
        .messages
        .iter()
        .map(|m| TokenChunk::decode(m.clone()).expect("a TokenChunk"))
        .collect();
    assert_eq!(text_of(&chunks), "The gateway routes");
    assert_final_chunk(&chunks, "length", "demo", (4, 3));

    let unrouted = grpc_web(&gateway, "Complete", &request("gpt-17", "hi")).await;
    assert_eq!(unrouted.grpc_status, Some(5), "NOT_FOUND");
    assert!(unrouted.messages.is_empty());
}

#[tokio::test]
async fn grpc_web_serves_embed_to_browsers() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let req = llmgate::proto::EmbedRequest {
        model: "demo".into(),
        input: vec!["one two".into()],
        dimensions: Some(4),
        ..Default::default()
    };
    let call = grpc_web(&gateway, "Embed", &req).await;
    assert_eq!(call.grpc_status, Some(0), "{}", call.grpc_message);
    assert_eq!(call.messages.len(), 1);
    let answer =
        llmgate::proto::EmbedResponse::decode(call.messages[0].clone()).expect("an EmbedResponse");
    assert_eq!(answer.embeddings.len(), 1);
    assert_eq!(answer.embeddings[0].values.len(), 4);
    assert_eq!(answer.usage.map(|u| u.input_tokens), Some(2));
}

#[tokio::test]
async fn grpc_web_text_calls_are_served_and_oversized_browser_calls_are_resource_exhausted() {
    let gateway = Gateway::start(&format!("limits:\n  max_request_size: 2KiB\n{SIM_ROUTES}")).await;
    let mut req = request("demo", "one two three");
    req.max_tokens = 3;
    let streamed = grpc_web_as(&gateway, "CompleteStream", &req, WEB_TEXT).await;
    assert_eq!(streamed.grpc_status, Some(0), "{}", streamed.grpc_message);
    let chunks: Vec<TokenChunk> = streamed
        .messages
        .iter()
        .map(|m| TokenChunk::decode(m.clone()).expect("a TokenChunk"))
        .collect();
    assert_eq!(text_of(&chunks), "The gateway routes");

    let huge = request("demo", &"x".repeat(4 * 1024));
    for content_type in [WEB_BINARY, WEB_TEXT] {
        let refused = grpc_web_as(&gateway, "Complete", &huge, content_type).await;
        assert_eq!(
            refused.grpc_status,
            Some(8),
            "{content_type}: RESOURCE_EXHAUSTED, as native gRPC: {}",
            refused.grpc_message
        );
        // grpc-web trailers carry the message percent-encoded.
        let message = refused.grpc_message.replace("%20", " ");
        assert!(message.contains("at most 2 KiB"), "{message}");
    }
}

// === CORS ===

/// A browser's CORS preflight for a POST to `path` from `origin`.
async fn preflight(addr: std::net::SocketAddr, path: &str, origin: &str) -> Answer {
    let request = http::Request::options(format!("http://{addr}{path}"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-user-agent,grpc-timeout",
        )
        .body(Full::new(Bytes::new()))
        .expect("request");
    send(request).await
}

#[tokio::test]
async fn a_cors_preflight_is_allowed_for_a_configured_origin_and_refused_for_another() {
    let gateway = Gateway::start(&format!(
        "cors:\n  allowed_origins: [{APP_ORIGIN}]\n{SIM_ROUTES}"
    ))
    .await;
    let path = "/llm.v1.LLMService/CompleteStream";
    let allowed = preflight(gateway.addr, path, APP_ORIGIN).await;
    assert!(allowed.status < 300, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    let methods = allowed
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in ["content-type", "x-grpc-web", "grpc-timeout"] {
        assert!(headers.contains(name), "{name} not allowed: {headers}");
    }

    let refused = preflight(gateway.addr, path, "https://evil.example.net").await;
    assert_eq!(
        refused.header("access-control-allow-origin"),
        None,
        "a browser refuses the call without it"
    );

    // The call itself tells the page it may read the answer and its status.
    let call = grpc_web(&gateway, "Complete", &request("demo", "hi")).await;
    assert_eq!(call.grpc_status, Some(0), "{}", call.grpc_message);
    assert_eq!(
        call.headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some(APP_ORIGIN)
    );
    let exposed = call
        .headers
        .get("access-control-expose-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{exposed}");

    // The same policy holds on the HTTP front.
    let http = preflight(gateway.http_addr, "/v1/chat/completions", APP_ORIGIN).await;
    assert_eq!(http.header("access-control-allow-origin"), Some(APP_ORIGIN));
    let http = preflight(
        gateway.http_addr,
        "/v1/chat/completions",
        "https://evil.example.net",
    )
    .await;
    assert_eq!(http.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn without_cors_no_origin_is_allowed() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let answer = preflight(gateway.addr, "/llm.v1.LLMService/Complete", APP_ORIGIN).await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
    // grpc-web itself still works, for same-origin pages and proxies.
    let call = grpc_web(&gateway, "Complete", &request("demo", "hi")).await;
    assert_eq!(call.grpc_status, Some(0), "{}", call.grpc_message);
}

#[tokio::test]
async fn the_http_front_asks_for_the_same_keys_as_grpc() {
    const KEY: &str = "sk-http-front-key-51f0";
    let digest: String = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gateway = Gateway::start(&format!(
        "auth:
  keys: [{{ name: web, sha256: {digest}, models: [demo] }}]
upstreams:
  sim: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 2 }} }}
routes:
  - model: demo
    pools: [{{ upstream: sim }}]
  - model: secret-model
    pools: [{{ upstream: sim }}]
"
    ))
    .await;
    let post = |model: &str, authorization: &str| {
        http::Request::post(format!("http://{}/v1/chat/completions", gateway.http_addr))
            .header("content-type", "application/json")
            .header("authorization", authorization)
            .body(Full::new(Bytes::from(ask(model, false).to_string())))
            .expect("request")
    };
    let bearer = format!("Bearer {KEY}");
    let refused = send(post("demo", "Bearer sk-nobody-declared-this")).await;
    assert_eq!(refused.status, 401, "{}", refused.text());
    let served = send(post("demo", &bearer)).await;
    assert_eq!(served.status, 200, "{}", served.text());
    let other = send(post("secret-model", &bearer)).await;
    assert_eq!(other.status, 403, "{}", other.text());

    assert_eq!(get(&gateway, "/v1/models").await.status, 401);
    let listed = send(
        http::Request::get(format!("http://{}/v1/models", gateway.http_addr))
            .header("authorization", &bearer)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(listed.status, 200);
    let text = listed.text();
    assert!(text.contains(r#""id":"demo""#), "{text}");
    assert!(
        !text.contains("secret-model"),
        "only the key's models: {text}"
    );
}
