//! The balancer of one upstream: power of two choices over live load.
//!
//! Each call samples two ready endpoints and takes the less loaded
//! (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
//! 2001): nearly as good as asking every endpoint, at the cost of two
//! looks. Every call picks on its own, never per connection: that is what
//! spreads calls arriving on one long-lived HTTP/2 connection over every
//! server of a pool.
//!
//! Readiness depends on the call: an endpoint may be ejected for one model
//! and serve the others, so the pick looks at the call's model. That is why
//! this is not tower's `p2c::Balance`, whose readiness is one per endpoint
//! and which waits, without limit, while none is ready. Here the pick is a
//! few atomic loads on the caller's own task (no queue, no task hop), and
//! "nothing ready" is an immediate UNAVAILABLE that retries and fallbacks
//! above act on within the caller's deadline.

use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::affinity;
use super::discover::{self, Resolve};
use super::endpoint::Endpoint;
use super::health::{EndpointSnapshot, EndpointState, PoolHealth};
use super::probe;
use crate::backend::http::HttpClient;
use crate::backend::{Backend, Binding, EndpointCall};
use crate::chat::ChatStream;
use crate::config::{Discovery, EndpointPolicy};
use crate::error::GatewayError;
use crate::telemetry::metrics::{self, EndpointMetrics};

/// The endpoints of one upstream and the balancer over them.
pub(crate) struct Balancer {
    /// The upstream's name, for errors.
    name: Arc<str>,
    /// The endpoints calls can go to, kept in step with discovery; read on
    /// every call, so swapped rather than locked.
    endpoints: Arc<ArcSwap<Vec<Arc<Endpoint>>>>,
    /// Every endpoint's state.
    pool: Arc<PoolHealth>,
    /// Background discovery; stops when the balancer is dropped.
    _discovery: Option<AbortOnDrop>,
}

/// How a call picks its endpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pick {
    /// P2C among the endpoints ready for the call's model.
    Ready,
    /// The endpoint ranked first for the prompt's prefix, unless it is
    /// loaded past the bound; then the next, and so on (bounded-load
    /// consistent hashing); P2C when none is within it.
    Affine(Affinity),
    /// Every endpoint is out: the one out the longest, Envoy's panic mode.
    /// A call sent there either finds it back (and readmits it) or fails as
    /// it would have anyway.
    Panic,
}

/// What prefix affinity needs of a call: the hash of its prompt's leading
/// part, the load bound, and the route to count the outcome under.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Affinity {
    /// [`prefix_key`](super::prefix_key) of the prompt.
    pub key: u64,
    /// The preferred endpoint takes the call while its calls in flight,
    /// with this one, stay within this factor of the pool's mean.
    pub max_load_factor: f64,
    /// The route, for `llmgate_prefix_affinity_total`.
    pub route: Arc<str>,
}

/// Aborts a background task when dropped, so a table that is replaced takes
/// its tasks with it.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

/// What the balancer needs to add an endpoint.
#[derive(Clone)]
struct EndpointMaker {
    /// The upstream's name, for metric labels.
    upstream: Arc<str>,
    pool: Arc<PoolHealth>,
    endpoints: Arc<ArcSwap<Vec<Arc<Endpoint>>>>,
    policy: EndpointPolicy,
    /// Binds each new endpoint's address to a
    /// [`Dispatch`](crate::backend::Dispatch).
    backend: Backend,
    probe_client: HttpClient,
}

// === impl Balancer ===

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints.load().len())
            .finish()
    }
}

impl Balancer {
    /// Starts balancing over the endpoints `discovery` names, each bound
    /// to `backend`.
    pub(crate) fn new(
        name: &str,
        discovery: &Discovery,
        policy: &EndpointPolicy,
        backend: Backend,
        probe_client: HttpClient,
        resolver: Arc<dyn Resolve>,
    ) -> Self {
        let name: Arc<str> = Arc::from(name);
        let pool = Arc::new(PoolHealth::default());
        let endpoints = Arc::new(ArcSwap::default());
        let maker = EndpointMaker {
            upstream: name.clone(),
            pool: pool.clone(),
            endpoints: endpoints.clone(),
            policy: policy.clone(),
            backend,
            probe_client,
        };
        let discovery_task = match discovery {
            Discovery::Static(urls) => {
                for url in urls {
                    maker.insert(url.clone());
                }
                None
            }
            Discovery::Dns {
                host,
                port,
                scheme,
                interval,
            } => {
                let scheme = scheme.clone();
                let watch = discover::watch_dns(
                    resolver,
                    host.clone(),
                    *port,
                    *interval,
                    move |added, removed| {
                        for addr in removed {
                            if let Some(url) = address_url(&scheme, addr) {
                                maker.remove(&url);
                            }
                        }
                        for addr in added {
                            if let Some(url) = address_url(&scheme, addr) {
                                maker.insert(url);
                            }
                        }
                        true
                    },
                );
                Some(AbortOnDrop(tokio::spawn(watch)))
            }
        };
        Balancer {
            name,
            endpoints,
            pool,
            _discovery: discovery_task,
        }
    }

