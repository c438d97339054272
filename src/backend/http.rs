//! The HTTP client every HTTP upstream shares.
//!
//! One pooled client for the whole gateway: connections to each upstream
//! server are kept alive and reused across calls and across routing-table
//! reloads. TCP_NODELAY is set so a token written by the upstream is read
//! the moment it is sent, and TLS (rustls, web PKI roots) is there for cloud
//! providers; plain `http://` needs no TLS at all. Certificates are always
//! verified.
//!
//! An upstream behind a private CA (`tls: { ca: path }`) gets a client of
//! its own that trusts that CA only ([`client_trusting`]); every other
//! upstream keeps sharing the one default client and its connection pool.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::inline::{InlineBody, InlineError, InlinePool};

/// What upstream adapters send requests with: plain `http://` endpoints
/// over connections each call drives itself ([`InlinePool`]), TLS and
/// HTTP/2 through hyper-util's pooled client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    pooled: PooledClient,
    inline: Arc<InlinePool>,
}

/// hyper-util's client: a task per connection, TLS and HTTP/2 by ALPN.
type PooledClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An upstream's answer body, from whichever client carried it.
pub(crate) enum UpstreamBody {
    /// Read through a pooled connection's task.
    Pooled(Incoming),
    /// Read off a connection this body drives.
    Inline(InlineBody),
}

/// A failure of whichever client carried a request: hyper-util's pooled
/// client (`P`, its error type) or a connection the call drives.
#[derive(Debug)]
pub(crate) enum ClientError<P> {
    /// From hyper-util's pooled client.
    Pooled(P),
    /// From a connection the call drives.
    Inline(InlineError),
}

/// Why a request got no answer.
pub(crate) type SendError = ClientError<hyper_util::client::legacy::Error>;

/// Why an answer's body broke off.
pub(crate) type BodyError = ClientError<hyper::Error>;

/// How long to wait for a TCP connection before calling an endpoint down.
/// Short on purpose: a healthy server in the same cluster accepts in
/// milliseconds, and the caller's deadline is better spent elsewhere.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the shared client, which trusts the web PKI roots.
pub(crate) fn client() -> HttpClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp());
    pooled(https)
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// Sends `request` (absolute URI) and answers with the response head;
    /// its body is read as it comes. A plain-HTTP endpoint is called on a
    /// connection the caller's task drives ([`InlinePool`]): in A/B runs
    /// of `cargo bench --bench proxy` that halved the gateway's CPU per
    /// streamed token (7-8 µs against 11-12 µs on hyper-util's pooled
    /// client), and with the gateway's own HTTP/1.1 wire it also cut the
    /// CPU of a unary call by about a tenth (60 against 68 µs, wrk at
    /// c=64). TLS and HTTP/2 endpoints (cloud APIs) keep the pooled client.
    pub(crate) async fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        if request.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            let response = self
                .inline
                .request(request)
                .await
                .map_err(ClientError::Inline)?;
            Ok(response.map(UpstreamBody::Inline))
        } else {
            let response = self
                .pooled
                .request(request)
                .await
                .map_err(ClientError::Pooled)?;
            Ok(response.map(UpstreamBody::Pooled))
        }
    }
}

/// A client that trusts only the CA certificates in `ca_pem`, for an
/// upstream whose servers a private CA certified. The error says what is
/// wrong with the file.
pub(crate) fn client_trusting(ca_pem: &[u8]) -> Result<HttpClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(crate::tls::client_config_trusting(ca_pem)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp());
    Ok(pooled(https))
}

/// The TCP side every client shares: no Nagle delay, a short connect limit.
fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

fn pooled(https: HttpsConnector<HttpConnector>) -> HttpClient {
    HttpClient {
        pooled: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https),
        inline: Arc::default(),
    }
}

/// The text of a `GET` of `url`, up to `limit` bytes: how the balancer
/// reads an engine's metrics page. The error says what went wrong.
pub(crate) fn fetch_text(
    client: &HttpClient,
    url: http::Uri,
    limit: usize,
) -> impl Future<Output = Result<String, String>> + Send + use<> {
    use http_body_util::BodyExt;
    let response = client.pooled.get(url);
    async move {
        let response = response.await.map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the page is not UTF-8".to_string())
    }
}

/// Whether the server at `url` answers a `GET` with a 2xx: the request a
/// health check sends. How often, and how long to wait, is the balancer's
/// business.
pub(crate) fn probe(
    client: &HttpClient,
    url: http::Uri,
) -> impl Future<Output = bool> + Send + use<> {
    let response = client.pooled.get(url);
    async move { matches!(response.await, Ok(response) if response.status().is_success()) }
}

// === impl UpstreamBody ===

impl UpstreamBody {
    /// The answer is complete but its body has not ended yet (the chunked
    /// terminator after `[DONE]` is still on its way): let the rest be read
    /// without the caller, so the connection can serve another call. The
    /// pooled client's connection task does this by itself.
    pub(crate) fn finish_later(&mut self) {
        if let UpstreamBody::Inline(body) = self {
            body.finish_later();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::Pooled(body) => {
                Pin::new(body).poll_frame(cx).map_err(ClientError::Pooled)
            }
            UpstreamBody::Inline(body) => {
                Pin::new(body).poll_frame(cx).map_err(ClientError::Inline)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Pooled(body) => body.is_end_stream(),
            UpstreamBody::Inline(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Pooled(body) => body.size_hint(),
            UpstreamBody::Inline(body) => body.size_hint(),
        }
    }
}

// === impl ClientError ===

impl<P: std::fmt::Display> std::fmt::Display for ClientError<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Pooled(err) => err.fmt(f),
            ClientError::Inline(err) => err.fmt(f),
        }
    }
}

impl<P: std::error::Error> std::error::Error for ClientError<P> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Pooled(err) => err.source(),
            ClientError::Inline(err) => err.source(),
        }
    }
}
