//! The routing table: model name → route → weighted pools of upstreams.
//!
//! A table is built whole from a validated config and never changes after;
//! a reload builds a new one and swaps it in. A call looks its route up once
//! and holds the `Arc`s it got to the end, so a swap never changes a call in
//! flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::backend::Upstream;
use crate::backend::http::HttpClient;
use crate::config::Config;
use crate::error::GatewayError;

/// An immutable snapshot of where each model is served.
#[derive(Debug)]
pub struct RoutingTable {
    /// Every routable name (route models and aliases) to its route.
    routes: HashMap<String, Arc<Route>>,
    /// Routes in file order, for listing.
    listing: Vec<Arc<Route>>,
    /// Upstreams by name, shared by the pools that use them.
    upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// Where calls for one model go.
#[derive(Debug)]
pub struct Route {
    /// The name clients send; shared, because every call carries it on as
    /// its route label.
    pub model: Arc<str>,
    /// Other names for the route.
    pub aliases: Vec<String>,
    /// Pools with a positive weight; calls pick among them by weight.
    pools: Vec<Pool>,
    /// Sum of the pools' weights.
    total_weight: u64,
}

/// One weighted share of a route.
#[derive(Debug)]
pub struct Pool {
    /// Who serves it.
    pub upstream: Arc<Upstream>,
    /// Its share of the route's calls.
    pub weight: u32,
    /// The model name the upstream knows.
    pub model: Arc<str>,
}

// === impl RoutingTable ===

impl RoutingTable {
    /// Builds the table for a validated config.
    pub fn build(config: &Config, client: &HttpClient) -> Result<Self, GatewayError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|(name, up)| Ok((name.clone(), Arc::new(Upstream::new(up, client)?))))
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
            let route = Arc::new(Route {
                model: Arc::from(route.model.as_str()),
                aliases: route.aliases.clone(),
                total_weight: pools.iter().map(|p| u64::from(p.weight)).sum(),
                pools,
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
    pub fn lookup(&self, model: &str) -> Option<&Arc<Route>> {
        self.routes.get(model)
    }

    /// Every route, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.listing
    }

    /// An upstream by name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.get(name)
    }
}

// === impl Route ===

impl Route {
    /// Picks a pool for one call, by weight; `None` if no pool can serve.
    pub fn pick_pool(&self) -> Option<&Pool> {
        match self.pools.as_slice() {
            [] => None,
            [only] => Some(only),
            pools => {
                let mut ticket = rand::random_range(0..self.total_weight);
                pools.iter().find(|pool| {
                    let weight = u64::from(pool.weight);
                    if ticket < weight {
                        true
                    } else {
                        ticket -= weight;
                        false
                    }
                })
            }
        }
    }
}
