//! `llmgate sim`: the simulator behind a real upstream's HTTP API.
//!
//! By default it speaks the subset of vLLM's OpenAI-compatible wire the
//! gateway's `openai` backend uses (`POST /v1/chat/completions` streamed as
//! SSE or not, `POST /v1/embeddings`, `GET /v1/models`, `GET /health`),
//! with vLLM's JSON error shape. With [`SimApi::Ollama`] it speaks
//! Ollama's native API (`ollama` module) and with [`SimApi::Anthropic`]
//! the Messages API (`anthropic` module); embeddings are in `embed`. So
//! tests, benchmarks and users can try every pool kind over
//! the real HTTP path with no GPU and no cloud account.

mod anthropic;
mod embed;
mod ollama;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use super::SimSettings;
use crate::chat::{ChatMessage, Role};

/// Which upstream API the simulator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SimApi {
    /// vLLM's OpenAI-compatible API (`kind: openai`).
    #[default]
    OpenAi,
    /// Ollama's native API (`kind: ollama`).
    Ollama,
    /// Anthropic's Messages API (`kind: anthropic`).
    Anthropic,
}

/// The shared state of one simulator server.
struct Sim {
    /// How the simulated model behaves.
    settings: SimSettings,
    /// Counter for completion ids.
    next_id: AtomicU64,
}

/// The request fields the simulator reads; others are accepted and ignored,
/// as vLLM does.
#[derive(Deserialize)]
struct SimRequest {
    model: String,
    messages: Vec<SimMessage>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct SimMessage {
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// Serves the simulator with vLLM's OpenAI-compatible API on `listener`
/// until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    settings: SimSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_api(listener, settings, SimApi::OpenAi, shutdown).await
}

/// Serves the simulator with `api` on `listener` until `shutdown`
/// completes.
pub async fn serve_api(
    listener: TcpListener,
    settings: SimSettings,
    api: SimApi,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let state = Arc::new(Sim {
        settings,
        next_id: AtomicU64::new(1),
    });
    let app = match api {
        SimApi::OpenAi => Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/embeddings", post(embed::openai))
            .route("/v1/models", get(models))
            .route("/health", get(|| async { StatusCode::OK })),
        SimApi::Ollama => ollama::routes(),
        SimApi::Anthropic => anthropic::routes(),
    }
    .with_state(state);
    let listener = listener.tap_io(|tcp| {
        // Tokens must leave the moment they are produced.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn models() -> Response {
    let body = json!({
        "object": "list",
        "data": [{"id": "sim", "object": "model", "owned_by": "llmgate"}],
    });
    axum::Json(body).into_response()
}

async fn chat_completions(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    let request: SimRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("invalid request: {err}")),
    };
    let messages = match chat_messages(
        request.messages.into_iter().map(|m| (m.role, m.content)),
        &[Role::System, Role::User, Role::Assistant],
    ) {
        Ok(messages) => messages,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    let Some(run) = sim.settings.start(&messages, max_tokens) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "simulated overload");
    };
    let id = sim.id("chatcmpl-sim");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let usage = json!({
        "prompt_tokens": run.usage().input_tokens,
        "completion_tokens": run.usage().output_tokens,
        "total_tokens": run.usage().input_tokens + run.usage().output_tokens,
    });
    if !request.stream {
        let text = run.text().await;
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": run.finish_reason().as_str(),
            }],
            "usage": usage,
        });
        return axum::Json(body).into_response();
    }
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |choices: serde_json::Value, usage: Option<&serde_json::Value>| {
        let mut event = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            event["usage"] = usage.clone();
        }
        Bytes::from(format!("data: {event}\n\n"))
    };
    let finish = chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": run.finish_reason().as_str()}]),
        None,
    );
    let usage_chunk = include_usage.then(|| chunk(json!([]), Some(&usage)));
    let tokens = run.tokens().map(move |token| {
        chunk(
            json!([{"index": 0, "delta": {"content": token}, "finish_reason": null}]),
            None,
        )
    });
    let tail = futures_util::stream::iter(
        [
            Some(finish),
            usage_chunk,
            Some(Bytes::from_static(b"data: [DONE]\n\n")),
        ]
        .into_iter()
        .flatten(),
    );
    streamed("text/event-stream", tokens.chain(tail))
}

/// An error in vLLM's JSON shape.
fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "object": "error",
        "message": message,
        "type": status.canonical_reason().unwrap_or("error"),
        "code": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

// === shared by every API ===

impl Sim {
    /// A fresh id for an answer: `{prefix}-{n}`.
    fn id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// The conversation as the simulator's model reads it; an error message
/// (the API's 400) for a role `allowed` does not have, or no messages.
fn chat_messages(
    messages: impl Iterator<Item = (String, String)>,
    allowed: &[Role],
) -> Result<Vec<ChatMessage>, String> {
    let mut out = Vec::new();
    for (role, content) in messages {
        match Role::parse(&role).filter(|r| allowed.contains(r)) {
            Some(role) => out.push(ChatMessage::text(role, content)),
            None => return Err(format!("unknown role '{role}'")),
        }
    }
    if out.is_empty() {
        return Err("messages must not be empty".into());
    }
    Ok(out)
}

/// A streamed answer: each piece is written the moment the stream yields
/// it, so the simulator paces tokens as a real server does.
fn streamed(
    content_type: &'static str,
    pieces: impl Stream<Item = Bytes> + Send + 'static,
) -> Response {
    let body = Body::from_stream(pieces.map(Ok::<_, Infallible>));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
