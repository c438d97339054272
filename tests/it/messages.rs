//! Anthropic's Messages API front (`POST /v1/messages`), as Anthropic's
//! clients see it: whole messages and event streams read the way the
//! official SDKs accumulate them (with the event order checked as they
//! go), tool use both ways, every pool kind behind it, and errors in
//! Anthropic's shape and statuses. Upstreams are scripted byte for byte.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::support::*;

// === an Anthropic client's view ===

/// An answer read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `POST /v1/messages` with `body`, `x-api-key: sk-anything` and
/// `anthropic-version` (as the SDKs send them) unless `headers` replace
/// them.
async fn post(gateway: &Gateway, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = http::Request::post(format!("http://{}/v1/messages", gateway.http_addr))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01");
    if !headers
        .iter()
        .any(|(name, _)| *name == "x-api-key" || *name == "authorization")
    {
        request = request.header("x-api-key", "sk-anything");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let answer = send_whole(request).await;
    Answer {
        status: answer.status,
        headers: answer.headers,
        text: answer.body,
    }
}

/// A whole message, which must be a 200.
async fn message(gateway: &Gateway, body: &Value) -> Value {
    let answer = post(gateway, &body.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    answer.json()
}

/// A streamed answer as the SDK accumulates it.
#[derive(Debug, Default)]
struct Streamed {
    /// Event names in order.
    names: Vec<String>,
    /// `message_start`'s message.
    start: Value,
    /// Content blocks by index, deltas applied (tool inputs as the JSON
    /// text their pieces make).
    blocks: Vec<Value>,
    stop_reason: Option<String>,
    usage: Option<Value>,
    /// `message_stop` came, last.
    stopped: bool,
    /// The `error` of an `error` event, which came last.
    error: Option<Value>,
}

impl Streamed {
    fn text(&self) -> String {
        self.blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect()
    }
}

/// `POST /v1/messages` with `stream: true`, read event by event, checking
/// the order Anthropic's clients rely on.
async fn stream(gateway: &Gateway, body: &Value) -> Streamed {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let answer = post(gateway, &body.to_string(), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    read_events(&answer.text)
}

fn read_events(text: &str) -> Streamed {
    let mut out = Streamed::default();
    let mut open: Option<usize> = None;
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        assert!(
            !out.stopped && out.error.is_none(),
            "nothing follows the end: {text}"
        );
        let (name, data) = event.split_once('\n').expect("an event and its data");
        let name = name.strip_prefix("event: ").expect("named events");
        let data: Value =
            serde_json::from_str(data.strip_prefix("data: ").expect("data")).expect("JSON data");
        assert_eq!(data["type"], name, "{event}");
        if out.names.is_empty() {
            assert_eq!(name, "message_start", "{text}");
        }
        out.names.push(name.to_string());
        match name {
            "message_start" => out.start = data["message"].clone(),
            "content_block_start" => {
                assert_eq!(open, None, "a block starts after the last one stopped");
                let index = data["index"].as_u64().expect("index") as usize;
                assert_eq!(index, out.blocks.len(), "blocks are numbered in order");
                let mut block = data["content_block"].clone();
                if block["type"] == "tool_use" {
                    assert_eq!(block["input"], json!({}));
                    block["input"] = json!("");
                }
                out.blocks.push(block);
                open = Some(index);
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().expect("index") as usize;
                assert_eq!(open, Some(index), "deltas go to the open block");
                let block = &mut out.blocks[index];
                let delta = &data["delta"];
                let (field, piece) = match delta["type"].as_str() {
                    Some("text_delta") => ("text", &delta["text"]),
                    Some("input_json_delta") => ("input", &delta["partial_json"]),
                    other => panic!("unknown delta {other:?}"),
                };
                let so_far = block[field].as_str().expect("text so far").to_string();
                block[field] = json!(so_far + piece.as_str().expect("a piece"));
            }
            "content_block_stop" => {
                assert_eq!(open.take(), data["index"].as_u64().map(|i| i as usize));
            }
            "message_delta" => {
                assert_eq!(open, None, "every block stopped before the end");
                out.stop_reason = data["delta"]["stop_reason"].as_str().map(str::to_string);
                out.usage = Some(data["usage"].clone());
            }
            "message_stop" => {
                assert!(out.stop_reason.is_some(), "message_delta came first");
                out.stopped = true;
            }
            "error" => out.error = Some(data["error"].clone()),
            "ping" => {}
            other => panic!("unknown event {other}"),
        }
    }
    out
}

/// Checks an error answer: its status, and Anthropic's body with exactly
/// its fields.
#[track_caller]
fn assert_error(answer: &Answer, status: u16, kind: &str, needles: &[&str]) {
    assert_eq!(answer.status, status, "{}", answer.text);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let body = answer.json();
    let mut keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "type"], "{body}");
    assert_eq!(body["type"], "error");
    let mut inner: Vec<&String> = body["error"].as_object().expect("object").keys().collect();
    inner.sort_unstable();
    assert_eq!(inner, ["message", "type"], "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
}

fn ask(text: &str) -> Value {
    json!({"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

const WEATHER: &str = r#"{"name": "get_weather", "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}"#;

fn weather() -> Value {
    serde_json::from_str(WEATHER).expect("a tool")
}

/// The one request the upstream received.
fn only_request(upstream: &FakeUpstream) -> Value {
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    received[0].body.clone()
}

/// An OpenAI-compatible upstream streaming `chunks` (deltas with an
/// optional finish), then usage and `[DONE]`.
fn openai_chunks(chunks: &[(Value, Option<&str>)]) -> Vec<Step> {
    let mut body = String::new();
    for (delta, finish) in chunks {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "served", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
        "model": "served", "choices": [],
        "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}});
    body.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
    stream_reply("text/event-stream", body.as_bytes())
}

// === text ===

#[tokio::test]
async fn a_whole_answer_is_a_message_and_the_request_arrives_in_the_upstreams_words() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| paris_reply()).await;
    let answer = message(
        &gateway,
        &json!({"model": "m", "max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "top_k": 20,
            "stop_sequences": ["\n\nHuman:"], "metadata": {"user_id": "u-1"},
            "system": [{"type": "text", "text": "Answer in one word."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}]}),
    )
    .await;
    let id = answer["id"].as_str().expect("an id");
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(
        answer,
        json!({"id": id, "type": "message", "role": "assistant", "model": "served-model",
            "content": [{"type": "text", "text": "Paris."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 2}})
    );
    let sent = only_request(&upstream);
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Answer in one word."},
               {"role": "user", "content": "Capital of France?"}])
    );
    for (field, value) in [
        ("model", json!("upstream-model")),
        ("max_tokens", json!(50)),
        ("temperature", json!(0.5)),
        ("top_p", json!(0.9)),
        ("top_k", json!(20)),
        ("stop", json!(["\n\nHuman:"])),
        ("user", json!("u-1")),
    ] {
        assert_eq!(sent[field], value, "{field}: {sent}");
    }
}

#[tokio::test]
async fn a_streamed_answer_is_anthropics_event_sequence() {
    let (_upstream, gateway) = gateway_to("openai", "", &no_env, |_| {
        openai_stream(&["Par", "is", "."], "length", 12, 3)
    })
    .await;
    let streamed = stream(&gateway, &ask("Capital of France?")).await;
    let names: Vec<&str> = streamed.names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(streamed.start["role"], "assistant");
    assert_eq!(streamed.start["content"], json!([]));
    assert_eq!(streamed.start["stop_reason"], Value::Null);
    assert_eq!(streamed.text(), "Paris.");
    assert_eq!(streamed.stop_reason.as_deref(), Some("max_tokens"));
    assert_eq!(
        streamed.usage,
        Some(json!({"input_tokens": 12, "output_tokens": 3}))
    );
    assert!(streamed.stopped);
}

#[tokio::test]
async fn every_pool_kind_serves_the_messages_front() {
    // Ollama, whole and streamed, from its recorded answers.
    let (upstream, gateway) = gateway_to("ollama", "", &no_env, |req| {
        if req.body["stream"] == true {
            stream_reply(
                "application/x-ndjson",
                &fixture("ollama/chat_stream.ndjson"),
            )
        } else {
            json_reply(200, &json_fixture("ollama/chat.json"))
        }
    })
    .await;
    // With the end-user id Claude Code sends on every call.
    let mut body = ask("hi");
    body["metadata"] = json!({"user_id": "user_abc_account_1"});
    let answer = message(&gateway, &body).await;
    assert_eq!(answer["content"][0]["text"], "Hello! How are you today?");
    assert_eq!(answer["model"], "llama3.2");
    assert_eq!(upstream.received()[0].path, "/api/chat");
    assert_eq!(upstream.received()[0].body.get("user"), None);
    let streamed = stream(&gateway, &ask("why is the sky blue?")).await;
    assert_eq!(
        streamed.text(),
        "The sky is blue: Rayleigh scattering ∝ λ⁻⁴."
    );
    assert!(streamed.stopped);

    // Anthropic itself: its own stream, re-said event by event.
    let (upstream, gateway) = gateway_to("anthropic", "", &no_env, |_| {
        stream_reply(
            "text/event-stream",
            &fixture("anthropic/messages_stream.sse"),
        )
    })
    .await;
    let streamed = stream(&gateway, &ask("hi")).await;
    assert_eq!(streamed.text(), "Hello! Grüße aus Zürich");
    assert_eq!(streamed.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        streamed.usage,
        Some(json!({"input_tokens": 25, "output_tokens": 15}))
    );
    assert_eq!(upstream.received()[0].path, "/v1/messages");

    // The simulator.
    let gateway = Gateway::start(SIM_ROUTES).await;
    let mut body = ask("hi");
    body["model"] = json!("demo");
    let streamed = stream(&gateway, &body).await;
    assert!(!streamed.text().is_empty(), "{streamed:?}");
    assert_eq!(streamed.stop_reason.as_deref(), Some("end_turn"));
    body["max_tokens"] = json!(3);
    let answer = message(&gateway, &body).await;
    assert_eq!(answer["stop_reason"], "max_tokens", "{answer}");
    assert_eq!(answer["usage"]["output_tokens"], 3, "{answer}");
}

// === tool use ===

#[tokio::test]
async fn a_tool_call_streams_as_a_tool_use_block_with_input_json_deltas() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| {
        openai_chunks(&[
            (json!({"role": "assistant", "content": "Checking."}), None),
            (
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                None,
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                None,
            ),
            (
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
                None,
            ),
            (json!({}), Some("tool_calls")),
        ])
    })
    .await;
    let mut body = ask("Weather in Paris?");
    body["tools"] = json!([weather()]);
    body["tool_choice"] = json!({"type": "any"});
    let streamed = stream(&gateway, &body).await;
    assert_eq!(
        streamed.blocks,
        [
            json!({"type": "text", "text": "Checking."}),
            json!({"type": "tool_use", "id": "call_a", "name": "get_weather",
                   "input": "{\"city\":\"Paris\"}"}),
        ]
    );
    assert_eq!(streamed.stop_reason.as_deref(), Some("tool_use"));
    assert!(streamed.stopped);
    let sent = only_request(&upstream);
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city", "parameters": weather()["input_schema"]}}])
    );
    assert_eq!(sent["tool_choice"], "required");
}

