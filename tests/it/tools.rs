//! Agent workloads through both fronts and every upstream kind: tools
//! offered and called (streamed piece by piece and whole), a tool result
//! sent back, `response_format`, `seed` and vendor extras arriving upstream
//! as each wire says them, and refusals naming what a wire cannot say.
//! Answers are read as the OpenAI SDKs read them (tool calls accumulated
//! by index from `delta.tool_calls`); upstreams are scripted byte for byte.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use llmgate::proto::{
    CompleteRequest, Message, ResponseFormat, Tool, ToolCall, ToolCallDelta, ToolChoice,
};
use serde_json::{Value, json};

use crate::support::*;

// === an OpenAI client's view ===

/// `POST /v1/chat/completions` with `body`: the status and the body.
async fn chat(gateway: &Gateway, body: &Value) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = http::Request::post(format!("http://{}/v1/chat/completions", gateway.http_addr))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("the gateway answers in time")
        .expect("an HTTP response");
    let status = response.status().as_u16();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("the body ends in time")
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A whole answer's JSON, which must be a 200.
async fn chat_ok(gateway: &Gateway, body: &Value) -> Value {
    let (status, text) = chat(gateway, body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("JSON answer")
}

/// A streamed answer as the SDK accumulates it.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    /// (id, name, arguments) by index.
    calls: Vec<(String, String, String)>,
    /// Every `delta.tool_calls` piece, in order.
    pieces: Vec<Value>,
    finish_reason: Option<String>,
    done: bool,
}

async fn chat_stream(gateway: &Gateway, body: &Value) -> Streamed {
    let (status, text) = chat(gateway, body).await;
    assert_eq!(status, 200, "{text}");
    let mut out = Streamed::default();
    for event in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = event.strip_prefix("data: ").expect("a data event");
        if data == "[DONE]" {
            out.done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).expect("JSON chunk");
        assert!(chunk.get("error").is_none(), "stream failed: {chunk}");
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        out.text
            .push_str(choice["delta"]["content"].as_str().unwrap_or(""));
        for piece in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            out.pieces.push(piece.clone());
            let index = piece["index"].as_u64().expect("a piece has its index") as usize;
            while out.calls.len() <= index {
                out.calls.push(Default::default());
            }
            let call = &mut out.calls[index];
            if let Some(id) = piece["id"].as_str() {
                assert_eq!(piece["type"], "function", "{piece}");
                call.0 = id.to_string();
            }
            if let Some(name) = piece["function"]["name"].as_str() {
                call.1.push_str(name);
            }
            call.2
                .push_str(piece["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.finish_reason = Some(reason.to_string());
        }
    }
    out
}

fn call(id: &str, name: &str, arguments: &str) -> (String, String, String) {
    (id.into(), name.into(), arguments.into())
}

// === what callers send ===

const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}"#;

fn weather_schema() -> Value {
    serde_json::from_str(WEATHER_SCHEMA).expect("schema")
}

/// The tools every test offers, in OpenAI's shape.
fn openai_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city", "parameters": weather_schema()}},
        {"type": "function", "function": {"name": "get_time"}},
    ])
}

/// A conversation whose last turn is a tool's result.
fn tool_result_turn() -> Value {
    json!([
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C, sunny"},
    ])
}

