//! One client connection, from accept to close: the TLS handshake (with a
//! client certificate, under mTLS), then HTTP/2 (or HTTP/1.1) with limits
//! that keep an idle or slow client from holding resources forever.
//!
//! - The handshake runs in the connection's own task, so a slow or silent
//!   client delays nobody else's accept. One timer covers everything from
//!   accept to the first complete request head: the TLS handshake, the
//!   HTTP/2 preface and SETTINGS, and the first request's headers. A
//!   client that opens a connection and then stalls (slowloris, or
//!   `PRI * HTTP/2.0` and silence) is closed after `handshake_timeout`.
//! - Connections are capped per listener (`limits.max_connections`): past the
//!   cap a new connection is closed at once, so a flood of idle sockets
//!   cannot take every file descriptor.
//! - A client without a valid certificate fails the handshake: it never
//!   reaches HTTP, let alone a model.
//! - HTTP/2 pings find dead peers (`keepalive_interval`, closed after
//!   `keepalive_timeout` without an answer), streams per connection are
//!   capped (`max_streams_per_connection`), and streams a client resets
//!   before they are served are bounded (the "rapid reset" flood).
//! - HTTP/1.1 headers must arrive within the handshake time as well.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConnectionLimits};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What serving one request is, as hyper holds it: see [`FirstRequest`].
type ServedFuture<B, E> = BoxFuture<'static, Result<http::Response<B>, E>>;

/// Streams a client may reset before the server handles them, per
/// connection, before the connection is closed: hyper's default, set here
/// so the protection is visible where the other limits are.
const MAX_PENDING_RESETS: usize = 20;

/// How new connections are taken on.
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// TLS, when the listener serves it.
    tls: Option<TlsAcceptor>,
    /// The limits each connection is held to.
    limits: ConnectionLimits,
    /// HTTP settings shared by every connection.
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Room for more connections on this listener.
    connections: Arc<Semaphore>,
}

/// Marks the connection as past its handshake once the first request head
/// arrived, then serves as `S` does.
#[derive(Clone)]
struct FirstRequest<S> {
    inner: S,
    /// Set by the first request.
    seen: Arc<AtomicBool>,
}

// === impl Acceptor ===

impl Acceptor {
    /// The acceptor for `config`'s listener; an error when its TLS files
    /// cannot be used (the checker already tried them, but the files are
    /// read once, and this keeps the server honest on its own).
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        let tls = match &config.listen.tls {
            Some(tls) => Some(TlsAcceptor::from(crate::tls::server_config(
                tls.cert.contents(),
                tls.key.contents(),
                tls.client_ca.as_ref().map(|ca| ca.contents()),
            )?)),
            None => None,
        };
        Ok(Self::with_tls(tls, config.limits.connection))
    }

    /// A plain-text acceptor held to `limits`, for the admin port.
    pub(crate) fn plain(limits: ConnectionLimits) -> Self {
        Self::with_tls(None, limits)
    }

    /// A fresh acceptor with its own connection cap; the HTTP settings are
    /// shared.
    pub(crate) fn for_another_listener(&self) -> Self {
        Acceptor {
            connections: Arc::new(Semaphore::new(self.limits.max_connections as usize)),
            ..self.clone()
        }
    }

    fn with_tls(tls: Option<TlsAcceptor>, limits: ConnectionLimits) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.handshake_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.keepalive_interval)
            .keep_alive_timeout(limits.keepalive_timeout)
            .max_concurrent_streams(limits.max_streams)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS);
        Acceptor {
            tls,
            limits,
            builder: Arc::new(builder),
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
        }
    }

    /// Room for the connection from `peer`, held until it closes; `None`
    /// (and the connection is to be dropped) when the listener is full.
    pub(crate) fn admit(&self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        let permit = self.connections.clone().try_acquire_owned().ok();
        if permit.is_none() {
            tracing::warn!(
                %peer,
                limit = self.limits.max_connections,
                "connection limit reached (limits.max_connections); connection closed"
            );
        }
        permit
    }

    /// Whether the listener serves TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves one accepted connection until it closes, or until the
    /// server's graceful shutdown (through `watcher`) has drained it.
    /// `permit` is the connection's room under the cap, given back when it
    /// closes.
    pub(crate) async fn serve<S, B>(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        service: S,
        watcher: Watcher,
        permit: OwnedSemaphorePermit,
    ) where
        S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        TokioExecutor: HttpServerConnExec<ServedFuture<B, S::Error>, B>,
    {
        let _permit = permit;
        // Tokens must leave the moment they are produced.
        let _ = stream.set_nodelay(true);
        let handshake_by = Instant::now() + self.limits.handshake_timeout;
        let seen = Arc::new(AtomicBool::new(false));
        let service = FirstRequest {
            inner: service,
            seen: seen.clone(),
        };
        let result = match &self.tls {
            Some(tls) => match tokio::time::timeout_at(handshake_by, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = self
                        .builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    until_first_request(watcher.watch(connection), handshake_by, &seen, peer).await
                }
                Ok(Err(err)) => {
                    // A client without a valid certificate ends here.
                    tracing::debug!(%peer, %err, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished in time; closed");
                    return;
                }
            },
            None => {
                let connection = self
                    .builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                until_first_request(watcher.watch(connection), handshake_by, &seen, peer).await
            }
        };
        if let Err(err) = result {
            tracing::debug!(%peer, %err, "connection ended with an error");
        }
    }
}

/// Drives `connection`, closing it at `handshake_by` unless its first
/// request head arrived by then.
async fn until_first_request<F>(
    connection: F,
    handshake_by: Instant,
    seen: &AtomicBool,
    peer: SocketAddr,
) -> Result<(), BoxError>
where
    F: Future<Output = Result<(), BoxError>>,
{
    tokio::pin!(connection);
    tokio::select! {
        result = &mut connection => return result,
        () = tokio::time::sleep_until(handshake_by) => {}
    }
    if !seen.load(Ordering::Acquire) {
        tracing::debug!(%peer, "no request head within handshake_timeout; closed");
        return Ok(());
    }
    connection.await
}

// === impl FirstRequest ===

impl<S, R> hyper::service::Service<R> for FirstRequest<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Boxed: hyper runs each HTTP/2 stream as a task as large as this
    /// future for as long as the stream lasts, answer body included, and
    /// the routes' future with its request is several hundred bytes. A box
    /// that lives only until the answer's head keeps them off every open
    /// stream.
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn call(&self, req: R) -> Self::Future {
        self.seen.store(true, Ordering::Release);
        Box::pin(self.inner.call(req))
    }
}
