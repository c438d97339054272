//! The OpenAI-compatible HTTP front end: `POST /v1/chat/completions` (one
//! JSON answer, or server-sent events) and `GET /v1/models`.
//!
//! Most application code already speaks OpenAI's API through an SDK; this
//! front lets it call the gateway unchanged, through the same
//! [`ChatService`] as gRPC, so both fronts share one routing table, one set
//! of limits and one retry policy. Like the gRPC front it only translates:
//! wire → [`ChatRequest`], [`ChatStream`] → wire, and every
//! [`GatewayError`] → an HTTP status and OpenAI's error body in one place
//! ([`error_response`]).
//!
//! A stream's body polls the upstream's token stream directly in the task
//! that writes the response: each token leaves as soon as it arrives (hyper
//! flushes whenever the body has nothing more ready, and connections run
//! with TCP_NODELAY), and when the client goes away hyper drops the body
//! and with it the upstream request. Errors before the first token get a
//! real status (the router waits for the first event before answering);
//! an error after it ends the stream with an error event and never with
//! `data: [DONE]`, so no client mistakes a cut answer for a whole one.
//!
//! A caller bounds the call with `x-request-timeout` (seconds, `2.5`, or a
//! duration, `500ms`), held like `grpc-timeout`: 504 when it passes, and
//! the upstream request dropped.

mod wire;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde::Serialize;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_http::cors::CorsLayer;

use crate::chat::{
    CallContext, Caller, ChatEvent, ChatMessage, ChatRequest, ChatStream, Completion, RequestId,
    Role,
};
use crate::chat::{FinishReason, SamplingParams};
use crate::error::{ErrorKind, GatewayError};
use crate::frontend::grpc::answer_by;
use crate::route::SharedTable;
use crate::stack::ChatService;
use crate::stack::guard::SharedGuard;
use crate::telemetry::REQUEST_ID;
use wire::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Choice,
    ChunkChoice, Content, Delta, ErrorBody, ErrorDetail, ModelEntry, ModelList, Stop, WireUsage,
};

/// The header that bounds a call: seconds (`30`, `2.5`) or a duration
/// (`500ms`, `2m`). HTTP has no standard deadline header and the OpenAI
/// SDKs keep their timeout to themselves, so the gateway names its own.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout";

/// The largest request body taken: the cap tonic puts on a gRPC message,
/// so both fronts accept the same prompts.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The HTTP front end's state, shared by its handlers.
pub struct HttpFrontend {
    /// The call path behind the front end (the same one gRPC uses).
    stack: ChatService,
    /// The live table, for `/v1/models`.
    table: SharedTable,
    /// Keys and their models, for `/v1/models` (calls are checked by the
    /// stack's auth layer like gRPC's).
    guard: SharedGuard,
    /// When the front started (Unix seconds): the `created` of every listed
    /// model, since routes have no creation time of their own.
    started: u64,
}

/// What every chunk of one streamed answer repeats.
struct CallInfo {
    /// `chatcmpl-...`, one per call.
    id: String,
    /// Unix seconds when the call started.
    created: u64,
    /// The model named in chunks: the one asked for until the upstream
    /// says which served the call.
    model: String,
    /// Whether the caller asked for a usage chunk.
    include_usage: bool,
}

/// A [`ChatStream`] as server-sent events in OpenAI's chunk format. Like
/// the gRPC front's stream, it insists on a final `Done`: a stream that
/// stops without one ends with an error event instead of `[DONE]`.
struct SseChunks {
    /// The tokens; `None` once the answer ended either way.
    inner: Option<ChatStream>,
    /// What each chunk repeats.
    call: CallInfo,
    /// Whether the first chunk (which carries the role) is still to go.
    first: bool,
}

