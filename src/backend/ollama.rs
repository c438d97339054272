//! `kind: ollama`: Ollama's native chat API, `POST {endpoint}/api/chat`.
//!
//! The native API rather than Ollama's OpenAI-compatible one, because only
//! the native API takes `keep_alive` (how long the model stays in GPU
//! memory, which decides whether the next call waits for a load) and reports
//! Ollama's own errors and counters as they are. Sampling parameters go in
//! `options` (`max_tokens` is `num_predict` there). A stream is NDJSON: one
//! object per line, text in `message.content`, and a last line with
//! `done: true` carrying `done_reason` and the token counts. Ollama reports
//! a failure after the stream started as a line `{"error": "..."}`; a stream
//! that ends without its `done` line was cut short and is an error.
//!
//! Agent calls: tools go in OpenAI's shape (which Ollama takes), a JSON
//! `response_format` becomes `format` (`"json"`, or the schema itself),
//! `seed` and sampling extras (`top_k`, `min_p`, penalties; vLLM's
//! `repetition_penalty` as `repeat_penalty`) go in `options`, images as
//! base64 `images`, a tool result names its tool (`tool_name`, found from
//! the call it answers). Ollama sends each tool call whole, in one line,
//! and with no id, so the gateway numbers them and makes up ids; since it
//! still says `done_reason: stop`, an answer that called tools finishes
//! with `tool_calls`. What Ollama cannot do (`tool_choice` other than
//! `auto`/`none`, `logit_bias`, ...) is refused naming the field; `user`, an
//! id for abuse monitoring that never changes the answer, is left out.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::ndjson::NdjsonDecoder;
use super::openai::tool_json;
use super::translate;
use super::wire::{self, Answered, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{
    ChatEvent, ChatMessage, ChatRequest, Completion, ContentPart, FinishReason, ResponseFormat,
    Role, ToolCallDelta, ToolChoice, Usage,
};
use crate::config::{KeepAlive, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};

/// An Ollama server (or several serving the same models).
#[derive(Debug)]
pub(crate) struct OllamaBackend {
    /// Where to send, with which headers.
    http: HttpUpstream,
    /// `keep_alive` as Ollama reads it; `None` leaves Ollama's default.
    pub(super) keep_alive: Option<WireKeepAlive>,
}

/// The request body; borrows the conversation from the [`ChatRequest`].
/// Ollama takes the same role names we use.
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<OutMessage<'a>>,
    /// Always sent: Ollama streams unless told otherwise.
    stream: bool,
    #[serde(skip_serializing_if = "WireOptions::is_empty")]
    options: WireOptions<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a WireKeepAlive>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    /// `"json"` or a JSON schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
}

/// One message in Ollama's shape.
#[derive(Serialize)]
pub(crate) struct OutMessage<'a> {
    role: &'static str,
    content: &'a str,
    /// Base64 images, without a data URL's prefix.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    /// The tool whose result a tool message is.
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_name: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct WireOptions<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    /// Sampling extras Ollama names as OpenAI-style servers do.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// Ollama reads `keep_alive` as a Go duration string, or a negative number
/// for "never unload".
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum WireKeepAlive {
    Duration(String),
    Forever(i8),
}

/// A whole answer, one streamed line, or an error line: the fields we read
/// of any of them.
#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(borrow, default)]
    done_reason: Option<Cow<'a, str>>,
    /// Prompt tokens; Ollama leaves it out when the whole prompt was cached.
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

/// A whole tool call, as Ollama sends each.
#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<Value>,
}

/// Reads an NDJSON stream of chat lines.
pub(crate) struct LineStream {
    /// Whether the model name came from the upstream yet.
    model_reported: bool,
    /// Tool calls so far: the next one's index.
    tool_calls: u32,
}

// === impl OllamaBackend ===

impl OllamaBackend {
    /// Prepares the headers and `keep_alive` of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        OllamaBackend {
            http: HttpUpstream::new(config, client, "/api/chat", Credential::Bearer, &[]),
            keep_alive: config.keep_alive.map(WireKeepAlive::from),
        }
    }
}

// === impl Adapter for OllamaBackend ===

impl Adapter for OllamaBackend {
    type Body<'a> = WireRequest<'a>;
    /// A streamed answer is NDJSON; a whole JSON answer to a stream request
    /// reads the same way as the non-streamed one.
    type Dialect = LineStream;

