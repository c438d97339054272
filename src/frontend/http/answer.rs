//! A whole answer as one `chat.completion` (with `message.tool_calls`
//! when the model called tools), and what a streamed answer's chunks
//! repeat: the call's id, its start time and the model to name.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Json, Response};

use super::wire::{
    AssistantMessage, ChatCompletion, Choice, WireFunctionOut, WireToolCallOut, WireUsage,
};
use crate::chat::{ChatStream, Completion, FinishReason};
use crate::error::GatewayError;
use crate::frontend::edge::{WholeAnswer, gather};

/// What every chunk (or the whole answer) of one call repeats.
pub(super) struct CallInfo {
    /// `chatcmpl-...`, one per call.
    pub(super) id: String,
    /// Unix seconds when the call started.
    pub(super) created: u64,
    /// The model named in chunks: the one asked for until the upstream
    /// says which served the call.
    pub(super) model: String,
    /// Whether the caller asked for a usage chunk.
    pub(super) include_usage: bool,
}

impl CallInfo {
    /// A new call for `model`.
    pub(super) fn new(model: String, include_usage: bool) -> Self {
        CallInfo {
            id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model,
            include_usage,
        }
    }
}

/// Gathers a whole answer into one `chat.completion`.
pub(super) async fn whole_answer(
    events: ChatStream,
    call: CallInfo,
) -> Result<Response, GatewayError> {
    let WholeAnswer {
        text,
        tool_calls: calls,
        completion,
    } = gather(events).await?;
    let tool_calls = calls
        .iter()
        .map(|call| WireToolCallOut {
            index: None,
            id: Some(&call.id),
            kind: Some("function"),
            function: WireFunctionOut {
                name: Some(&call.name),
                arguments: &call.arguments,
            },
        })
        .collect();
    let answer = ChatCompletion {
        id: &call.id,
        object: "chat.completion",
        created: call.created,
        model: served_model(&completion, &call),
        choices: [Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!text.is_empty() || calls.is_empty()).then_some(&text),
                tool_calls,
            },
            logprobs: completion.logprobs.as_ref(),
            finish_reason: finish_reason(&completion),
        }],
        usage: completion.usage.map(WireUsage::from),
    };
    Ok(Json(answer).into_response())
}

/// The model to name in an answer: the one the upstream says served it,
/// else the one asked for.
pub(super) fn served_model<'a>(completion: &'a Completion, call: &'a CallInfo) -> &'a str {
    if completion.model.is_empty() {
        &call.model
    } else {
        &completion.model
    }
}

/// The finish reason in OpenAI's words. An upstream that finished without
/// saying why ended normally, which OpenAI calls `stop`.
pub(super) fn finish_reason(completion: &Completion) -> &'static str {
    completion
        .finish_reason
        .map_or("stop", FinishReason::as_str)
}

/// Seconds since the Unix epoch, as OpenAI's `created` fields are.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}
