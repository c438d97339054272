//! Anthropic's Messages API wire, as the Messages front speaks it.
//!
//! Requests are read loosely where Anthropic's own clients vary (a string
//! or text blocks for `system` and `content`; block fields the gateway has
//! no use for, such as `cache_control` and `citations`, ignored) and every
//! top-level field the front does not read is kept for the upstream, as the
//! OpenAI front keeps its own. Answers are the shapes the official SDKs
//! parse: the `message` object, the streamed events, and the
//! `{"type": "error", "error": {type, message}}` body.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// === requests ===

/// The body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct MessagesRequest {
    /// The route or alias to call.
    #[serde(default)]
    pub(crate) model: Option<String>,
    /// The conversation: user and assistant turns, oldest first.
    #[serde(default)]
    pub(crate) messages: Vec<InMessage>,
    /// System instructions, outside the turns.
    #[serde(default)]
    pub(crate) system: Option<InContent>,
    /// The token cap, which the Messages API requires.
    #[serde(default)]
    pub(crate) max_tokens: Option<i64>,
    /// Strings that end generation.
    #[serde(default)]
    pub(crate) stop_sequences: Option<Vec<String>>,
    /// Sampling temperature.
    #[serde(default)]
    pub(crate) temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default)]
    pub(crate) top_p: Option<f32>,
    /// Top-k sampling: no field of the vocabulary, so it travels as the
    /// `top_k` extra every upstream kind already reads.
    #[serde(default)]
    pub(crate) top_k: Option<u32>,
    /// Events as they come instead of one message.
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    /// Tools the model may call.
    #[serde(default)]
    pub(crate) tools: Option<Vec<InTool>>,
    /// How the model must use them.
    #[serde(default)]
    pub(crate) tool_choice: Option<InToolChoice>,
    /// Who the end user is (`user_id`).
    #[serde(default)]
    pub(crate) metadata: Option<InMetadata>,
    /// Every field not above (`thinking`, `service_tier`, vendor extras),
    /// as sent; filled in by the parser, never from a field of this name.
    #[serde(skip)]
    pub(crate) passthrough: Map<String, Value>,
}

/// The fields [`MessagesRequest`] reads; every other one is passed through.
pub(crate) const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "system",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
];

/// One turn.
#[derive(Debug, Deserialize)]
pub(crate) struct InMessage {
    /// `user` or `assistant`.
    pub(crate) role: String,
    /// A string or content blocks.
    pub(crate) content: InContent,
}

/// Content: plain text, or typed blocks.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content blocks")]
pub(crate) enum InContent {
    /// Plain text.
    Text(String),
    /// Typed blocks, each read on its own (see [`InBlock`]) so a wrong
    /// one is named by its place rather than failing the whole content.
    Blocks(Vec<Value>),
}

/// One content block, of any type: the fields of the types the front
/// reads (`text`, `image`, `tool_use`, `tool_result`). Read as one struct,
/// not a tagged enum, so a type the front does not take is named in the
/// error rather than reported as "no variant matched".
#[derive(Debug, Deserialize)]
pub(crate) struct InBlock {
    /// The block's type.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// A `text` block's text.
    #[serde(default)]
    pub(crate) text: Option<String>,
    /// An `image` block's image.
    #[serde(default)]
    pub(crate) source: Option<InImageSource>,
    /// A `tool_use` block's id.
    #[serde(default)]
    pub(crate) id: Option<String>,
    /// A `tool_use` block's tool.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// A `tool_use` block's arguments.
    #[serde(default)]
    pub(crate) input: Option<Value>,
    /// The `tool_use` a `tool_result` answers.
    #[serde(default)]
    pub(crate) tool_use_id: Option<String>,
    /// A `tool_result`'s content: a string or blocks. (Its `is_error`
    /// has no place in the vocabulary; see `request::tool_result`.)
    #[serde(default)]
    pub(crate) content: Option<InContent>,
}

/// Where an image is.
#[derive(Debug, Deserialize)]
pub(crate) struct InImageSource {
    /// `base64` or `url`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// A `base64` image's media type.
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    /// A `base64` image's bytes.
    #[serde(default)]
    pub(crate) data: Option<String>,
    /// A `url` image's address.
    #[serde(default)]
    pub(crate) url: Option<String>,
}

