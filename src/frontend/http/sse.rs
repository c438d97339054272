//! A streamed answer as server-sent events in OpenAI's chunk format.
//!
//! The body polls the call's token stream directly in the task that writes
//! the response: each token leaves as soon as it arrives (hyper flushes
//! whenever the body has nothing more ready), and when the client goes
//! away hyper drops the body and with it the upstream request. An error
//! after the first token ends the stream with an error event and never
//! with `data: [DONE]`, so no client mistakes a cut answer for a whole one.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use http::{HeaderValue, header};
use serde::Serialize;

use super::answer::{CallInfo, finish_reason, served_model};
use super::error::error_body;
use super::wire::{
    ChatCompletionChunk, ChunkChoice, Delta, WireFunctionOut, WireToolCallOut, WireUsage,
};
use crate::chat::{ChatEvent, ChatStream, Completion, ToolCallDelta};
use crate::error::GatewayError;
use crate::frontend::edge::{poll_events, truncated};

/// The most events gathered into one write, on either streaming front: a
/// bound on the time one poll may take, far above what arrives together.
pub(super) const MAX_EVENTS_PER_WRITE: usize = 64;

/// A [`ChatStream`] as server-sent events in OpenAI's chunk format. Like
/// the gRPC front's stream, it insists on a final `Done`: a stream that
/// stops without one ends with an error event instead of `[DONE]`.
struct SseChunks {
    /// The tokens; `None` once the answer ended either way.
    inner: Option<ChatStream>,
    /// What each chunk repeats.
    call: CallInfo,
    /// Whether the first chunk (which carries the role) is still to go.
    first: bool,
}

/// The streamed answer to `call`: `events` as server-sent events.
pub(super) fn sse_response(events: ChatStream, call: CallInfo) -> Response {
    let chunks = SseChunks {
        inner: Some(events),
        call,
        first: true,
    };
    event_stream(chunks)
}

/// A response streaming `events` (whole SSE events, already encoded) with
/// the headers every streaming front sends.
pub(super) fn event_stream(
    events: impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Body::from_stream(events).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Asks nginx-style proxies in front not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

// === impl SseChunks ===

impl Stream for SseChunks {
    type Item = Result<Bytes, Infallible>;

    /// Every event already waiting goes out in one write (up to
    /// [`MAX_EVENTS_PER_WRITE`]); none waits for the next.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Room for a few chunks, so a token's JSON is not grown in steps.
        let mut out = Vec::with_capacity(512);
        for _ in 0..MAX_EVENTS_PER_WRITE {
            let Some(inner) = this.inner.as_mut() else {
                break;
            };
            let event = match poll_events(inner, cx) {
                Poll::Ready(event) => event,
                Poll::Pending if out.is_empty() => return Poll::Pending,
                Poll::Pending => break,
            };
            match event {
                Some(Ok(ChatEvent::Token(token))) => this.token_chunk(&mut out, &token),
                Some(Ok(ChatEvent::ToolCall(delta))) => this.tool_call_chunk(&mut out, &delta),
                end => {
                    match end {
                        Some(Ok(ChatEvent::Done(completion))) => this.finish(&mut out, &completion),
                        Some(Err(err)) => error_event(&mut out, &err),
                        _ => error_event(&mut out, &truncated()),
                    }
                    // Whatever ended the answer, release the upstream now.
                    this.inner = None;
                }
            }
        }
        if out.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(out.into())))
    }
}

impl SseChunks {
    /// A chunk carrying `token`; the first also says who speaks.
    fn token_chunk(&mut self, out: &mut Vec<u8>, token: &str) {
        let role = std::mem::take(&mut self.first).then_some("assistant");
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role,
                content: Some(token),
                tool_calls: &[],
            },
            logprobs: None,
            finish_reason: None,
        };
        let model = &self.call.model;
        self.chunk(out, model, std::slice::from_ref(&choice), None);
    }

    /// A chunk carrying a piece of a tool call; the first chunk of an
    /// answer also says who speaks.
    fn tool_call_chunk(&mut self, out: &mut Vec<u8>, delta: &ToolCallDelta) {
        let role = std::mem::take(&mut self.first).then_some("assistant");
        let call = WireToolCallOut {
            index: Some(delta.index),
            id: delta.id.as_deref(),
            kind: delta.id.is_some().then_some("function"),
            function: WireFunctionOut {
                name: delta.name.as_deref(),
                arguments: &delta.arguments,
            },
        };
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role,
                content: None,
                tool_calls: std::slice::from_ref(&call),
            },
            logprobs: None,
            finish_reason: None,
        };
        let model = &self.call.model;
        self.chunk(out, model, std::slice::from_ref(&choice), None);
    }

    /// The finish chunk, the usage chunk when asked for, and `[DONE]`,
    /// written together so they leave in one write.
    fn finish(&mut self, out: &mut Vec<u8>, completion: &Completion) {
        if self.first {
            // An empty answer still opens with the assistant's role.
            self.token_chunk(out, "");
        }
        let model = served_model(completion, &self.call);
        let choice = ChunkChoice {
            index: 0,
            delta: Delta::default(),
            logprobs: completion.logprobs.as_ref(),
            finish_reason: Some(finish_reason(completion)),
        };
        self.chunk(out, model, std::slice::from_ref(&choice), None);
        if self.call.include_usage {
            let usage = completion.usage.map(WireUsage::from);
            self.chunk(out, model, &[], Some(usage));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// Writes one `chat.completion.chunk` event. `usage` is `Some` only
    /// on the usage chunk; the others say `null` when usage was asked for.
    fn chunk(
        &self,
        out: &mut Vec<u8>,
        model: &str,
        choices: &[ChunkChoice<'_>],
        usage: Option<Option<WireUsage>>,
    ) {
        let usage = match usage {
            Some(usage) => Some(usage),
            None if self.call.include_usage => Some(None),
            None => None,
        };
        let chunk = ChatCompletionChunk {
            id: &self.call.id,
            object: "chat.completion.chunk",
            created: self.call.created,
            model,
            choices,
            usage,
        };
        event(out, &chunk);
    }
}

/// Writes `data: {json}` and the blank line that ends an event.
fn event(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Writing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

/// The event that ends a stream that failed after it started: OpenAI's
/// error body as a `data:` event, which the official SDKs raise as an
/// error.
fn error_event(out: &mut Vec<u8>, err: &GatewayError) {
    event(out, &error_body(err));
}
