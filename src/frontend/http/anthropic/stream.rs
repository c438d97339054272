//! A streamed answer as the Messages API's server-sent events:
//! `message_start` and a `ping`, then per content block
//! `content_block_start`, its `content_block_delta`s (`text_delta` for
//! text, `input_json_delta` for a tool call's arguments) and
//! `content_block_stop`, then `message_delta` (stop reason, usage) and
//! `message_stop`.
//!
//! The vocabulary streams text and tool-call pieces without blocks; blocks
//! are made here: text opens a text block, a tool call's first piece a
//! `tool_use` block, and whatever comes next of another kind closes the
//! open one. As with the OpenAI front, the body polls the call's stream in
//! the task that writes the response (a client that leaves drops the
//! upstream request with it), events that are ready together leave in one
//! write, and an answer that breaks ends with an `error` event, never
//! `message_stop`, so no client mistakes a cut answer for a whole one.
//!
//! While the upstream is silent (a reasoning model thinking, whose thoughts
//! are not text), a `ping` goes out every [`PING_EVERY`], as Anthropic's
//! own streams do, so proxies and clients with idle timeouts keep the
//! connection.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use futures_util::Stream;
use serde_json::json;
use tokio::time::{Instant, Sleep};

use super::answer::{MessageInfo, stop_reason, tool_use_id, usage};
use super::error::{error_body, status_and_type};
use super::wire::{OutBlock, OutDelta, OutEvent, OutMessage, OutStop, OutUsage};
use crate::chat::{ChatEvent, ChatStream, Completion, ToolCallDelta};
use crate::error::GatewayError;
use crate::frontend::edge::{FirstWrite, poll_events, truncated};
use crate::frontend::http::sse::{MAX_EVENTS_PER_WRITE, event_stream};

/// How long a started stream may stay silent before a `ping` goes out:
/// well under the 60 s idle timeout common in load balancers.
const PING_EVERY: Duration = Duration::from_secs(15);

/// A [`ChatStream`] as Messages API events.
struct MessageEvents {
    /// The answer; `None` once it ended either way.
    inner: Option<ChatStream>,
    /// What `message_start` names.
    info: MessageInfo,
    /// Whether `message_start` went out.
    started: bool,
    /// The block open now, if any.
    open: Option<Block>,
    /// The index the next block takes.
    next_block: u32,
    /// Tool calls begun so far: a piece of a call below this that is not
    /// the open block's came after its block closed.
    calls_begun: u32,
    /// When a silent stream sends its next `ping`; moved on by every write.
    ping: Pin<Box<Sleep>>,
    /// The first event goes out alone, flushed before the rest.
    first_write: FirstWrite,
}

/// A block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Text, at this index.
    Text(u32),
    /// A `tool_use` block at `index`, for the answer's tool call `call`.
    Tool {
        /// The block's index.
        index: u32,
        /// The vocabulary's index of the call.
        call: u32,
    },
}

/// The streamed answer: `events` as Messages API events.
pub(super) fn event_response(events: ChatStream, info: MessageInfo) -> Response {
    event_stream(MessageEvents::new(events, info))
}

// === impl MessageEvents ===

