//! Load benchmark: what the gateway costs over going straight to the upstream.
//!
//! Two real `llmgate` processes are started: `llmgate sim` (the
//! vLLM-compatible simulator, answering at once: no time to first token, no
//! pacing, 50 output tokens) and `llmgate serve` on a routing file that sends
//! model `bench` to that sim as an `openai` upstream. Every scenario is then
//! run twice over the same sim:
//!
//! * **direct**: HTTP/1.1 to the sim with a pooled hyper-util client, sending
//!   the same OpenAI JSON the gateway sends upstream and reading the whole
//!   body (for streams, the SSE body to its end, counting `data:` events);
//! * **gateway**: gRPC to the gateway over ONE HTTP/2 connection (a tonic
//!   client cloned into every task), reading every message.
//!
//! Scenarios: unary (`Complete` / `"stream": false`) at concurrency 1 and 64,
//! and streaming (`CompleteStream` / `"stream": true`) at concurrency 1 and
//! 64. For each it reports latency (median, p99; time to first token for
//! streams), throughput, and CPU time per 1,000 calls of every process
//! involved (gateway, sim, this client), read from `/proc/<pid>/stat` around
//! the measured part. Direct and gateway runs alternate in two rounds each, so
//! a slow moment of the machine does not land on one side only. Everything
//! shares this machine's cores, so at concurrency 64 throughput is bounded by
//! the CPU all processes together spend per call; the "all processes" CPU row
//! explains the throughput row.
//!
//! Run it with:
//!
//! ```text
//! cargo bench --bench proxy
//! ```
//!
//! `BENCH_CALLS` scales every call count (a positive factor, default 1):
//! `BENCH_CALLS=0.1` is a quick smoke run, `BENCH_CALLS=3` a steadier one. At
//! 1 the measured calls per side are 3,000 unary at c=1, 30,000 unary at
//! c=64, 3,000 streams at c=1 and 10,000 streams at c=64 (plus a warm-up of a
//! tenth of that, at least four calls per task), sized to take about 25
//! seconds on two cores: long enough that the 10 ms CPU-tick granularity of
//! `/proc/<pid>/stat` stays within a few percent.
//!
//! Reading the numbers:
//!
//! * "other load" is the machine's busy time (`/proc/stat`) minus the three
//!   processes measured; above ~10% of a core something else (a build, a
//!   test run) competed for the cores and the run should be repeated.
//! * The sim's non-streamed answer sleeps for its time to first token even
//!   when that is zero, and tokio rounds every timer up to the next
//!   millisecond, so direct unary latency has a ~1 ms floor that streams do
//!   not. For unary at c=1 the added latency is the meaningful figure, not
//!   the ratio.
//! * CPU per call at c=1 is dominated by threads parking and waking between
//!   calls, and varies more from run to run than at c=64.

// Wall-clock time is what a benchmark measures.
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
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

/// Tokens the sim generates per answer; the per-token CPU figure divides by it.
const OUTPUT_TOKENS: u64 = 50;
/// SSE events of one direct stream: one per token, the finish chunk, the usage
/// chunk (the gateway asks for usage, so the direct client does too) and
/// `[DONE]`.
const DIRECT_EVENTS: u64 = OUTPUT_TOKENS + 3;
/// The model name routed by the bench's routing file.
const MODEL: &str = "bench";
/// The one user message of every call.
const PROMPT: &str = "Tell me how a gateway balances calls across endpoints.";
/// Direct and gateway runs alternate this many times per scenario.
const ROUNDS: u64 = 2;

/// The pooled HTTP/1.1 client used for the direct runs.
type DirectClient = Client<HttpConnector, Full<Bytes>>;