/// The same over gRPC.
fn grpc_tool_request(stream_model: &str) -> CompleteRequest {
    CompleteRequest {
        model: stream_model.into(),
        messages: vec![Message {
            role: "user".into(),
            content: "Weather in Paris?".into(),
            ..Default::default()
        }],
        tools: vec![
            Tool {
                name: "get_weather".into(),
                description: "Weather in a city".into(),
                parameters_json: WEATHER_SCHEMA.into(),
            },
            Tool {
                name: "get_time".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn grpc_tool_result_turn() -> Vec<Message> {
    vec![
        Message {
            role: "user".into(),
            content: "Weather in Paris?".into(),
            ..Default::default()
        },
        Message {
            role: "assistant".into(),
            tool_calls: vec![ToolCall {
                id: "call_a".into(),
                name: "get_weather".into(),
                arguments: r#"{"city":"Paris"}"#.into(),
            }],
            ..Default::default()
        },
        Message {
            role: "tool".into(),
            content: "18C, sunny".into(),
            tool_call_id: "call_a".into(),
            ..Default::default()
        },
    ]
}

// === scripted upstreams ===

fn sse_data(events: &[Value]) -> Vec<u8> {
    events
        .iter()
        .map(|e| format!("data: {e}\n\n"))
        .collect::<String>()
        .into_bytes()
}

/// vLLM streaming two tool calls, the first one's arguments in pieces.
fn openai_tool_stream() -> Vec<Step> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "served",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut body = sse_data(&[
        chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                "function": {"name": "get_time", "arguments": "{}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
    ]);
    body.extend_from_slice(b"data: [DONE]\n\n");
    stream_reply("text/event-stream", &body)
}

/// vLLM's whole answer calling one tool.
fn openai_tool_answer() -> Vec<Step> {
    json_reply(
        200,
        &json!({"id": "c", "object": "chat.completion", "model": "served",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null, "tool_calls": [{"id": "call_a",
                "type": "function", "function": {"name": "get_weather",
                "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 9, "total_tokens": 49}}),
    )
}

/// Anthropic streaming some text, then a tool_use block in pieces.
fn anthropic_tool_stream() -> Vec<Step> {
    let events = [
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Checking."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "ping"}),
        json!({"type": "content_block_start", "index": 1, "content_block":
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
        json!({"type": "content_block_delta", "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
            "usage": {"output_tokens": 30}}),
        json!({"type": "message_stop"}),
    ];
    let body: String = events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect();
    stream_reply("text/event-stream", body.as_bytes())
}

/// Anthropic's whole answer calling one tool.
fn anthropic_tool_answer() -> Vec<Step> {
    json_reply(
        200,
        &json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 20, "output_tokens": 30}}),
    )
}

/// Ollama streaming one whole tool call, then its final line.
fn ollama_tool_stream() -> Vec<Step> {
    let lines = [
        json!({"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            "done": false}),
        json!({"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": true,
            "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 12}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    stream_reply("application/x-ndjson", body.as_bytes())
}

/// Ollama's whole answer calling one tool.
fn ollama_tool_answer() -> Vec<Step> {
    json_reply(
        200,
        &json!({"model": "llama3.2", "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            "done": true, "done_reason": "stop", "prompt_eval_count": 30, "eval_count": 12}),
    )
}

/// The one request the upstream received.
fn only_request(upstream: &FakeUpstream) -> Value {
    let received = upstream.received();
    assert_eq!(received.len(), 1, "{received:#?}");
    received[0].body.clone()
}

// === OpenAI-compatible upstreams: everything as sent ===

#[tokio::test]
async fn openai_tool_calls_stream_piece_by_piece_to_an_http_caller() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| openai_tool_stream()).await;
    let streamed = chat_stream(
        &gateway,
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}],
                "tools": openai_tools(), "tool_choice": "required",
                "parallel_tool_calls": true}),
    )
    .await;
    assert_eq!(
        streamed.calls,
        [
            call("call_a", "get_weather", r#"{"city":"Paris"}"#),
            call("call_b", "get_time", "{}"),
        ]
    );
    assert_eq!(
        streamed.pieces.len(),
        4,
        "every piece passes as it came: {:?}",
        streamed.pieces
    );
    assert_eq!(
        streamed.pieces[1],
        json!({"index": 0, "function": {"arguments": "{\"city\":"}}),
        "a later piece carries only arguments"
    );
    assert_eq!(streamed.text, "");
    assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
    assert!(streamed.done);

    let sent = only_request(&upstream);
    assert_eq!(sent["tools"], openai_tools());
    assert_eq!(sent["tool_choice"], "required");
    assert_eq!(sent["parallel_tool_calls"], true);
}

#[tokio::test]
async fn a_whole_openai_tool_call_answer_carries_message_tool_calls() {
    let (_upstream, gateway) = gateway_to("openai", "", &no_env, |_| openai_tool_answer()).await;
    let answer = chat_ok(
        &gateway,
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "tools": openai_tools()}),
    )
    .await;
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": "call_a", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(answer["usage"]["completion_tokens"], 9);
}

#[tokio::test]
async fn a_tool_result_turn_and_every_extra_reach_an_openai_upstream_as_sent() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| paris_reply()).await;
    let response_format = json!({"type": "json_schema", "json_schema":
        {"name": "weather", "schema": weather_schema(), "strict": true}});
    let extras = json!({
        "seed": 7, "user": "u-1", "logprobs": true, "top_logprobs": 2,
        "presence_penalty": 0.5, "frequency_penalty": 0.25, "logit_bias": {"42": -100},
        "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1,
        "guided_decoding_backend": "xgrammar",
    });
    let mut body = json!({"model": "m", "messages": tool_result_turn(),
        "tools": openai_tools(), "tool_choice": {"type": "function",
        "function": {"name": "get_weather"}}, "response_format": response_format});
    for (field, value) in extras.as_object().expect("object") {
        body[field] = value.clone();
    }
    chat_ok(&gateway, &body).await;

    let sent = only_request(&upstream);
    let mut expected = body.clone();
    expected["model"] = json!("upstream-model");
    expected["stream"] = json!(false);
    assert_eq!(sent, expected, "only model (and stream) differ");
}

// === Anthropic: translated ===

#[tokio::test]
async fn anthropic_tool_use_streams_as_openai_tool_call_pieces() {
    let (upstream, gateway) =
        gateway_to("anthropic", "", &no_env, |_| anthropic_tool_stream()).await;
    let streamed = chat_stream(
        &gateway,
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}],
                "tools": openai_tools(), "tool_choice": "required",
                "parallel_tool_calls": false, "top_k": 5, "user": "u-1"}),
    )
    .await;
    assert_eq!(streamed.text, "Checking.");
    assert_eq!(
        streamed.calls,
        [call("toolu_1", "get_weather", r#"{"city": "Paris"}"#)]
    );
    assert_eq!(
        streamed.pieces.len(),
        3,
        "the start, then each non-empty input_json_delta: {:?}",
        streamed.pieces
    );
    assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
    assert!(streamed.done);

    let sent = only_request(&upstream);
    assert_eq!(
        sent["tools"],
        json!([
            {"name": "get_weather", "description": "Weather in a city",
             "input_schema": weather_schema()},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["metadata"], json!({"user_id": "u-1"}));
}

#[tokio::test]
async fn a_tool_result_turn_reaches_anthropic_as_tool_use_and_tool_result_blocks() {
    let (upstream, gateway) =
        gateway_to("anthropic", "", &no_env, |_| anthropic_tool_answer()).await;
    let answer = chat_ok(
        &gateway,
        &json!({"model": "m", "messages": tool_result_turn(), "tools": openai_tools()}),
    )
    .await;
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], "Checking.");
    assert_eq!(
        message["tool_calls"],
        json!([{"id": "toolu_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}])
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");

    let sent = only_request(&upstream);
    assert_eq!(sent["system"], "Use tools.");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_a",
                "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_a",
                "content": "18C, sunny"}]},
        ])
    );
}

#[tokio::test]
async fn what_anthropic_cannot_say_is_refused_naming_the_field() {
    let (upstream, gateway) =
        gateway_to("anthropic", "", &no_env, |_| anthropic_tool_answer()).await;
    for (extra, field) in [
        (json!({"seed": 1}), "seed"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
        (json!({"logprobs": true}), "logprobs"),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, text) = chat(&gateway, &body).await;
        assert_eq!(status, 400, "{field}: {text}");
        let error: Value = serde_json::from_str(&text).expect("JSON error");
        assert_eq!(error["error"]["param"], field, "{text}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Anthropic")),
            "{text}"
        );
    }
    assert_eq!(upstream.count(), 0, "nothing was sent upstream");
}