/// Builds the HTTP front's router over `stack`, listing models from
/// `table`, with `cors` in front when browsers may call.
pub fn router(
    stack: ChatService,
    table: SharedTable,
    guard: SharedGuard,
    cors: Option<CorsLayer>,
) -> Router {
    let front = Arc::new(HttpFrontend {
        stack,
        table,
        guard,
        started: unix_now(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(front);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

// === handlers ===

async fn chat_completions(
    State(front): State<Arc<HttpFrontend>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let message = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "the request body is larger than {} MiB; send a shorter conversation",
                    MAX_REQUEST_BYTES / (1024 * 1024)
                )
            } else {
                format!(
                    "the request body could not be read: {}",
                    rejection.body_text()
                )
            };
            return openai_error(
                rejection.status(),
                "invalid_request_error",
                &message,
                None,
                None,
            );
        }
    };
    match front.complete(&headers, &body).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

async fn list_models(State(front): State<Arc<HttpFrontend>>, headers: HeaderMap) -> Response {
    let key = match front.guard.load().authenticate(&caller(&headers)) {
        Ok(key) => key,
        Err(err) => return error_response(&err),
    };
    let table = front.table.load();
    let data = table
        .routes()
        .iter()
        .filter(|route| {
            key.as_ref()
                .is_none_or(|key| key.models.allows(&route.model))
        })
        .flat_map(|route| {
            std::iter::once(route.model.as_ref())
                .chain(route.aliases.iter().map(String::as_str))
                .map(|name| front.model_entry(name, &route.model))
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

async fn get_model(State(front): State<Arc<HttpFrontend>>, Path(model): Path<String>) -> Response {
    let table = front.table.load();
    match table.lookup(&model) {
        Some(route) => Json(front.model_entry(&model, &route.model)).into_response(),
        None => error_response(&not_routed(&model)),
    }
}

async fn unknown_path(method: Method, uri: Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!(
            "no such endpoint: {method} {}; this gateway serves POST /v1/chat/completions \
             and GET /v1/models",
            uri.path()
        ),
        None,
        Some("unknown_url"),
    )
}

// === impl HttpFrontend ===

impl HttpFrontend {
    /// One chat completion: translate, call the stack, answer whole or as
    /// a stream.
    async fn complete(&self, headers: &HeaderMap, body: &[u8]) -> Result<Response, GatewayError> {
        // A budget too large to add to the clock (centuries) is no limit.
        let deadline = request_timeout(headers)?
            .and_then(|budget| Instant::now().checked_add(answer_by(budget)));
        let wire = parse_request(body)?;
        let include_usage = wire
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|value| value.to_str().ok())
            .and_then(RequestId::from_caller)
            .unwrap_or_else(RequestId::generate);
        let req = chat_request(
            wire,
            deadline,
            CallContext::new(request_id),
            caller(headers),
        )?;
        let call = CallInfo {
            id: format!("chatcmpl-{:032x}", rand::random::<u128>()),
            created: unix_now(),
            model: req.model.clone(),
            include_usage,
        };
        let stream = req.stream;
        let events = self.stack.clone().oneshot(req).await?;
        if stream {
            Ok(sse_response(SseChunks {
                inner: Some(events),
                call,
                first: true,
            }))
        } else {
            whole_answer(events, call).await
        }
    }

    fn model_entry<'a>(&self, name: &'a str, route: &'a str) -> ModelEntry<'a> {
        ModelEntry {
            id: name,
            object: "model",
            created: self.started,
            owned_by: "llmgate",
            root: route,
        }
    }
}

/// Gathers a whole answer into one `chat.completion`.
async fn whole_answer(mut events: ChatStream, call: CallInfo) -> Result<Response, GatewayError> {
    let mut text = String::new();
    while let Some(event) = events.next().await {
        match event? {
            ChatEvent::Token(token) => text.push_str(&token),
            ChatEvent::Done(completion) => {
                let answer = ChatCompletion {
                    id: &call.id,
                    object: "chat.completion",
                    created: call.created,
                    model: served_model(&completion, &call),
                    choices: [Choice {
                        index: 0,
                        message: AssistantMessage {
                            role: "assistant",
                            content: &text,
                        },
                        logprobs: None,
                        finish_reason: finish_reason(&completion),
                    }],
                    usage: completion.usage.map(WireUsage::from),
                };
                return Ok(Json(answer).into_response());
            }
        }
    }
    Err(truncated())
}

fn sse_response(chunks: SseChunks) -> Response {
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Asks nginx-style proxies in front not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

// === impl SseChunks ===

impl Stream for SseChunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let mut out = Vec::new();
        match ready!(inner.as_mut().poll_next(cx)) {
            Some(Ok(ChatEvent::Token(token))) => {
                this.token_chunk(&mut out, &token);
                return Poll::Ready(Some(Ok(out.into())));
            }
            Some(Ok(ChatEvent::Done(completion))) => this.finish(&mut out, &completion),
            Some(Err(err)) => error_event(&mut out, &err),
            None => error_event(&mut out, &truncated()),
        }
        // Whatever ended the answer, release the upstream now.
        this.inner = None;
        Poll::Ready(Some(Ok(out.into())))
    }
}

impl SseChunks {
    /// A chunk carrying `token`; the first also says who speaks.
    fn token_chunk(&mut self, out: &mut Vec<u8>, token: &str) {
        let role = std::mem::take(&mut self.first).then_some("assistant");
        let choice = ChunkChoice {
            index: 0,
            delta: Delta {
                role,
                content: Some(token),
            },
            logprobs: None,
            finish_reason: None,
        };
        let model = &self.call.model;
        self.chunk(out, model, std::slice::from_ref(&choice), None);
    }

    /// The finish chunk, the usage chunk when asked for, and `[DONE]`,
    /// written together so they leave in one write.
    fn finish(&mut self, out: &mut Vec<u8>, completion: &Completion) {
        if self.first {
            // An empty answer still opens with the assistant's role.
            self.token_chunk(out, "");
        }
        let model = served_model(completion, &self.call);
        let choice = ChunkChoice {
            index: 0,
            delta: Delta::default(),
            logprobs: None,
            finish_reason: Some(finish_reason(completion)),
        };
        self.chunk(out, model, std::slice::from_ref(&choice), None);
        if self.call.include_usage {
            let usage = completion.usage.map(WireUsage::from);
            self.chunk(out, model, &[], Some(usage));
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }

    /// Writes one `chat.completion.chunk` event. `usage` is `Some` only
    /// on the usage chunk; the others say `null` when usage was asked for.
    fn chunk(
        &self,
        out: &mut Vec<u8>,
        model: &str,
        choices: &[ChunkChoice<'_>],
        usage: Option<Option<WireUsage>>,
    ) {
        let usage = match usage {
            Some(usage) => Some(usage),
            None if self.call.include_usage => Some(None),
            None => None,
        };
        let chunk = ChatCompletionChunk {
            id: &self.call.id,
            object: "chat.completion.chunk",
            created: self.call.created,
            model,
            choices,
            usage,
        };
        event(out, &chunk);
    }
}

/// Writes `data: {json}` and the blank line that ends an event.
fn event(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Writing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"\n\n");
}

/// The event that ends a stream that failed after it started: OpenAI's
/// error body as a `data:` event, which the official SDKs raise as an
/// error.
fn error_event(out: &mut Vec<u8>, err: &GatewayError) {
    event(out, &error_body(err));
}

// === translation ===

/// The request body as OpenAI's request, with a wrong field named by its
/// path (`messages[0].content`).
fn parse_request(body: &[u8]) -> Result<ChatCompletionRequest, GatewayError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            GatewayError::invalid_argument(
                "body",
                &format!("is not a JSON chat completion request: {inner}"),
            )
        } else {
            GatewayError::invalid_argument(&path, &format!("is not valid: {inner}"))
        }
    })
}

