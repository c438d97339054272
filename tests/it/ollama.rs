//! Calls through the gateway to an Ollama upstream (`kind: ollama`): what
//! the caller gets back, and what Ollama's native API is sent. The fake
//! upstream replays the fixtures in `tests/fixtures/ollama` byte for byte.

use serde_json::json;
use tonic::Code;

use crate::support::*;

const NDJSON: &str = "application/x-ndjson";
/// The text of `ollama/chat_stream.ndjson`.
const STREAM_TEXT: &str = "The sky is blue: Rayleigh scattering ∝ λ⁻⁴.";

/// A fake Ollama answering with `script`, and a gateway routing `m` to it.
async fn ollama(
    script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
) -> (FakeUpstream, Gateway) {
    gateway_to("ollama", "", &no_env, script).await
}

#[tokio::test]
async fn unary_call_returns_text_usage_finish_reason_and_model() {
    let (upstream, gateway) = ollama(|_| json_reply(200, &json_fixture("ollama/chat.json"))).await;
    let answer = gateway
        .complete(request("m", "why is the sky blue?"))
        .await
        .expect("call succeeds");
    assert_eq!(answer.text, "Hello! How are you today?");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!(answer.model, "llama3.2");
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (26, 298));

    let sent = upstream.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].method.as_str(), sent[0].path.as_str()),
        ("POST", "/api/chat")
    );
    assert_eq!(
        sent[0].body,
        json!({
            "model": "upstream-model",
            "messages": [{"role": "user", "content": "why is the sky blue?"}],
            "stream": false,
        }),
        "unset parameters are left to Ollama"
    );
}

#[tokio::test]
async fn stream_delivers_tokens_in_order_then_usage_and_finish_reason() {
    let (upstream, gateway) =
        ollama(|_| stream_reply(NDJSON, &fixture("ollama/chat_stream.ndjson"))).await;
    let chunks = gateway
        .stream(request("m", "hi"))
        .await
        .expect("stream succeeds");
    let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(
        tokens,
        [
            "The",
            " sky",
            " is",
            " blue:",
            " Rayleigh",
            " scattering ∝ λ⁻⁴.",
            ""
        ]
    );
    assert_final_chunk(&chunks, "stop", "llama3.2", (26, 9));

    let sent = &upstream.received()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.header("accept"), Some(NDJSON));
}

#[tokio::test]
async fn ndjson_split_at_every_byte_boundary_gives_the_same_answer() {
    let stream = fixture("ollama/chat_stream.ndjson");
    let upstream = splitting_upstream(NDJSON, stream.clone()).await;
    let gateway = Gateway::start(&one_upstream_of_kind("ollama", &upstream.url(), "")).await;
    let mut client = gateway.client().await;
    assert_every_split_gives(&mut client, stream.len(), STREAM_TEXT, "stop", (26, 9)).await;
}

#[tokio::test]
async fn ndjson_dripped_one_byte_per_read_gives_the_same_answer() {
    let (_upstream, gateway) = ollama(|_| {
        let mut steps = vec![Step::Head(200, NDJSON)];
        steps.extend(
            fixture("ollama/chat_stream.ndjson")
                .into_iter()
                .map(|b| Step::Chunk(vec![b])),
        );
        steps.push(Step::End);
        steps
    })
    .await;
    let chunks = gateway
        .stream(request("m", "hi"))
        .await
        .expect("stream succeeds");
    assert_eq!(text_of(&chunks), STREAM_TEXT);
}

#[tokio::test]
async fn a_final_line_without_its_newline_still_completes_the_answer() {
    let (_upstream, gateway) = ollama(|_| {
        let mut stream = fixture("ollama/chat_stream.ndjson");
        while stream.last() == Some(&b'\n') {
            stream.pop();
        }
        stream_reply(NDJSON, &stream)
    })
    .await;
    let chunks = gateway
        .stream(request("m", "hi"))
        .await
        .expect("stream succeeds");
    assert_eq!(text_of(&chunks), STREAM_TEXT);
    assert!(chunks.last().is_some_and(|c| c.done && c.usage.is_some()));
}

#[tokio::test]
async fn sampling_parameters_go_in_options_with_keep_alive_and_the_key() {
    let (upstream, gateway) = gateway_to(
        "ollama",
        "    keep_alive: 30m\n    api_key_env: OLLAMA_KEY\n",
        &|name| (name == "OLLAMA_KEY").then(|| "ollama-proxy-token".to_string()),
        |_| json_reply(200, &json_fixture("ollama/chat.json")),
    )
    .await;
    let mut req = request("m", "hi");
    req.max_tokens = 64;
    req.temperature = Some(0.25);
    req.stop = vec!["\n\n".into()];
    req.messages.insert(
        0,
        llmgate::proto::Message {
            role: "system".into(),
            content: "Be brief.".into(),
            ..Default::default()
        },
    );
    let sent = &sent_for(&gateway, &upstream, req).await;
    assert_eq!(
        sent.body["options"],
        json!({"num_predict": 64, "temperature": 0.25, "stop": ["\n\n"]})
    );
    assert_eq!(sent.body["keep_alive"], "1800s");
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Be brief."}),
        "Ollama takes system messages as they are"
    );
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer ollama-proxy-token")
    );
}

