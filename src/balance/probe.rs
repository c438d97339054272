//! Active health checks: a background loop per endpoint that asks the
//! server directly whether it is well, so an endpoint that fails can be
//! taken out before a caller's call finds out, and one that recovers comes
//! back without waiting for traffic.
//!
//! The loop (when, how often, how many passes or failures in a row flip the
//! verdict) is the balancer's; the request itself is the backend's
//! ([`crate::backend::http::probe`]).
//!
//! Beside it, whether or not `health_check` is configured: [`reconnect`],
//! which probes an endpoint ejected for its connection every
//! [`RECONNECT_INTERVAL`] with a TCP connect and readmits it at the first
//! that succeeds. The ejection's doubling back-off only bounds how long it
//! stays out without one; a server that comes back is used at once.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::engine;
use super::health::EndpointState;
use crate::backend::http::{self, HttpClient};
use crate::config::{EngineMetrics, HealthCheck};

/// How often an endpoint ejected for its connection is tried again.
pub(crate) const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts probing `state`, ejected for its connection, until a TCP connect
/// succeeds (then readmits it), its ejection ends, or it is dropped. At most
/// one such probe runs per endpoint.
pub(crate) fn reconnect(state: &Arc<EndpointState>) {
    let Some(address) = socket_address(&state.url) else {
        // In process (the simulator): no connection to fail.
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if !state.start_probing() {
        return;
    }
    let weak = Arc::downgrade(state);
    runtime.spawn(async move {
        let connect = |(host, port): (String, u16)| async move {
            let attempt = tokio::net::TcpStream::connect((host.as_str(), port));
            matches!(
                tokio::time::timeout(RECONNECT_INTERVAL, attempt).await,
                Ok(Ok(_))
            )
        };
        retry_until_reachable(weak, move || connect(address.clone())).await;
    });
}

/// The loop of [`reconnect`], with `connect` standing for one attempt.
async fn retry_until_reachable<F>(state: Weak<EndpointState>, mut connect: impl FnMut() -> F)
where
    F: Future<Output = bool>,
{
    let Some(mut gone) = state.upgrade().map(|s| s.gone()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = gone.changed() => return,
            _ = tokio::time::sleep(RECONNECT_INTERVAL) => {}
        }
        let still_out = state
            .upgrade()
            .filter(|s| s.is_ejected(tokio::time::Instant::now()));
        let Some(endpoint) = still_out else {
            // Back on probation, or gone: traffic judges it from here.
            if let Some(endpoint) = state.upgrade() {
                endpoint.stop_probing();
            }
            return;
        };
        drop(endpoint);
        let reached = tokio::select! {
            _ = gone.changed() => return,
            reached = connect() => reached,
        };
        if reached && let Some(endpoint) = state.upgrade() {
            endpoint.readmit();
            endpoint.stop_probing();
            return;
        }
    }
}

/// The host and port a base URL connects to.
fn socket_address(url: &::http::Uri) -> Option<(String, u16)> {
    let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().or(match url.scheme_str()? {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    })?;
    Some((host.to_string(), port))
}

/// Most bytes of an engine's metrics page read: vLLM's is tens of KiB.
const MAX_METRICS_PAGE: usize = 4 << 20;

