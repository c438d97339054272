//! `routes:`: the model names callers send, the weighted pools that serve
//! each, and where a failed call falls back to.

use std::collections::HashMap;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::check::{Checker, Problem};
use super::limits::{CallerLimits, RawCallerLimits};
use super::placement::{PrefixAffinity, RawBalance};
use super::queue::{QueueConfig, RawQueue};
use super::resilience::{RawRetry, RetryPolicy};

// === raw (as written) ===

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// The name clients send.
    pub(crate) model: Spanned<String>,
    /// Other names for the same route.
    #[serde(default)]
    pub(crate) aliases: Vec<Spanned<String>>,
    /// Where calls go, by weight.
    pub(crate) pools: Vec<Spanned<RawPool>>,
    /// Retries on other endpoints and pools.
    #[serde(default)]
    pub(crate) retry: Option<Spanned<RawRetry>>,
    /// Models tried in order when every pool of this route failed.
    #[serde(default)]
    pub(crate) fallback: Vec<Spanned<String>>,
    /// A larger-context model for calls this route's model rejects as too
    /// long.
    #[serde(default)]
    pub(crate) context_fallback: Option<Spanned<String>>,
    /// Rate and concurrency limits on the route, across all callers.
    #[serde(default)]
    pub(crate) limits: Option<Spanned<RawCallerLimits>>,
    /// How its pools pick endpoints beyond load (prefix affinity).
    #[serde(default)]
    pub(crate) balance: Option<Spanned<RawBalance>>,
    /// Where calls wait when every endpoint is at `max_in_flight`.
    #[serde(default)]
    pub(crate) queue: Option<Spanned<RawQueue>>,
}

/// One entry of a route's `pools:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    /// The upstream's name under `upstreams:`.
    pub(crate) upstream: Spanned<String>,
    /// Share of the route's calls; 0 disables the pool.
    #[serde(default)]
    pub(crate) weight: Option<Spanned<u32>>,
    /// The model name the upstream knows.
    #[serde(default)]
    pub(crate) model: Option<Spanned<String>>,
}

// === validated ===

/// One route: a model name and the pools that serve it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouteConfig {
    /// The name clients send.
    pub model: String,
    /// Other names for the same route.
    pub aliases: Vec<String>,
    /// Where its calls go.
    pub pools: Vec<PoolConfig>,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// Models tried in order when every pool of this route failed.
    pub fallback: Vec<String>,
    /// A larger-context model for calls rejected as too long.
    pub context_fallback: Option<String>,
    /// Limits on the route across all its callers.
    pub limits: CallerLimits,
    /// Prefix affinity for each of its pools, when set.
    pub prefix_affinity: Option<PrefixAffinity>,
    /// Calls wait here for a slot when every endpoint is at
    /// `max_in_flight`; without it they fail at once.
    pub queue: Option<QueueConfig>,
}

/// One pool of a route.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PoolConfig {
    /// The upstream's name.
    pub upstream: String,
    /// Share of the route's calls.
    pub weight: u32,
    /// The model name the upstream knows.
    pub model: String,
}

// === checks ===

impl Checker {
    /// `routes:`: each route, then each fallback against every routed
    /// name (a fallback may name a route further down the file).
    pub(super) fn routes(
        &mut self,
        raw: Spanned<Vec<Spanned<RawRoute>>>,
        known_upstreams: &[&str],
    ) -> Vec<RouteConfig> {
        if raw.value.is_empty() {
            self.report(
                &raw,
                "routes: is empty; add at least one route so the gateway can serve a model",
            );
        }
        let mut names_seen: HashMap<String, Location> = HashMap::new();
        let fallbacks: Vec<Fallbacks> = raw.value.iter().map(Fallbacks::of).collect();
        let routes = raw
            .value
            .into_iter()
            .map(|route| self.route(route, known_upstreams, &mut names_seen))
            .collect();
        for fallbacks in fallbacks {
            self.fallbacks(fallbacks, &names_seen);
        }
        routes
    }

