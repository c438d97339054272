//! OpenAI's chat completion request as the internal [`ChatRequest`]: the
//! JSON body with a wrong field named by its path, the roles, content
//! parts and tool turns the gateway forwards, tools, tool choice and
//! response format, every other field kept for the upstream, the token cap
//! under either of its names, and the caller's `x-request-timeout`.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::REQUEST_TIMEOUT_HEADER;
use serde_json::{Map, Value};

use super::wire::{
    ChatCompletionRequest, Content, KNOWN_FIELDS, Stop, WireMessage, WireResponseFormat, WireTool,
};
use crate::chat::{
    CallContext, Caller, ChatMessage, ChatRequest, ContentPart, JsonSchema, RequestExtras,
    ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolSpec, try_collect_exact,
};
use crate::error::GatewayError;

/// The request body as OpenAI's request, with a wrong field named by its
/// path (`messages[0].content`), and every field it does not read kept
/// as sent in `passthrough`.
pub(super) fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, GatewayError> {
    let (mut request, passthrough): (ChatCompletionRequest, _) =
        read_known_fields(body, KNOWN_FIELDS, "a JSON chat completion request")?;
    request.passthrough = passthrough;
    Ok(request)
}

/// A JSON body read as `T` from the fields named `known`, a wrong one named
/// by its path (`messages[0].content`), and every other field, kept as sent:
/// how each front on the HTTP port reads its wire. `what` names the body in
/// the error when it is not that at all.
pub(super) fn read_known_fields<T: serde::de::DeserializeOwned>(
    body: &[u8],
    known: &[&str],
    what: &str,
) -> Result<(T, Map<String, Value>), GatewayError> {
    let not_a_request = |why: &dyn std::fmt::Display| {
        GatewayError::invalid_argument("body", &format!("is not {what}: {why}"))
    };
    let mut fields: Map<String, Value> =
        serde_json::from_slice(body).map_err(|err| not_a_request(&err))?;
    let mut read = Map::new();
    for name in known {
        if let Some(value) = fields.remove(*name) {
            read.insert((*name).to_string(), value);
        }
    }
    let request = serde_path_to_error::deserialize(Value::Object(read)).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            not_a_request(&inner)
        } else {
            GatewayError::invalid_argument(&path, &format!("is not valid: {inner}"))
        }
    })?;
    Ok((request, fields))
}

/// The wire request as a validated [`ChatRequest`] of `caller`, tracked
/// by `call`.
pub(super) fn chat_request(
    wire: ChatCompletionRequest,
    deadline: Option<Instant>,
    call: CallContext,
    caller: Caller,
) -> Result<ChatRequest, GatewayError> {
    if wire.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::invalid_argument(
            "n",
            "must be 1: this gateway generates one choice per request",
        ));
    }
    let messages = try_collect_exact(
        wire.messages
            .into_iter()
            .enumerate()
            .map(|(i, message)| chat_message(i, message)),
    )?;
    let extras = RequestExtras {
        tools: tools(wire.tools.unwrap_or_default())?,
        tool_choice: wire.tool_choice.map(tool_choice).transpose()?,
        response_format: wire.response_format.map(response_format).transpose()?,
        seed: wire.seed,
        passthrough: wire.passthrough,
        embed: None,
    };
    let (field, cap) = match (wire.max_completion_tokens, wire.max_tokens) {
        (Some(cap), _) => ("max_completion_tokens", Some(cap)),
        (None, cap) => ("max_tokens", cap),
    };
    let max_tokens = cap
        .map(|cap| {
            u32::try_from(cap)
                .ok()
                .filter(|&cap| cap > 0)
                .ok_or_else(|| {
                    GatewayError::invalid_argument(
                        field,
                        &format!("is {cap}; it must be at least 1, or left out for the default"),
                    )
                })
        })
        .transpose()?;
    let stop = match wire.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop],
        Some(Stop::Many(stops)) => stops,
    };
    let req = ChatRequest {
        model: wire.model.unwrap_or_default(),
        messages,
        params: SamplingParams {
            max_tokens,
            temperature: wire.temperature,
            top_p: wire.top_p,
            stop,
        },
        extras,
        stream: wire.stream.unwrap_or(false),
        deadline,
        call,
        caller,
        prefill: false,
    };
    req.validate()?;
    Ok(req)
}

/// The most content parts one message may have. Their text is joined and
/// held to `limits.max_content_length` like any message's; the count is
/// bounded too, since each part costs an allocation however small it is.
const MAX_CONTENT_PARTS: usize = 256;

/// One wire message as the vocabulary's.
fn chat_message(i: usize, message: WireMessage) -> Result<ChatMessage, GatewayError> {
    let role = match message.role.as_str() {
        // OpenAI's newer name for system instructions.
        "developer" => Role::System,
        name => Role::parse(name).ok_or_else(|| {
            GatewayError::invalid_argument(
                &format!("messages[{i}].role"),
                &format!(
                    "'{name}' is not a role this gateway forwards; use system, \
                     developer, user, assistant or tool"
                ),
            )
        })?,
    };
    let (content, parts) = content(i, message.content)?;
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        })
        .collect();
    Ok(ChatMessage {
        role,
        content,
        parts,
        tool_calls,
        tool_call_id: message.tool_call_id,
    })
}

