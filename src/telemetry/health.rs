//! Whether the gateway should be sent calls: the standard gRPC health
//! service (`grpc.health.v1.Health`) and the readiness flag behind
//! `GET /readyz`, kept in step.
//!
//! Both say "serving" once a routing table is loaded and "not serving" the
//! moment shutdown begins, while calls in flight still drain: load
//! balancers and Kubernetes stop sending new calls before the listener
//! closes, instead of finding out from refused connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::proto::llm_service_server::SERVICE_NAME;

/// The gRPC health service as served on the gRPC port.
pub(crate) type HealthService =
    tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>;

/// The gateway's health, reported through gRPC and `/readyz`.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// Statuses for the gRPC health service.
    reporter: HealthReporter,
    /// Whether `/readyz` answers 200.
    ready: Arc<AtomicBool>,
}

impl Health {
    /// A health state that is not ready yet, and the gRPC service that
    /// reports it. (tonic's `health_reporter()` would start the whole
    /// server as SERVING before any table is loaded.)
    pub(crate) async fn new() -> (Self, HealthService) {
        let reporter = HealthReporter::new();
        let service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(reporter.clone()),
        );
        let health = Health {
            reporter,
            ready: Arc::new(AtomicBool::new(false)),
        };
        // The whole server ("") is not serving until a table is loaded.
        health.set(ServingStatus::NotServing).await;
        (health, service)
    }

    /// A routing table is loaded: calls can be served.
    pub(crate) async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
        self.ready.store(true, Ordering::Release);
    }

    /// Shutdown began: take no new calls (those in flight drain).
    pub(crate) async fn shutting_down(&self) {
        self.ready.store(false, Ordering::Release);
        self.set(ServingStatus::NotServing).await;
    }

    /// Whether new calls are welcome.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn set(&self, status: ServingStatus) {
        // "" is the whole server (what Kubernetes' gRPC probe asks by
        // default); the service name is what clients of llm.v1 ask.
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }
}
