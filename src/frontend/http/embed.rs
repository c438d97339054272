//! `POST /v1/embeddings` in OpenAI's shape: the request as an embedding
//! call of the vocabulary, and its vectors as OpenAI's `list` of
//! `embedding`s.
//!
//! `input` is a string, an array of strings, an array of token ids, or an
//! array of such arrays; `encoding_format` is `float` (the default) or
//! `base64`, little-endian f32s, which the OpenAI SDKs ask for unless told
//! otherwise (and decode themselves). Upstreams are always asked for
//! floats, so the encoding is this front's alone. Every other field is
//! passed through to OpenAI-compatible upstreams as sent, like chat's.

use axum::response::{IntoResponse, Json, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::chat::{CallContext, Caller, ChatRequest, Completion, EmbedInput, EmbedRequest};
use crate::error::GatewayError;

/// The fields this front reads; the rest go to the upstream as sent.
const KNOWN_FIELDS: &[&str] = &["model", "input", "encoding_format", "dimensions"];

/// OpenAI's embedding request, the fields read.
#[derive(Deserialize)]
pub(super) struct EmbeddingRequest {
    /// The route to embed with.
    #[serde(default)]
    pub(super) model: Option<String>,
    /// What to embed.
    input: WireInput,
    /// `float` or `base64`.
    #[serde(default)]
    encoding_format: Option<String>,
    /// The vectors' length.
    #[serde(default)]
    dimensions: Option<u32>,
    /// Every other field, as sent.
    #[serde(skip)]
    passthrough: Map<String, Value>,
}

/// The four shapes of `input`, tried in this order.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireInput {
    One(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// How the caller wants each vector written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encoding {
    /// An array of numbers.
    Float,
    /// Base64 of the little-endian f32s.
    Base64,
}

/// The answer: OpenAI's `list` of `embedding`s.
#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: WireVector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireVector {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}

/// The body as an embedding request, a wrong field named by its path and
/// every field not read kept for the upstream.
pub(super) fn parse_embedding(body: &[u8]) -> Result<EmbeddingRequest, GatewayError> {
    let not_a_request = |why: &dyn std::fmt::Display| {
        GatewayError::invalid_argument("body", &format!("is not a JSON embedding request: {why}"))
    };
    let mut fields: Map<String, Value> =
        serde_json::from_slice(body).map_err(|err| not_a_request(&err))?;
    let mut known = Map::new();
    for name in KNOWN_FIELDS {
        if let Some(value) = fields.remove(*name) {
            known.insert((*name).to_string(), value);
        }
    }
    if !known.contains_key("input") {
        return Err(GatewayError::invalid_argument(
            "input",
            "is missing; send a text, a list of texts or a list of token lists",
        ));
    }
    let mut request: EmbeddingRequest = serde_path_to_error::deserialize(Value::Object(known))
        .map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            match path.as_str() {
                "." => not_a_request(&inner),
                // Untagged: serde cannot say which shape was meant.
                "input" => GatewayError::invalid_argument(
                    "input",
                    "must be a string, an array of strings, an array of token ids or an \
                     array of arrays of token ids",
                ),
                _ => GatewayError::invalid_argument(&path, &format!("is not valid: {inner}")),
            }
        })?;
    request.passthrough = fields;
    Ok(request)
}

/// The wire request as a validated embedding call of `caller`, and the
/// encoding the answer is to be written in.
pub(super) fn embedding_call(
    wire: EmbeddingRequest,
    deadline: Option<Instant>,
    call: CallContext,
    caller: Caller,
) -> Result<(ChatRequest, Encoding), GatewayError> {
    let encoding = match wire.encoding_format.as_deref() {
        None | Some("float") => Encoding::Float,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(GatewayError::invalid_argument(
                "encoding_format",
                &format!("'{other}' is not a format; use float or base64"),
            ));
        }
    };
    let input = match wire.input {
        WireInput::One(text) => EmbedInput::Texts(vec![text]),
        WireInput::Texts(texts) => EmbedInput::Texts(texts),
        WireInput::Tokens(ids) => EmbedInput::Tokens(vec![ids]),
        WireInput::TokenLists(lists) => EmbedInput::Tokens(lists),
    };
    let embed = EmbedRequest {
        input,
        dimensions: wire.dimensions,
    };
    embed.validate()?;
    let mut req = ChatRequest::embedding(
        wire.model.unwrap_or_default(),
        embed,
        deadline,
        call,
        caller,
    );
    req.validate_model()?;
    req.extras.passthrough = wire.passthrough;
    Ok((req, encoding))
}

