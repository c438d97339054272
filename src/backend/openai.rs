//! `kind: openai`: OpenAI's chat completions API, as vLLM, OpenAI and other
//! compatible servers speak it.
//!
//! A streaming call asks for SSE with usage on the final chunk and forwards
//! each `delta.content` as a token the moment it is decoded; the upstream
//! body is polled by the task serving the call, so dropping the stream (the
//! caller left, a deadline passed) closes the upstream request at once.
//! Every way the upstream can fail maps to a canonical error that keeps the
//! upstream's own message.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::http::HttpClient;
use super::sse::SseDecoder;
use crate::balance::RoundRobin;
use crate::chat::{
    ChatEvent, ChatMessage, ChatRequest, ChatStream, Completion, FinishReason, Usage,
};
use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::REQUEST_ID;

/// Largest non-streamed answer or error body read from an upstream.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How much of an unreadable error body is quoted back to the caller.
const MAX_QUOTED_ERROR: usize = 512;

/// An OpenAI-compatible upstream: where to send, and with which key.
#[derive(Debug)]
pub(crate) struct OpenAiBackend {
    /// The upstream's name, for error messages.
    name: Arc<str>,
    /// The shared pooled client.
    client: HttpClient,
    /// Each endpoint's `/v1/chat/completions`, with its label.
    endpoints: RoundRobin<Endpoint>,
    /// `Bearer <key>`, marked sensitive so it is never logged.
    authorization: Option<HeaderValue>,
}

/// One server of the upstream.
#[derive(Debug)]
struct Endpoint {
    /// Where chat completions are posted.
    url: Uri,
    /// The base URL as the routing file wrote it, computed once: calls
    /// report it as their endpoint in metrics and logs.
    label: Arc<str>,
}

/// The request body; borrows everything from the [`ChatRequest`].
#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
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

/// The token stream of one streamed call.
struct SseChatStream {
    /// The upstream's response body, polled in the caller's task.
    body: Incoming,
    /// SSE framing state.
    decoder: SseDecoder,
    /// What the final event will report, filled in as chunks arrive.
    completion: Completion,
    /// Whether the model name came from the upstream yet.
    model_reported: bool,
    /// Chunks decoded so far: a stream that ends having sent none did not
    /// answer at all.
    chunks: u64,
    /// Tokens forwarded so far, for error messages.
    tokens: u64,
    /// The upstream's name, for error messages.
    upstream: Arc<str>,
    /// The stream has ended (with `Done` or an error).
    finished: bool,
}

// === impl OpenAiBackend ===