impl Stream for MessageEvents {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.first_write.yield_for_flush(cx) {
            return Poll::Pending;
        }
        let mut out = Vec::new();
        let mut pending = false;
        for _ in 0..MAX_EVENTS_PER_WRITE {
            let Some(inner) = this.inner.as_mut() else {
                break;
            };
            let event = match poll_events(inner, cx) {
                Poll::Pending => {
                    pending = true;
                    break;
                }
                Poll::Ready(event) => event,
            };
            this.start(&mut out);
            let ended = match event {
                Some(Ok(ChatEvent::Token(token))) => {
                    this.text(&mut out, &token);
                    None
                }
                Some(Ok(ChatEvent::ToolCall(delta))) => this.tool_call(&mut out, &delta).err(),
                Some(Ok(ChatEvent::Done(completion))) => this.finish(&mut out, &completion).err(),
                Some(Err(err)) => Some(err),
                None => Some(truncated()),
            };
            if let Some(err) = ended {
                error_event(&mut out, &err);
                this.inner = None;
            }
            if this.first_write.alone() && !out.is_empty() {
                break;
            }
        }
        if this.inner.is_none() && out.is_empty() {
            return Poll::Ready(None);
        }
        if out.is_empty() && pending && this.started && this.ping.as_mut().poll(cx).is_ready() {
            event(&mut out, &OutEvent::Ping);
        }
        if !out.is_empty() {
            this.ping.as_mut().reset(Instant::now() + PING_EVERY);
            this.first_write.wrote();
            return Poll::Ready(Some(Ok(out.into())));
        }
        if !pending {
            // The bound was hit by events that write nothing (empty
            // tokens): poll again soon, as nothing else will wake us.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

impl MessageEvents {
    /// `events` about to be streamed as the message `info`.
    fn new(events: ChatStream, info: MessageInfo) -> Self {
        MessageEvents {
            inner: Some(events),
            info,
            started: false,
            open: None,
            next_block: 0,
            calls_begun: 0,
            ping: Box::pin(tokio::time::sleep(PING_EVERY)),
            first_write: FirstWrite::default(),
        }
    }

    /// `message_start` and a `ping`, before the first event's own.
    fn start(&mut self, out: &mut Vec<u8>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let message = OutMessage {
            id: &self.info.id,
            kind: "message",
            role: "assistant",
            model: &self.info.model,
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: OutUsage::default(),
        };
        event(out, &OutEvent::MessageStart { message });
        event(out, &OutEvent::Ping);
    }

    /// More text, in the open text block (opened here if another kind of
    /// block, or none, is open).
    fn text(&mut self, out: &mut Vec<u8>, token: &str) {
        if token.is_empty() {
            return;
        }
        let index = match self.open {
            Some(Block::Text(index)) => index,
            _ => {
                let index = self.begin(out, OutBlock::Text { text: "" });
                self.open = Some(Block::Text(index));
                index
            }
        };
        let delta = OutDelta::TextDelta { text: token };
        event(out, &OutEvent::ContentBlockDelta { index, delta });
    }

    /// A piece of a tool call: its first opens a `tool_use` block, later
    /// ones add `input_json_delta`s to it. A piece of a call whose block
    /// already closed cannot be said on this wire, and ends the answer.
    fn tool_call(&mut self, out: &mut Vec<u8>, delta: &ToolCallDelta) -> Result<(), GatewayError> {
        let index = match self.open {
            Some(Block::Tool { index, call }) if call == delta.index => index,
            _ if delta.index >= self.calls_begun => {
                let id = tool_use_id(delta.id.as_deref().unwrap_or(""));
                let block = OutBlock::ToolUse {
                    id: &id,
                    name: delta.name.as_deref().unwrap_or(""),
                    input: json!({}),
                };
                let index = self.begin(out, block);
                self.open = Some(Block::Tool {
                    index,
                    call: delta.index,
                });
                self.calls_begun = delta.index.saturating_add(1);
                index
            }
            _ => {
                return Err(GatewayError::unavailable(
                    "the upstream interleaved the pieces of several tool calls, which the \
                     Messages API cannot stream; ask without stream for this answer",
                ));
            }
        };
        if !delta.arguments.is_empty() {
            let delta = OutDelta::InputJsonDelta {
                partial_json: &delta.arguments,
            };
            event(out, &OutEvent::ContentBlockDelta { index, delta });
        }
        Ok(())
    }

    /// The end of a whole answer: the open block closed, the stop reason
    /// and usage, and `message_stop`.
    fn finish(&mut self, out: &mut Vec<u8>, completion: &Completion) -> Result<(), GatewayError> {
        self.close(out);
        let stop_reason = stop_reason(completion)?;
        event(
            out,
            &OutEvent::MessageDelta {
                delta: OutStop {
                    stop_reason,
                    stop_sequence: None,
                },
                usage: usage(completion),
            },
        );
        event(out, &OutEvent::MessageStop);
        self.inner = None;
        Ok(())
    }

    /// Closes the open block and starts `block`; its index.
    fn begin(&mut self, out: &mut Vec<u8>, block: OutBlock<'_>) -> u32 {
        self.close(out);
        let index = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        event(
            out,
            &OutEvent::ContentBlockStart {
                index,
                content_block: block,
            },
        );
        index
    }

    /// Closes the open block, if any.
    fn close(&mut self, out: &mut Vec<u8>) {
        let index = match self.open.take() {
            None => return,
            Some(Block::Text(index) | Block::Tool { index, .. }) => index,
        };
        event(out, &OutEvent::ContentBlockStop { index });
    }
}

/// Writes one event: `event: <type>`, its data, and the blank line.
fn event(out: &mut Vec<u8>, data: &OutEvent<'_>) {
    let name = match data {
        OutEvent::MessageStart { .. } => "message_start",
        OutEvent::ContentBlockStart { .. } => "content_block_start",
        OutEvent::ContentBlockDelta { .. } => "content_block_delta",
        OutEvent::ContentBlockStop { .. } => "content_block_stop",
        OutEvent::MessageDelta { .. } => "message_delta",
        OutEvent::MessageStop => "message_stop",
        OutEvent::Ping => "ping",
    };
    write_event(out, name, data);
}

/// The `error` event that ends an answer that broke after it started,
/// which the official SDKs raise as an error.
fn error_event(out: &mut Vec<u8>, err: &GatewayError) {
    let (_, kind) = status_and_type(err.kind());
    write_event(out, "error", &error_body(kind, err.message()));
}

fn write_event(out: &mut Vec<u8>, name: &str, data: &impl serde::Serialize) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use serde_json::Value;

    use super::*;
    use crate::chat::{FinishReason, Usage};

    /// The events `events` stream as: each `(name, data)`.
    async fn streamed(events: Vec<Result<ChatEvent, GatewayError>>) -> Vec<(String, Value)> {
        let body = MessageEvents::new(
            Box::pin(futures_util::stream::iter(events)),
            MessageInfo {
                id: "msg_1".into(),
                model: "m".into(),
            },
        );
        let bytes: Vec<u8> = body
            .map(|chunk| chunk.map(|b| b.to_vec()).unwrap_or_default())
            .concat()
            .await;
        String::from_utf8(bytes)
            .expect("utf-8")
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("event line");
                let data = data.strip_prefix("data: ").expect("data line");
                let data: Value = serde_json::from_str(data).expect("JSON data");
                assert_eq!(data["type"], name, "the data's type is the event's");
                (name.to_string(), data)
            })
            .collect()
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(name, _)| name.as_str()).collect()
    }

    fn piece(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ChatEvent {
        ChatEvent::ToolCall(ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: arguments.to_string(),
        })
    }

    fn done(reason: FinishReason) -> ChatEvent {
        ChatEvent::Done(Completion {
            finish_reason: Some(reason),
            usage: Some(Usage {
                input_tokens: 7,
                output_tokens: 3,
            }),
            ..Completion::default()
        })
    }

    #[tokio::test]
    async fn text_then_two_tool_calls_stream_as_three_blocks() {
        let events = streamed(vec![
            Ok(ChatEvent::Token("Let me ".into())),
            Ok(ChatEvent::Token("check.".into())),
            Ok(piece(0, Some("call_a"), Some("weather"), "")),
            Ok(piece(0, None, None, "{\"city\":")),
            Ok(piece(0, None, None, "\"Oslo\"}")),
            Ok(piece(1, Some("call_b"), Some("time"), "{}")),
            Ok(done(FinishReason::ToolCalls)),
        ])
        .await;
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(events[0].1["message"]["content"], json!([]));
        assert_eq!(
            events[6].1,
            json!({"type": "content_block_start", "index": 1, "content_block":
                   {"type": "tool_use", "id": "call_a", "name": "weather", "input": {}}})
        );
        assert_eq!(
            events[8].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "\"Oslo\"}"})
        );
        assert_eq!(events[10].1["index"], 2);
        assert_eq!(
            events[13].1,
            json!({"type": "message_delta",
                   "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                   "usage": {"input_tokens": 7, "output_tokens": 3}})
        );
    }

    #[tokio::test]
    async fn a_stream_that_breaks_ends_with_an_error_event_and_no_message_stop() {
        let events = streamed(vec![
            Ok(ChatEvent::Token("Half".into())),
            Err(GatewayError::unavailable("the upstream went away")),
        ])
        .await;
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(
            events[4].1,
            json!({"type": "error", "error":
                   {"type": "overloaded_error", "message": "the upstream went away"}})
        );
        let cut = streamed(vec![Ok(ChatEvent::Token("Half".into()))]).await;
        assert_eq!(cut.last().map(|(name, _)| name.as_str()), Some("error"));
        let failed = streamed(vec![Ok(done(FinishReason::Error))]).await;
        assert_eq!(names(&failed), ["message_start", "ping", "error"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_pings_every_interval_and_only_when_silent() {
        let events = futures_util::stream::iter(vec![Ok(ChatEvent::Token("a".into()))])
            .chain(futures_util::stream::pending());
        let mut body = MessageEvents::new(
            Box::pin(events),
            MessageInfo {
                id: "msg_1".into(),
                model: "m".into(),
            },
        );
        let first = body.next().await.expect("the start").expect("bytes");
        assert!(String::from_utf8_lossy(&first).contains("text_delta"));
        let began = tokio::time::Instant::now();
        for _ in 0..2 {
            let next = tokio::time::timeout(PING_EVERY * 2, body.next())
                .await
                .expect("a ping while silent")
                .expect("a ping")
                .expect("bytes");
            assert_eq!(&next[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        }
        assert_eq!(
            began.elapsed(),
            PING_EVERY * 2,
            "one ping per interval of silence"
        );
    }

    #[tokio::test]
    async fn the_first_text_goes_out_alone_and_the_rest_together() {
        let events = vec![
            Ok(ChatEvent::Token("Par".into())),
            Ok(ChatEvent::Token("is".into())),
            Ok(done(FinishReason::Stop)),
        ];
        let mut body = MessageEvents::new(
            Box::pin(futures_util::stream::iter(events)),
            MessageInfo {
                id: "msg_1".into(),
                model: "m".into(),
            },
        );
        let mut poll = || crate::frontend::edge::poll_write(&mut body);
        let first = poll().expect("the first text at once");
        assert!(first.starts_with("event: message_start"), "{first}");
        assert!(
            first.contains("\"Par\"") && !first.contains("\"is\""),
            "{first}"
        );
        assert_eq!(poll(), None, "a pause, so the server flushes it");
        let rest = poll().expect("the rest at once");
        assert!(
            rest.contains("\"is\"") && rest.contains("message_stop"),
            "{rest}"
        );
    }

    #[tokio::test]
    async fn a_piece_of_a_closed_tool_call_ends_the_answer_with_an_error() {
        let events = streamed(vec![
            Ok(piece(0, Some("a"), Some("x"), "")),
            Ok(piece(1, Some("b"), Some("y"), "")),
            Ok(piece(0, None, None, "{}")),
            Ok(done(FinishReason::ToolCalls)),
        ])
        .await;
        assert_eq!(events.last().map(|(name, _)| name.as_str()), Some("error"));
        assert!(!names(&events).contains(&"message_stop"));
    }
}
