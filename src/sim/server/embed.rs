//! The simulator's embeddings behind the two APIs that have them:
//! vLLM's OpenAI-compatible `POST /v1/embeddings` and Ollama's
//! `POST /api/embed`, answering the vectors of [`crate::sim::embed`], so a
//! `kind: openai` or `kind: ollama` pool pointed at `llmgate sim` embeds
//! over the real HTTP path.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sim::embed::{DIMENSIONS, token_vector, tokens, vector};

/// What may be embedded: texts, or token ids (OpenAI's API only).
#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// The request fields read; others are accepted and ignored.
#[derive(Deserialize)]
struct EmbedRequest {
    model: String,
    input: Input,
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// The vectors and the tokens counted for `input`.
fn embed(input: Input, dimensions: Option<u32>) -> (Vec<Vec<f32>>, u32) {
    let dimensions = dimensions.unwrap_or(DIMENSIONS).min(65_536) as usize;
    let texts = |texts: Vec<String>| {
        let counted = texts.iter().map(|t| tokens(t)).fold(0, u32::saturating_add);
        let vectors = texts.iter().map(|t| vector(t.as_bytes(), dimensions));
        (vectors.collect(), counted)
    };
    let lists = |lists: Vec<Vec<u32>>| {
        let counted = u32::try_from(lists.iter().map(Vec::len).sum::<usize>()).unwrap_or(u32::MAX);
        let vectors = lists.iter().map(|ids| token_vector(ids, dimensions));
        (vectors.collect(), counted)
    };
    match input {
        Input::One(text) => texts(vec![text]),
        Input::Texts(many) => texts(many),
        Input::Tokens(ids) => lists(vec![ids]),
        Input::TokenLists(many) => lists(many),
    }
}

/// `POST /v1/embeddings`, as vLLM answers it.
pub(super) async fn openai(body: Bytes) -> Response {
    let request: EmbedRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return super::error(StatusCode::BAD_REQUEST, &format!("invalid request: {err}"));
        }
    };
    let base64 = request.encoding_format.as_deref() == Some("base64");
    let (vectors, counted) = embed(request.input, request.dimensions);
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": counted, "total_tokens": counted},
    }))
    .into_response()
}

/// `POST /api/embed`, as Ollama answers it (texts only).
pub(super) async fn ollama(body: Bytes) -> Response {
    let request: EmbedRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return ollama_error(&err.to_string()),
    };
    if matches!(request.input, Input::Tokens(_) | Input::TokenLists(_)) {
        return ollama_error("input must be a string or a list of strings");
    }
    let (vectors, counted) = embed(request.input, request.dimensions);
    axum::Json(json!({
        "model": request.model,
        "embeddings": vectors,
        "total_duration": 0,
        "load_duration": 0,
        "prompt_eval_count": counted,
    }))
    .into_response()
}

fn ollama_error(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message})),
    )
        .into_response()
}