impl OpenAiBackend {
    /// Prepares the endpoints and credentials of `config`.
    pub(crate) fn new(config: &UpstreamConfig, client: HttpClient) -> Option<Self> {
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|base| {
                Some(Endpoint {
                    url: chat_url(base)?,
                    label: Arc::from(base.to_string().trim_end_matches('/')),
                })
            })
            .collect();
        let authorization = config.api_key.as_ref().and_then(|key| {
            let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        Some(OpenAiBackend {
            name: Arc::from(config.name.as_str()),
            client,
            endpoints: RoundRobin::new(endpoints)?,
            authorization,
        })
    }

    /// Sends `req` for `model` to the next endpoint and returns its tokens.
    pub(crate) async fn call(
        &self,
        model: Arc<str>,
        req: &ChatRequest,
    ) -> Result<ChatStream, GatewayError> {
        let endpoint = self.endpoints.pick();
        let url = &endpoint.url;
        req.call.place_endpoint(endpoint.label.clone());
        let body = WireRequest {
            model: &model,
            messages: &req.messages,
            max_tokens: req.params.max_tokens,
            temperature: req.params.temperature,
            top_p: req.params.top_p,
            stop: &req.params.stop,
            stream: req.stream,
            stream_options: req.stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let body = serde_json::to_vec(&body).map_err(|err| {
            GatewayError::new(ErrorKind::Internal, format!("encoding the request: {err}"))
        })?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if req.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            );
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        // So the upstream's own logs can be matched with ours. The id was
        // checked to be header-safe when the call came in.
        if let Ok(id) = HeaderValue::from_str(req.call.request_id().as_str()) {
            request = request.header(REQUEST_ID, id);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| GatewayError::new(ErrorKind::Internal, err.to_string()))?;
        let response = self.client.request(request).await.map_err(|err| {
            GatewayError::unavailable(format!(
                "upstream '{}' at {url} cannot be reached: {}",
                self.name,
                error_chain(&err)
            ))
        })?;
        let status = response.status();
        // A server that ignored `stream: true` (or reports an error as a
        // 200 JSON body) answers with JSON; read it whole either way.
        let sse = req.stream && !is_json(response.headers());
        let body = response.into_body();
        if !status.is_success() {
            return Err(self.status_error(status, body).await);
        }
        let completion = Completion {
            finish_reason: None,
            usage: None,
            model,
        };
        if sse {
            return Ok(Box::pin(SseChatStream {
                body,
                decoder: SseDecoder::new(),
                completion,
                model_reported: false,
                chunks: 0,
                tokens: 0,
                upstream: self.name.clone(),
                finished: false,
            }));
        }
        let bytes = read_body(body).await.map_err(|err| {
            GatewayError::unavailable(format!(
                "upstream '{}' broke off its answer: {err}",
                self.name
            ))
        })?;
        let (text, completion) = self.parse_answer(&bytes, completion)?;
        let events = [Ok(ChatEvent::Token(text)), Ok(ChatEvent::Done(completion))];
        Ok(Box::pin(futures_util::stream::iter(events)))
    }

    /// Reads a non-streamed answer.
    fn parse_answer(
        &self,
        bytes: &[u8],
        mut completion: Completion,
    ) -> Result<(String, Completion), GatewayError> {
        let answer: WireResponse<'_> = serde_json::from_slice(bytes).map_err(|err| {
            GatewayError::unavailable(format!(
                "upstream '{}' answered with JSON that is not a chat completion: {err}",
                self.name
            ))
        })?;
        if let Some(error) = answer.error {
            return Err(GatewayError::unavailable(format!(
                "upstream '{}' reported an error: {}",
                self.name,
                error_message(&error)
            )));
        }
        let Some(choice) = answer.choices.into_iter().next() else {
            return Err(GatewayError::unavailable(format!(
                "upstream '{}' answered with no choices",
                self.name
            )));
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
        Ok((text, completion))
    }

    /// Turns a non-2xx answer into the matching canonical error, keeping the
    /// upstream's own message.
    async fn status_error(&self, status: http::StatusCode, body: Incoming) -> GatewayError {
        let detail = match read_body(body).await {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(json) => error_message(&json),
                Err(_) => quote(&bytes),
            },
            Err(err) => format!("(body unreadable: {err})"),
        };
        let kind = ErrorKind::from_upstream_status(status);
        let hint = match kind {
            ErrorKind::ResourceExhausted => "; retry with back-off",
            ErrorKind::Unavailable => "; the upstream is failing, retry later",
            _ => "",
        };
        GatewayError::new(
            kind,
            format!("upstream '{}' answered {status}: {detail}{hint}", self.name),
        )
    }
}

// === impl SseChatStream ===

impl SseChatStream {
    /// Applies one SSE event: `Some` when it produces something to forward.
    fn on_event(&mut self, data: &str) -> Option<Result<ChatEvent, GatewayError>> {
        if data == "[DONE]" {
            return Some(Ok(self.finish()));
        }
        let chunk: WireResponse<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(err) => {
                return Some(Err(self.fail(format!(
                    "sent an event that is not a valid chunk ({err}): {}",
                    quote(data.as_bytes())
                ))));
            }
        };
        if let Some(error) = chunk.error {
            let message = format!("reported an error mid-stream: {}", error_message(&error));
            return Some(Err(self.fail(message)));
        }
        self.chunks += 1;
        if !self.model_reported
            && let Some(model) = chunk.model
        {
            self.completion.model = Arc::from(model.as_ref());
            self.model_reported = true;
        }
        if let Some(usage) = chunk.usage {
            self.completion.usage = Some(usage.into_usage());
        }
        let choice = chunk.choices.into_iter().next()?;
        if let Some(reason) = choice.finish_reason {
            self.completion.finish_reason = FinishReason::parse(&reason);
        }
        let content = choice.delta.and_then(|d| d.content)?;
        if content.is_empty() {
            return None;
        }
        self.tokens += 1;
        Some(Ok(ChatEvent::Token(content.into_owned())))
    }

    fn finish(&mut self) -> ChatEvent {
        self.finished = true;
        ChatEvent::Done(std::mem::take(&mut self.completion))
    }

    fn fail(&mut self, what: String) -> GatewayError {
        self.finished = true;
        GatewayError::unavailable(format!(
            "upstream '{}' {what} after {} tokens; the answer is incomplete",
            self.upstream, self.tokens
        ))
    }
}

