//! Every port holds a stalled client to the same clock: from accept to the
//! first complete request head within `handshake_timeout`, whatever the
//! client managed to send before it went quiet.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// One simulated model, with a short handshake limit.
const ROUTES: &str = "limits:
  handshake_timeout: 150ms
upstreams:
  fast:
    kind: sim
    sim: { ttft: 0ms, tokens_per_second: 0, output_tokens: 3 }
routes:
  - model: demo
    pools:
      - upstream: fast
";

/// Connects to `addr`, sends `opening` and then nothing; whether the
/// gateway closed the connection within the test's patience (reading and
/// discarding whatever it sent first, such as HTTP/2 SETTINGS).
async fn closed_after_stalling(addr: SocketAddr, opening: &[u8]) -> bool {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(opening).await.expect("send the opening");
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(PATIENCE, closed).await.is_ok()
}

/// The HTTP/2 client preface, then silence.
const H2_PREFACE_ONLY: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Half an HTTP/1.1 request head, then silence.
const PARTIAL_HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: gateway\r\n";

#[tokio::test]
async fn an_http2_preface_and_then_silence_is_closed_on_every_port() {
    let gateway = Gateway::start_with_admin(ROUTES).await;
    let admin = gateway.admin.expect("admin listener");
    for (port, addr) in [
        ("grpc", gateway.addr),
        ("http", gateway.http_addr),
        ("admin", admin),
    ] {
        assert!(
            closed_after_stalling(addr, H2_PREFACE_ONLY).await,
            "the {port} port held a stalled HTTP/2 connection"
        );
    }
    gateway
        .complete(request("demo", "hi"))
        .await
        .expect("a client that talks is served");
}

#[tokio::test]
async fn half_a_request_head_and_then_silence_is_closed_on_every_port() {
    let gateway = Gateway::start_with_admin(ROUTES).await;
    let admin = gateway.admin.expect("admin listener");
    for (port, addr) in [
        ("grpc", gateway.addr),
        ("http", gateway.http_addr),
        ("admin", admin),
    ] {
        assert!(
            closed_after_stalling(addr, PARTIAL_HEAD).await,
            "the {port} port held a half-sent request head"
        );
    }
    let metrics = gateway.admin_get("/metrics").await;
    assert_eq!(metrics.status, 200, "the admin port still answers");
}

/// A 429 whose `Retry-After` is `seconds`, as an upstream might send it.
fn throttled_for(seconds: &str) -> Vec<Step> {
    let body = r#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
    vec![Step::Raw(
        format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
             retry-after: {seconds}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )]
}

#[tokio::test]
async fn an_absurd_retry_after_waits_no_longer_than_the_upstream_timeout() {
    for seconds in ["3600", "18446744073709551615"] {
        let upstream = FakeUpstream::start(move |_| throttled_for(seconds)).await;
        let routes = one_upstream(&upstream.url(), "    timeout: 200ms\n").replace(
            "        model: upstream-model\n",
            "        model: upstream-model\n    retry: { attempts: 2 }\n",
        );
        let gateway = Gateway::start(&routes).await;
        // Without a deadline the call would have slept for the whole
        // Retry-After; with one, computing the wake-up overflowed.
        let unbounded = gateway.complete(request("m", "hi")).await;
        let bounded = gateway
            .client()
            .await
            .complete(with_timeout(
                request("m", "hi"),
                std::time::Duration::from_secs(20),
            ))
            .await
            .map(tonic::Response::into_inner);
        for (which, answer) in [("no deadline", unbounded), ("deadline", bounded)] {
            let status = answer.expect_err("the upstream only throttles");
            assert_eq!(
                status.code(),
                tonic::Code::ResourceExhausted,
                "Retry-After {seconds}, {which}: {status:?}"
            );
        }
        assert_eq!(upstream.count(), 4, "each call tried twice");
    }
}

// === the shared edge: keys before bodies, one set of body limits ===

/// One simulated model behind a key, with small body limits.
const KEYED: &str = "limits:
  max_request_size: 2KiB
  request_idle_timeout: 200ms
auth:
  keys:
    - name: app
      env: APP_KEY
      models: [demo]
upstreams:
  fast:
    kind: sim
    sim: { ttft: 0ms, tokens_per_second: 0, output_tokens: 3 }
routes:
  - model: demo
    pools:
      - upstream: fast
  - model: secret
    pools:
      - upstream: fast
";

const APP_KEY: &str = "sk-app-3c1e4f";

fn app_env(name: &str) -> Option<String> {
    (name == "APP_KEY").then(|| APP_KEY.to_string())
}

