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
use crate::frontend::edge::{FirstWrite, poll_events, truncated};

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
    /// Every token chunk but the first, around its text.
    token_frame: TokenFrame,
    /// The first chunk goes out alone, flushed before the rest.
    first_write: FirstWrite,
}

/// The bytes of a chunk that carries only text, before and after the text,
/// written once per stream: every token but the first is one of these
/// chunks, and serialising the whole chunk each time spent most of the
/// front's time per token on the same id, model and nulls.
struct TokenFrame {
    /// `data: {"id":..,"model":..,"choices":[{"index":0,"delta":{"content":`
    head: Vec<u8>,
    /// `},"logprobs":null,"finish_reason":null}]` (and `"usage":null`
    /// when asked for), `}` and the blank line.
    tail: &'static [u8],
}

/// The streamed answer to `call`: `events` as server-sent events.
pub(super) fn sse_response(events: ChatStream, call: CallInfo) -> Response {
    let chunks = SseChunks {
        inner: Some(events),
        token_frame: TokenFrame::new(&call),
        call,
        first: true,
        first_write: FirstWrite::default(),
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
    /// [`MAX_EVENTS_PER_WRITE`]); none waits for the next, and the first
    /// goes alone.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.first_write.yield_for_flush(cx) {
            return Poll::Pending;
        }
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
            if this.first_write.alone() {
                break;
            }
        }
        if out.is_empty() {
            return Poll::Ready(None);
        }
        this.first_write.wrote();
        Poll::Ready(Some(Ok(out.into())))
    }
}

impl SseChunks {
    /// A chunk carrying `token`; the first also says who speaks.
    fn token_chunk(&mut self, out: &mut Vec<u8>, token: &str) {
        if !self.first {
            self.token_frame.write(out, token);
            return;
        }
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

// === impl TokenFrame ===

impl TokenFrame {
    /// The frame of `call`'s text chunks, as [`SseChunks::chunk`] would
    /// write them.
    fn new(call: &CallInfo) -> Self {
        let mut head = Vec::with_capacity(160 + call.model.len());
        head.extend_from_slice(b"data: {\"id\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut head, &call.id);
        head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.extend_from_slice(call.created.to_string().as_bytes());
        head.extend_from_slice(b",\"model\":");
        let _ = serde_json::to_writer(&mut head, &call.model);
        head.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        let tail: &[u8] = if call.include_usage {
            b"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
        } else {
            b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n"
        };
        TokenFrame { head, tail }
    }

    /// Writes the chunk event carrying `token`.
    fn write(&self, out: &mut Vec<u8>, token: &str) {
        out.extend_from_slice(&self.head);
        let _ = serde_json::to_writer(&mut *out, token);
        out.extend_from_slice(self.tail);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A token chunk the long way: the chunk struct, serialised whole.
    fn serialised(call: &CallInfo, token: &str) -> Vec<u8> {
        let chunks = SseChunks {
            inner: None,
            token_frame: TokenFrame::new(call),
            call: CallInfo {
                id: call.id.clone(),
                created: call.created,
                model: call.model.clone(),
                include_usage: call.include_usage,
            },
            first: false,
            first_write: FirstWrite::default(),
        };
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role: None,
                content: Some(token),
                tool_calls: &[],
            },
            logprobs: None,
            finish_reason: None,
        };
        let mut out = Vec::new();
        chunks.chunk(&mut out, &call.model, std::slice::from_ref(&choice), None);
        out
    }

    #[test]
    fn the_first_token_goes_out_alone_and_the_rest_together() {
        use crate::chat::testing::{done, token};

        let events = vec![token("Par"), token("is"), token("!"), done(2, 3)];
        let call = CallInfo {
            id: "chatcmpl-1".into(),
            created: 1_796_000_000,
            model: "m".into(),
            include_usage: false,
        };
        let mut chunks = SseChunks {
            inner: Some(Box::pin(futures_util::stream::iter(events))),
            token_frame: TokenFrame::new(&call),
            call,
            first: true,
            first_write: FirstWrite::default(),
        };
        let mut poll = || crate::frontend::edge::poll_write(&mut chunks);
        let first = poll().expect("the first token at once");
        assert!(first.contains("\"Par\""), "{first}");
        assert!(!first.contains("\"is\""), "the first goes alone: {first}");
        assert_eq!(poll(), None, "a pause, so the server flushes it");
        let rest = poll().expect("the rest at once");
        assert!(rest.contains("\"is\"") && rest.contains("\"!\""), "{rest}");
        assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    }

    #[test]
    fn a_framed_token_chunk_is_the_chunk_serialised_whole() {
        for include_usage in [false, true] {
            let call = CallInfo {
                id: "chatcmpl-0123".into(),
                created: 1_796_000_000,
                model: "org/model \"q4\"".into(),
                include_usage,
            };
            let frame = TokenFrame::new(&call);
            for token in ["Paris", "", " \"quoted\"\n", "tab\there", "\u{1}", "日本"] {
                let mut framed = Vec::new();
                frame.write(&mut framed, token);
                assert_eq!(
                    String::from_utf8_lossy(&framed),
                    String::from_utf8_lossy(&serialised(&call, token)),
                    "token {token:?}, include_usage {include_usage}"
                );
            }
        }
    }
}