/// The wire request as a validated [`ChatRequest`] of `caller`, tracked
/// by `call`.
fn chat_request(
    wire: ChatCompletionRequest,
    deadline: Option<Instant>,
    call: CallContext,
    caller: Caller,
) -> Result<ChatRequest, GatewayError> {
    if wire.n.is_some_and(|n| n != 1) {
        return Err(GatewayError::invalid_argument(
            "n",
            "must be 1: this gateway generates one choice per request",
        ));
    }
    let messages = wire
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, message)| {
            let role = match message.role.as_str() {
                // OpenAI's newer name for system instructions.
                "developer" => Role::System,
                name => Role::parse(name).ok_or_else(|| {
                    GatewayError::invalid_argument(
                        &format!("messages[{i}].role"),
                        &format!(
                            "'{name}' is not a role this gateway forwards; use system, \
                             developer, user or assistant (tool calls are not supported)"
                        ),
                    )
                })?,
            };
            Ok(ChatMessage {
                role,
                content: content_text(i, message.content)?,
            })
        })
        .collect::<Result<Vec<_>, GatewayError>>()?;
    let (field, cap) = match (wire.max_completion_tokens, wire.max_tokens) {
        (Some(cap), _) => ("max_completion_tokens", Some(cap)),
        (None, cap) => ("max_tokens", cap),
    };
    let max_tokens = cap
        .map(|cap| {
            u32::try_from(cap)
                .ok()
                .filter(|&cap| cap > 0)
                .ok_or_else(|| {
                    GatewayError::invalid_argument(
                        field,
                        &format!("is {cap}; it must be at least 1, or left out for the default"),
                    )
                })
        })
        .transpose()?;
    let stop = match wire.stop {
        None => Vec::new(),
        Some(Stop::One(stop)) => vec![stop],
        Some(Stop::Many(stops)) => stops,
    };
    let req = ChatRequest {
        model: wire.model.unwrap_or_default(),
        messages,
        params: SamplingParams {
            max_tokens,
            temperature: wire.temperature,
            top_p: wire.top_p,
            stop,
        },
        stream: wire.stream.unwrap_or(false),
        deadline,
        call,
        caller,
    };
    req.validate()?;
    Ok(req)
}

/// A message's text: the string, or its text parts joined by newlines.
fn content_text(message: usize, content: Option<Content>) -> Result<String, GatewayError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = Vec::with_capacity(parts.len());
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(part)) => text.push(part),
                    ("text", None) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].text"),
                            "is missing; a text part needs its text",
                        ));
                    }
                    (kind, _) => {
                        return Err(GatewayError::invalid_argument(
                            &format!("messages[{message}].content[{j}].type"),
                            &format!("'{kind}' parts are not supported; send text"),
                        ));
                    }
                }
            }
            Ok(text.join("\n"))
        }
    }
}

