//! `kind: openai`: OpenAI's chat completions API, as vLLM, OpenAI and other
//! compatible servers speak it.
//!
//! A streaming call asks for SSE with usage on the final chunk and forwards
//! each `delta.content` as a token the moment it is decoded. Cloud providers
//! differ in two ways the routing file covers: some want extra headers
//! (`headers:`), and OpenAI's newer models refuse `max_tokens` and want
//! `max_completion_tokens` instead (`max_tokens_field:`), while vLLM and
//! older servers know only `max_tokens`.
//!
//! Everything else the caller sent goes as it came: tools, `tool_choice`,
//! `response_format`, `seed` and every field the gateway does not read
//! (`user`, `logprobs`, penalties, vLLM's `top_k` ...), and messages in
//! full (content parts, assistant `tool_calls`, `tool_call_id`). The
//! gateway rewrites only `model` and the token cap's name. Tool-call
//! pieces in `delta.tool_calls` stream out as they arrive.

use std::borrow::Cow;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value, json};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::sse::{SseDecoder, SseEvent};
use super::wire::{self, Answered, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{
    ChatEvent, ChatMessage, ChatRequest, Completion, ContentPart, FinishReason, ResponseFormat,
    ToolCallDelta, ToolChoice, ToolSpec, Usage,
};
use crate::config::{MaxTokensField, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};

/// An OpenAI-compatible upstream.
#[derive(Debug)]
pub(crate) struct OpenAiBackend {
    /// Where to send, with which headers.
    http: HttpUpstream,
    /// Which request field carries the caller's `max_tokens`.
    max_tokens_field: MaxTokensField,
}

/// The request body; borrows everything from the [`ChatRequest`].
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: Messages<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    /// vLLM's (and SGLang's, TGI's) way to continue the final assistant
    /// message instead of answering it: sent only to continue a broken
    /// stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    continue_final_message: Option<bool>,
    /// Must be off when `continue_final_message` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    add_generation_prompt: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    /// Every other field the caller sent, unchanged.
    #[serde(flatten)]
    passthrough: &'a Map<String, Value>,
}

/// The conversation in OpenAI's message shape.
pub(crate) struct Messages<'a>(pub(crate) &'a [ChatMessage]);

/// One message in OpenAI's shape.
struct WireMessage<'a>(&'a ChatMessage);

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A whole answer or one streamed chunk: the fields we read of either.
#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    /// The first choice: the gateway asks for one (`n` is not passed on),
    /// and keeping only it spares a vector per streamed chunk.
    #[serde(borrow, default, deserialize_with = "first_choice")]
    choices: Option<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// Some servers report a failure inside a 200 stream this way. Boxed,
    /// as is `logprobs`: rarely there, and a smaller chunk is moved for
    /// less on every token.
    #[serde(default)]
    error: Option<Box<serde_json::Value>>,
}

/// The first element of a JSON array of choices (`null` or `[]`: none);
/// the others are skipped without being built.
fn first_choice<'de, D>(deserializer: D) -> Result<Option<WireChoice<'de>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct First;

    impl<'de> serde::de::Visitor<'de> for First {
        type Value = Option<WireChoice<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an array of choices")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let first = seq.next_element()?;
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(first)
        }
    }

    deserializer.deserialize_any(First)
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    message: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    delta: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    /// Present (non-null) only when the caller asked for `logprobs`.
    #[serde(default)]
    logprobs: Option<Box<Value>>,
}

#[derive(Deserialize)]
struct WireContent<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
}

/// A tool call of a whole answer, or a piece of one in a stream chunk.
#[derive(Deserialize)]
struct WireToolCall<'a> {
    /// Which call a streamed piece belongs to; absent in whole answers.
    #[serde(default)]
    index: Option<u32>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    function: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// Reads an SSE stream of chat completion chunks.
pub(crate) struct ChunkStream {
    /// Whether the model name came from the upstream yet.
    model_reported: bool,
    /// Chunks decoded so far: a stream that ends having sent none did not
    /// answer at all.
    chunks: u64,
    /// Whether a chunk carried a `finish_reason`: only then is the answer
    /// whole. `[DONE]` or a clean end of the body without one is a cut.
    finished: bool,
}

// === impl OpenAiBackend ===

impl OpenAiBackend {
    /// Prepares the headers and credentials of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        OpenAiBackend {
            http: HttpUpstream::new(
                config,
                client,
                "/v1/chat/completions",
                Credential::Bearer,
                &[],
            ),
            max_tokens_field: config.max_tokens_field,
        }
    }
}

// === impl Adapter for OpenAiBackend ===

impl Adapter for OpenAiBackend {
    type Body<'a> = WireRequest<'a>;
    type Dialect = ChunkStream;

