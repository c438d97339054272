//! The routing file's balancing and resilience settings: where endpoints
//! come from, when an endpoint is taken out, and how a route retries and
//! falls back. Every key is optional; the defaults are what a platform team
//! would pick for a fleet of GPU servers.

use std::time::Duration;

use serde_saphyr::Spanned;

use serde::Deserialize;

use super::UpstreamKind;
use super::check::Checker;

/// How often a DNS name is re-resolved when the file does not say.
pub(crate) const DEFAULT_DNS_INTERVAL: Duration = Duration::from_secs(5);

// === raw (as written) ===

/// `discover:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscover {
    /// `name:port` to resolve.
    pub(crate) dns: Spanned<String>,
    /// How often to resolve it.
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
    /// `http` or `https` for the discovered addresses.
    #[serde(default)]
    pub(crate) scheme: Option<Spanned<String>>,
}

/// `outlier:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    /// Failures in a row that eject an endpoint.
    #[serde(default)]
    pub(crate) consecutive_failures: Option<Spanned<u32>>,
    /// First ejection's length; doubles on each repeat.
    #[serde(default)]
    pub(crate) base_ejection: Option<Spanned<String>>,
    /// Longest ejection.
    #[serde(default)]
    pub(crate) max_ejection: Option<Spanned<String>>,
    /// Largest share of the endpoints that may be ejected at once.
    #[serde(default)]
    pub(crate) max_ejected_share: Option<Spanned<f64>>,
}

/// `health_check:` of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealthCheck {
    /// Path probed with GET.
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    /// Time between probes.
    #[serde(default)]
    pub(crate) interval: Option<Spanned<String>>,
    /// Longest wait for one probe.
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<String>>,
    /// Failed probes in a row that take an endpoint out.
    #[serde(default)]
    pub(crate) unhealthy_after: Option<Spanned<u32>>,
    /// Passed probes in a row that bring it back.
    #[serde(default)]
    pub(crate) healthy_after: Option<Spanned<u32>>,
}

/// `retry:` of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    /// Attempts in all, the first included.
    #[serde(default)]
    pub(crate) attempts: Option<Spanned<u32>>,
    /// First back-off between attempts.
    #[serde(default)]
    pub(crate) backoff: Option<Spanned<String>>,
    /// Retries allowed as a percentage of calls.
    #[serde(default)]
    pub(crate) budget_percent: Option<Spanned<f64>>,
}

// === validated ===

/// Where an upstream's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The `endpoints:` list, fixed for the life of the table.
    Static(Vec<http::Uri>),
    /// Every address a DNS name resolves to (a Kubernetes headless
    /// Service), re-resolved every `interval`.
    Dns {
        /// The host name to resolve.
        host: String,
        /// The port every address serves on.
        port: u16,
        /// `http` or `https`.
        scheme: String,
        /// Time between resolutions.
        interval: Duration,
    },
}

/// Per-endpoint health and admission settings of one upstream.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct EndpointPolicy {
    /// Most calls one endpoint serves at once; `None` is no cap.
    pub max_in_flight: Option<u32>,
    /// Passive ejection of failing endpoints.
    pub outlier: OutlierPolicy,
    /// Active probing, when configured.
    pub health_check: Option<HealthCheck>,
    /// The engine's own load, scraped, when configured (`load:`).
    pub engine_metrics: Option<super::EngineMetrics>,
}

/// When an endpoint that keeps failing is taken out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutlierPolicy {
    /// Failures in a row (connect errors, resets, 5xx, 429) that eject it.
    pub consecutive_failures: u32,
    /// Length of the first ejection; each repeat doubles it.
    pub base_ejection: Duration,
    /// Cap on an ejection's length.
    pub max_ejection: Duration,
    /// Largest share of a pool's endpoints ejected at once (at least one
    /// endpoint may always be ejected), so a bad deploy of the checker
    /// cannot empty a pool by itself.
    pub max_ejected_share: f64,
}

/// An active health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthCheck {
    /// Path requested with GET on each endpoint.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Longest wait for one probe.
    pub timeout: Duration,
    /// Failed probes in a row that take the endpoint out.
    pub unhealthy_after: u32,
    /// Passed probes in a row that bring it back.
    pub healthy_after: u32,
}

/// How a route retries a failed call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub attempts: u32,
    /// Back-off before the first retry; doubled each time, with jitter.
    pub backoff: Duration,
    /// Retries allowed, as a percentage of calls (over ten seconds), so an
    /// outage across the fleet does not multiply its load.
    pub budget_percent: f64,
}

// === defaults ===

impl Default for OutlierPolicy {
    fn default() -> Self {
        OutlierPolicy {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(25),
            budget_percent: 20.0,
        }
    }
}

impl HealthCheck {
    /// The probe path each kind of server answers cheaply.
    pub(crate) fn default_path(kind: UpstreamKind) -> &'static str {
        match kind {
            // vLLM's `/health`; other OpenAI-compatible servers that lack it
            // can set `path: /v1/models`.
            UpstreamKind::OpenAi | UpstreamKind::Sim => "/health",
            UpstreamKind::Ollama => "/api/version",
            // Refused by the checker: a cloud API has no health path.
            UpstreamKind::Anthropic => "/v1/models",
        }
    }
}

