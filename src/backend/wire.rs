//! What every HTTP backend does the same way, whatever its wire: send a
//! JSON request with the upstream's headers, turn a failure into a canonical
//! error that keeps the upstream's own message, and turn a streamed body
//! into a [`ChatStream`].
//!
//! The adapters (`openai`, `ollama`, `anthropic`) differ only in the JSON
//! they write and read (see `adapter`); how each reads its stream is a
//! [`Dialect`]: it says what one decoded item means (a token, the end, a
//! failure, nothing).
//! [`UpstreamStream`] does the rest once for all of them: it polls the
//! upstream body in the task serving the call (no task hop per token, and
//! dropping the stream closes the upstream request), hands out every whole
//! item already buffered before reading more, and makes sure a stream that
//! breaks off is reported as an error, never as a complete answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::http::{HttpClient, UpstreamBody};
use super::ndjson::NdjsonDecoder;
use super::sse::{SseDecoder, SseEvent};
use crate::chat::{ChatEvent, ChatRequest, ChatStream, Completion, ToolCallDelta};
use crate::config::UpstreamConfig;
use crate::error::{ErrorKind, GatewayError};
use crate::telemetry::REQUEST_ID;

/// Largest non-streamed answer or error body read from an upstream.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How much of an unreadable error body is quoted back to the caller.
const MAX_QUOTED_ERROR: usize = 512;
/// What replaces a credential an upstream echoed back in its message.
const REDACTED: &str = "***";

/// The HTTP side of one upstream: where to send, with which headers.
#[derive(Debug)]
pub(crate) struct HttpUpstream {
    /// The upstream's name, for error messages.
    name: Arc<str>,
    /// The shared pooled client.
    client: HttpClient,
    /// The API path under each endpoint's base URL.
    path: &'static str,
    /// Sent with every request: the credential, the wire's own headers and
    /// the operator's `headers:`. Credentials are marked sensitive, so hyper
    /// never indexes them in HPACK tables and `Debug` never prints them.
    headers: HeaderMap,
    /// Credential values, cut out of anything the upstream says back: some
    /// providers quote the key they refused, and an error message travels
    /// to callers and logs. Shared, so a call's stream takes it without a
    /// copy.
    secrets: Arc<[String]>,
}

/// How an upstream expects its key.
pub(crate) enum Credential {
    /// `Authorization: Bearer <key>` (OpenAI, and Ollama behind a proxy).
    Bearer,
    /// The key as the whole value of this header (Anthropic's `x-api-key`).
    Header(HeaderName),
}

/// A successful answer's body, and whether it is a stream to decode as it
/// comes or a whole JSON document.
struct Answer {
    /// The body, not yet read.
    body: UpstreamBody,
    /// The upstream answered with JSON: read it whole even if a stream was
    /// asked for (servers that ignore `stream: true`, or report an error as
    /// a 200 JSON body, do this).
    json: bool,
}

/// A whole (not streamed) answer: its text and the tool calls it made,
/// each as one piece with its id, name and all its arguments.
#[derive(Debug, Default)]
pub(crate) struct Answered {
    /// The answer's text (may be empty when it only called tools).
    pub(crate) text: String,
    /// Its tool calls, indexed 0, 1, ...
    pub(crate) tool_calls: Vec<ToolCallDelta>,
}

/// How a stream's bytes are cut into items: SSE events or NDJSON lines.
pub(crate) trait Framing: Default + Send + Unpin + 'static {
    /// The content type a streamed answer in this framing has (sent as
    /// `Accept`).
    const CONTENT_TYPE: &'static str;
    /// One whole item.
    type Item;
    /// Appends bytes as they came off the wire.
    fn push(&mut self, bytes: &[u8]);
    /// The next whole item, or `None` until more bytes arrive.
    fn next_item(&mut self) -> Result<Option<Self::Item>, String>;
    /// The body ended: the last item, if the framing lets one end without
    /// its terminator. Called until it returns `None`.
    fn finish(&mut self) -> Result<Option<Self::Item>, String> {
        Ok(None)
    }
}

