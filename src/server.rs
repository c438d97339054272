//! Putting the gateway together: `run(listeners, config, shutdown)`, or a
//! [`Server`] when the routing file should reload live.
//!
//! The caller binds the listeners, so `main` and every test share this one
//! entry point and tests can bind port 0. The gRPC port serves
//! `llm.v1.LLMService` beside the standard health and reflection services
//! (so `grpcurl` and health checkers work); the optional admin port serves
//! metrics and probes.
//!
//! Connections are served with hyper directly rather than through tonic's
//! `Server`: tonic's server arms its own timer from `grpc-timeout` and
//! answers CANCELLED when it fires, racing the gateway's DEADLINE_EXCEEDED.
//! Owning the accept loop also sets TCP_NODELAY on every connection and
//! lets shutdown be bounded: stop accepting, let calls in flight finish for
//! the grace period, then cut what is left (which cancels those upstream
//! requests). Health turns NOT_SERVING (and `/readyz` 503) the moment
//! shutdown begins, and the admin port stays up until the drain is over.
//! Each connection's TLS handshake and limits are in `conn`; with serving
//! threads (`llmgate serve` always has them) each accepted connection is
//! handed to one of them and served there whole (`threads`).
//!
//! The gRPC port also answers grpc-web (for browsers); the OpenAI-compatible
//! HTTP front, when `listen.http` asks for it, has a port of its own served
//! by the same loop, so it drains with the same grace period.

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

pub(crate) mod admin;
mod conn;
mod threads;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tonic::service::Routes;

