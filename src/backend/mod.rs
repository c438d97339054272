//! Backend adapters: the last stage of a call, where the internal request
//! becomes an upstream's wire format and its answer becomes a token stream.
//!
//! An [`Upstream`] is one named entry of the routing file. Besides speaking
//! its wire, it holds the call to the upstream's own time limits (`timeout`,
//! `first_token_timeout`, `idle_timeout`), which sit inside the caller's
//! deadline enforced further up the stack.

pub mod http;
mod openai;
mod sim;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::chat::{ChatRequest, ChatStream};
use crate::config::{UpstreamConfig, UpstreamKind, UpstreamTimeouts};
use crate::error::{GatewayError, human_duration};
use crate::sim::SimSettings;
use crate::stack::timeout::{StreamLimits, TimedStream, TimeoutMessages};
use http::HttpClient;
use openai::OpenAiBackend;

/// One upstream of the routing file, ready to take calls.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the routing file.
    name: Arc<str>,
    /// The wire it speaks.
    backend: Backend,
    /// Its own limits on a call.
    timeouts: UpstreamTimeouts,
}

#[derive(Debug)]
enum Backend {
    OpenAi(Box<OpenAiBackend>),
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

// === impl Upstream ===

impl Upstream {
    /// Builds an upstream from its validated config; HTTP kinds send through
    /// the shared `client`.
    pub fn new(config: &UpstreamConfig, client: &HttpClient) -> Result<Self, GatewayError> {
        let backend = match config.kind {
            UpstreamKind::OpenAi => Backend::OpenAi(Box::new(
                OpenAiBackend::new(config, client.clone()).ok_or_else(|| {
                    GatewayError::unavailable(format!(
                        "upstream '{}' has no usable endpoint",
                        config.name
                    ))
                })?,
            )),
            UpstreamKind::Sim => Backend::Sim(config.sim),
        };
        Ok(Upstream {
            name: Arc::from(config.name.as_str()),
            backend,
            timeouts: config.timeouts,
        })
    }

    /// The upstream's name in the routing file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `req` to this upstream as `model`, held to the upstream's time
    /// limits from this moment on.
    pub fn call(
        self: &Arc<Self>,
        model: Arc<str>,
        req: ChatRequest,
    ) -> BoxFuture<'static, Result<ChatStream, GatewayError>> {
        let this = Arc::clone(self);
        req.call.place_upstream(self.name.clone());
        async move {
            let start = Instant::now();
            let limits = StreamLimits {
                deadline: Some(start + this.timeouts.total),
                // A unary answer arrives whole; only streams have a first
                // token and gaps to time.
                first_token: this.timeouts.first_token.filter(|_| req.stream),
                idle: this.timeouts.idle.filter(|_| req.stream),
            };
            let messages = UpstreamLimits {
                name: this.name.clone(),
                total: this.timeouts.total,
            };
            // Headers must arrive within the first-token limit too: a server
            // that queues the request before answering is just as slow.
            let first_token_cap = limits.first_token.filter(|l| *l < this.timeouts.total);
            let headers_by = start + first_token_cap.unwrap_or(this.timeouts.total);
            let response = async {
                match &this.backend {
                    Backend::OpenAi(backend) => backend.call(model, &req).await,
                    Backend::Sim(settings) => sim::call(settings, &this.name, model, &req),
                }
            };
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

// === impl UpstreamLimits ===

impl TimeoutMessages for UpstreamLimits {
    fn deadline(&self) -> GatewayError {
        GatewayError::deadline_exceeded(format!(
            "upstream '{}' did not finish within its timeout of {}; the request was cancelled",
            self.name,
            human_duration(self.total)
        ))
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
