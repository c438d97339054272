//! `GET /v1/models` and `GET /v1/models/{id}` for Anthropic's clients.
//!
//! Anthropic's API lists models at the same paths as OpenAI's, in another
//! shape (`{"data": [{"type": "model", id, display_name, created_at}],
//! has_more, first_id, last_id}`), and its SDKs send the key in
//! `x-api-key`. A listing that carries `anthropic-version` (which every
//! Anthropic client sends, and OpenAI's never do) is answered here, in
//! that shape; any other is the OpenAI front's. Either way it lists only
//! what the caller's key may call.

use std::time::{Duration, UNIX_EPOCH};

use axum::response::{IntoResponse, Json, Response};
use http::HeaderMap;
use serde::Serialize;

use super::super::HttpFrontend;
use super::caller;
use super::error::error_response;
use crate::error::{ErrorKind, GatewayError};

/// The header only Anthropic's clients send.
const VERSION_HEADER: &str = "anthropic-version";

/// One model in Anthropic's shape.
#[derive(Debug, Serialize)]
struct ModelInfo<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    /// The name as it is: routes have no display name of their own.
    display_name: &'a str,
    /// When the front started: routes have no creation time of their own.
    created_at: &'a str,
}

/// A page of models: all of them, since a routing table is small.
#[derive(Debug, Serialize)]
struct ModelPage<'a> {
    data: Vec<ModelInfo<'a>>,
    has_more: bool,
    first_id: Option<&'a str>,
    last_id: Option<&'a str>,
}

/// Whether a listing comes from an Anthropic client.
pub(in crate::frontend::http) fn wanted(headers: &HeaderMap) -> bool {
    headers.contains_key(VERSION_HEADER)
}

/// Every route and alias the caller's key may call.
pub(in crate::frontend::http) fn list(front: &HttpFrontend, headers: &HeaderMap) -> Response {
    let key = match front.edge.authenticate(&caller(headers)) {
        Ok(key) => key,
        Err(err) => return error_response(&err),
    };
    let created_at = created_at(front.started);
    let routes = front.edge.visible_routes(key.as_deref());
    let names: Vec<&str> = routes
        .iter()
        .flat_map(|route| {
            std::iter::once(route.model.as_ref()).chain(route.aliases.iter().map(String::as_str))
        })
        .collect();
    let page = ModelPage {
        data: names.iter().map(|name| model(name, &created_at)).collect(),
        has_more: false,
        first_id: names.first().copied(),
        last_id: names.last().copied(),
    };
    Json(page).into_response()
}

/// One model, if the caller's key may call it.
pub(in crate::frontend::http) fn get(
    front: &HttpFrontend,
    headers: &HeaderMap,
    name: &str,
) -> Response {
    let key = match front.edge.authenticate(&caller(headers)) {
        Ok(key) => key,
        Err(err) => return error_response(&err),
    };
    if front.edge.visible_route(key.as_deref(), name).is_none() {
        return error_response(&GatewayError::new(
            ErrorKind::NotFound,
            format!(
                "model '{name}' is not routed by this gateway; GET /v1/models lists the \
                 models it serves"
            ),
        ));
    }
    Json(model(name, &created_at(front.started))).into_response()
}

fn model<'a>(name: &'a str, created_at: &'a str) -> ModelInfo<'a> {
    ModelInfo {
        kind: "model",
        id: name,
        display_name: name,
        created_at,
    }
}

/// `started` (Unix seconds) as the RFC 3339 time Anthropic's listings give.
fn created_at(started: u64) -> String {
    let time = UNIX_EPOCH
        .checked_add(Duration::from_secs(started))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time).to_string()
}
