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
//! Agent calls translate block by block: tools become `tools` with an
//! `input_schema`, `tool_choice` Anthropic's (`required` is `any`,
//! `parallel_tool_calls: false` is `disable_parallel_tool_use`), an
//! assistant's tool calls `tool_use` blocks, tool messages `tool_result`
//! blocks in a user turn, images `image` blocks, `top_k` and `user`
//! (`metadata.user_id`) their own fields. What the Messages API cannot say
//! (`seed`, a JSON `response_format`, penalties, `logprobs`, ...) is refused
//! naming the field. Answers' `tool_use` blocks come back as tool calls,
//! streamed from `content_block_start` and `input_json_delta` pieces.
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
use serde_json::{Map, Value, json};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::sse::{SseDecoder, SseEvent};
use super::translate;
use super::wire::{self, Answered, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{
    ChatEvent, ChatMessage, ChatRequest, Completion, ContentPart, FinishReason, ResponseFormat,
    Role, ToolCallDelta, ToolChoice, Usage,
};
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
    /// User and assistant turns: plain text borrowed, anything else as
    /// content blocks.
    messages: Vec<Turn<'a>>,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Value>,
    /// Anthropic's own request fields a caller of the Messages front sent
    /// (extended `thinking`, `service_tier`, ...), forwarded as they came.
    #[serde(flatten)]
    native: serde_json::Map<String, Value>,
}

/// Request fields of Anthropic's own API that a caller (the Messages
/// front: Claude Code, the SDKs) may send and this wire forwards as they
/// came. Blocks they add to the answer that the gateway's vocabulary has no
/// place for (thinking) are skipped when the answer is read.
const NATIVE_FIELDS: &[&str] = &[
    "thinking",
    "service_tier",
    "context_management",
    "mcp_servers",
    "container",
];

/// One turn of the conversation on this wire.
#[derive(Serialize)]
pub(crate) struct Turn<'a> {
    role: &'static str,
    content: TurnContent<'a>,
}

