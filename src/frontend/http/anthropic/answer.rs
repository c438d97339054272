//! A whole answer as one Messages API `message`, and what a streamed one
//! shares with it: the message id, the model to name, the stop reason and
//! the usage in Anthropic's words.

use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use super::wire::{OutBlock, OutMessage, OutUsage};
use crate::chat::{ChatStream, Completion, FinishReason};
use crate::error::GatewayError;
use crate::frontend::edge::{WholeAnswer, gather};

/// What the message (or every streamed event) of one call repeats.
pub(super) struct MessageInfo {
    /// `msg_...`, one per call.
    pub(super) id: String,
    /// The model asked for: named until the upstream says which served
    /// the call (a stream's `message_start` goes before it does).
    pub(super) model: String,
}

impl MessageInfo {
    /// A new message for `model`.
    pub(super) fn new(model: String) -> Self {
        MessageInfo {
            id: format!("msg_{:024x}", rand::random::<u128>() >> 32),
            model,
        }
    }
}

/// Gathers a whole answer into one `message`: its text as one text block,
/// then one `tool_use` block per call.
pub(super) async fn whole_message(
    events: ChatStream,
    info: MessageInfo,
) -> Result<Response, GatewayError> {
    let WholeAnswer {
        text,
        tool_calls: calls,
        completion,
    } = gather(events).await?;
    let stop_reason = stop_reason(&completion)?;
    let ids: Vec<String> = calls.iter().map(|call| tool_use_id(&call.id)).collect();
    let mut content = Vec::with_capacity(calls.len() + 1);
    if !text.is_empty() {
        content.push(OutBlock::Text { text: &text });
    }
    for (call, id) in calls.iter().zip(&ids) {
        content.push(OutBlock::ToolUse {
            id,
            name: &call.name,
            input: tool_input(&call.arguments),
        });
    }
    let message = OutMessage {
        id: &info.id,
        kind: "message",
        role: "assistant",
        model: served_model(&completion, &info),
        content,
        stop_reason: Some(stop_reason),
        stop_sequence: None,
        usage: usage(&completion),
    };
    Ok(Json(message).into_response())
}

/// The stop reason in Anthropic's words. The vocabulary says `stop` for
/// both an ended turn and a stop sequence, so both read as `end_turn`.
/// An upstream that reported an error as its finish did not answer: that
/// is an error here, never a clean stop.
pub(super) fn stop_reason(completion: &Completion) -> Result<&'static str, GatewayError> {
    Ok(match completion.finish_reason {
        None | Some(FinishReason::Stop) => "end_turn",
        Some(FinishReason::Length) => "max_tokens",
        Some(FinishReason::ToolCalls) => "tool_use",
        Some(FinishReason::ContentFilter) => "refusal",
        Some(FinishReason::Error) => {
            return Err(GatewayError::unavailable(
                "the upstream reported an error while generating; the answer is incomplete",
            ));
        }
    })
}

/// The usage in Anthropic's names; zeros when the upstream reported none.
pub(super) fn usage(completion: &Completion) -> OutUsage {
    completion
        .usage
        .map_or_else(OutUsage::default, |usage| OutUsage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
        })
}

/// The model to name: the one the upstream says served the call, else the
/// one asked for.
pub(super) fn served_model<'a>(completion: &'a Completion, info: &'a MessageInfo) -> &'a str {
    if completion.model.is_empty() {
        &info.model
    } else {
        &completion.model
    }
}

/// A tool call's id as a `tool_use` id: the upstream's, or a new one for
/// an upstream that gave none, since the caller's `tool_result` must name
/// it.
pub(super) fn tool_use_id(id: &str) -> String {
    if id.is_empty() {
        format!("toolu_{:024x}", rand::random::<u128>() >> 32)
    } else {
        id.to_string()
    }
}

/// A tool call's arguments as `tool_use.input`: the JSON the model wrote
/// (`{}` for none). Text that is not JSON (a model can write anything)
/// goes as a JSON string, so the caller sees what the model wrote instead
/// of an answer lost to it.
pub(super) fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_string()))
}
