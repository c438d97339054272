//! Turning measurements into the printed tables: every scenario per target,
//! memory, and the summary against issue 14's targets.

use std::time::Duration;

use crate::load::{Mode, RunStats, TARGETS, Target};
use crate::procs::CpuSnapshot;
use crate::streams::OpenStreams;
use crate::{OUTPUT_TOKENS, SLOW_OUTPUT_TOKENS};

/// Per-token CPU the gateway may spend on a streamed token (issue 14).
const TARGET_TOKEN_US: f64 = 2.0;
/// CPU the gateway may spend on a unary call (issue 14).
const TARGET_CALL_US: f64 = 25.0;
/// Latency the gateway may add to a 50-token stream at c=8 (issue 14).
const TARGET_ADDED_STREAM_US: f64 = 300.0;
/// The gateway's RSS when idle (issue 14).
const TARGET_IDLE_MIB: f64 = 30.0;
/// The gateway's RSS with 10,000 streams open (issue 14).
const TARGET_STREAMS_MIB: f64 = 64.0;

/// One scenario's runs, one per target.
pub(crate) struct Scenario {
    /// Its name in the tables.
    pub(crate) name: &'static str,
    /// Unary or streaming.
    pub(crate) mode: Mode,
    /// Calls in flight at once.
    pub(crate) concurrency: usize,
    /// The runs, indexed by [`Target::index`]; empty for a target not in
    /// the run.
    pub(crate) runs: [RunStats; 4],
}

/// What the tables show of one scenario, per target (indexed like
/// [`TARGETS`]); `None` where a target did not run or a figure has no
/// meaning.
#[derive(Default)]
pub(crate) struct Figures {
    /// Median latency, µs.
    p50: [Option<f64>; 4],
    /// 99th percentile latency, µs.
    p99: [Option<f64>; 4],
    /// Median time to first token, µs (streams).
    first_token: [Option<f64>; 4],
    /// Calls per second.
    throughput: [Option<f64>; 4],
    /// CPU of the proxy in the path per call, µs: the gateway, nginx, or
    /// (direct) the sim's own for scale.
    proxy_cpu: [Option<f64>; 4],
    /// The sim's CPU per call, µs.
    sim_cpu: [Option<f64>; 4],
    /// This bench's CPU per call, µs.
    client_cpu: [Option<f64>; 4],
    /// Every measured process's CPU per call, µs.
    all_cpu: [Option<f64>; 4],
    /// Other processes' CPU meanwhile, % of one core.
    other_load: [Option<f64>; 4],
    /// Calls per target.
    calls: u64,
}

impl Figures {
    /// Works out every figure of `s`.
    pub(crate) fn of(s: &mut Scenario, ticks_per_second: f64) -> Figures {
        let mut f = Figures::default();
        for target in TARGETS {
            let i = target.index();
            let run = &mut s.runs[i];
            if run.calls == 0 {
                continue;
            }
            f.calls = run.calls;
            f.p50[i] = quantile_us(&mut run.latencies, 0.5);
            f.p99[i] = quantile_us(&mut run.latencies, 0.99);
            f.first_token[i] = quantile_us(&mut run.ttfts, 0.5);
            f.throughput[i] = Some(run.calls as f64 / run.wall.as_secs_f64());
            let Some(cpu) = run.cpu else { continue };
            let per_call = |ticks: u64| ticks as f64 / ticks_per_second * 1e6 / run.calls as f64;
            f.proxy_cpu[i] = Some(per_call(match target {
                Target::Direct => cpu.sim,
                Target::Grpc | Target::Http => cpu.gateway,
                Target::Nginx => cpu.nginx,
            }));
            f.sim_cpu[i] = Some(per_call(cpu.sim));
            f.client_cpu[i] = Some(per_call(cpu.client));
            f.all_cpu[i] = Some(per_call(cpu.gateway + cpu.nginx + cpu.sim + cpu.client));
            f.other_load[i] = Some(other_load(cpu, run.wall, ticks_per_second));
        }
        f
    }