/// A chat completion request head announcing `length` bytes of body.
fn chat_head(length: usize, key: Option<&str>) -> String {
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         {auth}content-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_caller_without_a_key_is_refused_before_its_body_is_read_on_both_fronts() {
    let gateway = Gateway::start_with_env(KEYED, &app_env).await;
    // HTTP: a head announcing a large body, and no body at all. The answer
    // comes without waiting for a byte of it.
    let (status, body) = raw_http(gateway.http_addr, chat_head(1_000_000, None).as_bytes())
        .await
        .expect("refused without reading the body");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("API key"), "{body}");
    // gRPC: a request whose body never arrives.
    let never = http_body_util::StreamBody::new(futures_util::stream::pending::<
        Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >());
    let (code, message) = raw_grpc(gateway.addr, None, never).await;
    assert_eq!(code, tonic::Code::Unauthenticated, "{message}");
    // With the key, the same gateway serves.
    gateway
        .client()
        .await
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect("a keyed call is served");
}

#[tokio::test]
async fn a_body_over_max_request_size_is_refused_by_both_fronts() {
    let gateway = Gateway::start_with_env(KEYED, &app_env).await;
    let prompt = "x".repeat(3 * 1024);
    // HTTP, with the size declared: refused before it is read.
    let body = format!(r#"{{"model":"demo","messages":[{{"role":"user","content":"{prompt}"}}]}}"#);
    let mut sent = chat_head(body.len(), Some(APP_KEY)).into_bytes();
    sent.extend_from_slice(body.as_bytes());
    let (status, answer) = raw_http(gateway.http_addr, &sent).await.expect("an answer");
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("at most 2 KiB"), "{answer}");
    // HTTP, chunked (no length declared): refused once it passes the limit.
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {APP_KEY}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let (status, answer) = raw_http(gateway.http_addr, chunked.as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 413, "{answer}");
    // gRPC: the same limit, as gRPC's RESOURCE_EXHAUSTED.
    let status = gateway
        .client()
        .await
        .complete(keyed(request("demo", &prompt), APP_KEY))
        .await
        .expect_err("too large");
    assert_status(&status, tonic::Code::ResourceExhausted, &["at most 2 KiB"]);
}

#[tokio::test]
async fn an_http_body_that_stops_arriving_is_refused_after_request_idle_timeout() {
    let gateway = Gateway::start_with_env(KEYED, &app_env).await;
    let mut sent = chat_head(500, Some(APP_KEY)).into_bytes();
    sent.extend_from_slice(br#"{"model":"demo","#);
    let (status, answer) = raw_http(gateway.http_addr, &sent)
        .await
        .expect("refused, not held");
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("request_idle_timeout"), "{answer}");
}

#[tokio::test]
async fn a_model_is_described_only_to_a_key_that_may_call_it() {
    let gateway = Gateway::start_with_env(KEYED, &app_env).await;
    let url = |model: &str| format!("http://{}/v1/models/{model}", gateway.http_addr);
    let stranger = http_get(&url("demo")).await;
    assert_eq!(stranger.status, 401, "{}", stranger.body);
    let described = http_get_with_key(&url("demo"), APP_KEY).await;
    assert_eq!(described.status, 200, "{}", described.body);
    assert!(
        described.body.contains(r#""id":"demo""#),
        "{}",
        described.body
    );
    // A route the key may not call is as good as unrouted to it.
    let hidden = http_get_with_key(&url("secret"), APP_KEY).await;
    assert_eq!(hidden.status, 404, "{}", hidden.body);
}

#[tokio::test]
async fn too_many_stop_sequences_are_refused_naming_the_field() {
    let gateway = Gateway::start_with_env(KEYED, &app_env).await;
    let mut many = request("demo", "hi");
    many.stop = vec!["x".to_string(); 17];
    let status = gateway
        .client()
        .await
        .complete(keyed(many, APP_KEY))
        .await
        .expect_err("17 stop sequences");
    assert_status(
        &status,
        tonic::Code::InvalidArgument,
        &["stop", "at most 16"],
    );
    let mut empty = request("demo", "hi");
    empty.stop = vec![String::new()];
    let status = gateway
        .client()
        .await
        .complete(keyed(empty, APP_KEY))
        .await
        .expect_err("an empty stop sequence");
    assert_status(&status, tonic::Code::InvalidArgument, &["stop[0]"]);
}

#[tokio::test]
async fn bodies_past_the_gateways_buffer_budget_are_refused_at_once() {
    let routes = KEYED
        .replace(
            "  max_request_size: 2KiB\n",
            "  max_request_size: 2KiB\n  max_buffered_bytes: 4KiB\n",
        )
        // The stalled bodies must stay held while the third arrives.
        .replace("request_idle_timeout: 200ms", "request_idle_timeout: 60s");
    let gateway = Gateway::start_with_env(&routes, &app_env).await;
    // Two bodies of 1.9 KiB arrive and stall: they hold 3.8 KiB of the 4.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(gateway.http_addr)
            .await
            .expect("connect");
        let mut sent = chat_head(2000, Some(APP_KEY)).into_bytes();
        sent.extend(std::iter::repeat_n(b' ', 1900));
        stream.write_all(&sent).await.expect("send");
        stalled.push(stream);
    }
    // The third cannot be held as well: refused at once, not queued.
    let mut sent = chat_head(2000, Some(APP_KEY)).into_bytes();
    sent.extend(std::iter::repeat_n(b' ', 1900));
    let (status, answer) = raw_http(gateway.http_addr, &sent).await.expect("refused");
    assert_eq!(status, 429, "{answer}");
    assert!(answer.contains("max_buffered_bytes"), "{answer}");
    drop(stalled);
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_accept_on_that_listener_only() {
    let routes = KEYED.replace(
        "  max_request_size: 2KiB\n",
        "  max_request_size: 2KiB\n  max_connections: 2\n  handshake_timeout: 60s\n",
    );
    let gateway = Gateway::start_with_env(&routes, &app_env).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(gateway.http_addr)
                .await
                .expect("connect"),
        );
    }
    // Only the cap can close a connection this soon: the handshake limit is a minute.
    assert!(
        closed_after_stalling(gateway.http_addr, b"").await,
        "a third connection to a full listener is closed"
    );
    // The gRPC listener has its own room.
    gateway
        .client()
        .await
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect("the other listener serves");
    drop(held);
}

