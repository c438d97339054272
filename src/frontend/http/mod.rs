//! The OpenAI-compatible HTTP front end: `POST /v1/chat/completions` (one
//! JSON answer, or server-sent events), `POST /v1/embeddings` and
//! `GET /v1/models`; and beside it, on the same port, Anthropic's Messages
//! API (`POST /v1/messages`, in [`anthropic`]).
//!
//! Most application code already speaks OpenAI's API through an SDK; this
//! front lets it call the gateway unchanged, through the same
//! [`ChatService`] as gRPC, so both fronts share one routing table, one set
//! of limits and one retry policy. Like the gRPC front it only translates:
//! wire → [`ChatRequest`], [`ChatStream`] → wire, and every
//! [`GatewayError`] → an HTTP status and OpenAI's error body in one place
//! ([`error_response`]).
//!
//! What every front shares (request id, key, deadline, refusals, listings)
//! is the [`Edge`]'s. Here: the handlers, in order of a call. The caller's
//! key is checked from the headers before the body is read, and the body
//! is read through the same guard as gRPC's, held to the routing file's
//! `limits.max_request_size` and `request_idle_timeout`. The rest is split
//! by job: `request` (wire → [`ChatRequest`]), `embed` (embeddings, both
//! ways), `answer` (a whole answer),
//! `sse` (a streamed one), `error` (every failure as OpenAI's error body),
//! and `wire` (the JSON shapes).
//!
//! Errors before the first token get a real status (the router waits for
//! the first event before answering); an error after it ends the stream
//! with an error event, never with `data: [DONE]`.
//!
//! A caller bounds the call with `x-request-timeout` (seconds, `2.5`, or a
//! duration, `500ms`), held like `grpc-timeout`: 504 when it passes, and
//! the upstream request dropped.

mod answer;
mod anthropic;
mod embed;
mod error;
mod request;
mod sse;
mod wire;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tower_http::cors::CorsLayer;

use crate::chat::{CallContext, Caller, ChatRequest, RequestId};
use crate::error::{ErrorKind, GatewayError};
use crate::frontend::body::{BodyRefusal, BodyRules, Framing};
use crate::frontend::edge::{self, Edge};
use crate::stack::guard::KeyPolicy;
use crate::telemetry::{PRIORITY, REQUEST_ID};
use answer::{CallInfo, unix_now, whole_answer};
use embed::{embedding_answer, embedding_call, parse_embedding};
pub(crate) use error::error_response;
use error::openai_error;
use request::{chat_request, parse_request, request_timeout};
use sse::sse_response;
use wire::{ModelEntry, ModelList};

/// The header that bounds a call: seconds (`30`, `2.5`) or a duration
/// (`500ms`, `2m`). HTTP has no standard deadline header and the OpenAI
/// SDKs keep their timeout to themselves, so the gateway names its own.
pub(crate) const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout";

/// The HTTP front end's state, shared by its handlers.
pub(crate) struct HttpFrontend {
    /// What every front shares: the call path, the table, the keys.
    edge: Edge,
    /// What each request body is held to: the same rules as gRPC's.
    bodies: BodyRules,
    /// When the front started (Unix seconds): the `created` of every listed
    /// model, since routes have no creation time of their own.
    started: u64,
}