/// What one item of a stream means for the call.
pub(crate) enum Step {
    /// Nothing to forward (a keep-alive, metadata, an unknown event type).
    Skip,
    /// A piece of generated text.
    Token(String),
    /// A piece of text that is also the end (Ollama's final line may carry
    /// both).
    Last(String),
    /// Several events from one item: text and pieces of tool calls (an
    /// OpenAI chunk may carry several calls' pieces; an Ollama line, whole
    /// calls). `last` when the item also ended the answer.
    Many(Vec<ChatEvent>, bool),
    /// Generation finished; what was reported is in the completion.
    Done,
    /// The upstream failed; `what` completes "upstream 'x' ...".
    Fail(ErrorKind, String),
}

/// An upstream's streaming wire: what its items mean.
pub(crate) trait Dialect: Send + Unpin + 'static {
    /// How its bytes are framed.
    type Framing: Framing;
    /// Applies one item, recording finish reason, usage and model into
    /// `completion` as they are reported.
    fn on_item(
        &mut self,
        item: <Self::Framing as Framing>::Item,
        completion: &mut Completion,
    ) -> Step;
    /// The body ended cleanly before the wire's final item: `Ok` when what
    /// was reported shows the answer is whole, otherwise the complaint
    /// ("ended its stream before ...").
    fn on_end(&self) -> Result<(), String>;
}

/// The token stream of one streamed call, whatever the wire.
pub(crate) struct UpstreamStream<D: Dialect> {
    /// The upstream's response body, polled in the caller's task.
    body: UpstreamBody,
    /// The body has ended; only buffered items remain.
    body_done: bool,
    /// Cuts bytes into items.
    framing: D::Framing,
    /// Reads the items.
    dialect: D,
    /// What the final event will report, filled in as items arrive.
    completion: Completion,
    /// Events of a `Many` item not yet handed out.
    queued: VecDeque<ChatEvent>,
    /// A `Last` token went out; `Done` follows on the next poll.
    done_next: bool,
    /// Tokens forwarded so far, for error messages.
    tokens: u64,
    /// The upstream's name, for error messages.
    upstream: Arc<str>,
    /// Credentials to cut out of error messages.
    secrets: Arc<[String]>,
    /// The stream has ended (with `Done` or an error).
    finished: bool,
}

// === impl HttpUpstream ===

