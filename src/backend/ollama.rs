//! `kind: ollama`: Ollama's native chat API, `POST {endpoint}/api/chat`.
//!
//! The native API rather than Ollama's OpenAI-compatible one, because only
//! the native API takes `keep_alive` (how long the model stays in GPU
//! memory, which decides whether the next call waits for a load) and reports
//! Ollama's own errors and counters as they are. Sampling parameters go in
//! `options` (`max_tokens` is `num_predict` there). A stream is NDJSON: one
//! object per line, text in `message.content`, and a last line with
//! `done: true` carrying `done_reason` and the token counts. Ollama reports
//! a failure after the stream started as a line `{"error": "..."}`; a stream
//! that ends without its `done` line was cut short and is an error.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::adapter::Adapter;
use super::http::HttpClient;
use super::ndjson::NdjsonDecoder;
use super::wire::{self, Credential, Dialect, HttpUpstream, Step};
use crate::chat::{ChatMessage, ChatRequest, Completion, FinishReason, Usage};
use crate::config::{KeepAlive, UpstreamConfig};
use crate::error::{ErrorKind, GatewayError};

/// An Ollama server (or several serving the same models).
#[derive(Debug)]
pub(crate) struct OllamaBackend {
    /// Where to send, with which headers.
    http: HttpUpstream,
    /// `keep_alive` as Ollama reads it; `None` leaves Ollama's default.
    keep_alive: Option<WireKeepAlive>,
}

/// The request body; borrows everything from the [`ChatRequest`]. Ollama
/// takes the same `{role, content}` messages and role names we use.
#[derive(Serialize)]
pub(crate) struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    /// Always sent: Ollama streams unless told otherwise.
    stream: bool,
    #[serde(skip_serializing_if = "WireOptions::is_empty")]
    options: WireOptions<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a WireKeepAlive>,
}

#[derive(Serialize)]
pub(crate) struct WireOptions<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

/// Ollama reads `keep_alive` as a Go duration string, or a negative number
/// for "never unload".
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum WireKeepAlive {
    Duration(String),
    Forever(i8),
}

/// A whole answer, one streamed line, or an error line: the fields we read
/// of any of them.
#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
    #[serde(default)]
    done: bool,
    #[serde(borrow, default)]
    done_reason: Option<Cow<'a, str>>,
    /// Prompt tokens; Ollama leaves it out when the whole prompt was cached.
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// Reads an NDJSON stream of chat lines.
pub(crate) struct LineStream {
    /// Whether the model name came from the upstream yet.
    model_reported: bool,
}

// === impl OllamaBackend ===

impl OllamaBackend {
    /// Prepares the headers and `keep_alive` of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Self {
        OllamaBackend {
            http: HttpUpstream::new(config, client, "/api/chat", Credential::Bearer, &[]),
            keep_alive: config.keep_alive.map(WireKeepAlive::from),
        }
    }
}

// === impl Adapter for OllamaBackend ===

impl Adapter for OllamaBackend {
    type Body<'a> = WireRequest<'a>;
    /// A streamed answer is NDJSON; a whole JSON answer to a stream request
    /// reads the same way as the non-streamed one.
    type Dialect = LineStream;

    fn http(&self) -> &HttpUpstream {
        &self.http
    }

    fn body<'a>(
        &'a self,
        model: &'a str,
        req: &'a ChatRequest,
    ) -> Result<WireRequest<'a>, GatewayError> {
        Ok(WireRequest {
            model,
            messages: &req.messages,
            stream: req.stream,
            options: WireOptions {
                num_predict: req.params.max_tokens,
                temperature: req.params.temperature,
                top_p: req.params.top_p,
                stop: &req.params.stop,
            },
            keep_alive: self.keep_alive.as_ref(),
        })
    }

    fn dialect(&self) -> LineStream {
        LineStream {
            model_reported: false,
        }
    }

    fn parse_answer(
        &self,
        bytes: &[u8],
        completion: &mut Completion,
    ) -> Result<String, GatewayError> {
        let answer: WireChunk<'_> = self.http.parse(bytes, "a chat response")?;
        if let Some(error) = &answer.error {
            let message = wire::error_message(error);
            return Err(self.http.error(
                error_kind(&message),
                &format!("reported an error: {message}"),
            ));
        }
        if let Some(model) = &answer.model {
            completion.model = Arc::from(model.as_ref());
        }
        answer.finish(completion);
        Ok(answer
            .message
            .and_then(|m| m.content)
            .map(Cow::into_owned)
            .unwrap_or_default())
    }
}

