//! `kind: anthropic`: Anthropic's Messages API, `POST {endpoint}/v1/messages`.
//!
//! Three differences from the OpenAI wire shape the translation:
//! - There is no system role in `messages`: system instructions are the
//!   top-level `system` prompt. Leading system messages move there; a system
//!   message in the middle of a conversation has no place on this wire and
//!   is refused (INVALID_ARGUMENT) rather than moved, which would change
//!   what the conversation says.
//! - `max_tokens` is required, so the upstream's `default_max_tokens`
//!   applies when the caller sets none.
//! - The key goes in `x-api-key`, with the API version in
//!   `anthropic-version`.
//!
//! A stream is SSE with typed events: `message_start` (model, input
//! tokens), `content_block_delta` (text in `text_delta`s), `message_delta`
//! (stop reason, cumulative output tokens), `message_stop`, `ping`, and
//! `error` (an `overloaded_error` or `rate_limit_error` after the stream
//! started). Event types we do not know are skipped, as Anthropic's
//! versioning policy asks of clients.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderName;
use serde::{Deserialize, Serialize};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::sse::{SseDecoder, SseEvent};
use super::wire::{self, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{ChatMessage, ChatRequest, Completion, FinishReason, Role, Usage};
use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, GatewayError};

/// The Messages API version we speak; `headers:` may override it.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// An Anthropic (or Anthropic-compatible) upstream.
#[derive(Debug)]
pub(crate) struct AnthropicBackend {
    /// Where to send, with which headers.
    http: HttpUpstream,
    /// `max_tokens` when the caller sets none.
    default_max_tokens: u32,
}

/// The request body; borrows from the [`ChatRequest`] except a system
/// prompt joined from several messages.
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    /// Only user and assistant messages, which serialize as Anthropic's
    /// `{role, content}` with a string content.
    messages: &'a [ChatMessage],
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    stream: bool,
}

/// A whole `Message` (the non-streamed answer, and the skeleton in
/// `message_start`), or an error body.
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<WireBlock<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

/// One content block; only `text` blocks are part of the answer (thinking
/// and tool-use blocks are not text for the caller).
#[derive(Deserialize)]
struct WireBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// Token counts. Anthropic counts cached prompt tokens apart from
/// `input_tokens`; callers get them summed, the prompt's whole size, as
/// OpenAI-style upstreams report it.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
}

/// One streamed event's data: the fields we read of any event type.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// `message_start`.
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
    /// `content_block_delta` (the text) and `message_delta` (the stop).
    #[serde(borrow, default)]
    delta: Option<WireDelta<'a>>,
    /// `message_delta`.
    #[serde(default)]
    usage: Option<WireUsage>,
    /// `error`.
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stop_reason: Option<Cow<'a, str>>,
}

/// Reads an SSE stream of Messages API events.
pub(crate) struct EventStream {
    /// A `message_delta` said why generation stopped: the answer is whole
    /// even if `message_stop` never comes.
    stopped: bool,
}

// === impl AnthropicBackend ===

impl AnthropicBackend {
    /// Prepares the key and headers of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        AnthropicBackend {
            http: HttpUpstream::new(
                config,
                client,
                "/v1/messages",
                Credential::Header(HeaderName::from_static("x-api-key")),
                &[(
                    HeaderName::from_static("anthropic-version"),
                    ANTHROPIC_VERSION,
                )],
            ),
            default_max_tokens: config.default_max_tokens,
        }
    }

    /// The system prompt (the leading system messages) and the rest of the
    /// conversation, which must hold no other system message.
    fn split_system<'a>(
        &self,
        messages: &'a [ChatMessage],
    ) -> Result<(Option<Cow<'a, str>>, &'a [ChatMessage]), GatewayError> {
        let leading = messages
            .iter()
            .take_while(|m| m.role == Role::System)
            .count();
        let (system, rest) = messages.split_at(leading);
        if let Some(i) = rest.iter().position(|m| m.role == Role::System) {
            return Err(GatewayError::invalid_argument(
                &format!("messages[{}].role", leading + i),
                &format!(
                    "is system after the conversation started; this model is served by \
                     upstream '{}' (Anthropic's Messages API), which takes system \
                     instructions only before the first user message: move them to the start",
                    self.http.name()
                ),
            ));
        }
        if rest.is_empty() {
            return Err(GatewayError::invalid_argument(
                "messages",
                &format!(
                    "holds only system messages; upstream '{}' (Anthropic's Messages API) \
                     needs at least one user message",
                    self.http.name()
                ),
            ));
        }
        let system = match system {
            [] => None,
            [one] => Some(Cow::Borrowed(one.content.as_str())),
            several => Some(Cow::Owned(
                several
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            )),
        };
        Ok((system, rest))
    }
}

// === impl Adapter for AnthropicBackend ===

impl Adapter for AnthropicBackend {
    type Body<'a> = WireRequest<'a>;
    type Dialect = EventStream;

    fn http(&self) -> &HttpUpstream {
        &self.http
    }

    /// Refuses a conversation with no place for its system messages on this
    /// wire (see the module doc).
    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<WireRequest<'a>, GatewayError> {
        let (system, messages) = self.split_system(&req.messages)?;
        Ok(WireRequest {
            model,
            system,
            messages,
            max_tokens: req.params.max_tokens.unwrap_or(self.default_max_tokens),
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop_sequences: &req.params.stop,
            stream: req.stream,
        })
    }

    fn dialect(&self) -> EventStream {
        EventStream { stopped: false }
    }

    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<String, GatewayError> {
        let answer: WireMessage<'_> = self.http.parse(bytes, "a message")?;
        if answer.kind.as_deref() == Some("error") || answer.error.is_some() {
            let (kind, what) = describe_error(answer.error.as_ref());
            return Err(self
                .http
                .error(kind, &format!("reported an error ({what})")));
        }
        let text = answer
            .content
            .iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text.as_deref())
            .collect();
        completion.finish_reason = answer.stop_reason.as_deref().and_then(FinishReason::parse);
        if let Some(usage) = &answer.usage {
            usage.apply(completion);
        }
        if let Some(model) = answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        Ok(text)
    }
}