/// Scrapes the engine behind `state` every `metrics.interval` until the
/// endpoint is gone, recording each reading for the balancer. A failed
/// scrape keeps the last reading, which goes stale after three intervals.
pub(crate) async fn scrape_engine(
    state: Weak<EndpointState>,
    client: HttpClient,
    metrics: EngineMetrics,
) {
    let Some((url, mut gone)) = state.upgrade().and_then(|s| {
        let base = s.url.to_string();
        let url = format!("{}{}", base.trim_end_matches('/'), metrics.path)
            .parse::<::http::Uri>()
            .ok()?;
        Some((url, s.gone()))
    }) else {
        return;
    };
    let mut ticks = tokio::time::interval(metrics.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let page = tokio::select! {
            _ = gone.changed() => return,
            page = async {
                ticks.tick().await;
                let fetch = http::fetch_text(&client, url.clone(), MAX_METRICS_PAGE);
                tokio::time::timeout(metrics.interval, fetch).await
            } => page,
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        let sample = match page {
            Ok(Ok(text)) => engine::parse(&text).ok_or_else(|| "no engine gauges".to_string()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err("timed out".to_string()),
        };
        match sample {
            Ok(sample) => {
                state.engine.record(
                    sample,
                    state.in_flight(),
                    metrics.interval,
                    tokio::time::Instant::now(),
                );
                state.set_engine_metrics(&sample);
                warned = false;
            }
            Err(err) if !warned => {
                warned = true;
                tracing::warn!(endpoint = %state.url, %url, %err, "cannot read the engine's load; balancing on calls in flight");
            }
            Err(_) => {}
        }
    }
}

/// Probes one endpoint over HTTP until it is gone, flipping its health
/// verdict after `unhealthy_after` failures or `healthy_after` passes in a
/// row.
pub(crate) async fn probe(state: Weak<EndpointState>, client: HttpClient, check: HealthCheck) {
    let Some(url) = state.upgrade().and_then(|s| {
        let base = s.url.to_string();
        format!("{}{}", base.trim_end_matches('/'), check.path)
            .parse::<::http::Uri>()
            .ok()
    }) else {
        return;
    };
    watch(state, check, move || http::probe(&client, url.clone())).await;
}

/// The loop of [`probe`], with `ask` standing for one probe request
/// (`true` when it passed).
async fn watch<F>(state: Weak<EndpointState>, check: HealthCheck, mut ask: impl FnMut() -> F)
where
    F: Future<Output = bool>,
{
    let Some(mut gone) = state.upgrade().map(|s| s.gone()) else {
        return;
    };
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let passed = tokio::select! {
            // The endpoint left the pool (or its table was replaced).
            _ = gone.changed() => return,
            passed = async {
                ticks.tick().await;
                matches!(tokio::time::timeout(check.timeout, ask()).await, Ok(true))
            } => passed,
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        if passed {
            passes += 1;
            failures = 0;
            if !state.is_healthy() && passes >= check.healthy_after {
                tracing::info!(endpoint = %state.url, "health check passes again; endpoint back in");
                state.set_healthy(true);
            }
        } else {
            failures += 1;
            passes = 0;
            if state.is_healthy() && failures >= check.unhealthy_after {
                tracing::warn!(endpoint = %state.url, path = %check.path, "health check failing; endpoint out");
                state.set_healthy(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::balance::health::PoolHealth;
    use crate::config::OutlierPolicy;
    use crate::telemetry::metrics::EndpointMetrics;

    /// A server whose probes pass while `up` is set, counting them.
    #[derive(Clone, Default)]
    struct Server {
        up: Arc<AtomicBool>,
        asked: Arc<AtomicUsize>,
    }

    fn endpoint(pool: &Arc<PoolHealth>) -> Arc<EndpointState> {
        let label: Arc<str> = Arc::from("http://10.0.0.1:8000");
        EndpointState::new(
            ::http::Uri::from_static("http://10.0.0.1:8000"),
            label.clone(),
            EndpointMetrics::new(&Arc::from("up"), &label),
            pool,
            OutlierPolicy::default(),
        )
    }

    fn check() -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 3,
        }
    }

    /// Starts probing `state` against `server`.
    fn start(state: &Arc<EndpointState>, server: &Server) -> tokio::task::JoinHandle<()> {
        let server = server.clone();
        tokio::spawn(watch(Arc::downgrade(state), check(), move || {
            server.asked.fetch_add(1, Ordering::SeqCst);
            std::future::ready(server.up.load(Ordering::SeqCst))
        }))
    }

    /// Lets `n` probe intervals pass.
    /// A second at a time, so timers fire in their order (a probe's
    /// timeout before the slower answer it cuts off).
    async fn intervals(n: u32) {
        let seconds = check().interval.as_secs() * u64::from(n);
        for _ in 0..seconds {
            tokio::time::advance(Duration::from_secs(1)).await;
            settle().await;
        }
    }

    /// Lets the probe task run until it waits for its next tick.
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_goes_out_after_failures_in_a_row_and_back_after_passes_in_a_row() {
        let pool = Arc::new(PoolHealth::default());
        let state = endpoint(&pool);
        let server = Server::default();
        let task = start(&state, &server);
        // The first probe goes at once and fails: one failure is not enough.
        settle().await;
        assert!(state.is_healthy());
        intervals(1).await;
        assert!(!state.is_healthy(), "out after two failures in a row");

        server.up.store(true, Ordering::SeqCst);
        intervals(2).await;
        assert!(!state.is_healthy(), "two passes are not yet three");
        intervals(1).await;
        assert!(state.is_healthy(), "back after three passes in a row");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_counts_as_a_failure() {
        let pool = Arc::new(PoolHealth::default());
        let state = endpoint(&pool);
        let task = tokio::spawn(watch(Arc::downgrade(&state), check(), || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            true
        }));
        intervals(3).await;
        assert!(!state.is_healthy(), "probes past the timeout are failures");
        task.abort();
    }

    /// Ejects `state` for its connection (two refused calls; the default
    /// policy needs five).
    fn eject(state: &Arc<EndpointState>) {
        use crate::balance::health::{Outcome, Scope};
        for _ in 0..OutlierPolicy::default().consecutive_failures {
            assert!(state.try_start(None));
            state.call_ended(&Arc::from("m"), Outcome::Failure(Scope::Endpoint));
        }
        assert!(state.is_ejected(tokio::time::Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_is_readmitted_at_the_first_connect_that_succeeds() {
        let pool = Arc::new(PoolHealth::default());
        let state = endpoint(&pool);
        eject(&state);
        let server = Server::default();
        let probes = server.clone();
        let task = tokio::spawn(retry_until_reachable(Arc::downgrade(&state), move || {
            probes.asked.fetch_add(1, Ordering::SeqCst);
            std::future::ready(probes.up.load(Ordering::SeqCst))
        }));
        settle().await;
        for _ in 0..3 {
            tokio::time::advance(RECONNECT_INTERVAL).await;
            settle().await;
        }
        assert_eq!(server.asked.load(Ordering::SeqCst), 3, "one probe a second");
        assert!(state.is_ejected(tokio::time::Instant::now()));
        server.up.store(true, Ordering::SeqCst);
        tokio::time::advance(RECONNECT_INTERVAL).await;
        settle().await;
        // Long before its 10 s back-off ends.
        assert!(!state.is_ejected(tokio::time::Instant::now()), "readmitted");
        assert!(task.is_finished(), "probing ends with the readmission");
        assert!(
            state.start_probing(),
            "and a later ejection may probe again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn probing_stops_when_the_back_off_ends_and_traffic_takes_over() {
        let pool = Arc::new(PoolHealth::default());
        let state = endpoint(&pool);
        eject(&state);
        let server = Server::default();
        let probes = server.clone();
        let task = tokio::spawn(retry_until_reachable(Arc::downgrade(&state), move || {
            probes.asked.fetch_add(1, Ordering::SeqCst);
            std::future::ready(false)
        }));
        for _ in 0..11 {
            tokio::time::advance(RECONNECT_INTERVAL).await;
            settle().await;
        }
        assert!(task.is_finished());
        assert!(server.asked.load(Ordering::SeqCst) <= 10);
    }

    #[tokio::test(start_paused = true)]
    async fn probing_stops_when_the_endpoint_is_dropped() {
        let pool = Arc::new(PoolHealth::default());
        let state = endpoint(&pool);
        let server = Server::default();
        server.up.store(true, Ordering::SeqCst);
        let task = start(&state, &server);
        intervals(2).await;
        drop(state);
        settle().await;
        assert!(task.is_finished(), "the loop ends with its endpoint");
        let asked = server.asked.load(Ordering::SeqCst);
        intervals(5).await;
        assert_eq!(server.asked.load(Ordering::SeqCst), asked);
    }
}