/// Starts the processes, runs every scenario, prints the table; the
/// children are stopped when `procs` drops, panic or not.
fn main() {
    let scale = call_scale();
    let ticks_per_second = clock_ticks_per_second();
    println!("{}", machine_line(ticks_per_second));
    let procs = Processes::start();
    println!(
        "sim {} (ttft 0, unpaced, {OUTPUT_TOKENS} tokens); gateway {} -> openai upstream at the sim; BENCH_CALLS={scale}",
        procs.sim_addr, procs.gateway_addr
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the bench's tokio runtime");
    let started = Instant::now();
    let rows = runtime.block_on(run_all(&procs, scale, ticks_per_second));
    print_table(&rows);
    println!(
        "total bench wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // `procs` drops here and stops both children.
}

/// Reads `BENCH_CALLS` (a positive scale factor) so a run can be made quicker
/// or steadier without editing the file.
fn call_scale() -> f64 {
    match std::env::var("BENCH_CALLS") {
        Err(_) => 1.0,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(scale) if scale > 0.0 && scale.is_finite() => scale,
            _ => {
                panic!("BENCH_CALLS must be a positive scale factor such as 0.1 or 3, not {text:?}")
            }
        },
    }
}

/// `getconf CLK_TCK`: the unit of utime/stime in `/proc/<pid>/stat`; 100 (the
/// Linux default) when it cannot be asked.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// One line naming the machine, so numbers from different runs can be told
/// apart: core count, CPU model, load average at start (another build on the
/// machine skews everything).
fn machine_line(ticks_per_second: f64) -> String {
    let nproc = Command::new("nproc")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .map(|n| n.to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map_or("unknown CPU", |(_, name)| name.trim());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| {
            let fields: Vec<&str> = text.split_whitespace().take(3).collect();
            (fields.len() == 3).then(|| fields.join(" "))
        })
        .unwrap_or_else(|| "?".to_string());
    format!("machine: nproc {nproc}, {model}, loadavg {load}, CLK_TCK {ticks_per_second}")
}

// === child processes ===

/// A child process that is killed when dropped, so a panicking bench never
/// leaves a gateway or sim behind.
struct ChildGuard {
    /// The process.
    child: Child,
    /// Its stdout, kept open so a late write cannot hit a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// Its pid, for `/proc/<pid>/stat`.
    pid: u32,
}

impl ChildGuard {
    /// Starts `llmgate ARGS` and waits for its first stdout line, which must
    /// be `llmgate: ...TAG... listening on ADDR` (the sim names its API in
    /// the middle in newer builds); returns the guard and the address.
    fn spawn(args: &[&str], tag: &str) -> (ChildGuard, SocketAddr) {
        let what = args.first().copied().unwrap_or("llmgate");
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmgate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `llmgate {what}`: {err}"));
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let pid = child.id();
        let mut guard = ChildGuard {
            child,
            _stdout: BufReader::new(stdout),
            pid,
        };
        let mut line = String::new();
        let read = guard
            ._stdout
            .read_line(&mut line)
            .unwrap_or_else(|err| panic!("cannot read `llmgate {what}`'s stdout: {err}"));
        if read == 0 {
            panic!("`llmgate {what}` exited before printing its address (its stderr is above)");
        }
        let addr = line
            .trim()
            .strip_prefix("llmgate:")
            .filter(|rest| rest.contains(tag))
            .and_then(|rest| rest.rsplit_once("listening on "))
            .and_then(|(_, addr)| addr.trim().parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "`llmgate {what}` printed {line:?}, expected \"llmgate: {tag} ... listening on ADDR\""
                )
            });
        (guard, addr)
    }
}