#[tokio::test]
async fn a_tool_result_turn_reaches_anthropic_as_its_own_blocks_and_the_call_comes_back_whole() {
    let (upstream, gateway) = gateway_to("anthropic", "", &no_env, |_| {
        json_reply(
            200,
            &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                             "input": {"city": "Bergen"}}],
                "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 30}}),
        )
    })
    .await;
    let history = json!([
        {"role": "user", "content": "Weather in Oslo, then Bergen?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Oslo first."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4C, rain"}]},
    ]);
    let answer = message(
        &gateway,
        &json!({"model": "m", "max_tokens": 100, "messages": history, "tools": [weather()],
            "tool_choice": {"type": "tool", "name": "get_weather",
                            "disable_parallel_tool_use": true}}),
    )
    .await;
    assert_eq!(
        answer["content"],
        json!([{"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                "input": {"city": "Bergen"}}])
    );
    assert_eq!(answer["stop_reason"], "tool_use");
    let sent = only_request(&upstream);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Oslo, then Bergen?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Oslo first."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "4C, rain"}]},
        ])
    );
    assert_eq!(sent["tools"], json!([weather()]));
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
}

// === errors ===

#[tokio::test]
async fn malformed_requests_are_400_invalid_request_errors_naming_the_field() {
    let gateway = Gateway::start(SIM_ROUTES).await;
    let cases = [
        ("{not json", "body"),
        (
            r#"{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}"#,
            "max_tokens",
        ),
        (
            r#"{"model": "demo", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}"#,
            "messages[0].role",
        ),
        (
            r#"{"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content":
                [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}"#,
            "messages[0].content[0].source",
        ),
        (
            r#"{"model": "demo", "max_tokens": 5, "temperature": 7,
                "messages": [{"role": "user", "content": "hi"}]}"#,
            "temperature",
        ),
    ];
    for (body, field) in cases {
        let answer = post(&gateway, body, &[]).await;
        assert_error(&answer, 400, "invalid_request_error", &[field]);
    }
    let unknown = post(
        &gateway,
        &json!({"model": "nope", "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
        &[],
    )
    .await;
    assert_error(&unknown, 404, "not_found_error", &["nope"]);
    let get = http_get(&format!("http://{}/v1/messages", gateway.http_addr)).await;
    assert_eq!(get.status, 405, "{}", get.body);
    assert!(get.body.contains("not served"), "{}", get.body);
}

#[tokio::test]
async fn upstream_failures_take_anthropics_statuses_with_retry_after() {
    // (upstream status, status, type, Retry-After)
    let cases = [
        (429, 429, "rate_limit_error", Some("1")),
        (503, 529, "overloaded_error", None),
    ];
    for (upstream_status, status, kind, retry_after) in cases {
        let (_upstream, gateway) = gateway_to("openai", "", &no_env, move |_| {
            json_reply(
                upstream_status,
                &json!({"error": {"message": "busy", "type": "x"}}),
            )
        })
        .await;
        for streamed in [false, true] {
            let mut body = ask("hi");
            body["stream"] = json!(streamed);
            let answer = post(&gateway, &body.to_string(), &[]).await;
            assert_error(&answer, status, kind, &["busy"]);
            assert_eq!(answer.header("retry-after"), retry_after);
        }
    }
}

#[tokio::test]
async fn a_stream_that_breaks_ends_with_an_error_event_never_message_stop() {
    let (_upstream, gateway) = gateway_to("openai", "    continuation: none\n", &no_env, |_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}{}", sse_token("Once "), sse_token("upon")).into_bytes()),
            Step::Cut,
        ]
    })
    .await;
    let streamed = stream(&gateway, &ask("A story?")).await;
    assert_eq!(streamed.text(), "Once upon");
    assert!(!streamed.stopped, "a cut answer never stops cleanly");
    assert_eq!(streamed.stop_reason, None);
    let error = streamed.error.expect("an error event");
    assert_eq!(error["type"], "overloaded_error", "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn keys_come_from_x_api_key_or_bearer_and_are_checked_before_the_body() {
    const KEY: &str = "sk-messages-front-key-9c1d";
    let digest: String = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gateway = Gateway::start(&format!(
        "auth:
  keys: [{{ name: agent, sha256: {digest}, models: [demo] }}]
limits: {{ max_request_size: 2KiB }}
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
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            .to_string()
    };
    let bearer = format!("Bearer {KEY}");
    let served = post(&gateway, &body("demo"), &[("x-api-key", KEY)]).await;
    assert_eq!(served.status, 200, "{}", served.text);
    let served = post(&gateway, &body("demo"), &[("authorization", &bearer)]).await;
    assert_eq!(served.status, 200, "{}", served.text);

    let stranger = post(&gateway, &body("demo"), &[("x-api-key", "sk-nobody")]).await;
    assert_error(&stranger, 401, "authentication_error", &["not valid"]);
    let none = http_post(&format!("http://{}/v1/messages", gateway.http_addr)).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.body.contains("x-api-key"), "{}", none.body);
    let unreadable = post(&gateway, &body("demo"), &[("x-api-key", "two words")]).await;
    assert_error(
        &unreadable,
        401,
        "authentication_error",
        &["x-api-key: <key>"],
    );
    let other = post(&gateway, &body("secret-model"), &[("x-api-key", KEY)]).await;
    assert_error(&other, 403, "permission_error", &[]);

    // A stranger's oversized body is refused for the key, unread; a
    // caller's is refused for its size, in Anthropic's words.
    let big = "x".repeat(8192);
    let refused = post(&gateway, &big, &[("x-api-key", "sk-nobody")]).await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    let too_large = post(&gateway, &big, &[("x-api-key", KEY)]).await;
    assert_error(&too_large, 413, "request_too_large", &[]);
}

