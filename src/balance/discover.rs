//! Where a pool's endpoints come from: a static list (inserted once), or a
//! DNS name resolved
//! every few seconds (a Kubernetes headless Service gives one address per
//! ready pod), with only the differences sent, so calls in flight on
//! endpoints that stay are never disturbed.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Resolves a host name to addresses. A trait so tests can move a name's
/// answer around without a DNS server.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, each with `port`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Re-resolves `host` every `interval` and calls `apply` with the addresses
/// that appeared and those that went away. Ends when `apply` says the pool
/// is gone. A failed resolution keeps the endpoints it had: a DNS hiccup
/// must not empty a pool.
pub(crate) async fn watch_dns(
    resolver: Arc<dyn Resolve>,
    host: String,
    port: u16,
    interval: Duration,
    mut apply: impl FnMut(Vec<SocketAddr>, Vec<SocketAddr>) -> bool,
) {
    let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let found: BTreeSet<SocketAddr> = match resolver.resolve(&host, port).await {
            Ok(addrs) => addrs.into_iter().collect(),
            Err(err) => {
                tracing::warn!(%host, %err, "DNS resolution failed; keeping the endpoints we have");
                continue;
            }
        };
        if found.is_empty() {
            tracing::warn!(%host, "DNS name has no addresses; keeping the endpoints we have");
            continue;
        }
        let added = found.difference(&current).copied().collect();
        let removed = current.difference(&found).copied().collect();
        current = found;
        if !apply(added, removed) {
            return;
        }
    }
}