    /// Sends `call` to an endpoint chosen by `pick`: the less loaded of two
    /// ready ones, or in panic the one out the longest.
    pub(crate) fn call(
        &self,
        call: EndpointCall,
        pick: Pick,
    ) -> BoxFuture<'static, Result<ChatStream, GatewayError>> {
        let endpoints = self.endpoints.load();
        // A pick races other calls for the last slot under a cap; the
        // loser picks again among what is left.
        for _ in 0..3 {
            let now = Instant::now();
            let chosen = match &pick {
                Pick::Ready => pick_ready(&endpoints, &call.model, now),
                Pick::Affine(affinity) => pick_affine(&endpoints, &call.model, now, affinity),
                Pick::Panic => pick_panic(&endpoints, &call.model, now),
            };
            let Some(endpoint) = chosen else {
                break;
            };
            if let Some(response) = endpoint.call(call.clone()) {
                return response;
            }
        }
        // Endpoints that could serve the model but are all at their cap are
        // busy, not broken: a route's queue may wait for one of them.
        let err = if self.pool.any_admissible(&call.model) {
            GatewayError::unavailable(format!(
                "upstream '{}' has every endpoint for '{}' at max_in_flight; retry later",
                self.name, call.model
            ))
            .at_capacity()
        } else {
            GatewayError::unavailable(format!(
                "upstream '{}' has no endpoint that can take a call for '{}' now (all are \
                 ejected or failing health checks); retry later",
                self.name, call.model
            ))
        };
        futures_util::future::ready(Err(err)).boxed()
    }

    /// Whether any endpoint could take a call for `model` now; a pool
    /// without one is down, and calls go elsewhere at once.
    pub(crate) fn is_available(&self, model: &str) -> bool {
        self.pool.any_admissible(model)
    }

    /// Since when the endpoint out the longest for `model` has been out.
    pub(crate) fn oldest_out(&self, model: &str) -> Option<Instant> {
        self.pool.oldest_out(model)
    }

    /// Tells `listener` whenever a call on one of these endpoints ends.
    pub(crate) fn listen_for_slots(
        &self,
        listener: std::sync::Weak<dyn super::health::SlotListener>,
    ) {
        self.pool.listen_for_slots(listener);
    }

    /// Every endpoint's state for calls of `model`, for introspection.
    pub(crate) fn endpoints(&self, model: &str) -> Vec<EndpointSnapshot> {
        self.pool.snapshot(model)
    }
}

/// P2C among the endpoints ready for `model`: two random looks, the less
/// loaded wins. When neither look is ready (a degraded pool), every
/// endpoint is looked at once.
fn pick_ready<'a>(
    endpoints: &'a [Arc<Endpoint>],
    model: &str,
    now: Instant,
) -> Option<&'a Endpoint> {
    let ready = |e: &&Arc<Endpoint>| e.is_ready(model, now);
    let better = |a: &'a Arc<Endpoint>, b: &'a Arc<Endpoint>| {
        if b.load(model, now) < a.load(model, now) {
            b
        } else {
            a
        }
    };
    match endpoints.len() {
        0 => None,
        1 => endpoints.first().filter(ready).map(|e| &**e),
        n => {
            let first = rand::random_range(0..n);
            let second = (first + rand::random_range(1..n)) % n;
            let (a, b) = (&endpoints[first], &endpoints[second]);
            match (ready(&a), ready(&b)) {
                (true, true) => Some(&**better(a, b)),
                (true, false) => Some(&**a),
                (false, true) => Some(&**b),
                (false, false) => endpoints.iter().filter(ready).reduce(better).map(|e| &**e),
            }
        }
    }
}

