//! Building blocks for unit tests of the layers and streams: requests,
//! scripted token streams, and a stub upstream service, so a layer is
//! tested without a socket or a real clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};

use super::{ChatEvent, ChatMessage, ChatRequest, ChatStream, Completion, Role, Usage};
use crate::error::GatewayError;

/// A streamed request for `model` with one short user message.
pub(crate) fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: vec![ChatMessage::text(Role::User, "hi")],
        params: Default::default(),
        extras: Default::default(),
        stream: true,
        deadline: None,
        call: Default::default(),
        caller: Default::default(),
        prefill: false,
    }
}

/// A token event.
pub(crate) fn token(text: &str) -> Result<ChatEvent, GatewayError> {
    Ok(ChatEvent::Token(text.to_string()))
}

/// A final event reporting `input` and `output` tokens.
pub(crate) fn done(input: u32, output: u32) -> Result<ChatEvent, GatewayError> {
    Ok(ChatEvent::Done(Completion {
        usage: Some(Usage {
            input_tokens: input,
            output_tokens: output,
        }),
        ..Completion::default()
    }))
}

/// A stream of `items`, each arriving its duration after the one before,
/// then ending or stalling as `end` says. The returned flag turns true
/// when the stream is dropped, which is when its upstream request would
/// close.
pub(crate) fn scripted(
    items: Vec<(Duration, Result<ChatEvent, GatewayError>)>,
    end: End,
) -> (ChatStream, Closed) {
    let closed = Closed::default();
    let mark = CloseOnDrop(closed.clone());
    let timed = futures_util::stream::iter(items).then(|(gap, item)| async move {
        tokio::time::sleep(gap).await;
        item
    });
    let tail: std::pin::Pin<Box<dyn Stream<Item = _> + Send>> = match end {
        End::Stop => Box::pin(futures_util::stream::empty()),
        End::Stall => Box::pin(futures_util::stream::pending()),
    };
    let stream = timed.chain(tail).map(move |item| {
        let _open_while_streaming = &mark;
        item
    });
    (Box::pin(stream), closed)
}

/// What a [`scripted`] stream does after its items.
pub(crate) enum End {
    /// It ends.
    Stop,
    /// It never yields again.
    Stall,
}

/// Whether a [`scripted`] stream was dropped.
#[derive(Clone, Default)]
pub(crate) struct Closed(Arc<Mutex<bool>>);

/// Sets its [`Closed`] when dropped.
struct CloseOnDrop(Closed);

impl Closed {
    /// Whether the stream is gone.
    pub(crate) fn get(&self) -> bool {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        *(self.0).0.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Reads the rest of `stream`: the tokens, then the final event or error
/// (`None` when it stopped without one).
pub(crate) async fn drain<S>(stream: S) -> (Vec<String>, Option<Result<Completion, GatewayError>>)
where
    S: Stream<Item = Result<ChatEvent, GatewayError>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut tokens = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(ChatEvent::Token(text)) => tokens.push(text),
            Ok(ChatEvent::ToolCall(delta)) => tokens.push(format!("<tool call {}>", delta.index)),
            Ok(ChatEvent::Done(completion)) => return (tokens, Some(Ok(completion))),
            Err(err) => return (tokens, Some(Err(err))),
        }
    }
    (tokens, None)
}
