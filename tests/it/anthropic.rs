//! Calls through the gateway to an Anthropic upstream (`kind: anthropic`):
//! what the caller gets back, and what the Messages API is sent. The fake
//! upstream replays the fixtures in `tests/fixtures/anthropic` byte for
//! byte.

use llmgate::proto::Message;
use serde_json::json;
use tonic::Code;

use crate::support::*;

const SSE: &str = "text/event-stream";
const KEY: &str = "sk-ant-test-4f1e9a77c2";
/// The text of `anthropic/messages_stream.sse`.
const STREAM_TEXT: &str = "Hello! Grüße aus Zürich";

/// A fake Anthropic answering with `script`, and a gateway routing `m` to
/// it with the key [`KEY`] and `extra` upstream keys.
async fn anthropic(
    extra: &str,
    script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
) -> (FakeUpstream, Gateway) {
    gateway_to("anthropic", &with_key(extra), &key_env, script).await
}

fn with_key(extra: &str) -> String {
    format!("    api_key_env: ANTHROPIC_KEY\n{extra}")
}

fn key_env(name: &str) -> Option<String> {
    (name == "ANTHROPIC_KEY").then(|| KEY.to_string())
}

fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
        ..Default::default()
    }
}

/// An Anthropic error body.
fn error_body(kind: &str, message: &str) -> serde_json::Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[tokio::test]
async fn unary_call_returns_text_usage_finish_reason_and_model() {
    let (upstream, gateway) = anthropic("", |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    let answer = gateway
        .complete(request("m", "Hello, Claude"))
        .await
        .expect("call succeeds");
    assert_eq!(answer.text, "Hi! My name is Claude.");
    assert_eq!(answer.finish_reason, "stop", "end_turn is normalized");
    assert_eq!(answer.model, "claude-3-5-sonnet-20241022");
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (2095, 503));

    let sent = upstream.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(
        sent[0].body,
        json!({
            "model": "upstream-model",
            "messages": [{"role": "user", "content": "Hello, Claude"}],
            "max_tokens": 4096,
            "stream": false,
        }),
        "max_tokens is required: the default applies; nothing else is invented"
    );
}