impl Drop for ChildGuard {
    /// Kills and reaps the child so no process outlives the bench.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sim and the gateway in front of it, plus the routing file written for
/// the gateway; all cleaned up on drop.
struct Processes {
    /// `llmgate serve`; declared first so it stops before its upstream.
    gateway: ChildGuard,
    /// `llmgate sim`.
    sim: ChildGuard,
    /// Where the gateway's gRPC listener is.
    gateway_addr: SocketAddr,
    /// Where the sim's HTTP listener is.
    sim_addr: SocketAddr,
    /// The routing file, removed on drop.
    config_path: PathBuf,
}

impl Processes {
    /// Starts the sim, writes a routing file pointing at it, starts the
    /// gateway on that file.
    fn start() -> Processes {
        let tokens = OUTPUT_TOKENS.to_string();
        let (sim, sim_addr) = ChildGuard::spawn(
            &[
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--ttft",
                "0s",
                "--tokens-per-second",
                "0",
                "--output-tokens",
                &tokens,
            ],
            "sim",
        );
        let config_path =
            std::env::temp_dir().join(format!("llmgate-bench-{}.yaml", std::process::id()));
        let config_arg = config_path.to_string_lossy().into_owned();
        let routing = |listen_extra: &str| {
            let yaml = format!(
                "listen:\n  grpc: 127.0.0.1:0\n{listen_extra}\
                 upstreams:\n  sim:\n    kind: openai\n    endpoints: [http://{sim_addr}]\n\
                 routes:\n  - model: {MODEL}\n    pools:\n      - upstream: sim\n        weight: 1\n"
            );
            std::fs::write(&config_path, yaml).unwrap_or_else(|err| {
                panic!(
                    "cannot write the routing file {}: {err}",
                    config_path.display()
                )
            });
        };
        // Builds with an admin listener default it to a fixed port (9090),
        // which another process may hold; give it a free one. Builds that
        // predate `listen.metrics` refuse the key, so fall back to none.
        routing("  metrics: 127.0.0.1:0\n");
        if !accepts_routing_file(&config_arg) {
            routing("");
        }
        let (gateway, gateway_addr) =
            ChildGuard::spawn(&["serve", "--config", &config_arg], "gRPC");
        Processes {
            gateway,
            sim,
            gateway_addr,
            sim_addr,
            config_path,
        }
    }
}

/// Whether `llmgate check FILE` accepts the routing file.
fn accepts_routing_file(path: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_llmgate"))
        .args(["check", path])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

impl Drop for Processes {
    /// Removes the routing file; the children's own guards stop them.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_path);
    }
}

// === CPU accounting ===

/// utime + stime of a process in clock ticks, from `/proc/<pid>/stat`
/// (fields 14 and 15). `pid` "self" is this bench.
fn cpu_ticks(pid: &str) -> u64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {path} for CPU time: {err}"));
    // Field 2 (the command name, in parentheses) may contain spaces; count
    // from after its closing parenthesis, where field 3 starts.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{path} has no ')' after the command name"));
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{path}: field {n} is not a tick count"))
    };
    field(14) + field(15)
}

/// Busy ticks of all CPUs together (the `cpu` line of `/proc/stat`: every
/// field but idle and iowait), to detect other load on the machine.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat")
        .unwrap_or_else(|err| panic!("cannot read /proc/stat for machine CPU time: {err}"));
    let fields: Vec<u64> = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .expect("/proc/stat has a total `cpu` line")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().expect("/proc/stat cpu fields are tick counts"))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]; the
    // guest times are already inside user and nice.
    fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, ticks)| ticks)
        .sum()
}

/// CPU ticks of every process involved, at one moment.
#[derive(Clone, Copy)]
struct CpuSnapshot {
    /// The gateway process.
    gateway: u64,
    /// The sim process.
    sim: u64,
    /// This bench (the load generator).
    client: u64,
    /// The whole machine's busy time (all CPUs, from `/proc/stat`), so CPU
    /// used by anything else during a run shows up instead of skewing it
    /// silently.
    machine: u64,
}

impl CpuSnapshot {
    /// Reads all three now.
    fn now(procs: &Processes) -> CpuSnapshot {
        CpuSnapshot {
            gateway: cpu_ticks(&procs.gateway.pid.to_string()),
            sim: cpu_ticks(&procs.sim.pid.to_string()),
            client: cpu_ticks("self"),
            machine: machine_busy_ticks(),
        }
    }

    /// Ticks spent since `earlier`.
    fn since(self, earlier: CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            gateway: self.gateway.saturating_sub(earlier.gateway),
            sim: self.sim.saturating_sub(earlier.sim),
            client: self.client.saturating_sub(earlier.client),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }

    /// Ticks the machine was busy with something other than the three
    /// processes measured.
    fn background(self) -> u64 {
        self.machine
            .saturating_sub(self.gateway + self.sim + self.client)
    }

    /// Sum of two spans, for merging rounds.
    fn plus(self, other: CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            gateway: self.gateway + other.gateway,
            sim: self.sim + other.sim,
            client: self.client + other.client,
            machine: self.machine + other.machine,
        }
    }
}

// === the load driver ===

/// What one successful call reports to the driver.
struct CallOutcome {
    /// When the first token arrived (streams only), for time to first token.
    first_token: Option<Instant>,
}

/// Everything measured over a batch of calls.
#[derive(Default)]
struct RunStats {
    /// Calls made.
    calls: u64,
    /// Wall time of the measured part.
    wall: Duration,
    /// Per-call latency, start to last byte.
    latencies: Vec<Duration>,
    /// Per-call time to first token (streams).
    ttfts: Vec<Duration>,
    /// CPU ticks each process spent during the measured part.
    cpu: Option<CpuSnapshot>,
}