// === Ollama: translated ===

#[tokio::test]
async fn ollama_tool_calls_stream_whole_with_made_up_ids_and_finish_tool_calls() {
    let (upstream, gateway) = gateway_to("ollama", "", &no_env, |_| ollama_tool_stream()).await;
    let streamed = chat_stream(
        &gateway,
        &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}],
                "tools": openai_tools(), "seed": 3, "top_k": 10, "repetition_penalty": 1.2,
                "response_format": {"type": "json_schema",
                    "json_schema": {"name": "w", "schema": weather_schema()}}}),
    )
    .await;
    assert_eq!(streamed.calls.len(), 1, "{streamed:?}");
    let (id, name, arguments) = &streamed.calls[0];
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(name, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(arguments).expect("JSON arguments"),
        json!({"city": "Paris"})
    );
    assert_eq!(streamed.finish_reason.as_deref(), Some("tool_calls"));
    assert!(streamed.done);

    let sent = only_request(&upstream);
    assert_eq!(sent["tools"], openai_tools(), "Ollama takes OpenAI's tools");
    assert_eq!(sent["format"], weather_schema(), "the schema is the format");
    assert_eq!(
        sent["options"],
        json!({"seed": 3, "top_k": 10, "repeat_penalty": 1.2})
    );
}

#[tokio::test]
async fn a_tool_result_turn_reaches_ollama_with_argument_objects_and_the_tool_name() {
    let (upstream, gateway) = gateway_to("ollama", "", &no_env, |_| ollama_tool_answer()).await;
    let answer = chat_ok(
        &gateway,
        &json!({"model": "m", "messages": tool_result_turn(),
                "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        answer["choices"][0]["message"]["tool_calls"][0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );

    let sent = only_request(&upstream);
    assert_eq!(sent["format"], "json");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "18C, sunny", "tool_name": "get_weather"},
        ])
    );
}

