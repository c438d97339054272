//! Load benchmark: what the gateway costs over going straight to the
//! upstream, through both of its fronts, beside nginx in the same run, and
//! how much memory it holds with 10,000 streams open (issue 14's figures).
//!
//! Real processes are started: `llmgate sim` (the vLLM-compatible simulator,
//! answering at once: no time to first token, no pacing, 50 output tokens),
//! a second, slow sim (one token a second), `llmgate serve` on a routing
//! file that sends model `bench` to the fast sim and `bench-slow` to the
//! slow one (both `openai` upstreams; everything else at its defaults but
//! `limits.max_in_flight`, raised to admit the open streams), and, when an
//! `nginx` binary is found (on `PATH`, or in `/usr/sbin`), nginx in front of
//! the fast sim with a generated config in a temporary directory (one
//! worker, no master, upstream keepalive, no buffering, so SSE passes event
//! by event). Without nginx the bench says "nginx not installed, skipped"
//! and runs the rest.
//!
//! Every load scenario runs over the same fast sim through each target:
//!
//! * **direct**: HTTP/1.1 to the sim with a pooled hyper-util client, sending
//!   the same OpenAI JSON the gateway sends upstream;
//! * **gw gRPC**: the gateway's gRPC front over ONE HTTP/2 connection (a
//!   tonic client cloned into every task), reading every message;
//! * **gw HTTP**: the gateway's OpenAI front (`POST /v1/chat/completions`
//!   on `listen.http`) with the same pooled HTTP/1.1 client and body as
//!   direct;
//! * **nginx**: the same again through nginx.
//!
//! HTTP streams are read to `data: [DONE]`, counting `data:` events (the
//! first carries the first token); gRPC streams to the message with `done`.
//!
//! Scenarios: unary (`Complete` / `"stream": false`) at concurrency 1 and
//! 64, and 50-token streams (`CompleteStream` / `"stream": true`) at
//! concurrency 1, 8 and 64. For each target the table shows latency
//! (median, p99; first token for streams) and what each proxy adds to it
//! over direct, throughput, and CPU time per call of every process involved
//! (the proxy in the path, the sim, this client), read from
//! `/proc/<pid>/stat` around the measured part; for streams also the
//! proxy's CPU per token (per call / 50). The targets run in turn in two
//! rounds, the second in reverse order, so a slow moment of the machine
//! does not land on one target only.
//!
//! Then memory (`VmRSS` from `/proc/<pid>/status`): the gateway idle after
//! start, after the load, and with 10,000 concurrent streams open to the
//! slow sim, opened over the gRPC front on as few HTTP/2 connections as the
//! gateway's `max_streams_per_connection` allows (over HTTP/1.1 the gateway
//! would need two sockets a stream) and held until each has had its first
//! token; then again after cancelling them all. The gateway holds one
//! upstream connection per stream, so the bench raises its open-file limit
//! to the hard limit (`prlimit`), which the children inherit; the ramp-up
//! is bounded by a timeout and a shortfall is reported with the processes'
//! open files and limits.
//!
//! Last, a summary maps the run onto issue 14's targets (CPU per streamed
//! token ≤ 2 µs and per unary call ≤ 25 µs through both fronts; ≤ 0.3 ms
//! added to a 50-token stream at c=8; no more added time to first token than
//! nginx at c=1; RSS ≤ 30 MiB idle and ≤ 64 MiB with 10,000 open streams),
//! each marked met or not, and prints the gateway/nginx ratios.
//!
//! Run it with:
//!
//! ```text
//! cargo bench --bench proxy
//! ```
//!
//! `BENCH_CALLS` scales every call count (a positive factor, default 1):
//! `BENCH_CALLS=0.1` is a quick smoke run, `BENCH_CALLS=3` a steadier one. At
//! 1 the measured calls per target are 2,000 unary at c=1, 20,000 unary at
//! c=64, 1,000 streams at c=1, 3,000 at c=8 and 4,000 at c=64 (plus a
//! warm-up of a tenth of that, at least four calls per task), and the open
//! streams take 20 to 30 seconds more: under two minutes in all on two
//! cores, long enough that the 10 ms CPU-tick granularity of
//! `/proc/<pid>/stat` stays within a few percent.
//! `BENCH_STREAMS` sets how many streams are held open (default 10,000; 0
//! skips that phase).
//!
//! Reading the numbers:
//!
//! * "other load" is the machine's busy time (`/proc/stat`) minus the
//!   processes measured; above ~10% of a core something else (a build, a
//!   test run) competed for the cores and the run should be repeated.
//! * The sim's non-streamed answer sleeps for its time to first token even
//!   when that is zero, and tokio rounds every timer up to the next
//!   millisecond, so direct unary latency has a ~1 ms floor that streams do
//!   not. For unary at c=1 the added latency is the meaningful figure, not
//!   the ratio.
//! * CPU per call at c=1 is dominated by threads parking and waking between
//!   calls, and varies more from run to run than at c=8 or c=64.
//! * nginx is pinned to nothing and runs one worker; the gateway runs its
//!   default multi-thread runtime. All processes share the machine's cores.