impl HttpUpstream {
    /// Prepares the headers of `config`. `path` is the API path under each
    /// base URL (`/v1/chat/completions`). `wire_headers` are the wire's own
    /// (such as `anthropic-version`); the operator's `headers:` override
    /// them.
    pub(crate) fn new(
        config: &UpstreamConfig,
        client: HttpClient,
        path: &'static str,
        credential: Credential,
        wire_headers: &[(HeaderName, &'static str)],
    ) -> Self {
        let mut headers = HeaderMap::new();
        for (name, value) in wire_headers {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
        let mut secrets = Vec::new();
        if let Some(key) = &config.api_key {
            let (name, value) = match credential {
                Credential::Bearer => (
                    http::header::AUTHORIZATION,
                    HeaderValue::try_from(format!("Bearer {}", key.expose())),
                ),
                Credential::Header(name) => (name, HeaderValue::try_from(key.expose())),
            };
            if let Ok(mut value) = value {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            secrets.push(key.expose().to_string());
        }
        for (name, value) in &config.headers {
            if value.is_sensitive()
                && let Ok(text) = value.to_str()
            {
                secrets.push(text.to_string());
            }
            headers.insert(name.clone(), value.clone());
        }
        // A short value could occur in any message by chance; only cut out
        // what can only be the credential.
        secrets.retain(|s| s.len() >= 6);
        HttpUpstream {
            name: Arc::from(config.name.as_str()),
            client,
            path,
            headers,
            secrets: secrets.into(),
        }
    }

    /// The request URL at the endpoint with base URL `base`; a base that
    /// already ends with the path's first segment
    /// (`https://api.openai.com/v1`) is accepted as is.
    pub(crate) fn target(&self, base: &Uri) -> Option<Uri> {
        endpoint_url(base, self.path)
    }

    /// The URL of another API of the same upstream (`path` under `base`),
    /// such as its embeddings.
    pub(crate) fn target_at(&self, base: &Uri, path: &str) -> Option<Uri> {
        endpoint_url(base, path)
    }

    /// POSTs `body` (JSON) for `req` to `url` and reads the whole JSON
    /// answer: the unary exchange of an API that never streams
    /// (embeddings), with the same headers and error mapping as a chat.
    pub(crate) async fn fetch(
        &self,
        url: &Uri,
        body: Vec<u8>,
        req: &ChatRequest,
    ) -> Result<Bytes, GatewayError> {
        let answer = self.post(url, body, req, "application/json").await?;
        read_body(answer.body).await.map_err(|err| {
            self.error(
                ErrorKind::Unavailable,
                &format!("broke off its answer: {err}"),
            )
        })
    }

    /// The upstream's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Sends `body` (JSON) for `req` and answers with its tokens. A
    /// streamed answer is decoded by `dialect` as it arrives; a whole one,
    /// asked for or sent as JSON by a server that ignored `stream: true`, is
    /// read and handed to `whole`, which returns its text and fills in the
    /// completion.
    pub(crate) async fn exchange<D: Dialect>(
        &self,
        url: &Uri,
        body: Vec<u8>,
        req: &ChatRequest,
        model: Arc<str>,
        dialect: D,
        whole: impl FnOnce(&[u8], &mut Completion) -> Result<Answered, GatewayError>,
    ) -> Result<ChatStream, GatewayError> {
        let accept = <D::Framing as Framing>::CONTENT_TYPE;
        let answer = self.post(url, body, req, accept).await?;
        let mut completion = Completion {
            finish_reason: None,
            usage: None,
            model,
            logprobs: None,
            embeddings: None,
        };
        if req.stream && !answer.json {
            return Ok(Box::pin(UpstreamStream {
                body: answer.body,
                body_done: false,
                framing: D::Framing::default(),
                dialect,
                completion,
                queued: VecDeque::new(),
                done_next: false,
                tokens: 0,
                upstream: self.name.clone(),
                secrets: self.secrets.clone(),
                finished: false,
            }));
        }
        let bytes = read_body(answer.body).await.map_err(|err| {
            self.error(
                ErrorKind::Unavailable,
                &format!("broke off its answer: {err}"),
            )
        })?;
        let answered = whole(&bytes, &mut completion)?;
        let mut events = Vec::with_capacity(answered.tool_calls.len() + 2);
        if !answered.text.is_empty() || answered.tool_calls.is_empty() {
            events.push(Ok(ChatEvent::Token(answered.text)));
        }
        events.extend(
            answered
                .tool_calls
                .into_iter()
                .map(|call| Ok(ChatEvent::ToolCall(call))),
        );
        events.push(Ok(ChatEvent::Done(completion)));
        Ok(Box::pin(futures_util::stream::iter(events)))
    }

    /// POSTs `body` (JSON) to `url`. A non-2xx answer becomes the canonical
    /// error for its status, with the upstream's message and its
    /// `Retry-After`. `accept` is the content type of a streamed answer.
    async fn post(
        &self,
        url: &Uri,
        body: Vec<u8>,
        req: &ChatRequest,
        accept: &'static str,
    ) -> Result<Answer, GatewayError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                ACCEPT,
                if req.stream {
                    accept
                } else {
                    "application/json"
                },
            )
            // The upstream's logs can then be matched with ours.
            .header(REQUEST_ID, req.call.request_id().as_str());
        if let Some(headers) = request.headers_mut() {
            headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| GatewayError::new(ErrorKind::Internal, err.to_string()))?;
        let response = self.client.request(request).await.map_err(|err| {
            let cause = error_chain(&err);
            // The endpoint's address is for operators, not callers.
            tracing::debug!(upstream = %self.name, endpoint = %url, %cause, "endpoint unreachable");
            self.error(
                ErrorKind::Unavailable,
                &format!("cannot be reached: {cause}"),
            )
            .in_transport()
        })?;
        let status = response.status();
        let json = is_json(response.headers());
        let retry_after = retry_after(response.headers());
        let body = response.into_body();
        if !status.is_success() {
            let err = self.status_error(status, body).await;
            return Err(match retry_after {
                Some(wait) => err.with_retry_after(wait),
                None => err,
            });
        }
        Ok(Answer { body, json })
    }

    /// A whole JSON answer as `T`; `what` names what it should have been
    /// ("a chat completion") in the error when it is not.
    pub(crate) fn parse<'a, T: Deserialize<'a>>(
        &self,
        bytes: &'a [u8],
        what: &str,
    ) -> Result<T, GatewayError> {
        serde_json::from_slice(bytes).map_err(|err| {
            self.error(
                ErrorKind::Unavailable,
                &format!("answered with JSON that is not {what}: {err}"),
            )
        })
    }

    /// An error about this upstream: "upstream 'name' {what}", with any
    /// credential the upstream echoed cut out.
    pub(crate) fn error(&self, kind: ErrorKind, what: &str) -> GatewayError {
        let message = format!("upstream '{}' {what}", self.name);
        GatewayError::new(kind, redact(message, &self.secrets))
    }

    /// Turns a non-2xx answer into the matching canonical error, keeping the
    /// upstream's own message.
    async fn status_error(&self, status: StatusCode, body: UpstreamBody) -> GatewayError {
        let detail = match read_body(body).await {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(json) => error_message(&json),
                Err(_) => quote(&bytes),
            },
            Err(err) => format!("(body unreadable: {err})"),
        };
        let kind = ErrorKind::from_upstream_status(status);
        let err = self.error(kind, &format!("answered {status}: {detail}{}", hint(kind)));
        if kind == ErrorKind::InvalidArgument && mentions_context_length(&detail) {
            err.with_context_length_exceeded()
        } else {
            err
        }
    }
}

// === impl UpstreamStream ===

impl<D: Dialect> UpstreamStream<D> {
    /// Applies one item: `Some` when it produces something to forward.
    fn apply(
        &mut self,
        item: <D::Framing as Framing>::Item,
    ) -> Option<Result<ChatEvent, GatewayError>> {
        match self.dialect.on_item(item, &mut self.completion) {
            Step::Skip => None,
            Step::Token(text) => {
                self.tokens += 1;
                Some(Ok(ChatEvent::Token(text)))
            }
            Step::Last(text) => {
                self.tokens += 1;
                self.done_next = true;
                Some(Ok(ChatEvent::Token(text)))
            }
            Step::Many(events, last) => {
                self.tokens += events.len() as u64;
                self.queued.extend(events);
                self.done_next |= last;
                match self.queued.pop_front() {
                    Some(event) => Some(Ok(event)),
                    None if last => Some(Ok(self.finish())),
                    None => None,
                }
            }
            Step::Done => Some(Ok(self.finish())),
            Step::Fail(kind, what) => Some(Err(self.fail(kind, &what))),
        }
    }