// === impl EventStream ===

impl Dialect for EventStream {
    type Framing = SseDecoder;

    fn on_item(&mut self, event: SseEvent, completion: &mut Completion) -> Step {
        let data: WireEvent<'_> = match serde_json::from_str(&event.data) {
            Ok(data) => data,
            Err(err) => {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    format!(
                        "sent an event that is not a valid Messages API event ({err}): {}",
                        wire::quote(event.data.as_bytes())
                    ),
                );
            }
        };
        match data.kind.as_ref() {
            "content_block_delta" => match data.delta {
                Some(WireDelta {
                    kind: Some(kind),
                    text: Some(text),
                    ..
                }) if kind == "text_delta" && !text.is_empty() => Step::Token(text.into_owned()),
                _ => Step::Skip,
            },
            "message_start" => {
                if let Some(message) = data.message {
                    if let Some(model) = message.model {
                        completion.model = Arc::from(model.as_ref());
                    }
                    if let Some(usage) = &message.usage {
                        usage.apply(completion);
                    }
                }
                Step::Skip
            }
            "message_delta" => {
                if let Some(reason) = data.delta.and_then(|d| d.stop_reason) {
                    completion.finish_reason = FinishReason::parse(&reason);
                    self.stopped = true;
                }
                if let Some(usage) = &data.usage {
                    usage.apply(completion);
                }
                Step::Skip
            }
            "message_stop" => Step::Done,
            "error" => {
                let (kind, what) = describe_error(data.error.as_ref());
                Step::Fail(kind, format!("reported an error mid-stream ({what})"))
            }
            // ping, content_block_start/stop, and event types added later.
            _ => Step::Skip,
        }
    }

    fn on_end(&self) -> Result<(), String> {
        if self.stopped {
            Ok(())
        } else {
            Err("ended its stream before message_stop".into())
        }
    }
}

// === impl WireUsage ===

impl WireUsage {
    /// Records the counts this report has; a later report (the cumulative
    /// `message_delta`) overrides an earlier one field by field.
    fn apply(&self, completion: &mut Completion) {
        let usage = completion.usage.get_or_insert_with(Usage::default);
        if let Some(input) = self.input_tokens {
            usage.input_tokens = input
                .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
                .saturating_add(self.cache_read_input_tokens.unwrap_or(0));
        }
        if let Some(output) = self.output_tokens {
            usage.output_tokens = output;
        }
    }
}

// === helpers ===

/// The canonical kind of an Anthropic error type, and the error as
/// "type: message" for the caller. The types are those of Anthropic's
/// HTTP errors; in a stream they come without a status.
fn describe_error(error: Option<&WireError<'_>>) -> (ErrorKind, String) {
    let kind = error.and_then(|e| e.kind.as_deref()).unwrap_or("error");
    let message = error
        .and_then(|e| e.message.as_deref())
        .unwrap_or("no message");
    let canonical = match kind {
        "invalid_request_error" | "request_too_large" => ErrorKind::InvalidArgument,
        "authentication_error" => ErrorKind::Unauthenticated,
        "permission_error" | "billing_error" => ErrorKind::PermissionDenied,
        "not_found_error" => ErrorKind::NotFound,
        "rate_limit_error" => ErrorKind::ResourceExhausted,
        "timeout_error" => ErrorKind::DeadlineExceeded,
        // overloaded_error, api_error and types added later: the upstream
        // failed, and another try may not.
        _ => ErrorKind::Unavailable,
    };
    (canonical, format!("{kind}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: &str) -> ErrorKind {
        let error = WireError {
            kind: Some(Cow::Borrowed(kind)),
            message: Some(Cow::Borrowed("m")),
        };
        describe_error(Some(&error)).0
    }

    #[test]
    fn error_types_map_to_the_codes_their_http_statuses_mean() {
        assert_eq!(error("overloaded_error"), ErrorKind::Unavailable);
        assert_eq!(error("api_error"), ErrorKind::Unavailable);
        assert_eq!(error("rate_limit_error"), ErrorKind::ResourceExhausted);
        assert_eq!(error("invalid_request_error"), ErrorKind::InvalidArgument);
        assert_eq!(error("authentication_error"), ErrorKind::Unauthenticated);
        assert_eq!(error("permission_error"), ErrorKind::PermissionDenied);
        assert_eq!(error("not_found_error"), ErrorKind::NotFound);
        assert_eq!(error("timeout_error"), ErrorKind::DeadlineExceeded);
        assert_eq!(error("some_future_error"), ErrorKind::Unavailable);
    }

    #[test]
    fn cached_prompt_tokens_count_as_input() {
        let usage: WireUsage = serde_json::from_str(
            r#"{"input_tokens":5,"cache_creation_input_tokens":100,"cache_read_input_tokens":20,"output_tokens":1}"#,
        )
        .expect("usage");
        let mut completion = Completion::default();
        usage.apply(&mut completion);
        assert_eq!(
            completion.usage,
            Some(Usage {
                input_tokens: 125,
                output_tokens: 1
            })
        );
    }
}
