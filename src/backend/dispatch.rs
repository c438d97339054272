//! What a backend offers the balancer: one call to one endpoint.
//!
//! This is the contract between the two sides of the last hop. The balancer
//! (to the left) holds one [`Dispatch`] per endpoint and knows nothing of
//! wires; an upstream's [`Backend`](super::Backend) binds its adapter to
//! each endpoint's base URL (`Bind`) and answers every [`EndpointCall`]
//! with a token stream. The contract lives with the backend because the
//! backend defines it: the balancer imports it, and nothing here imports
//! the balancer. Adapters import this file; it imports none of them.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::Uri;

use crate::chat::{ChatRequest, ChatStream};
use crate::error::GatewayError;

/// A call on its way to an endpoint.
#[derive(Debug, Clone)]
pub(crate) struct EndpointCall {
    /// The model name the upstream knows.
    pub model: Arc<str>,
    /// The request, shared by every attempt of the call.
    pub req: Arc<ChatRequest>,
}

/// Sends one call to one endpoint (the backend adapter, bound to the
/// endpoint's address). One box per call, none per token: the stream it
/// answers with is the adapter's own, boxed once.
pub(crate) type Dispatch =
    Arc<dyn Fn(EndpointCall) -> BoxFuture<'static, Result<ChatStream, GatewayError>> + Send + Sync>;

/// An endpoint as a backend bound it: what metrics and logs call it, and
/// how to send it a call.
pub(crate) struct Binding {
    /// The endpoint's label (its base URL, or `in-process`).
    pub label: Arc<str>,
    /// Sends calls to it.
    pub dispatch: Dispatch,
}

/// How an adapter binds itself to an endpoint. Every HTTP [`Adapter`]
/// binds the same way (see `adapter.rs`); the in-process simulator binds
/// to its one pseudo-endpoint.
///
/// [`Adapter`]: super::adapter::Adapter
pub(crate) trait Bind: Send + Sync + 'static {
    /// The endpoint at `base`, or `None` when `base` cannot carry this
    /// wire's path.
    fn bind(self: Arc<Self>, base: &Uri) -> Option<Binding>;

    /// The endpoints this adapter always has whatever the routing file
    /// says (the simulator's one), or `None` to use the configured ones.
    fn fixed_endpoints(&self) -> Option<Vec<Uri>> {
        None
    }
}