// === memory: strangers' bodies cost the real binary nothing ===

/// The resident memory of process `pid`, from `/proc/<pid>/status`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"))
}

/// The body each stranger sends: 4 MiB, as the review's clients did.
const STRANGER_BODY: usize = 4 * 1024 * 1024;
/// Sent in pieces this big, one every [`DRIP`].
const PIECE: usize = 64 * 1024;
const DRIP: std::time::Duration = std::time::Duration::from_millis(10);

/// One keyless HTTP caller: a head announcing a 4 MiB body, the body
/// dripped in pieces for as long as the gateway takes it; the status the
/// gateway answered with.
async fn keyless_http_drip(addr: SocketAddr) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut read, mut write) = stream.into_split();
    let send = async move {
        write
            .write_all(chat_head(STRANGER_BODY, None).as_bytes())
            .await?;
        let piece = vec![b'x'; PIECE];
        for _ in 0..STRANGER_BODY / PIECE {
            // A gateway that stopped reading leaves the write pending.
            tokio::time::timeout(PATIENCE, write.write_all(&piece))
                .await
                .map_err(std::io::Error::other)??;
            tokio::time::sleep(DRIP).await;
        }
        Ok::<_, std::io::Error>(())
    };
    let sender = tokio::spawn(send);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let status = tokio::time::timeout(PATIENCE, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some(code) = text.split(' ').nth(1).filter(|_| text.contains("\r\n")) {
                return code.parse().ok();
            }
        }
    })
    .await
    .ok()
    .flatten();
    sender.abort();
    status
}

