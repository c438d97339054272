//! The front door under attack and under load: TLS and client
//! certificates, API keys and their models, rate limits per key and per
//! route, oversized and malformed requests, floods, idle connections, and
//! secrets that must never show.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use llmgate::proto::{CompleteRequest, ListModelsRequest, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::support::*;

/// Two models on the simulator; `demo` has the alias `d`.
fn sim_routes(head: &str) -> String {
    format!(
        "{head}
upstreams:
  fast:
    kind: sim
    sim: {{ ttft: 0ms, tokens_per_second: 0, output_tokens: 3 }}
routes:
  - model: demo
    aliases: [d]
    pools:
      - upstream: fast
  - model: other
    pools:
      - upstream: fast
"
    )
}

/// Environment for keys declared with `env:`: each variable holds a key
/// derived from its name.
fn key_env(name: &str) -> Option<String> {
    Some(key_for(name))
}

fn key_for(var: &str) -> String {
    format!("sk-gw-{}-4f1c9a7e", var.to_ascii_lowercase())
}

/// The retry-after seconds a refusal carried.
fn retry_after(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

// === TLS and client certificates ===

/// A TLS client of the gateway trusting `ca`, presenting `identity` if any.
async fn tls_channel(
    gateway: &Gateway,
    ca: &str,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert, &identity.key));
    }
    Endpoint::from_shared(format!("https://{}", gateway.addr))?
        .tls_config(tls)?
        .connect()
        .await
}

/// Whether a call on the channel (if it connected at all) was answered.
async fn served(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Err(_) => false,
        Ok(channel) => llmgate::proto::llm_service_client::LlmServiceClient::new(channel)
            .complete(request("demo", "hi"))
            .await
            .is_ok(),
    }
}

/// A gateway serving TLS with a certificate from `ca`, requiring client
/// certificates from `clients` when given.
async fn tls_gateway(dir: &TempDir, ca: &TestCa, clients: Option<&TestCa>) -> Gateway {
    let server = ca.issue(&["localhost"]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.display().to_string()
    };
    let mut tls = format!(
        "listen:\n  tls:\n    cert: {}\n    key: {}\n",
        write("server.crt", &server.cert),
        write("server.key", &server.key)
    );
    if let Some(clients) = clients {
        tls.push_str(&format!(
            "    client_ca: {}\n",
            write("clients.crt", &clients.pem())
        ));
    }
    Gateway::start(&sim_routes(&tls)).await
}

#[tokio::test]
async fn mtls_refuses_the_handshake_without_a_client_certificate_and_serves_with_one() {
    let dir = TempDir::new("mtls");
    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let gateway = tls_gateway(&dir, &server_ca, Some(&client_ca)).await;

    // With a certificate from the client CA: served.
    let good = client_ca.issue(&["billing-service"]);
    let channel = tls_channel(&gateway, &server_ca.pem(), Some(&good))
        .await
        .expect("handshake with a client certificate");
    let mut client = llmgate::proto::llm_service_client::LlmServiceClient::new(channel);
    let answer = client
        .complete(request("demo", "hi"))
        .await
        .expect("served over mTLS")
        .into_inner();
    assert_eq!(answer.finish_reason, "stop");

    // Without one: the server ends the handshake with an alert, before a
    // byte of HTTP is read or answered.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        llmgate::internals::client_config_trusting(server_ca.pem().as_bytes())
            .expect("client config"),
    ));
    let tcp = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let outcome = tokio::time::timeout(PATIENCE, async {
        let mut tls = connector.connect(name, tcp).await?;
        // TLS 1.3 lets the client finish first; the refusal arrives on the
        // first read.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    })
    .await
    .expect("the server answers the handshake in time");
    match outcome {
        Err(err) => assert!(
            err.to_string().contains("CertificateRequired"),
            "refused for the missing certificate: {err}"
        ),
        Ok(n) => panic!("a client without a certificate read {n} bytes"),
    }

    // A tonic client without a certificate gets no answer either.
    let attempt = tls_channel(&gateway, &server_ca.pem(), None).await;
    assert!(
        !served(attempt).await,
        "a client without a certificate was served"
    );

    // A certificate from another CA is refused as well.
    let stranger = TestCa::new().issue(&["intruder"]);
    let attempt = tls_channel(&gateway, &server_ca.pem(), Some(&stranger)).await;
    assert!(
        !served(attempt).await,
        "a certificate from an unknown CA was accepted"
    );
}

#[tokio::test]
async fn a_tls_listener_refuses_plain_text_and_serves_tls_clients() {
    let dir = TempDir::new("tls");
    let ca = TestCa::new();
    let gateway = tls_gateway(&dir, &ca, None).await;
    let channel = tls_channel(&gateway, &ca.pem(), None)
        .await
        .expect("TLS handshake without client auth");
    let answer = llmgate::proto::llm_service_client::LlmServiceClient::new(channel)
        .complete(request("d", "hi"))
        .await
        .expect("served over TLS");
    assert_eq!(answer.into_inner().finish_reason, "stop");

    let plain = tokio::time::timeout(
        PATIENCE,
        llmgate::proto::llm_service_client::LlmServiceClient::connect(gateway.url()),
    )
    .await
    .expect("a plain-text attempt ends in time");
    let served = match plain {
        Err(_) => false,
        Ok(mut client) => client.complete(request("demo", "hi")).await.is_ok(),
    };
    assert!(!served, "plain text was served on a TLS listener");
}

/// A TLS terminator in front of `upstream`, with a certificate for
/// `localhost` from `ca`: an upstream fleet behind a private CA.
async fn tls_in_front_of(upstream: &FakeUpstream, ca: &TestCa) -> (u16, tokio::task::AbortHandle) {
    let issued = ca.issue(&["localhost"]);
    let config =
        llmgate::internals::server_config(issued.cert.as_bytes(), issued.key.as_bytes(), None)
            .expect("server config");
    // The fake upstream behind it speaks HTTP/1.1 only.
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let target = upstream.addr;
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, task.abort_handle())
}

