//! Anthropic's Messages API as a front, on the HTTP port: `POST
//! /v1/messages`, answered whole (a `message`) or, with `stream: true`, as
//! Anthropic's event sequence.
//!
//! Agent tools written for Anthropic (its SDKs, Claude Code) then reach
//! every pool the routing table has, OpenAI-compatible, Ollama, Anthropic
//! or simulated, through the same [`Edge`] as the other fronts: the same
//! keys (from `x-api-key`, or `authorization: Bearer`, checked before the
//! body is read), limits, retries and balancing. Like the OpenAI front it
//! only translates: wire → [`ChatRequest`] (`request`), a whole answer →
//! `message` (`answer`), a stream → events (`stream`), every failure →
//! Anthropic's status and error body (`error`), over the JSON shapes of
//! `wire`. The body is read by the OpenAI front's own reader, so both are
//! held to the same `limits`.
//!
//! Listings (`GET /v1/models`) that carry `anthropic-version` are
//! answered in Anthropic's shape (`models`).
//!
//! `anthropic-version` is accepted whatever it says: the gateway speaks the
//! one version of the API there is (`2023-06-01`). The caller's deadline is
//! `x-request-timeout`, and the queue class it asks for
//! `x-llmgate-priority`, as on the OpenAI front.
//!
//! One thing the vocabulary cannot carry back: which stop sequence ended
//! an answer. Upstreams report "stopped" for both an ended turn and a stop
//! sequence, so both read as `end_turn`, with `stop_sequence: null`.

mod answer;
mod error;
pub(super) mod models;
mod request;
mod stream;
mod wire;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, Method, StatusCode, Uri, header};
use tokio::sync::OwnedSemaphorePermit;

use super::request::request_timeout;
use super::{HttpFrontend, chat_call};
use crate::chat::{CallContext, Caller, ChatRequest, RequestId};
use crate::error::{ErrorKind, GatewayError};
use crate::frontend::edge;
use crate::telemetry::REQUEST_ID;
use answer::{MessageInfo, whole_message};
use error::{anthropic_error, error_response, reworded};
use request::{chat_request, parse_request};
use stream::event_response;

/// The header Anthropic's clients carry their key in.
const API_KEY_HEADER: &str = "x-api-key";

/// `POST /v1/messages`.
pub(super) async fn messages(State(front): State<Arc<HttpFrontend>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let request_id = edge::request_id(headers.get(REQUEST_ID).map(|v| v.as_bytes()));
    // The key first: a stranger's body is never read.
    let presented = caller(headers);
    // The shared messages speak of `authorization`; say this wire's words.
    let in_our_words = match presented {
        Caller::Anonymous => Some("this gateway needs an API key: send it as `x-api-key: <key>`"),
        Caller::Unreadable => Some(
            "the API key must be one printable word in `x-api-key: <key>` (or \
             `authorization: Bearer <key>`)",
        ),
        _ => None,
    };
    let caller = match front.edge.admit(presented) {
        Ok(caller) => caller,
        Err(err) => {
            let err = match in_our_words {
                Some(message) if err.kind() == ErrorKind::Unauthenticated => {
                    GatewayError::new(ErrorKind::Unauthenticated, message)
                }
                _ => err,
            };
            front
                .edge
                .refused(CallContext::new(request_id), "", false, &err);
            return error_response(&err);
        }
    };
    let (body, held) = match front.read_body(headers, body).await {
        Ok(read) => read,
        Err((err, openai)) => {
            front
                .edge
                .refused(CallContext::new(request_id), "", false, &err);
            return reworded(&err, &openai);
        }
    };
    match complete(&front, headers, request_id, caller, &body, held).await {
        Ok(response) => response,
        Err(err) => error_response(&err),
    }
}

/// Any other method on `/v1/messages`, in Anthropic's words.
pub(super) async fn wrong_method(method: Method, uri: Uri) -> Response {
    anthropic_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        &format!(
            "{method} {} is not served; the Messages API is POST /v1/messages",
            uri.path()
        ),
    )
}

/// One call: translate (then give the body's share of the buffer budget
/// back), call the stack, answer whole or as events. A request refused
/// before the stack is recorded here.
async fn complete(
    front: &HttpFrontend,
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
    let req = match translated {
        Ok(req) => req,
        Err((model, stream, err)) => {
            front.edge.refused(call, &model, stream, &err);
            return Err(err);
        }
    };
    let info = MessageInfo::new(req.model.clone());
    let stream = req.stream;
    let events = front.edge.call(req).await?;
    if stream {
        Ok(event_response(events, info))
    } else {
        edge::unwinding(whole_message(events, info)).await
    }
}

/// The request as the stack takes it; a refusal comes with the model and
/// stream flag asked for, for the record.
fn translate(
    headers: &HeaderMap,
    call: CallContext,
    caller: Caller,
    body: &[u8],
) -> Result<ChatRequest, (String, bool, GatewayError)> {
    let wire = parse_request(body).map_err(|err| (String::new(), false, err))?;
    let model = wire.model.clone().unwrap_or_default();
    let stream = wire.stream.unwrap_or(false);
    let deadline = request_timeout(headers)
        .map(edge::deadline)
        .map_err(|err| (model.clone(), stream, err))?;
    chat_request(wire, deadline, call, caller).map_err(|err| (model, stream, err))
}

/// Who is calling: `x-api-key` (what Anthropic's SDKs send), else
/// `authorization: Bearer` (what they send given an auth token), read as
/// every front reads a key.
fn caller(headers: &HeaderMap) -> Caller {
    match headers.get(API_KEY_HEADER) {
        Some(key) => {
            let mut bearer = b"Bearer ".to_vec();
            bearer.extend_from_slice(key.as_bytes());
            Caller::from_authorization(Some(&bearer))
        }
        None => {
            Caller::from_authorization(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_comes_from_x_api_key_before_authorization() {
        let mut headers = HeaderMap::new();
        assert_eq!(caller(&headers), Caller::Anonymous);
        headers.insert(header::AUTHORIZATION, "Bearer sk-b".parse().expect("value"));
        assert_eq!(
            caller(&headers),
            Caller::from_authorization(Some(b"Bearer sk-b"))
        );
        headers.insert(API_KEY_HEADER, "sk-a".parse().expect("value"));
        assert_eq!(
            caller(&headers),
            Caller::from_authorization(Some(b"Bearer sk-a"))
        );
        headers.insert(API_KEY_HEADER, "two words".parse().expect("value"));
        assert_eq!(caller(&headers), Caller::Unreadable);
    }
}
