//! The simulator behind Anthropic's Messages API: `POST /v1/messages`,
//! answered whole or as the real event sequence (`message_start`,
//! `content_block_start`, `ping`, `content_block_delta`s,
//! `content_block_stop`, `message_delta`, `message_stop`). Like the real
//! API it wants `anthropic-version` and `max_tokens`, takes no `system`
//! role in `messages`, and reports an overload as a 529
//! `overloaded_error`; the key is not checked.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{Sim, chat_messages, streamed};
use crate::chat::{ChatMessage, FinishReason, Role};

/// The request fields the simulator reads; others are accepted and ignored.
#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    #[serde(default)]
    system: Option<Content>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Content,
}

/// Text as a string, or as content blocks of which the `text` ones count.
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

/// The routes of the Messages API.
pub(super) fn routes() -> Router<Arc<Sim>> {
    Router::new().route("/v1/messages", post(messages))
}

async fn messages(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    if !headers.contains_key("anthropic-version") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let request: MessagesRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &err.to_string(),
            );
        }
    };
    let Some(max_tokens) = request.max_tokens else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    };
    let mut conversation = match chat_messages(
        request
            .messages
            .into_iter()
            .map(|m| (m.role, m.content.into_text())),
        &[Role::User, Role::Assistant],
    ) {
        Ok(messages) => messages,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("messages: {message}; system instructions go in the top-level system"),
            );
        }
    };
    if let Some(system) = request.system {
        // Counted as input like any other message.
        conversation.insert(0, ChatMessage::text(Role::System, system.into_text()));
    }
    let Some(run) = sim.settings.start(&conversation, Some(max_tokens)) else {
        return error(
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "overloaded_error",
            "Overloaded (simulated)",
        );
    };
    let stop_reason = match run.finish_reason() {
        FinishReason::Length => "max_tokens",
        _ => "end_turn",
    };
    let usage = run.usage();
    let id = sim.id("msg_sim");
    if !request.stream {
        let text = run.text().await;
        return axum::Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": request.model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
        }))
        .into_response();
    }
    let head = [
        event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": request.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1},
            }}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    let tokens = run.tokens().map(|token| {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": token}}),
        )
    });
    let tail = [
        event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                    "usage": {"output_tokens": usage.output_tokens}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ];
    let pieces = futures_util::stream::iter(head)
        .chain(tokens)
        .chain(futures_util::stream::iter(tail));
    streamed("text/event-stream", pieces)
}

// === impl Content ===

impl Content {
    fn into_text(self) -> String {
        match self {
            Content::Text(text) => text,
            Content::Blocks(blocks) => blocks
                .into_iter()
                .filter(|b| b.kind == "text")
                .map(|b| b.text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One SSE event with its name, as the Messages API sends them.
fn event(name: &str, data: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// An error in the Messages API's shape.
fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, axum::Json(body)).into_response()
}
