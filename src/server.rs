//! Putting the gateway together: `run(listener, config, shutdown)`.
//!
//! The caller binds the listener, so `main` and every test share this one
//! entry point and tests can bind port 0. On shutdown the gateway stops
//! accepting, lets calls in flight finish for the configured grace period,
//! then cuts whatever is left (which cancels those upstream requests).

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::backend::http;
use crate::config::Config;
use crate::error::GatewayError;
use crate::frontend::grpc::GrpcFrontend;
use crate::proto::llm_service_server::LlmServiceServer;
use crate::route::{Router, RoutingTable, SharedTable};
use crate::stack;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The routing table could not be built.
    #[error("building the routing table: {0}")]
    Table(#[from] GatewayError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the gateway on `listener` with `config` until `shutdown`
/// completes, then drains calls in flight for `config.shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let client = http::client();
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(RoutingTable::build(
        &config, &client,
    )?));
    let frontend = GrpcFrontend::new(stack::build(Router::new(table.clone())), table);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(LlmServiceServer::new(frontend))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown => {}
    }
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: no new calls, draining calls in flight");
    let _ = stop_tx.send(());
    match tokio::time::timeout(config.shutdown_grace, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!("grace period over; cutting the calls still in flight");
            Ok(())
        }
    }
}