    fn finish(&mut self) -> ChatEvent {
        self.finished = true;
        ChatEvent::Done(std::mem::take(&mut self.completion))
    }

    fn fail(&mut self, kind: ErrorKind, what: &str) -> GatewayError {
        self.finished = true;
        let message = format!(
            "upstream '{}' {what} after {} tokens; the answer is incomplete",
            self.upstream, self.tokens
        );
        GatewayError::new(kind, redact(message, &self.secrets))
    }

    /// The body ended and every item is used up.
    fn end(&mut self) -> Result<ChatEvent, GatewayError> {
        match self.dialect.on_end() {
            Ok(()) => Ok(self.finish()),
            Err(what) => Err(self.fail(ErrorKind::Unavailable, &what)),
        }
    }
}

impl<D: Dialect> Stream for UpstreamStream<D> {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let event = ready!(this.poll_event(cx));
        if let Some(Ok(ChatEvent::Done(_))) = &event {
            this.read_to_end(cx);
        }
        Poll::Ready(event)
    }
}

impl<D: Dialect> UpstreamStream<D> {
    /// Reads what is left of a finished answer's body when it has already
    /// arrived (the end of the chunked body after `[DONE]`), so the
    /// connection can serve another call instead of being closed. Never
    /// waits: what has not arrived yet is read after the stream is gone
    /// (see [`UpstreamBody::finish_later`]).
    fn read_to_end(&mut self, cx: &mut Context<'_>) {
        // A finished answer is followed by its body's end, at most a few
        // frames of trailing keep-alives away.
        for _ in 0..4 {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None) => {
                    self.body_done = true;
                    return;
                }
                Poll::Ready(Some(Err(_))) => return,
                Poll::Pending => break,
            }
        }
        self.body.finish_later();
    }

    /// The next event: the stream's logic, over items as they arrive.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ChatEvent, GatewayError>>> {
        let this = self;
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(event) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if this.done_next {
                return Poll::Ready(Some(Ok(this.finish())));
            }
            // Hand out every whole item already buffered before reading
            // more, so tokens that arrived together leave together.
            let next = if this.body_done {
                this.framing.finish()
            } else {
                this.framing.next_item()
            };
            match next {
                Ok(Some(item)) => match this.apply(item) {
                    Some(out) => return Poll::Ready(Some(out)),
                    None => continue,
                },
                Ok(None) if this.body_done => return Poll::Ready(Some(this.end())),
                Ok(None) => {}
                Err(err) => {
                    let err = this.fail(
                        ErrorKind::Unavailable,
                        &format!("sent a broken stream ({err})"),
                    );
                    return Poll::Ready(Some(Err(err)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.framing.push(&data);
                    }
                }
                Some(Err(err)) => {
                    let err = this
                        .fail(
                            ErrorKind::Unavailable,
                            &format!("broke the connection ({})", error_chain(&err)),
                        )
                        .in_transport();
                    return Poll::Ready(Some(Err(err)));
                }
                None => this.body_done = true,
            }
        }
    }
}

