//! What browsers need to call the gateway: grpc-web on the gRPC port, and
//! the CORS policy from the routing file's `cors:`.
//!
//! A browser cannot speak native gRPC (it controls neither HTTP/2 framing
//! nor trailers), so `tonic-web` translates grpc-web (HTTP/1.1 or HTTP/2,
//! status in a trailer frame at the end of the body) into ordinary gRPC in
//! front of the same services: a web app calls `llm.v1.LLMService` directly,
//! through the same stack as every other caller. Native gRPC on HTTP/2
//! passes straight through.
//!
//! CORS sits outside the translation, because a browser's preflight
//! (`OPTIONS` with no grpc-web content type) must be answered before
//! anything looks at the body. Without `cors:` the layer is left out
//! entirely: same-origin pages and non-browser clients need no CORS, and
//! calls pay for no headers nobody reads.
//!
//! Only browser traffic takes that path: [`GrpcPort`] sends native gRPC
//! straight to the services, so the calls that carry nearly all the load
//! pay for no translation layer and no second boxing of their bodies.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderName, HeaderValue, Method, Request, Response, header};
use tonic::body::Body;
use tonic::service::Routes;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::{Service, ServiceBuilder};
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer};

use crate::config::CorsConfig;

/// The grpc-web path: translation, with CORS in front when the routing
/// file allows origins.
type WebRoutes = tower::util::Either<Cors<GrpcWebService<Routes>>, GrpcWebService<Routes>>;

/// Everything the gRPC port serves: native gRPC straight to the services,
/// grpc-web and CORS preflights through the translation layer.
#[derive(Clone)]
pub(crate) struct GrpcPort {
    /// The services, for native gRPC.
    native: Routes,
    /// The same services behind grpc-web translation (and CORS).
    web: WebRoutes,
}

/// How long a browser may cache a preflight answer: a day, so a page does
/// not pay a preflight round trip per call.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Response headers a page's script may read: the gRPC status, which
/// grpc-web sends as headers when a call fails before any message, and
/// `Retry-After` on a 429 from the HTTP front.
const EXPOSED: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "retry-after",
];

/// `routes` as the gRPC port serves them: native gRPC as it is, grpc-web
/// translated, with `cors` in front of the latter when browsers may call.
pub(crate) fn grpc_port(routes: Routes, cors: Option<CorsLayer>) -> GrpcPort {
    let web = ServiceBuilder::new()
        .option_layer(cors)
        .layer(GrpcWebLayer::new())
        .service(routes.clone());
    GrpcPort {
        native: routes,
        web,
    }
}

/// The CORS policy for `config`; `None` when no origin may call.
///
/// Request headers are mirrored from the preflight rather than listed:
/// grpc-web clients and the OpenAI SDKs each send their own (`x-grpc-web`,
/// `x-user-agent`, `grpc-timeout`, `authorization`, `x-stainless-*`,
/// `x-request-timeout`), and the origin list is what decides who may call.
/// Credentials (cookies) are never allowed: callers authenticate with
/// headers.
pub(crate) fn cors_layer(config: &CorsConfig) -> Option<CorsLayer> {
    let origins = match config.allowed_origins.as_slice() {
        [] => return None,
        [any] if any == "*" => AllowOrigin::any(),
        list => AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(EXPOSED.map(HeaderName::from_static))
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

// === impl GrpcPort ===

impl<B> Service<Request<B>> for GrpcPort
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        Either<<Routes as Service<Request<B>>>::Future, <WebRoutes as Service<Request<B>>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both are always ready (routing only); ask both so either may be
        // called.
        match Service::<Request<B>>::poll_ready(&mut self.native, cx) {
            Poll::Ready(Ok(())) => Service::<Request<B>>::poll_ready(&mut self.web, cx),
            other => other,
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if from_browser(&req) {
            Either::Right(self.web.call(req))
        } else {
            Either::Left(self.native.call(req))
        }
    }
}

/// Whether a request is grpc-web or a CORS preflight: what only browsers
/// (and grpc-web proxies) send.
fn from_browser<B>(req: &Request<B>) -> bool {
    req.method() == Method::OPTIONS
        || req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}