/// A turn's content: the text as it is, or content blocks.
#[derive(Serialize)]
#[serde(untagged)]
enum TurnContent<'a> {
    Text(&'a str),
    Blocks(Vec<Value>),
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

/// One content block: `text` blocks are the answer's text, `tool_use`
/// blocks its tool calls (thinking blocks are neither).
#[derive(Deserialize)]
struct WireBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// A tool call's arguments (whole answers; `{}` at a stream's block
    /// start).
    #[serde(default)]
    input: Option<Value>,
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
    /// The block a `content_block_*` event is about.
    #[serde(default)]
    index: Option<u32>,
    /// `content_block_start`: the block's type (and a tool call's id and
    /// name).
    #[serde(borrow, default)]
    content_block: Option<WireBlock<'a>>,
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
    /// An `input_json_delta`'s piece of a tool call's arguments.
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

/// Reads an SSE stream of Messages API events.
pub(crate) struct EventStream {
    /// A `message_delta` said why generation stopped: the answer is whole
    /// even if `message_stop` never comes.
    stopped: bool,
    /// `tool_use` blocks started so far: the next one's tool-call index.
    tool_calls: u32,
    /// The open `tool_use` block: its block index and tool-call index.
    tool_block: Option<(u32, u32)>,
    /// Whether the open `tool_use` block sent any arguments: one that
    /// sent none (a tool without parameters) closes with `{}`, since
    /// callers parse the arguments as JSON and empty text is not.
    tool_arguments: bool,
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
        let (system, rest) = self.split_system(&req.messages)?;
        let skipped = req.messages.len() - rest.len();
        let mut body = WireRequest {
            model,
            system,
            messages: turns(rest, skipped)?,
            max_tokens: req.params.max_tokens.unwrap_or(self.default_max_tokens),
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop_sequences: &req.params.stop,
            stream: req.stream,
            tools: Vec::new(),
            tool_choice: None,
            top_k: None,
            metadata: None,
            native: serde_json::Map::new(),
        };
        self.extras(req, &mut body)?;
        Ok(body)
    }

    fn dialect(&self) -> EventStream {
        EventStream {
            stopped: false,
            tool_calls: 0,
            tool_block: None,
            tool_arguments: false,
        }
    }

    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<Answered, GatewayError> {
        let answer: WireMessage<'_> = self.http.parse(bytes, "a message")?;
        if answer.kind.as_deref() == Some("error") || answer.error.is_some() {
            let (kind, what) = describe_error(answer.error.as_ref());
            return Err(self
                .http
                .error(kind, &format!("reported an error ({what})")));
        }
        let mut answered = Answered::default();
        for block in answer.content {
            match block.kind.as_ref() {
                "text" => answered.text.push_str(block.text.as_deref().unwrap_or("")),
                "tool_use" => {
                    let index = u32::try_from(answered.tool_calls.len()).unwrap_or(u32::MAX);
                    answered.tool_calls.push(ToolCallDelta {
                        index,
                        id: block.id.map(Cow::into_owned),
                        name: block.name.map(Cow::into_owned),
                        arguments: block
                            .input
                            .map_or_else(|| "{}".to_string(), |input| input.to_string()),
                    });
                }
                _ => {}
            }
        }
        completion.finish_reason = answer.stop_reason.as_deref().and_then(FinishReason::parse);
        if let Some(usage) = &answer.usage {
            usage.apply(completion);
        }
        if let Some(model) = answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        Ok(answered)
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
                Some(WireDelta {
                    kind: Some(kind),
                    partial_json: Some(piece),
                    ..
                }) if kind == "input_json_delta" && !piece.is_empty() => match self.tool_block {
                    Some((block, index)) if data.index.is_none_or(|i| i == block) => {
                        self.tool_arguments = true;
                        Step::Many(
                            vec![ChatEvent::ToolCall(ToolCallDelta {
                                index,
                                arguments: piece.into_owned(),
                                ..ToolCallDelta::default()
                            })],
                            false,
                        )
                    }
                    _ => Step::Fail(
                        ErrorKind::Unavailable,
                        "sent tool arguments outside a tool_use block".into(),
                    ),
                },
                _ => Step::Skip,
            },
            "content_block_start" => match data.content_block {
                Some(block) if block.kind == "tool_use" => {
                    let index = self.tool_calls;
                    self.tool_calls = self.tool_calls.saturating_add(1);
                    self.tool_block = Some((data.index.unwrap_or(0), index));
                    self.tool_arguments = false;
                    Step::Many(
                        vec![ChatEvent::ToolCall(ToolCallDelta {
                            index,
                            id: block.id.map(Cow::into_owned),
                            name: block.name.map(Cow::into_owned),
                            arguments: String::new(),
                        })],
                        false,
                    )
                }
                _ => Step::Skip,
            },
            "content_block_stop" => match self.tool_block {
                Some((block, index)) if data.index.is_none_or(|i| i == block) => {
                    self.tool_block = None;
                    if std::mem::take(&mut self.tool_arguments) {
                        Step::Skip
                    } else {
                        Step::Many(
                            vec![ChatEvent::ToolCall(ToolCallDelta {
                                index,
                                arguments: "{}".into(),
                                ..ToolCallDelta::default()
                            })],
                            false,
                        )
                    }
                }
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
            // ping, and event types added later.
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

// === translating agent requests ===

impl AnthropicBackend {
    /// Tools, tool choice and the extra fields this wire can say; a
    /// refusal naming the first it cannot.
    fn extras<'a>(
        &self,
        req: &'a ChatRequest,
        body: &mut WireRequest<'a>,
    ) -> Result<(), GatewayError> {
        let unsupported = |field: &str| {
            translate::unsupported(field, self.http.name(), "Anthropic's Messages API")
        };
        let extras = &req.extras;
        for (i, tool) in extras.tools.iter().enumerate() {
            if tool.strict == Some(true) {
                return Err(unsupported(&format!("tools[{i}].function.strict")));
            }
            let mut out = Map::new();
            out.insert("name".into(), Value::String(tool.name.clone()));
            if let Some(description) = &tool.description {
                out.insert("description".into(), Value::String(description.clone()));
            }
            let schema = tool
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            out.insert("input_schema".into(), schema);
            body.tools.push(Value::Object(out));
        }
        let mut choice = extras.tool_choice.as_ref().map(|choice| match choice {
            ToolChoice::Auto => json!({"type": "auto"}),
            ToolChoice::None => json!({"type": "none"}),
            ToolChoice::Required => json!({"type": "any"}),
            ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
        });
        match &extras.response_format {
            None | Some(ResponseFormat::Text) => {}
            Some(_) => return Err(unsupported("response_format")),
        }
        if extras.seed.is_some() {
            return Err(unsupported("seed"));
        }
        for (field, value) in &extras.passthrough {
            match (field.as_str(), value) {
                // Asking for nothing is not asking for something unsaid.
                (_, Value::Null) => {}
                ("top_k", Value::Number(_)) => body.top_k = Some(value.clone()),
                ("user", Value::String(user)) => {
                    body.metadata = Some(json!({"user_id": user}));
                }
                ("parallel_tool_calls", Value::Bool(parallel)) => {
                    if !parallel {
                        let choice = choice.get_or_insert_with(|| json!({"type": "auto"}));
                        choice["disable_parallel_tool_use"] = Value::Bool(true);
                    }
                }
                ("logprobs", Value::Bool(false)) => {}
                (field, _) if NATIVE_FIELDS.contains(&field) => {
                    body.native.insert(field.to_string(), value.clone());
                }
                (field, _) => return Err(unsupported(field)),
            }
        }
        body.tool_choice = choice;
        Ok(())
    }
}

/// The conversation after its system prompt as Anthropic's turns:
/// consecutive tool results go together in one user turn, as the API
/// wants them right after the assistant turn that called the tools.
/// `first` is the index of `messages[0]` in the caller's list, for errors.
fn turns(messages: &[ChatMessage], first: usize) -> Result<Vec<Turn<'_>>, GatewayError> {
    let mut out: Vec<Turn<'_>> = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let at = first + i;
        if message.role == Role::Tool {
            let result = tool_result(message);
            match out.last_mut() {
                Some(Turn {
                    role: "user",
                    content: TurnContent::Blocks(blocks),
                }) if blocks.iter().all(|b| b["type"] == "tool_result") => blocks.push(result),
                _ => out.push(Turn {
                    role: "user",
                    content: TurnContent::Blocks(vec![result]),
                }),
            }
            continue;
        }
        let role = match message.role {
            Role::Assistant => "assistant",
            _ => "user",
        };
        if message.parts.is_empty() && message.tool_calls.is_empty() {
            out.push(Turn {
                role,
                content: TurnContent::Text(&message.content),
            });
            continue;
        }
        let mut blocks = Vec::new();
        if message.parts.is_empty() {
            if !message.content.is_empty() {
                blocks.push(json!({"type": "text", "text": message.content}));
            }
        } else {
            for (j, part) in message.parts.iter().enumerate() {
                blocks.push(match part {
                    ContentPart::Text(text) => json!({"type": "text", "text": text}),
                    ContentPart::Image { url, .. } => image_block(url).ok_or_else(|| {
                        GatewayError::invalid_argument(
                            &format!("messages[{at}].content[{j}].image_url.url"),
                            "must be an https URL or a base64 data: URL",
                        )
                    })?,
                });
            }
        }
        for (j, call) in message.tool_calls.iter().enumerate() {
            let field = format!("messages[{at}].tool_calls[{j}].function.arguments");
            blocks.push(json!({
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": translate::arguments_json(&field, &call.arguments)?,
            }));
        }
        out.push(Turn {
            role,
            content: TurnContent::Blocks(blocks),
        });
    }
    Ok(out)
}

