//! One route whose pools are different kinds of upstream: every kind
//! serves the same contract, and `llmgate sim --api ...` stands in for each
//! real service.

use std::collections::HashMap;

use crate::support::*;

/// One fake upstream per kind, each replaying its recorded stream, and a
/// route `mixed` over all three with weights.
#[tokio::test]
async fn one_route_mixing_openai_ollama_and_anthropic_pools_serves_a_stream_from_each() {
    let openai = FakeUpstream::start(|_| {
        let stream = format!(
            "{}{}{}",
            sse_token("vLLM"),
            sse_token(" here"),
            sse_finish("stop", 3, 2)
        );
        stream_reply("text/event-stream", stream.as_bytes())
    })
    .await;
    let ollama = FakeUpstream::start(|_| {
        stream_reply(
            "application/x-ndjson",
            &fixture("ollama/chat_stream.ndjson"),
        )
    })
    .await;
    let anthropic = FakeUpstream::start(|_| {
        stream_reply(
            "text/event-stream",
            &fixture("anthropic/messages_stream.sse"),
        )
    })
    .await;
    let yaml = format!(
        "upstreams:
  vllm: {{ kind: openai, endpoints: [{}] }}
  ollama-box: {{ kind: ollama, endpoints: [{}] }}
  claude: {{ kind: anthropic, endpoints: [{}], api_key_env: ANTHROPIC_KEY }}
routes:
  - model: mixed
    pools:
      - {{ upstream: vllm, weight: 3, model: meta-llama/Llama-3.1-8B-Instruct }}
      - {{ upstream: ollama-box, weight: 2, model: llama3.2 }}
      - {{ upstream: claude, weight: 1, model: claude-3-5-sonnet-20241022 }}
",
        openai.url(),
        ollama.url(),
        anthropic.url()
    );
    let gateway = Gateway::start_with_env(&yaml, &|name| {
        (name == "ANTHROPIC_KEY").then(|| "sk-ant-mixed".to_string())
    })
    .await;
    let mut client = gateway.client().await;

    // What each kind's stream says, keyed by the model it reports.
    let expected: HashMap<&str, (&str, (i32, i32))> = HashMap::from([
        ("upstream-model", ("vLLM here", (3, 2))),
        (
            "llama3.2",
            ("The sky is blue: Rayleigh scattering ∝ λ⁻⁴.", (26, 9)),
        ),
        (
            "claude-3-5-sonnet-20241022",
            ("Hello! Grüße aus Zürich", (25, 15)),
        ),
    ]);
    let mut served: HashMap<String, usize> = HashMap::new();
    // Pools are picked at random by weight; the smallest has a one-in-six
    // share, so 300 calls miss it with a chance below 1e-23.
    for call in 0..300 {
        let chunks = collect(&mut client, request("mixed", "hi"))
            .await
            .unwrap_or_else(|status| panic!("call {call}: {status}"));
        let last = chunks.last().expect("final chunk");
        assert!(last.done, "call {call}");
        assert_eq!(last.finish_reason, "stop", "call {call}");
        let Some((text, usage)) = expected.get(last.model.as_str()) else {
            panic!("call {call}: unexpected model {}", last.model);
        };
        assert_eq!(text_of(&chunks), *text, "call {call} ({})", last.model);
        let got = last.usage.map(|u| (u.input_tokens, u.output_tokens));
        assert_eq!(got, Some(*usage), "call {call} ({})", last.model);
        *served.entry(last.model.clone()).or_default() += 1;
        if served.len() == 3 {
            break;
        }
    }
    assert_eq!(served.len(), 3, "every kind served: {served:?}");

    // Each upstream was called on its own wire, with the pool's model name.
    let first = |upstream: &FakeUpstream| upstream.received().into_iter().next();
    let sent = first(&openai).expect("vLLM got calls");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.body["model"], "meta-llama/Llama-3.1-8B-Instruct");
    let sent = first(&ollama).expect("Ollama got calls");
    assert_eq!(sent.path, "/api/chat");
    assert_eq!(sent.body["model"], "llama3.2");
    let sent = first(&anthropic).expect("Anthropic got calls");
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.body["model"], "claude-3-5-sonnet-20241022");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-mixed"));
    let calls = openai.received().len() + ollama.received().len() + anthropic.received().len();
    assert_eq!(
        calls,
        served.values().sum::<usize>(),
        "one upstream call per call"
    );
}

/// `llmgate sim --api X` as a process, routed to by an upstream of kind X:
/// unary and streamed answers with the simulator's words, usage and finish
/// reason, whatever the wire in between.
#[tokio::test]
async fn llmgate_sim_serves_each_api_through_the_gateway() {
    for api in ["openai", "ollama", "anthropic"] {
        let sim = SimProcess::start(api, 5).await;
        let gateway = Gateway::start(&one_upstream_of_kind(api, &sim.url(), "")).await;
        let mut client = gateway.client().await;

        let answer = client
            .complete(request("m", "hello sim"))
            .await
            .unwrap_or_else(|status| panic!("{api} unary: {status}"))
            .into_inner();
        assert_eq!(answer.text, "The gateway routes every call", "{api}");
        assert_eq!(answer.finish_reason, "stop", "{api}");
        assert_eq!(answer.model, "upstream-model", "{api}");
        assert_eq!(
            answer.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 5)),
            "{api}"
        );

        let mut req = request("m", "hello sim");
        req.max_tokens = 3;
        let chunks = collect(&mut client, req)
            .await
            .unwrap_or_else(|status| panic!("{api} stream: {status}"));
        let tokens: Vec<&str> = chunks.iter().map(|c| c.token.as_str()).collect();
        assert_eq!(tokens, ["The", " gateway", " routes", ""], "{api}");
        let last = chunks.last().expect("final chunk");
        assert_eq!(last.finish_reason, "length", "{api}");
        assert_eq!(
            last.usage.map(|u| (u.input_tokens, u.output_tokens)),
            Some((3, 3)),
            "{api}"
        );
    }
}