/// Bounded-load rendezvous hashing (Mirrokni, Thorup, Zadimoghaddam,
/// "Consistent Hashing with Bounded Loads", 2018): endpoints ranked by a
/// hash of the prompt's prefix and each endpoint's URL, the first whose
/// calls in flight (this one included) stay within `max_load_factor` of the
/// mean takes the call. Every replica ranks the same way, and an endpoint
/// joining or leaving moves only the prefixes it ranks first for.
fn pick_affine<'a>(
    endpoints: &'a [Arc<Endpoint>],
    model: &str,
    now: Instant,
    affinity: &Affinity,
) -> Option<&'a Endpoint> {
    let mut ready: Vec<(u64, &'a Arc<Endpoint>)> = endpoints
        .iter()
        .filter(|e| e.is_ready(model, now))
        .map(|e| (affinity::rendezvous(affinity.key, e.key), e))
        .collect();
    if ready.is_empty() {
        return None;
    }
    let total: usize = ready.iter().map(|(_, e)| e.state.in_flight()).sum();
    let bound = (affinity.max_load_factor * (total + 1) as f64 / ready.len() as f64).ceil();
    ready.sort_unstable_by_key(|(score, _)| std::cmp::Reverse(*score));
    let within = |e: &Endpoint| (e.state.in_flight() + 1) as f64 <= bound;
    let (outcome, chosen) = match ready.iter().position(|(_, e)| within(e)) {
        Some(0) => ("hit", Some(&**ready[0].1)),
        Some(i) => ("spill", Some(&**ready[i].1)),
        None => ("spill", pick_ready(endpoints, model, now)),
    };
    metrics::prefix_affinity(&affinity.route, outcome);
    chosen
}

/// The endpoint out the longest for `model`, under its cap.
fn pick_panic<'a>(
    endpoints: &'a [Arc<Endpoint>],
    model: &str,
    now: Instant,
) -> Option<&'a Endpoint> {
    endpoints
        .iter()
        .filter_map(|e| Some((e.state.out_since(model, now)?, e)))
        .min_by_key(|(since, _)| *since)
        .map(|(_, e)| &**e)
}

// === impl EndpointMaker ===

impl EndpointMaker {
    /// Adds the endpoint at `url` to the pool and the balancer.
    fn insert(&self, url: http::Uri) {
        let Some(Binding { label, dispatch }) = self.backend.bind(&url) else {
            tracing::warn!(%url, "endpoint URL cannot be used; skipped");
            return;
        };
        let metrics = EndpointMetrics::new(&self.upstream, &label);
        let state =
            EndpointState::new(url.clone(), label, metrics, &self.pool, self.policy.outlier);
        if let Some(check) = &self.policy.health_check {
            tokio::spawn(probe::probe(
                Arc::downgrade(&state),
                self.probe_client.clone(),
                check.clone(),
            ));
        }
        if let Some(metrics) = &self.policy.engine_metrics {
            tokio::spawn(probe::scrape_engine(
                Arc::downgrade(&state),
                self.probe_client.clone(),
                metrics.clone(),
            ));
        }
        self.pool.insert(state.clone());
        let endpoint = Arc::new(Endpoint::new(state, dispatch, self.policy.max_in_flight));
        self.endpoints.rcu(|endpoints| {
            let mut endpoints = Vec::clone(endpoints);
            endpoints.retain(|e| e.state.url != url);
            endpoints.push(endpoint.clone());
            endpoints
        });
    }

    /// Drops the endpoint at `url`; calls in flight on it finish.
    fn remove(&self, url: &http::Uri) {
        self.pool.remove(url);
        self.endpoints.rcu(|endpoints| {
            let mut endpoints = Vec::clone(endpoints);
            endpoints.retain(|e| &e.state.url != url);
            endpoints
        });
    }
}

