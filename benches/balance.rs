//! Balancing quality: how close the gateway's placement comes to an oracle.
//!
//! Real processes on loopback: two `llmgate sim` upstreams, one ten times
//! slower than the other (time to first token and pacing), and `llmgate
//! serve` routing model `spread` to a pool of both. Eight callers make
//! unary calls at once, three ways:
//!
//! * **gateway**: through the gateway (P2C on calls in flight);
//! * **oracle**: straight to the sims, each call to the endpoint with the
//!   fewest calls in flight, counted exactly by the caller itself;
//! * **random**: straight to the sims, each call to either at random.
//!
//! The mean latency of the gateway should stay within 10% of the oracle's
//! (issue 17); random shows what balancing is worth here. A second scenario
//! sends 40 conversations of 5 turns each, in random order, through a route
//! with `balance: { prefix_affinity }` over two equal sims, and reports the
//! share of calls that went to their prefix's endpoint (the gateway's own
//! `llmgate_prefix_affinity_total`).
//!
//! ```text
//! cargo bench --bench balance        # BENCH_CALLS=0.5 for a quicker run
//! ```

// Wall-clock time is what a benchmark measures.
#![allow(clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use llmgate::proto::llm_service_client::LlmServiceClient;
use llmgate::proto::{CompleteRequest, Message};

/// Callers at once.
const CONCURRENCY: usize = 8;

fn main() {
    let scale = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    let calls = ((400.0 * scale) as usize).max(CONCURRENCY * 4);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    // Fast: ~20 ms a call; slow: ten times that.
    let fast = Process::spawn_sim("10ms", "1000");
    let slow = Process::spawn_sim("100ms", "100");
    let even_a = Process::spawn_sim("5ms", "2000");
    let even_b = Process::spawn_sim("5ms", "2000");
    let metrics_port = free_port();
    let config = std::env::temp_dir().join(format!("llmgate-balance-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "listen:\n  grpc: 127.0.0.1:0\n  metrics: 127.0.0.1:{metrics_port}\n\
             upstreams:\n  two-speeds:\n    kind: openai\n    endpoints: [http://{}, http://{}]\n\
             \x20 even:\n    kind: openai\n    endpoints: [http://{}, http://{}]\n\
             routes:\n  - model: spread\n    pools: [{{ upstream: two-speeds }}]\n\
             \x20 - model: affine\n    balance: {{ prefix_affinity: {{ chars: 40 }} }}\n    pools: [{{ upstream: even }}]\n",
            fast.addr, slow.addr, even_a.addr, even_b.addr
        ),
    )
    .expect("write the routing file");
    let gateway = Process::spawn(&["serve", "--config", &config.to_string_lossy()], "gRPC");
    let sims = [fast.addr, slow.addr];
    let (gateway_mean, oracle_mean, random_mean, hit_rate) = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.addr))
            .expect("a URL")
            .connect()
            .await
            .expect("the gateway accepts");
        let grpc = LlmServiceClient::new(channel);
        let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        // Warm both paths.
        drive(CONCURRENCY * 2, Way::Gateway(grpc.clone()), &sims, &http).await;
        let gateway_mean = drive(calls, Way::Gateway(grpc.clone()), &sims, &http).await;
        let oracle_mean = drive(calls, Way::Oracle(Default::default()), &sims, &http).await;
        let random_mean = drive(calls, Way::Random, &sims, &http).await;
        let hit_rate = affinity(grpc, calls, metrics_port).await;
        (gateway_mean, oracle_mean, random_mean, hit_rate)
    });
    let _ = std::fs::remove_file(&config);
    println!(
        "balancing quality: 2 endpoints, one 10x slower; {calls} unary calls per way at c={CONCURRENCY}"
    );
    println!("| way | mean latency | vs oracle |");
    println!("| --- | --- | --- |");
    for (way, mean) in [
        ("oracle (least in flight, exact)", oracle_mean),
        ("gateway (P2C)", gateway_mean),
        ("random", random_mean),
    ] {
        println!(
            "| {way} | {:.1} ms | {:.2} |",
            mean.as_secs_f64() * 1e3,
            mean.as_secs_f64() / oracle_mean.as_secs_f64()
        );
    }
    println!(
        "prefix affinity: {:.1}% of calls went to their prefix's endpoint",
        hit_rate * 100.0
    );
    drop(gateway);
}

/// How a call picks its endpoint.
#[derive(Clone)]
enum Way {
    /// Through the gateway.
    Gateway(LlmServiceClient<tonic::transport::Channel>),
    /// Straight to the endpoint with the fewest calls in flight.
    Oracle(Arc<[AtomicUsize; 2]>),
    /// Straight to either at random.
    Random,
}

