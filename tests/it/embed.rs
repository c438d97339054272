//! Embeddings through both fronts: the `Embed` RPC and `POST
//! /v1/embeddings`, against scripted OpenAI-compatible and Ollama upstreams
//! (their exact wire), the in-process simulator, and the refusals: an
//! upstream kind without embeddings, bad inputs, keys and limits.

use base64::Engine as _;
use llmgate::proto::{EmbedRequest, TokenIds};
use serde_json::{Value, json};
use tonic::Code;

use crate::support::*;

/// An OpenAI-compatible embedding answer for two inputs, listed out of
/// order as a server may, from `served`, counting 5 prompt tokens.
fn openai_vectors(_: &Received) -> Vec<Step> {
    json_reply(
        200,
        &json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 1, "embedding": [0.5, -0.25]},
                {"object": "embedding", "index": 0, "embedding": [1.0, 0.125]},
            ],
            "model": "served",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }),
    )
}

/// An Ollama `/api/embed` answer for two inputs, counting 7 prompt tokens.
fn ollama_vectors(_: &Received) -> Vec<Step> {
    json_reply(
        200,
        &json!({
            "model": "nomic-embed-text",
            "embeddings": [[1.0, 0.125], [0.5, -0.25]],
            "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": 7,
        }),
    )
}

fn embed_request(model: &str, input: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: model.to_string(),
        input: input.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// The vectors of an OpenAI embedding answer, decoding base64 ones as the
/// SDKs do.
fn vectors_of(answer: &Value) -> Vec<Vec<f32>> {
    let data = answer["data"].as_array().expect("data is a list");
    data.iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            match &item["embedding"] {
                Value::Array(values) => values
                    .iter()
                    .map(|v| v.as_f64().expect("a number") as f32)
                    .collect(),
                Value::String(text) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .expect("base64");
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                other => panic!("not a vector: {other}"),
            }
        })
        .collect()
}

async fn post_embeddings(gateway: &Gateway, body: Value) -> (u16, Value) {
    let answer = http_post_json(
        &format!("http://{}/v1/embeddings", gateway.http_addr),
        &body,
    )
    .await;
    let json = serde_json::from_str(&answer.body)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", answer.body));
    (answer.status, json)
}

async fn embed(
    gateway: &Gateway,
    request: EmbedRequest,
) -> Result<llmgate::proto::EmbedResponse, tonic::Status> {
    gateway
        .client()
        .await
        .embed(request)
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_openai_compatible_upstream_gets_its_exact_wire_and_both_fronts_get_the_vectors() {
    let (upstream, gateway) = gateway_to("openai", "", &no_env, openai_vectors).await;

    let (status, answer) = post_embeddings(
        &gateway,
        json!({"model": "m", "input": ["a", "b"], "dimensions": 2, "user": "u1"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let sent = upstream
        .received()
        .pop()
        .expect("the upstream got the call");
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(
        sent.body,
        json!({
            "model": "upstream-model",
            "input": ["a", "b"],
            "encoding_format": "float",
            "dimensions": 2,
            "user": "u1",
        })
    );
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "served");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 5, "total_tokens": 5})
    );
    assert_eq!(vectors_of(&answer), [vec![1.0, 0.125], vec![0.5, -0.25]]);

    // The SDKs' default: base64 of little-endian f32s, the same numbers.
    let (status, answer) = post_embeddings(
        &gateway,
        json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["data"][0]["embedding"].is_string(), "{answer}");
    assert_eq!(vectors_of(&answer), [vec![1.0, 0.125], vec![0.5, -0.25]]);
    let sent = upstream.received().pop().expect("sent");
    assert_eq!(
        sent.body["encoding_format"], "float",
        "upstreams are asked for floats"
    );

    // Token ids go as token ids.
    let (status, _) =
        post_embeddings(&gateway, json!({"model": "m", "input": [[1, 2], [3]]})).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.received().pop().expect("sent").body["input"],
        json!([[1, 2], [3]])
    );

    let answer = embed(&gateway, embed_request("m", &["a", "b"]))
        .await
        .expect("Embed succeeds");
    let vectors: Vec<Vec<f32>> = answer.embeddings.into_iter().map(|e| e.values).collect();
    assert_eq!(vectors, [vec![1.0, 0.125], vec![0.5, -0.25]]);
    assert_eq!(answer.model, "served");
    let usage = answer.usage.expect("usage");
    assert_eq!((usage.input_tokens, usage.output_tokens), (5, 0));
    let sent = upstream.received().pop().expect("sent");
    assert_eq!(sent.body["input"], json!(["a", "b"]));
    assert!(sent.body.get("dimensions").is_none(), "{}", sent.body);

    let tokens = EmbedRequest {
        model: "m".into(),
        tokens: vec![TokenIds { ids: vec![7, 8] }, TokenIds { ids: vec![9] }],
        dimensions: Some(2),
        ..Default::default()
    };
    embed(&gateway, tokens).await.expect("token ids embed");
    let sent = upstream.received().pop().expect("sent");
    assert_eq!(sent.body["input"], json!([[7, 8], [9]]));
    assert_eq!(sent.body["dimensions"], 2);
}