#[tokio::test]
async fn an_anthropic_client_lists_its_keys_models_in_anthropics_shape() {
    const KEY: &str = "sk-messages-models-key-77e2";
    let digest: String = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let gateway = Gateway::start(&format!(
        "auth:
  keys: [{{ name: agent, sha256: {digest}, models: [demo] }}]
upstreams:
  sim: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 2 }} }}
routes:
  - model: demo
    aliases: [d]
    pools: [{{ upstream: sim }}]
  - model: secret-model
    pools: [{{ upstream: sim }}]
"
    ))
    .await;
    let list = |path: &'static str, key: &'static str| {
        let url = format!("http://{}{path}", gateway.http_addr);
        async move {
            let request = http::Request::get(url)
                .header("x-api-key", key)
                .header("anthropic-version", "2023-06-01")
                .body(Full::new(Bytes::new()))
                .expect("request");
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<Full<Bytes>>();
            let response = client.request(request).await.expect("an answer");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            Answer {
                status,
                headers,
                text: String::from_utf8_lossy(&body).into_owned(),
            }
        }
    };
    let listed = list("/v1/models", KEY).await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let page = listed.json();
    let ids: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["demo", "d"], "only the key's models: {page}");
    assert_eq!(page["has_more"], false);
    assert_eq!(
        (&page["first_id"], &page["last_id"]),
        (&json!("demo"), &json!("d"))
    );
    let first = &page["data"][0];
    assert_eq!(first["type"], "model");
    assert_eq!(first["display_name"], "demo");
    let created = first["created_at"].as_str().expect("a time");
    assert!(
        created.len() == 20 && created.ends_with('Z'),
        "RFC 3339: {created}"
    );

    let one = list("/v1/models/d", KEY).await;
    assert_eq!(one.json()["id"], "d", "{}", one.text);
    let hidden = list("/v1/models/secret-model", KEY).await;
    assert_error(&hidden, 404, "not_found_error", &["'secret-model'"]);
    let stranger = list("/v1/models", "sk-nobody").await;
    assert_error(&stranger, 401, "authentication_error", &[]);
}

#[tokio::test]
async fn anthropics_own_fields_reach_an_anthropic_pool_as_they_came() {
    let (upstream, gateway) = gateway_to("anthropic", "", &no_env, |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    // What Claude Code sends beside the conversation.
    let mut body = ask("hi");
    body["max_tokens"] = json!(4096);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    body["service_tier"] = json!("auto");
    body["metadata"] = json!({"user_id": "user_abc_account_1"});
    let answer = message(&gateway, &body).await;
    assert_eq!(answer["type"], "message", "{answer}");
    let sent = &upstream.received()[0].body;
    assert_eq!(sent["thinking"], body["thinking"], "{sent}");
    assert_eq!(sent["service_tier"], "auto", "{sent}");
    assert_eq!(sent["metadata"], json!({"user_id": "user_abc_account_1"}));
}
