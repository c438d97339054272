//! HTTP/1.1 connections to plain-`http://` endpoints, driven inside the
//! task of the call that uses them.
//!
//! A pooled client (hyper-util's) runs every connection as a task of its
//! own: each chunk of an answer is read there and handed to the call's task
//! through a channel, one cross-task (often cross-thread) wake-up per token.
//! Here the connection travels with the call instead: the call's stream
//! polls the connection and then its body, so a token read off the socket
//! is forwarded in the same poll, on the same thread. Between calls an idle
//! connection waits in a pool per endpoint, polled by nobody; it is checked
//! before reuse, and a request it could not even send is sent again on a
//! fresh connection.
//!
//! Only streamed answers over plain HTTP/1.1 go this way: in-cluster
//! engines (vLLM, SGLang, Ollama) speak it, and they are where tokens flow
//! fastest. Unary calls, and TLS and HTTP/2 upstreams (cloud APIs), keep
//! the pooled client (see `HttpClient::request` for the measurement).
//!
//! Dropping a call's body drops its connection: the upstream sees the
//! socket close at once and stops generating.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One HTTP/1.1 connection: the handle that sends requests, and the
/// connection itself, which must be polled for anything to move.
struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    driver: Pin<Box<http1::Connection<TokioIo<TcpStream>, Full<Bytes>>>>,
    /// The connection ended (closed or failed); it is never reused.
    ended: bool,
}

/// A connection waiting in the pool, and since when.
struct Idle {
    connection: Connection,
    since: Instant,
}

/// Idle connections per endpoint (`host:port`).
#[derive(Default)]
pub(crate) struct InlinePool {
    idle: Mutex<Waiting>,
}

/// What the pool's lock guards.
#[derive(Default)]
struct Waiting {
    /// Per endpoint, oldest first: a call takes the most recently used.
    by_endpoint: HashMap<Authority, Vec<Idle>>,
    /// When every idle connection was last checked for a close by its
    /// server.
    swept: Option<Instant>,
}

