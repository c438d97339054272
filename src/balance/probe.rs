//! Active health checks: a background loop per endpoint that asks the
//! server directly whether it is well, so an endpoint that fails can be
//! taken out before a caller's call finds out, and one that recovers comes
//! back without waiting for traffic.
//!
//! The loop (when, how often, how many passes or failures in a row flip the
//! verdict) is the balancer's; the request itself is the backend's
//! ([`crate::backend::http::probe`]).

use std::sync::Weak;

use super::health::EndpointState;
use crate::backend::http::{self, HttpClient};
use crate::config::HealthCheck;

/// Probes one endpoint until it is gone, flipping its health verdict after
/// `unhealthy_after` failures or `healthy_after` passes in a row.
pub(crate) async fn probe(state: Weak<EndpointState>, client: HttpClient, check: HealthCheck) {
    let Some(url) = state.upgrade().and_then(|s| {
        let base = s.url.to_string();
        format!("{}{}", base.trim_end_matches('/'), check.path)
            .parse::<::http::Uri>()
            .ok()
    }) else {
        return;
    };
    let Some(mut gone) = state.upgrade().map(|s| s.gone()) else {
        return;
    };
    let (mut passes, mut failures) = (0u32, 0u32);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let passed = tokio::select! {
            // The endpoint left the pool (or its table was replaced).
            _ = gone.changed() => return,
            passed = async {
                ticks.tick().await;
                matches!(
                    tokio::time::timeout(check.timeout, http::probe(&client, url.clone())).await,
                    Ok(true)
                )
            } => passed,
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        if passed {
            passes += 1;
            failures = 0;
            if !state.is_healthy() && passes >= check.healthy_after {
                tracing::info!(endpoint = %state.url, "health check passes again; endpoint back in");
                state.set_healthy(true);
            }
        } else {
            failures += 1;
            passes = 0;
            if state.is_healthy() && failures >= check.unhealthy_after {
                tracing::warn!(endpoint = %state.url, path = %check.path, "health check failing; endpoint out");
                state.set_healthy(false);
            }
        }
    }
}