/// Makes `calls` calls `way`, `CONCURRENCY` at once; returns their mean
/// latency.
async fn drive(
    calls: usize,
    way: Way,
    sims: &[SocketAddr; 2],
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (way, next, http, sims) = (way.clone(), next.clone(), http.clone(), *sims);
            tokio::spawn(async move {
                let mut total = Duration::ZERO;
                let mut made = 0u32;
                while next.fetch_add(1, Ordering::Relaxed) < calls {
                    let start = Instant::now();
                    call(&way, &sims, &http, "spread", "balance me").await;
                    total += start.elapsed();
                    made += 1;
                }
                (total, made)
            })
        })
        .collect();
    let (mut total, mut made) = (Duration::ZERO, 0u32);
    for task in tasks {
        let (t, m) = task.await.expect("a caller task");
        total += t;
        made += m;
    }
    total / made.max(1)
}

/// One unary call, `way`.
async fn call(
    way: &Way,
    sims: &[SocketAddr; 2],
    http: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    model: &str,
    prompt: &str,
) {
    let index = match way {
        Way::Gateway(client) => return through_gateway(client, model, prompt).await,
        Way::Oracle(in_flight) => {
            let index = usize::from(
                in_flight[1].load(Ordering::Relaxed) < in_flight[0].load(Ordering::Relaxed),
            );
            in_flight[index].fetch_add(1, Ordering::Relaxed);
            index
        }
        Way::Random => usize::from(rand::random::<bool>()),
    };
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": false,
    });
    let request = Request::post(format!("http://{}/v1/chat/completions", sims[index]))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a request");
    let answer = http.request(request).await.expect("the sim answers");
    let _ = answer.into_body().collect().await;
    if let Way::Oracle(in_flight) = way {
        in_flight[index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One unary call through the gateway.
async fn through_gateway(
    client: &LlmServiceClient<tonic::transport::Channel>,
    model: &str,
    prompt: &str,
) {
    let request = CompleteRequest {
        model: model.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
            ..Message::default()
        }],
        ..CompleteRequest::default()
    };
    client
        .clone()
        .complete(request)
        .await
        .expect("the gateway answers");
}

/// Sends 40 conversations of 5 turns in random order through the `affine`
/// route; returns the share of affinity hits the gateway counted.
async fn affinity(
    client: LlmServiceClient<tonic::transport::Channel>,
    calls: usize,
    metrics_port: u16,
) -> f64 {
    let conversations = 40;
    let mut turns: Vec<(usize, usize)> = (0..conversations)
        .flat_map(|c| (0..5).map(move |t| (c, t)))
        .collect();
    turns.truncate(calls.max(conversations));
    // A shuffled order, so turns of many conversations interleave.
    for i in (1..turns.len()).rev() {
        turns.swap(i, rand::random_range(0..=i));
    }
    let turns = Arc::new(std::sync::Mutex::new(turns));
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (client, turns) = (client.clone(), turns.clone());
            tokio::spawn(async move {
                loop {
                    let Some((conversation, turn)) = turns.lock().expect("lock").pop() else {
                        return;
                    };
                    let prompt = format!(
                        "You are assistant number {conversation:03}, answering briefly. Turn {turn}."
                    );
                    through_gateway(&client, "affine", &prompt).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller task");
    }
    let page = http_get(metrics_port, "/metrics");
    let count = |outcome: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with("llmgate_prefix_affinity_total"))
            .filter(|l| {
                l.contains("route=\"affine\"") && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let (hits, spills) = (count("hit"), count("spill"));
    hits / (hits + spills).max(1.0)
}

/// The body of `GET path` on the gateway's metrics port.
fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the metrics port");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .expect("a request");
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    answer
}

/// A port free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child `llmgate` process, killed on drop.
struct Process {
    process: std::process::Child,
    _stdout: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl Process {
    /// `llmgate sim` answering unary calls of 20 tokens after `ttft`, at
    /// `rate` tokens a second.
    fn spawn_sim(ttft: &str, rate: &str) -> Process {
        Process::spawn(
            &[
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--ttft",
                ttft,
                "--tokens-per-second",
                rate,
                "--output-tokens",
                "20",
            ],
            "sim",
        )
    }

    /// Starts `llmgate ARGS`; its first stdout line names its address.
    fn spawn(args: &[&str], tag: &str) -> Process {
        let mut process = Command::new(env!("CARGO_BIN_EXE_llmgate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("llmgate starts");
        let mut stdout = BufReader::new(process.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("its first line");
        let addr = line
            .trim()
            .strip_prefix("llmgate:")
            .filter(|rest| rest.contains(tag))
            .and_then(|rest| rest.rsplit_once("listening on "))
            .and_then(|(_, addr)| addr.trim().parse().ok())
            .unwrap_or_else(|| panic!("`llmgate {args:?}` printed {line:?}"));
        Process {
            process,
            _stdout: stdout,
            addr,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