/// The tools offered, each a function with a name.
fn tools(wire: Vec<WireTool>) -> Result<Vec<ToolSpec>, GatewayError> {
    try_collect_exact(wire.into_iter().enumerate().map(|(i, tool)| {
        if tool.kind.as_deref().is_some_and(|kind| kind != "function") {
            return Err(GatewayError::invalid_argument(
                &format!("tools[{i}].type"),
                "must be function; other tool types are not supported",
            ));
        }
        let Some(function) = tool.function.filter(|f| !f.name.is_empty()) else {
            return Err(GatewayError::invalid_argument(
                &format!("tools[{i}].function.name"),
                "is missing; a tool is a function with a name",
            ));
        };
        Ok(ToolSpec {
            name: function.name,
            description: function.description,
            parameters: function.parameters,
            strict: function.strict,
        })
    }))
}

/// `tool_choice` in any of its shapes.
fn tool_choice(value: Value) -> Result<ToolChoice, GatewayError> {
    let named = value
        .get("function")
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .filter(|_| value.get("type").and_then(Value::as_str) == Some("function"));
    match (value.as_str(), named) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("required"), _) => Ok(ToolChoice::Required),
        (_, Some(name)) => Ok(ToolChoice::Function(name.to_string())),
        _ => Err(GatewayError::invalid_argument(
            "tool_choice",
            "must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )),
    }
}

/// `response_format` by its type.
fn response_format(wire: WireResponseFormat) -> Result<ResponseFormat, GatewayError> {
    match (wire.kind.as_str(), wire.json_schema) {
        ("text", _) => Ok(ResponseFormat::Text),
        ("json_object", _) => Ok(ResponseFormat::JsonObject),
        ("json_schema", Some(schema)) => Ok(ResponseFormat::JsonSchema(JsonSchema {
            name: schema.name,
            description: schema.description,
            schema: schema.schema,
            strict: schema.strict,
        })),
        ("json_schema", None) => Err(GatewayError::invalid_argument(
            "response_format.json_schema",
            "is missing; a json_schema format needs its schema",
        )),
        (kind, _) => Err(GatewayError::invalid_argument(
            "response_format.type",
            &format!("'{kind}' is not a format; use text, json_object or json_schema"),
        )),
    }
}

/// A message's text (the string, or its text parts joined by newlines)
/// and, when it came as parts, the parts themselves.
fn content(
    message: usize,
    content: Option<Content>,
) -> Result<(String, Vec<ContentPart>), GatewayError> {
    match content {
        None => Ok((String::new(), Vec::new())),
        Some(Content::Text(text)) => Ok((text, Vec::new())),
        Some(Content::Parts(parts)) => {
            if parts.len() > MAX_CONTENT_PARTS {
                return Err(GatewayError::invalid_argument(
                    &format!("messages[{message}].content"),
                    &format!(
                        "has {} parts; send at most {MAX_CONTENT_PARTS} (join text parts into one)",
                        parts.len()
                    ),
                ));
            }
            let mut text = Vec::with_capacity(parts.len());
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text, part.image_url) {
                    ("text", Some(part), _) => {
                        text.push(part.clone());
                        out.push(ContentPart::Text(part));
                    }
                    ("text", None, _) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].text"),
                            "is missing; a text part needs its text",
                        ));
                    }
                    ("image_url", _, Some(image)) => out.push(ContentPart::Image {
                        url: image.url,
                        detail: image.detail,
                    }),
                    ("image_url", _, None) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].image_url"),
                            "is missing; an image_url part needs its url",
                        ));
                    }
                    (kind, _, _) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].type"),
                            &format!("'{kind}' parts are not supported; send text or image_url"),
                        ));
                    }
                }
            }
            Ok((text.join("\n"), out))
        }
    }
}

/// The caller's budget from [`REQUEST_TIMEOUT_HEADER`]. Unlike a malformed
/// `grpc-timeout` (which gRPC servers ignore), a malformed value is refused:
/// a caller who set a limit must not get a call without one.
pub(super) fn request_timeout(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get(REQUEST_TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let budget = value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|text| match text.parse::<f64>() {
            // Positive beyond what a Duration holds: as good as no limit.
            Ok(secs) => Duration::try_from_secs_f64(secs)
                .ok()
                .or((secs.is_finite() && secs > 0.0).then_some(Duration::MAX)),
            Err(_) => humantime::parse_duration(text).ok(),
        });
    match budget {
        Some(budget) if !budget.is_zero() => Ok(Some(budget)),
        _ => Err(GatewayError::invalid_argument(
            REQUEST_TIMEOUT_HEADER,
            "header must be a positive number of seconds (30, 2.5) or a duration (500ms, 2m)",
        )),
    }
}
