//! Embeddings on the wires that have them: OpenAI-compatible
//! `/v1/embeddings` (vLLM serves it for embedding models) and Ollama's
//! `/api/embed`; the in-process simulator's deterministic vectors; and the
//! refusal of a wire that has none (Anthropic's).
//!
//! An embedding is one unary exchange, so it needs none of the streaming
//! machinery of `wire`: the request goes out through the same
//! [`HttpUpstream`] (headers, credentials, error mapping), the whole answer
//! is read, and the call's stream is a single final event whose
//! [`Completion`] carries the vectors and the input tokens. Through that
//! one event the balancer holds and releases the endpoint's load, retries
//! and the records see the call, exactly as for a chat answer.
//!
//! Upstreams are always asked for floats: a caller's `base64` is the
//! front's to encode, so every wire and every front agree on the numbers.

use std::sync::Arc;

use base64::Engine as _;
use http::Uri;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::adapter::Adapter;
use super::ollama::OllamaBackend;
use super::openai::OpenAiBackend;
use super::wire::HttpUpstream;
use crate::chat::{
    ChatEvent, ChatRequest, ChatStream, Completion, EmbedInput, EmbedRequest, Embeddings, Usage,
};
use crate::error::{ErrorKind, GatewayError};
use crate::sim::embed as sim;

/// An upstream wire's embeddings API.
pub(crate) trait EmbedWire: Send + Sync {
    /// The API path under each endpoint's base URL.
    fn path(&self) -> &'static str;

    /// The JSON body asking for `embed` as `model`; the caller's error when
    /// the wire cannot say it. `req` carries the fields passed through.
    fn body(
        &self,
        model: &str,
        req: &ChatRequest,
        embed: &EmbedRequest,
    ) -> Result<Vec<u8>, GatewayError>;

    /// Reads a whole answer: the vectors in input order, the input tokens
    /// if reported, and the model the upstream names.
    fn parse(&self, http: &HttpUpstream, bytes: &[u8]) -> Result<Embedded, GatewayError>;
}

/// What an upstream answered to an embedding call.
pub(crate) struct Embedded {
    /// One vector per input, in input order.
    vectors: Vec<Vec<f32>>,
    /// Input tokens, when the upstream counted them.
    input_tokens: Option<u32>,
    /// The model the upstream names, when it does.
    model: Option<String>,
}

/// Sends the embedding call `embed` as `model` through `adapter` to `url`
/// (its embeddings API at the chosen endpoint; `None` when the wire has
/// none) and answers with its one final event.
pub(crate) async fn send<A: Adapter>(
    adapter: &A,
    url: Option<&Uri>,
    model: Arc<str>,
    req: &ChatRequest,
    embed: &EmbedRequest,
) -> Result<ChatStream, GatewayError> {
    let http = adapter.http();
    let (Some(wire), Some(url)) = (adapter.embeddings(), url) else {
        return Err(no_embeddings(http.name()));
    };
    let body = wire.body(&model, req, embed)?;
    let bytes = http.fetch(url, body, req).await?;
    let embedded = wire.parse(http, &bytes)?;
    if embedded.vectors.len() != embed.len() {
        return Err(http.error(
            ErrorKind::Unavailable,
            &format!(
                "answered {} vectors for {} inputs",
                embedded.vectors.len(),
                embed.len()
            ),
        ));
    }
    let model = embedded.model.map_or(model, Arc::from);
    Ok(answer(model, embedded.vectors, embedded.input_tokens))
}

/// The refusal of an embedding call routed to a wire without embeddings:
/// not retried (the same route would land there again), and named so the
/// operator sees which upstream to move.
fn no_embeddings(upstream: &str) -> GatewayError {
    GatewayError::invalid_argument(
        "model",
        &format!(
            "is served by upstream '{upstream}', whose API (Anthropic's Messages API) has no \
             embeddings; route embeddings to a model served by openai, ollama or sim upstreams"
        ),
    )
}

/// The call's stream: one final event carrying the vectors.
fn answer(model: Arc<str>, vectors: Vec<Vec<f32>>, input_tokens: Option<u32>) -> ChatStream {
    let done = ChatEvent::Done(Completion {
        finish_reason: None,
        usage: input_tokens.map(|input_tokens| Usage {
            input_tokens,
            output_tokens: 0,
        }),
        model,
        logprobs: None,
        embeddings: Some(Arc::new(Embeddings { vectors })),
    });
    Box::pin(futures_util::stream::iter([Ok(done)]))
}

/// The JSON bytes of `body`.
fn encode(body: &impl Serialize) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(body).map_err(|err| {
        GatewayError::new(ErrorKind::Internal, format!("encoding the request: {err}"))
    })
}

/// The inputs as every JSON wire writes them: a list of texts, or a list
/// of token lists.
#[derive(Serialize)]
#[serde(untagged)]
enum WireInput<'a> {
    Texts(&'a [String]),
    Tokens(&'a [Vec<u32>]),
}

impl<'a> From<&'a EmbedInput> for WireInput<'a> {
    fn from(input: &'a EmbedInput) -> Self {
        match input {
            EmbedInput::Texts(texts) => WireInput::Texts(texts),
            EmbedInput::Tokens(lists) => WireInput::Tokens(lists),
        }
    }
}

// === OpenAI-compatible ===

/// OpenAI's embedding request: the inputs, floats asked for, and every
/// field the caller sent that the gateway does not read (`user`, vLLM's
/// `truncate_prompt_tokens`, ...), as sent.
#[derive(Serialize)]
struct OpenAiRequest<'a> {
    model: &'a str,
    input: WireInput<'a>,
    encoding_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(flatten)]
    passthrough: &'a Map<String, Value>,
}

