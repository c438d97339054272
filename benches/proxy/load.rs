//! The load driver: one call per target as a repeatable closure, a closed
//! loop of tasks making them, and what each batch measured.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use llmgate::proto::llm_service_client::LlmServiceClient;
use llmgate::proto::{CompleteRequest, Message};
use tonic::transport::{Channel, Endpoint};

use crate::procs::{CpuSnapshot, Processes};
use crate::{DIRECT_EVENTS, MODEL, OUTPUT_TOKENS, PROMPT};

/// The pooled HTTP/1.1 client of every HTTP target.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A call as the driver repeats it.
type BoxCall = Pin<Box<dyn Future<Output = Result<CallOutcome, String>> + Send>>;

/// Unary or streaming.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `Complete` / `"stream": false`.
    Unary,
    /// `CompleteStream` / `"stream": true`.
    Stream,
}

/// What a run goes through to reach the sim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Target {
    /// Straight to the sim over HTTP/1.1: the baseline.
    Direct,
    /// The gateway's gRPC front over one HTTP/2 connection.
    Grpc,
    /// The gateway's OpenAI HTTP front over pooled HTTP/1.1.
    Http,
    /// nginx over pooled HTTP/1.1.
    Nginx,
}

/// Every target, in table order.
pub(crate) const TARGETS: [Target; 4] = [Target::Direct, Target::Grpc, Target::Http, Target::Nginx];

impl Target {
    /// Its column heading.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Grpc => "gw gRPC",
            Target::Http => "gw HTTP",
            Target::Nginx => "nginx",
        }
    }

    /// Its index in [`TARGETS`].
    pub(crate) fn index(self) -> usize {
        match self {
            Target::Direct => 0,
            Target::Grpc => 1,
            Target::Http => 2,
            Target::Nginx => 3,
        }
    }
}

/// The clients every target uses, built once and shared by all tasks.
pub(crate) struct Clients {
    /// One HTTP/2 connection to the gateway's gRPC front; clones share it.
    grpc: LlmServiceClient<Channel>,
    /// Pooled HTTP/1.1 client (one connection per concurrent call and host).
    http: HttpClient,
    /// The sim's `/v1/chat/completions`.
    direct_url: Uri,
    /// The gateway's `/v1/chat/completions`.
    gateway_url: Uri,
    /// nginx's `/v1/chat/completions`, when nginx runs.
    nginx_url: Option<Uri>,
}

impl Clients {
    /// Connects the gRPC channel and builds the HTTP client.
    pub(crate) async fn connect(procs: &Processes) -> Clients {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let url = |addr: std::net::SocketAddr| -> Uri {
            format!("http://{addr}/v1/chat/completions")
                .parse()
                .expect("a socket address makes a valid URI")
        };
        Clients {
            grpc: LlmServiceClient::new(grpc_channel(procs.gateway_grpc).await),
            http: Client::builder(TokioExecutor::new()).build(connector),
            direct_url: url(procs.sim_addr),
            gateway_url: url(procs.gateway_http),
            nginx_url: procs.nginx.as_ref().map(|nginx| url(nginx.addr)),
        }
    }

    /// Whether `target` is in this run (nginx may not be installed).
    pub(crate) fn has(&self, target: Target) -> bool {
        target != Target::Nginx || self.nginx_url.is_some()
    }

    /// One call of `mode` to `target`, as a closure the driver repeats.
    fn call(&self, target: Target, mode: Mode) -> Arc<dyn Fn() -> BoxCall + Send + Sync + 'static> {
        let url = match target {
            Target::Grpc => return Arc::new(grpc_call(self.grpc.clone(), mode)),
            Target::Direct => &self.direct_url,
            Target::Http => &self.gateway_url,
            Target::Nginx => self
                .nginx_url
                .as_ref()
                .expect("nginx is measured only when it runs"),
        };
        Arc::new(http_call(self.http.clone(), url.clone(), mode, target))
    }
}

/// A new HTTP/2 connection to the gateway's gRPC front.
pub(crate) async fn grpc_channel(addr: std::net::SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("the gateway's address is a valid URI")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("cannot connect to the gateway over gRPC")
}

/// What one successful call reports to the driver.
pub(crate) struct CallOutcome {
    /// When the first token arrived (streams only), for time to first token.
    first_token: Option<Instant>,
}