// === impl Framing ===

impl Framing for SseDecoder {
    const CONTENT_TYPE: &'static str = "text/event-stream";
    type Item = SseEvent;

    fn push(&mut self, bytes: &[u8]) {
        SseDecoder::push(self, bytes);
    }

    /// At the end of the body nothing more comes out: an event without its
    /// closing blank line was never dispatched, as the SSE rules say, and
    /// the dialect decides whether the stream was whole.
    fn next_item(&mut self) -> Result<Option<SseEvent>, String> {
        self.next_event().map_err(|err| err.to_string())
    }
}

impl Framing for NdjsonDecoder {
    const CONTENT_TYPE: &'static str = "application/x-ndjson";
    type Item = Bytes;

    fn push(&mut self, bytes: &[u8]) {
        NdjsonDecoder::push(self, bytes);
    }

    fn next_item(&mut self) -> Result<Option<Bytes>, String> {
        self.next_line().map_err(|err| err.to_string())
    }

    /// A last line without its newline is still a line: the body's end
    /// terminates it.
    fn finish(&mut self) -> Result<Option<Bytes>, String> {
        NdjsonDecoder::finish(self).map_err(|err| err.to_string())
    }
}

// === helpers ===

/// `{base}{path}`, accepting a base that already ends with the path's first
/// segment: `http://h:8000` and `https://api.openai.com/v1` both give
/// `.../v1/chat/completions`.
fn endpoint_url(base: &Uri, path: &str) -> Option<Uri> {
    let base = base.to_string();
    let base = base.trim_end_matches('/');
    let first_segment = path
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '/')
        .map_or(path, |(i, _)| &path[..i]);
    let url = match base.strip_suffix(first_segment) {
        Some(trimmed) => format!("{trimmed}{path}"),
        None => format!("{base}{path}"),
    };
    url.parse().ok()
}

