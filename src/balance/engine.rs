//! An engine's own load, read from its metrics page.
//!
//! P2C over this replica's calls in flight misses what other gateway
//! replicas and other clients send the same engine. vLLM and SGLang publish
//! their whole load as Prometheus gauges: requests waiting, requests
//! running, KV-cache use. With `load: { metrics }` on an upstream, each
//! endpoint's page is scraped every `interval` (the loop is in
//! [`super::probe`]) and the balancer ranks endpoints by the waiting queue
//! first, then running requests (plus this replica's calls started since
//! the scrape, which the engine had not seen yet), then KV-cache use. A
//! scrape older than three intervals is not trusted: calls in flight rank
//! alone, as without `load:`.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::clock::epoch;

/// The gauges read, by engine. Counts are summed over their series (an
/// engine serving several models has one per model); KV-cache use is the
/// highest.
/// Names are as [`plain_name`] reads them: `vllm:num_requests_waiting` is
/// `vllm_num_requests_waiting` here.
const WAITING: &[&str] = &["vllm_num_requests_waiting", "sglang_num_queue_reqs"];
const RUNNING: &[&str] = &["vllm_num_requests_running", "sglang_num_running_reqs"];
const KV_CACHE: &[&str] = &[
    "vllm_kv_cache_usage_perc",
    "vllm_gpu_cache_usage_perc",
    "sglang_token_usage",
];

/// One scrape's reading.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct EngineSample {
    /// Requests queued in the engine, not yet running.
    pub waiting: u32,
    /// Requests the engine is generating for.
    pub running: u32,
    /// Share of the KV cache in use, 0 to 1.
    pub kv_cache_usage: f64,
}

/// The last reading of one endpoint's engine, shared with every call.
#[derive(Debug)]
pub(crate) struct EngineLoad {
    waiting: AtomicU32,
    running: AtomicU32,
    /// KV-cache use in thousandths.
    kv_milli: AtomicU32,
    /// When the last scrape succeeded, in nanoseconds from `epoch` (before
    /// it when negative: tests run clocks of their own); `i64::MIN` before
    /// the first.
    scraped_at: AtomicI64,
    /// This replica's calls in flight at that moment.
    in_flight_then: AtomicUsize,
    /// The scrape interval, for freshness.
    interval_nanos: AtomicU64,
}

/// How an endpoint ranks for P2C, lowest first: a recent failure, then the
/// engine's queue, its running requests, its KV-cache use. Without a fresh
/// reading, running is this replica's calls in flight.
pub(crate) type LoadRank = (bool, u32, usize, u32);

// === impl EngineLoad ===

impl Default for EngineLoad {
    fn default() -> Self {
        EngineLoad {
            waiting: AtomicU32::new(0),
            running: AtomicU32::new(0),
            kv_milli: AtomicU32::new(0),
            scraped_at: AtomicI64::new(NEVER),
            in_flight_then: AtomicUsize::new(0),
            interval_nanos: AtomicU64::new(0),
        }
    }
}

/// `scraped_at` before the first scrape.
const NEVER: i64 = i64::MIN;

impl EngineLoad {
    /// Records a reading taken when this replica had `in_flight` calls on
    /// the endpoint.
    pub(crate) fn record(
        &self,
        sample: EngineSample,
        in_flight: usize,
        interval: Duration,
        at: Instant,
    ) {
        self.waiting.store(sample.waiting, Ordering::Relaxed);
        self.running.store(sample.running, Ordering::Relaxed);
        let kv = (sample.kv_cache_usage.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.kv_milli.store(kv, Ordering::Relaxed);
        self.in_flight_then.store(in_flight, Ordering::Relaxed);
        self.interval_nanos
            .store(interval.as_nanos() as u64, Ordering::Relaxed);
        let epoch = epoch();
        let offset = match at.checked_duration_since(epoch) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => -i64::try_from(epoch.duration_since(at).as_nanos()).unwrap_or(i64::MAX),
        };
        self.scraped_at
            .store(offset.max(NEVER + 1), Ordering::Release);
    }