/// One keyless gRPC caller dripping a 4 MiB body; the code it got.
async fn keyless_grpc_drip(addr: SocketAddr) -> tonic::Code {
    use futures_util::StreamExt;
    let pieces = futures_util::stream::iter(0..STRANGER_BODY / PIECE).then(|_| async {
        tokio::time::sleep(DRIP).await;
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(vec![
            0u8;
            PIECE
        ])))
    });
    let body = http_body_util::StreamBody::new(Box::pin(pieces));
    raw_grpc(addr, None, body).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_strangers_dripping_large_bodies_leave_the_binarys_memory_flat() {
    let dir = TempDir::new("doors-rss");
    std::fs::write(dir.join("app.key"), APP_KEY).expect("write the key file");
    let config = dir.join("routing.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {{ grpc: 127.0.0.1:0, http: 127.0.0.1:0, metrics: off }}
auth:
  keys:
    - {{ name: app, file: {}, models: [demo] }}
upstreams:
  sim: {{ kind: sim }}
routes:
  - model: demo
    pools: [{{ upstream: sim }}]
",
            dir.join("app.key").display()
        ),
    )
    .expect("write the routing file");
    let (server, mut stdout) = crate::serve_cli::serve_unwatched(&config);
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        std::io::BufRead::read_line(&mut stdout, line).expect("a listening line");
    }
    let addr_of = |line: &str| -> SocketAddr {
        let word = line.trim().rsplit(' ').next().unwrap_or_default();
        word.parse()
            .unwrap_or_else(|_| panic!("no address in {line:?}"))
    };
    let (grpc, http) = (addr_of(&lines[0]), addr_of(&lines[1]));
    let pid = server.id();
    let idle = resident_kib(pid);

    // 25 strangers on each front, all at once.
    let mut http_callers = tokio::task::JoinSet::new();
    let mut grpc_callers = tokio::task::JoinSet::new();
    for _ in 0..25 {
        http_callers.spawn(keyless_http_drip(http));
        grpc_callers.spawn(keyless_grpc_drip(grpc));
    }
    // Sample while they send: the peak is what matters.
    let mut peak = idle;
    let (mut http_answers, mut grpc_answers) = (Vec::new(), Vec::new());
    while !(http_callers.is_empty() && grpc_callers.is_empty()) {
        peak = peak.max(resident_kib(pid));
        tokio::select! {
            Some(done) = http_callers.join_next(), if !http_callers.is_empty() => {
                http_answers.push(done.expect("caller task"));
            }
            Some(done) = grpc_callers.join_next(), if !grpc_callers.is_empty() => {
                // A call the gateway never answered panics in its task.
                grpc_answers.push(done.unwrap_or(tonic::Code::Unknown));
            }
            () = tokio::time::sleep(DRIP) => {}
        }
    }
    peak = peak.max(resident_kib(pid));
    // 50 bodies of 4 MiB are 200 MiB. The bound is half the buffer budget
    // (64 MiB), so it proves strangers are refused before the budget is
    // touched, not merely held to it.
    let grown_mib = peak.saturating_sub(idle) / 1024;
    assert!(
        grown_mib < 32,
        "RSS grew by {grown_mib} MiB (idle {idle} KiB, peak {peak} KiB)"
    );
    assert_eq!(
        http_answers,
        [Some(401); 25],
        "keyless HTTP bodies are refused"
    );
    assert_eq!(
        grpc_answers,
        [tonic::Code::Unauthenticated; 25],
        "keyless gRPC bodies are refused"
    );
    // And the gateway still serves its key holders.
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;
    let mut sent = chat_head(body.len(), Some(APP_KEY)).into_bytes();
    sent.extend_from_slice(body.as_bytes());
    let (status, answer) = raw_http(http, &sent).await.expect("an answer");
    assert_eq!(status, 200, "{answer}");
}

// === quotas: a refusal costs nothing ===

#[tokio::test]
async fn calls_the_gateway_refuses_cost_the_key_none_of_its_quota() {
    let routes = KEYED.replace(
        "      models: [demo]\n",
        "      models: [\"*\"]\n      limits: { requests_per_minute: 1, tokens_per_minute: 100 }\n",
    );
    let gateway = Gateway::start_with_env(&routes, &app_env).await;
    let mut client = gateway.client().await;
    for _ in 0..3 {
        let status = client
            .complete(keyed(request("nowhere", "hi"), APP_KEY))
            .await
            .expect_err("not routed");
        assert_eq!(status.code(), tonic::Code::NotFound, "{}", status.message());
    }
    client
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect("the key's one request a minute is still there");
    let status = client
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect_err("and now it is spent");
    assert_status(
        &status,
        tonic::Code::ResourceExhausted,
        &["key 'app' is over its limit of 1 requests per minute"],
    );
}

// === fallbacks: admitted and charged where they land ===

/// A primary route whose upstream is always overloaded, falling back to
/// `spare` (one request a minute), for a key that may call `models`.
async fn falling_back(models: &str) -> (Gateway, FakeUpstream) {
    let primary = FakeUpstream::start(|_| {
        json_reply(
            503,
            &serde_json::json!({"error": {"message": "overloaded"}}),
        )
    })
    .await;
    let yaml = format!(
        "auth:
  keys:
    - {{ name: app, env: APP_KEY, models: [{models}] }}
upstreams:
  primary: {{ kind: openai, endpoints: [{}] }}
  backup: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 3 }} }}
routes:
  - model: demo
    fallback: [spare]
    retry: {{ attempts: 1 }}
    pools: [{{ upstream: primary }}]
  - model: spare
    limits: {{ requests_per_minute: 1 }}
    pools: [{{ upstream: backup }}]
",
        primary.url()
    );
    (Gateway::start_with_env(&yaml, &app_env).await, primary)
}

#[tokio::test]
async fn a_fallback_the_key_may_not_call_is_not_taken() {
    let (gateway, _primary) = falling_back("demo").await;
    let status = gateway
        .client()
        .await
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect_err("spare is not the key's");
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_fallback_is_held_to_its_own_routes_limits() {
    let (gateway, _primary) = falling_back("demo, spare").await;
    let mut client = gateway.client().await;
    let answer = client
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect("served by spare")
        .into_inner();
    assert_eq!(answer.model, "spare");
    let status = client
        .complete(keyed(request("demo", "hi"), APP_KEY))
        .await
        .expect_err("spare's one request a minute is spent");
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "{}",
        status.message()
    );
}
