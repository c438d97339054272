//! Memory with many streams open: the gateway's RSS while it holds
//! thousands of slow streams (each has had its first token and keeps
//! receiving one a second), and again after they are all cancelled.
//!
//! The streams come in over the gRPC front, multiplexed on as few HTTP/2
//! connections as the gateway's `max_streams_per_connection` allows: over
//! HTTP/1.1 every stream would cost the gateway two sockets (caller and
//! upstream) and 10,000 of them would not fit in the usual open-file limit.
//! The gateway still holds one upstream connection per stream, to the slow
//! sim.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llmgate::config::DEFAULT_MAX_STREAMS_PER_CONNECTION;
use llmgate::proto::llm_service_client::LlmServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::SLOW_MODEL;
use crate::load::{grpc_channel, grpc_request};
use crate::procs::{CpuSnapshot, Processes, open_fds, rss_mib, status_mib};

/// Streams waiting for their first token at once during the ramp-up: few
/// enough that the gateway's connects to the sim never overflow its accept
/// backlog (1,024), enough to keep every process busy.
const PENDING: u64 = 500;
/// The longest the whole ramp-up may take: 10,000 streams open in 15 to 20
/// seconds on two cores shared with other builds, but a concurrent
/// compile has slowed it past 60.
const RAMP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time given to the gateway after the last stream opened (or after the
/// cancel), before memory is read.
const SETTLE: Duration = Duration::from_secs(1);
/// The window over which the gateway's CPU is measured while it holds the
/// streams.
const HOLD_WINDOW: Duration = Duration::from_secs(2);
/// The longest the bench waits for the gateway to close its upstream
/// sockets after the cancel.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the open-streams phase measured.
pub(crate) struct OpenStreams {
    /// Streams asked for.
    pub(crate) wanted: u64,
    /// Streams that got their first token.
    pub(crate) opened: u64,
    /// Streams still open when memory was read.
    pub(crate) live_at_reading: u64,
    /// HTTP/2 connections the streams shared.
    pub(crate) connections: u64,
    /// Why fewer than `wanted` opened, if they did.
    pub(crate) failure: Option<String>,
    /// How long opening took.
    pub(crate) ramp: Duration,
    /// Gateway RSS with the streams open, MiB.
    pub(crate) gateway_rss: Option<f64>,
    /// Gateway peak RSS (`VmHWM`) so far, MiB.
    pub(crate) gateway_peak: Option<f64>,
    /// Gateway open files with the streams open.
    pub(crate) gateway_fds: Option<usize>,
    /// The slow sim's RSS with the streams open, MiB.
    pub(crate) sim_rss: Option<f64>,
    /// Share of one core the gateway spent holding the streams (a token a
    /// second each).
    pub(crate) gateway_cpu_pct: f64,
    /// Gateway RSS after every stream was cancelled, MiB.
    pub(crate) rss_after_cancel: Option<f64>,
    /// Gateway open files after the cancel.
    pub(crate) fds_after_cancel: Option<usize>,
    /// How long the gateway took to close its upstream sockets.
    pub(crate) release: Duration,
}

/// Opens `wanted` slow streams through the gateway's gRPC front, reads
/// memory while they are open, cancels them, and reads it again.
pub(crate) async fn hold_open_streams(
    procs: &Processes,
    wanted: u64,
    ticks_per_second: f64,
) -> OpenStreams {
    let per_connection = u64::from(DEFAULT_MAX_STREAMS_PER_CONNECTION);
    let connections = wanted.div_ceil(per_connection).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(LlmServiceClient::new(
            grpc_channel(procs.gateway_grpc).await,
        ));
    }
    let fds_before = open_fds(procs.gateway.pid).unwrap_or(0);
    let live = Arc::new(AtomicU64::new(0));
    let (opened_tx, mut opened_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + RAMP_TIMEOUT;
    let mut opened = 0u64;
    let mut failure = None;
    while opened < wanted {
        // Keep up to PENDING streams waiting for their first token.
        while (tasks.len() as u64) < wanted && tasks.len() as u64 - opened < PENDING {
            let client = clients[tasks.len() % clients.len()].clone();
            tasks.push(tokio::spawn(open_one(
                client,
                opened_tx.clone(),
                live.clone(),
            )));
        }
        match tokio::time::timeout_at(deadline, opened_rx.recv()).await {
            Ok(Some(Ok(()))) => opened += 1,
            Ok(Some(Err(err))) => {
                failure = Some(format!(
                    "stream {} of {wanted} failed {err}; open-file limits: {}",
                    opened + 1,
                    fd_note(procs)
                ));
                break;
            }
            Ok(None) => unreachable!("the bench holds a sender"),
            Err(_) => {
                failure = Some(format!(
                    "only {opened} of {wanted} streams had their first token after {}s",
                    RAMP_TIMEOUT.as_secs()
                ));
                break;
            }
        }
    }
    let ramp = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let gateway = procs.gateway.pid;
    let before = CpuSnapshot::now(procs);
    tokio::time::sleep(HOLD_WINDOW).await;
    let held = CpuSnapshot::now(procs).since(before);
    let gateway_cpu_pct =
        held.gateway as f64 / ticks_per_second / HOLD_WINDOW.as_secs_f64() * 100.0;
    let live_at_reading = live.load(Ordering::Relaxed);
    let gateway_rss = rss_mib(gateway);
    let gateway_peak = status_mib(gateway, "VmHWM");
    let gateway_fds = open_fds(gateway);
    let sim_rss = rss_mib(procs.slow_sim.pid);

    // Cancel: dropping each task's stream resets it, and the gateway drops
    // the upstream request with it.
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    drop(clients);
    let cancelled = Instant::now();
    let mut release = Duration::ZERO;
    while cancelled.elapsed() < RELEASE_TIMEOUT {
        if open_fds(gateway).unwrap_or(0) <= fds_before + 16 {
            release = cancelled.elapsed();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        release = cancelled.elapsed();
    }
    tokio::time::sleep(SETTLE).await;
    OpenStreams {
        wanted,
        opened,
        live_at_reading,
        connections,
        failure,
        ramp,
        gateway_rss,
        gateway_peak,
        gateway_fds,
        sim_rss,
        gateway_cpu_pct,
        rss_after_cancel: rss_mib(gateway),
        fds_after_cancel: open_fds(gateway),
        release,
    }
}

/// One slow stream through `client`: says on `opened` when its first token
/// came (or why it failed), then reads tokens until it is aborted, counted
/// in `live` meanwhile.
async fn open_one(
    mut client: LlmServiceClient<Channel>,
    opened: mpsc::UnboundedSender<Result<(), String>>,
    live: Arc<AtomicU64>,
) {
    let request = grpc_request(SLOW_MODEL);
    let mut stream = match client.complete_stream(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = opened.send(Err(format!("CompleteStream: {status}")));
            return;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(chunk)) if !chunk.token.is_empty() => break,
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = opened.send(Err("ended before its first token".into()));
                return;
            }
            Err(status) => {
                let _ = opened.send(Err(format!("before its first token: {status}")));
                return;
            }
        }
    }
    live.fetch_add(1, Ordering::Relaxed);
    let _ = opened.send(Ok(()));
    // Keep reading, as a caller does, until aborted.
    while let Ok(Some(_)) = stream.message().await {}
    live.fetch_sub(1, Ordering::Relaxed);
}

/// The open-file limits of the gateway and the slow sim, for a failure
/// message: running out of them is the usual reason streams fail to open.
fn fd_note(procs: &Processes) -> String {
    let limit = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|line| line.starts_with("Max open files"))
                    .map(|line| {
                        line.trim_start_matches("Max open files")
                            .split_whitespace()
                            .next()
                            .unwrap_or("?")
                            .to_string()
                    })
            })
            .unwrap_or_else(|| "?".to_string())
    };
    format!(
        "gateway {} open of {}, slow sim {} open of {}",
        open_fds(procs.gateway.pid).map_or("?".to_string(), |n| n.to_string()),
        limit(procs.gateway.pid),
        open_fds(procs.slow_sim.pid).map_or("?".to_string(), |n| n.to_string()),
        limit(procs.slow_sim.pid),
    )
}