    fn http(&self) -> &HttpUpstream {
        &self.http
    }

    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<WireRequest<'a>, GatewayError> {
        let mut body = WireRequest {
            model,
            messages: messages(&req.messages)?,
            stream: req.stream,
            options: WireOptions {
                num_predict: req.params.max_tokens,
                temperature: req.params.temperature,
                top_p: req.params.top_p,
                stop: &req.params.stop,
                seed: req.extras.seed,
                extra: Map::new(),
            },
            keep_alive: self.keep_alive.as_ref(),
            tools: Vec::new(),
            format: None,
        };
        self.extras(req, &mut body)?;
        Ok(body)
    }

    fn dialect(&self) -> LineStream {
        LineStream {
            model_reported: false,
            tool_calls: 0,
        }
    }

    fn embeddings(&self) -> Option<&dyn super::embed::EmbedWire> {
        Some(self)
    }

    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<Answered, GatewayError> {
        let answer: WireChunk<'_> = self.http.parse(bytes, "a chat response")?;
        if let Some(error) = &answer.error {
            let message = wire::error_message(error);
            return Err(self.http.error(
                error_kind(&message),
                &format!("reported an error: {message}"),
            ));
        }
        if let Some(model) = &answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        answer.finish(completion);
        let mut answered = Answered::default();
        if let Some(message) = answer.message {
            answered.text = message.content.map(Cow::into_owned).unwrap_or_default();
            let mut next = 0;
            answered.tool_calls = message
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|call| tool_call(call, &mut next))
                .collect();
        }
        if !answered.tool_calls.is_empty() {
            completion.finish_reason = Some(FinishReason::ToolCalls);
        }
        Ok(answered)
    }
}

// === impl LineStream ===

impl Dialect for LineStream {
    type Framing = NdjsonDecoder;

    fn on_item(&mut self, line: Bytes, completion: &mut Completion) -> Step {
        let chunk: WireChunk<'_> = match serde_json::from_slice(&line) {
            Ok(chunk) => chunk,
            Err(err) => {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    format!(
                        "sent a line that is not a valid chat response ({err}): {}",
                        wire::quote(&line)
                    ),
                );
            }
        };
        if let Some(error) = &chunk.error {
            let message = wire::error_message(error);
            return Step::Fail(
                error_kind(&message),
                format!("reported an error mid-stream: {message}"),
            );
        }
        if !self.model_reported
            && let Some(model) = &chunk.model
        {
            completion.model = Arc::from(model.as_ref());
            self.model_reported = true;
        }
        if chunk.done {
            chunk.finish(completion);
        }
        let (content, calls) = match chunk.message {
            Some(m) => (m.content.filter(|c| !c.is_empty()), m.tool_calls),
            None => (None, None),
        };
        if let Some(calls) = calls.filter(|calls| !calls.is_empty()) {
            let text = content.map(|c| ChatEvent::Token(c.into_owned()));
            let calls: Vec<ChatEvent> = calls
                .into_iter()
                .map(|call| ChatEvent::ToolCall(tool_call(call, &mut self.tool_calls)))
                .collect();
            if chunk.done {
                completion.finish_reason = Some(FinishReason::ToolCalls);
            }
            return Step::Many(text.into_iter().chain(calls).collect(), chunk.done);
        }
        if chunk.done && self.tool_calls > 0 {
            completion.finish_reason = Some(FinishReason::ToolCalls);
        }
        match (content, chunk.done) {
            (Some(text), false) => Step::Token(text.into_owned()),
            (Some(text), true) => Step::Last(text.into_owned()),
            (None, true) => Step::Done,
            (None, false) => Step::Skip,
        }
    }

    /// Every Ollama stream ends with its `done` line; without it the
    /// answer was cut short, however cleanly the body ended.
    fn on_end(&self) -> Result<(), String> {
        Err("ended its stream before its final line (done: true)".into())
    }
}

// === impl WireChunk ===

impl WireChunk<'_> {
    /// Records what the final object reports: why it ended and the counts.
    fn finish(&self, completion: &mut Completion) {
        completion.finish_reason = self.done_reason.as_deref().and_then(FinishReason::parse);
        if self.prompt_eval_count.is_some() || self.eval_count.is_some() {
            completion.usage = Some(Usage {
                input_tokens: self.prompt_eval_count.unwrap_or(0),
                output_tokens: self.eval_count.unwrap_or(0),
            });
        }
    }
}

// === impl WireKeepAlive ===

impl From<KeepAlive> for WireKeepAlive {
    fn from(keep_alive: KeepAlive) -> Self {
        match keep_alive {
            KeepAlive::Forever => WireKeepAlive::Forever(-1),
            KeepAlive::For(d) if d.subsec_nanos() == 0 => {
                WireKeepAlive::Duration(format!("{}s", d.as_secs()))
            }
            KeepAlive::For(d) => WireKeepAlive::Duration(format!("{}ms", d.as_millis())),
        }
    }
}

// === helpers ===

/// The kind of an error Ollama reported without a status to go on (inside
/// a 200 answer or stream). Its errors are bare strings, so the one case
/// a caller must tell apart, a model this server does not have, is known
/// by its words (Ollama says "model 'x' not found").
fn error_kind(message: &str) -> ErrorKind {
    if message.contains("not found") && message.contains("model") {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unavailable
    }
}

impl WireOptions<'_> {
    fn is_empty(&self) -> bool {
        self.num_predict.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop.is_empty()
            && self.seed.is_none()
            && self.extra.is_empty()
    }
}

// === translating agent requests ===

/// Sampling extras Ollama's `options` take under the caller's name.
const SAME_NAMED_OPTIONS: &[&str] = &[
    "top_k",
    "min_p",
    "typical_p",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "repeat_last_n",
    "num_ctx",
];

