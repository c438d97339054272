//! `kind: sim`: the simulator in process, with no HTTP in between, so the
//! shipped routing file serves a real answer on a machine with nothing else
//! running.

use std::sync::{Arc, LazyLock};

use futures_util::StreamExt;

use crate::chat::{ChatEvent, ChatRequest, ChatStream, Completion};
use crate::error::GatewayError;
use crate::sim::SimSettings;

/// The endpoint every simulated call is placed on, allocated once.
static ENDPOINT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(super::IN_PROCESS_ENDPOINT));

/// Starts a simulated generation for `req`.
pub(crate) fn call(
    settings: &SimSettings,
    upstream: &str,
    model: Arc<str>,
    req: &ChatRequest,
) -> Result<ChatStream, GatewayError> {
    req.call.place_endpoint(ENDPOINT.clone());
    let Some(run) = settings.start(&req.messages, req.params.max_tokens) else {
        return Err(GatewayError::unavailable(format!(
            "upstream '{upstream}' (simulator) failed this call on purpose (error_rate); retry"
        )));
    };
    let done = ChatEvent::Done(Completion {
        finish_reason: Some(run.finish_reason()),
        usage: Some(run.usage()),
        model,
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
