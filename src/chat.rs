//! The one vocabulary a call speaks inside the gateway.
//!
//! Front ends translate their wire format (gRPC, OpenAI HTTP)
//! into a [`ChatRequest`]; backend adapters translate it into their
//! upstream's wire and answer with a [`ChatStream`] of [`ChatEvent`]s. No
//! layer in between knows any wire format, which is what lets one routing
//! table, one balancer and one set of limits serve every front end and every
//! kind of upstream.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::GatewayError;

/// One chat completion call, as every layer sees it.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The model name the caller asked for; the router maps it to a route.
    pub model: String,
    /// The conversation so far, oldest first. Never empty once validated.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters, passed through to the upstream.
    pub params: SamplingParams,
    /// Whether the caller wants tokens as they come (`CompleteStream`) or the
    /// whole answer at once (`Complete`); adapters pick the matching upstream
    /// mode so a unary call never pays for a stream it does not read.
    pub stream: bool,
    /// When the caller stops waiting (from `grpc-timeout`). Every layer below
    /// must be done by then, upstream included.
    pub deadline: Option<Instant>,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// The speakers every supported upstream understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The human (or calling service).
    User,
    /// The model's earlier answers.
    Assistant,
}

/// Sampling parameters; `None` and empty mean "the upstream's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    /// Upper bound on generated tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    pub top_p: Option<f32>,
    /// Strings that end generation when produced.
    pub stop: Vec<String>,
}

/// What a backend sends back, in order: any number of tokens, then exactly
/// one [`ChatEvent::Done`]. A stream that ends without `Done` was cut short,
/// and front ends must report it as an error rather than a complete answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    /// A piece of generated text.
    Token(String),
    /// Generation finished; nothing follows.
    Done(Completion),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// Why it ended, in the normalized vocabulary; `None` when the upstream
    /// did not say.
    pub finish_reason: Option<FinishReason>,
    /// Tokens in and out, when the upstream reported them.
    pub usage: Option<Usage>,
    /// The model that served the call, as the upstream named it.
    pub model: Arc<str>,
}

/// Why generation stopped, normalized across upstream kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model ended its answer or hit a stop string.
    Stop,
    /// `max_tokens` (or the context window) cut the answer.
    Length,
    /// The provider withheld content.
    ContentFilter,
    /// The model asked to call a tool.
    ToolCalls,
    /// The upstream reported an error while generating.
    Error,
}

/// Token accounting for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// The stream every backend returns and every layer passes along. It is
/// polled by the task that serves the call, so dropping it (the caller left,
/// or a deadline passed) drops the upstream request with it.
pub type ChatStream = Pin<Box<dyn Stream<Item = Result<ChatEvent, GatewayError>> + Send>>;

// === impl Role ===

impl Role {
    /// The role's name on every wire we speak.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parses a wire role name; `None` for anything we cannot forward.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

// === impl FinishReason ===

impl FinishReason {
    /// Maps an upstream's finish reason onto the normalized set; reasons we do
    /// not know are kept as `None` rather than guessed.
    pub fn parse(name: &str) -> Option<FinishReason> {
        match name {
            "stop" | "end_turn" | "stop_sequence" | "eos" => Some(FinishReason::Stop),
            "length" | "max_tokens" | "model_context_window_exceeded" => Some(FinishReason::Length),
            "content_filter" | "refusal" => Some(FinishReason::ContentFilter),
            "tool_calls" | "tool_use" | "function_call" => Some(FinishReason::ToolCalls),
            "error" => Some(FinishReason::Error),
            _ => None,
        }
    }

    /// The normalized name callers see.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Error => "error",
        }
    }
}

// === impl ChatRequest ===

impl ChatRequest {
    /// Checks what every upstream needs before the call goes anywhere, so a
    /// bad request fails here with the field named instead of as an opaque
    /// upstream 400.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if self.model.is_empty() {
            return Err(GatewayError::invalid_argument(
                "model",
                "is empty; name the model to use (ListModels shows the routed models)",
            ));
        }
        if self.messages.is_empty() {
            return Err(GatewayError::invalid_argument(
                "messages",
                "is empty; send at least one message",
            ));
        }
        let finite_in = |value: Option<f32>, low: f32, high: f32| {
            value.is_none_or(|v| v.is_finite() && (low..=high).contains(&v))
        };
        if !finite_in(self.params.temperature, 0.0, 2.0) {
            return Err(GatewayError::invalid_argument(
                "temperature",
                "must be between 0 and 2",
            ));
        }
        if !finite_in(self.params.top_p, 0.0, 1.0) {
            return Err(GatewayError::invalid_argument(
                "top_p",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}
