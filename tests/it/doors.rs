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
