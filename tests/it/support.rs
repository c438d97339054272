//! Test harness: a gateway started in process on a routing file written by
//! the test, and a fake OpenAI-compatible upstream whose every byte on the
//! wire the test scripts.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmgate::config::Config;
use llmgate::proto::llm_service_client::LlmServiceClient;
use llmgate::proto::{CompleteRequest, CompleteResponse, Message, TokenChunk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use tonic::transport::Channel;

/// The longest any test waits for something that should happen at once;
/// only a guard against hanging, never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The OpenAI-compatible HTTP front.
    pub http_addr: SocketAddr,
    /// Reloads the routing file, for gateways started on one.
    pub reloader: Option<Arc<llmgate::reload::Reloader>>,
    /// The admin listener (metrics and probes), when started with one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), llmgate::server::ServeError>>>,
}

impl Gateway {
    /// Starts a gateway on `yaml` (its `listen:` is ignored: port 0 is used).
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &|_| None).await
    }

    /// Like [`Gateway::start`], with environment variables from `env`.
    pub async fn start_with_env(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Gateway {
        Self::start_config(test_config(yaml, env)).await
    }

    /// Starts a gateway on an already parsed config.
    pub async fn start_config(config: Config) -> Gateway {
        Self::start_with_connectors(config, llmgate::balance::Connectors::default()).await
    }

    /// Starts a gateway whose upstreams resolve DNS names with `resolver`.
    pub async fn start_with_connectors(
        config: Config,
        connectors: llmgate::balance::Connectors,
    ) -> Gateway {
        let server = llmgate::server::Server::new(config, connectors).expect("table builds");
        Self::serve(server, false, false).await
    }

    /// Like [`Gateway::start`], with the admin listener (metrics and
    /// probes) on another port 0.
    pub async fn start_with_admin(yaml: &str) -> Gateway {
        Self::start_with_admin_env(yaml, &|_| None).await
    }

    /// Like [`Gateway::start_with_admin`], with environment variables from
    /// `env`.
    pub async fn start_with_admin_env(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Gateway {
        let server = llmgate::server::Server::new(test_config(yaml, env), Default::default())
            .expect("table builds");
        Self::serve(server, false, true).await
    }

    /// Starts a gateway on the routing file at `path`, reloading it when it
    /// changes if `watch`.
    pub async fn start_file(
        path: &std::path::Path,
        connectors: llmgate::balance::Connectors,
        watch: bool,
    ) -> Gateway {
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(err) => panic!("test routing file is invalid:\n{err}"),
        };
        let server = llmgate::server::Server::new(config, connectors)
            .expect("table builds")
            .reload_from(path.to_path_buf())
            .admin_key(llmgate::server::admin::AdminKey::new(ADMIN_KEY));
        Self::serve(server, watch, true).await
    }

    async fn serve(server: llmgate::server::Server, watch: bool, with_admin: bool) -> Gateway {
        // The recorder is process-wide: install it before any test's first
        // call, or a call that starts before another test installs it and
        // ends after would count its end but not its start.
        llmgate::telemetry::metrics::install().expect("metrics recorder");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin = if with_admin {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin"))
        } else {
            None
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr().expect("admin addr"));
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let listeners = llmgate::Listeners {
            grpc: listener,
            http: Some(http),
            admin,
        };
        let reloader = server.reloader();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server.serve_watching(listeners, watch, async {
            let _ = stopped.await;
        }));
        Gateway {
            addr,
            http_addr,
            reloader,
            admin: admin_addr,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> HttpAnswer {
        let admin = self.admin.expect("gateway started with an admin listener");
        http_get(&format!("http://{admin}{path}")).await
    }

    /// Scrapes `/metrics` and parses it as Prometheus does.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        let answer = self.admin_get("/metrics").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        prometheus_parse::Scrape::parse(answer.body.lines().map(|line| Ok(line.to_string())))
            .expect("the exposition format parses")
    }

    /// A client on a new HTTP/2 connection.
    pub async fn client(&self) -> LlmServiceClient<Channel> {
        LlmServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to gateway")
    }

    /// One unary call on a new connection.
    pub async fn complete(&self, request: CompleteRequest) -> Result<CompleteResponse, Status> {
        Ok(self.client().await.complete(request).await?.into_inner())
    }

    /// One streamed call on a new connection, gathered.
    pub async fn stream(&self, request: CompleteRequest) -> Result<Vec<TokenChunk>, Status> {
        collect(&mut self.client().await, request).await
    }

    /// A new HTTP/2 connection to the gateway, for any gRPC client.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to gateway")
    }

    /// The URL of the gateway.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), llmgate::server::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take().expect("running");
        tokio::time::timeout(PATIENCE, done)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return after [`Gateway::begin_shutdown`].
    pub async fn stopped(mut self) -> Result<(), llmgate::server::ServeError> {
        let done = self.done.take().expect("running");
        tokio::time::timeout(PATIENCE, done)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(done) = &self.done {
            done.abort();
        }
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "llmgate-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// `GET url` over HTTP/1.1.
pub async fn http_get(url: &str) -> HttpAnswer {
    http_send(http::Method::GET, url).await
}

/// `POST url` with an empty body, over HTTP/1.1.
pub async fn http_post(url: &str) -> HttpAnswer {
    http_send(http::Method::POST, url).await
}

/// `GET url` with `authorization: Bearer key`.
pub async fn http_get_with_key(url: &str, key: &str) -> HttpAnswer {
    http_send_with(http::Method::GET, url, Some(key)).await
}

/// `POST url` with an empty body and `authorization: Bearer key`.
pub async fn http_post_with_key(url: &str, key: &str) -> HttpAnswer {
    http_send_with(http::Method::POST, url, Some(key)).await
}

async fn http_send(method: http::Method, url: &str) -> HttpAnswer {
    http_send_with(method, url, None).await
}

async fn http_send_with(method: http::Method, url: &str, key: Option<&str>) -> HttpAnswer {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request.body(http_body_util::Empty::new()).expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("answer in time")
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `bytes` on a new connection to `addr` and reads the answer's
/// status line and body until the gateway closes or `PATIENCE` passes;
/// `None` when nothing came back in time.
pub async fn raw_http(addr: SocketAddr, bytes: &[u8]) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, bytes)
        .await
        .expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    // One whole answer is all the tests need.
                    if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&answer[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if length.is_some_and(|len| answer.len() >= end + 4 + len) {
                            return;
                        }
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The admin key gateways started on a routing file allow `POST /-/reload`
/// with.
pub const ADMIN_KEY: &str = "test-admin-key";

/// A test's routing file, parsed; panics with the problems if it is broken.
fn test_config(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Config {
    match Config::parse(yaml, "test.yaml", env) {
        Ok(config) => config,
        Err(err) => panic!("test routing file is invalid:\n{err}"),
    }
}

/// Reads a stream to its end, failing on any error; returns the chunks.
pub async fn read_to_end(
    mut stream: tonic::Streaming<llmgate::proto::TokenChunk>,
) -> Vec<llmgate::proto::TokenChunk> {
    let mut chunks = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        chunks.push(chunk.expect("chunk"));
    }
    chunks
}

/// A request with one user message.
pub fn request(model: &str, prompt: &str) -> CompleteRequest {
    CompleteRequest {
        model: model.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A request with a `grpc-timeout`.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

// === fake upstream ===

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
        let accept = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
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
            closed,
            tasks,
        }
    }

    /// How many requests it has received.
    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
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

/// Calls `CompleteStream` and gathers every chunk, or the status that ended
/// the stream.
pub async fn collect(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> Result<Vec<TokenChunk>, tonic::Status> {
    use futures_util::StreamExt;
    let mut stream = client.complete_stream(request).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

/// The same request, unary and then streamed, where both must fail: the
/// two statuses, for checks that hold either way.
pub async fn errors_both_ways(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> [Status; 2] {
    let unary = client
        .complete(request.clone())
        .await
        .expect_err("the unary call fails");
    let streamed = collect(client, request)
        .await
        .expect_err("the streamed call fails");
    [unary, streamed]
}

/// A stream that fails after some tokens: the chunks before the error, and
/// the error. Panics if the stream ends without one, claims to be done
/// first, or sends anything after it.
pub async fn stream_until_error(
    client: &mut LlmServiceClient<Channel>,
    request: CompleteRequest,
) -> (Vec<TokenChunk>, Status) {
    use futures_util::StreamExt;
    let mut stream = client
        .complete_stream(request)
        .await
        .expect("the stream starts")
        .into_inner();
    let mut chunks = Vec::new();
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                assert!(!chunk.done, "an answer that fails is never done");
                chunks.push(chunk);
            }
            Some(Err(status)) => {
                assert!(stream.next().await.is_none(), "nothing after the error");
                return (chunks, status);
            }
            None => panic!("the stream ended without an error"),
        }
    }
}

/// Streams once per split point of a [`splitting_upstream`] serving a body
/// of `len` bytes, and checks that every split gives the same answer: its
/// text, finish reason and usage (input, output).
pub async fn assert_every_split_gives(
    client: &mut LlmServiceClient<Channel>,
    len: usize,
    text: &str,
    finish_reason: &str,
    usage: (i32, i32),
) {
    for k in 0..=len {
        let chunks = collect(client, request("m", "hi"))
            .await
            .unwrap_or_else(|status| panic!("split at byte {k}: {status}"));
        assert_eq!(text_of(&chunks), text, "split at byte {k}");
        let last = chunks.last().expect("final chunk");
        assert_eq!(last.finish_reason, finish_reason, "split at byte {k}");
        let got = last.usage.map(|u| (u.input_tokens, u.output_tokens));
        assert_eq!(got, Some(usage), "split at byte {k}");
    }
}

/// Checks a failed call's code, and that its message has every needle.
#[track_caller]
pub fn assert_status(status: &Status, code: tonic::Code, needles: &[&str]) {
    assert_eq!(status.code(), code, "{}", status.message());
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{needle:?} missing from: {}",
            status.message()
        );
    }
}

