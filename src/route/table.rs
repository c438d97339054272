//! The routing table: model name → route → weighted pools of upstreams.
//!
//! A table is built whole from a validated config and never changes after;
//! a reload builds a new one and swaps it in. A call looks its route up once
//! and holds the `Arc`s it got to the end, so a swap never changes a call in
//! flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tower::retry::budget::TpsBudget;

use super::queue::Queue;
use crate::balance::{Connectors, SlotListener, Upstream};
use crate::config::{Config, Continuation, PrefixAffinity, RetryPolicy};
use crate::error::GatewayError;

/// How long a call counts toward a route's retry budget.
const RETRY_BUDGET_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// Retries a route may always make per second, however few calls it has,
/// so a quiet route still gets its first failures retried.
const RETRY_BUDGET_FLOOR: u32 = 10;

/// An immutable snapshot of where each model is served.
#[derive(Debug)]
pub(crate) struct RoutingTable {
    /// Every routable name (route models and aliases) to its route.
    routes: HashMap<String, Arc<Route>>,
    /// Routes in file order, for listing.
    listing: Vec<Arc<Route>>,
    /// Upstreams by name, shared by the pools that use them.
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// Where calls for one model go, and what to do when they fail.
#[derive(Debug)]
pub(crate) struct Route {
    /// The name clients send; shared, because every call carries it on as
    /// its route label.
    pub model: Arc<str>,
    /// Other names for the route.
    pub aliases: Vec<String>,
    /// Pools with a positive weight; calls pick among them by weight.
    pub pools: Vec<Pool>,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// Caps retries to a share of calls.
    pub budget: TpsBudget,
    /// Models tried in order when every pool failed.
    pub fallback: Vec<String>,
    /// A larger-context model for calls rejected as too long.
    pub context_fallback: Option<String>,
    /// Whether a stream that breaks mid-answer could be continued: some
    /// pool's upstream continues answers, or a fallback might.
    pub continues: bool,
    /// Calls with the same prompt prefix go to the same endpoint of a pool.
    pub prefix_affinity: Option<PrefixAffinity>,
    /// Where calls wait when every endpoint is at `max_in_flight`; told
    /// by each pool's upstream when a slot frees.
    pub queue: Option<Arc<Queue>>,
}

/// One weighted share of a route.
#[derive(Debug)]
pub(crate) struct Pool {
    /// Who serves it.
    pub upstream: Arc<Upstream>,
    /// Its share of the route's calls.
    pub weight: u32,
    /// The model name the upstream knows.
    pub model: Arc<str>,
}

// === impl RoutingTable ===

impl RoutingTable {
    /// Builds the table for a validated config, starting each upstream's
    /// endpoint discovery.
    pub(crate) fn build(config: &Config, connectors: &Connectors) -> Result<Self, GatewayError> {
        Self::rebuild(config, connectors, None)
    }

    /// Builds the table for `config`, taking over from `previous` every
    /// upstream whose definition did not change, with its endpoints,
    /// connections, load and health. Upstreams that changed are built anew;
    /// those that are gone live on only in the calls still using them.
    pub(crate) fn rebuild(
        config: &Config,
        connectors: &Connectors,
        previous: Option<&RoutingTable>,
    ) -> Result<Self, GatewayError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, up)| {
                let kept = previous
                    .and_then(|table| table.upstream(name))
                    .filter(|old| old.config() == up)
                    .cloned();
                let upstream = match kept {
                    Some(old) => old,
                    None => Arc::new(Upstream::new(up, connectors)?),
                };
                Ok((name.clone(), upstream))
            })
            .collect::<Result<BTreeMap<_, _>, GatewayError>>()?;
        let mut routes = HashMap::new();
        let mut listing = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let pools: Vec<Pool> = route
                .pools
                .iter()
                .filter(|pool| pool.weight > 0)
                .filter_map(|pool| {
                    Some(Pool {
                        upstream: upstreams.get(&pool.upstream)?.clone(),
                        weight: pool.weight,
                        model: Arc::from(pool.model.as_str()),
                    })
                })
                .collect();
            let model: Arc<str> = Arc::from(route.model.as_str());
            let queue = route.queue.map(|config| {
                let queue = Queue::new(model.clone(), config);
                for pool in &pools {
                    let listener: Arc<dyn SlotListener> = queue.clone();
                    pool.upstream.listen_for_slots(Arc::downgrade(&listener));
                }
                queue
            });
            let route = Arc::new(Route {
                model,
                aliases: route.aliases.clone(),
                retry: route.retry,
                budget: TpsBudget::new(
                    RETRY_BUDGET_WINDOW,
                    RETRY_BUDGET_FLOOR,
                    (route.retry.budget_percent / 100.0) as f32,
                ),
                continues: !route.fallback.is_empty()
                    || pools
                        .iter()
                        .any(|p| p.upstream.config().continuation != Continuation::None),
                pools,
                fallback: route.fallback.clone(),
                context_fallback: route.context_fallback.clone(),
                prefix_affinity: route.prefix_affinity,
                queue,
            });
            for name in
                std::iter::once(&*route.model).chain(route.aliases.iter().map(String::as_str))
            {
                routes.insert(name.to_string(), route.clone());
            }
            listing.push(route);
        }
        Ok(RoutingTable {
            routes,
            listing,
            upstreams,
        })
    }

    /// The route for a model name or alias.
    pub(crate) fn lookup(&self, model: &str) -> Option<&Arc<Route>> {
        self.routes.get(model)
    }

    /// Every route, in file order.
    pub(crate) fn routes(&self) -> &[Arc<Route>] {
        &self.listing
    }

    /// An upstream by name.
    pub(crate) fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }
}

// === impl Route ===

impl Route {
    /// Picks a pool for one attempt, by weight among the pools whose
    /// upstream has an endpoint that can take a call, avoiding those whose
    /// bit is set in `tried` while another is available. `None` when every
    /// pool is down.
    pub(crate) fn pick_pool(&self, tried: u64) -> Option<usize> {
        if let [only] = self.pools.as_slice() {
            return only.upstream.is_available(&only.model).then_some(0);
        }
        let eligible = |i: usize, avoid_tried: bool| {
            let was_tried = 1u64
                .checked_shl(i as u32)
                .is_some_and(|bit| tried & bit != 0);
            let pool = &self.pools[i];
            !(avoid_tried && was_tried) && pool.upstream.is_available(&pool.model)
        };
        let weight_of = |avoid_tried: bool| -> u64 {
            (0..self.pools.len())
                .filter(|&i| eligible(i, avoid_tried))
                .map(|i| u64::from(self.pools[i].weight))
                .sum()
        };
        let (avoid_tried, total) = match weight_of(true) {
            0 => (false, weight_of(false)),
            total => (true, total),
        };
        if total == 0 {
            return None;
        }
        let mut ticket = rand::random_range(0..total);
        (0..self.pools.len())
            .filter(|&i| eligible(i, avoid_tried))
            .find(|&i| {
                let weight = u64::from(self.pools[i].weight);
                if ticket < weight {
                    true
                } else {
                    ticket -= weight;
                    false
                }
            })
            // Availability changed between the two passes: take any.
            .or_else(|| (0..self.pools.len()).find(|&i| eligible(i, false)))
    }
}
