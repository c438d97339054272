//! The balancer of one upstream: power of two choices over live load.
//!
//! Each call samples two ready endpoints and takes the less loaded
//! (Mitzenmacher, "The Power of Two Choices in Randomized Load Balancing",
//! 2001): nearly as good as asking every endpoint, at the cost of two
//! looks. Every call picks on its own, never per connection: that is what
//! spreads calls arriving on one long-lived HTTP/2 connection over every
//! server of a pool. The balancer is tower's `p2c::Balance` (the maintained
//! home of the old tower-balance crate) over a discovery stream of
//! [`Endpoint`] services, shared by all calls through a `Buffer`.
//!
//! tower's `Balance` waits, without limit, while no endpoint is ready. A
//! gateway must not: a [`FailFast`] between the buffer and the balancer turns
//! "nothing ready" into an immediate UNAVAILABLE, which retries and fallbacks
//! above can act on within the caller's deadline.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::{Service, ServiceExt};

use super::discover::{self, ChangeSender, Changes, Resolve};
use super::endpoint::Endpoint;
use super::health::{EndpointSnapshot, EndpointState, PoolHealth};
use super::probe;
use crate::backend::http::HttpClient;
use crate::backend::{Backend, Binding, EndpointCall};
use crate::chat::ChatStream;
use crate::config::{Discovery, EndpointPolicy};
use crate::error::GatewayError;
use crate::telemetry::metrics::EndpointMetrics;

/// How many calls may wait for the balancer task at once. Calls only wait
/// here for the moment it takes to pick an endpoint.
const DISPATCH_QUEUE: usize = 1024;

/// The endpoints of one upstream and the balancer over them.
pub struct Balancer {
    /// The upstream's name, for errors.
    name: Arc<str>,
    /// The shared P2C balancer.
    service: Buffer<EndpointCall, BoxFuture<'static, Result<ChatStream, GatewayError>>>,
    /// Every endpoint's state.
    pool: Arc<PoolHealth>,
    /// Background discovery; stops when the balancer is dropped.
    _discovery: Option<AbortOnDrop>,
}

/// Turns "no endpoint ready" into an immediate error instead of a wait.
pub struct FailFast<S> {
    inner: S,
    /// Whether the last readiness check found nothing ready.
    unready: bool,
    /// The upstream's name, for the error.
    name: Arc<str>,
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
            .field("endpoints", &self.pool.snapshot())
            .finish()
    }
}

impl Balancer {
    /// Starts balancing over the endpoints `discovery` names, each bound
    /// to `backend`.
    pub fn new(
        name: &str,
        discovery: &Discovery,
        policy: &EndpointPolicy,
        backend: Backend,
        probe_client: HttpClient,
        resolver: Arc<dyn Resolve>,
    ) -> Self {
        let name: Arc<str> = Arc::from(name);
        let pool = Arc::new(PoolHealth::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let maker = EndpointMaker {
            upstream: name.clone(),
            pool: pool.clone(),
            policy: policy.clone(),
            backend,
            probe_client,
        };
        let discovery_task = match discovery {
            Discovery::Static(urls) => {
                for url in urls {
                    maker.insert(&tx, url.clone());
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
                                maker.pool.remove(&url);
                                let _ = tx.send(Ok(Change::Remove(url)));
                            }
                        }
                        for addr in added {
                            if let Some(url) = address_url(&scheme, addr) {
                                maker.insert(&tx, url);
                            }
                        }
                        !tx.is_closed()
                    },
                );
                Some(AbortOnDrop(tokio::spawn(watch)))
            }
        };
        let changes: Changes<Endpoint> = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let balance = FailFast {
            inner: Balance::new(changes),
            unready: false,
            name: name.clone(),
        };
        Balancer {
            name,
            service: Buffer::new(balance, DISPATCH_QUEUE),
            pool,
            _discovery: discovery_task,
        }
    }

    /// Sends `call` to the least loaded of two ready endpoints.
    pub fn call(
        &self,
        call: EndpointCall,
    ) -> impl Future<Output = Result<ChatStream, GatewayError>> + Send + 'static {
        let mut service = self.service.clone();
        let name = self.name.clone();
        async move {
            let from_box = |err: tower::BoxError| match err.downcast::<GatewayError>() {
                Ok(err) => *err,
                Err(other) => GatewayError::unavailable(format!(
                    "upstream '{name}': the balancer stopped ({other})"
                )),
            };
            service.ready().await.map_err(from_box)?;
            service.call(call).await.map_err(from_box)
        }
    }

    /// Whether any endpoint could take a call now; a pool without one is
    /// down, and calls go elsewhere at once.
    pub fn is_available(&self) -> bool {
        self.pool.any_admissible()
    }

    /// Every endpoint's state, for introspection.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.pool.snapshot()
    }
}

// === impl EndpointMaker ===

impl EndpointMaker {
    /// Adds the endpoint at `url` to the pool and the balancer.
    fn insert(&self, tx: &ChangeSender<Endpoint>, url: http::Uri) {
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
        self.pool.insert(state.clone());
        let endpoint = Endpoint::new(state, dispatch, self.policy.max_in_flight);
        let _ = tx.send(Ok(Change::Insert(url, endpoint)));
    }
}

/// `scheme://addr` as a base URL.
fn address_url(scheme: &str, addr: std::net::SocketAddr) -> Option<http::Uri> {
    format!("{scheme}://{addr}").parse().ok()
}

// === impl FailFast ===

impl<S> Service<EndpointCall> for FailFast<S>
where
    S: Service<EndpointCall, Response = ChatStream, Error = tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<ChatStream, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // Never an error either: the buffer would fail every later call.
        self.unready = match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => false,
            Poll::Ready(Err(err)) => {
                tracing::warn!(upstream = %self.name, %err, "balancer not ready");
                true
            }
            Poll::Pending => true,
        };
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: EndpointCall) -> Self::Future {
        if self.unready {
            let err = GatewayError::unavailable(format!(
                "upstream '{}' has no endpoint that can take a call now (all are ejected, \
                 failing health checks or at max_in_flight); retry later",
                self.name
            ));
            return futures_util::future::ready(Err(err)).boxed();
        }
        self.inner
            .call(call)
            .map(|result| {
                result.map_err(|err| match err.downcast::<GatewayError>() {
                    Ok(err) => *err,
                    Err(other) => GatewayError::unavailable(other.to_string()),
                })
            })
            .boxed()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
