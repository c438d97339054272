//! Putting the gateway together: `run(listener, config, shutdown)`.
//!
//! The caller binds the listener, so `main` and every test share this one
//! entry point and tests can bind port 0.
//!
//! Connections are served with hyper directly rather than through tonic's
//! `Server`: tonic's server arms its own timer from `grpc-timeout` and
//! answers CANCELLED when it fires, racing the gateway's DEADLINE_EXCEEDED.
//! Owning the accept loop also sets TCP_NODELAY on every connection and
//! lets shutdown be bounded: stop accepting, let calls in flight finish for
//! the grace period, then cut what is left (which cancels those upstream
//! requests).
//!
//! The gRPC port also answers grpc-web (for browsers); the OpenAI-compatible
//! HTTP front, when `listen.http` asks for it, has a port of its own served
//! by the same loop, so it drains with the same grace period.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::service::Routes;

use crate::backend::Connectors;
use crate::config::Config;
use crate::error::GatewayError;
use crate::frontend::grpc::GrpcFrontend;
use crate::frontend::{http as http_front, web};
use crate::proto::llm_service_server::LlmServiceServer;
use crate::reload::Reloader;
use crate::route::{Router, RoutingTable, SharedTable};
use crate::stack;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routing table could not be built.
    #[error("building the routing table: {0}")]
    Table(#[from] GatewayError),
    /// The routing file cannot be watched for changes.
    #[error("watching the routing file: {0}")]
    Watch(#[from] notify::Error),
    /// A signal handler could not be installed.
    #[error("installing the SIGHUP handler: {0}")]
    Signal(#[from] std::io::Error),
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
}

/// The sockets the gateway serves, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC and grpc-web calls.
    pub grpc: TcpListener,
    /// The OpenAI-compatible HTTP front; `None` serves none.
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// gRPC only.
    fn from(grpc: TcpListener) -> Self {
        Listeners { grpc, http: None }
    }
}

/// Serves the gateway on `listener` with `config` until `shutdown`
/// completes, then drains calls in flight for `config.shutdown_grace`.
pub async fn run(
    listener: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    run_with(listener, config, Connectors::default(), shutdown).await
}

/// [`run`] with the outside world given: the HTTP client and DNS resolver
/// upstreams use (tests move DNS answers around with their own).
pub async fn run_with(
    listener: impl Into<Listeners>,
    config: Config,
    connectors: Connectors,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(config, connectors)?
        .serve(listener, shutdown)
        .await
}

// === impl Server ===

impl Server {
    /// Builds the routing table for `config` (upstreams start discovering
    /// their endpoints, so this needs a Tokio runtime).
    pub fn new(config: Config, connectors: Connectors) -> Result<Self, ServeError> {
        let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::build(
            &config,
            &connectors,
        )?));
        Ok(Server {
            config,
            table,
            connectors,
            reloader: None,
        })
    }

    /// Keeps the table in step with the routing file at `path`: `reload`
    /// on the returned reloader (or the triggers [`Server::serve_watching`]
    /// installs) applies the file.
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.reloader = Some(Arc::new(Reloader::new(
            path,
            self.config.clone(),
            self.table.clone(),
            self.connectors.clone(),
        )));
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
        listener: impl Into<Listeners>,
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
        let result = self.serve(listener, shutdown).await;
        drop(guards);
        result
    }

    /// Serves calls on `listener` until `shutdown` completes, then drains
    /// calls in flight for the configured grace period.
    pub async fn serve(
        self,
        listener: impl Into<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Listeners {
            grpc: listener,
            http,
        } = listener.into();
        let Server { config, table, .. } = self;
        let chat = stack::build(Router::new(table.clone()));
        let cors = web::cors_layer(&config.cors);
        let http_service = http.as_ref().map(|_| {
            TowerToHyperService::new(http_front::router(
                chat.clone(),
                table.clone(),
                cors.clone(),
            ))
        });
        let frontend = GrpcFrontend::new(chat, table);
        let routes = Routes::new(LlmServiceServer::new(frontend)).prepare();
        let service = TowerToHyperService::new(web::grpc_port(routes, cors));
        let builder = auto::Builder::new(TokioExecutor::new());
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
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (service, accepted) = (service.clone(), (stream, peer));
                    spawn_connection(&mut connections, &builder, &graceful, accepted, service);
                }
                accepted = accept_http(http.as_ref()) => {
                    if let Some(service) = http_service.clone() {
                        spawn_connection(&mut connections, &builder, &graceful, accepted, service);
                    }
                }
                Some(_) = connections.join_next() => {}
                () = &mut shutdown => break,
            }
        }
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
        Ok(())
    }
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one accepted connection with `service` on its own task, watched
/// by `graceful` so shutdown drains it with every other.
fn spawn_connection<S, B>(
    connections: &mut JoinSet<()>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    (stream, peer): (tokio::net::TcpStream, std::net::SocketAddr),
    service: S,
) where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Tokens must leave the moment they are produced.
    let _ = stream.set_nodelay(true);
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    connections.spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%peer, %err, "connection ended with an error");
        }
    });
}