// === impl LineStream ===

impl Dialect for LineStream {
    type Framing = NdjsonDecoder;

    fn on_item(&mut self, line: Bytes, completion: &mut Completion) -> Step {
        let chunk: WireChunk<'_> = match serde_json::from_slice(&line) {
            Ok(chunk) => chunk,
            Err(err) => {
                return Step::Fail(
                    ErrorKind::Unavailable,
                    format!(
                        "sent a line that is not a valid chat response ({err}): {}",
                        wire::quote(&line)
                    ),
                );
            }
        };
        if let Some(error) = &chunk.error {
            let message = wire::error_message(error);
            return Step::Fail(
                error_kind(&message),
                format!("reported an error mid-stream: {message}"),
            );
        }
        if !self.model_reported
            && let Some(model) = &chunk.model
        {
            completion.model = Arc::from(model.as_ref());
            self.model_reported = true;
        }
        if chunk.done {
            chunk.finish(completion);
        }
        let content = chunk
            .message
            .and_then(|m| m.content)
            .filter(|c| !c.is_empty());
        match (content, chunk.done) {
            (Some(text), false) => Step::Token(text.into_owned()),
            (Some(text), true) => Step::Last(text.into_owned()),
            (None, true) => Step::Done,
            (None, false) => Step::Skip,
        }
    }

    /// Every Ollama stream ends with its `done` line; without it the
    /// answer was cut short, however cleanly the body ended.
    fn on_end(&self) -> Result<(), String> {
        Err("ended its stream before its final line (done: true)".into())
    }
}

// === impl WireChunk ===

impl WireChunk<'_> {
    /// Records what the final object reports: why it ended and the counts.
    fn finish(&self, completion: &mut Completion) {
        completion.finish_reason = self.done_reason.as_deref().and_then(FinishReason::parse);
        if self.prompt_eval_count.is_some() || self.eval_count.is_some() {
            completion.usage = Some(Usage {
                input_tokens: self.prompt_eval_count.unwrap_or(0),
                output_tokens: self.eval_count.unwrap_or(0),
            });
        }
    }
}

// === impl WireKeepAlive ===

impl From<KeepAlive> for WireKeepAlive {
    fn from(keep_alive: KeepAlive) -> Self {
        match keep_alive {
            KeepAlive::Forever => WireKeepAlive::Forever(-1),
            KeepAlive::For(d) if d.subsec_nanos() == 0 => {
                WireKeepAlive::Duration(format!("{}s", d.as_secs()))
            }
            KeepAlive::For(d) => WireKeepAlive::Duration(format!("{}ms", d.as_millis())),
        }
    }
}

// === helpers ===

/// The kind of an error Ollama reported without a status to go on (inside
/// a 200 answer or stream). Its errors are bare strings, so the one case
/// a caller must tell apart, a model this server does not have, is known
/// by its words (Ollama says "model 'x' not found").
fn error_kind(message: &str) -> ErrorKind {
    if message.contains("not found") && message.contains("model") {
        ErrorKind::NotFound
    } else {
        ErrorKind::Unavailable
    }
}

impl WireOptions<'_> {
    fn is_empty(&self) -> bool {
        self.num_predict.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.stop.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn keep_alive_is_written_as_ollama_reads_it() {
        let wire = |k| serde_json::to_string(&WireKeepAlive::from(k)).expect("json");
        assert_eq!(wire(KeepAlive::For(Duration::from_secs(600))), r#""600s""#);
        assert_eq!(wire(KeepAlive::For(Duration::ZERO)), r#""0s""#);
        assert_eq!(
            wire(KeepAlive::For(Duration::from_millis(1500))),
            r#""1500ms""#
        );
        assert_eq!(wire(KeepAlive::Forever), "-1");
    }

    #[test]
    fn only_a_missing_model_is_not_found() {
        assert_eq!(
            error_kind("model 'llama9' not found, try pulling it first"),
            ErrorKind::NotFound
        );
        assert_eq!(
            error_kind("an error was encountered while running the model"),
            ErrorKind::Unavailable
        );
    }
}
