//! What it takes to continue an answer whose stream broke: the text the
//! caller already has, the request that asks another upstream for the rest,
//! and, for a replay, the filter that drops what the caller already has
//! from the new answer after checking it is the same.
//!
//! Two strategies, chosen per upstream (`continuation:`):
//! - **prefill**: the delivered text goes as a final assistant message that
//!   the upstream continues (vLLM's `continue_final_message`; Anthropic and
//!   Ollama continue a final assistant message by themselves), so only the
//!   rest is generated.
//! - **replay**: the original request is sent again and the new answer's
//!   start is checked against the delivered text and dropped. Only a
//!   deterministic decode reproduces it, so replay is tried only for
//!   temperature 0 or the simulator; a prefix that differs ends the call
//!   with an error, never a spliced answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::Stream;

use crate::chat::{ChatEvent, ChatMessage, ChatRequest, ChatStream, Role};
use crate::config::{UpstreamConfig, UpstreamKind};
use crate::error::GatewayError;

/// The part of an answer the caller already has.
#[derive(Debug, Clone, Default)]
pub(crate) struct Delivered {
    /// Every token's text, in order.
    pub text: String,
    /// How many token events carried it.
    pub tokens: u32,
}

/// Drops the start of a replayed answer that the caller already has,
/// checking it matches, and passes on the rest.
pub(crate) struct SkipPrefix {
    inner: ChatStream,
    /// The delivered text not yet matched by the replay.
    expected: Arc<str>,
    /// How much of `expected` the replay has matched.
    matched: usize,
}

/// The request that asks an upstream to continue `delivered` (prefill).
///
/// Trailing whitespace is left out of the prefill: Anthropic refuses a final
/// assistant turn that ends with it, and tokenizers start words with their
/// space, so a model continues best from the last word. The continuation
/// then starts with that whitespace again, which [`SkipLeadingSpace`]
/// drops.
pub(crate) fn prefill_request(req: &ChatRequest, delivered: &Delivered) -> ChatRequest {
    let mut continued = req.clone();
    continued.messages.push(ChatMessage::text(
        Role::Assistant,
        delivered.text.trim_end().to_string(),
    ));
    continued.prefill = true;
    // What is left of the caller's cap, so the whole answer keeps to it.
    continued.params.max_tokens = req
        .params
        .max_tokens
        .map(|cap| cap.saturating_sub(delivered.tokens).max(1));
    continued
}

/// Drops from the start of a prefill's continuation the whitespace
/// [`prefill_request`] left out of the prefill (the caller already has it),
/// as far as the continuation repeats it.
pub(crate) struct SkipLeadingSpace {
    inner: ChatStream,
    /// Bytes of whitespace that may still be dropped.
    left: usize,
}

impl SkipLeadingSpace {
    /// Filters `continuation`, the answer to a prefill of `delivered`.
    pub(crate) fn new(continuation: ChatStream, delivered: &Delivered) -> Self {
        let text = &delivered.text;
        SkipLeadingSpace {
            inner: continuation,
            left: text.len() - text.trim_end().len(),
        }
    }
}

impl Stream for SkipLeadingSpace {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let event = ready!(this.inner.as_mut().poll_next(cx));
            if this.left == 0 {
                return Poll::Ready(event);
            }
            let Some(Ok(ChatEvent::Token(text))) = event else {
                this.left = 0;
                return Poll::Ready(event);
            };
            let space = text.len() - text.trim_start().len();
            let dropped = space.min(this.left);
            // Whitespace is ASCII or whole multi-byte chars; cut only at a
            // char boundary.
            let dropped = (0..=dropped)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            this.left = if dropped < text.len() {
                0
            } else {
                this.left - dropped
            };
            match text.get(dropped..) {
                Some("") | None => continue,
                Some(rest) => return Poll::Ready(Some(Ok(ChatEvent::Token(rest.to_string())))),
            }
        }
    }
}

/// Whether sending `req` again to `upstream` would regenerate the same
/// text: only a deterministic decode does.
pub(crate) fn replayable(req: &ChatRequest, upstream: &UpstreamConfig) -> bool {
    upstream.kind == UpstreamKind::Sim || req.params.temperature == Some(0.0)
}

/// The error a broken answer ends with when no upstream could continue it.
pub(crate) fn could_not_continue(broke: &GatewayError, why: &GatewayError) -> GatewayError {
    GatewayError::unavailable(format!(
        "{}; it could not be continued elsewhere ({}); the tokens already sent are \
         a partial answer: retry the whole call",
        broke.message(),
        why.message()
    ))
}

// === impl SkipPrefix ===

impl SkipPrefix {
    /// Filters `replay`, the answer regenerated from the original request.
    pub(crate) fn new(replay: ChatStream, delivered: &Delivered) -> Self {
        SkipPrefix {
            inner: replay,
            expected: Arc::from(delivered.text.as_str()),
            matched: 0,
        }
    }