    fn http(&self) -> &HttpUpstream {
        &self.http
    }

    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<WireRequest<'a>, GatewayError> {
        let max_tokens = req.params.max_tokens;
        let (max_tokens, max_completion_tokens) = match self.max_tokens_field {
            MaxTokensField::MaxTokens => (max_tokens, None),
            MaxTokensField::MaxCompletionTokens => (None, max_tokens),
        };
        Ok(WireRequest {
            model,
            messages: Messages(&req.messages),
            max_tokens,
            max_completion_tokens,
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop: &req.params.stop,
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            continue_final_message: req.prefill.then_some(true),
            add_generation_prompt: req.prefill.then_some(false),
            tools: req.extras.tools.iter().map(tool_json).collect(),
            tool_choice: req.extras.tool_choice.as_ref().map(tool_choice_json),
            response_format: req
                .extras
                .response_format
                .as_ref()
                .map(response_format_json),
            seed: req.extras.seed,
            passthrough: &req.extras.passthrough,
        })
    }

    fn dialect(&self) -> ChunkStream {
        ChunkStream {
            model_reported: false,
            chunks: 0,
            finished: false,
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
        let answer: WireResponse<'_> = self.http.parse(bytes, "a chat completion")?;
        if let Some(error) = answer.error {
            return Err(self.http.error(
                ErrorKind::Unavailable,
                &format!("reported an error: {}", wire::error_message(&error)),
            ));
        }
        let Some(choice) = answer.choices else {
            return Err(self
                .http
                .error(ErrorKind::Unavailable, "answered with no choices"));
        };
        let (text, tool_calls) = match choice.message {
            Some(message) => (
                message.content.map(Cow::into_owned).unwrap_or_default(),
                message.tool_calls.map(deltas).unwrap_or_default(),
            ),
            None => Default::default(),
        };
        completion.finish_reason = choice
            .finish_reason
            .as_deref()
            .and_then(FinishReason::parse);
        completion.logprobs = choice.logprobs.map(|l| *l).filter(|l| !l.is_null());
        completion.usage = answer.usage.map(WireUsage::into_usage);
        if let Some(model) = answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        Ok(Answered { text, tool_calls })
    }
}

// === impl ChunkStream ===

impl Dialect for ChunkStream {
    type Framing = SseDecoder;

    fn on_item(&mut self, event: SseEvent, completion: &mut Completion) -> Step {
        if event.data == "[DONE]" {
            if !self.finished {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    "sent [DONE] without a finish_reason; the answer is incomplete".into(),
                );
            }
            return Step::Done;
        }
        let chunk: WireResponse<'_> = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(err) => {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    format!(
                        "sent an event that is not a valid chunk ({err}): {}",
                        wire::quote(event.data.as_bytes())
                    ),
                );
            }
        };
        if let Some(error) = chunk.error {
            return Step::Fail(
                ErrorKind::Unavailable,
                format!(
                    "reported an error mid-stream: {}",
                    wire::error_message(&error)
                ),
            );
        }
        self.chunks += 1;
        if !self.model_reported
            && let Some(model) = chunk.model
        {
            completion.model = Arc::from(model.as_ref());
            self.model_reported = true;
        }
        if let Some(usage) = chunk.usage {
            completion.usage = Some(usage.into_usage());
        }
        let Some(choice) = chunk.choices else {
            return Step::Skip;
        };
        if let Some(reason) = choice.finish_reason {
            completion.finish_reason = FinishReason::parse(&reason);
            self.finished = true;
        }
        if let Some(logprobs) = choice.logprobs {
            gather_logprobs(completion, *logprobs);
        }
        let Some(delta) = choice.delta else {
            return Step::Skip;
        };
        let content = delta.content.filter(|c| !c.is_empty());
        match delta.tool_calls.filter(|calls| !calls.is_empty()) {
            None => match content {
                Some(content) => Step::Token(content.into_owned()),
                None => Step::Skip,
            },
            Some(calls) => {
                let text = content.map(|c| ChatEvent::Token(c.into_owned()));
                let calls = deltas(calls).into_iter().map(ChatEvent::ToolCall);
                Step::Many(text.into_iter().chain(calls).collect(), false)
            }
        }
    }

    /// A body that ends cleanly without `[DONE]` after a `finish_reason`
    /// meant to stop (some servers never send `[DONE]`); without a
    /// `finish_reason` the answer was cut, however cleanly the body ended.
    fn on_end(&self) -> Result<(), String> {
        if self.chunks == 0 {
            Err("ended its stream without sending a single chunk".into())
        } else if !self.finished {
            Err("ended its stream without a finish_reason; the answer is incomplete".into())
        } else {
            Ok(())
        }
    }
}

// === impl Serialize for Messages ===

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for message in self.0 {
            seq.serialize_element(&WireMessage(message))?;
        }
        seq.end()
    }
}