impl OllamaBackend {
    /// Tools, format and the extra fields this wire can say; a refusal
    /// naming the first it cannot.
    fn extras<'a>(
        &self,
        req: &'a ChatRequest,
        body: &mut WireRequest<'a>,
    ) -> Result<(), GatewayError> {
        let unsupported =
            |field: &str| translate::unsupported(field, self.http.name(), "Ollama's chat API");
        let extras = &req.extras;
        if let Some(i) = extras.tools.iter().position(|t| t.strict == Some(true)) {
            return Err(unsupported(&format!("tools[{i}].function.strict")));
        }
        match &extras.tool_choice {
            None | Some(ToolChoice::Auto) => {
                body.tools = extras.tools.iter().map(tool_json).collect();
            }
            // No tools offered is a call that cannot call one.
            Some(ToolChoice::None) => {}
            Some(ToolChoice::Required | ToolChoice::Function(_)) => {
                return Err(unsupported("tool_choice"));
            }
        }
        body.format = match &extras.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(json!("json")),
            Some(ResponseFormat::JsonSchema(schema)) => Some(
                schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"})),
            ),
        };
        for (field, value) in &extras.passthrough {
            match (field.as_str(), value) {
                (_, Value::Null) => {}
                (name, Value::Number(_)) if SAME_NAMED_OPTIONS.contains(&name) => {
                    body.options.extra.insert(name.to_string(), value.clone());
                }
                ("repetition_penalty", Value::Number(_)) => {
                    body.options
                        .extra
                        .insert("repeat_penalty".into(), value.clone());
                }
                ("parallel_tool_calls", Value::Bool(true)) | ("logprobs", Value::Bool(false)) => {}
                // An end-user id for a provider's abuse monitoring: it
                // never changes the answer, and Claude Code sends one
                // (`metadata.user_id`) with every call. Ollama has none.
                ("user", Value::String(_)) => {}
                (field, _) => return Err(unsupported(field)),
            }
        }
        Ok(())
    }
}

/// The conversation in Ollama's shape.
fn messages(messages: &[ChatMessage]) -> Result<Vec<OutMessage<'_>>, GatewayError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, message) in messages.iter().enumerate() {
        let mut images = Vec::new();
        for (j, part) in message.parts.iter().enumerate() {
            if let ContentPart::Image { url, .. } = part {
                let (_, data) = translate::data_url(url).ok_or_else(|| {
                    GatewayError::invalid_argument(
                        &format!("messages[{i}].content[{j}].image_url.url"),
                        "must be a base64 data: URL; Ollama takes images only inline",
                    )
                })?;
                images.push(data);
            }
        }
        let mut tool_calls = Vec::with_capacity(message.tool_calls.len());
        for (j, call) in message.tool_calls.iter().enumerate() {
            let field = format!("messages[{i}].tool_calls[{j}].function.arguments");
            let arguments = translate::arguments_json(&field, &call.arguments)?;
            tool_calls.push(json!({"function": {"name": call.name, "arguments": arguments}}));
        }
        // Ollama knows a tool's result by the tool's name, not the call's
        // id: the name is that of the earlier call with the id.
        let tool_name = message.tool_call_id.as_deref().and_then(|id| {
            messages[..i]
                .iter()
                .rev()
                .flat_map(|m| &m.tool_calls)
                .find(|call| call.id == id)
                .map(|call| call.name.as_str())
        });
        out.push(OutMessage {
            role: message.role.as_str(),
            content: &message.content,
            images,
            tool_calls,
            tool_name: tool_name.filter(|_| message.role == Role::Tool),
        });
    }
    Ok(out)
}

/// One of Ollama's whole tool calls as the vocabulary's one piece,
/// numbered from `next`; Ollama's calls carry no id, so one is made up.
fn tool_call(call: WireToolCall, next: &mut u32) -> ToolCallDelta {
    let index = *next;
    *next = next.saturating_add(1);
    let (name, arguments) = match call.function {
        Some(f) => (f.name, f.arguments),
        None => (None, None),
    };
    ToolCallDelta {
        index,
        id: Some(
            call.id
                .unwrap_or_else(|| format!("call_{:016x}", rand::random::<u64>())),
        ),
        name,
        arguments: match arguments {
            Some(Value::String(text)) => text,
            Some(value) => value.to_string(),
            None => "{}".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keep_alive_is_written_as_ollama_reads_it() {
        let wire = |k| serde_json::to_string(&WireKeepAlive::from(k)).expect("json");
        assert_eq!(wire(KeepAlive::For(Duration::from_secs(600))), r#""600s""#);
        assert_eq!(wire(KeepAlive::For(Duration::ZERO)), r#""0s""#);
        assert_eq!(
            wire(KeepAlive::For(Duration::from_millis(1500))),
            r#""1500ms""#
        );
        assert_eq!(wire(KeepAlive::Forever), "-1");
    }

    #[test]
    fn only_a_missing_model_is_not_found() {
        assert_eq!(
            error_kind("model 'llama9' not found, try pulling it first"),
            ErrorKind::NotFound
        );
        assert_eq!(
            error_kind("an error was encountered while running the model"),
            ErrorKind::Unavailable
        );
    }
}