use crate::balance::Connectors;
use crate::config::Config;
use crate::error::GatewayError;
use crate::frontend::body::{BodyLimits, BodyRules, BufferBudget};
use crate::frontend::door::Door;
use crate::frontend::edge::Edge;
use crate::frontend::grpc::GrpcFrontend;
use crate::frontend::{http as http_front, web};
use crate::proto::llm_service_server::LlmServiceServer;
use crate::reload::Reloader;
use crate::route::{Router, RoutingTable, SharedTable};
use crate::stack;
use crate::stack::guard::{Guard, SharedGuard};
use crate::state::SharedLimits;
use crate::telemetry::health::{Health, HealthService};
use crate::telemetry::metrics;
use admin::AdminKey;
use conn::Acceptor;
use threads::ServingThreads;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routing table could not be built.
    #[error("building the routing table: {0}")]
    Table(#[from] GatewayError),
    /// The metrics recorder could not be built.
    #[error(transparent)]
    Metrics(#[from] metrics::InstallError),
    /// The reflection service could not read the gateway's descriptors.
    #[error("building gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The routing file cannot be watched for changes.
    #[error("watching the routing file: {0}")]
    Watch(#[from] notify::Error),
    /// A signal handler could not be installed.
    #[error("installing the SIGHUP handler: {0}")]
    Signal(#[from] std::io::Error),
    /// The front listener's TLS settings cannot be used.
    #[error("listen.tls: {0}")]
    Tls(String),
    /// The shared limit store's settings cannot be used.
    #[error("state.redis: {0}")]
    State(String),
    /// The serving threads could not be started.
    #[error("starting the serving threads: {0}")]
    Threads(std::io::Error),
}

/// The sockets the gateway serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC and grpc-web calls.
    pub grpc: TcpListener,
    /// The OpenAI-compatible HTTP front; `None` serves none.
    pub http: Option<TcpListener>,
    /// `/metrics`, `/healthz`, `/readyz` and `POST /-/reload`; `None`
    /// serves no admin port (and records no metrics).
    pub admin: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// gRPC only.
    fn from(grpc: TcpListener) -> Self {
        Listeners {
            grpc,
            http: None,
            admin: None,
        }
    }
}

/// A gateway ready to serve: its live routing table and, when it serves a
/// routing file, the reloader that keeps the table in step with the file.
pub struct Server {
    /// The configuration it started with.
    config: Config,
    /// The table in force.
    table: SharedTable,
    /// What upstreams are built with, on reloads too.
    connectors: Connectors,
    /// Reloads the routing file, when there is one.
    reloader: Option<Arc<Reloader>>,
    /// Who may call and how much: keys and limits, swapped on reload.
    guard: SharedGuard,
    /// Limits counted across replicas, when `state.redis` is set; kept
    /// (connection, leases) across reloads.
    shared: Option<Arc<SharedLimits>>,
    /// Accepts connections: plain TCP or TLS, with connection limits.
    acceptor: Acceptor,
    /// The key `POST /-/reload` needs; without one it is off.
    admin_key: Option<AdminKey>,
    /// Threads that serve connections, each with a runtime of its own;
    /// `None` serves them on the runtime `serve` runs on.
    serving_threads: Option<NonZeroUsize>,
}

/// Serves the gateway on `listeners` with `config` until `shutdown`
/// completes, then drains calls in flight for `config.shutdown_grace`.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run_with(listeners, config, Connectors::default(), shutdown).await
}

/// [`run`] with the outside world given: the HTTP client and DNS resolver
/// upstreams use (tests move DNS answers around with their own).
pub async fn run_with(
    listeners: impl Into<Listeners>,
    config: Config,
    connectors: Connectors,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(config, connectors)?
        .serve(listeners, shutdown)
        .await
}

// === impl Server ===

impl Server {
    /// Builds the routing table for `config` (upstreams start discovering
    /// their endpoints, so this needs a Tokio runtime).
    pub fn new(config: Config, connectors: Connectors) -> Result<Self, ServeError> {
        // The recorder first: the table's endpoints register their series
        // as they are built, and a series registered before the recorder is
        // installed records nothing.
        if config.listen.metrics.is_some() {
            metrics::install()?;
        }
        let built = Arc::new(RoutingTable::build(&config, &connectors)?);
        let guard = Arc::new(ArcSwap::from_pointee(
            Guard::build(&config, None).serving(&built),
        ));
        let table: SharedTable = Arc::new(ArcSwap::new(built));
        let acceptor = Acceptor::new(&config).map_err(ServeError::Tls)?;
        let shared = config
            .state
            .redis
            .as_ref()
            .map(|redis| SharedLimits::connect(redis, &config))
            .transpose()
            .map_err(|err| ServeError::State(err.to_string()))?;
        Ok(Server {
            config,
            table,
            connectors,
            reloader: None,
            guard,
            shared,
            acceptor,
            admin_key: None,
            serving_threads: None,
        })
    }

    /// Allows `POST /-/reload` on the admin port to callers presenting
    /// `key` (off without one).
    pub fn admin_key(mut self, key: Option<AdminKey>) -> Self {
        self.admin_key = key;
        self
    }

    /// Serves connections on `count` threads, each running a
    /// single-threaded runtime of its own, instead of on the runtime
    /// `serve` runs on (see `server::threads` for why). Accepting,
    /// health, reloads and the admin port stay on that runtime.
    pub fn serving_threads(mut self, count: NonZeroUsize) -> Self {
        self.serving_threads = Some(count);
        self
    }

    /// Keeps the table in step with the routing file at `path`: `reload` on
    /// the returned reloader (or the triggers [`Server::serve_watching`]
    /// installs, or `POST /-/reload` on the admin port) applies the file.
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.reloader = Some(Arc::new(
            Reloader::new(
                path,
                self.config.clone(),
                self.table.clone(),
                self.connectors.clone(),
            )
            .guarding(self.guard.clone())
            .sharing(self.shared.clone()),
        ));
        self
    }

    /// The reloader, when the server serves a routing file.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.reloader.clone()
    }

    /// Like [`Server::serve`], also reloading the routing file when it
    /// changes on disk (if `watch`) and on SIGHUP.
    pub async fn serve_watching(
        self,
        listeners: impl Into<Listeners>,
        watch: bool,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let mut guards: Vec<Box<dyn Send>> = Vec::new();
        if let Some(reloader) = &self.reloader {
            if watch {
                guards.push(Box::new(reloader.watch()?));
            }
            #[cfg(unix)]
            guards.push(Box::new(reloader.reload_on_sighup()?));
        }
        let result = self.serve(listeners, shutdown).await;
        drop(guards);
        result
    }

    /// Serves calls until `shutdown` completes, then drains calls in flight
    /// for the configured grace period.
    pub async fn serve(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Server {
            config,
            table,
            reloader,
            guard,
            shared,
            acceptor,
            admin_key,
            serving_threads,
            ..
        } = self;
        let serving = serving_threads
            .map(ServingThreads::start)
            .transpose()
            .map_err(ServeError::Threads)?;
        for warning in crate::config::warnings(&config) {
            tracing::warn!("{warning}");
        }
        let Listeners {
            grpc: listener,
            http,
            admin: admin_listener,
        } = listeners.into();
        // Installed before the first call so no call goes unrecorded.
        let prometheus = admin_listener
            .as_ref()
            .map(|_| metrics::install())
            .transpose()?;
        metrics::config_generation(reloader.as_ref().map_or(1, |r| r.generation()));
        let (health, health_service) = Health::new().await;
        let chat = stack::build(Router::new(table.clone()), guard.clone(), shared);
        let edge = Edge::new(chat, table, guard);
        let cors = web::cors_layer(&config.cors);
        let bodies = BodyRules {
            limits: body_limits(&config),
            budget: BufferBudget::new(config.limits.max_buffered_bytes),
        };
        let http_service = http.as_ref().map(|_| {
            TowerToHyperService::new(http_front::router(
                edge.clone(),
                bodies.clone(),
                cors.clone(),
            ))
        });
        let routes = grpc_routes(edge, &config, bodies, health_service)?.prepare();
        let service = TowerToHyperService::new(web::grpc_port(routes, cors));
        if acceptor.is_tls() {
            tracing::info!("serving TLS on the front listener");
        }
        health.serving().await;
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = match (admin_listener, prometheus) {
            (Some(listener), Some(prometheus)) => Some(tokio::spawn(admin::serve(
                listener,
                Acceptor::plain(config.limits.connection),
                prometheus,
                health.clone(),
                reloader.clone(),
                admin_key,
                async {
                    let _ = admin_stopped.await;
                },
            ))),
            _ => None,
        };
        let http_acceptor = acceptor.for_another_listener();
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors or a connection reset
                            // before accept: not fatal; back off briefly so a
                            // persistent error does not spin a core.
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let Some(permit) = acceptor.admit(peer) else { continue };
                    let (acceptor, service) = (acceptor.clone(), service.clone());
                    let watcher = graceful.watcher();
                    spawn_connection(&mut connections, serving.as_ref(), stream, move |stream| {
                        acceptor.serve(stream, peer, service, watcher, permit)
                    });
                }
                (stream, peer) = accept_http(http.as_ref()) => {
                    let Some(permit) = http_acceptor.admit(peer) else { continue };
                    if let Some(service) = http_service.clone() {
                        let acceptor = http_acceptor.clone();
                        let watcher = graceful.watcher();
                        spawn_connection(&mut connections, serving.as_ref(), stream, move |stream| {
                            acceptor.serve(stream, peer, service, watcher, permit)
                        });
                    }
                }
                Some(_) = connections.join_next() => {}
                () = &mut shutdown => break,
            }
        }
        // Turn away new calls first (health checkers and the kubelet see it at
        // once), then stop accepting.
        health.shutting_down().await;
        drop(listener);
        drop(http);
        tracing::info!(
            grace = ?config.shutdown_grace,
            calls = graceful.count(),
            "shutting down: no new connections, draining calls in flight"
        );
        if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; cutting the calls still in flight");
        }
        connections.shutdown().await;
        if let Some(admin) = admin {
            let _ = stop_admin.send(());
            // A scraper holding its connection open must not hold the exit.
            if tokio::time::timeout(ADMIN_DRAIN, admin).await.is_err() {
                tracing::debug!("admin connections still open at exit; closed");
            }
        }
        Ok(())
    }
}

