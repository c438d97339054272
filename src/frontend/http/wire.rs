//! OpenAI's chat completions wire, as the HTTP front speaks it.
//!
//! Requests are read into the fields the gateway acts on, and every other
//! field is kept as sent, for the upstream: SDKs and engines add request
//! fields faster than any gateway learns them, and neither refusing nor
//! dropping them serves the caller. Responses borrow from the call's
//! state, so writing a token costs one serialization into one buffer.
//!
//! The shapes follow what the official SDKs parse: `chat.completion` and
//! `chat.completion.chunk` objects with one choice, `usage` with
//! `prompt_tokens` / `completion_tokens` / `total_tokens`, the `list` of
//! `model` objects, and the `{"error": {message, type, param, code}}` body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// Functions the model may call.
    #[serde(default)]
    pub(crate) tools: Option<Vec<WireTool>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "function":
    /// {"name"}}`; read by hand to name what is wrong with it.
    #[serde(default)]
    pub(crate) tool_choice: Option<Value>,
    /// `text`, `json_object` or `json_schema` with its schema.
    #[serde(default)]
    pub(crate) response_format: Option<WireResponseFormat>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub(crate) seed: Option<i64>,
    /// Every field not above (`user`, `logprobs`, penalties, vendor
    /// extras), as sent; filled in by the parser, never from a field of
    /// this name.
    #[serde(skip)]
    pub(crate) passthrough: Map<String, Value>,
}

/// The fields [`ChatCompletionRequest`] reads; every other one is
/// passed through.
pub(crate) const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "stream",
    "stream_options",
    "n",
    "tools",
    "tool_choice",
    "response_format",
    "seed",
];

/// A tool offered to the model.
#[derive(Debug, Deserialize)]
pub(crate) struct WireTool {
    /// Only `function` tools exist in chat completions.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    /// The function.
    #[serde(default)]
    pub(crate) function: Option<WireFunctionDef>,
}

/// A function's definition.
#[derive(Debug, Deserialize)]
pub(crate) struct WireFunctionDef {
    /// What the model calls it.
    #[serde(default)]
    pub(crate) name: String,
    /// What it does.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Its arguments' JSON schema.
    #[serde(default)]
    pub(crate) parameters: Option<Value>,
    /// Strict schema adherence.
    #[serde(default)]
    pub(crate) strict: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Deserialize)]
pub(crate) struct WireResponseFormat {
    /// `text`, `json_object` or `json_schema`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The schema of `json_schema`.
    #[serde(default)]
    pub(crate) json_schema: Option<WireJsonSchema>,
}

/// A named JSON schema.
#[derive(Debug, Deserialize)]
pub(crate) struct WireJsonSchema {
    /// Its name.
    #[serde(default)]
    pub(crate) name: String,
    /// What it is for.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// The schema.
    #[serde(default)]
    pub(crate) schema: Option<Value>,
    /// Strict adherence.
    #[serde(default)]
    pub(crate) strict: Option<bool>,
}

/// One message of the conversation.
#[derive(Debug, Deserialize)]
pub(crate) struct WireMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub(crate) role: String,
    /// Text, text parts, or null (an assistant turn that called tools).
    #[serde(default)]
    pub(crate) content: Option<Content>,
    /// The tools an assistant turn called.
    #[serde(default)]
    pub(crate) tool_calls: Option<Vec<WireToolCallIn>>,
    /// The call a tool message answers.
    #[serde(default)]
    pub(crate) tool_call_id: Option<String>,
}

/// A tool call in an assistant turn the caller sends back.
#[derive(Debug, Deserialize)]
pub(crate) struct WireToolCallIn {
    /// The call's id.
    pub(crate) id: String,
    /// The function called.
    pub(crate) function: WireFunctionCall,
}

/// The function of a tool call.
#[derive(Debug, Deserialize)]
pub(crate) struct WireFunctionCall {
    /// Its name.
    pub(crate) name: String,
    /// Its arguments, as JSON text.
    #[serde(default)]
    pub(crate) arguments: String,
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
    /// The image of an `image_url` part.
    #[serde(default)]
    pub(crate) image_url: Option<WireImageUrl>,
}

/// An image part's image.
#[derive(Debug, Deserialize)]
pub(crate) struct WireImageUrl {
    /// An https URL or a data URL.
    pub(crate) url: String,
    /// `low`, `high` or `auto`.
    #[serde(default)]
    pub(crate) detail: Option<String>,
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
    pub(crate) logprobs: Option<&'a Value>,
    pub(crate) finish_reason: &'a str,
}

/// The answer's text, as an assistant message.
#[derive(Debug, Serialize)]
pub(crate) struct AssistantMessage<'a> {
    pub(crate) role: &'static str,
    /// `null` when the answer only called tools.
    pub(crate) content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) tool_calls: Vec<WireToolCallOut<'a>>,
}

/// A tool call of an answer, whole or in pieces (`delta.tool_calls`).
#[derive(Debug, Serialize)]
pub(crate) struct WireToolCallOut<'a> {
    /// Which call of the answer (streamed pieces only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<&'a str>,
    /// `function`, whenever the id is sent.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) function: WireFunctionOut<'a>,
}

/// The function of a tool call: its name (first piece) and arguments.
#[derive(Debug, Serialize)]
pub(crate) struct WireFunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<&'a str>,
    pub(crate) arguments: &'a str,
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
    /// `null`, except on the finish chunk of a stream whose caller asked
    /// for logprobs: there, every token's (see `Completion::logprobs`).
    pub(crate) logprobs: Option<&'a Value>,
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
    /// New pieces of tool calls.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(crate) tool_calls: &'a [WireToolCallOut<'a>],
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