/// The vectors of `completion` as OpenAI's answer, each written as the
/// caller asked; `asked` names the model when the upstream did not.
pub(super) fn embedding_answer(
    completion: &Completion,
    asked: &str,
    encoding: Encoding,
) -> Response {
    let vectors = completion
        .embeddings
        .as_deref()
        .map(|e| e.vectors.as_slice())
        .unwrap_or_default();
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: match encoding {
                Encoding::Float => WireVector::Floats(vector.clone()),
                Encoding::Base64 => WireVector::Base64(base64_floats(vector)),
            },
        })
        .collect();
    let prompt_tokens = completion.usage.map_or(0, |u| u.input_tokens);
    Json(EmbeddingList {
        object: "list",
        data,
        model: if completion.model.is_empty() {
            asked
        } else {
            &completion.model
        },
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    })
    .into_response()
}

/// Base64 of `vector`'s little-endian f32s, as OpenAI writes it.
fn base64_floats(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(body: &str) -> Result<(ChatRequest, Encoding), GatewayError> {
        let wire = parse_embedding(body.as_bytes())?;
        embedding_call(wire, None, CallContext::default(), Caller::Anonymous)
    }

    fn input(req: &ChatRequest) -> EmbedInput {
        req.extras
            .embed
            .as_ref()
            .map(|e| e.input.clone())
            .expect("an embedding call")
    }

    #[test]
    fn every_shape_of_input_reads_and_other_fields_pass_through() {
        let (req, encoding) = call(r#"{"model": "m", "input": "hi", "user": "u1"}"#).expect("one");
        assert_eq!(input(&req), EmbedInput::Texts(vec!["hi".into()]));
        assert_eq!(encoding, Encoding::Float);
        assert_eq!(req.extras.passthrough.get("user"), Some(&Value::from("u1")));
        let (req, encoding) =
            call(r#"{"model": "m", "input": ["a", "b"], "encoding_format": "base64"}"#)
                .expect("texts");
        assert_eq!(input(&req), EmbedInput::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(encoding, Encoding::Base64);
        let (req, _) = call(r#"{"model": "m", "input": [1, 2, 3]}"#).expect("tokens");
        assert_eq!(input(&req), EmbedInput::Tokens(vec![vec![1, 2, 3]]));
        let (req, _) = call(r#"{"model": "m", "input": [[1], [2, 3]]}"#).expect("lists");
        assert_eq!(input(&req), EmbedInput::Tokens(vec![vec![1], vec![2, 3]]));
    }

    #[test]
    fn a_wrong_field_is_named() {
        for (body, field) in [
            (r#"{"model": "m"}"#, "input"),
            (r#"{"model": "m", "input": {"a": 1}}"#, "input"),
            (r#"{"model": "m", "input": []}"#, "input"),
            (r#"{"model": "m", "input": ["a", ""]}"#, "input[1]"),
            (
                r#"{"model": "m", "input": "a", "encoding_format": "hex"}"#,
                "encoding_format",
            ),
            (
                r#"{"model": "m", "input": "a", "dimensions": -1}"#,
                "dimensions",
            ),
            (r#"{"input": "a"}"#, "model"),
        ] {
            let err = call(body)
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert!(err.message().starts_with(field), "{body}: {err:?}");
        }
    }

    #[test]
    fn base64_is_little_endian_f32() {
        assert_eq!(base64_floats(&[1.0]), "AACAPw==");
    }
}