// Wall-clock time is what a benchmark measures.
#![allow(clippy::disallowed_types)]

mod load;
mod procs;
mod report;
mod streams;

use std::process::Command;
use std::time::{Duration, Instant};

use load::{Clients, Mode, RunStats, TARGETS, Target, measure};
use procs::{Processes, clock_ticks_per_second, raise_fd_limit, rss_mib};
use report::{Figures, Memory, Scenario, print_memory, print_scenarios, print_summary};

/// Tokens the fast sim generates per answer; the per-token CPU figure
/// divides by it.
const OUTPUT_TOKENS: u64 = 50;
/// SSE events of one HTTP stream: one per token, the finish chunk, the
/// usage chunk (the gateway asks for usage, so the HTTP clients do too) and
/// `[DONE]`.
const DIRECT_EVENTS: u64 = OUTPUT_TOKENS + 3;
/// Tokens of a slow sim's answer: at one a second, longer than any run.
const SLOW_OUTPUT_TOKENS: u64 = 3_600;
/// The model routed to the fast sim.
const MODEL: &str = "bench";
/// The model routed to the slow sim.
const SLOW_MODEL: &str = "bench-slow";
/// The one user message of every call.
const PROMPT: &str = "Tell me how a gateway balances calls across endpoints.";
/// The targets take turns this many times per scenario.
const ROUNDS: u64 = 2;
/// Streams held open by default: issue 14's figure.
const OPEN_STREAMS: u64 = 10_000;
/// Open files a process needs besides one per held stream.
const FD_HEADROOM: u64 = 512;

/// The load scenarios: name, mode, concurrency, calls per target at
/// `BENCH_CALLS=1`.
const PLAN: [(&str, Mode, usize, f64); 5] = [
    ("unary c=1", Mode::Unary, 1, 2_000.0),
    ("unary c=64", Mode::Unary, 64, 20_000.0),
    ("stream c=1", Mode::Stream, 1, 1_000.0),
    ("stream c=8", Mode::Stream, 8, 3_000.0),
    ("stream c=64", Mode::Stream, 64, 4_000.0),
];