    fn differs(&self) -> GatewayError {
        GatewayError::unavailable(format!(
            "the replayed answer differs from the {} bytes already sent, so the answer \
             could not be continued; send temperature 0 for answers that can be replayed",
            self.expected.len()
        ))
        .not_retryable()
    }
}

impl Stream for SkipPrefix {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let rest = &this.expected[this.matched..];
            if rest.is_empty() {
                return this.inner.as_mut().poll_next(cx);
            }
            match ready!(this.inner.as_mut().poll_next(cx)) {
                Some(Ok(ChatEvent::Token(text))) => {
                    if text.len() <= rest.len() {
                        if !rest.starts_with(text.as_str()) {
                            return Poll::Ready(Some(Err(this.differs())));
                        }
                        this.matched += text.len();
                        continue;
                    }
                    match text.strip_prefix(rest) {
                        Some(new) => {
                            let new = new.to_string();
                            this.matched = this.expected.len();
                            return Poll::Ready(Some(Ok(ChatEvent::Token(new))));
                        }
                        None => return Poll::Ready(Some(Err(this.differs()))),
                    }
                }
                // It ended, or turned to calling tools, before reaching
                // where the first answer broke.
                Some(Ok(ChatEvent::Done(_) | ChatEvent::ToolCall(_))) => {
                    return Poll::Ready(Some(Err(this.differs())));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::chat::Completion;
    use crate::chat::testing::request;
    use crate::error::ErrorKind;

    fn replay(tokens: &[&str]) -> ChatStream {
        let mut events: Vec<Result<ChatEvent, GatewayError>> = tokens
            .iter()
            .map(|t| Ok(ChatEvent::Token(t.to_string())))
            .collect();
        events.push(Ok(ChatEvent::Done(Completion::default())));
        Box::pin(futures_util::stream::iter(events))
    }

    fn delivered(text: &str) -> Delivered {
        Delivered {
            text: text.into(),
            tokens: 2,
        }
    }

    async fn texts(stream: SkipPrefix) -> Result<Vec<String>, GatewayError> {
        let mut out = Vec::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event? {
                ChatEvent::Token(text) => out.push(text),
                ChatEvent::ToolCall(_) => out.push("<tool call>".into()),
                ChatEvent::Done(_) => out.push("<done>".into()),
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_replay_that_matches_passes_on_only_what_is_new() {
        let stream = SkipPrefix::new(
            replay(&["The", " sky", " is", " blue"]),
            &delivered("The sky"),
        );
        assert_eq!(
            texts(stream).await.ok(),
            Some(vec![" is".into(), " blue".into(), "<done>".into()])
        );
    }

    #[tokio::test]
    async fn a_break_inside_a_token_passes_on_the_token_s_new_part() {
        let stream = SkipPrefix::new(replay(&["The", " sky", " is"]), &delivered("The s"));
        assert_eq!(
            texts(stream).await.ok(),
            Some(vec!["ky".into(), " is".into(), "<done>".into()])
        );
    }

    #[tokio::test]
    async fn a_replay_that_differs_is_an_error_and_not_retried() {
        let stream = SkipPrefix::new(replay(&["The", " sea", " is"]), &delivered("The sky"));
        let err = texts(stream)
            .await
            .err()
            .map(|e| (e.kind(), e.is_retryable()));
        assert_eq!(err, Some((ErrorKind::Unavailable, false)));
    }

    #[tokio::test]
    async fn a_replay_that_ends_before_the_break_is_an_error() {
        let stream = SkipPrefix::new(replay(&["The"]), &delivered("The sky"));
        assert!(texts(stream).await.is_err());
    }

    #[tokio::test]
    async fn the_whitespace_left_out_of_a_prefill_is_dropped_once_from_its_continuation() {
        let continuation = replay(&["\n", "\nSecond", " paragraph"]);
        let delivered = Delivered {
            text: "First.\n\n".into(),
            tokens: 2,
        };
        let mut stream = std::pin::pin!(SkipLeadingSpace::new(continuation, &delivered));
        let mut out = Vec::new();
        while let Some(Ok(event)) = stream.next().await {
            if let ChatEvent::Token(text) = event {
                out.push(text);
            }
        }
        assert_eq!(out, ["Second", " paragraph"]);
        // A continuation that does not repeat the space is passed on whole.
        let continuation = replay(&["Second"]);
        let mut stream = std::pin::pin!(SkipLeadingSpace::new(continuation, &delivered));
        let first = stream.next().await;
        assert!(matches!(first, Some(Ok(ChatEvent::Token(t))) if t == "Second"));
    }

    #[test]
    fn a_prefill_request_ends_with_the_delivered_text_and_keeps_the_token_cap() {
        let mut req = request("m");
        req.params.max_tokens = Some(10);
        let continued = prefill_request(&req, &delivered("The sky"));
        let last = continued
            .messages
            .last()
            .map(|m| (m.role, m.content.as_str()));
        assert_eq!(last, Some((Role::Assistant, "The sky")));
        assert!(continued.prefill && !req.prefill);
        assert_eq!(continued.params.max_tokens, Some(8));
        assert_eq!(continued.messages.len(), req.messages.len() + 1);
    }
}
