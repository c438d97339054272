//! Placement: what the balancer knows beyond its own calls. An upstream's
//! `load:` (the engine's own load, scraped from its metrics) and a route's
//! `balance:` (prefix affinity).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::check::Checker;

/// Scrapes faster than this would cost the engine more than it tells us.
pub(crate) const MIN_LOAD_INTERVAL: Duration = Duration::from_millis(50);

// === raw (as written) ===

/// An upstream's `load:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLoad {
    /// Scrape the engine's Prometheus metrics.
    pub(crate) metrics: Option<Spanned<RawEngineMetrics>>,
}

/// `load: { metrics: ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEngineMetrics {
    /// The path scraped on each endpoint.
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    /// Time between scrapes.
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
}

/// A route's `balance:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBalance {
    /// Send a conversation back to the endpoint holding its prefix.
    #[serde(default)]
    pub(crate) prefix_affinity: Option<Spanned<RawPrefixAffinity>>,
}

/// `balance: { prefix_affinity: ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrefixAffinity {
    /// How many leading characters of the prompt are hashed.
    #[serde(default)]
    pub(crate) chars: Option<Spanned<u32>>,
    /// How far above the pool's mean load the preferred endpoint may be.
    #[serde(default)]
    pub(crate) max_load_factor: Option<Spanned<f64>>,
}

// === validated ===

/// Where to read an engine's own load (`load: { metrics }`): vLLM's and
/// SGLang's Prometheus gauges of waiting and running requests and KV-cache
/// use, which count every caller of the engine, not only this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EngineMetrics {
    /// Path on each endpoint, `/metrics` by default.
    pub path: String,
    /// Time between scrapes; a scrape older than three is not trusted.
    pub interval: Duration,
}

/// Prefix affinity (`balance: { prefix_affinity }`): calls whose prompts
/// start the same go to the same endpoint, which holds their prefix in its
/// cache, unless it is loaded past `max_load_factor` × the pool's mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PrefixAffinity {
    /// Leading characters of the prompt hashed (system message and the
    /// earliest turns).
    pub chars: u32,
    /// Bound on the preferred endpoint's load, relative to the mean.
    pub max_load_factor: f64,
}

// === checks ===

impl Checker {
    /// An upstream's `load:`.
    pub(super) fn load(&mut self, name: &str, raw: &Spanned<RawLoad>) -> Option<EngineMetrics> {
        let metrics = raw.value.metrics.as_ref()?;
        let path = match &metrics.value.path {
            Some(p) if p.value.starts_with('/') => p.value.clone(),
            Some(p) => {
                self.report(
                    p,
                    format!("upstream '{name}': load.metrics.path must start with /"),
                );
                return None;
            }
            None => "/metrics".to_string(),
        };
        let interval = match &metrics.value.interval {
            Some(raw) => self.duration_from(raw, MIN_LOAD_INTERVAL)?,
            None => Duration::from_millis(500),
        };
        Some(EngineMetrics { path, interval })
    }

    /// A route's `balance:`.
    pub(super) fn balance(
        &mut self,
        route: &str,
        raw: &Spanned<RawBalance>,
    ) -> Option<PrefixAffinity> {
        let raw = &raw.value.prefix_affinity.as_ref()?.value;
        let chars = match &raw.chars {
            Some(n) if n.value == 0 => {
                self.report(
                    n,
                    format!("route '{route}': prefix_affinity.chars must be 1 or more"),
                );
                2048
            }
            Some(n) => n.value,
            None => 2048,
        };
        let max_load_factor = match &raw.max_load_factor {
            Some(f) if !(f.value >= 1.0 && f.value <= 100.0) => {
                self.report(
                    f,
                    format!(
                        "route '{route}': max_load_factor {} must be between 1 and 100 \
                         (1.25 lets the preferred endpoint carry 25% more than the mean)",
                        f.value
                    ),
                );
                1.25
            }
            Some(f) => f.value,
            None => 1.25,
        };
        Some(PrefixAffinity {
            chars,
            max_load_factor,
        })
    }
}
