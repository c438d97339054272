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