/// OpenAI's embedding answer, the fields read.
#[derive(Deserialize)]
struct OpenAiAnswer {
    data: Vec<OpenAiVector>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<OpenAiUsage>,
}

#[derive(Deserialize)]
struct OpenAiVector {
    #[serde(default)]
    index: Option<usize>,
    embedding: OpenAiEmbedding,
}

/// A vector as floats, or as base64 of little-endian f32s from a server
/// that answers so whatever it was asked.
#[derive(Deserialize)]
#[serde(untagged)]
enum OpenAiEmbedding {
    Floats(Vec<f32>),
    Base64(String),
}

#[derive(Deserialize)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
}

impl EmbedWire for OpenAiBackend {
    fn path(&self) -> &'static str {
        "/v1/embeddings"
    }

    fn body(
        &self,
        model: &str,
        req: &ChatRequest,
        embed: &EmbedRequest,
    ) -> Result<Vec<u8>, GatewayError> {
        encode(&OpenAiRequest {
            model,
            input: (&embed.input).into(),
            encoding_format: "float",
            dimensions: embed.dimensions,
            passthrough: &req.extras.passthrough,
        })
    }

    fn parse(&self, http: &HttpUpstream, bytes: &[u8]) -> Result<Embedded, GatewayError> {
        let answer: OpenAiAnswer = http.parse(bytes, "an embedding list")?;
        let mut indexed = Vec::with_capacity(answer.data.len());
        for (position, item) in answer.data.into_iter().enumerate() {
            let vector = match item.embedding {
                OpenAiEmbedding::Floats(floats) => floats,
                OpenAiEmbedding::Base64(text) => floats_from_base64(&text).ok_or_else(|| {
                    http.error(
                        ErrorKind::Unavailable,
                        "answered an embedding that is not base64 of 32-bit floats",
                    )
                })?,
            };
            indexed.push((item.index.unwrap_or(position), vector));
        }
        indexed.sort_by_key(|(index, _)| *index);
        if indexed
            .iter()
            .enumerate()
            .any(|(i, (index, _))| i != *index)
        {
            return Err(http.error(
                ErrorKind::Unavailable,
                "answered embeddings whose indexes are not 0, 1, 2, ...",
            ));
        }
        Ok(Embedded {
            vectors: indexed.into_iter().map(|(_, vector)| vector).collect(),
            input_tokens: answer.usage.and_then(|u| u.prompt_tokens),
            model: answer.model,
        })
    }
}

// === Ollama ===

/// Ollama's `/api/embed` request.
#[derive(Serialize)]
struct OllamaRequest<'a> {
    model: &'a str,
    input: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a super::ollama::WireKeepAlive>,
}

/// Ollama's `/api/embed` answer, the fields read.
#[derive(Deserialize)]
struct OllamaAnswer {
    embeddings: Vec<Vec<f32>>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
}

impl EmbedWire for OllamaBackend {
    fn path(&self) -> &'static str {
        "/api/embed"
    }

    fn body(
        &self,
        model: &str,
        req: &ChatRequest,
        embed: &EmbedRequest,
    ) -> Result<Vec<u8>, GatewayError> {
        let upstream: &str = self.http().name();
        let unsupported =
            |field: &str| super::translate::unsupported(field, upstream, "Ollama's /api/embed");
        let EmbedInput::Texts(texts) = &embed.input else {
            return Err(unsupported("input"));
        };
        if let Some(field) = req.extras.passthrough.keys().next() {
            return Err(unsupported(field));
        }
        encode(&OllamaRequest {
            model,
            input: texts,
            dimensions: embed.dimensions,
            keep_alive: self.keep_alive.as_ref(),
        })
    }

    fn parse(&self, http: &HttpUpstream, bytes: &[u8]) -> Result<Embedded, GatewayError> {
        let answer: OllamaAnswer = http.parse(bytes, "an /api/embed answer")?;
        Ok(Embedded {
            vectors: answer.embeddings,
            input_tokens: answer.prompt_eval_count,
            model: answer.model,
        })
    }
}

// === the simulator ===

/// The in-process simulator's answer to `embed`: its deterministic vectors
/// (see [`crate::sim::embed`]), tokens counted by words (token ids one
/// each).
pub(crate) fn simulate(model: Arc<str>, embed: &EmbedRequest) -> ChatStream {
    let dimensions = embed.dimensions.unwrap_or(sim::DIMENSIONS) as usize;
    let (vectors, tokens): (Vec<Vec<f32>>, u32) = match &embed.input {
        EmbedInput::Texts(texts) => (
            texts
                .iter()
                .map(|text| sim::vector(text.as_bytes(), dimensions))
                .collect(),
            texts
                .iter()
                .map(|text| sim::tokens(text))
                .fold(0, u32::saturating_add),
        ),
        EmbedInput::Tokens(lists) => (
            lists
                .iter()
                .map(|ids| sim::token_vector(ids, dimensions))
                .collect(),
            u32::try_from(lists.iter().map(Vec::len).sum::<usize>()).unwrap_or(u32::MAX),
        ),
    };
    answer(model, vectors, Some(tokens))
}

/// Little-endian f32s from base64, as OpenAI encodes them; `None` when the
/// text is not base64 or not a whole number of floats.
fn floats_from_base64(text: &str) -> Option<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    if bytes.len() % 4 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_floats_decode_little_endian_and_refuse_partial_floats() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(floats_from_base64(&text), Some(vec![1.5, -2.0]));
        assert_eq!(floats_from_base64("AAA="), None);
        assert_eq!(floats_from_base64("not base64!"), None);
    }
}
