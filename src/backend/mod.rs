//! Backend adapters: the last stage of a call, where the internal request
//! becomes an upstream's wire format and its answer becomes a token stream.
//!
//! An [`Upstream`] is one named entry of the routing file: a wire format, a
//! balancer over its endpoints, and its own time limits (`timeout`,
//! `first_token_timeout`, `idle_timeout`), which sit inside the caller's
//! deadline enforced further up the stack and cover the whole attempt,
//! waiting for an endpoint included.
//!
//! Each wire lives in its own module (`openai`, `ollama`, `anthropic`, the
//! in-process `sim`) and maps into the one internal vocabulary, so callers
//! see the same contract whichever pool served them. What the HTTP wires do
//! alike (sending, error mapping, driving a streamed body) is in `wire`;
//! the framings they stream in are [`sse`] and [`ndjson`].

mod anthropic;
pub mod http;
pub mod ndjson;
mod ollama;
mod openai;
mod sim;
pub mod sse;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::balance::discover::Resolve;
use crate::balance::endpoint::{Dispatch, EndpointCall};
use crate::balance::health::EndpointSnapshot;
use crate::balance::{Balancer, DispatchFactory};
use crate::chat::timed::{StreamLimits, TimedStream, TimeoutMessages};
use crate::chat::{ChatRequest, ChatStream};
use crate::config::{Discovery, UpstreamConfig, UpstreamKind, UpstreamTimeouts};
use crate::error::{GatewayError, human_duration};
use crate::sim::SimSettings;
use anthropic::AnthropicBackend;
use http::HttpClient;
use ollama::OllamaBackend;
use openai::OpenAiBackend;

/// What upstreams need from the outside world: the shared HTTP client and
/// a DNS resolver (replaceable in tests).
#[derive(Clone)]
pub struct Connectors {
    /// The pooled client every HTTP upstream sends through.
    pub http: HttpClient,
    /// Resolves `discover: { dns: ... }` names.
    pub resolver: Arc<dyn Resolve>,
}

/// One upstream of the routing file, ready to take calls.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the routing file.
    name: Arc<str>,
    /// The definition it was built from: a reload keeps this upstream (its
    /// endpoints, connections, load and health) when the new definition is
    /// the same.
    config: UpstreamConfig,
    /// Picks an endpoint per call.
    balancer: Balancer,
    /// Its own limits on a call.
    timeouts: UpstreamTimeouts,
}

/// The wire an upstream speaks, shared by its endpoints.
#[derive(Debug, Clone)]
enum Backend {
    OpenAi(Arc<OpenAiBackend>),
    Ollama(Arc<OllamaBackend>),
    Anthropic(Arc<AnthropicBackend>),
    Sim(SimSettings),
}

/// The endpoint label of a simulator running inside the gateway.
pub const IN_PROCESS_ENDPOINT: &str = "in-process";

/// Error messages naming the upstream whose limit passed.
struct UpstreamLimits {
    /// The upstream's name.
    name: Arc<str>,
    /// Its `timeout`, for the message.
    total: Duration,
}

/// The pseudo-address of an in-process simulator's one endpoint.
const SIM_ENDPOINT: &str = "sim://in-process";

// === impl Connectors ===

impl Default for Connectors {
    fn default() -> Self {
        Connectors {
            http: http::client(),
            resolver: Arc::new(crate::balance::discover::SystemResolver),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// Builds an upstream from its validated config and starts discovering
    /// its endpoints (so it needs a Tokio runtime).
    pub fn new(config: &UpstreamConfig, connectors: &Connectors) -> Result<Self, GatewayError> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        // Only an upstream behind a private CA pays for a client (and a
        // connection pool) of its own.
        let client = match &config.tls_ca {
            Some(ca) => http::client_trusting(ca.contents()).map_err(|err| {
                GatewayError::unavailable(format!("upstream '{name}': tls.ca {err}"))
            })?,
            None => connectors.http.clone(),
        };
        let (backend, discovery) = match config.kind {
            UpstreamKind::OpenAi => (
                Backend::OpenAi(Arc::new(OpenAiBackend::new(config, client.clone()))),
                config.discovery.clone(),
            ),
            UpstreamKind::Ollama => (
                Backend::Ollama(Arc::new(OllamaBackend::new(config, client.clone()))),
                config.discovery.clone(),
            ),
            UpstreamKind::Anthropic => (
                Backend::Anthropic(Arc::new(AnthropicBackend::new(config, client.clone()))),
                config.discovery.clone(),
            ),
            UpstreamKind::Sim => (
                Backend::Sim(config.sim),
                Discovery::Static(vec![::http::Uri::from_static(SIM_ENDPOINT)]),
            ),
        };
        if let Discovery::Static(urls) = &discovery
            && let Some(bad) = urls.iter().find(|url| backend.target(url).is_none())
        {
            return Err(GatewayError::unavailable(format!(
                "upstream '{name}': endpoint {bad} cannot be used as a base URL"
            )));
        }
        let factory: DispatchFactory = {
            let name = name.clone();
            Arc::new(move |base: &::http::Uri| backend_dispatch(&backend, &name, base))
        };
        let balancer = Balancer::new(
            &config.name,
            &discovery,
            &config.policy,
            factory,
            client,
            connectors.resolver.clone(),
        );
        Ok(Upstream {
            name,
            config: config.clone(),
            balancer,
            timeouts: config.timeouts,
        })
    }

    /// The upstream's name in the routing file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The definition it was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Whether any endpoint could take a call now.
    pub fn is_available(&self) -> bool {
        self.balancer.is_available()
    }

    /// Every endpoint's state, for introspection.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.balancer.endpoints()
    }