    /// `of[t] - of[direct]` for every proxy target: the latency it adds.
    fn added(of: &[Option<f64>; 4]) -> [Option<f64>; 4] {
        let mut added = [None; 4];
        for target in [Target::Grpc, Target::Http, Target::Nginx] {
            let i = target.index();
            added[i] = of[i].zip(of[0]).map(|(t, d)| t - d);
        }
        added
    }

    /// Proxy CPU per streamed token, µs.
    fn per_token(&self) -> [Option<f64>; 4] {
        self.proxy_cpu
            .map(|cpu| cpu.map(|us| us / OUTPUT_TOKENS as f64))
    }
}

/// Share of one core spent by anything but the measured processes.
fn other_load(cpu: CpuSnapshot, wall: Duration, ticks_per_second: f64) -> f64 {
    cpu.background() as f64 / ticks_per_second / wall.as_secs_f64() * 100.0
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

// === the main table ===

/// Prints one block of rows per scenario: every target side by side.
pub(crate) fn print_scenarios(scenarios: &[(&Scenario, &Figures)]) {
    println!();
    print!("{:<12} {:<24}", "scenario", "metric");
    for target in TARGETS {
        print!(" {:>10}", target.label());
    }
    println!("  note");
    println!("{}", "-".repeat(118));
    for (i, (s, f)) in scenarios.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let row = |metric: &str, values: &[Option<f64>; 4], note: &str| {
            print!("{:<12} {:<24}", s.name, metric);
            for value in values {
                print!(" {:>10}", cell(*value));
            }
            println!("  {note}");
        };
        row("latency p50 (µs)", &f.p50, "");
        row("  added p50 (µs)", &Figures::added(&f.p50), "over direct");
        row("latency p99 (µs)", &f.p99, "");
        if s.mode == Mode::Stream {
            row("first token p50 (µs)", &f.first_token, "");
            row(
                "  added first tok (µs)",
                &Figures::added(&f.first_token),
                "over direct",
            );
        }
        row(
            "throughput (calls/s)",
            &f.throughput,
            &format!("{} calls per target", f.calls),
        );
        row(
            "proxy CPU µs/call",
            &f.proxy_cpu,
            "gateway / nginx; direct: the sim's own",
        );
        if s.mode == Mode::Stream {
            row(
                "proxy CPU µs/token",
                &f.per_token(),
                &format!("per call / {OUTPUT_TOKENS} tokens"),
            );
        }
        row("sim CPU µs/call", &f.sim_cpu, "the upstream's work");
        row("client CPU µs/call", &f.client_cpu, "this bench");
        row(
            "all procs CPU µs/call",
            &f.all_cpu,
            "bounds throughput when CPU-bound",
        );
        row(
            "other load (% core)",
            &f.other_load,
            "other processes meanwhile; >10 skews",
        );
    }
}