#[tokio::test]
async fn what_ollama_cannot_say_is_refused_naming_the_field() {
    let (upstream, gateway) = gateway_to("ollama", "", &no_env, |_| ollama_tool_answer()).await;
    for (extra, field) in [
        (
            json!({"tools": openai_tools(), "tool_choice": "required"}),
            "tool_choice",
        ),
        (json!({"logit_bias": {"1": 5}}), "logit_bias"),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]}]}),
            "messages[0].content[0].image_url.url",
        ),
    ] {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, text) = chat(&gateway, &body).await;
        assert_eq!(status, 400, "{field}: {text}");
        let error: Value = serde_json::from_str(&text).expect("JSON error");
        assert_eq!(error["error"]["param"], field, "{text}");
    }
    assert_eq!(upstream.count(), 0, "nothing was sent upstream");
}

// === gRPC ===

#[tokio::test]
async fn grpc_tools_response_format_and_seed_reach_openai_and_calls_stream_back() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| openai_tool_stream()).await;
    let request = CompleteRequest {
        tool_choice: Some(ToolChoice {
            mode: "function".into(),
            function: "get_weather".into(),
        }),
        response_format: Some(ResponseFormat {
            r#type: "json_schema".into(),
            name: "weather".into(),
            schema_json: WEATHER_SCHEMA.into(),
            strict: Some(true),
        }),
        seed: Some(11),
        ..grpc_tool_request("m")
    };
    let chunks = gateway.stream(request).await.expect("stream succeeds");
    let pieces: Vec<&ToolCallDelta> = chunks.iter().flat_map(|c| &c.tool_calls).collect();
    assert_eq!(
        pieces,
        [
            &ToolCallDelta {
                index: 0,
                id: "call_a".into(),
                name: "get_weather".into(),
                arguments: String::new(),
            },
            &ToolCallDelta {
                index: 0,
                arguments: "{\"city\":".into(),
                ..Default::default()
            },
            &ToolCallDelta {
                index: 0,
                arguments: "\"Paris\"}".into(),
                ..Default::default()
            },
            &ToolCallDelta {
                index: 1,
                id: "call_b".into(),
                name: "get_time".into(),
                arguments: "{}".into(),
            },
        ]
    );
    let last = chunks.last().expect("chunks");
    assert!(last.done);
    assert_eq!(last.finish_reason, "tool_calls");

    let sent = only_request(&upstream);
    assert_eq!(
        sent["tools"],
        json!([
            {"type": "function", "function": {"name": "get_weather",
                "description": "Weather in a city", "parameters": weather_schema()}},
            {"type": "function", "function": {"name": "get_time"}},
        ])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema":
            {"name": "weather", "schema": weather_schema(), "strict": true}})
    );
    assert_eq!(sent["seed"], 11);
}

#[tokio::test]
async fn grpc_tool_result_turn_reaches_openai_and_a_whole_call_comes_back() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| openai_tool_answer()).await;
    let answer = gateway
        .complete(CompleteRequest {
            messages: grpc_tool_result_turn(),
            ..grpc_tool_request("m")
        })
        .await
        .expect("call succeeds");
    assert_eq!(answer.finish_reason, "tool_calls");
    assert_eq!(answer.text, "");
    assert_eq!(
        answer.tool_calls,
        [ToolCall {
            id: "call_a".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }]
    );
    let sent = only_request(&upstream);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "content": "18C, sunny", "tool_call_id": "call_a"},
        ])
    );
}

