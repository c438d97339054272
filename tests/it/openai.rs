//! Calls through the gateway to an OpenAI-compatible upstream: what the
//! caller gets back, and what the upstream is sent.

use futures_util::StreamExt;
use serde_json::json;
use tonic::Code;

use crate::support::*;

/// The recorded SSE stream of a vLLM answer: keep-alive comments, one event
/// split over several `data:` reads, usage on its own final chunk.
fn recorded_stream() -> String {
    format!(
        ": ping\n\n{}{}{}: keep-alive\n\n{}{}",
        sse_token("Hel"),
        sse_token("lo, "),
        sse_token("wörld"),
        sse_token("!"),
        sse_finish("stop", 7, 4)
    )
}

#[tokio::test]
async fn unary_call_returns_text_usage_finish_reason_and_model() {
    let upstream = FakeUpstream::start(|_| paris_reply()).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let answer = gateway
        .client()
        .await
        .complete(request("m", "Capital of France?"))
        .await
        .expect("call succeeds")
        .into_inner();
    assert_eq!(answer.text, "Paris.");
    assert_eq!(answer.finish_reason, "stop");
    assert_eq!(answer.model, "served-model");
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (12, 2));

    let sent = upstream.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].method, "POST");
    assert_eq!(sent[0].path, "/v1/chat/completions");
    assert_eq!(sent[0].body["model"], "upstream-model");
    assert_eq!(sent[0].body["stream"], false);
    assert_eq!(
        sent[0].body["messages"],
        json!([{"role": "user", "content": "Capital of France?"}])
    );
}

