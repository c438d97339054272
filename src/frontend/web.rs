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

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tonic::service::Routes;
use tonic_web::{GrpcWebLayer, GrpcWebService};
use tower::ServiceBuilder;
use tower::util::Either;
use tower_http::cors::{AllowHeaders, AllowOrigin, Cors, CorsLayer};

use crate::config::CorsConfig;

/// The gRPC port's services with grpc-web translation, and CORS when the
/// routing file allows origins.
pub type WebRoutes = Either<Cors<GrpcWebService<Routes>>, GrpcWebService<Routes>>;

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

/// `routes` as the gRPC port serves them: grpc-web translated, with
/// `cors` in front when browsers may call.
pub fn grpc_web(routes: Routes, cors: Option<CorsLayer>) -> WebRoutes {
    ServiceBuilder::new()
        .option_layer(cors)
        .layer(GrpcWebLayer::new())
        .service(routes)
}

/// The CORS policy for `config`; `None` when no origin may call.
///
/// Request headers are mirrored from the preflight rather than listed:
/// grpc-web clients and the OpenAI SDKs each send their own (`x-grpc-web`,
/// `x-user-agent`, `grpc-timeout`, `authorization`, `x-stainless-*`,
/// `x-request-timeout`), and the origin list is what decides who may call.
/// Credentials (cookies) are never allowed: callers authenticate with
/// headers.
pub fn cors_layer(config: &CorsConfig) -> Option<CorsLayer> {
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