// === checks ===

impl Checker {
    pub(super) fn discovery(
        &mut self,
        name: &str,
        raw: &Spanned<RawDiscover>,
    ) -> Option<Discovery> {
        let dns = &raw.value.dns;
        let parsed = dns
            .value
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .filter(|(host, port)| !host.is_empty() && *port > 0);
        let interval = raw
            .value
            .interval
            .as_ref()
            .map_or(Some(DEFAULT_DNS_INTERVAL), |d| self.duration(d));
        let scheme = match raw.value.scheme.as_ref() {
            None => Some("http".to_string()),
            Some(s) if s.value == "http" || s.value == "https" => Some(s.value.clone()),
            Some(s) => {
                self.report(
                    s,
                    format!(
                        "upstream '{name}': scheme must be http or https, not '{}'",
                        s.value
                    ),
                );
                None
            }
        };
        let Some((host, port)) = parsed else {
            self.report(
                dns,
                format!(
                    "upstream '{name}': dns '{}' must be name:port, such as \
                     vllm.inference.svc.cluster.local:8000",
                    dns.value
                ),
            );
            return None;
        };
        Some(Discovery::Dns {
            host: host.to_string(),
            port,
            scheme: scheme?,
            interval: interval?,
        })
    }

    pub(super) fn outlier(&mut self, name: &str, raw: &RawOutlier) -> OutlierPolicy {
        let mut policy = OutlierPolicy::default();
        if let Some(n) = &raw.consecutive_failures {
            if n.value == 0 {
                self.report(
                    n,
                    format!("upstream '{name}': consecutive_failures must be 1 or more"),
                );
            } else {
                policy.consecutive_failures = n.value;
            }
        }
        if let Some(d) = raw.base_ejection.as_ref().and_then(|d| self.duration(d)) {
            policy.base_ejection = d;
        }
        if let Some(d) = raw.max_ejection.as_ref().and_then(|d| self.duration(d)) {
            policy.max_ejection = d;
        }
        if policy.max_ejection < policy.base_ejection {
            policy.max_ejection = policy.base_ejection;
        }
        if let Some(share) = &raw.max_ejected_share {
            if (0.0..=1.0).contains(&share.value) {
                policy.max_ejected_share = share.value;
            } else {
                self.report(
                    share,
                    format!("upstream '{name}': max_ejected_share must be between 0 and 1"),
                );
            }
        }
        policy
    }

    pub(super) fn health_check(
        &mut self,
        name: &str,
        kind: Option<UpstreamKind>,
        raw: &Spanned<RawHealthCheck>,
    ) -> Option<HealthCheck> {
        if kind == Some(UpstreamKind::Sim) {
            self.report(
                raw,
                format!("upstream '{name}': health_check: does not apply to kind sim"),
            );
            return None;
        }
        if kind == Some(UpstreamKind::Anthropic) {
            self.report(
                raw,
                format!(
                    "upstream '{name}': health_check: does not apply to kind anthropic (its API \
                     has no health path); outlier ejection still takes failing endpoints out"
                ),
            );
            return None;
        }
        let raw = &raw.value;
        let path = match &raw.path {
            Some(p) if p.value.starts_with('/') => p.value.clone(),
            Some(p) => {
                self.report(p, format!("upstream '{name}': path must start with /"));
                return None;
            }
            None => HealthCheck::default_path(kind.unwrap_or(UpstreamKind::OpenAi)).to_string(),
        };
        let count = |checker: &mut Checker, raw: &Option<Spanned<u32>>, default: u32| match raw {
            Some(n) if n.value == 0 => {
                checker.report(n, format!("upstream '{name}': the count must be 1 or more"));
                default
            }
            Some(n) => n.value,
            None => default,
        };
        Some(HealthCheck {
            path,
            interval: raw
                .interval
                .as_ref()
                .and_then(|d| self.duration(d))
                .unwrap_or(Duration::from_secs(10)),
            timeout: raw
                .timeout
                .as_ref()
                .and_then(|d| self.duration(d))
                .unwrap_or(Duration::from_secs(2)),
            unhealthy_after: count(self, &raw.unhealthy_after, 2),
            healthy_after: count(self, &raw.healthy_after, 1),
        })
    }

    pub(super) fn retry(&mut self, route: &str, raw: &RawRetry) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(n) = &raw.attempts {
            if n.value == 0 {
                self.report(
                    n,
                    format!(
                        "route '{route}': attempts counts the first try, so it must be 1 or more"
                    ),
                );
            } else {
                policy.attempts = n.value;
            }
        }
        if let Some(d) = raw.backoff.as_ref().and_then(|d| self.duration(d)) {
            policy.backoff = d;
        }
        if let Some(p) = &raw.budget_percent {
            if (0.0..=1000.0).contains(&p.value) {
                policy.budget_percent = p.value;
            } else {
                self.report(
                    p,
                    format!("route '{route}': budget_percent must be between 0 and 1000"),
                );
            }
        }
        policy
    }
}