/// Checks the shape of a whole streamed answer: only the last chunk is
/// done and carries usage, with this finish reason, model and usage
/// (input, output).
#[track_caller]
pub fn assert_final_chunk(
    chunks: &[TokenChunk],
    finish_reason: &str,
    model: &str,
    usage: (i32, i32),
) {
    let (last, tokens) = chunks.split_last().expect("a final chunk");
    assert!(last.done, "the last chunk is done");
    assert!(
        tokens.iter().all(|c| !c.done && c.usage.is_none()),
        "only the last chunk is done or has usage"
    );
    assert_eq!(last.finish_reason, finish_reason);
    assert_eq!(last.model, model);
    let got = last.usage.map(|u| (u.input_tokens, u.output_tokens));
    assert_eq!(got, Some(usage), "usage on the final chunk");
}

/// The text of a streamed answer.
pub fn text_of(chunks: &[TokenChunk]) -> String {
    chunks.iter().map(|c| c.token.as_str()).collect()
}

/// A fixture file from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|err| panic!("fixture {}: {err}", path.display()))
}

/// A fixture as JSON.
pub fn json_fixture(name: &str) -> serde_json::Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

// === `llmgate sim` as a process ===

/// `llmgate sim --api API` running as a child process, killed on drop.
pub struct SimProcess {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl SimProcess {
    /// Starts `llmgate sim --api api` on a free port with an instant,
    /// unpaced model of `output_tokens` tokens, and waits for it to listen.
    pub async fn start(api: &str, output_tokens: u32) -> SimProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmgate"))
            .args([
                "sim",
                "--api",
                api,
                "--listen",
                "127.0.0.1:0",
                "--ttft",
                "0ms",
            ])
            .args(["--tokens-per-second", "0", "--output-tokens"])
            .arg(output_tokens.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start llmgate sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut running = SimProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                line
            }),
        )
        .await
        .expect("llmgate sim says where it listens in time")
        .expect("reader");
        assert!(
            line.contains(&format!("({api} API)")),
            "unexpected first line {line:?}"
        );
        running.addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        running
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `Complete` over a bare HTTP/2 connection with a raw `grpc-timeout`
/// header, and returns the gRPC status the gateway sent. Unlike a tonic
/// client, this one arms no timer of its own, so it sees what the gateway
/// answers even when the deadline is shorter than a round trip.
pub async fn raw_complete(
    addr: SocketAddr,
    message: &CompleteRequest,
    grpc_timeout: &str,
) -> (tonic::Code, String) {
    use prost::Message as _;

    let body = http_body_util::Full::new(bytes::Bytes::from(grpc_frame(&message.encode_to_vec())));
    raw_grpc(addr, Some(grpc_timeout), body).await
}