#[tokio::test]
async fn the_key_and_api_version_headers_are_sent() {
    let (upstream, gateway) = anthropic("", |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    let sent = &sent_for(&gateway, &upstream, request("m", "hi")).await;
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        sent.header("authorization"),
        None,
        "the key goes in x-api-key only"
    );
    assert_eq!(sent.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn stream_delivers_tokens_in_order_then_usage_and_finish_reason() {
    let (upstream, gateway) = anthropic("", |_| {
        stream_reply(SSE, &fixture("anthropic/messages_stream.sse"))
    })
    .await;
    let chunks = gateway
        .stream(request("m", "Hello"))
        .await
        .expect("stream succeeds");
    let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(tokens, ["Hello", "!", " Grüße aus Zürich", ""]);
    // Input from message_start, output from message_delta.
    assert_final_chunk(&chunks, "stop", "claude-3-5-sonnet-20241022", (25, 15));

    let sent = &upstream.received()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.header("accept"), Some(SSE));
}

#[tokio::test]
async fn sse_split_at_every_byte_boundary_gives_the_same_answer() {
    let stream = fixture("anthropic/messages_stream.sse");
    let upstream = splitting_upstream(SSE, stream.clone()).await;
    let yaml = one_upstream_of_kind("anthropic", &upstream.url(), &with_key(""));
    let gateway = Gateway::start_with_env(&yaml, &key_env).await;
    let mut client = gateway.client().await;
    assert_every_split_gives(&mut client, stream.len(), STREAM_TEXT, "stop", (25, 15)).await;
}

#[tokio::test]
async fn system_messages_move_to_the_top_level_system_field() {
    let (upstream, gateway) = anthropic("", |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    let mut req = request("m", "ignored");
    req.messages = vec![
        message("system", "You are terse."),
        message("system", "Answer in French."),
        message("user", "Hello"),
        message("assistant", "Bonjour."),
        message("user", "How are you?"),
    ];
    let sent = &sent_for(&gateway, &upstream, req).await;
    assert_eq!(sent.body["system"], "You are terse.\n\nAnswer in French.");
    assert_eq!(
        sent.body["messages"],
        json!([
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Bonjour."},
            {"role": "user", "content": "How are you?"},
        ])
    );
}

#[tokio::test]
async fn a_system_message_mid_conversation_is_invalid_argument_and_nothing_is_sent() {
    let (upstream, gateway) = anthropic("", |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    let mut client = gateway.client().await;
    let mut req = request("m", "ignored");
    req.messages = vec![
        message("user", "Hello"),
        message("system", "Now answer in French."),
    ];
    let status = client
        .complete(req)
        .await
        .expect_err("Anthropic has no place for it");
    assert_status(
        &status,
        Code::InvalidArgument,
        &[
            "messages[1].role",
            "'up'",
            "Anthropic",
            "move them to the start",
        ],
    );

    let mut req = request("m", "ignored");
    req.messages = vec![message("system", "Only instructions.")];
    let status = collect(&mut client, req)
        .await
        .expect_err("nothing to answer");
    assert_status(
        &status,
        Code::InvalidArgument,
        &["at least one user message"],
    );
    assert!(upstream.received().is_empty(), "a refused call is not sent");
}

#[tokio::test]
async fn sampling_parameters_and_the_callers_max_tokens_are_sent() {
    let (upstream, gateway) = anthropic("    default_max_tokens: 1000\n", |_| {
        json_reply(200, &json_fixture("anthropic/message.json"))
    })
    .await;
    let mut client = gateway.client().await;
    let mut req = request("m", "hi");
    req.max_tokens = 300;
    req.temperature = Some(0.5);
    req.stop = vec!["\n\nHuman:".into()];
    client.complete(req).await.expect("call succeeds");
    client
        .complete(request("m", "hi"))
        .await
        .expect("call succeeds");
    let sent = upstream.received();
    assert_eq!(sent[0].body["max_tokens"], 300, "the caller's cap wins");
    assert_eq!(sent[0].body["temperature"], 0.5);
    assert_eq!(sent[0].body["stop_sequences"], json!(["\n\nHuman:"]));
    assert_eq!(
        sent[1].body["max_tokens"], 1000,
        "the upstream's default_max_tokens"
    );
}

#[tokio::test]
async fn a_max_tokens_stop_reports_length() {
    let (_upstream, gateway) = anthropic("", |_| {
        let mut answer = json_fixture("anthropic/message.json");
        answer["stop_reason"] = json!("max_tokens");
        json_reply(200, &answer)
    })
    .await;
    let answer = gateway
        .complete(request("m", "hi"))
        .await
        .expect("call succeeds");
    assert_eq!(answer.finish_reason, "length");
}

#[tokio::test]
async fn upstream_error_bodies_map_to_canonical_codes_and_keep_the_message() {
    let cases = [
        (400, "invalid_request_error", Code::InvalidArgument),
        (401, "authentication_error", Code::Unauthenticated),
        (403, "permission_error", Code::PermissionDenied),
        (404, "not_found_error", Code::NotFound),
        (429, "rate_limit_error", Code::ResourceExhausted),
        (500, "api_error", Code::Unavailable),
        (529, "overloaded_error", Code::Unavailable),
    ];
    for (status, kind, code) in cases {
        let (_upstream, gateway) = anthropic("", move |_| {
            json_reply(status, &error_body(kind, &format!("upstream says {kind}")))
        })
        .await;
        let mut client = gateway.client().await;
        for err in errors_both_ways(&mut client, request("m", "hi")).await {
            assert_status(&err, code, &[&format!("upstream says {kind}")]);
        }
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_call_with_its_code_after_the_tokens() {
    let overloaded = fixture("anthropic/messages_stream_overloaded.sse");
    let rate_limited = String::from_utf8(overloaded.clone())
        .expect("utf-8")
        .replace(
            r#"{"type": "overloaded_error", "message": "Overloaded"}"#,
            r#"{"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}"#,
        )
        .into_bytes();
    for (body, code, words) in [
        (
            overloaded,
            Code::Unavailable,
            "overloaded_error: Overloaded",
        ),
        (
            rate_limited,
            Code::ResourceExhausted,
            "rate_limit_error: Number of request tokens",
        ),
    ] {
        // An upstream that does not continue answers: the break is the
        // caller's to see.
        let no_continuation = "    continuation: none\n";
        let (_upstream, gateway) =
            anthropic(no_continuation, move |_| stream_reply(SSE, &body)).await;
        let (chunks, status) =
            stream_until_error(&mut gateway.client().await, request("m", "hi")).await;
        assert_eq!(text_of(&chunks), "Once upon");
        assert_status(&status, code, &[words, "after 1 tokens"]);
    }
}

#[tokio::test]
async fn a_stream_cut_before_its_stop_is_an_error_never_a_short_answer() {
    let text = String::from_utf8(fixture("anthropic/messages_stream.sse")).expect("utf-8");
    // Cut before the event of the third text delta: two tokens came, but
    // neither message_delta nor message_stop.
    let third = text.find(" Grüße").expect("the third delta");
    let cut_at = text[..third].rfind("event: ").expect("its event line");
    for ending in [Step::End, Step::Cut] {
        let body = text.as_bytes()[..cut_at].to_vec();
        let (_upstream, gateway) = anthropic("", move |_| {
            vec![
                Step::Head(200, SSE),
                Step::Chunk(body.clone()),
                ending.clone(),
            ]
        })
        .await;
        let status = gateway
            .stream(request("m", "hi"))
            .await
            .expect_err("an incomplete stream is an error");
        assert_status(&status, Code::Unavailable, &["after 2 tokens"]);
    }
}

#[tokio::test]
async fn a_stream_that_said_why_it_stopped_is_whole_without_message_stop() {
    let text = String::from_utf8(fixture("anthropic/messages_stream.sse")).expect("utf-8");
    let without_stop = &text[..text.find("event: message_stop").expect("message_stop")];
    let body = without_stop.as_bytes().to_vec();
    let (_upstream, gateway) = anthropic("", move |_| stream_reply(SSE, &body)).await;
    let chunks = gateway
        .stream(request("m", "hi"))
        .await
        .expect("the answer is whole");
    assert_eq!(text_of(&chunks), STREAM_TEXT);
    assert_eq!(
        chunks.last().map(|c| c.finish_reason.as_str()),
        Some("stop")
    );
}

#[tokio::test]
async fn a_key_the_upstream_echoes_back_never_reaches_the_caller() {
    let (upstream, gateway) = anthropic("", |received| {
        let sent_key = received.header("x-api-key").unwrap_or_default().to_string();
        json_reply(
            401,
            &error_body(
                "authentication_error",
                &format!("invalid x-api-key: {sent_key}"),
            ),
        )
    })
    .await;
    for status in errors_both_ways(&mut gateway.client().await, request("m", "hi")).await {
        assert_status(&status, Code::Unauthenticated, &["invalid x-api-key: ***"]);
        assert!(!status.message().contains(KEY), "{}", status.message());
    }
    assert_eq!(
        upstream.received()[0].header("x-api-key"),
        Some(KEY),
        "the key was sent"
    );

    // Nor in the message about an upstream that cannot be reached.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let yaml = one_upstream_of_kind("anthropic", &format!("http://{closed}"), &with_key(""));
    let gateway = Gateway::start_with_env(&yaml, &key_env).await;
    let status = gateway
        .complete(request("m", "hi"))
        .await
        .expect_err("nothing listens there");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(!status.message().contains(KEY), "{}", status.message());
}

#[tokio::test]
async fn headers_can_override_the_api_version_and_add_beta_flags() {
    let (upstream, gateway) = anthropic(
        "    headers:\n      anthropic-version: 2099-01-01\n      anthropic-beta: output-128k-2025-02-19\n",
        |_| json_reply(200, &json_fixture("anthropic/message.json")),
    )
    .await;
    let sent = &sent_for(&gateway, &upstream, request("m", "hi")).await;
    assert_eq!(sent.header("anthropic-version"), Some("2099-01-01"));
    assert_eq!(
        sent.header("anthropic-beta"),
        Some("output-128k-2025-02-19")
    );
}
