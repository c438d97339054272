//! One upstream of the routing file, ready to take calls: the piece route
//! calls, and the owner of the balancer over the upstream's endpoints.
//!
//! An [`Upstream`] is a wire (its [`Backend`]), a [`Balancer`] over its
//! endpoints, and its own time limits (`timeout`, `first_token_timeout`,
//! `idle_timeout`), which sit inside the caller's deadline enforced further
//! up the stack and cover the whole attempt, waiting for an endpoint
//! included. The call flows route → upstream → balancer → endpoint →
//! backend, and each of those imports only to its right.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::discover::{Resolve, SystemResolver};
use super::health::EndpointSnapshot;
use super::p2c::{Balancer, Pick};
use crate::backend::http::{self, HttpClient};
use crate::backend::{Backend, EndpointCall};
use crate::chat::timed::{StreamLimits, TimedStream, TimeoutMessages};
use crate::chat::{ChatRequest, ChatStream};
use crate::config::{Discovery, UpstreamConfig, UpstreamTimeouts};
use crate::error::{GatewayError, human_duration};

/// What upstreams need from the outside world: the shared HTTP client and
/// a DNS resolver (replaceable in tests).
#[derive(Clone)]
pub struct Connectors {
    /// The client every HTTP upstream sends through.
    pub(crate) http: HttpClient,
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

/// Error messages naming the upstream whose limit passed.
struct UpstreamLimits {
    /// The upstream's name.
    name: Arc<str>,
    /// Its `timeout`, for the message.
    total: Duration,
}

// === impl Connectors ===

impl Connectors {
    /// The default client with `resolver` for `discover: { dns }` names:
    /// how tests stand in for DNS.
    pub fn with_resolver(resolver: Arc<dyn Resolve>) -> Self {
        Connectors {
            resolver,
            ..Connectors::default()
        }
    }
}

impl Default for Connectors {
    fn default() -> Self {
        Connectors {
            http: http::client(),
            resolver: Arc::new(SystemResolver),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    /// Builds an upstream from its validated config and starts discovering
    /// its endpoints (so it needs a Tokio runtime).
    pub(crate) fn new(
        config: &UpstreamConfig,
        connectors: &Connectors,
    ) -> Result<Self, GatewayError> {
        let name: Arc<str> = Arc::from(config.name.as_str());
        // Only an upstream behind a private CA pays for a client (and a
        // connection pool) of its own.
        let client = match &config.tls_ca {
            Some(ca) => http::client_trusting(ca.contents()).map_err(|err| {
                GatewayError::unavailable(format!("upstream '{name}': tls.ca {err}"))
            })?,
            None => connectors.http.clone(),
        };
        let backend = Backend::new(config, client.clone());
        let discovery = backend.discovery(&config.discovery);
        if let Discovery::Static(urls) = &discovery
            && let Some(bad) = urls.iter().find(|url| backend.bind(url).is_none())
        {
            return Err(GatewayError::unavailable(format!(
                "upstream '{name}': endpoint {bad} cannot be used as a base URL"
            )));
        }
        let balancer = Balancer::new(
            &config.name,
            &discovery,
            &config.policy,
            backend,
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
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The definition it was built from.
    pub(crate) fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Whether any endpoint could take a call for `model` now.
    pub(crate) fn is_available(&self, model: &str) -> bool {
        self.balancer.is_available(model)
    }

    /// Since when the endpoint out the longest for `model` has been out,
    /// when one is: the panic pick's measure.
    pub(crate) fn oldest_out(&self, model: &str) -> Option<Instant> {
        self.balancer.oldest_out(model)
    }

    /// Tells `listener` whenever a call on this upstream ends and frees a
    /// slot: how a route's queue learns to try again.
    pub(crate) fn listen_for_slots(
        &self,
        listener: std::sync::Weak<dyn super::health::SlotListener>,
    ) {
        self.balancer.listen_for_slots(listener);
    }

    /// Every endpoint's state for calls of `model`, for introspection.
    pub fn endpoints(&self, model: &str) -> Vec<EndpointSnapshot> {
        self.balancer.endpoints(model)
    }

    /// Sends `req` to this upstream as `model`, on an endpoint chosen by
    /// `pick`, held to the upstream's time limits from this moment on.
    pub(crate) fn call(
        self: &Arc<Self>,
        model: Arc<str>,
        req: Arc<ChatRequest>,
        pick: Pick,
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
        let response = self.balancer.call(EndpointCall { model, req }, pick);
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

// === impl UpstreamLimits ===

impl TimeoutMessages for UpstreamLimits {
    fn deadline(&self) -> GatewayError {
        // Retryable like the others: another endpoint, pool or fallback may
        // answer within what is left of the caller's own deadline.
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
