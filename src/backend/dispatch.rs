//! What a backend offers the balancer: one call to one endpoint.
//!
//! This is the contract between the two sides of the last hop. The balancer
//! (to the left) holds one [`Dispatch`] per endpoint and knows nothing of
//! wires; a [`Backend`] (here) is an upstream's adapter, which binds itself
//! to each endpoint's base URL and answers every [`EndpointCall`] with a
//! token stream. The contract lives with the backend because the backend
//! defines it: the balancer imports it, and nothing here imports the
//! balancer.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::Uri;

use super::anthropic::AnthropicBackend;
use super::http::HttpClient;
use super::ollama::OllamaBackend;
use super::openai::OpenAiBackend;
use super::sim::SimBackend;
use crate::chat::{ChatRequest, ChatStream};
use crate::config::{Discovery, UpstreamConfig, UpstreamKind};
use crate::error::GatewayError;

/// A call on its way to an endpoint.
#[derive(Debug, Clone)]
pub struct EndpointCall {
    /// The model name the upstream knows.
    pub model: Arc<str>,
    /// The request, shared by every attempt of the call.
    pub req: Arc<ChatRequest>,
}

/// Sends one call to one endpoint (the backend adapter, bound to the
/// endpoint's address). One box per call, none per token: the stream it
/// answers with is the adapter's own, boxed once.
pub type Dispatch =
    Arc<dyn Fn(EndpointCall) -> BoxFuture<'static, Result<ChatStream, GatewayError>> + Send + Sync>;

/// An endpoint as a backend bound it: what metrics and logs call it, and
/// how to send it a call.
pub struct Binding {
    /// The endpoint's label (its base URL, or `in-process`).
    pub label: Arc<str>,
    /// Sends calls to it.
    pub dispatch: Dispatch,
}

/// The wire of one upstream, shared by its endpoints: the one place the
/// kind of an upstream is looked at, so that adding a wire means adding an
/// adapter and one line here.
#[derive(Clone)]
pub struct Backend {
    /// The adapter, behind the one `dyn` of the backend: it is used when an
    /// endpoint is added, never per call or per token.
    adapter: Arc<dyn Bind>,
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

// === impl Backend ===

impl Backend {
    /// The adapter for `config`'s `kind`, sending through `client`.
    pub fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        let adapter: Arc<dyn Bind> = match config.kind {
            UpstreamKind::OpenAi => Arc::new(OpenAiBackend::new(config, client)),
            UpstreamKind::Ollama => Arc::new(OllamaBackend::new(config, client)),
            UpstreamKind::Anthropic => Arc::new(AnthropicBackend::new(config, client)),
            UpstreamKind::Sim => Arc::new(SimBackend::new(config)),
        };
        Backend { adapter }
    }

    /// Where the upstream's endpoints come from: `configured`, unless the
    /// adapter has endpoints of its own (the in-process simulator).
    pub fn discovery(&self, configured: &Discovery) -> Discovery {
        match self.adapter.fixed_endpoints() {
            Some(urls) => Discovery::Static(urls),
            None => configured.clone(),
        }
    }

    /// Binds the adapter to the endpoint at `base`; `None` when `base`
    /// cannot be used as a base URL for this wire.
    pub fn bind(&self, base: &Uri) -> Option<Binding> {
        self.adapter.clone().bind(base)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}