/// `scheme://addr` as a base URL.
fn address_url(scheme: &str, addr: std::net::SocketAddr) -> Option<http::Uri> {
    format!("{scheme}://{addr}").parse().ok()
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::health::{Outcome, Scope};
    use crate::config::OutlierPolicy;

    /// `n` endpoints whose dispatch is never called by these tests.
    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        let pool = Arc::new(PoolHealth::default());
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            ..OutlierPolicy::default()
        };
        (0..n)
            .map(|i| {
                let label: Arc<str> = Arc::from(format!("http://10.0.0.{i}:8000").as_str());
                let state = EndpointState::new(
                    label.parse().unwrap_or_default(),
                    label.clone(),
                    EndpointMetrics::new(&Arc::from("up"), &label),
                    &pool,
                    policy,
                );
                pool.insert(state.clone());
                let dispatch: crate::backend::Dispatch = Arc::new(|_| {
                    futures_util::future::ready(Err(GatewayError::unavailable("unused"))).boxed()
                });
                Arc::new(Endpoint::new(state, dispatch, None))
            })
            .collect()
    }

    fn fail(endpoint: &Endpoint, model: &str, scope: Scope) {
        assert!(endpoint.state.try_start(None));
        endpoint
            .state
            .call_ended(&Arc::from(model), Outcome::Failure(scope));
    }

    fn url(endpoint: Option<&Endpoint>) -> Option<String> {
        endpoint.map(|e| e.state.url.to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn calls_for_a_model_skip_endpoints_ejected_for_it_and_only_those() {
        let endpoints = endpoints(3);
        fail(&endpoints[0], "bad", Scope::Model);
        fail(&endpoints[1], "bad", Scope::Model);
        let now = Instant::now();
        for _ in 0..50 {
            assert_eq!(
                url(pick_ready(&endpoints, "bad", now)),
                Some(endpoints[2].state.url.to_string())
            );
        }
        let picked: std::collections::BTreeSet<_> = (0..200)
            .filter_map(|_| url(pick_ready(&endpoints, "good", now)))
            .collect();
        assert_eq!(picked.len(), 3, "every endpoint serves the other model");
    }

    #[tokio::test(start_paused = true)]
    async fn the_less_loaded_of_two_is_picked() {
        let endpoints = endpoints(2);
        for _ in 0..3 {
            assert!(endpoints[0].state.try_start(None));
        }
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(
                url(pick_ready(&endpoints, "m", now)),
                Some(endpoints[1].state.url.to_string())
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_out_none_is_ready_and_panic_takes_the_oldest_ejection() {
        let endpoints = endpoints(3);
        fail(&endpoints[2], "m", Scope::Endpoint);
        tokio::time::advance(Duration::from_millis(10)).await;
        fail(&endpoints[0], "m", Scope::Model);
        fail(&endpoints[1], "m", Scope::Model);
        let now = Instant::now();
        assert!(pick_ready(&endpoints, "m", now).is_none());
        assert_eq!(
            url(pick_panic(&endpoints, "m", now)),
            Some(endpoints[2].state.url.to_string())
        );
    }

    /// A balancer over `n` endpoints of at most `cap` calls each.
    fn balancer(n: usize, cap: u32) -> Balancer {
        let pool = Arc::new(PoolHealth::default());
        let policy = OutlierPolicy {
            consecutive_failures: 1,
            max_ejected_share: 1.0,
            ..OutlierPolicy::default()
        };
        let endpoints = (0..n)
            .map(|i| {
                let label: Arc<str> = Arc::from(format!("http://10.0.1.{i}:8000").as_str());
                let state = EndpointState::new(
                    label.parse().unwrap_or_default(),
                    label.clone(),
                    EndpointMetrics::new(&Arc::from("up"), &label),
                    &pool,
                    policy,
                );
                pool.insert(state.clone());
                let dispatch: crate::backend::Dispatch = Arc::new(|_| {
                    futures_util::future::ready(Err(GatewayError::unavailable("unused"))).boxed()
                });
                Arc::new(Endpoint::new(state, dispatch, Some(cap)))
            })
            .collect();
        Balancer {
            name: Arc::from("up"),
            endpoints: Arc::new(ArcSwap::from_pointee(endpoints)),
            pool,
            _discovery: None,
        }
    }

    fn call_for(model: &str) -> EndpointCall {
        EndpointCall {
            model: Arc::from(model),
            req: Arc::new(crate::chat::testing::request(model)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_at_capacity_says_so_and_an_ejected_one_does_not() {
        let balancer = balancer(2, 1);
        for endpoint in balancer.endpoints.load().iter() {
            assert!(endpoint.state.try_start(Some(1)));
        }
        let busy = balancer.call(call_for("m"), Pick::Ready).await.err();
        assert!(
            busy.as_ref().is_some_and(GatewayError::is_at_capacity),
            "{busy:?}"
        );
        for endpoint in balancer.endpoints.load().iter() {
            endpoint
                .state
                .call_ended(&Arc::from("m"), Outcome::Failure(Scope::Endpoint));
        }
        let down = balancer.call(call_for("m"), Pick::Ready).await.err();
        assert!(
            down.as_ref()
                .is_some_and(|e| !e.is_at_capacity() && e.message().contains("ejected")),
            "{down:?}"
        );
    }
}