#[tokio::test]
async fn an_upstream_that_answers_the_wrong_number_of_vectors_is_unavailable_not_trusted() {
    let (_upstream, gateway) = gateway_to("openai", "", &no_env, openai_vectors).await;
    let status = embed(&gateway, embed_request("m", &["only one"]))
        .await
        .expect_err("two vectors for one input");
    assert_status(&status, Code::Unavailable, &["2 vectors for 1 inputs"]);
}

#[tokio::test]
async fn ollama_gets_api_embed_in_its_words_and_refuses_what_it_cannot_say() {
    let (upstream, gateway) =
        gateway_to("ollama", "    keep_alive: 5m\n", &no_env, ollama_vectors).await;
    let answer = embed(&gateway, embed_request("m", &["a", "b"]))
        .await
        .expect("Embed succeeds");
    let vectors: Vec<Vec<f32>> = answer.embeddings.into_iter().map(|e| e.values).collect();
    assert_eq!(vectors, [vec![1.0, 0.125], vec![0.5, -0.25]]);
    assert_eq!(answer.model, "nomic-embed-text");
    assert_eq!(answer.usage.map(|u| u.input_tokens), Some(7));
    let sent = upstream.received().pop().expect("sent");
    assert_eq!(sent.path, "/api/embed");
    assert_eq!(
        sent.body,
        json!({"model": "upstream-model", "input": ["a", "b"], "keep_alive": "300s"})
    );

    let (status, answer) = post_embeddings(
        &gateway,
        json!({"model": "m", "input": ["a", "b"], "dimensions": 2, "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(vectors_of(&answer), [vec![1.0, 0.125], vec![0.5, -0.25]]);
    assert_eq!(answer["usage"]["prompt_tokens"], 7);
    assert_eq!(
        upstream.received().pop().expect("sent").body["dimensions"],
        2
    );

    let calls = upstream.count();
    let (status, answer) = post_embeddings(&gateway, json!({"model": "m", "input": [1, 2]})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "input", "{answer}");
    let (status, answer) = post_embeddings(
        &gateway,
        json!({"model": "m", "input": "a", "truncate": false}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "truncate", "{answer}");
    assert_eq!(upstream.count(), calls, "nothing refused was sent");
}

#[tokio::test]
async fn the_simulator_answers_deterministic_unit_vectors() {
    let gateway = Gateway::start(
        "upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: demo\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let first = embed(&gateway, embed_request("demo", &["hello world", "other"]))
        .await
        .expect("Embed succeeds");
    let again = embed(&gateway, embed_request("demo", &["hello world"]))
        .await
        .expect("Embed succeeds");
    assert_eq!(first.embeddings.len(), 2);
    assert_eq!(first.embeddings[0].values.len(), 384);
    assert_eq!(
        first.embeddings[0].values, again.embeddings[0].values,
        "same input, same vector"
    );
    assert_ne!(first.embeddings[0].values, first.embeddings[1].values);
    for embedding in &first.embeddings {
        let norm: f32 = embedding.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "unit length: {norm}");
    }
    assert_eq!(
        first.usage.map(|u| u.input_tokens),
        Some(3),
        "words count as tokens"
    );

    let (status, answer) = post_embeddings(
        &gateway,
        json!({"model": "demo", "input": "hello world", "dimensions": 8, "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let vectors = vectors_of(&answer);
    assert_eq!(vectors[0].len(), 8);
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 2, "total_tokens": 2})
    );
    assert_eq!(answer["model"], "demo");
}

#[tokio::test]
async fn an_anthropic_pool_refuses_embeddings_by_name_and_sends_nothing() {
    let (upstream, gateway) = gateway_to("anthropic", "", &no_env, openai_vectors).await;
    let status = embed(&gateway, embed_request("m", &["a"]))
        .await
        .expect_err("Anthropic has no embeddings");
    assert_status(
        &status,
        Code::InvalidArgument,
        &["upstream 'up'", "no embeddings"],
    );
    let (status, answer) = post_embeddings(&gateway, json!({"model": "m", "input": "a"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "model", "{answer}");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn bad_embedding_requests_are_refused_naming_the_field() {
    let gateway = Gateway::start(
        "upstreams:\n  sim: { kind: sim }\nroutes:\n  - model: demo\n    pools: [{ upstream: sim }]\n",
    )
    .await;
    let status = embed(&gateway, embed_request("nope", &["a"]))
        .await
        .expect_err("not routed");
    assert_status(&status, Code::NotFound, &["'nope'"]);
    let status = embed(&gateway, embed_request("demo", &[]))
        .await
        .expect_err("nothing to embed");
    assert_status(&status, Code::InvalidArgument, &["input"]);
    let both = EmbedRequest {
        tokens: vec![TokenIds { ids: vec![1] }],
        ..embed_request("demo", &["a"])
    };
    let status = embed(&gateway, both).await.expect_err("both shapes");
    assert_status(&status, Code::InvalidArgument, &["tokens"]);

    for (body, param) in [
        (json!({"model": "demo"}), "input"),
        (json!({"model": "demo", "input": ""}), "input[0]"),
        (json!({"model": "demo", "input": [{"text": "a"}]}), "input"),
        (
            json!({"model": "demo", "input": "a", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (
            json!({"model": "demo", "input": "a", "dimensions": 0}),
            "dimensions",
        ),
    ] {
        let (status, answer) = post_embeddings(&gateway, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{body}: {answer}");
    }
    let (status, _) = post_embeddings(&gateway, json!({"model": "nope", "input": "a"})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn embeddings_are_under_the_same_keys_and_token_limits_as_chat() {
    let env = |name: &str| match name {
        "APP" => Some("sk-gw-app-4f1c9a7e".to_string()),
        "OTHER" => Some("sk-gw-other-4f1c9a7e".to_string()),
        _ => None,
    };
    let gateway = Gateway::start_with_env(
        "auth:
  keys:
    - { name: app, env: APP, models: [demo], limits: { tokens_per_minute: 50 } }
    - { name: other, env: OTHER, models: [chat-only] }
upstreams:
  sim: { kind: sim }
routes:
  - model: demo
    pools: [{ upstream: sim }]
  - model: chat-only
    pools: [{ upstream: sim }]
",
        &env,
    )
    .await;
    let url = format!("http://{}/v1/embeddings", gateway.http_addr);
    assert_eq!(http_post(&url).await.status, 401, "no key, over HTTP");
    assert_eq!(
        http_post_with_key(&url, "sk-gw-app-4f1c9a7e").await.status,
        400,
        "a known key gets as far as its (empty) body"
    );
    let mut client = gateway.client().await;
    let status = client
        .embed(embed_request("demo", &["a"]))
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .embed(keyed(embed_request("demo", &["a"]), "sk-gw-other-4f1c9a7e"))
        .await
        .expect_err("not this key's model");
    assert_eq!(status.code(), Code::PermissionDenied);

    // Input tokens count against the key's minute: 40 words reported,
    // then a call estimated past what is left is refused.
    let forty = vec!["word"; 40].join(" ");
    let answer = client
        .embed(keyed(
            embed_request("demo", &[&forty]),
            "sk-gw-app-4f1c9a7e",
        ))
        .await
        .expect("within the minute")
        .into_inner();
    assert_eq!(answer.usage.map(|u| u.input_tokens), Some(40));
    let long = "x".repeat(200);
    let status = client
        .embed(keyed(embed_request("demo", &[&long]), "sk-gw-app-4f1c9a7e"))
        .await
        .expect_err("the minute's tokens are spent");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["key 'app'", "tokens per minute"],
    );
}

#[tokio::test]
async fn an_embedding_is_retried_on_another_endpoint_and_metered() {
    // One endpoint refuses connections; every call still succeeds on the
    // live one, and the calls are counted with the tokens they reported.
    let upstream = FakeUpstream::start(openai_vectors).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let gateway = Gateway::start_with_admin(&format!(
        "upstreams:\n  up:\n    kind: openai\n    endpoints: [{dead_url}, {}]\n\
         routes:\n  - model: metrics-embed\n    retry: {{ attempts: 3 }}\n    pools:\n      - upstream: up\n        model: upstream-model\n",
        upstream.url()
    ))
    .await;
    for _ in 0..4 {
        embed(&gateway, embed_request("metrics-embed", &["a", "b"]))
            .await
            .expect("served by the live endpoint");
    }
    assert_eq!(upstream.count(), 4);
    let scrape = gateway.scrape().await;
    let sum = |name: &str| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels.get("route") == Some("metrics-embed"))
            .filter(|s| s.labels.get("endpoint") == Some(upstream.url().as_str()))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(sum(llmgate::internals::metrics::CALLS_TOTAL), 4.0);
    assert_eq!(sum(llmgate::internals::metrics::INPUT_TOKENS_TOTAL), 20.0);
}

#[tokio::test]
async fn embeddings_spread_over_the_endpoints_of_a_route_with_prefix_affinity() {
    // Affinity keys calls by their conversation's opening; an embedding
    // has none, so keyed alike every one would land on one endpoint.
    let a = FakeUpstream::start(openai_vectors).await;
    let b = FakeUpstream::start(openai_vectors).await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  fleet:
    kind: openai
    endpoints: [{}, {}]
routes:
  - model: affine
    balance: {{ prefix_affinity: {{ chars: 16, max_load_factor: 1.25 }} }}
    pools: [{{ upstream: fleet }}]
",
        a.url(),
        b.url()
    ))
    .await;
    for _ in 0..30 {
        embed(&gateway, embed_request("affine", &["a", "b"]))
            .await
            .expect("embedded");
    }
    assert_eq!(a.count() + b.count(), 30);
    assert!(
        a.count() > 0 && b.count() > 0,
        "a {} b {}",
        a.count(),
        b.count()
    );
}

#[tokio::test]
async fn llmgate_sim_embeds_over_both_http_apis_with_the_in_process_vectors() {
    let openai = SimProcess::start("openai", 3).await;
    let ollama = SimProcess::start("ollama", 3).await;
    let gateway = Gateway::start(&format!(
        "upstreams:
  local: {{ kind: sim }}
  vllm: {{ kind: openai, endpoints: [{}] }}
  box: {{ kind: ollama, endpoints: [{}] }}
routes:
  - model: in-process
    pools: [{{ upstream: local }}]
  - model: over-openai
    pools: [{{ upstream: vllm }}]
  - model: over-ollama
    pools: [{{ upstream: box }}]
",
        openai.url(),
        ollama.url()
    ))
    .await;
    let vectors = |answer: llmgate::proto::EmbedResponse| -> (Vec<Vec<f32>>, Option<i32>) {
        (
            answer.embeddings.into_iter().map(|e| e.values).collect(),
            answer.usage.map(|u| u.input_tokens),
        )
    };
    let mut seen = Vec::new();
    for model in ["in-process", "over-openai", "over-ollama"] {
        let answer = embed(&gateway, embed_request(model, &["hello there", "bye"]))
            .await
            .unwrap_or_else(|status| panic!("{model}: {status:?}"));
        seen.push(vectors(answer));
    }
    assert_eq!(seen[0].0.len(), 2);
    assert_eq!(seen[0].0[0].len(), 384);
    assert_eq!(
        seen[0], seen[1],
        "the same vectors and tokens over the OpenAI API"
    );
    assert_eq!(seen[0], seen[2], "and over Ollama's");
}
