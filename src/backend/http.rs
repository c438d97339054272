//! The HTTP client every HTTP upstream shares.
//!
//! One pooled client for the whole gateway: connections to each upstream
//! server are kept alive and reused across calls and across routing-table
//! reloads. TCP_NODELAY is set so a token written by the upstream is read
//! the moment it is sent, and TLS (rustls, web PKI roots) is there for cloud
//! providers; plain `http://` needs no TLS at all.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client type upstream adapters send requests with.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long to wait for a TCP connection before calling an endpoint down.
/// Short on purpose: a healthy server in the same cluster accepts in
/// milliseconds, and the caller's deadline is better spent elsewhere.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the shared client.
pub fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https)
}
