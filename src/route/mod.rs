//! Routing: which upstream serves a call, decided per call, and what to do
//! when it fails.
//!
//! The [`Router`] is the innermost tower service of the stack. It loads the
//! current [`RoutingTable`] once per call and keeps that snapshot to the end,
//! so a reload never changes a call in flight. Retries sit here, above the
//! balancers, so a retry can go to another endpoint, another pool or a
//! fallback model (see [`retry`]); so does the continuation of a stream
//! that broke mid-answer ([`resume`], with the requests of
//! [`continuation`]).
//!
//! In call order: `Router` → [`resume`] → [`retry`] (waiting in the
//! route's [`queue`] when every endpoint is busy) → [`continuation`] and
//! [`table`].

pub(crate) mod continuation;
pub(crate) mod queue;
pub(crate) mod resume;
pub(crate) mod retry;
pub(crate) mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tower::Service;
use tower::retry::budget::Budget;

use crate::chat::{ChatRequest, ChatStream};
use crate::error::GatewayError;
use resume::Resumable;
use retry::Ask;
pub(crate) use table::RoutingTable;

/// The live routing table, swapped whole on reload.
pub(crate) type SharedTable = Arc<ArcSwap<RoutingTable>>;

/// Sends each call to an upstream of its model's route.
#[derive(Clone)]
pub(crate) struct Router {
    /// The table in force; read once per call.
    table: SharedTable,
}

impl Router {
    /// A router over the live `table`.
    pub(crate) fn new(table: SharedTable) -> Self {
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
        let live = self.table.clone();
        // The table the call was pinned to with its keys, if the stack
        // pinned one, so keys and routes come from the same reload.
        let table = req
            .call
            .take_pinned::<RoutingTable>()
            .unwrap_or_else(|| live.load_full());
        let req = Arc::new(req);
        async move {
            let route = retry::route_of(&table, &req)?;
            req.call.place_route(route.model.clone());
            route.budget.deposit();
            let answer = retry::answer(&table, &route, &req, &Ask::Fresh).await?;
            // A unary answer arrived whole; only a stream can break after
            // the caller has part of it.
            if req.stream && route.continues {
                let resumable = Resumable::new(answer.stream, live, &route, req);
                Ok(Box::pin(resumable) as ChatStream)
            } else {
                Ok(answer.stream)
            }
        }
        .boxed()
    }
}