/// Why a request got no answer: the stage and hyper's or the socket's cause.
#[derive(Debug)]
pub(crate) struct InlineError {
    stage: &'static str,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

/// An answer's body read off a connection this body drives itself; the
/// connection goes back to the pool once the body ended cleanly.
pub(crate) struct InlineBody {
    body: Incoming,
    /// The connection, until the body ends.
    connection: Option<Connection>,
    /// Where the connection goes back to.
    pool: Weak<InlinePool>,
    key: Authority,
}

/// How long an idle connection is kept: as long as the pooled client keeps
/// its own. Servers often close sooner (uvicorn after 5 s), which the check
/// before reuse notices.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many idle connections per endpoint: the peak of calls in
/// flight to one endpoint rarely passes it, and past it a connection is
/// cheaper to close than to keep.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

/// How often idle connections are checked for a close by their server, so
/// the sockets of connections nobody takes do not linger half-closed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

// === impl InlinePool ===

impl InlinePool {
    /// Sends `request` (its URI absolute, `http://`) and answers with the
    /// response head; the body drives the connection as it is read.
    pub(crate) async fn request(
        self: &Arc<Self>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<InlineBody>, InlineError> {
        let (key, mut request) = origin_form(request)?;
        // A pooled connection the server closed meanwhile refuses the
        // request before sending any of it; then a fresh one is dialled.
        let mut fresh = false;
        loop {
            let mut connection = match self.take(&key) {
                Some(connection) => connection,
                None => {
                    fresh = true;
                    dial(&key).await?
                }
            };
            let sent = connection.sender.try_send_request(request);
            let mut sent = std::pin::pin!(sent);
            let result = poll_fn(|cx| {
                connection.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = InlineBody {
                        body,
                        connection: Some(connection),
                        pool: Arc::downgrade(self),
                        key,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => {
                        return Err(InlineError::new(
                            "sending the request",
                            Box::new(err.into_error()),
                        ));
                    }
                },
            }
        }
    }

    /// A pooled connection to `key` that still looks usable.
    fn take(&self, key: &Authority) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = idle.by_endpoint.get_mut(key)?;
        while let Some(Idle {
            mut connection,
            since,
        }) = waiting.pop()
        {
            if since.elapsed() < IDLE_TIMEOUT && connection.still_open() {
                return Some(connection);
            }
        }
        None
    }

    /// Puts `connection` back for the next call to `key`. Connections idle
    /// past [`IDLE_TIMEOUT`] are let go here; the ones their server closed
    /// are found when a call would take them, and by a sweep at most every
    /// [`SWEEP_EVERY`] (checking each on every call would cost a poll per
    /// idle connection per call).
    fn put(&self, key: Authority, mut connection: Connection) {
        if !connection.still_open() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.swept.is_none_or(|at| now - at >= SWEEP_EVERY) {
            idle.swept = Some(now);
            for waiting in idle.by_endpoint.values_mut() {
                waiting.retain_mut(|idle| {
                    now - idle.since < IDLE_TIMEOUT && idle.connection.still_open()
                });
            }
            idle.by_endpoint.retain(|_, waiting| !waiting.is_empty());
        }
        let waiting = idle.by_endpoint.entry(key).or_default();
        let expired = waiting
            .iter()
            .take_while(|idle| now - idle.since >= IDLE_TIMEOUT)
            .count();
        waiting.drain(..expired);
        if waiting.len() < MAX_IDLE_PER_ENDPOINT {
            waiting.push(Idle {
                connection,
                since: now,
            });
        }
    }
}

/// Opens a connection to `key` (`host:port`), within the connect limit.
async fn dial(key: &Authority) -> Result<Connection, InlineError> {
    let port = key.port_u16().unwrap_or(80);
    let address = format!("{}:{port}", key.host());
    let stream = tokio::time::timeout(super::http::CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .map_err(|_| {
            InlineError::new(
                "tcp connect error",
                format!(
                    "no connection within {}s",
                    super::http::CONNECT_TIMEOUT.as_secs()
                )
                .into(),
            )
        })?
        .map_err(|err| InlineError::new("tcp connect error", err.into()))?;
    // A token the upstream writes is read the moment it is sent, and a
    // request goes out without waiting for an acknowledgement.
    stream
        .set_nodelay(true)
        .map_err(|err| InlineError::new("tcp connect error", err.into()))?;
    let (sender, driver) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| InlineError::new("handshake", err.into()))?;
    Ok(Connection {
        sender,
        driver: Box::pin(driver),
        ended: false,
    })
}

/// The request with its URI in origin form (`/v1/chat/completions`) and a
/// `Host` header, as a server expects it on a direct connection; and the
/// `host:port` it goes to.
fn origin_form(
    request: Request<Full<Bytes>>,
) -> Result<(Authority, Request<Full<Bytes>>), InlineError> {
    let (mut parts, body) = request.into_parts();
    let Some(authority) = parts.uri.authority().cloned() else {
        return Err(InlineError::new(
            "building the request",
            format!("the URL {} has no host", parts.uri).into(),
        ));
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.uri = Uri::from(path);
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        parts.headers.entry(http::header::HOST).or_insert(host);
    }
    Ok((authority, Request::from_parts(parts, body)))
}

// === impl Connection ===

impl Connection {
    /// Lets the connection read and write what it can; it remembers when
    /// it ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether the connection can take another request: not closed by the
    /// server, nothing left unread, ready to send. Polled without a waker:
    /// an idle connection wakes nobody.
    fn still_open(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.ended && self.sender.is_ready()
    }
}

// === impl InlineBody ===

impl Body for InlineBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(connection) = &mut this.connection {
            connection.drive(cx);
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        match &frame {
            // The whole answer is read: the connection can serve another.
            Poll::Ready(None) => {
                if let (Some(connection), Some(pool)) =
                    (this.connection.take(), this.pool.upgrade())
                {
                    pool.put(this.key.clone(), connection);
                }
            }
            // A broken answer leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => this.connection = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// === impl InlineError ===

impl InlineError {
    fn new(stage: &'static str, cause: Box<dyn std::error::Error + Send + Sync>) -> Self {
        InlineError { stage, cause }
    }
}

impl std::fmt::Display for InlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.stage)
    }
}

impl std::error::Error for InlineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.cause)
    }
}
