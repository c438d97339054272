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
//!
//! It is held to the same connection limits as the data ports (a timed
//! handshake and request head, a connection cap), and `POST /-/reload` is
//! off unless the gateway was started with an admin key
//! ([`AdminKey`]), which the request must then present as
//! `authorization: Bearer <key>`: whoever reaches the port for scrapes
//! must not be able to swap the routing table. SIGHUP and edits to the
//! file reload without it.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::conn::Acceptor;
use crate::chat::Caller;
use crate::config::KeyDigest;
use crate::reload::{ReloadOutcome, Reloader};
use crate::telemetry::health::Health;

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";
/// The liveness probe: 200 while the process serves HTTP at all.
pub const HEALTHZ_PATH: &str = "/healthz";
/// The readiness probe: 200 while new calls are welcome, 503 once shutdown
/// began.
pub const READYZ_PATH: &str = "/readyz";
/// Applies the routing file now.
pub(crate) const RELOAD_PATH: &str = "/-/reload";

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The key `POST /-/reload` must present. Only its digest is kept, as for
/// callers' keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AdminKey(KeyDigest);

/// What the handlers read.
#[derive(Clone)]
struct Admin {
    /// Renders the process-wide metrics.
    metrics: PrometheusHandle,
    /// Readiness.
    health: Health,
    /// The routing file's reloader, when the gateway serves one.
    reloader: Option<Arc<Reloader>>,
    /// The key that allows `POST /-/reload`; `None` turns it off.
    key: Option<AdminKey>,
}

// === impl AdminKey ===

impl AdminKey {
    /// The admin key `key`; `None` for an empty one, which would allow
    /// anybody.
    pub fn new(key: &str) -> Option<Self> {
        let key = key.trim();
        (!key.is_empty()).then(|| AdminKey(KeyDigest::of(key.as_bytes())))
    }

    /// Whether the request's `authorization` header carries this key.
    fn admits(&self, headers: &HeaderMap) -> bool {
        match Caller::from_authorization(headers.get(header::AUTHORIZATION).map(|v| v.as_bytes())) {
            Caller::Presented(key) => KeyDigest::of(key.expose().as_bytes()) == self.0,
            _ => false,
        }
    }
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(***)")
    }
}

/// Serves the admin endpoints on `listener` until `shutdown` completes,
/// each connection held to `acceptor`'s limits.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    metrics: PrometheusHandle,
    health: Health,
    reloader: Option<Arc<Reloader>>,
    key: Option<AdminKey>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route(METRICS_PATH, get(render))
        .route(HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(READYZ_PATH, get(ready))
        .route(RELOAD_PATH, axum::routing::post(reload))
        .with_state(Admin {
            metrics,
            health,
            reloader,
            key,
        });
    let service = TowerToHyperService::new(app);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Some(permit) = acceptor.admit(peer) {
                        connections.spawn(acceptor.clone().serve(
                            stream,
                            peer,
                            service.clone(),
                            graceful.watcher(),
                            permit,
                        ));
                    }
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed on the admin port");
                    tokio::time::sleep(super::ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
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

async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let Some(key) = admin.key else {
        return (
            StatusCode::FORBIDDEN,
            "POST /-/reload is off: start llmgate with an admin key (LLMGATE_ADMIN_KEY or \
             --admin-key) and send it as `authorization: Bearer <key>`; SIGHUP and edits \
             to the routing file reload without one\n",
        )
            .into_response();
    };
    if !key.admits(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "POST /-/reload needs the admin key as `authorization: Bearer <key>`\n",
        )
            .into_response();
    }
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