impl Stream for SseChatStream {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            // Hand out every whole event already buffered before reading
            // more, so chunks that arrived together leave together.
            match this.decoder.next_event() {
                Ok(Some(event)) => match this.on_event(&event.data) {
                    Some(item) => return Poll::Ready(Some(item)),
                    None => continue,
                },
                Ok(None) => {}
                Err(err) => {
                    let err = this.fail(format!("sent a broken event stream ({err})"));
                    return Poll::Ready(Some(Err(err)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.decoder.push(&data);
                    }
                }
                Some(Err(err)) => {
                    let err = this.fail(format!("broke the connection ({})", error_chain(&err)));
                    return Poll::Ready(Some(Err(err)));
                }
                None if this.chunks == 0 => {
                    let err = this.fail("ended its stream without sending a single chunk".into());
                    return Poll::Ready(Some(Err(err)));
                }
                // The upstream ended its body cleanly without `[DONE]`: it
                // meant to stop, so report what it said.
                None => return Poll::Ready(Some(Ok(this.finish()))),
            }
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

// === helpers ===

/// `{base}/v1/chat/completions`, accepting a base that already ends in `/v1`.
fn chat_url(base: &Uri) -> Option<Uri> {
    let base = base.to_string();
    let base = base.trim_end_matches('/');
    let url = if base.ends_with("/v1") {
        format!("{base}/chat/completions")
    } else {
        format!("{base}/v1/chat/completions")
    };
    url.parse().ok()
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

async fn read_body(body: Incoming) -> Result<Bytes, String> {
    Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| err.to_string())
}

/// The human message inside an upstream's error JSON, in any of the shapes
/// servers use: `{"error": {"message": ..}}`, `{"error": ".."}`,
/// `{"message": ..}` (vLLM), or the JSON itself.
fn error_message(json: &serde_json::Value) -> String {
    let error = json.get("error").unwrap_or(json);
    error
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .or_else(|| json.get("message").and_then(|m| m.as_str()))
        .map_or_else(|| quote(json.to_string().as_bytes()), str::to_string)
}

/// At most [`MAX_QUOTED_ERROR`] bytes of `bytes`, lossily as text.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_QUOTED_ERROR)]);
    if bytes.len() > MAX_QUOTED_ERROR {
        format!("{text}…")
    } else {
        text.into_owned()
    }
}

/// An error and its causes on one line ("connection refused" lives deep in
/// hyper's chain).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_url_accepts_bases_with_and_without_v1() {
        let url = |s: &str| chat_url(&s.parse().expect("uri")).map(|u| u.to_string());
        assert_eq!(
            url("http://10.0.0.5:8000").as_deref(),
            Some("http://10.0.0.5:8000/v1/chat/completions")
        );
        assert_eq!(
            url("https://api.openai.com/v1/").as_deref(),
            Some("https://api.openai.com/v1/chat/completions")
        );
    }

    #[test]
    fn error_message_reads_every_common_shape() {
        let msg = |s: &str| error_message(&serde_json::from_str(s).expect("json"));
        assert_eq!(msg(r#"{"error":{"message":"slow down"}}"#), "slow down");
        assert_eq!(msg(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(msg(r#"{"object":"error","message":"bad"}"#), "bad");
    }
}