    /// The last reading, if it is fresh at `now` (younger than three
    /// intervals).
    pub(crate) fn fresh(&self, now: Instant) -> Option<EngineSample> {
        let offset = self.scraped_at.load(Ordering::Acquire);
        if offset == NEVER {
            return None;
        }
        let epoch = epoch();
        let at = if offset >= 0 {
            epoch + Duration::from_nanos(offset.unsigned_abs())
        } else {
            epoch.checked_sub(Duration::from_nanos(offset.unsigned_abs()))?
        };
        let interval = Duration::from_nanos(self.interval_nanos.load(Ordering::Relaxed));
        if now.saturating_duration_since(at) >= interval.saturating_mul(3) {
            return None;
        }
        Some(EngineSample {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_cache_usage: f64::from(self.kv_milli.load(Ordering::Relaxed)) / 1000.0,
        })
    }

    /// The P2C rank of an endpoint with `in_flight` calls of this replica
    /// and a recent failure or not.
    pub(crate) fn rank(&self, failed_recently: bool, in_flight: usize, now: Instant) -> LoadRank {
        match self.fresh(now) {
            Some(sample) => {
                let started_since =
                    in_flight.saturating_sub(self.in_flight_then.load(Ordering::Relaxed));
                (
                    failed_recently,
                    sample.waiting,
                    (sample.running as usize).saturating_add(started_since),
                    self.kv_milli.load(Ordering::Relaxed),
                )
            }
            None => (failed_recently, 0, in_flight, 0),
        }
    }
}

/// Reads the engine gauges out of a Prometheus text page; `None` when the
/// page has none of them (not an engine we know).
pub(crate) fn parse(page: &str) -> Option<EngineSample> {
    let lines = page.lines().map(|line| Ok(plain_name(line)));
    let scrape = prometheus_parse::Scrape::parse(lines).ok()?;
    let mut sample = EngineSample::default();
    let mut found = false;
    for series in &scrape.samples {
        let value = match series.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Counter(v) => v,
            _ => continue,
        };
        if !value.is_finite() || value < 0.0 {
            continue;
        }
        let name = series.metric.as_str();
        if WAITING.contains(&name) {
            sample.waiting = sample.waiting.saturating_add(value as u32);
        } else if RUNNING.contains(&name) {
            sample.running = sample.running.saturating_add(value as u32);
        } else if KV_CACHE.contains(&name) {
            sample.kv_cache_usage = sample.kv_cache_usage.max(value);
        } else {
            continue;
        }
        found = true;
    }
    found.then_some(sample)
}

/// `line` with the colons of its metric name made underscores.
/// prometheus-parse 0.2 reads names as `\w+`, without the colon the
/// exposition format allows (and vLLM and SGLang use), so a colon name
/// would not parse at all.
fn plain_name(line: &str) -> String {
    let (prefix, rest) = match line.strip_prefix("# ") {
        Some(comment) => match comment.split_once(' ') {
            Some((keyword, rest)) => (format!("# {keyword} "), rest),
            None => return line.to_string(),
        },
        None => (String::new(), line),
    };
    let end = rest
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(rest.len());
    format!("{prefix}{}{}", rest[..end].replace(':', "_"), &rest[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = "\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine=\"0\",model_name=\"llama\"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine=\"0\",model_name=\"llama\"} 7.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"llama\"} 0.42
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine=\"0\",model_name=\"llama\"} 12345.0
";

    #[test]
    fn vllm_gauges_are_read() {
        let sample = parse(VLLM);
        assert_eq!(
            sample,
            Some(EngineSample {
                waiting: 7,
                running: 3,
                kv_cache_usage: 0.42
            })
        );
    }

    #[test]
    fn a_page_without_engine_gauges_is_no_reading() {
        assert_eq!(parse("# TYPE up gauge\nup 1\n"), None);
        assert_eq!(parse("not prometheus at all {{{"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reading_ranks_by_queue_then_running_then_cache_and_goes_stale() {
        let load = EngineLoad::default();
        let interval = Duration::from_millis(500);
        assert_eq!(
            load.rank(false, 4, Instant::now()),
            (false, 0, 4, 0),
            "no reading yet"
        );
        let sample = EngineSample {
            waiting: 5,
            running: 2,
            kv_cache_usage: 0.5,
        };
        load.record(sample, 1, interval, Instant::now());
        // Three calls started here since the scrape count as running.
        assert_eq!(load.rank(false, 4, Instant::now()), (false, 5, 5, 500));
        tokio::time::advance(interval * 3).await;
        assert_eq!(
            load.rank(false, 4, Instant::now()),
            (false, 0, 4, 0),
            "stale"
        );
    }
}
