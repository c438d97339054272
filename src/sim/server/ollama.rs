//! The simulator behind Ollama's native API: `POST /api/chat` (an NDJSON
//! stream, or one JSON object with `stream: false`), `POST /api/embed`,
//! `GET /api/tags`,
//! `GET /api/version`, and `GET /` ("Ollama is running", which health
//! checks probe). Errors use Ollama's `{"error": "..."}` shape; an overload
//! is a 503, as Ollama answers when its queue is full.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use super::{Sim, chat_messages, streamed};
use crate::chat::{FinishReason, Role};

/// The one model the simulator lists.
const MODEL: &str = "sim:latest";

/// The request fields the simulator reads; others are accepted and ignored.
#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    /// Ollama streams unless told otherwise.
    #[serde(default = "streams_by_default")]
    stream: bool,
    #[serde(default)]
    options: Options,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize, Default)]
struct Options {
    /// -1 means "no limit" to Ollama.
    #[serde(default)]
    num_predict: Option<i64>,
}

/// The routes of the Ollama API.
pub(super) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/api/chat", post(chat))
        .route("/api/embed", post(super::embed::ollama))
        .route("/api/tags", get(tags))
        .route("/api/version", get(version))
        .route("/", get(|| async { "Ollama is running" }))
}

async fn chat(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let started = Instant::now();
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let messages = match chat_messages(
        request.messages.into_iter().map(|m| (m.role, m.content)),
        &[Role::System, Role::User, Role::Assistant],
    ) {
        Ok(messages) => messages,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let max_tokens = request
        .options
        .num_predict
        .and_then(|n| u32::try_from(n).ok());
    let Some(run) = sim.settings.start(&messages, max_tokens) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server busy, please try again (simulated overload)",
        );
    };
    let done_reason = match run.finish_reason() {
        FinishReason::Length => "length",
        _ => "stop",
    };
    let usage = run.usage();
    let model = request.model;
    // The final object's counters and timings, as Ollama reports them
    // (durations in nanoseconds).
    let last = move |model: &str, content: &str| {
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        json!({
            "model": model,
            "created_at": now(),
            "message": {"role": "assistant", "content": content},
            "done_reason": done_reason,
            "done": true,
            "total_duration": elapsed,
            "load_duration": 0,
            "prompt_eval_count": usage.input_tokens,
            "prompt_eval_duration": 0,
            "eval_count": usage.output_tokens,
            "eval_duration": elapsed,
        })
    };
    if !request.stream {
        let text = run.text().await;
        return axum::Json(last(&model, &text)).into_response();
    }
    let token_model = model.clone();
    let tokens = run.tokens().map(move |token| {
        line(&json!({
            "model": token_model,
            "created_at": now(),
            "message": {"role": "assistant", "content": token},
            "done": false,
        }))
    });
    let tail = futures_util::stream::once(async move { line(&last(&model, "")) });
    streamed("application/x-ndjson", tokens.chain(tail))
}

async fn tags() -> Response {
    axum::Json(json!({
        "models": [{
            "name": MODEL,
            "model": MODEL,
            "modified_at": now(),
            "size": 0,
            "digest": "0000000000000000000000000000000000000000000000000000000000000000",
            "details": {
                "format": "gguf",
                "family": "llmgate-sim",
                "parameter_size": "0",
                "quantization_level": "none",
            },
        }],
    }))
    .into_response()
}

async fn version() -> Response {
    axum::Json(json!({"version": env!("CARGO_PKG_VERSION")})).into_response()
}

/// One NDJSON line.
fn line(value: &serde_json::Value) -> Bytes {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// Now, as Ollama writes `created_at`.
fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// An error in Ollama's shape.
fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

fn streams_by_default() -> bool {
    true
}