#[tokio::test]
async fn upstream_certificates_are_verified_against_the_upstreams_own_ca() {
    let upstream = FakeUpstream::start(|_| {
        json_reply(
            200,
            &serde_json::json!({
                "model": "upstream-model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "private"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }),
        )
    })
    .await;
    let ca = TestCa::new();
    let (port, terminator) = tls_in_front_of(&upstream, &ca).await;
    let dir = TempDir::new("upstream-ca");
    let ca_path = dir.join("fleet-ca.crt");
    std::fs::write(&ca_path, ca.pem()).expect("write CA");
    let url = format!("https://localhost:{port}");

    let trusting = Gateway::start(&one_upstream(
        &url,
        &format!("    tls: {{ ca: {} }}\n", ca_path.display()),
    ))
    .await;
    let answer = trusting
        .complete(request("m", "hi"))
        .await
        .expect("the private CA is trusted");
    assert_eq!(answer.text, "private");

    // Without the CA, the web PKI roots do not vouch for the server.
    let default = Gateway::start(&one_upstream(&url, ""))
        .await
        .complete(request("m", "hi"))
        .await
        .expect_err("an unknown CA is not trusted");
    assert_eq!(default.code(), Code::Unavailable, "{}", default.message());
    assert_eq!(upstream.count(), 1, "only the trusting gateway got through");
    terminator.abort();
}

// === API keys ===

const KEYS: &str = "auth:
  keys:
    - name: search
      env: SEARCH
      models: [demo]
    - name: batch
      env: BATCH
      models: [\"*\"]
";

#[tokio::test]
async fn each_auth_outcome_has_its_code() {
    let gateway = Gateway::start_with_env(&sim_routes(KEYS), &key_env).await;
    let mut client = gateway.client().await;
    let search = key_for("SEARCH");

    let status = client
        .complete(request("demo", "hi"))
        .await
        .expect_err("no key");
    assert_status(
        &status,
        Code::Unauthenticated,
        &["authorization: Bearer <key>"],
    );

    let mut basic = tonic::Request::new(request("demo", "hi"));
    basic.metadata_mut().insert(
        "authorization",
        "Basic c2VhcmNoOmtleQ==".parse().expect("value"),
    );
    let status = client.complete(basic).await.expect_err("not a bearer key");
    assert_status(&status, Code::Unauthenticated, &["Bearer <key>"]);

    let status = client
        .complete(keyed(request("demo", "hi"), "sk-gw-guessed-00000000"))
        .await
        .expect_err("unknown key");
    assert_status(&status, Code::Unauthenticated, &["not valid"]);
    assert!(!status.message().contains("sk-gw-guessed"), "{status:?}");

    for model in ["demo", "d"] {
        let answer = client
            .complete(keyed(request(model, "hi"), &search))
            .await
            .unwrap_or_else(|status| panic!("{model}: {status:?}"));
        assert_eq!(answer.into_inner().finish_reason, "stop");
    }
    let chunks = collect_keyed(&mut client, request("d", "hi"), &search)
        .await
        .expect("streamed with a key");
    assert!(chunks.last().is_some_and(|c| c.done));

    let status = client
        .complete(keyed(request("other", "hi"), &search))
        .await
        .expect_err("outside the key's models");
    assert_status(
        &status,
        Code::PermissionDenied,
        &["key 'search'", "model 'other'", "demo"],
    );
    let status = collect_keyed(&mut client, request("other", "hi"), &search)
        .await
        .expect_err("streamed, outside the key's models");
    assert_eq!(status.code(), Code::PermissionDenied);

    // An unrouted model is no more allowed than a routed one.
    let status = client
        .complete(keyed(request("nope", "hi"), &search))
        .await
        .expect_err("unrouted");
    assert_eq!(status.code(), Code::PermissionDenied);
    // "*" covers every model; NOT_FOUND still says what is unrouted.
    let batch = key_for("BATCH");
    client
        .complete(keyed(request("other", "hi"), &batch))
        .await
        .expect("every model");
    let status = client
        .complete(keyed(request("nope", "hi"), &batch))
        .await
        .expect_err("unrouted");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn list_models_needs_a_key_and_shows_only_its_models() {
    let gateway = Gateway::start_with_env(&sim_routes(KEYS), &key_env).await;
    let mut client = gateway.client().await;
    let status = client
        .list_models(ListModelsRequest {})
        .await
        .expect_err("no key");
    assert_eq!(status.code(), Code::Unauthenticated);
    let listed = |models: Vec<llmgate::proto::ModelInfo>| -> Vec<String> {
        models.into_iter().map(|m| m.name).collect()
    };
    let search = client
        .list_models(keyed(ListModelsRequest {}, &key_for("SEARCH")))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed(search.models), ["demo"]);
    let batch = client
        .list_models(keyed(ListModelsRequest {}, &key_for("BATCH")))
        .await
        .expect("listed")
        .into_inner();
    assert_eq!(listed(batch.models), ["demo", "other"]);
}

/// A streamed call with a key, gathered.
async fn collect_keyed(
    client: &mut llmgate::proto::llm_service_client::LlmServiceClient<Channel>,
    request: CompleteRequest,
    key: &str,
) -> Result<Vec<llmgate::proto::TokenChunk>, tonic::Status> {
    let mut stream = client
        .complete_stream(keyed(request, key))
        .await?
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

// === rate limits ===

#[tokio::test]
async fn a_keys_request_limit_trips_while_another_key_is_unaffected() {
    let gateway = Gateway::start_with_env(
        &sim_routes(
            "auth:
  keys:
    - { name: small, env: SMALL, models: [\"*\"], limits: { requests_per_minute: 2 } }
    - { name: other, env: OTHER, models: [\"*\"], limits: { requests_per_minute: 2 } }
",
        ),
        &key_env,
    )
    .await;
    let mut client = gateway.client().await;
    let (small, other) = (key_for("SMALL"), key_for("OTHER"));
    for _ in 0..2 {
        client
            .complete(keyed(request("demo", "hi"), &small))
            .await
            .expect("within the limit");
    }
    let status = client
        .complete(keyed(request("demo", "hi"), &small))
        .await
        .expect_err("over the limit");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["key 'small'", "2 requests per minute", "retry in"],
    );
    // 2 a minute: the next one fits in 30 s.
    let wait = retry_after(&status).expect("retry-after in the metadata");
    assert!((1..=30).contains(&wait), "retry-after {wait}");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("grpc-retry-pushback-ms");
    assert!(pushback <= wait * 1000, "{pushback} vs {wait}s");
    let streamed = collect_keyed(&mut client, request("demo", "hi"), &small)
        .await
        .expect_err("streams count too");
    assert_eq!(streamed.code(), Code::ResourceExhausted);

    for _ in 0..2 {
        client
            .complete(keyed(request("demo", "hi"), &other))
            .await
            .expect("the other key has its own minute");
    }
}

#[tokio::test]
async fn a_keys_token_limit_is_settled_from_the_usage_the_upstream_reports() {
    // The sim answers 40 tokens; the key may use 30 a minute. The first
    // call is admitted on its prompt estimate, and its reported usage
    // empties the bucket.
    let gateway = Gateway::start_with_env(
        "auth:
  keys:
    - { name: wordy, env: WORDY, models: [\"*\"], limits: { tokens_per_minute: 30 } }
    - { name: quiet, env: QUIET, models: [\"*\"], limits: { tokens_per_minute: 30 } }
upstreams:
  fast:
    kind: sim
    sim: { ttft: 0ms, tokens_per_second: 0, output_tokens: 40 }
routes:
  - model: demo
    pools:
      - upstream: fast
",
        &key_env,
    )
    .await;
    let mut client = gateway.client().await;
    let wordy = key_for("WORDY");
    let answer = client
        .complete(keyed(request("demo", "hi"), &wordy))
        .await
        .expect("admitted on the estimate")
        .into_inner();
    assert_eq!(answer.usage.map(|u| u.output_tokens), Some(40));
    let status = client
        .complete(keyed(request("demo", "hi"), &wordy))
        .await
        .expect_err("the reported usage spent the minute");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["key 'wordy'", "30 tokens per minute"],
    );
    assert!(retry_after(&status).is_some(), "{status:?}");
    client
        .complete(keyed(request("demo", "hi"), &key_for("QUIET")))
        .await
        .expect("another key's tokens are its own");
}

#[tokio::test]
async fn a_route_limit_holds_across_keys_and_a_key_refused_spends_none_of_it() {
    let gateway = Gateway::start_with_env(
        &sim_routes(
            "auth:
  keys:
    - { name: one, env: ONE, models: [\"*\"], limits: { requests_per_minute: 1 } }
    - { name: two, env: TWO, models: [\"*\"] }
",
        )
        .replace(
            "  - model: demo\n",
            "  - model: demo\n    limits: { requests_per_minute: 2 }\n",
        ),
        &key_env,
    )
    .await;
    let mut client = gateway.client().await;
    let (one, two) = (key_for("ONE"), key_for("TWO"));
    client
        .complete(keyed(request("demo", "hi"), &one))
        .await
        .expect("route call 1");
    // Key one is over its own limit: refused before the route is counted.
    for _ in 0..3 {
        let status = client
            .complete(keyed(request("demo", "hi"), &one))
            .await
            .expect_err("key over its limit");
        assert_status(&status, Code::ResourceExhausted, &["key 'one'"]);
    }
    client
        .complete(keyed(request("d", "hi"), &two))
        .await
        .expect("route call 2, through the alias");
    let status = client
        .complete(keyed(request("demo", "hi"), &two))
        .await
        .expect_err("the route's minute is spent");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["model 'demo'", "2 requests per minute"],
    );
    client
        .complete(keyed(request("other", "hi"), &two))
        .await
        .expect("another route is not limited");
}

// === sizes and malformed requests ===

/// An upstream that sends `first`, waits at `gate`, then finishes with
/// `rest` and usage.
async fn gated_upstream(gate: Arc<Semaphore>) -> FakeUpstream {
    FakeUpstream::start(move |received| {
        if received.body["stream"] != serde_json::json!(true) {
            return json_reply(
                200,
                &serde_json::json!({
                    "model": "upstream-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                }),
            );
        }
        vec![
            Step::Head(200, "text/event-stream"),
            Step::Chunk(sse_token("first ").into_bytes()),
            Step::Gate(gate.clone()),
            Step::Chunk(sse_token("second ").into_bytes()),
            Step::Chunk(sse_token("third").into_bytes()),
            Step::Chunk(sse_finish("stop", 2, 3).into_bytes()),
            Step::End,
        ]
    })
    .await
}

/// Starts a stream and reads its first chunk, so the call is surely in
/// flight; the rest is for the caller to read.
async fn started_stream(
    client: &mut llmgate::proto::llm_service_client::LlmServiceClient<Channel>,
) -> tonic::Streaming<llmgate::proto::TokenChunk> {
    let mut stream = client
        .complete_stream(request("m", "hi"))
        .await
        .expect("the stream starts")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("first token in time")
        .expect("a chunk")
        .expect("not an error");
    assert_eq!(first.token, "first ");
    stream
}

/// Reads a started stream to its end: it must be whole.
async fn finish_whole(mut stream: tonic::Streaming<llmgate::proto::TokenChunk>) {
    let mut chunks = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream goes on")
    {
        chunks.push(chunk.expect("no error mid-stream"));
    }
    assert_eq!(text_of(&chunks), "second third");
    assert_final_chunk(&chunks, "stop", "upstream-model", (2, 3));
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_while_good_calls_carry_on() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = gated_upstream(gate.clone()).await;
    let gateway = Gateway::start(&one_upstream(&upstream.url(), "").replace(
        "upstreams:",
        "limits:
  max_request_size: 64KiB
  max_messages: 4
  max_content_length: 16KiB
upstreams:",
    ))
    .await;
    let mut client = gateway.client().await;
    let in_flight = started_stream(&mut client).await;

    // Larger than the message limit: refused before it is read.
    let status = client
        .complete(request("m", &"x".repeat(100 * 1024)))
        .await
        .expect_err("oversized");
    assert_status(&status, Code::ResourceExhausted, &["at most 64 KiB"]);
    // Within it, but with too much content or too many messages.
    let status = client
        .complete(request("m", &"x".repeat(20 * 1024)))
        .await
        .expect_err("too much content");
    assert_status(
        &status,
        Code::InvalidArgument,
        &["messages", "at most 16 KiB"],
    );
    let mut many = request("m", "hi");
    many.messages = vec![
        Message {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        };
        5
    ];
    let status = client.complete(many).await.expect_err("too many messages");
    assert_status(
        &status,
        Code::InvalidArgument,
        &["has 5 entries", "at most 4"],
    );
    let mut none = request("m", "hi");
    none.messages.clear();
    let status = client.complete(none).await.expect_err("no messages");
    assert_status(&status, Code::InvalidArgument, &["messages"]);
    // Bytes that are no protobuf message at all: gRPC's INTERNAL for an
    // unparseable request, as every gRPC server answers it.
    let garbage = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&[0xff; 16])));
    let (code, message) = raw_grpc(gateway.addr, None, garbage).await;
    assert_eq!(code, Code::Internal, "{message}");
    // A frame announcing more than the limit, whatever follows.
    let mut lie = vec![0u8];
    lie.extend_from_slice(&u32::MAX.to_be_bytes());
    let (code, message) = raw_grpc(
        gateway.addr,
        None,
        http_body_util::Full::new(bytes::Bytes::from(lie)),
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted, "{message}");

    // Good calls carry on, on the same connection and beside the stream.
    client
        .complete(request("m", "small"))
        .await
        .expect("a good call after the refusals");
    gate.add_permits(100);
    finish_whole(in_flight).await;
}

#[tokio::test]
async fn a_request_that_stops_arriving_is_cut_after_the_idle_limit() {
    let gateway = Gateway::start(&sim_routes("limits:\n  request_idle_timeout: 200ms\n")).await;
    // Headers and half a message, then silence.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(&[
        0, 0, 0, 0, 100, 1, 2, 3,
    ]))))
    .await
    .expect("send");
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (code, message) = raw_grpc(gateway.addr, None, body).await;
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("request_idle_timeout"), "{message}");
    drop(tx);
    gateway
        .complete(request("demo", "hi"))
        .await
        .expect("others are served");
}

#[tokio::test]
async fn a_connection_that_says_nothing_is_closed_after_the_handshake_limit() {
    let gateway = Gateway::start(&sim_routes("limits:\n  handshake_timeout: 100ms\n")).await;
    let mut silent = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the gateway closes the connection in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    gateway
        .complete(request("demo", "hi"))
        .await
        .expect("a client that talks is served");
}

// === load shedding ===

#[tokio::test]
async fn a_flood_is_shed_at_once_while_the_streams_in_flight_finish_whole() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = gated_upstream(gate.clone()).await;
    let gateway = Gateway::start(
        &one_upstream(&upstream.url(), "")
            .replace("upstreams:", "limits: { max_in_flight: 2 }\nupstreams:"),
    )
    .await;
    let mut client = gateway.client().await;
    let streams = [
        started_stream(&mut client).await,
        started_stream(&mut client).await,
    ];

    let flood_client = gateway.client().await;
    let flood = (0..40).map(|i| {
        let mut client = flood_client.clone();
        async move {
            if i % 2 == 0 {
                client.complete(request("m", "flood")).await.map(|_| ())
            } else {
                collect(&mut client, request("m", "flood"))
                    .await
                    .map(|_| ())
            }
        }
    });
    let results = tokio::time::timeout(PATIENCE, futures_util::future::join_all(flood))
        .await
        .expect("shed at once, not queued");
    for result in results {
        let status = result.expect_err("no room for the flood");
        assert_status(&status, Code::Unavailable, &["limit of 2 calls in flight"]);
        assert_eq!(retry_after(&status), Some(1));
    }
    assert_eq!(upstream.count(), 2, "nothing shed reached the upstream");

    gate.add_permits(100);
    for stream in streams {
        finish_whole(stream).await;
    }
    client
        .complete(request("m", "after"))
        .await
        .expect("room again once the streams ended");
}

#[tokio::test]
async fn a_full_route_or_key_answers_resource_exhausted_and_frees_as_calls_end() {
    let gate = Arc::new(Semaphore::new(0));
    let upstream = gated_upstream(gate.clone()).await;
    let gateway = Gateway::start_with_env(
        &one_upstream(&upstream.url(), "")
            .replace(
                "upstreams:",
                "auth:
  keys:
    - { name: solo, env: SOLO, models: [m], limits: { max_in_flight: 1 } }
    - { name: crowd, env: CROWD, models: [m] }
upstreams:",
            )
            .replace(
                "  - model: m\n",
                "  - model: m\n    limits: { max_in_flight: 2 }\n",
            ),
        &key_env,
    )
    .await;
    let mut client = gateway.client().await;
    let (solo, crowd) = (key_for("SOLO"), key_for("CROWD"));
    let starter = client.clone();
    let start = |key: String| {
        let mut client = starter.clone();
        async move {
            let mut stream = client
                .complete_stream(keyed(request("m", "hi"), &key))
                .await
                .expect("starts")
                .into_inner();
            let first = stream.next().await.expect("chunk").expect("ok");
            assert_eq!(first.token, "first ");
            stream
        }
    };
    let solo_stream = start(solo.clone()).await;
    let status = client
        .complete(keyed(request("m", "hi"), &solo))
        .await
        .expect_err("the key's one slot is taken");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["key 'solo'", "1 calls in flight"],
    );
    let crowd_stream = start(crowd.clone()).await;
    let status = client
        .complete(keyed(request("m", "hi"), &crowd))
        .await
        .expect_err("the route's two slots are taken");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["model 'm'", "2 calls in flight"],
    );
    assert!(retry_after(&status).is_some());
    gate.add_permits(100);
    finish_whole(solo_stream).await;
    finish_whole(crowd_stream).await;
    client
        .complete(keyed(request("m", "hi"), &solo))
        .await
        .expect("the slots are free again");
}

// === reload ===

#[tokio::test]
async fn keys_and_limits_reload_with_the_file_and_unchanged_quotas_carry_over() {
    let dir = TempDir::new("guard-reload");
    let path = dir.join("routing.yaml");
    let (a_var, b_var) = ("LLMGATE_TEST_GUARD_RELOAD_A", "LLMGATE_TEST_GUARD_RELOAD_B");
    let file = |keys: &[&str]| {
        let keys: String = keys.iter().map(|k| format!("    - {k}\n")).collect();
        sim_routes(&format!("auth:\n  keys:\n{keys}"))
    };
    let a = format!(
        "{{ name: a, sha256: {}, models: [demo], limits: {{ requests_per_minute: 1 }} }}",
        sha256_hex(&key_for(a_var))
    );
    let b = format!(
        "{{ name: b, sha256: {}, models: [demo] }}",
        sha256_hex(&key_for(b_var))
    );
    std::fs::write(&path, file(&[&a])).expect("write");
    let gateway = Gateway::start_file(&path, llmgate::Connectors::default(), false).await;
    let mut client = gateway.client().await;
    client
        .complete(keyed(request("demo", "hi"), &key_for(a_var)))
        .await
        .expect("a's one call this minute");
    let status = client
        .complete(keyed(request("demo", "hi"), &key_for(b_var)))
        .await
        .expect_err("b is not declared yet");
    assert_eq!(status.code(), Code::Unauthenticated);

    std::fs::write(&path, file(&[&a, &b])).expect("write");
    let reloader = gateway.reloader.clone().expect("reloader");
    assert!(matches!(
        reloader.reload("test").await,
        llmgate::ReloadOutcome::Applied { .. }
    ));
    client
        .complete(keyed(request("demo", "hi"), &key_for(b_var)))
        .await
        .expect("b is in");
    let status = client
        .complete(keyed(request("demo", "hi"), &key_for(a_var)))
        .await
        .expect_err("a's minute was not reset by the reload");
    assert_eq!(status.code(), Code::ResourceExhausted);

    std::fs::write(&path, file(&[&b])).expect("write");
    reloader.reload("test").await;
    let status = client
        .complete(keyed(request("demo", "hi"), &key_for(a_var)))
        .await
        .expect_err("a was withdrawn");
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// The SHA-256 of `key` in hex, as an operator writes it in `sha256:`.
fn sha256_hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === secrets ===

/// Everything a tracing subscriber wrote.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// Runs on this test's thread only (a current-thread runtime), so the
/// subscriber set here sees the gateway's every log line and no other
/// test's.
#[tokio::test]
async fn no_secret_reaches_the_logs_errors_listings_or_check_output() {
    const UPSTREAM_KEY: &str = "sk-upstream-secret-5be0c2d9";
    const CALLER_KEY: &str = "sk-caller-secret-0a7731e4";
    const WRONG_KEY: &str = "sk-wrong-guess-9c1d22f0";
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    // The upstream refuses the key and quotes it back, as some do.
    let upstream = FakeUpstream::start(|received| {
        let quoted = received
            .header("authorization")
            .unwrap_or_default()
            .to_string();
        json_reply(
            401,
            &serde_json::json!({"error": {"message": format!("Incorrect API key: {quoted}")}}),
        )
    })
    .await;
    let yaml = one_upstream(&upstream.url(), "    api_key_env: UPSTREAM_KEY\n").replace(
        "upstreams:",
        "auth:\n  keys:\n    - { name: caller, env: CALLER_KEY, models: [m] }\nupstreams:",
    );
    let env = |name: &str| match name {
        "UPSTREAM_KEY" => Some(UPSTREAM_KEY.to_string()),
        "CALLER_KEY" => Some(CALLER_KEY.to_string()),
        _ => None,
    };
    let config = llmgate::config::Config::parse(&yaml, "test.yaml", &env).expect("valid");
    let mut shown = vec![
        format!("{config:?}"),
        llmgate::config::describe(&config),
        llmgate::config::warnings(&config).join("\n"),
    ];
    let gateway = Gateway::start_config(config).await;
    let mut client = gateway.client().await;

    let mut statuses = Vec::new();
    for key in [Some(WRONG_KEY), None, Some(CALLER_KEY)] {
        let request = match key {
            Some(key) => keyed(request("m", "hi"), key),
            None => tonic::Request::new(request("m", "hi")),
        };
        statuses.push(client.complete(request).await.expect_err("refused"));
    }
    statuses.push(
        collect_keyed(&mut client, request("m", "hi"), CALLER_KEY)
            .await
            .expect_err("the upstream refuses"),
    );
    let codes: Vec<Code> = statuses.iter().map(tonic::Status::code).collect();
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated,
            Code::Unauthenticated
        ]
    );
    assert!(
        upstream
            .received()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {UPSTREAM_KEY}"))),
        "the upstream got its key"
    );
    let listing = client
        .list_models(keyed(ListModelsRequest {}, CALLER_KEY))
        .await
        .expect("listed");
    shown.push(format!("{listing:?}"));
    shown.extend(statuses.iter().map(|s| format!("{s:?}")));
    gateway.shutdown().await.expect("clean shutdown");
    let logs = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("UTF-8 logs");
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the capture saw the gateway's logs"
    );
    shown.push(logs);
    for text in &shown {
        for secret in [UPSTREAM_KEY, CALLER_KEY, WRONG_KEY] {
            assert!(!text.contains(secret), "{secret} leaked in:\n{text}");
        }
    }
}
