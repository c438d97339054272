//! The fake upstream: a server on 127.0.0.1 whose every byte on the wire a
//! test scripts, and the scripts and routing files most tests share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmgate::proto::CompleteRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;

/// One request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake upstream does with a request, step by step.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send response headers: status and content type; the body follows
    /// with chunked transfer encoding.
    Head(u16, &'static str),
    /// Send these bytes as one HTTP chunk.
    Chunk(Vec<u8>),
    /// Send these bytes as they are: a hand-written head or a broken body.
    Raw(Vec<u8>),
    /// End the body properly (the zero-length chunk).
    End,
    /// Close the connection abruptly (no end of body).
    Cut,
    /// Send nothing more and wait for the gateway to close the connection.
    Hang,
    /// Wait before the next step, as a slow server would.
    Delay(Duration),
    /// Wait until the test opens the gate (adds permits to it).
    Gate(Arc<tokio::sync::Semaphore>),
}

/// A whole JSON answer with a status.
pub fn json_reply(status: u16, body: &serde_json::Value) -> Vec<Step> {
    vec![
        Step::Head(status, "application/json"),
        Step::Chunk(body.to_string().into_bytes()),
        Step::End,
    ]
}

/// A whole OpenAI answer: "Paris." from `served-model`, finished with
/// `stop`, 12 tokens in and 2 out.
pub fn paris_reply() -> Vec<Step> {
    json_reply(
        200,
        &serde_json::json!({
            "id": "x", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        }),
    )
}

/// The routes most front-end tests use: `demo` (aliases `demo-latest`,
/// `d`) and `other` (`other-upstream-name` upstream), both on an instant
/// simulator of 5 tokens.
pub const SIM_ROUTES: &str = "
upstreams:
  fast:
    kind: sim
    sim: { ttft: 1ms, tokens_per_second: 0, output_tokens: 5 }
routes:
  - model: demo
    aliases: [demo-latest, d]
    pools:
      - upstream: fast
  - model: other
    pools:
      - upstream: fast
        model: other-upstream-name
";

/// A whole OpenAI stream: `tokens`, then the finish reason, usage (input,
/// output) and `[DONE]`.
pub fn openai_stream(tokens: &[&str], reason: &str, input: u32, output: u32) -> Vec<Step> {
    let mut body: String = tokens.iter().map(|t| sse_token(t)).collect();
    body.push_str(&sse_finish(reason, input, output));
    stream_reply("text/event-stream", body.as_bytes())
}

/// Model `m` on a simulator that streams 10 tokens at 50 a second, with a
/// 30 s grace period: a stream still running when shutdown begins.
pub const SLOW_STREAM_ROUTES: &str = "
shutdown_grace: 30s
upstreams:
  slow: { kind: sim, sim: { ttft: 1ms, tokens_per_second: 50, output_tokens: 10 } }
routes:
  - model: m
    pools: [{ upstream: slow }]
";

/// An OpenAI SSE stream chunk carrying one token.
pub fn sse_token(token: &str) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": null}],
    });
    format!("data: {chunk}\n\n")
}

/// The final chunks of an OpenAI stream: finish reason, usage, `[DONE]`.
pub fn sse_finish(reason: &str, input: u32, output: u32) -> String {
    let finish = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason}],
    });
    let usage = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
        "model": "upstream-model", "choices": [],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    });
    format!("data: {finish}\n\ndata: {usage}\n\ndata: [DONE]\n\n")
}

