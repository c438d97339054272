//! OpenAI's chat completions wire, as the HTTP front speaks it.
//!
//! Requests keep every field the gateway acts on and ignore the rest, as
//! OpenAI-compatible servers do: SDKs add request fields faster than any
//! gateway learns them, and refusing them would break a client on its next
//! upgrade. Responses borrow from the call's state, so writing a token costs
//! one serialization into one buffer.
//!
//! The shapes follow what the official SDKs parse: `chat.completion` and
//! `chat.completion.chunk` objects with one choice, `usage` with
//! `prompt_tokens` / `completion_tokens` / `total_tokens`, the `list` of
//! `model` objects, and the `{"error": {message, type, param, code}}` body.

use serde::{Deserialize, Serialize};

use crate::chat::Usage;

// === requests ===

/// The body of `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatCompletionRequest {
    /// The route or alias to call.
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// The conversation, oldest first.
    #[serde(default)]
    pub(crate) messages: Vec<WireMessage>,
    /// The older name of the token cap; still what most servers send.
    #[serde(default)]
    pub(crate) max_tokens: Option<i64>,
    /// OpenAI's current name for the token cap; wins over `max_tokens`.
    #[serde(default)]
    pub(crate) max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    #[serde(default)]
    pub(crate) temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub(crate) top_p: Option<f32>,
    /// Stop strings: one, or a list.
    #[serde(default)]
    pub(crate) stop: Option<Stop>,
    /// Tokens as server-sent events instead of one JSON answer.
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    /// `include_usage` adds a final usage chunk to a stream.
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
    /// Choices to generate. Only one is supported, and a caller asking for
    /// more is told so rather than handed one and left to index a missing
    /// second.
    #[serde(default)]
    pub(crate) n: Option<u32>,
    // `user` (the end user's id) is accepted and ignored like any unknown
    // field: the internal request has no caller field yet to carry it.
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub(crate) struct WireMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub(crate) role: String,
    /// Text, text parts, or null (an assistant turn that called tools).
    #[serde(default)]
    pub(crate) content: Option<Content>,
}

/// A message's content: a string, or an array of typed parts.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub(crate) enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts; only `text` parts can be forwarded.
    Parts(Vec<ContentPart>),
}

/// One part of an array content.
#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    /// `text`, `image_url`, `input_audio`, ...
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub(crate) text: Option<String>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub(crate) enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
pub(crate) struct StreamOptions {
    /// Send a usage chunk before `[DONE]`.
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

// === answers ===

/// A whole answer (`stream: false`).
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletion<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    pub(crate) choices: [Choice<'a>; 1],
    pub(crate) usage: Option<WireUsage>,
}

/// The one choice of a whole answer.
#[derive(Debug, Serialize)]
pub(crate) struct Choice<'a> {
    pub(crate) index: u32,
    pub(crate) message: AssistantMessage<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: &'a str,
}

/// The answer's text, as an assistant message.
#[derive(Debug, Serialize)]
pub(crate) struct AssistantMessage<'a> {
    pub(crate) role: &'static str,
    pub(crate) content: &'a str,
}

/// One event of a stream.
#[derive(Debug, Serialize)]
pub(crate) struct ChatCompletionChunk<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
    /// One choice, or none on the usage chunk.
    pub(crate) choices: &'a [ChunkChoice<'a>],
    /// Absent unless the caller asked for usage; then `null` on every chunk
    /// but the usage chunk, as OpenAI sends it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) usage: Option<Option<WireUsage>>,
}

/// The choice of one stream chunk.
#[derive(Debug, Serialize)]
pub(crate) struct ChunkChoice<'a> {
    pub(crate) index: u32,
    pub(crate) delta: Delta<'a>,
    pub(crate) logprobs: Option<()>,
    pub(crate) finish_reason: Option<&'a str>,
}

/// What a chunk adds to the answer.
#[derive(Debug, Serialize, Default)]
pub(crate) struct Delta<'a> {
    /// `assistant`, on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    /// The new text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<&'a str>,
}

/// Token accounting in OpenAI's names.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct WireUsage {
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
    pub(crate) total_tokens: u32,
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList<'a> {
    pub(crate) object: &'static str,
    pub(crate) data: Vec<ModelEntry<'a>>,
}

/// One routable name.
#[derive(Debug, Serialize)]
pub(crate) struct ModelEntry<'a> {
    pub(crate) id: &'a str,
    pub(crate) object: &'static str,
    pub(crate) created: u64,
    pub(crate) owned_by: &'static str,
    /// The route an alias belongs to (the route's own name for a route),
    /// as vLLM names a served model's origin.
    pub(crate) root: &'a str,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub(crate) error: ErrorDetail<'a>,
}

/// What went wrong, in OpenAI's fields.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorDetail<'a> {
    pub(crate) message: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) param: Option<&'a str>,
    pub(crate) code: Option<&'static str>,
}

// === impl WireUsage ===

impl From<Usage> for WireUsage {
    fn from(usage: Usage) -> Self {
        WireUsage {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage.input_tokens.saturating_add(usage.output_tokens),
        }
    }
}