impl RunStats {
    /// Folds another round of the same scenario into this one.
    fn merge(&mut self, other: RunStats) {
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
async fn drive<F, Fut>(calls: u64, concurrency: usize, call: F) -> RunStats
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<CallOutcome, String>> + Send + 'static,
{
    let call = Arc::new(call);
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

/// Unary or streaming.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `Complete` / `"stream": false`.
    Unary,
    /// `CompleteStream` / `"stream": true`.
    Stream,
}

/// Which side of the comparison a run measures.
#[derive(Clone, Copy)]
enum Target {
    /// Straight to the sim over HTTP/1.1.
    Direct,
    /// Through the gateway over gRPC.
    Gateway,
}

/// The clients both sides use, built once and shared by all tasks.
struct Clients {
    /// One HTTP/2 connection to the gateway; clones share it.
    grpc: LlmServiceClient<Channel>,
    /// Pooled HTTP/1.1 client to the sim (one connection per concurrent call).
    http: DirectClient,
    /// The sim's `/v1/chat/completions`.
    chat_url: Uri,
}

/// Makes `calls` calls of `mode` against `target` and measures them,
/// including the CPU every process spent meanwhile.
async fn measure(
    procs: &Processes,
    clients: &Clients,
    target: Target,
    mode: Mode,
    calls: u64,
    concurrency: usize,
) -> RunStats {
    let before = CpuSnapshot::now(procs);
    let mut stats = match target {
        Target::Gateway => drive(calls, concurrency, gateway_call(clients, mode)).await,
        Target::Direct => drive(calls, concurrency, direct_call(clients, mode)).await,
    };
    stats.cpu = Some(CpuSnapshot::now(procs).since(before));
    stats
}

/// The gRPC request every gateway call sends.
fn grpc_request() -> CompleteRequest {
    CompleteRequest {
        model: MODEL.to_string(),
        messages: vec![Message {
            role: "user".to_string(),
            content: PROMPT.to_string(),
            ..Message::default()
        }],
        ..CompleteRequest::default()
    }
}

/// The OpenAI JSON the gateway sends upstream for [`grpc_request`], byte for
/// byte in meaning, so the direct side asks the sim for the same work.
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

/// One call through the gateway, as a closure the driver can repeat.
fn gateway_call(
    clients: &Clients,
    mode: Mode,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<CallOutcome, String>> + Send>>
+ Send
+ Sync
+ 'static {
    let client = clients.grpc.clone();
    let request = grpc_request();
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

/// One call straight to the sim, as a closure the driver can repeat.
fn direct_call(
    clients: &Clients,
    mode: Mode,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<CallOutcome, String>> + Send>>
+ Send
+ Sync
+ 'static {
    let client = clients.http.clone();
    let url = clients.chat_url.clone();
    let body = openai_body(mode);
    let accept = match mode {
        Mode::Unary => "application/json",
        Mode::Stream => "text/event-stream",
    };
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
                .map_err(|err| format!("sim request: {err}"))?;
            if !response.status().is_success() {
                return Err(format!("sim answered {}", response.status()));
            }
            let mut body = response.into_body();
            match mode {
                Mode::Unary => {
                    let bytes = body
                        .collect()
                        .await
                        .map_err(|err| format!("sim body: {err}"))?
                        .to_bytes();
                    if bytes.is_empty() {
                        return Err("sim answered an empty body".to_string());
                    }
                    Ok(CallOutcome { first_token: None })
                }
                Mode::Stream => {
                    let mut events = DataEvents::default();
                    let mut first_token = None;
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|err| format!("sim stream: {err}"))?;
                        if let Some(data) = frame.data_ref() {
                            events.feed(data);
                            if events.count > 0 {
                                first_token.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                    if events.count != DIRECT_EVENTS {
                        return Err(format!(
                            "sim stream had {} data events, expected {DIRECT_EVENTS}",
                            events.count
                        ));
                    }
                    Ok(CallOutcome { first_token })
                }
            }
        })
    }
}

/// Counts SSE `data:` lines across frame boundaries without buffering the
/// body: the least a streaming client must do to see each event.
struct DataEvents {
    /// `Some(n)`: at the start of a line with the first `n` bytes of `data:`
    /// matched; `None`: inside a line that is not (or is already counted as)
    /// an event.
    matched: Option<usize>,
    /// `data:` lines seen.
    count: u64,
}

impl Default for DataEvents {
    /// A body starts at the start of a line.
    fn default() -> Self {
        DataEvents {
            matched: Some(0),
            count: 0,
        }
    }
}

impl DataEvents {
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
    }
}

