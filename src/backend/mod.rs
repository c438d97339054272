//! Backend adapters: the last stage of a call, where the internal request
//! becomes an upstream's wire format and its answer becomes a token stream.
//!
//! What a backend offers the balancer to its left is [`dispatch`]: an
//! upstream's [`Backend`] binds its adapter to each endpoint's base URL and
//! answers each [`EndpointCall`] with a stream. Nothing here knows about
//! balancing, routing or the stack.
//!
//! Each wire lives in its own module (`openai`, `ollama`, `anthropic`, the
//! in-process `sim`) and maps into the one internal vocabulary, so callers
//! see the same contract whichever pool served them. The three HTTP wires
//! are each an `Adapter` (`adapter`: request body, stream dialect, whole
//! answer), sent by one generic function; what they do alike (sending,
//! error mapping, driving a streamed body) is in `wire`; the framings they
//! stream in are [`sse`] and [`ndjson`]; the pooled client, and the probe
//! request health checks send, are in [`http`].

mod adapter;
mod anthropic;
// Only for `crate::bench_support`: the stream reading without a connection.
#[doc(hidden)]
pub(crate) mod bench;
pub(crate) mod dispatch;
mod embed;
mod h1;
pub(crate) mod http;
mod inline;
pub mod ndjson;
mod ollama;
mod openai;
mod sim;
pub mod sse;
mod translate;
mod wire;

use std::sync::Arc;

use ::http::Uri;

use crate::config::{Discovery, UpstreamConfig, UpstreamKind};
use anthropic::AnthropicBackend;
use dispatch::Bind;
pub(crate) use dispatch::{Binding, Dispatch, EndpointCall};
use http::HttpClient;
use ollama::OllamaBackend;
use openai::OpenAiBackend;
use sim::SimBackend;

/// The wire of one upstream, shared by its endpoints: the one place the
/// kind of an upstream is looked at, so that adding a wire means adding an
/// adapter and one line here.
#[derive(Clone)]
pub(crate) struct Backend {
    /// The adapter, behind the one `dyn` of the backend: it is used when an
    /// endpoint is added, never per call or per token.
    adapter: Arc<dyn Bind>,
}

// === impl Backend ===

impl Backend {
    /// The adapter for `config`'s `kind`, sending through `client`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
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
    pub(crate) fn discovery(&self, configured: &Discovery) -> Discovery {
        match self.adapter.fixed_endpoints() {
            Some(urls) => Discovery::Static(urls),
            None => configured.clone(),
        }
    }

    /// Binds the adapter to the endpoint at `base`; `None` when `base`
    /// cannot be used as a base URL for this wire.
    pub(crate) fn bind(&self, base: &Uri) -> Option<Binding> {
        self.adapter.clone().bind(base)
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").finish_non_exhaustive()
    }
}
