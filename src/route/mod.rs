//! Routing: which upstream serves a call, decided per call.
//!
//! The [`Router`] is the innermost tower service of the stack. It loads the
//! current [`RoutingTable`] once per call, maps the model name to its route,
//! picks a pool by weight, and hands the call to that pool's upstream.

pub mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tower::Service;

use crate::chat::{ChatRequest, ChatStream};
use crate::error::{ErrorKind, GatewayError};
pub use table::RoutingTable;

/// The live routing table, swapped whole on reload.
pub type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// Sends each call to an upstream of its model's route.
#[derive(Clone)]
pub struct Router {
    /// The table in force; read once per call.
    table: SharedTable,
}

impl Router {
    /// A router over the live `table`.
    pub fn new(table: SharedTable) -> Self {
        Router { table }
    }
}

impl Service<ChatRequest> for Router {
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<ChatStream, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        let table = self.table.load();
        let Some(route) = table.lookup(&req.model) else {
            let err = GatewayError::new(
                ErrorKind::NotFound,
                format!(
                    "model '{}' is not routed by this gateway; the ListModels RPC \
                     (or `llmgate check` on the routing file) lists the models it serves",
                    req.model
                ),
            );
            return futures_util::future::ready(Err(err)).boxed();
        };
        req.call.place_route(route.model.clone());
        let Some(pool) = route.pick_pool() else {
            let err = GatewayError::unavailable(format!(
                "route '{}' has no pool with a positive weight",
                route.model
            ));
            return futures_util::future::ready(Err(err)).boxed();
        };
        pool.upstream.call(pool.model.clone(), req)
    }
}