/// Serves the accepted `stream` with `serve`: on the next serving thread
/// when there are any (the socket moves to that thread's runtime, so its
/// readiness is polled where its calls run), else on this runtime.
fn spawn_connection<F, Fut>(
    connections: &mut JoinSet<()>,
    threads: Option<&ServingThreads>,
    stream: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(threads) = threads else {
        connections.spawn(serve(stream));
        return;
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(%err, "cannot hand a connection to a serving thread");
            return;
        }
    };
    connections.spawn_on(
        async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(err) => tracing::warn!(%err, "cannot serve a connection on its thread"),
            }
        },
        threads.next(),
    );
}

/// The pause after a failed accept (out of file descriptors, or a
/// connection reset before accept): not fatal, but a persistent error
/// must not spin a core.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// How long the admin listener may take to close after the calls drained.
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

/// Every gRPC service on the gRPC port: the gateway itself, health, and
/// reflection (v1, and v1alpha for older grpcurl builds) over the
/// gateway's and the health service's descriptors.
/// Each sits behind its [`Door`]: bodies held to the configured limits,
/// and the gateway's own service checks keys before reading one.
fn grpc_routes(
    edge: Edge,
    config: &Config,
    bodies: BodyRules,
    health: HealthService,
) -> Result<Routes, ServeError> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let llm = LlmServiceServer::new(GrpcFrontend::new(edge.clone()))
        .max_decoding_message_size(config.limits.max_request_size);
    Ok(Routes::new(Door::keyed(llm, bodies.clone(), edge))
        .add_service(Door::open(health, bodies.clone()))
        .add_service(Door::open(reflection().build_v1()?, bodies.clone()))
        .add_service(Door::open(reflection().build_v1alpha()?, bodies)))
}

/// The next connection on the HTTP front's listener; never, when there is
/// none. A failed accept is retried after a pause, as on the gRPC port.
async fn accept_http(
    listener: Option<&TcpListener>,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(err) => {
                tracing::warn!(%err, "accept failed on the HTTP port");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// What every request body is held to, on both fronts (see
/// [`crate::frontend::body`]).
fn body_limits(config: &Config) -> BodyLimits {
    BodyLimits {
        max_message: config.limits.max_request_size,
        idle: config.limits.connection.request_idle_timeout,
    }
}