    /// A route's `fallback:` and `context_fallback:` name other routed
    /// models.
    fn fallbacks(&mut self, route: Fallbacks, names_seen: &HashMap<String, Location>) {
        let model = &route.model;
        for target in route.targets {
            if route.own.contains(&target.value) {
                self.report(
                    &target,
                    format!("route '{model}': a route cannot fall back to itself"),
                );
            } else if !names_seen.contains_key(&target.value) {
                self.report(
                    &target,
                    format!(
                        "route '{model}': fallback '{}' is not a routed model; add a route \
                         for it or remove it",
                        target.value
                    ),
                );
            }
        }
    }

    fn route(
        &mut self,
        raw: Spanned<RawRoute>,
        known_upstreams: &[&str],
        names_seen: &mut HashMap<String, Location>,
    ) -> RouteConfig {
        let route = raw.value;
        let model = route.model.value.clone();
        for name in std::iter::once(&route.model).chain(route.aliases.iter()) {
            if name.value.is_empty() {
                self.report(name, "a model name cannot be empty");
            } else if let Some(first) = names_seen.get(&name.value) {
                self.report(
                    name,
                    format!(
                        "model name '{}' is already routed (line {}); each name may \
                         appear once across all routes and aliases",
                        name.value,
                        first.line()
                    ),
                );
            } else {
                names_seen.insert(name.value.clone(), name.referenced);
            }
        }
        if route.pools.is_empty() {
            self.problems.push(Problem::at(
                Some(raw.referenced),
                format!("route '{model}': pools: is empty; add at least one pool"),
            ));
        }
        let pools: Vec<PoolConfig> = route
            .pools
            .into_iter()
            .map(|pool| self.pool(&model, pool.value, known_upstreams))
            .collect();
        if !pools.is_empty() && pools.iter().all(|p| p.weight == 0) {
            self.problems.push(Problem::at(
                Some(route.model.referenced),
                format!(
                    "route '{model}': every pool has weight 0, so no call could be served; \
                     give at least one pool a positive weight"
                ),
            ));
        }
        let retry = route
            .retry
            .as_ref()
            .map(|r| self.retry(&model, &r.value))
            .unwrap_or_default();
        let limits = route
            .limits
            .as_ref()
            .map(|l| self.caller_limits(&format!("route '{model}': limits"), &l.value))
            .unwrap_or_default();
        let prefix_affinity = route.balance.as_ref().and_then(|b| self.balance(&model, b));
        let queue = route.queue.as_ref().and_then(|q| self.queue(&model, q));
        RouteConfig {
            model,
            aliases: route.aliases.into_iter().map(|a| a.value).collect(),
            pools,
            retry,
            fallback: route.fallback.iter().map(|f| f.value.clone()).collect(),
            context_fallback: route.context_fallback.as_ref().map(|f| f.value.clone()),
            limits,
            prefix_affinity,
            queue,
        }
    }

    fn pool(&mut self, route: &str, raw: RawPool, known_upstreams: &[&str]) -> PoolConfig {
        if !known_upstreams.contains(&raw.upstream.value.as_str()) {
            self.report(
                &raw.upstream,
                format!(
                    "route '{route}': unknown upstream '{}'; defined upstreams: {}",
                    raw.upstream.value,
                    if known_upstreams.is_empty() {
                        "none".to_string()
                    } else {
                        known_upstreams.join(", ")
                    }
                ),
            );
        }
        PoolConfig {
            upstream: raw.upstream.value,
            weight: raw.weight.map_or(1, |w| w.value),
            model: raw.model.map_or_else(|| route.to_string(), |m| m.value),
        }
    }
}

/// A route's fallback targets, taken before the route is consumed.
struct Fallbacks {
    /// The route's model name, for messages.
    model: String,
    /// Its own names: falling back to one of them is a loop.
    own: Vec<String>,
    /// Every `fallback:` and `context_fallback:` entry.
    targets: Vec<Spanned<String>>,
}

// === impl Fallbacks ===

impl Fallbacks {
    fn of(route: &Spanned<RawRoute>) -> Self {
        let route = &route.value;
        Fallbacks {
            model: route.model.value.clone(),
            own: std::iter::once(&route.model)
                .chain(&route.aliases)
                .map(|n| n.value.clone())
                .collect(),
            targets: route
                .fallback
                .iter()
                .chain(&route.context_fallback)
                .cloned()
                .collect(),
        }
    }
}