/// Builds the HTTP front's router over the shared `edge`, its bodies held
/// to `bodies`, with `cors` in front when browsers may call.
pub(crate) fn router(edge: Edge, bodies: BodyRules, cors: Option<CorsLayer>) -> Router {
    let front = Arc::new(HttpFrontend {
        edge,
        bodies,
        started: unix_now(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route(
            "/v1/messages",
            post(anthropic::messages).fallback(anthropic::wrong_method),
        )
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*model}", get(get_model))
        .fallback(unknown_path)
        .method_not_allowed_fallback(unknown_path)
        .with_state(front);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

// === handlers ===

async fn chat_completions(State(front): State<Arc<HttpFrontend>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (request_id, caller, body, held) = match front.admit(headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    match front
        .complete(headers, request_id, caller, &body, held)
        .await
    {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

async fn embeddings(State(front): State<Arc<HttpFrontend>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let (request_id, caller, body, held) = match front.admit(headers, body).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    match front.embed(headers, request_id, caller, &body, held).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

async fn list_models(State(front): State<Arc<HttpFrontend>>, headers: HeaderMap) -> Response {
    if anthropic::models::wanted(&headers) {
        return anthropic::models::list(&front, &headers);
    }
    let key = match front.edge.authenticate(&caller(&headers)) {
        Ok(key) => key,
        Err(err) => return error_response(&err),
    };
    let routes = front.edge.visible_routes(key.as_deref());
    let data = routes
        .iter()
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

async fn get_model(
    State(front): State<Arc<HttpFrontend>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Response {
    if anthropic::models::wanted(&headers) {
        return anthropic::models::get(&front, &headers, &model);
    }
    let key: Option<Arc<KeyPolicy>> = match front.edge.authenticate(&caller(&headers)) {
        Ok(key) => key,
        Err(err) => return error_response(&err),
    };
    match front.edge.visible_route(key.as_deref(), &model) {
        Some(route) => Json(front.model_entry(&model, &route.model)).into_response(),
        None => error_response(&not_routed(&model)),
    }
}

async fn unknown_path(method: Method, uri: Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        &format!(
            "no such endpoint: {method} {}; this gateway serves POST /v1/chat/completions, \
             POST /v1/embeddings, POST /v1/messages and GET /v1/models",
            uri.path()
        ),
        None,
        Some("unknown_url"),
    )
}

// === impl HttpFrontend ===

impl HttpFrontend {
    /// A call's request id, its admitted caller and its whole body (with
    /// the body's share of the buffer budget): the key first, so a
    /// stranger's body is never read. A refusal is recorded and comes back
    /// as the answer to send.
    async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(RequestId, Caller, Bytes, Option<OwnedSemaphorePermit>), Response> {
        let request_id = edge::request_id(headers.get(REQUEST_ID).map(|v| v.as_bytes()));
        let caller = match self.edge.admit(caller(headers)) {
            Ok(caller) => caller,
            Err(err) => {
                self.edge
                    .refused(CallContext::new(request_id), "", false, &err);
                return Err(error_response(&err));
            }
        };
        match self.read_body(headers, body).await {
            Ok((body, held)) => Ok((request_id, caller, body, held)),
            Err((err, response)) => {
                self.edge
                    .refused(CallContext::new(request_id), "", false, &err);
                Err(response)
            }
        }
    }

    /// The whole request body, read through the body guard: refused at
    /// once when its declared length is over the limit, and as soon as
    /// more than the limit arrives or it stalls, or when the gateway holds
    /// all the request bytes it may. The bytes come with their share of
    /// that budget, held until the body is translated. A refusal comes as
    /// the error to record and the answer to send.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), (GatewayError, Response)> {
        let limit = self.bodies.limits.max_message;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|&len| len > limit as u64) {
            let refusal = BodyRefusal::TooLarge {
                size: crate::config::human_size(usize::try_from(declared).unwrap_or(usize::MAX)),
                limit: crate::config::human_size(limit),
            };
            return Err(refused_body(&refusal));
        }
        let mut guarded = self.bodies.guard(body, Framing::Whole);
        // Grown as bytes arrive, never sized from the declared length: a
        // declared length costs nothing until the bytes are counted against
        // the budget.
        let mut read = Vec::new();
        while let Some(frame) = guarded.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        read.extend_from_slice(data);
                    }
                }
                Err(err) => return Err(unreadable_body(&*err)),
            }
        }
        Ok((Bytes::from(read), guarded.into_held()))
    }

    /// One chat completion: translate (then give the body's share of the
    /// buffer budget back), call the stack, answer whole or as a stream. A
    /// request refused before the stack is recorded here.
    async fn complete(
        &self,
        headers: &HeaderMap,
        request_id: RequestId,
        caller: Caller,
        body: &[u8],
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<Response, GatewayError> {
        let call = chat_call(headers, request_id);
        let translated = translate(headers, call.clone(), caller, body);
        // The raw bytes are done with: their share of the budget goes back.
        drop(held);
        let (req, include_usage) = match translated {
            Ok(translated) => translated,
            Err((model, stream, err)) => {
                self.edge.refused(call, &model, stream, &err);
                return Err(err);
            }
        };
        let info = CallInfo::new(req.model.clone(), include_usage);
        let stream = req.stream;
        let events = self.edge.call(req).await?;
        if stream {
            Ok(sse_response(events, info))
        } else {
            edge::unwinding(whole_answer(events, info)).await
        }
    }

    /// One embedding call: translate, call the stack, answer with the
    /// vectors in the encoding asked for.
    async fn embed(
        &self,
        headers: &HeaderMap,
        request_id: RequestId,
        caller: Caller,
        body: &[u8],
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<Response, GatewayError> {
        let call = CallContext::new(request_id);
        let translated = parse_embedding(body)
            .map_err(|err| (String::new(), err))
            .and_then(|wire| {
                let model = wire.model.clone().unwrap_or_default();
                let deadline = request_timeout(headers)
                    .map(edge::deadline)
                    .map_err(|err| (model.clone(), err))?;
                embedding_call(wire, deadline, call.clone(), caller).map_err(|err| (model, err))
            });
        drop(held);
        let (req, encoding) = match translated {
            Ok(translated) => translated,
            Err((model, err)) => {
                self.edge.refused(call, &model, false, &err);
                return Err(err);
            }
        };
        let asked = req.model.clone();
        let events = self.edge.call(req).await?;
        let completion = edge::embedded(events).await?;
        Ok(embedding_answer(&completion, &asked, encoding))
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

/// The request as the stack takes it, and whether a stream should end
/// with a usage chunk; a refusal comes with the model and stream flag
/// asked for, for the record.
fn translate(
    headers: &HeaderMap,
    call: CallContext,
    caller: Caller,
    body: &[u8],
) -> Result<(ChatRequest, bool), (String, bool, GatewayError)> {
    let wire = parse_request(body).map_err(|err| (String::new(), false, err))?;
    let model = wire.model.clone().unwrap_or_default();
    let stream = wire.stream.unwrap_or(false);
    let include_usage = wire
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let deadline = request_timeout(headers)
        .map(edge::deadline)
        .map_err(|err| (model.clone(), stream, err))?;
    let req = chat_request(wire, deadline, call, caller).map_err(|err| (model, stream, err))?;
    Ok((req, include_usage))
}

/// A body that could not be read whole: refused by its guard, or cut by
/// the client.
fn unreadable_body(
    err: &(dyn std::error::Error + Send + Sync + 'static),
) -> (GatewayError, Response) {
    if let Some(refusal) = err.downcast_ref::<BodyRefusal>() {
        return refused_body(refusal);
    }
    let message = format!("the request body could not be read: {err}");
    let response = openai_error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &message,
        None,
        None,
    );
    (GatewayError::invalid_argument("body", &message), response)
}

/// A body refused while it was read: 413 for one too large, 408 for one
/// that stalled, 429 (with `Retry-After`) while the gateway's buffer budget
/// is spent, and the error to record for each.
fn refused_body(refusal: &BodyRefusal) -> (GatewayError, Response) {
    let message = refusal.to_string();
    let (status, kind, code) = match refusal {
        BodyRefusal::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::ResourceExhausted,
            "request_too_large",
        ),
        BodyRefusal::Stalled(_) => (
            StatusCode::REQUEST_TIMEOUT,
            ErrorKind::DeadlineExceeded,
            "request_timeout",
        ),
        BodyRefusal::Busy(_) => {
            let err = GatewayError::new(ErrorKind::ResourceExhausted, message);
            let response = error_response(&err);
            return (err, response);
        }
    };
    let response = openai_error(status, "invalid_request_error", &message, None, Some(code));
    (GatewayError::new(kind, message), response)
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

/// A chat call's context as both HTTP fronts (OpenAI and Messages) open
/// it, so that neither forgets the class `x-llmgate-priority` asks for;
/// whether it is granted is the caller's key's say, later, in the stack.
fn chat_call(headers: &HeaderMap, request_id: RequestId) -> CallContext {
    let call = CallContext::new(request_id);
    if let Some(asked) = headers.get(PRIORITY) {
        call.ask_priority(asked.as_bytes());
    }
    call
}

/// Who is calling: the `authorization` header, read the way every front
/// end reads it.
fn caller(headers: &HeaderMap) -> Caller {
    Caller::from_authorization(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
}