/// A tool message as a `tool_result` block.
fn tool_result(message: &ChatMessage) -> Value {
    json!({
        "type": "tool_result",
        "tool_use_id": message.tool_call_id.as_deref().unwrap_or_default(),
        "content": message.content,
    })
}

/// An image part as an `image` block: a data URL as base64, an http(s)
/// URL by reference.
fn image_block(url: &str) -> Option<Value> {
    if let Some((media_type, data)) = translate::data_url(url) {
        return Some(json!({"type": "image", "source":
            {"type": "base64", "media_type": media_type, "data": data}}));
    }
    (url.starts_with("https://") || url.starts_with("http://"))
        .then(|| json!({"type": "image", "source": {"type": "url", "url": url}}))
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

    /// The tool-call pieces a stream of `events` gives, with the finish.
    fn pieces(events: &[serde_json::Value]) -> (Vec<ToolCallDelta>, Option<FinishReason>) {
        let mut stream = EventStream {
            stopped: false,
            tool_calls: 0,
            tool_block: None,
            tool_arguments: false,
        };
        let mut completion = Completion::default();
        let mut out = Vec::new();
        for event in events {
            let event = SseEvent {
                event: String::new(),
                data: event.to_string(),
            };
            if let Step::Many(events, _) = stream.on_item(event, &mut completion) {
                out.extend(events.into_iter().filter_map(|e| match e {
                    ChatEvent::ToolCall(delta) => Some(delta),
                    _ => None,
                }));
            }
        }
        (out, completion.finish_reason)
    }

    #[test]
    fn a_tool_use_block_streams_as_numbered_pieces_and_one_without_input_closes_with_braces() {
        let (pieces, finish) = pieces(&[
            json!({"type": "content_block_start", "index": 0,
                   "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block":
                   {"type": "tool_use", "id": "toolu_a", "name": "now", "input": {}}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "content_block_start", "index": 2, "content_block":
                   {"type": "tool_use", "id": "toolu_b", "name": "weather", "input": {}}}),
            json!({"type": "content_block_delta", "index": 2,
                   "delta": {"type": "input_json_delta", "partial_json": "{\"city\": 1}"}}),
            json!({"type": "content_block_stop", "index": 2}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        ]);
        let piece = |index, id: Option<&str>, name: Option<&str>, arguments: &str| ToolCallDelta {
            index,
            id: id.map(str::to_string),
            name: name.map(str::to_string),
            arguments: arguments.to_string(),
        };
        assert_eq!(
            pieces,
            [
                piece(0, Some("toolu_a"), Some("now"), ""),
                piece(0, None, None, "{}"),
                piece(1, Some("toolu_b"), Some("weather"), ""),
                piece(1, None, None, "{\"city\": 1}"),
            ]
        );
        assert_eq!(finish, Some(FinishReason::ToolCalls));
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