/// `message` framed as gRPC sends it: no compression, 4-byte length.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Calls `Complete` over a bare HTTP/2 connection with `body` as the
/// request body, whatever it holds, and returns the gRPC status the
/// gateway answered with.
pub async fn raw_grpc<B>(
    addr: SocketAddr,
    grpc_timeout: Option<&str>,
    body: B,
) -> (tonic::Code, String)
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<B>();
    let mut request = http::Request::post(format!("http://{addr}/llm.v1.LLMService/Complete"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = grpc_timeout {
        request = request.header("grpc-timeout", timeout);
    }
    let request = request.body(body).expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("gateway answers")
        .expect("HTTP/2 response");
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body");
    let trailers = body.trailers().cloned().unwrap_or_default();
    let field = |name: &str| {
        headers
            .get(name)
            .or_else(|| trailers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = field("grpc-status")
        .and_then(|c| c.parse::<i32>().ok())
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    let message = field("grpc-message")
        .map(|m| percent_decode(&m))
        .unwrap_or_default();
    (code, message)
}

/// Decodes the percent-encoding of `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === keys and certificates ===

/// `message` with `authorization: Bearer <key>`.
pub fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}")
            .parse()
            .expect("a valid header value"),
    );
    request
}

/// A certificate and its private key, as PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

/// A test certificate authority that issues certificates on demand.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("CA key");
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// The CA's own certificate.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names; also good as a client
    /// certificate).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("certificate");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// `POST url` with a JSON body over HTTP/1.1, read whole: for calls to the
/// OpenAI front whose streamed answer a test parses as an SDK would.
pub async fn http_post_json(url: &str, body: &serde_json::Value) -> HttpAnswer {
    use http_body_util::{BodyExt, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("answer in time")
        .expect("HTTP response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