/// The longest `Retry-After` taken from an upstream. The value comes from
/// outside: an hour is already more than any caller will wait, and a
/// bound keeps every deadline computed from it finite.
const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// The upstream's `Retry-After` in seconds (the HTTP-date form is rare from
/// inference servers and not worth a date parser), at most
/// [`MAX_RETRY_AFTER_SECS`].
fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    let seconds: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(
        seconds.min(MAX_RETRY_AFTER_SECS),
    ))
}

/// Whether an upstream's 400 says the prompt exceeds the context window, in
/// the words vLLM, OpenAI and Anthropic use.
fn mentions_context_length(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "maximum context",
        "prompt is too long",
    ]
    .iter()
    .any(|phrase| detail.contains(phrase))
}

/// The advice added to an error of `kind`.
fn hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ResourceExhausted => "; retry with back-off",
        ErrorKind::Unavailable => "; the upstream is failing, retry later",
        _ => "",
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

async fn read_body(body: UpstreamBody) -> Result<Bytes, String> {
    Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|err| err.to_string())
}

/// The human message inside an upstream's error JSON, in any of the shapes
/// servers use: `{"error": {"message": ..}}` (OpenAI, Anthropic),
/// `{"error": ".."}` (Ollama), `{"message": ..}` (vLLM), or the JSON itself.
pub(crate) fn error_message(json: &serde_json::Value) -> String {
    let error = json.get("error").unwrap_or(json);
    error
        .get("message")
        .and_then(|m| m.as_str())
        .or_else(|| error.as_str())
        .or_else(|| json.get("message").and_then(|m| m.as_str()))
        .map_or_else(|| quote(json.to_string().as_bytes()), str::to_string)
}

/// At most [`MAX_QUOTED_ERROR`] bytes of `bytes`, lossily as text.
pub(crate) fn quote(bytes: &[u8]) -> String {
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

/// `message` with every secret replaced by [`REDACTED`].
fn redact(message: String, secrets: &[String]) -> String {
    secrets.iter().fold(message, |message, secret| {
        if message.contains(secret.as_str()) {
            message.replace(secret.as_str(), REDACTED)
        } else {
            message
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_url_accepts_bases_with_and_without_the_api_prefix() {
        let url = |base: &str, path: &str| {
            endpoint_url(&base.parse().expect("uri"), path).map(|u| u.to_string())
        };
        assert_eq!(
            url("http://10.0.0.5:8000", "/v1/chat/completions").as_deref(),
            Some("http://10.0.0.5:8000/v1/chat/completions")
        );
        assert_eq!(
            url("https://api.openai.com/v1/", "/v1/chat/completions").as_deref(),
            Some("https://api.openai.com/v1/chat/completions")
        );
        assert_eq!(
            url("https://api.anthropic.com", "/v1/messages").as_deref(),
            Some("https://api.anthropic.com/v1/messages")
        );
        assert_eq!(
            url("http://gpu-box:11434/api", "/api/chat").as_deref(),
            Some("http://gpu-box:11434/api/chat")
        );
        assert_eq!(
            url("http://gpu-box:11434", "/api/chat").as_deref(),
            Some("http://gpu-box:11434/api/chat")
        );
    }

    #[test]
    fn error_message_reads_every_common_shape() {
        let msg = |s: &str| error_message(&serde_json::from_str(s).expect("json"));
        assert_eq!(msg(r#"{"error":{"message":"slow down"}}"#), "slow down");
        assert_eq!(msg(r#"{"error":"model not found"}"#), "model not found");
        assert_eq!(msg(r#"{"object":"error","message":"bad"}"#), "bad");
        assert_eq!(
            msg(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            "Overloaded"
        );
    }

    #[test]
    fn redact_cuts_out_every_occurrence_of_each_secret() {
        let secrets = ["sk-abc-123".to_string(), "tok-xyz-9".to_string()];
        assert_eq!(
            redact(
                "bad key sk-abc-123 (sk-abc-123), tok-xyz-9".into(),
                &secrets
            ),
            "bad key *** (***), ***"
        );
        assert_eq!(redact("nothing here".into(), &secrets), "nothing here");
    }
}
