//! `kind: openai`: OpenAI's chat completions API, as vLLM, OpenAI and other
//! compatible servers speak it.
//!
//! A streaming call asks for SSE with usage on the final chunk and forwards
//! each `delta.content` as a token the moment it is decoded. Cloud providers
//! differ in two ways the routing file covers: some want extra headers
//! (`headers:`), and OpenAI's newer models refuse `max_tokens` and want
//! `max_completion_tokens` instead (`max_tokens_field:`), while vLLM and
//! older servers know only `max_tokens`.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::sse::{SseDecoder, SseEvent};
use super::wire::{self, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{ChatMessage, ChatRequest, Completion, FinishReason, Usage};
use crate::config::{MaxTokensField, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};

/// An OpenAI-compatible upstream.
#[derive(Debug)]
pub(crate) struct OpenAiBackend {
    /// Where to send, with which headers.
    http: HttpUpstream,
    /// Which request field carries the caller's `max_tokens`.
    max_tokens_field: MaxTokensField,
}

/// The request body; borrows everything from the [`ChatRequest`].
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    /// vLLM's (and SGLang's, TGI's) way to continue the final assistant
    /// message instead of answering it: sent only to continue a broken
    /// stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    continue_final_message: Option<bool>,
    /// Must be off when `continue_final_message` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    add_generation_prompt: Option<bool>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A whole answer or one streamed chunk: the fields we read of either.
#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<WireChoice<'a>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// Some servers report a failure inside a 200 stream this way.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(borrow, default)]
    message: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    delta: Option<WireContent<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireContent<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// Reads an SSE stream of chat completion chunks.
pub(crate) struct ChunkStream {
    /// Whether the model name came from the upstream yet.
    model_reported: bool,
    /// Chunks decoded so far: a stream that ends having sent none did not
    /// answer at all.
    chunks: u64,
    /// Whether a chunk carried a `finish_reason`: only then is the answer
    /// whole. `[DONE]` or a clean end of the body without one is a cut.
    finished: bool,
}

// === impl OpenAiBackend ===

impl OpenAiBackend {
    /// Prepares the headers and credentials of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        OpenAiBackend {
            http: HttpUpstream::new(
                config,
                client,
                "/v1/chat/completions",
                Credential::Bearer,
                &[],
            ),
            max_tokens_field: config.max_tokens_field,
        }
    }
}

// === impl Adapter for OpenAiBackend ===

impl Adapter for OpenAiBackend {
    type Body<'a> = WireRequest<'a>;
    type Dialect = ChunkStream;

    fn http(&self) -> &HttpUpstream {
        &self.http
    }

    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<WireRequest<'a>, GatewayError> {
        let max_tokens = req.params.max_tokens;
        let (max_tokens, max_completion_tokens) = match self.max_tokens_field {
            MaxTokensField::MaxTokens => (max_tokens, None),
            MaxTokensField::MaxCompletionTokens => (None, max_tokens),
        };
        Ok(WireRequest {
            model,
            messages: &req.messages,
            max_tokens,
            max_completion_tokens,
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop: &req.params.stop,
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
            continue_final_message: req.prefill.then_some(true),
            add_generation_prompt: req.prefill.then_some(false),
        })
    }

    fn dialect(&self) -> ChunkStream {
        ChunkStream {
            model_reported: false,
            chunks: 0,
            finished: false,
        }
    }

    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<String, GatewayError> {
        let answer: WireResponse<'_> = self.http.parse(bytes, "a chat completion")?;
        if let Some(error) = answer.error {
            return Err(self.http.error(
                ErrorKind::Unavailable,
                &format!("reported an error: {}", wire::error_message(&error)),
            ));
        }
        let Some(choice) = answer.choices.into_iter().next() else {
            return Err(self
                .http
                .error(ErrorKind::Unavailable, "answered with no choices"));
        };
        let text = choice
            .message
            .and_then(|m| m.content)
            .map(Cow::into_owned)
            .unwrap_or_default();
        completion.finish_reason = choice
            .finish_reason
            .as_deref()
            .and_then(FinishReason::parse);
        completion.usage = answer.usage.map(WireUsage::into_usage);
        if let Some(model) = answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        Ok(text)
    }
}

// === impl ChunkStream ===

impl Dialect for ChunkStream {
    type Framing = SseDecoder;

    fn on_item(&mut self, event: SseEvent, completion: &mut Completion) -> Step {
        if event.data == "[DONE]" {
            if !self.finished {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    "sent [DONE] without a finish_reason; the answer is incomplete".into(),
                );
            }
            return Step::Done;
        }
        let chunk: WireResponse<'_> = match serde_json::from_str(&event.data) {
            Ok(chunk) => chunk,
            Err(err) => {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    format!(
                        "sent an event that is not a valid chunk ({err}): {}",
                        wire::quote(event.data.as_bytes())
                    ),
                );
            }
        };
        if let Some(error) = chunk.error {
            return Step::Fail(
                ErrorKind::Unavailable,
                format!(
                    "reported an error mid-stream: {}",
                    wire::error_message(&error)
                ),
            );
        }
        self.chunks += 1;
        if !self.model_reported
            && let Some(model) = chunk.model
        {
            completion.model = Arc::from(model.as_ref());
            self.model_reported = true;
        }
        if let Some(usage) = chunk.usage {
            completion.usage = Some(usage.into_usage());
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Step::Skip;
        };
        if let Some(reason) = choice.finish_reason {
            completion.finish_reason = FinishReason::parse(&reason);
            self.finished = true;
        }
        match choice.delta.and_then(|d| d.content) {
            Some(content) if !content.is_empty() => Step::Token(content.into_owned()),
            _ => Step::Skip,
        }
    }

    /// A body that ends cleanly without `[DONE]` after a `finish_reason`
    /// meant to stop (some servers never send `[DONE]`); without a
    /// `finish_reason` the answer was cut, however cleanly the body ended.
    fn on_end(&self) -> Result<(), String> {
        if self.chunks == 0 {
            Err("ended its stream without sending a single chunk".into())
        } else if !self.finished {
            Err("ended its stream without a finish_reason; the answer is incomplete".into())
        } else {
            Ok(())
        }
    }
}

// === impl WireUsage ===

impl WireUsage {
    fn into_usage(self) -> Usage {
        Usage {
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
        }
    }
}