#[tokio::test]
async fn grpc_tool_calls_through_anthropic_and_ollama() {
    let (_anthropic, gateway) =
        gateway_to("anthropic", "", &no_env, |_| anthropic_tool_stream()).await;
    let chunks = gateway
        .stream(grpc_tool_request("m"))
        .await
        .expect("stream succeeds");
    assert_eq!(text_of(&chunks), "Checking.");
    let arguments: String = chunks
        .iter()
        .flat_map(|c| &c.tool_calls)
        .map(|d| d.arguments.as_str())
        .collect();
    assert_eq!(arguments, r#"{"city": "Paris"}"#);
    assert_eq!(
        chunks.last().map(|c| c.finish_reason.as_str()),
        Some("tool_calls")
    );

    let (ollama, gateway) = gateway_to("ollama", "", &no_env, |_| ollama_tool_answer()).await;
    let answer = gateway
        .complete(CompleteRequest {
            messages: grpc_tool_result_turn(),
            ..grpc_tool_request("m")
        })
        .await
        .expect("call succeeds");
    assert_eq!(answer.finish_reason, "tool_calls");
    assert_eq!(answer.tool_calls.len(), 1);
    assert_eq!(answer.tool_calls[0].name, "get_weather");
    let sent = only_request(&ollama);
    assert_eq!(sent["messages"][2]["tool_name"], "get_weather");
}

#[tokio::test]
async fn grpc_tools_that_cannot_be_sent_are_invalid_argument_naming_the_field() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, |_| paris_reply()).await;
    let mut not_json = grpc_tool_request("m");
    not_json.tools[0].parameters_json = "{not json".into();
    let mut nameless = grpc_tool_request("m");
    nameless.tools[1].name.clear();
    let mut no_call_id = grpc_tool_request("m");
    no_call_id.messages = grpc_tool_result_turn();
    no_call_id.messages[2].tool_call_id.clear();
    for (request, field) in [
        (not_json, "tools[0].parameters_json"),
        (nameless, "tools[1].name"),
        (no_call_id, "messages[2].tool_call_id"),
    ] {
        let status = gateway.complete(request).await.expect_err("refused");
        assert_status(&status, tonic::Code::InvalidArgument, &[field]);
    }
    assert_eq!(upstream.count(), 0);
}

// === broken streams ===

#[tokio::test]
async fn a_stream_that_broke_after_tool_call_pieces_is_not_continued() {
    let script = |_: &Received| {
        let first = json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
            "model": "served", "choices": [{"index": 0, "finish_reason": null,
            "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"ci"}}]}}]});
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("data: {first}\n\n").into_bytes()),
            Step::Cut,
        ]
    };
    let a = FakeUpstream::start(script).await;
    let b = FakeUpstream::start(script).await;
    let gateway = Gateway::start(&format!(
        "upstreams:\n  pool:\n    kind: openai\n    endpoints: [{}, {}]\n\
         routes:\n  - model: m\n    pools: [{{ upstream: pool, model: upstream-model }}]\n",
        a.url(),
        b.url()
    ))
    .await;
    let status = gateway
        .stream(grpc_tool_request("m"))
        .await
        .expect_err("the stream ends with an error");
    assert_status(
        &status,
        tonic::Code::Unavailable,
        &["could not be continued", "tool call"],
    );
    assert_eq!(
        a.count() + b.count(),
        1,
        "no second request continues a half-made tool call"
    );
}

// === logprobs ===

#[tokio::test]
async fn logprobs_come_back_whole_and_gathered_from_a_stream() {
    let entry = |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": null, "top_logprobs": []});
    let (e1, e2) = (entry("Par", -0.1), entry("is", -0.02));
    let (whole_entries, streamed_entries) = ([e1.clone(), e2.clone()], (e1.clone(), e2.clone()));
    let (_upstream, gateway) = gateway_to("openai", "", &no_env, move |received| {
        if received.body["stream"] == true {
            let chunk = |text: &str, entry: &Value| {
                json!({"id": "c", "object": "chat.completion.chunk", "created": 1,
                    "model": "served", "choices": [{"index": 0, "delta": {"content": text},
                    "logprobs": {"content": [entry]}, "finish_reason": null}]})
            };
            let mut body = sse_data(&[
                chunk("Par", &streamed_entries.0),
                chunk("is", &streamed_entries.1),
            ]);
            body.extend_from_slice(sse_finish("stop", 3, 2).as_bytes());
            stream_reply("text/event-stream", &body)
        } else {
            json_reply(
                200,
                &json!({"id": "c", "object": "chat.completion", "model": "served",
                    "choices": [{"index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Paris"},
                        "logprobs": {"content": whole_entries}}]}),
            )
        }
    })
    .await;
    let ask = |stream: bool| {
        json!({"model": "m", "stream": stream, "logprobs": true,
               "messages": [{"role": "user", "content": "Capital of France?"}]})
    };
    let answer = chat_ok(&gateway, &ask(false)).await;
    assert_eq!(
        answer["choices"][0]["logprobs"],
        json!({"content": [e1, e2]})
    );

    let (status, text) = chat(&gateway, &ask(true)).await;
    assert_eq!(status, 200, "{text}");
    let finish = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .find(|chunk| chunk["choices"][0]["finish_reason"].is_string())
        .expect("a finish chunk");
    assert_eq!(
        finish["choices"][0]["logprobs"],
        json!({"content": [e1, e2]}),
        "every token's logprobs, in order, on the finish chunk"
    );
}