/// The caller's budget from [`REQUEST_TIMEOUT_HEADER`]. Unlike a malformed
/// `grpc-timeout` (which gRPC servers ignore), a malformed value is refused:
/// a caller who set a limit must not get a call without one.
fn request_timeout(headers: &HeaderMap) -> Result<Option<Duration>, GatewayError> {
    let Some(value) = headers.get(REQUEST_TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let budget = value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|text| match text.parse::<f64>() {
            // Positive beyond what a Duration holds: as good as no limit.
            Ok(secs) => Duration::try_from_secs_f64(secs)
                .ok()
                .or((secs.is_finite() && secs > 0.0).then_some(Duration::MAX)),
            Err(_) => humantime::parse_duration(text).ok(),
        });
    match budget {
        Some(budget) if !budget.is_zero() => Ok(Some(budget)),
        _ => Err(GatewayError::invalid_argument(
            REQUEST_TIMEOUT_HEADER,
            "header must be a positive number of seconds (30, 2.5) or a duration (500ms, 2m)",
        )),
    }
}

/// The model to name in an answer: the one the upstream says served it,
/// else the one asked for.
fn served_model<'a>(completion: &'a Completion, call: &'a CallInfo) -> &'a str {
    if completion.model.is_empty() {
        &call.model
    } else {
        &completion.model
    }
}

/// The finish reason in OpenAI's words. An upstream that finished without
/// saying why ended normally, which OpenAI calls `stop`.
fn finish_reason(completion: &Completion) -> &'static str {
    completion
        .finish_reason
        .map_or("stop", FinishReason::as_str)
}

fn truncated() -> GatewayError {
    GatewayError::unavailable(
        "the upstream stream ended before its final chunk; the answer is incomplete",
    )
}

fn not_routed(model: &str) -> GatewayError {
    GatewayError::new(
        ErrorKind::NotFound,
        format!(
            "model '{model}' is not routed by this gateway; GET /v1/models lists the models \
             it serves"
        ),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

// === errors ===

/// The one mapping from [`GatewayError`] to an HTTP answer: the status of
/// its kind, OpenAI's error body, and `Retry-After` where waiting helps.
pub fn error_response(err: &GatewayError) -> Response {
    let mut response = (err.kind().http_status(), Json(error_body(err))).into_response();
    if let Some(wait) = retry_after(err) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response
}

fn error_body(err: &GatewayError) -> ErrorBody<'_> {
    ErrorBody {
        error: ErrorDetail {
            message: err.message(),
            kind: error_type(err.kind()),
            param: err.field(),
            code: Some(error_code(err)),
        },
    }
}

fn openai_error(
    status: StatusCode,
    kind: &'static str,
    message: &str,
    param: Option<&str>,
    code: Option<&'static str>,
) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind,
            param,
            code,
        },
    };
    (status, Json(body)).into_response()
}

/// Seconds a caller should wait before trying again. A 429 always says
/// (the upstream's own wait, else one second), since SDKs retry it at once
/// otherwise; a 503 says only when the upstream did.
fn retry_after(err: &GatewayError) -> Option<u64> {
    let seconds = |wait: Duration| (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    match err.kind() {
        ErrorKind::ResourceExhausted => Some(err.retry_after().map_or(1, seconds)),
        ErrorKind::Unavailable => err.retry_after().map(seconds),
        _ => None,
    }
}

/// OpenAI's `type` for each kind.
fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_request_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::ResourceExhausted => "rate_limit_error",
        ErrorKind::Unavailable => "service_unavailable_error",
        ErrorKind::DeadlineExceeded => "timeout_error",
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::Cancelled => "cancelled_error",
        ErrorKind::Internal => "server_error",
    }
}

/// OpenAI's `code`: its own well-known codes where clients look for them
/// (`model_not_found`, `rate_limit_exceeded`, `context_length_exceeded`),
/// else the gRPC code's name, so both fronts name a failure alike.
fn error_code(err: &GatewayError) -> &'static str {
    if err.is_context_length_exceeded() {
        return "context_length_exceeded";
    }
    match err.kind() {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "model_not_found",
        ErrorKind::ResourceExhausted => "rate_limit_exceeded",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::Cancelled => "cancelled",
        ErrorKind::Internal => "internal",
    }
}

/// Who is calling: the `authorization` header, read the way every front
/// end reads it.
fn caller(headers: &HeaderMap) -> Caller {
    Caller::from_authorization(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
}
