//! OpenAI's chat completion request as the internal [`ChatRequest`]: the
//! JSON body with a wrong field named by its path, the roles and content
//! parts the gateway forwards, the token cap under either of its names,
//! and the caller's `x-request-timeout`.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::REQUEST_TIMEOUT_HEADER;
use super::wire::{ChatCompletionRequest, Content, Stop};
use crate::chat::{CallContext, Caller, ChatMessage, ChatRequest, Role, SamplingParams};
use crate::error::GatewayError;

/// The request body as OpenAI's request, with a wrong field named by its
/// path (`messages[0].content`).
pub(super) fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, GatewayError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            GatewayError::invalid_argument(
                "body",
                &format!("is not a JSON chat completion request: {inner}"),
            )
        } else {
            GatewayError::invalid_argument(&path, &format!("is not valid: {inner}"))
        }
    })
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
    let messages = wire
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                // OpenAI's newer name for system instructions.
                "developer" => Role::System,
                name => Role::parse(name).ok_or_else(|| {
                    GatewayError::invalid_argument(
                        &format!("messages[{i}].role"),
                        &format!(
                            "'{name}' is not a role this gateway forwards; use system, \
                             developer, user or assistant (tool calls are not supported)"
                        ),
                    )
                })?,
            };
            Ok(ChatMessage {
                role,
                content: content_text(i, message.content)?,
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
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

/// A message's text: the string, or its text parts joined by newlines.
fn content_text(message: usize, content: Option<Content>) -> Result<String, GatewayError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
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
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(part)) => text.push(part),
                    ("text", None) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].text"),
                            "is missing; a text part needs its text",
                        ));
                    }
                    (kind, _) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].type"),
                            &format!("'{kind}' parts are not supported; send text"),
                        ));
                    }
                }
            }
            Ok(text.join("\n"))
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
