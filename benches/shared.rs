//! What sharing limits through Redis adds to a call: the admission of
//! `state.redis` ([`llmgate::internals::SharedLimits::admit`]) and the
//! settlement when the call's reservation is dropped, against a real
//! `redis-server` started on a free port.
//!
//! Three cases, each run on one thread (a `current_thread` runtime):
//! * **lease hit**: limits of 100 million requests and tokens a minute,
//!   whose leases (10,000 units) serve nearly every call locally; the
//!   background refills are included. Nothing waits, so wall time per call
//!   is the gateway's CPU per call: the issue's target is at most 5 µs at
//!   20k calls/s.
//! * **lease of one**: 99 requests a minute (a lease of one unit), so every
//!   call, admitted or refused, waits on one Redis round trip: what leases
//!   save. Wall time, mostly waiting.
//! * **in flight**: a shared `max_in_flight`, one round trip per call plus
//!   a release after it. Wall time, mostly waiting.
//!
//! ```text
//! cargo bench --bench shared
//! ```
//!
//! Needs `redis-server` on the PATH (`apt-get install redis-server`).

// Wall-clock time is what a benchmark measures.
#![allow(clippy::disallowed_types)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use llmgate::config::Config;
use llmgate::internals::SharedLimits;

/// Calls per case.
const CALLS: u32 = 200_000;
/// Calls per case that wait on Redis every time.
const ROUND_TRIP_CALLS: u32 = 5_000;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = std::env::temp_dir().join(format!("llmgate-bench-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (apt-get install redis-server)"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        wait_for(port).await;
        println!("shared limits through redis-server on 127.0.0.1:{port}, one thread");
        println!("{:<14} {:>10} {:>12}", "case", "calls", "µs per call");
        for (case, limits, calls) in [
            (
                "lease hit",
                "requests_per_minute: 100000000, tokens_per_minute: 100000000",
                CALLS,
            ),
            ("lease of one", "requests_per_minute: 99", ROUND_TRIP_CALLS),
            ("in flight", "max_in_flight: 1000", ROUND_TRIP_CALLS),
        ] {
            let shared = limits_for(port, limits, case);
            // Warm up: fill the leases, load the scripts.
            for _ in 0..calls / 10 {
                let _ = shared.admit(Some("bench"), "demo", 20).await;
            }
            let start = Instant::now();
            let mut admitted = 0u32;
            for _ in 0..calls {
                if let Ok(Some(held)) = shared.admit(Some("bench"), "demo", 20).await {
                    admitted += 1;
                    drop(held);
                }
            }
            let per_call = start.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
            println!("{case:<14} {calls:>10} {per_call:>12.2}");
            assert!(admitted > 0, "{case}: nothing admitted");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shared limits for a key `bench` with `limits`, under a prefix of the
/// case's own.
fn limits_for(port: u16, limits: &str, case: &str) -> std::sync::Arc<SharedLimits> {
    let yaml = format!(
        "state:
  redis:
    url: redis://127.0.0.1:{port}/0
    key_prefix: \"{}:\"
    timeout: 50ms
auth:
  keys:
    - {{ name: bench, sha256: {}, models: [\"*\"], limits: {{ {limits} }} }}
upstreams:
  sim:
    kind: sim
routes:
  - model: demo
    pools:
      - upstream: sim
",
        case.replace(' ', "-"),
        "0".repeat(64),
    );
    let config = Config::parse(&yaml, "bench.yaml", &|_| None).expect("a valid file");
    let redis = llmgate::internals::redis(&config).expect("state.redis");
    SharedLimits::connect(redis, &config).expect("a store")
}

/// Waits (bounded) until redis-server accepts connections.
async fn wait_for(port: u16) {
    for _ in 0..250 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis-server did not start");
}