// === scenarios ===

/// One scenario's direct and gateway measurements.
struct Scenario {
    /// Its name in the table.
    name: String,
    /// Unary or streaming.
    mode: Mode,
    /// Straight to the sim.
    direct: RunStats,
    /// Through the gateway.
    gateway: RunStats,
}

/// Starts the clients, then runs every scenario: warm-up on both sides, then
/// [`ROUNDS`] alternating direct/gateway measured rounds.
async fn run_all(procs: &Processes, scale: f64, ticks_per_second: f64) -> Vec<Row> {
    let grpc = Endpoint::from_shared(format!("http://{}", procs.gateway_addr))
        .expect("the gateway's address is a valid URI")
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("cannot connect to the gateway over gRPC");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let clients = Clients {
        grpc: LlmServiceClient::new(grpc),
        http: Client::builder(TokioExecutor::new()).build(connector),
        chat_url: format!("http://{}/v1/chat/completions", procs.sim_addr)
            .parse()
            .expect("the sim's address makes a valid URI"),
    };
    let plan = [
        ("unary c=1", Mode::Unary, 1, 3_000.0),
        ("unary c=64", Mode::Unary, 64, 30_000.0),
        ("stream c=1", Mode::Stream, 1, 3_000.0),
        ("stream c=64", Mode::Stream, 64, 10_000.0),
    ];
    let mut rows = Vec::new();
    for (name, mode, concurrency, base_calls) in plan {
        // Whole rounds, at least one call per task per round.
        let per_round =
            ((base_calls * scale / ROUNDS as f64).round() as u64).max(concurrency as u64);
        let warmup = (per_round * ROUNDS / 10).max(4 * concurrency as u64);
        eprintln!("running {name}: {warmup} warm-up then {ROUNDS} x {per_round} calls per side...");
        for target in [Target::Direct, Target::Gateway] {
            drop(measure(procs, &clients, target, mode, warmup, concurrency).await);
        }
        let mut scenario = Scenario {
            name: name.to_string(),
            mode,
            direct: RunStats::default(),
            gateway: RunStats::default(),
        };
        for _ in 0..ROUNDS {
            let direct = measure(
                procs,
                &clients,
                Target::Direct,
                mode,
                per_round,
                concurrency,
            );
            scenario.direct.merge(direct.await);
            let gateway = measure(
                procs,
                &clients,
                Target::Gateway,
                mode,
                per_round,
                concurrency,
            );
            scenario.gateway.merge(gateway.await);
        }
        rows.extend(scenario_rows(&mut scenario, ticks_per_second));
    }
    rows
}

// === reporting ===

/// One line of the results table.
struct Row {
    /// Scenario name.
    scenario: String,
    /// What is measured, with its unit.
    metric: &'static str,
    /// The direct value, if this metric has one.
    direct: Option<f64>,
    /// The gateway value, if this metric has one.
    gateway: Option<f64>,
    /// Anything the numbers need to be read right.
    note: String,
    /// Whether gateway/direct means something for this metric.
    compare: bool,
}

