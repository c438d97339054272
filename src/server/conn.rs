//! One client connection, from accept to close: the TLS handshake (with a
//! client certificate, under mTLS), then HTTP/2 (or HTTP/1.1) with limits
//! that keep an idle or slow client from holding resources forever.
//!
//! - The handshake runs in the connection's own task, within
//!   `handshake_timeout`, so a slow or silent client delays nobody else's
//!   accept; a plain-text connection that sends nothing in that time is
//!   closed too.
//! - A client without a valid certificate fails the handshake: it never
//!   reaches HTTP, let alone a model.
//! - HTTP/2 pings find dead peers (`keepalive_interval`, closed after
//!   `keepalive_timeout` without an answer), streams per connection are
//!   capped (`max_streams_per_connection`), and streams a client resets
//!   before they are served are bounded (the "rapid reset" flood).
//! - HTTP/1.1 headers must arrive within the handshake time as well.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConnectionLimits};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        let limits = config.limits.connection;
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
        Ok(Acceptor {
            tls,
            limits,
            builder: Arc::new(builder),
        })
    }

    /// Whether the listener serves TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves one accepted connection until it closes, or until the
    /// server's graceful shutdown (through `watcher`) has drained it.
    pub(crate) async fn serve<S, B>(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        service: S,
        watcher: Watcher,
    ) where
        S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        TokioExecutor: HttpServerConnExec<S::Future, B>,
    {
        // Tokens must leave the moment they are produced.
        let _ = stream.set_nodelay(true);
        let handshake = self.limits.handshake_timeout;
        let result = match &self.tls {
            Some(tls) => match tokio::time::timeout(handshake, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = self
                        .builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(connection).await
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
                // `readable()` may wake spuriously; a peeked byte is proof.
                let mut first = [0u8; 1];
                if tokio::time::timeout(handshake, stream.peek(&mut first))
                    .await
                    .is_err()
                {
                    tracing::debug!(%peer, "connection sent nothing in time; closed");
                    return;
                }
                let connection = self
                    .builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                watcher.watch(connection).await
            }
        };
        if let Err(err) = result {
            tracing::debug!(%peer, %err, "connection ended with an error");
        }
    }
}