#[tokio::test]
async fn a_model_ollama_does_not_have_is_not_found_with_its_message() {
    let (_upstream, gateway) =
        ollama(|_| json_reply(404, &json_fixture("ollama/model_not_found.json"))).await;
    let mut client = gateway.client().await;
    for status in errors_both_ways(&mut client, request("m", "hi")).await {
        assert_status(&status, Code::NotFound, &["model 'llama3.2' not found"]);
    }
}

#[tokio::test]
async fn a_missing_model_reported_inside_a_200_stream_is_still_not_found() {
    // Without a status to go on, Ollama's words decide.
    let (_upstream, gateway) = ollama(|_| {
        stream_reply(
            NDJSON,
            b"{\"error\":\"model 'llama9' not found, try pulling it first\"}\n",
        )
    })
    .await;
    let status = gateway
        .stream(request("m", "hi"))
        .await
        .expect_err("no such model");
    assert_status(&status, Code::NotFound, &["try pulling it first"]);
}

#[tokio::test]
async fn upstream_error_bodies_map_to_canonical_codes_and_keep_the_message() {
    let cases = [
        (
            400,
            Code::InvalidArgument,
            "invalid character '}' looking for beginning of value",
        ),
        (429, Code::ResourceExhausted, "too many requests"),
        (
            500,
            Code::Unavailable,
            "the model failed to generate a response",
        ),
        (502, Code::Unavailable, "cloud model cannot be reached"),
        (
            503,
            Code::Unavailable,
            "server busy, please try again.  maximum pending requests exceeded",
        ),
    ];
    for (status, code, message) in cases {
        let (_upstream, gateway) =
            ollama(move |_| json_reply(status, &json!({"error": message}))).await;
        let mut client = gateway.client().await;
        for err in errors_both_ways(&mut client, request("m", "hi")).await {
            assert_status(&err, code, &[message]);
        }
    }
}

#[tokio::test]
async fn an_error_line_mid_stream_ends_the_call_with_an_error_after_the_tokens() {
    let body = fixture("ollama/chat_stream_error.ndjson");
    let no_continuation = "    continuation: none\n";
    let (_upstream, gateway) = gateway_to("ollama", no_continuation, &no_env, move |_| {
        stream_reply(NDJSON, &body)
    })
    .await;
    let (chunks, status) =
        stream_until_error(&mut gateway.client().await, request("m", "hi")).await;
    let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(tokens, [" Yes", ".", "I"]);
    assert_status(
        &status,
        Code::Unavailable,
        &[
            "an error was encountered while running the model",
            "after 3 tokens",
        ],
    );
}

#[tokio::test]
async fn a_stream_that_ends_without_its_done_line_is_an_error_not_a_short_answer() {
    let full = fixture("ollama/chat_stream.ndjson");
    let text = String::from_utf8(full).expect("utf-8");
    let without_done: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    for ending in [Step::End, Step::Cut] {
        let body = without_done.clone().into_bytes();
        let cut = matches!(ending, Step::Cut);
        let (_upstream, gateway) = ollama(move |_| {
            vec![
                Step::Head(200, NDJSON),
                Step::Chunk(body.clone()),
                ending.clone(),
            ]
        })
        .await;
        let [unary, streamed] =
            errors_both_ways(&mut gateway.client().await, request("m", "hi")).await;
        assert_eq!(unary.code(), Code::Unavailable, "cut: {cut}");
        assert_eq!(streamed.code(), Code::Unavailable, "cut: {cut}");
        assert_status(&streamed, Code::Unavailable, &["after 3 tokens"]);
    }
}

#[tokio::test]
async fn a_line_that_is_not_json_is_an_error() {
    let (_upstream, gateway) = ollama(|_| {
        stream_reply(
            NDJSON,
            b"{\"model\":\"x\",\"message\":{\"content\":\"a\"},\"done\":false}\n<html>oops\n",
        )
    })
    .await;
    let status = gateway
        .stream(request("m", "hi"))
        .await
        .expect_err("garbage is an error");
    assert_status(
        &status,
        Code::Unavailable,
        &["not a valid chat response", "<html>oops"],
    );
}

#[tokio::test]
async fn a_length_cut_answer_reports_length() {
    let (_upstream, gateway) = ollama(|_| {
        json_reply(
            200,
            &json!({
                "model": "llama3.2", "message": {"role": "assistant", "content": "The sky"},
                "done": true, "done_reason": "length", "prompt_eval_count": 5, "eval_count": 2,
            }),
        )
    })
    .await;
    let mut req = request("m", "hi");
    req.max_tokens = 2;
    let answer = gateway.complete(req).await.expect("call succeeds");
    assert_eq!(answer.text, "The sky");
    assert_eq!(answer.finish_reason, "length");
}