/// The `q` quantile (0..=1) of `samples` by nearest rank, in microseconds.
fn quantile_us(samples: &mut [Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    Some(samples[rank - 1].as_secs_f64() * 1e6)
}

/// Turns one scenario's measurements into table rows.
fn scenario_rows(s: &mut Scenario, ticks_per_second: f64) -> Vec<Row> {
    let name = &s.name;
    let row = |metric, direct, gateway, note: String| Row {
        scenario: name.clone(),
        metric,
        direct,
        gateway,
        note,
        compare: true,
    };
    let mut rows = Vec::new();
    let (d50, g50) = (
        quantile_us(&mut s.direct.latencies, 0.5),
        quantile_us(&mut s.gateway.latencies, 0.5),
    );
    let (d99, g99) = (
        quantile_us(&mut s.direct.latencies, 0.99),
        quantile_us(&mut s.gateway.latencies, 0.99),
    );
    let added = |d: Option<f64>, g: Option<f64>| match (d, g) {
        (Some(d), Some(g)) => format!("added {:+.0} µs", g - d),
        _ => String::new(),
    };
    rows.push(row("latency p50 (µs)", d50, g50, added(d50, g50)));
    rows.push(row("latency p99 (µs)", d99, g99, added(d99, g99)));
    if s.mode == Mode::Stream {
        let (dt, gt) = (
            quantile_us(&mut s.direct.ttfts, 0.5),
            quantile_us(&mut s.gateway.ttfts, 0.5),
        );
        rows.push(row("first token p50 (µs)", dt, gt, added(dt, gt)));
    }
    let throughput = |r: &RunStats| r.calls as f64 / r.wall.as_secs_f64();
    rows.push(row(
        "throughput (calls/s)",
        Some(throughput(&s.direct)),
        Some(throughput(&s.gateway)),
        format!("{} calls per side", s.direct.calls),
    ));
    // CPU ms per 1,000 calls.
    let per_1k =
        |ticks: u64, calls: u64| ticks as f64 / ticks_per_second * 1e3 / calls as f64 * 1e3;
    let (Some(dc), Some(gc)) = (s.direct.cpu, s.gateway.cpu) else {
        return rows;
    };
    let (dn, gn) = (s.direct.calls, s.gateway.calls);
    rows.push(row(
        "gateway CPU ms/1k calls",
        Some(per_1k(dc.sim, dn)),
        Some(per_1k(gc.gateway, gn)),
        "direct column: the sim's own, for scale".to_string(),
    ));
    rows.push(row(
        "sim CPU ms/1k calls",
        Some(per_1k(dc.sim, dn)),
        Some(per_1k(gc.sim, gn)),
        "the upstream's work in each run".to_string(),
    ));
    rows.push(row(
        "client CPU ms/1k calls",
        Some(per_1k(dc.client, dn)),
        Some(per_1k(gc.client, gn)),
        "this bench: HTTP/1.1 vs gRPC client".to_string(),
    ));
    rows.push(row(
        "all procs CPU ms/1k calls",
        Some(per_1k(dc.sim + dc.client, dn)),
        Some(per_1k(gc.gateway + gc.sim + gc.client, gn)),
        "bounds throughput when CPU-bound".to_string(),
    ));
    // Share of one core spent by anything else while the run was measured.
    let background = |c: CpuSnapshot, r: &RunStats| {
        c.background() as f64 / ticks_per_second / r.wall.as_secs_f64() * 100.0
    };
    rows.push(Row {
        compare: false,
        ..row(
            "other load (% of a core)",
            Some(background(dc, &s.direct)),
            Some(background(gc, &s.gateway)),
            "CPU used by other processes meanwhile; >10 skews".to_string(),
        )
    });
    if s.mode == Mode::Stream {
        let per_token = |ticks: u64, calls: u64| {
            ticks as f64 / ticks_per_second * 1e6 / (calls * OUTPUT_TOKENS) as f64
        };
        rows.push(row(
            "gateway CPU µs/token",
            Some(per_token(dc.sim, dn)),
            Some(per_token(gc.gateway, gn)),
            "direct column: the sim's own, for scale".to_string(),
        ));
    }
    rows
}

/// Prints the results table: scenario, metric, direct, gateway,
/// gateway/direct, note.
fn print_table(rows: &[Row]) {
    let cell = |value: Option<f64>| match value {
        None => "-".to_string(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    };
    println!();
    println!(
        "{:<12} {:<26} {:>11} {:>11} {:>9}  note",
        "scenario", "metric", "direct", "gateway", "gw/direct"
    );
    println!("{}", "-".repeat(108));
    let mut last = String::new();
    for row in rows {
        if !last.is_empty() && last != row.scenario {
            println!();
        }
        last.clone_from(&row.scenario);
        let ratio = match (row.direct, row.gateway) {
            (Some(d), Some(g)) if row.compare && d > 0.0 => format!("{:.2}x", g / d),
            _ => "-".to_string(),
        };
        println!(
            "{:<12} {:<26} {:>11} {:>11} {:>9}  {}",
            row.scenario,
            row.metric,
            cell(row.direct),
            cell(row.gateway),
            ratio,
            row.note
        );
    }
}
