//! Operating the gateway: metrics, health and access logs (the admin
//! listener that exposes them is the server's, in `server/admin.rs`).
//!
//! - [`metrics`]: every metric name, its help and buckets, in one place;
//!   the process-wide Prometheus recorder; recording helpers for the
//!   balancer, retries and reloads.
//! - [`call`]: the record one call leaves behind (metrics and one access
//!   log line), used by the `Observe` layer of the stack.
//! - [`health`]: the gRPC health service and the readiness flag, both
//!   flipped when shutdown begins.
//! - [`logging`]: the tracing subscriber, human or JSON.

pub(crate) mod call;
pub(crate) mod health;
pub mod logging;
pub(crate) mod metrics;

/// The header (and gRPC metadata key) carrying a call's request id: read
/// from the caller, sent to the upstream, returned to the caller.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// The header (gRPC metadata) a caller whose key has `priority_header:
/// true` sets to `high`, `normal` or `low` to pick its class in a route's
/// queue.
pub(crate) const PRIORITY: &str = "x-llmgate-priority";