/// A figure for the table: `-` when absent, whole numbers from 100 up.
fn cell(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

// === memory ===

/// Resident memory at each moment the bench reads it.
pub(crate) struct Memory {
    /// Gateway RSS right after start, before any call, MiB.
    pub(crate) idle: Option<f64>,
    /// Gateway RSS after the load scenarios, MiB.
    pub(crate) after_load: Option<f64>,
    /// The fast sim's RSS after the load scenarios, MiB.
    pub(crate) sim_after_load: Option<f64>,
    /// nginx's RSS after the load scenarios, MiB.
    pub(crate) nginx_after_load: Option<f64>,
    /// nginx's RSS before any call, MiB.
    pub(crate) nginx_idle: Option<f64>,
    /// The slow sim's RSS before any stream, MiB.
    pub(crate) slow_sim_idle: Option<f64>,
    /// The open-streams phase, or why it did not run.
    pub(crate) streams: Result<OpenStreams, String>,
}

/// Prints the memory readings.
pub(crate) fn print_memory(memory: &Memory) {
    let mib = |value: Option<f64>| value.map_or("?".to_string(), |v| format!("{v:.1} MiB"));
    println!();
    println!("memory (VmRSS from /proc/<pid>/status)");
    println!(
        "  gateway idle after start:      {} (nginx {})",
        mib(memory.idle),
        mib(memory.nginx_idle)
    );
    println!(
        "  gateway after the load above:  {} (sim {}, nginx {})",
        mib(memory.after_load),
        mib(memory.sim_after_load),
        mib(memory.nginx_after_load)
    );
    match &memory.streams {
        Err(why) => println!("  open streams: skipped: {why}"),
        Ok(s) => {
            println!(
                "  gateway with {} open streams:  {} (peak {}; {} open files; \
                 slow sim {})",
                s.opened,
                mib(s.gateway_rss),
                mib(s.gateway_peak),
                s.gateway_fds.map_or("?".to_string(), |n| n.to_string()),
                mib(s.sim_rss),
            );
            println!(
                "    {} streams over {} gRPC connections opened in {:.1} s, each at 1 token/s \
                 of {SLOW_OUTPUT_TOKENS}; {} still open at the reading; gateway CPU holding \
                 them: {:.0}% of a core",
                s.opened,
                s.connections,
                s.ramp.as_secs_f64(),
                s.live_at_reading,
                s.gateway_cpu_pct
            );
            let per_stream = |with: Option<f64>, without: Option<f64>| {
                with.zip(without).filter(|_| s.opened > 0).map_or(
                    "?".to_string(),
                    |(with, without)| {
                        format!("{:.1} KiB", (with - without) * 1024.0 / s.opened as f64)
                    },
                )
            };
            println!(
                "    per open stream: gateway {} over its RSS after the load, slow sim {} over \
                 its idle RSS; holding CPU: {:.1} µs of gateway per token ({} tokens/s)",
                per_stream(s.gateway_rss, memory.after_load),
                per_stream(s.sim_rss, memory.slow_sim_idle),
                if s.live_at_reading > 0 {
                    s.gateway_cpu_pct / 100.0 * 1e6 / s.live_at_reading as f64
                } else {
                    0.0
                },
                s.live_at_reading
            );
            if let Some(failure) = &s.failure {
                println!("    FEWER THAN {} STREAMS: {failure}", s.wanted);
            }
            println!(
                "  gateway after cancelling them: {} ({} open files, upstream sockets closed \
                 within {:.1} s)",
                mib(s.rss_after_cancel),
                s.fds_after_cancel
                    .map_or("?".to_string(), |n| n.to_string()),
                s.release.as_secs_f64()
            );
        }
    }
}

// === the summary against issue 14 ===

/// Prints issue 14's targets, each with what this run measured and whether
/// it is met, then the gateway/nginx ratios. `figures` finds a scenario's
/// figures by mode and concurrency.
pub(crate) fn print_summary<'a>(
    figures: &dyn Fn(Mode, usize) -> Option<&'a Figures>,
    memory: &Memory,
    nginx_skipped: Option<&str>,
) {
    let (grpc, http, nginx) = (
        Target::Grpc.index(),
        Target::Http.index(),
        Target::Nginx.index(),
    );
    println!();
    println!(
        "{:<48} {:>12} {:>16}  verdict",
        "issue 14 target", "measured", "target"
    );
    println!("{}", "-".repeat(90));
    let line =
        |what: &str, measured: Option<f64>, unit: &str, limit: Option<f64>, shown: String| {
            let verdict = match (measured, limit) {
                (None, _) => "not measured",
                (Some(_), None) => "-",
                (Some(m), Some(l)) if m <= l => "met",
                _ => "NOT MET",
            };
            let measured = measured.map_or("-".to_string(), |m| match m.abs() {
                m if m >= 100.0 => format!("{m:.0} {unit}"),
                m if m >= 10.0 => format!("{m:.1} {unit}"),
                _ => format!("{m:.2} {unit}"),
            });
            println!("{what:<48} {measured:>12} {shown:>16}  {verdict}");
        };
    let stream8 = figures(Mode::Stream, 8);
    let unary64 = figures(Mode::Unary, 64);
    let stream1 = figures(Mode::Stream, 1);
    let limit = |l: f64, unit: &str| (Some(l), format!("≤ {l} {unit}"));
    for (front, i) in [("gRPC", grpc), ("HTTP", http)] {
        let (l, shown) = limit(TARGET_TOKEN_US, "µs");
        line(
            &format!("CPU per streamed token, {front} (stream c=8)"),
            stream8.and_then(|f| f.per_token()[i]),
            "µs",
            l,
            shown,
        );
    }
    for (front, i) in [("gRPC", grpc), ("HTTP", http)] {
        let (l, shown) = limit(TARGET_CALL_US, "µs");
        line(
            &format!("CPU per unary call, {front} (unary c=64)"),
            unary64.and_then(|f| f.proxy_cpu[i]),
            "µs",
            l,
            shown,
        );
    }
    for (front, i) in [("gRPC", grpc), ("HTTP", http)] {
        let (l, shown) = limit(TARGET_ADDED_STREAM_US / 1e3, "ms");
        line(
            &format!("added p50, 50-token stream c=8, {front}"),
            stream8
                .and_then(|f| Figures::added(&f.p50)[i])
                .map(|us| us / 1e3),
            "ms",
            l,
            shown,
        );
    }
    let nginx_first = stream1.and_then(|f| Figures::added(&f.first_token)[nginx]);
    for (front, i) in [("gRPC", grpc), ("HTTP", http)] {
        let shown = nginx_first.map_or("≤ nginx (n/a)".to_string(), |n| {
            format!("≤ nginx {n:+.0} µs")
        });
        line(
            &format!("added first token p50, stream c=1, {front}"),
            stream1.and_then(|f| Figures::added(&f.first_token)[i]),
            "µs",
            nginx_first,
            shown,
        );
    }
    let (l, shown) = limit(TARGET_IDLE_MIB, "MiB");
    line("gateway RSS idle", memory.idle, "MiB", l, shown);
    let (l, shown) = limit(TARGET_STREAMS_MIB, "MiB");
    let (what, rss) = match &memory.streams {
        Ok(s) if s.opened == s.wanted && s.live_at_reading == s.wanted => (
            format!("gateway RSS with {} open streams", s.wanted),
            s.gateway_rss,
        ),
        Ok(s) => (
            format!(
                "gateway RSS at {} streams (only {} opened, {} open)",
                s.wanted, s.opened, s.live_at_reading
            ),
            None,
        ),
        Err(_) => ("gateway RSS with open streams (skipped)".to_string(), None),
    };
    line(&what, rss, "MiB", l, shown);

    println!();
    if let Some(why) = nginx_skipped {
        println!("gateway/nginx ratios: {why}");
        return;
    }
    println!("gateway/nginx ratios (same run, same sim):");
    let ratio = |f: Option<&Figures>, of: &dyn Fn(&Figures) -> [Option<f64>; 4]| {
        let values = f.map(of).unwrap_or_default();
        let r = |i: usize| match (values[i], values[nginx]) {
            (Some(g), Some(n)) if n > 0.0 => format!("{:.2}x", g / n),
            _ => "-".to_string(),
        };
        let n = values[nginx].map_or("-".to_string(), |n| format!("{n:.2}"));
        format!("gRPC {:>7}  HTTP {:>7}   (nginx {n})", r(grpc), r(http))
    };
    println!(
        "  {:<40} {}",
        "CPU per unary call (unary c=64, µs)",
        ratio(unary64, &|f| f.proxy_cpu)
    );
    println!(
        "  {:<40} {}",
        "CPU per streamed token (stream c=8, µs)",
        ratio(stream8, &|f| f.per_token())
    );
    println!(
        "  {:<40} {}",
        "added p50 (stream c=8, µs)",
        ratio(stream8, &|f| Figures::added(&f.p50))
    );
    println!(
        "  {:<40} {}",
        "added first token p50 (stream c=1, µs)",
        ratio(stream1, &|f| Figures::added(&f.first_token))
    );
    println!(
        "  {:<40} {}",
        "added p50 (unary c=1, µs)",
        ratio(figures(Mode::Unary, 1), &|f| Figures::added(&f.p50))
    );
}