impl Serialize for WireMessage<'_> {
    /// `{role, content}` as before for a plain message; content parts as
    /// parts, `null` content for an assistant turn that only called tools,
    /// and the tool fields only when there are some.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("role", m.role.as_str())?;
        if !m.parts.is_empty() {
            let parts: Vec<Value> = m.parts.iter().map(part_json).collect();
            map.serialize_entry("content", &parts)?;
        } else if m.content.is_empty() && !m.tool_calls.is_empty() {
            map.serialize_entry("content", &Value::Null)?;
        } else {
            map.serialize_entry("content", &m.content)?;
        }
        if !m.tool_calls.is_empty() {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    })
                })
                .collect();
            map.serialize_entry("tool_calls", &calls)?;
        }
        if let Some(id) = &m.tool_call_id {
            map.serialize_entry("tool_call_id", id)?;
        }
        map.end()
    }
}

// === OpenAI's shapes, shared with the wires that borrow them ===

/// A tool as OpenAI (and Ollama) take it.
pub(super) fn tool_json(tool: &ToolSpec) -> Value {
    let mut function = Map::new();
    function.insert("name".into(), Value::String(tool.name.clone()));
    if let Some(description) = &tool.description {
        function.insert("description".into(), Value::String(description.clone()));
    }
    if let Some(parameters) = &tool.parameters {
        function.insert("parameters".into(), parameters.clone());
    }
    if let Some(strict) = tool.strict {
        function.insert("strict".into(), Value::Bool(strict));
    }
    json!({"type": "function", "function": function})
}

/// `tool_choice` in OpenAI's words.
fn tool_choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
    }
}

/// `response_format` in OpenAI's words.
fn response_format_json(format: &ResponseFormat) -> Value {
    match format {
        ResponseFormat::Text => json!({"type": "text"}),
        ResponseFormat::JsonObject => json!({"type": "json_object"}),
        ResponseFormat::JsonSchema(schema) => {
            let mut inner = Map::new();
            inner.insert("name".into(), Value::String(schema.name.clone()));
            if let Some(description) = &schema.description {
                inner.insert("description".into(), Value::String(description.clone()));
            }
            if let Some(body) = &schema.schema {
                inner.insert("schema".into(), body.clone());
            }
            if let Some(strict) = schema.strict {
                inner.insert("strict".into(), Value::Bool(strict));
            }
            json!({"type": "json_schema", "json_schema": inner})
        }
    }
}

/// A content part in OpenAI's shape.
fn part_json(part: &ContentPart) -> Value {
    match part {
        ContentPart::Text(text) => json!({"type": "text", "text": text}),
        ContentPart::Image { url, detail: None } => {
            json!({"type": "image_url", "image_url": {"url": url}})
        }
        ContentPart::Image {
            url,
            detail: Some(detail),
        } => json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}),
    }
}

/// Appends a stream chunk's `logprobs.content` entries to those gathered
/// so far.
fn gather_logprobs(completion: &mut Completion, chunk: Value) {
    let Value::Object(mut chunk) = chunk else {
        return;
    };
    let Some(Value::Array(entries)) = chunk.remove("content") else {
        return;
    };
    let gathered = completion
        .logprobs
        .get_or_insert_with(|| json!({"content": []}));
    if let Some(Value::Array(all)) = gathered.get_mut("content") {
        all.extend(entries);
    }
}

/// Tool calls (or pieces) as the vocabulary's pieces; a call without an
/// index is numbered by its place.
fn deltas(calls: Vec<WireToolCall<'_>>) -> Vec<ToolCallDelta> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let (name, arguments) = match call.function {
                Some(f) => (f.name.map(Cow::into_owned), f.arguments.unwrap_or_default()),
                None => (None, Cow::Borrowed("")),
            };
            ToolCallDelta {
                index: call
                    .index
                    .unwrap_or_else(|| u32::try_from(i).unwrap_or(u32::MAX)),
                id: call.id.map(Cow::into_owned),
                name,
                arguments: arguments.into_owned(),
            }
        })
        .collect()
}

// === impl WireUsage ===

impl WireUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(data: &str) -> SseEvent {
        SseEvent {
            event: String::new(),
            data: data.to_string(),
        }
    }

    #[test]
    fn a_chunk_is_read_from_its_first_choice_and_the_others_are_skipped() {
        let mut dialect = ChunkStream {
            model_reported: false,
            chunks: 0,
            finished: false,
        };
        let mut completion = Completion {
            finish_reason: None,
            usage: None,
            model: Arc::from("asked"),
            logprobs: None,
            embeddings: None,
        };
        let two = r#"{"choices":[{"index":0,"delta":{"content":"first"}},
                                 {"index":1,"delta":{"content":"second"}}]}"#;
        let step = dialect.on_item(item(two), &mut completion);
        assert!(matches!(&step, Step::Token(text) if text == "first"));
        let none = [
            r#"{"choices":[]}"#,
            r#"{"choices":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}"#,
        ];
        for chunk in none {
            let step = dialect.on_item(item(chunk), &mut completion);
            assert!(matches!(step, Step::Skip), "{chunk}");
        }
        assert_eq!(completion.usage.map(|u| u.output_tokens), Some(2));
        let not_an_array = r#"{"choices":{"index":0}}"#;
        let step = dialect.on_item(item(not_an_array), &mut completion);
        assert!(matches!(step, Step::Fail(ErrorKind::Unavailable, _)));
    }
}