    /// Sends `req` to this upstream as `model`, held to the upstream's time
    /// limits from this moment on.
    pub fn call(
        self: &Arc<Self>,
        model: Arc<str>,
        req: Arc<ChatRequest>,
    ) -> BoxFuture<'static, Result<ChatStream, GatewayError>> {
        req.call.place_upstream(self.name.clone());
        let start = Instant::now();
        let limits = StreamLimits {
            deadline: Some(start + self.timeouts.total),
            // A unary answer arrives whole; only streams have a first token
            // and gaps to time.
            first_token: self.timeouts.first_token.filter(|_| req.stream),
            idle: self.timeouts.idle.filter(|_| req.stream),
        };
        let messages = UpstreamLimits {
            name: self.name.clone(),
            total: self.timeouts.total,
        };
        // Headers must arrive within the first-token limit too: a server that
        // queues the request before answering is just as slow.
        let first_token_cap = limits.first_token.filter(|l| *l < self.timeouts.total);
        let headers_by = start + first_token_cap.unwrap_or(self.timeouts.total);
        let response = self.balancer.call(EndpointCall { model, req });
        async move {
            let stream = match (
                tokio::time::timeout_at(headers_by, response).await,
                first_token_cap,
            ) {
                (Ok(result), _) => result?,
                (Err(_), Some(limit)) => return Err(messages.first_token(limit)),
                (Err(_), None) => return Err(messages.deadline()),
            };
            Ok(Box::pin(TimedStream::new(stream, limits, start, messages)) as ChatStream)
        }
        .boxed()
    }
}

// === impl Backend ===

impl Backend {
    /// The URL calls to the endpoint at `base` are sent to (`None` for a
    /// base that cannot carry the wire's path).
    fn target(&self, base: &::http::Uri) -> Option<::http::Uri> {
        match self {
            Backend::OpenAi(backend) => backend.target(base),
            Backend::Ollama(backend) => backend.target(base),
            Backend::Anthropic(backend) => backend.target(base),
            Backend::Sim(_) => Some(base.clone()),
        }
    }
}

/// The backend bound to one endpoint's base URL, with the endpoint's label.
fn backend_dispatch(
    backend: &Backend,
    name: &Arc<str>,
    base: &::http::Uri,
) -> Option<(Arc<str>, Dispatch)> {
    let label: Arc<str> = match backend {
        Backend::Sim(_) => Arc::from(IN_PROCESS_ENDPOINT),
        _ => Arc::from(base.to_string().trim_end_matches('/')),
    };
    Some((label, endpoint_dispatch(backend, name, base)?))
}

/// Sends each call for the endpoint at `base` through `backend`.
fn endpoint_dispatch(backend: &Backend, name: &Arc<str>, base: &::http::Uri) -> Option<Dispatch> {
    /// A dispatch that sends each call to `target` with `backend`.
    macro_rules! http_dispatch {
        ($backend:expr) => {{
            let target = Arc::new(backend.target(base)?);
            let backend = $backend.clone();
            Some(Arc::new(move |call: EndpointCall| {
                let backend = backend.clone();
                let target = target.clone();
                async move { backend.call(&target, call.model, &call.req).await }.boxed()
            }) as Dispatch)
        }};
    }
    match backend {
        Backend::OpenAi(openai) => http_dispatch!(openai),
        Backend::Ollama(ollama) => http_dispatch!(ollama),
        Backend::Anthropic(anthropic) => http_dispatch!(anthropic),
        Backend::Sim(settings) => {
            let settings = *settings;
            let name = name.clone();
            Some(Arc::new(move |call: EndpointCall| {
                futures_util::future::ready(sim::call(&settings, &name, call.model, &call.req))
                    .boxed()
            }))
        }
    }
}

// === impl UpstreamLimits ===

impl TimeoutMessages for UpstreamLimits {
    fn deadline(&self) -> GatewayError {
        // Another attempt would cost as long again: the caller hears now.
        GatewayError::deadline_exceeded(format!(
            "upstream '{}' did not finish within its timeout of {}; the request was cancelled",
            self.name,
            human_duration(self.total)
        ))
        .not_retryable()
    }

    fn first_token(&self, waited: Duration) -> GatewayError {
        GatewayError::deadline_exceeded(format!(
            "upstream '{}' sent no token within its first_token_timeout of {}; \
             the request was cancelled (the server may be overloaded)",
            self.name,
            human_duration(waited)
        ))
    }

    fn idle(&self, waited: Duration) -> GatewayError {
        GatewayError::deadline_exceeded(format!(
            "upstream '{}' went silent for {} (idle_timeout) in the middle of its \
             answer; the request was cancelled and the answer is incomplete",
            self.name,
            human_duration(waited)
        ))
    }
}
