//! `kind: sim`: the simulator in process, with no HTTP in between, so the
//! shipped routing file serves a real answer on a machine with nothing else
//! running.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use http::Uri;

use super::dispatch::{Bind, Binding, Dispatch, EndpointCall};
use crate::chat::{ChatEvent, ChatRequest, ChatStream, Completion, ContentPart, ResponseFormat};
use crate::config::UpstreamConfig;
use crate::error::GatewayError;
use crate::sim::SimSettings;

/// The endpoint label of a simulator running inside the gateway.
pub(crate) const IN_PROCESS_ENDPOINT: &str = "in-process";

/// The pseudo-address of an in-process simulator's one endpoint.
const SIM_ENDPOINT: &str = "sim://in-process";

/// A `kind: sim` upstream: the simulator's settings and the upstream's
/// name, for its errors.
pub(crate) struct SimBackend {
    /// How the simulated model behaves.
    settings: SimSettings,
    /// The upstream's name.
    name: Arc<str>,
}

// === impl SimBackend ===

impl SimBackend {
    /// The simulator `config` describes.
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        SimBackend {
            settings: config.sim,
            name: Arc::from(config.name.as_str()),
        }
    }
}

impl Bind for SimBackend {
    /// Every base is the one in-process endpoint: there is no address.
    fn bind(self: Arc<Self>, _base: &Uri) -> Option<Binding> {
        let dispatch: Dispatch = Arc::new(move |call: EndpointCall| {
            let answer = match &call.req.extras.embed {
                Some(embed) => Ok(super::embed::simulate(call.model, embed)),
                None => call_sim(&self.settings, &self.name, call.model, &call.req),
            };
            futures_util::future::ready(answer).boxed()
        });
        Some(Binding {
            label: Arc::from(IN_PROCESS_ENDPOINT),
            dispatch,
        })
    }

    /// A simulator has one endpoint, inside the gateway.
    fn fixed_endpoints(&self) -> Option<Vec<Uri>> {
        Some(vec![Uri::from_static(SIM_ENDPOINT)])
    }
}

/// Starts a simulated generation for `req`.
fn call_sim(
    settings: &SimSettings,
    upstream: &str,
    model: Arc<str>,
    req: &ChatRequest,
) -> Result<ChatStream, GatewayError> {
    refuse_what_it_cannot_do(upstream, req)?;
    let Some(run) = settings.start(&req.messages, req.params.max_tokens) else {
        return Err(GatewayError::unavailable(format!(
            "upstream '{upstream}' (simulator) failed this call on purpose (error_rate); retry"
        )));
    };
    let done = ChatEvent::Done(Completion {
        finish_reason: Some(run.finish_reason()),
        usage: Some(run.usage()),
        model,
        logprobs: None,
        embeddings: None,
    });
    let tail = futures_util::stream::iter([Ok(done)]);
    if req.stream {
        let tokens = run
            .tokens()
            .map(|token| Ok(ChatEvent::Token(token.to_string())));
        Ok(Box::pin(tokens.chain(tail)))
    } else {
        let text =
            futures_util::stream::once(async move { Ok(ChatEvent::Token(run.text().await)) });
        Ok(Box::pin(text.chain(tail)))
    }
}

/// The simulator writes text and nothing else: a call that needs tools, a
/// JSON answer or eyes is refused, naming the field, rather than answered
/// with text that ignores it. Sampling extras (`seed`, `top_k`, ...) are
/// ignored, as temperature is: a simulated answer does not sample.
fn refuse_what_it_cannot_do(upstream: &str, req: &ChatRequest) -> Result<(), GatewayError> {
    let unsupported = |field: &str| super::translate::unsupported(field, upstream, "the simulator");
    if !req.extras.tools.is_empty() {
        return Err(unsupported("tools"));
    }
    if !matches!(
        req.extras.response_format,
        None | Some(ResponseFormat::Text)
    ) {
        return Err(unsupported("response_format"));
    }
    for (i, message) in req.messages.iter().enumerate() {
        if let Some(j) = message
            .parts
            .iter()
            .position(|part| matches!(part, ContentPart::Image { .. }))
        {
            return Err(unsupported(&format!("messages[{i}].content[{j}].type")));
        }
    }
    Ok(())
}