type Script = Arc<dyn Fn(&Received) -> Vec<Step> + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1:0 that answers each request with the
/// steps its script returns, records every request, and reports every
/// connection the gateway closes while the server waits on it.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
    /// The accept loop and every connection: aborted together, so dropping
    /// the server kills it the way a crashed process would.
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FakeUpstream {
    /// Starts a server that answers every request with `script(request)`.
    pub async fn start(script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static) -> Self {
        Self::start_at("127.0.0.1:0".parse().expect("addr"), script).await
    }

    /// Starts a server on `addr` (to bring a killed server back on its old
    /// port).
    pub async fn start_at(
        addr: SocketAddr,
        script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let script: Script = Arc::new(script);
        let log = received.clone();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let connections = tasks.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = socket.set_nodelay(true);
                let connection = tokio::spawn(serve_connection(
                    socket,
                    script.clone(),
                    log.clone(),
                    closed_tx.clone(),
                ));
                connections
                    .lock()
                    .expect("lock")
                    .push(connection.abort_handle());
            }
        });
        tasks.lock().expect("lock").push(accept.abort_handle());
        FakeUpstream {
            addr,
            received,
            accepted,
            closed,
            tasks,
        }
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Waits until the gateway closes a connection the server was holding
    /// open (a `Hang` step). Panics if that does not happen in [`PATIENCE`].
    pub async fn wait_closed(&mut self) {
        tokio::time::timeout(PATIENCE, self.closed.recv())
            .await
            .expect("the gateway closed the upstream connection")
            .expect("server running");
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

async fn serve_connection(
    mut socket: TcpStream,
    script: Script,
    log: Arc<Mutex<Vec<Received>>>,
    closed: mpsc::UnboundedSender<()>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        log.lock().expect("lock").push(request.clone());
        for step in script(&request) {
            let result = match step {
                Step::Head(status, content_type) => {
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n\
                         transfer-encoding: chunked\r\n\r\n"
                    );
                    socket.write_all(head.as_bytes()).await
                }
                // A zero-length chunk would end the body; send nothing.
                Step::Chunk(bytes) if bytes.is_empty() => Ok(()),
                Step::Chunk(bytes) => {
                    let mut chunk = format!("{:x}\r\n", bytes.len()).into_bytes();
                    chunk.extend_from_slice(&bytes);
                    chunk.extend_from_slice(b"\r\n");
                    socket.write_all(&chunk).await
                }
                Step::End => socket.write_all(b"0\r\n\r\n").await,
                Step::Raw(bytes) => socket.write_all(&bytes).await,
                Step::Delay(wait) => {
                    tokio::time::sleep(wait).await;
                    Ok(())
                }
                Step::Gate(gate) => {
                    let _ = gate.acquire().await;
                    Ok(())
                }
                Step::Cut => return,
                Step::Hang => {
                    let mut scratch = [0u8; 1024];
                    loop {
                        match socket.read(&mut scratch).await {
                            Ok(0) | Err(_) => {
                                let _ = closed.send(());
                                return;
                            }
                            Ok(_) => {}
                        }
                    }
                }
            };
            if result.is_err() {
                let _ = closed.send(());
                return;
            }
            let _ = socket.flush().await;
        }
    }
}

/// Reads one HTTP/1.1 request (headers and a content-length body).
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[body_start..body_start + length])
        .unwrap_or(serde_json::Value::Null);
    buf.drain(..body_start + length);
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

/// A routing file with one `openai` upstream named `up` at `url` serving
/// model `m` (upstream model `upstream-model`), plus `extra` upstream keys.
pub fn one_upstream(url: &str, extra: &str) -> String {
    one_upstream_of_kind("openai", url, extra)
}

/// Like [`one_upstream`], with an upstream of `kind`.
pub fn one_upstream_of_kind(kind: &str, url: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  up:\n    kind: {kind}\n    endpoints: [{url}]\n{extra}\
         routes:\n  - model: m\n    pools:\n      - upstream: up\n        model: upstream-model\n"
    )
}

/// A fake upstream answering with `script`, and a gateway routing model
/// `m` to it as an upstream of `kind` (with `extra` upstream keys and
/// environment variables from `env`).
pub async fn gateway_to(
    kind: &str,
    extra: &str,
    env: &dyn Fn(&str) -> Option<String>,
    script: impl Fn(&Received) -> Vec<Step> + Send + Sync + 'static,
) -> (FakeUpstream, Gateway) {
    let upstream = FakeUpstream::start(script).await;
    let gateway =
        Gateway::start_with_env(&one_upstream_of_kind(kind, &upstream.url(), extra), env).await;
    (upstream, gateway)
}

/// Makes one unary call through `gateway` that must succeed, and returns
/// the request `upstream` received for it.
pub async fn sent_for(
    gateway: &Gateway,
    upstream: &FakeUpstream,
    request: CompleteRequest,
) -> Received {
    gateway.complete(request).await.expect("call succeeds");
    upstream
        .received()
        .pop()
        .expect("the upstream got the call")
}

/// No environment variables.
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// A whole streamed answer: headers, `body` in one chunk, a clean end.
pub fn stream_reply(content_type: &'static str, body: &[u8]) -> Vec<Step> {
    vec![
        Step::Head(200, content_type),
        Step::Chunk(body.to_vec()),
        Step::End,
    ]
}

/// A fake upstream that answers its k-th request (from 0) with `body` cut
/// in two reads at byte k, for checking every split point of a stream.
pub async fn splitting_upstream(content_type: &'static str, body: Vec<u8>) -> FakeUpstream {
    let split = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    FakeUpstream::start(move |_| {
        let k = split
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            .min(body.len());
        vec![
            Step::Head(200, content_type),
            Step::Chunk(body[..k].to_vec()),
            Step::Chunk(body[k..].to_vec()),
            Step::End,
        ]
    })
    .await
}