/// Everything measured over a batch of calls.
#[derive(Default)]
pub(crate) struct RunStats {
    /// Calls made.
    pub(crate) calls: u64,
    /// Wall time of the measured part.
    pub(crate) wall: Duration,
    /// Per-call latency, start to last byte.
    pub(crate) latencies: Vec<Duration>,
    /// Per-call time to first token (streams).
    pub(crate) ttfts: Vec<Duration>,
    /// CPU ticks each process spent during the measured part.
    pub(crate) cpu: Option<CpuSnapshot>,
}

impl RunStats {
    /// Folds another round of the same scenario into this one.
    pub(crate) fn merge(&mut self, other: RunStats) {
        self.calls += other.calls;
        self.wall += other.wall;
        self.latencies.extend(other.latencies);
        self.ttfts.extend(other.ttfts);
        self.cpu = match (self.cpu, other.cpu) {
            (Some(a), Some(b)) => Some(a.plus(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Per-task results, merged after the run.
#[derive(Default)]
struct TaskStats {
    /// Latencies of successful calls.
    latencies: Vec<Duration>,
    /// Times to first token.
    ttfts: Vec<Duration>,
    /// Failed calls.
    errors: u64,
    /// The first failure, to show why.
    first_error: Option<String>,
}

/// Makes `calls` calls with `concurrency` tasks pulling from one shared
/// counter (a closed loop: each task starts its next call when the last
/// ends). Panics if any call failed: numbers with errors in them mislead.
async fn drive(
    calls: u64,
    concurrency: usize,
    call: Arc<dyn Fn() -> BoxCall + Send + Sync + 'static>,
) -> RunStats {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let mut stats = TaskStats::default();
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let start = Instant::now();
                    match call().await {
                        Ok(outcome) => {
                            stats.latencies.push(start.elapsed());
                            if let Some(first) = outcome.first_token {
                                stats.ttfts.push(first.duration_since(start));
                            }
                        }
                        Err(err) => {
                            stats.errors += 1;
                            stats.first_error.get_or_insert(err);
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut run = RunStats {
        calls,
        ..RunStats::default()
    };
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let stats = task.await.expect("a load task panicked");
        run.latencies.extend(stats.latencies);
        run.ttfts.extend(stats.ttfts);
        errors += stats.errors;
        if first_error.is_none() {
            first_error = stats.first_error;
        }
    }
    run.wall = started.elapsed();
    if errors > 0 {
        panic!(
            "{errors} of {calls} calls failed; the first: {}",
            first_error.unwrap_or_default()
        );
    }
    run
}

/// Makes `calls` calls of `mode` against `target` and measures them,
/// including the CPU every process spent meanwhile.
pub(crate) async fn measure(
    procs: &Processes,
    clients: &Clients,
    target: Target,
    mode: Mode,
    calls: u64,
    concurrency: usize,
) -> RunStats {
    let call = clients.call(target, mode);
    let before = CpuSnapshot::now(procs);
    let mut stats = drive(calls, concurrency, call).await;
    stats.cpu = Some(CpuSnapshot::now(procs).since(before));
    stats
}

/// The gRPC request every gateway call sends for `model`.
pub(crate) fn grpc_request(model: &str) -> CompleteRequest {
    CompleteRequest {
        model: model.to_string(),
        messages: vec![Message {
            role: "user".to_string(),
            content: PROMPT.to_string(),
            ..Message::default()
        }],
        ..CompleteRequest::default()
    }
}

/// The OpenAI JSON the gateway sends upstream for [`grpc_request`], byte for
/// byte in meaning, so every HTTP target asks the sim for the same work.
fn openai_body(mode: Mode) -> Bytes {
    let mut body = serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": mode == Mode::Stream,
    });
    if mode == Mode::Stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

/// One call through the gateway's gRPC front.
fn grpc_call(client: LlmServiceClient<Channel>, mode: Mode) -> impl Fn() -> BoxCall + Send + Sync {
    let request = grpc_request(MODEL);
    move || {
        let mut client = client.clone();
        let request = request.clone();
        Box::pin(async move {
            match mode {
                Mode::Unary => {
                    let answer = client
                        .complete(request)
                        .await
                        .map_err(|status| format!("gateway Complete: {status}"))?
                        .into_inner();
                    let tokens = answer.usage.map_or(0, |u| u.output_tokens);
                    if answer.text.is_empty() || u64::try_from(tokens) != Ok(OUTPUT_TOKENS) {
                        return Err(format!(
                            "gateway Complete answered {tokens} tokens, text {:?}",
                            answer.text
                        ));
                    }
                    Ok(CallOutcome { first_token: None })
                }
                Mode::Stream => {
                    let mut stream = client
                        .complete_stream(request)
                        .await
                        .map_err(|status| format!("gateway CompleteStream: {status}"))?
                        .into_inner();
                    let mut first_token = None;
                    let mut tokens = 0u64;
                    let mut done = false;
                    while let Some(chunk) = stream
                        .message()
                        .await
                        .map_err(|status| format!("gateway CompleteStream chunk: {status}"))?
                    {
                        if !chunk.token.is_empty() {
                            tokens += 1;
                            first_token.get_or_insert_with(Instant::now);
                        }
                        done |= chunk.done;
                    }
                    if !done || tokens != OUTPUT_TOKENS {
                        return Err(format!(
                            "gateway stream ended after {tokens} tokens, done={done}"
                        ));
                    }
                    Ok(CallOutcome { first_token })
                }
            }
        })
    }
}

/// One OpenAI chat call over HTTP/1.1 to `url` (the sim, the gateway's HTTP
/// front or nginx): the whole body, or for streams the SSE body to
/// `data: [DONE]`, counting events.
fn http_call(
    client: HttpClient,
    url: Uri,
    mode: Mode,
    target: Target,
) -> impl Fn() -> BoxCall + Send + Sync {
    let body = openai_body(mode);
    let accept = match mode {
        Mode::Unary => "application/json",
        Mode::Stream => "text/event-stream",
    };
    let what = target.label();
    move || {
        let client = client.clone();
        let request = Request::post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, accept)
            .body(Full::new(body.clone()));
        Box::pin(async move {
            let request = request.map_err(|err| format!("building the request: {err}"))?;
            let response = client
                .request(request)
                .await
                .map_err(|err| format!("{what} request: {err}"))?;
            if !response.status().is_success() {
                return Err(format!("{what} answered {}", response.status()));
            }
            let mut body = response.into_body();
            match mode {
                Mode::Unary => {
                    let bytes = body
                        .collect()
                        .await
                        .map_err(|err| format!("{what} body: {err}"))?
                        .to_bytes();
                    if bytes.is_empty() {
                        return Err(format!("{what} answered an empty body"));
                    }
                    Ok(CallOutcome { first_token: None })
                }
                Mode::Stream => {
                    let mut events = DataEvents::default();
                    let mut first_token = None;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|err| format!("{what} stream: {err}"))?;
                        if let Some(data) = frame.data_ref() {
                            events.feed(data);
                            if events.count > 0 {
                                first_token.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                    if events.count != DIRECT_EVENTS || !events.ends_with_done() {
                        return Err(format!(
                            "{what} stream had {} data events (expected {DIRECT_EVENTS}) \
                             and ended {:?}",
                            events.count,
                            String::from_utf8_lossy(&events.tail)
                        ));
                    }
                    Ok(CallOutcome { first_token })
                }
            }
        })
    }
}

/// Counts SSE `data:` lines across frame boundaries without buffering the
/// body (the least a streaming client must do to see each event), and keeps
/// the body's last bytes to see that it ended with `data: [DONE]`.
struct DataEvents {
    /// `Some(n)`: at the start of a line with the first `n` bytes of `data:`
    /// matched; `None`: inside a line that is not (or is already counted as)
    /// an event.
    matched: Option<usize>,
    /// `data:` lines seen.
    count: u64,
    /// The last [`DataEvents::TAIL`] bytes of the body.
    tail: Vec<u8>,
}

impl Default for DataEvents {
    /// A body starts at the start of a line.
    fn default() -> Self {
        DataEvents {
            matched: Some(0),
            count: 0,
            tail: Vec::with_capacity(2 * Self::TAIL),
        }
    }
}

impl DataEvents {
    /// Bytes of the body's end kept: enough for `data: [DONE]` and its blank
    /// line.
    const TAIL: usize = 24;

    /// Scans the next bytes of the body.
    fn feed(&mut self, bytes: &[u8]) {
        const PREFIX: &[u8] = b"data:";
        for &byte in bytes {
            if byte == b'\n' {
                self.matched = Some(0);
                continue;
            }
            self.matched = match self.matched {
                Some(n) if PREFIX[n] == byte => {
                    if n + 1 == PREFIX.len() {
                        self.count += 1;
                        None
                    } else {
                        Some(n + 1)
                    }
                }
                _ => None,
            };
        }
        let keep = bytes.len().min(Self::TAIL);
        self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
        if self.tail.len() > Self::TAIL {
            self.tail.drain(..self.tail.len() - Self::TAIL);
        }
    }

    /// Whether the last event was `data: [DONE]`: a whole answer.
    fn ends_with_done(&self) -> bool {
        self.tail.trim_ascii_end().ends_with(b"data: [DONE]")
    }
}
