//! The admin listener (`listen.metrics`): `GET /metrics` for Prometheus,
//! `GET /healthz` and `GET /readyz` for Kubernetes probes, and
//! `POST /-/reload` to apply the routing file now (as Prometheus does for
//! its own configuration).
//!
//! It has a port of its own so that scrapes and probes never queue behind
//! calls, the gRPC port speaks only gRPC, and the operator can keep it
//! inside the cluster (or on loopback) while the gRPC port is exposed. It
//! keeps answering while calls drain at shutdown, so probes see `/readyz`
//! turn 503 and the last scrape sees the final counts.

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::health::Health;
use crate::reload::{ReloadOutcome, Reloader};

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// The liveness probe: 200 while the process serves HTTP at all.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness probe: 200 while new calls are welcome, 503 once shutdown
/// began.
pub const READYZ_PATH: &str = "/readyz";
/// Applies the routing file now.
pub const RELOAD_PATH: &str = "/-/reload";

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
struct Admin {
    /// Renders the process-wide metrics.
    metrics: PrometheusHandle,
    /// Readiness.
    health: Health,
    /// The routing file's reloader, when the gateway serves one.
    reloader: Option<std::sync::Arc<Reloader>>,
}

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Health,
    reloader: Option<std::sync::Arc<Reloader>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(METRICS_PATH, get(render))
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(READYZ_PATH, get(ready))
        .route(RELOAD_PATH, axum::routing::post(reload))
        .with_state(Admin {
            metrics,
            health,
            reloader,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn render(State(admin): State<Admin>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        admin.metrics.render(),
    )
        .into_response()
}

async fn ready(State(admin): State<Admin>) -> Response {
    if admin.health.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down (or no routing table yet)\n",
        )
            .into_response()
    }
}

async fn reload(State(admin): State<Admin>) -> Response {
    let Some(reloader) = admin.reloader else {
        return (
            StatusCode::NOT_FOUND,
            "this gateway was not started on a routing file\n",
        )
            .into_response();
    };
    match reloader.reload("POST /-/reload").await {
        ReloadOutcome::Applied {
            generation,
            needs_restart,
        } => {
            let mut body = format!("applied: generation {generation}\n");
            for note in needs_restart {
                body.push_str(&format!("needs restart: {note}\n"));
            }
            (StatusCode::OK, body).into_response()
        }
        ReloadOutcome::Unchanged => (StatusCode::OK, "unchanged\n").into_response(),
        ReloadOutcome::Rejected(err) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("rejected; the table in force stays:\n{err}\n"),
        )
            .into_response(),
    }
}