/// A tool offered to the model.
#[derive(Debug, Deserialize)]
pub(crate) struct InTool {
    /// `custom` (or absent); Anthropic's server tools are other types.
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    /// What the model calls it.
    #[serde(default)]
    pub(crate) name: String,
    /// What it does.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Its arguments' JSON schema.
    #[serde(default)]
    pub(crate) input_schema: Option<Value>,
}

/// `tool_choice`.
#[derive(Debug, Deserialize)]
pub(crate) struct InToolChoice {
    /// `auto`, `any`, `tool` or `none`.
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// The tool a `tool` choice names.
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// At most one tool call per answer.
    #[serde(default)]
    pub(crate) disable_parallel_tool_use: Option<bool>,
}

/// `metadata`.
#[derive(Debug, Deserialize)]
pub(crate) struct InMetadata {
    /// An opaque id of the end user.
    #[serde(default)]
    pub(crate) user_id: Option<String>,
}

// === answers ===

/// A `message` object: the whole answer, or (empty) the skeleton that
/// `message_start` carries.
#[derive(Debug, Serialize)]
pub(crate) struct OutMessage<'a> {
    pub(crate) id: &'a str,
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) role: &'static str,
    pub(crate) model: &'a str,
    pub(crate) content: Vec<OutBlock<'a>>,
    pub(crate) stop_reason: Option<&'static str>,
    /// Always `null`: the vocabulary does not say which sequence stopped
    /// an answer (see the module doc).
    pub(crate) stop_sequence: Option<&'a str>,
    pub(crate) usage: OutUsage,
}

/// A content block of an answer.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum OutBlock<'a> {
    /// Text.
    Text {
        /// The text (empty at a streamed block's start).
        text: &'a str,
    },
    /// A tool call.
    ToolUse {
        /// Its id, which the tool's result names.
        id: &'a str,
        /// The tool.
        name: &'a str,
        /// Its arguments (`{}` at a streamed block's start).
        input: Value,
    },
}

/// Token counts in Anthropic's names.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct OutUsage {
    pub(crate) input_tokens: u32,
    pub(crate) output_tokens: u32,
}

/// One streamed event's data.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum OutEvent<'a> {
    /// The answer begins.
    MessageStart {
        /// The message, with no content yet.
        message: OutMessage<'a>,
    },
    /// A block begins.
    ContentBlockStart {
        /// Its place in the answer's content.
        index: u32,
        /// The block, empty.
        content_block: OutBlock<'a>,
    },
    /// More of a block.
    ContentBlockDelta {
        /// The block's place.
        index: u32,
        /// What it adds.
        delta: OutDelta<'a>,
    },
    /// A block ends.
    ContentBlockStop {
        /// The block's place.
        index: u32,
    },
    /// The answer's end: why, and the final counts.
    MessageDelta {
        /// The stop reason.
        delta: OutStop,
        /// The final counts.
        usage: OutUsage,
    },
    /// Nothing follows.
    MessageStop,
    /// Keeps the connection alive.
    Ping,
}

/// What a `content_block_delta` adds.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum OutDelta<'a> {
    /// More text.
    TextDelta {
        /// The text.
        text: &'a str,
    },
    /// More of a tool call's arguments, as JSON text.
    InputJsonDelta {
        /// The piece.
        partial_json: &'a str,
    },
}

/// `message_delta`'s delta.
#[derive(Debug, Serialize)]
pub(crate) struct OutStop {
    pub(crate) stop_reason: &'static str,
    pub(crate) stop_sequence: Option<&'static str>,
}

/// `{"type": "error", "error": {...}}`, as a body and as the `error`
/// event that ends a broken stream.
#[derive(Debug, Serialize)]
pub(crate) struct OutError<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) error: OutErrorDetail<'a>,
}

/// What went wrong, in Anthropic's fields.
#[derive(Debug, Serialize)]
pub(crate) struct OutErrorDetail<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) message: &'a str,
}