/// Starts the processes, runs every phase, prints the tables; the children
/// are stopped when `procs` drops, panic or not.
fn main() {
    let scale = call_scale();
    let streams = open_streams();
    let ticks_per_second = clock_ticks_per_second();
    println!("{}", machine_line(ticks_per_second));
    let fd_limit = raise_fd_limit();
    let procs = Processes::start(streams.max(1) + FD_HEADROOM);
    println!(
        "sim {} (ttft 0, unpaced, {OUTPUT_TOKENS} tokens); gateway gRPC {} and HTTP {} -> \
         openai upstream at the sim; BENCH_CALLS={scale}",
        procs.sim_addr, procs.gateway_grpc, procs.gateway_http
    );
    match (&procs.nginx, &procs.nginx_skipped) {
        (Some(nginx), _) => println!("nginx {} -> the sim (1 worker, keepalive 64)", nginx.addr),
        (None, Some(why)) => println!("{why}"),
        (None, None) => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the bench's tokio runtime");
    let started = Instant::now();
    let (mut scenarios, memory) = runtime.block_on(async {
        // Let the gateway finish starting before calling it idle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = rss_mib(procs.gateway.pid);
        let nginx_idle = procs.nginx.as_ref().and_then(|n| rss_mib(n.process.pid));
        let slow_sim_idle = rss_mib(procs.slow_sim.pid);
        let scenarios = run_load(&procs, scale).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut memory = Memory {
            idle,
            after_load: rss_mib(procs.gateway.pid),
            sim_after_load: rss_mib(procs.sim.pid),
            nginx_after_load: procs.nginx.as_ref().and_then(|n| rss_mib(n.process.pid)),
            nginx_idle,
            slow_sim_idle,
            streams: Err("BENCH_STREAMS=0".to_string()),
        };
        if streams > 0 {
            memory.streams = match fd_limit {
                Some(limit) if limit < streams + FD_HEADROOM => Err(format!(
                    "the open-file limit is {limit}; holding {streams} streams needs {} \
                     (raise the hard limit, or set BENCH_STREAMS lower)",
                    streams + FD_HEADROOM
                )),
                _ => {
                    eprintln!("holding {streams} streams open...");
                    Ok(streams::hold_open_streams(&procs, streams, ticks_per_second).await)
                }
            };
        }
        (scenarios, memory)
    });
    let figures: Vec<Figures> = scenarios
        .iter_mut()
        .map(|s| Figures::of(s, ticks_per_second))
        .collect();
    let pairs: Vec<(&Scenario, &Figures)> = scenarios.iter().zip(&figures).collect();
    print_scenarios(&pairs);
    print_memory(&memory);
    let find = |mode: Mode, concurrency: usize| {
        pairs
            .iter()
            .find(|(s, _)| s.mode == mode && s.concurrency == concurrency)
            .map(|(_, f)| *f)
    };
    print_summary(&find, &memory, procs.nginx_skipped.as_deref());
    println!();
    println!(
        "total bench wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // `procs` drops here and stops every child.
}

/// Runs every scenario of [`PLAN`]: a warm-up through every target, then
/// [`ROUNDS`] rounds in which the targets take turns (reversed every other
/// round).
async fn run_load(procs: &Processes, scale: f64) -> Vec<Scenario> {
    let clients = Clients::connect(procs).await;
    let targets: Vec<Target> = TARGETS.into_iter().filter(|t| clients.has(*t)).collect();
    let mut scenarios = Vec::new();
    for (name, mode, concurrency, base_calls) in PLAN {
        // Whole rounds, at least one call per task per round.
        let per_round =
            ((base_calls * scale / ROUNDS as f64).round() as u64).max(concurrency as u64);
        let warmup = (per_round * ROUNDS / 10).max(4 * concurrency as u64);
        eprintln!(
            "running {name}: {warmup} warm-up then {ROUNDS} x {per_round} calls per target..."
        );
        for &target in &targets {
            drop(measure(procs, &clients, target, mode, warmup, concurrency).await);
        }
        let mut scenario = Scenario {
            name,
            mode,
            concurrency,
            runs: Default::default(),
        };
        for round in 0..ROUNDS {
            let mut order = targets.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            for target in order {
                let run: RunStats =
                    measure(procs, &clients, target, mode, per_round, concurrency).await;
                scenario.runs[target.index()].merge(run);
            }
        }
        scenarios.push(scenario);
    }
    scenarios
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

/// Reads `BENCH_STREAMS`, the number of streams held open (0 skips that
/// phase), so a machine with a low open-file limit can still run the rest.
fn open_streams() -> u64 {
    match std::env::var("BENCH_STREAMS") {
        Err(_) => OPEN_STREAMS,
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            panic!("BENCH_STREAMS must be a number of streams such as 10000 or 0, not {text:?}")
        }),
    }
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