#[tokio::test]
async fn stream_delivers_tokens_in_order_then_usage_on_the_final_chunk() {
    let upstream = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(recorded_stream().into_bytes()),
            Step::End,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let chunks = collect(&mut gateway.client().await, request("m", "hi"))
        .await
        .expect("stream succeeds");
    let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(tokens, ["Hel", "lo, ", "wörld", "!", ""]);
    assert_final_chunk(&chunks, "stop", "upstream-model", (7, 4));

    let sent = &upstream.received()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn sse_split_at_every_byte_boundary_gives_the_same_answer() {
    let upstream = splitting_upstream("text/event-stream", recorded_stream().into_bytes()).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    let len = recorded_stream().len();
    assert_every_split_gives(&mut client, len, "Hello, wörld!", "stop", (7, 4)).await;
}

#[tokio::test]
async fn sse_dripped_one_byte_per_read_gives_the_same_answer() {
    let upstream = FakeUpstream::start(|_| {
        let mut steps = vec![Step::Head(200, "text/event-stream")];
        steps.extend(
            recorded_stream()
                .into_bytes()
                .into_iter()
                .map(|b| Step::Chunk(vec![b])),
        );
        steps.push(Step::End);
        steps
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let chunks = collect(&mut gateway.client().await, request("m", "hi"))
        .await
        .expect("stream succeeds");
    let text: String = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(text, "Hello, wörld!");
}

#[tokio::test]
async fn a_stream_ending_cleanly_without_done_finishes_with_what_it_reported() {
    let upstream = FakeUpstream::start(|_| {
        let finish = sse_finish("length", 3, 2);
        let without_done = finish.replace("data: [DONE]\n\n", "");
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}{}{without_done}", sse_token("a"), sse_token("b")).into_bytes()),
            Step::End,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let chunks = collect(&mut gateway.client().await, request("m", "hi"))
        .await
        .expect("a clean end is not an error");
    let last = chunks.last().expect("final chunk");
    assert!(last.done);
    assert_eq!(last.finish_reason, "length");
    assert_eq!(last.usage.map(|u| u.output_tokens), Some(2));
}

#[tokio::test]
async fn a_stream_without_a_finish_reason_is_a_cut_however_cleanly_it_ends() {
    for (ending, needle) in [
        ("", "without a finish_reason"),
        ("data: [DONE]\n\n", "[DONE] without a finish_reason"),
    ] {
        let upstream = FakeUpstream::start(move |_| {
            vec![
                Step::Head(200, "text/event-stream"),
                Step::Chunk(format!("{}{}{ending}", sse_token("a"), sse_token("b")).into_bytes()),
                Step::End,
            ]
        })
        .await;
        let no_continuation = "    continuation: none\n";
        let gateway = Gateway::start(&one_upstream(&upstream.url(), no_continuation)).await;
        let (chunks, status) =
            stream_until_error(&mut gateway.client().await, request("m", "hi")).await;
        assert_eq!(text_of(&chunks), "ab", "the tokens that came are delivered");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(needle), "{}", status.message());
    }
}

#[tokio::test]
async fn an_event_that_is_not_json_ends_the_call_with_an_error_not_a_short_answer() {
    let upstream = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}data: {{not json\n\n", sse_token("a")).into_bytes()),
            Step::Chunk(sse_finish("stop", 1, 1).into_bytes()),
            Step::End,
        ]
    })
    .await;
    let no_continuation = "    continuation: none\n";
    let gateway = Gateway::start(&one_upstream(&upstream.url(), no_continuation)).await;
    let mut stream = gateway
        .client()
        .await
        .complete_stream(request("m", "hi"))
        .await
        .expect("headers")
        .into_inner();
    let first = stream.next().await.expect("a token").expect("ok token");
    assert_eq!(first.token, "a");
    let status = stream.next().await.expect("an error").expect_err("error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("not a valid chunk"),
        "{}",
        status.message()
    );
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn a_connection_cut_mid_stream_is_unavailable_never_ok() {
    let upstream = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(format!("{}{}", sse_token("one"), sse_token(" two")).into_bytes()),
            Step::Cut,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    let status = collect(&mut client, request("m", "hi"))
        .await
        .expect_err("a cut stream is an error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("after 2 tokens"),
        "{}",
        status.message()
    );

    // The unary form of the same failure is an error too, not a short text.
    let status = client
        .complete(request("m", "hi"))
        .await
        .expect_err("a cut answer is an error");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn upstream_error_statuses_map_to_canonical_codes_and_keep_the_message() {
    let cases = [
        (400, Code::InvalidArgument),
        (401, Code::Unauthenticated),
        (403, Code::PermissionDenied),
        (404, Code::NotFound),
        (429, Code::ResourceExhausted),
        (500, Code::Unavailable),
        (503, Code::Unavailable),
    ];
    for (status, code) in cases {
        let upstream = FakeUpstream::start(move |_| {
            json_reply(
                status,
                &json!({"error": {"message": format!("upstream says {status}"), "type": "x"}}),
            )
        })
        .await;
        let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
        let mut client = gateway.client().await;
        for err in errors_both_ways(&mut client, request("m", "hi")).await {
            assert_eq!(err.code(), code, "HTTP {status}");
            assert!(
                err.message().contains(&format!("upstream says {status}")),
                "HTTP {status}: {}",
                err.message()
            );
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // Bind and drop a listener so the port is known to be closed.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gateway = Gateway::start(&one_upstream(&format!("http://{closed}"), "")).await;
    let status = gateway
        .client()
        .await
        .complete(request("m", "hi"))
        .await
        .expect_err("nothing listens there");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("cannot be reached"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn sampling_parameters_and_the_api_key_reach_the_upstream() {
    let upstream = FakeUpstream::start(|_| {
        json_reply(
            200,
            &json!({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}),
        )
    })
    .await;
    let yaml = one_upstream(&upstream.url(), "    api_key_env: TEST_KEY\n");
    let gateway = Gateway::start_with_env(&yaml, &|name| {
        (name == "TEST_KEY").then(|| "sk-test-123".to_string())
    })
    .await;
    let mut req = request("m", "hi");
    req.max_tokens = 17;
    req.temperature = Some(0.5);
    req.top_p = Some(0.9);
    req.stop = vec!["\n\n".into()];
    req.messages.insert(
        0,
        llmgate::proto::Message {
            role: "system".into(),
            content: "Be brief.".into(),
            ..Default::default()
        },
    );
    gateway
        .client()
        .await
        .complete(req)
        .await
        .expect("call succeeds");
    let sent = &upstream.received()[0];
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(sent.body["max_tokens"], 17);
    assert_eq!(sent.body["temperature"], 0.5);
    assert_eq!(
        sent.body["top_p"].as_f64().map(|p| (p * 100.0).round()),
        Some(90.0)
    );
    assert_eq!(sent.body["stop"], json!(["\n\n"]));
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
}

#[tokio::test]
async fn unset_parameters_are_left_to_the_upstream() {
    let upstream = FakeUpstream::start(|_| {
        json_reply(200, &json!({"choices": [{"message": {"content": "ok"}}]}))
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    gateway
        .client()
        .await
        .complete(request("m", "hi"))
        .await
        .expect("call succeeds");
    let body = &upstream.received()[0].body;
    for field in ["max_tokens", "temperature", "top_p", "stop"] {
        assert!(
            body.get(field).is_none(),
            "{field} should not be sent: {body}"
        );
    }
    assert!(upstream.received()[0].header("authorization").is_none());
}

#[tokio::test]
async fn a_stream_that_ends_without_any_chunk_is_an_error_not_an_empty_answer() {
    let upstream = FakeUpstream::start(|_| {
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(b": just a comment\n\n".to_vec()),
            Step::End,
        ]
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let status = collect(&mut gateway.client().await, request("m", "hi"))
        .await
        .expect_err("no answer at all");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("without sending a single chunk"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_read_whole() {
    let upstream = FakeUpstream::start(|received| {
        if received.body["messages"][0]["content"] == "fail" {
            json_reply(200, &json!({"error": {"message": "model is loading"}}))
        } else {
            json_reply(
                200,
                &json!({"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}),
            )
        }
    })
    .await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "")).await;
    let mut client = gateway.client().await;
    let chunks = collect(&mut client, request("m", "hi"))
        .await
        .expect("answer");
    let text: String = chunks.iter().map(|c| c.token.as_str()).collect();
    assert_eq!(text, "whole");
    assert!(
        chunks
            .last()
            .is_some_and(|c| c.done && c.finish_reason == "stop")
    );
    let status = collect(&mut client, request("m", "fail"))
        .await
        .expect_err("an error body is an error");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("model is loading"),
        "{}",
        status.message()
    );
}

// === cloud extras ===

#[tokio::test]
async fn extra_headers_reach_the_upstream_with_values_from_the_environment() {
    let (upstream, gateway) = gateway_to(
        "openai",
        "    api_key_env: TEST_KEY\n    headers:\n      OpenAI-Organization: org-42\n      \
         X-Provider-Token: tok ${PROVIDER_TOKEN}\n",
        &|name| match name {
            "TEST_KEY" => Some("sk-test-123".to_string()),
            "PROVIDER_TOKEN" => Some("pt-secret-77".to_string()),
            _ => None,
        },
        |_| json_reply(200, &json!({"choices": [{"message": {"content": "ok"}}]})),
    )
    .await;
    let sent = &sent_for(&gateway, &upstream, request("m", "hi")).await;
    assert_eq!(sent.header("openai-organization"), Some("org-42"));
    assert_eq!(sent.header("x-provider-token"), Some("tok pt-secret-77"));
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test-123"));
}

#[tokio::test]
async fn max_completion_tokens_field_carries_the_callers_cap() {
    let (upstream, gateway) = gateway_to(
        "openai",
        "    max_tokens_field: max_completion_tokens\n",
        &no_env,
        |_| json_reply(200, &json!({"choices": [{"message": {"content": "ok"}}]})),
    )
    .await;
    let mut req = request("m", "hi");
    req.max_tokens = 17;
    let body = sent_for(&gateway, &upstream, req).await.body;
    assert_eq!(body["max_completion_tokens"], 17);
    assert!(body.get("max_tokens").is_none(), "{body}");
}

#[tokio::test]
async fn a_header_secret_the_upstream_echoes_back_never_reaches_the_caller() {
    let (_upstream, gateway) = gateway_to(
        "openai",
        "    headers: { X-Provider-Token: \"${PROVIDER_TOKEN}\" }\n",
        &|name| (name == "PROVIDER_TOKEN").then(|| "pt-secret-77".to_string()),
        |received| {
            let token = received.header("x-provider-token").unwrap_or_default();
            let message = format!("token {token} may not use this model");
            json_reply(403, &json!({"error": {"message": message}}))
        },
    )
    .await;
    let status = gateway
        .complete(request("m", "hi"))
        .await
        .expect_err("refused");
    assert_status(
        &status,
        Code::PermissionDenied,
        &["token *** may not use this model"],
    );
    assert!(!status.message().contains("pt-secret-77"));
}
