//! HTTP/1.1 connections to plain-`http://` endpoints, driven inside the
//! task of the call that uses them.
//!
//! A pooled client (hyper-util's) runs every connection as a task of its
//! own: each chunk of an answer is read there and handed to the call's task
//! through a channel, one cross-task (often cross-thread) wake-up per token.
//! Here the connection travels with the call instead: the call's stream
//! reads the socket itself and cuts the body out of what it read
//! ([`super::h1`]), so a token read off the socket is forwarded in the same
//! poll, on the same thread, and a connection holds nothing but its socket
//! and a small read buffer. Between calls an idle connection waits in a
//! pool per endpoint, polled by nobody; it is checked before reuse, and a
//! request it got no answer to at all is sent again on a fresh connection.
//!
//! Every call to a plain-`http://` endpoint goes this way: in-cluster
//! engines (vLLM, SGLang, Ollama) speak HTTP/1.1, and they are where
//! tokens flow fastest. TLS and HTTP/2 upstreams (cloud APIs) keep the
//! pooled client (see `HttpClient::request` for the measurements).
//!
//! Dropping a call's body drops its connection: the upstream sees the
//! socket close at once and stops generating.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::h1::{self, BodyDecoder, Decoded, Head};

/// One HTTP/1.1 connection: its socket, and what was read off it and not
/// yet handed out.
struct Connection {
    stream: TcpStream,
    read: BytesMut,
    /// How much room the next top-up of `read` makes: [`READ_CHUNK`],
    /// doubled after every read that filled the room it had, up to
    /// [`MAX_READ`], so a large answer is read in few system calls while a
    /// stream of small events keeps a small buffer.
    room: usize,
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
    /// Per endpoint and thread, oldest first: a call takes the most
    /// recently used. A socket's readiness is polled by the runtime it was
    /// opened on; a call on another thread's runtime (the gateway serves
    /// on a runtime per thread) would be woken across threads on every
    /// read, so each thread keeps its own idle connections.
    by_endpoint: HashMap<(Authority, ThreadId), Vec<Idle>>,
    /// When every idle connection was last checked for a close by its
    /// server.
    swept: Option<Instant>,
}

/// Why a request got no answer: the stage and the wire's or the socket's
/// cause.
#[derive(Debug)]
pub(crate) struct InlineError {
    stage: &'static str,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

/// An answer's body read off a connection this body drives itself; the
/// connection goes back to the pool once the body ended cleanly.
pub(crate) struct InlineBody {
    /// The connection, until the body ends or breaks.
    connection: Option<Connection>,
    /// Cuts the body out of the connection's bytes.
    decoder: BodyDecoder,
    /// The connection may serve another call after this body.
    keep_alive: bool,
    /// Where the connection goes back to.
    pool: Weak<InlinePool>,
    key: Authority,
}

/// A connection's read buffer starts this large and is topped up by as
/// much when less than [`MIN_SPARE`] is free: an SSE event of a token is a
/// few hundred bytes, and with 10,000 streams open every byte here counts
/// ten thousand times.
const READ_CHUNK: usize = 1024;

/// Below this much free space a read buffer is topped up before a read.
const MIN_SPARE: usize = 256;

/// The most room one top-up of a read buffer makes.
const MAX_READ: usize = 64 * 1024;

/// How long the end of a finished answer's body is waited for after its
/// call is done with it: the chunked terminator follows `[DONE]` at once,
/// and a connection kept is a TCP handshake saved on the next call.
const FINISH_WITHIN: Duration = Duration::from_secs(1);

/// The most bytes read after a finished answer before its connection is
/// closed instead: a server still talking is not one to reuse.
const FINISH_MAX_BYTES: usize = 64 * 1024;

/// How long an answer is waited for after sending a request failed: the
/// server has gone, and only what it sent before going is wanted.
const ANSWER_AFTER_BROKEN_SEND: Duration = Duration::from_secs(1);

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
        let (parts, body) = request.into_parts();
        let Some(key) = parts.uri.authority().cloned() else {
            return Err(InlineError::new(
                "building the request",
                format!("the URL {} has no host", parts.uri).into(),
            ));
        };
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
        let head = Bytes::from(h1::encode_request(
            &parts.method,
            path,
            key.as_str(),
            &parts.headers,
            body.len(),
        ));
        // A pooled connection that fails before any byte of an answer was
        // almost always closed by its server while idle (a keep-alive
        // timeout, a restart), so the request goes again, once, on a fresh
        // connection. A server that died mid-request on a reused
        // connection thus sees it twice: the work is redone, nothing else.
        let mut pooled = self.take(&key);
        let (connection, head) = loop {
            let reused = pooled.is_some();
            let mut connection = match pooled.take() {
                Some(connection) => connection,
                None => dial(&key).await?,
            };
            let answered = match connection.send(head.clone(), body.clone()).await {
                Ok(()) => connection.read_head().await,
                Err(err) => connection.answer_before_close(err).await,
            };
            match answered {
                Ok(head) => break (connection, head),
                Err(_) if reused && connection.read.is_empty() => continue,
                Err(err) => return Err(err),
            }
        };
        let Head {
            status,
            version,
            headers,
            body,
            keep_alive,
        } = head;
        let mut response = Response::new(InlineBody {
            connection: Some(connection),
            decoder: body,
            keep_alive,
            pool: Arc::downgrade(self),
            key,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// A pooled connection to `key` that still looks usable.
    fn take(&self, key: &Authority) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = idle
            .by_endpoint
            .get_mut(&(key.clone(), std::thread::current().id()))?;
        while let Some(Idle { connection, since }) = waiting.pop() {
            if since.elapsed() < IDLE_TIMEOUT && connection.still_open() {
                return Some(connection);
            }
        }
        None
    }

    /// Puts `connection` back for the next call to `key`. Connections idle
    /// past [`IDLE_TIMEOUT`] are let go here; the ones their server closed
    /// are found when a call would take them, and by a sweep at most every
    /// [`SWEEP_EVERY`] (checking each on every call would cost a syscall
    /// per idle connection per call).
    fn put(&self, key: Authority, mut connection: Connection) {
        if !connection.read.is_empty() || !connection.still_open() {
            return;
        }
        // An idle connection keeps no buffer, and the next answer's starts
        // small again.
        connection.room = READ_CHUNK;
        connection.read = BytesMut::new();
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.swept.is_none_or(|at| now - at >= SWEEP_EVERY) {
            idle.swept = Some(now);
            for waiting in idle.by_endpoint.values_mut() {
                waiting
                    .retain(|idle| now - idle.since < IDLE_TIMEOUT && idle.connection.still_open());
            }
            idle.by_endpoint.retain(|_, waiting| !waiting.is_empty());
        }
        let waiting = idle
            .by_endpoint
            .entry((key, std::thread::current().id()))
            .or_default();
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

#[cfg(test)]
impl InlinePool {
    /// Idle connections to `key` kept for this thread.
    fn idle(&self, key: &Authority) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.by_endpoint
            .get(&(key.clone(), std::thread::current().id()))
            .map_or(0, Vec::len)
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
    Ok(Connection {
        stream,
        read: BytesMut::new(),
        room: READ_CHUNK,
    })
}

// === impl Connection ===

impl Connection {
    /// Writes a request's head and body, in one write when the socket
    /// takes it.
    async fn send(&mut self, head: Bytes, body: Bytes) -> io::Result<()> {
        let mut request = head.chain(body);
        self.stream.write_all_buf(&mut request).await
    }

    /// What a server that broke off reading the request (`failed`) said
    /// before it closed. A server may refuse a request before reading all
    /// of it (413 for a body too large) and close: its answer, when it
    /// arrived before the close, says more than a broken pipe. The answer
    /// is read as any other, then the connection is not reused.
    async fn answer_before_close(&mut self, failed: io::Error) -> Result<Head, InlineError> {
        match tokio::time::timeout(ANSWER_AFTER_BROKEN_SEND, self.read_head()).await {
            Ok(Ok(mut head)) => {
                head.keep_alive = false;
                Ok(head)
            }
            Ok(Err(_)) | Err(_) => Err(InlineError::new("sending the request", failed.into())),
        }
    }

    /// Reads until a whole response head has arrived, and parses it.
    async fn read_head(&mut self) -> Result<Head, InlineError> {
        let stage = "reading the answer's head";
        loop {
            if let Some(head) =
                h1::parse_head(&mut self.read).map_err(|err| InlineError::new(stage, err.into()))?
            {
                return Ok(head);
            }
            let read = poll_fn(|cx| self.poll_fill(cx))
                .await
                .map_err(|err| InlineError::new(stage, err.into()))?;
            if read == 0 {
                return Err(InlineError::new(
                    stage,
                    "the connection closed before an answer".into(),
                ));
            }
        }
    }

    /// Reads what the socket has into the buffer: the number of bytes, 0
    /// when the server closed the connection.
    ///
    /// A connection reading small pieces holds no buffer while it waits
    /// with nothing half-read: a stream between two tokens keeps only its
    /// socket, and the buffer (a kilobyte, ten thousand times over with
    /// that many streams open) is taken again when the socket has
    /// something. A connection whose reads grew its buffer keeps it until
    /// its answer ends: freeing and taking tens of kilobytes on every read
    /// costs the allocator more than the bytes are worth.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.stream.poll_read_ready(cx)?.is_pending() {
            if self.read.is_empty() && self.room == READ_CHUNK {
                self.read = BytesMut::new();
            }
            return Poll::Pending;
        }
        if self.read.capacity() - self.read.len() < MIN_SPARE {
            self.read.reserve(self.room.max(self.read.len()));
        }
        let spare = self.read.capacity() - self.read.len();
        // tokio's own read, not `try_read_buf`: a read that leaves room in
        // the buffer tells tokio the socket is drained, so the next poll
        // waits for the socket instead of asking it once more (an `EAGAIN`
        // system call per token of a stream).
        let read = ready!(poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read
        ))?;
        if read == spare {
            self.room = (self.room * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(read))
    }

    /// The next piece of the body `decoder` frames: `None` at its end.
    fn poll_body(
        &mut self,
        decoder: &mut BodyDecoder,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, Box<dyn std::error::Error + Send + Sync>>> {
        loop {
            match decoder.decode(&mut self.read)? {
                Decoded::Data(data) => return Poll::Ready(Ok(Some(data))),
                Decoded::End => return Poll::Ready(Ok(None)),
                Decoded::NeedMore => {}
            }
            if ready!(self.poll_fill(cx))? == 0 {
                decoder.on_close()?;
            }
        }
    }

    /// Whether the connection can take another request: not closed by the
    /// server, nothing unread. A read that would block says so without
    /// waiting, and an idle connection wakes nobody.
    fn still_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock
        )
    }
}

// === impl InlineBody ===

impl InlineBody {
    /// Reads what is left of this body in a task of its own, for at most
    /// [`FINISH_WITHIN`] and [`FINISH_MAX_BYTES`], so its connection goes
    /// back to the pool; this body is left ended. For an answer the call
    /// has read whole: dropping a body mid-answer must close the
    /// connection instead, which stops the upstream.
    pub(crate) fn finish_later(&mut self) {
        if !self.keep_alive {
            return;
        }
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut rest = InlineBody {
            connection: Some(connection),
            decoder: std::mem::replace(&mut self.decoder, BodyDecoder::Ended),
            keep_alive: true,
            pool: self.pool.clone(),
            key: self.key.clone(),
        };
        tokio::spawn(async move {
            let mut read = 0;
            let rest_read = async {
                while let Some(Ok(frame)) = rest.frame().await {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > FINISH_MAX_BYTES {
                        return;
                    }
                }
            };
            // The body's end returned the connection; otherwise it closes.
            let _ = tokio::time::timeout(FINISH_WITHIN, rest_read).await;
        });
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = InlineError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, InlineError>>> {
        let this = &mut *self;
        let Some(connection) = &mut this.connection else {
            return Poll::Ready(None);
        };
        match ready!(connection.poll_body(&mut this.decoder, cx)) {
            Ok(Some(data)) => Poll::Ready(Some(Ok(Frame::data(data)))),
            // The whole answer is read: the connection can serve another,
            // unless the server said it would close it.
            Ok(None) => {
                if let (Some(connection), Some(pool)) =
                    (this.connection.take(), this.pool.upgrade())
                    && this.keep_alive
                {
                    pool.put(this.key.clone(), connection);
                }
                Poll::Ready(None)
            }
            // A broken answer leaves the connection unusable.
            Err(cause) => {
                this.connection = None;
                this.decoder = BodyDecoder::Ended;
                Poll::Ready(Some(Err(InlineError::new("reading the answer", cause))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_ended()
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What the test server does after answering a request.
    #[derive(Clone, Copy)]
    enum After {
        /// Waits for the next request on the same connection.
        KeepOpen,
        /// Closes the connection.
        Close,
    }

    /// A server on 127.0.0.1 answering every request with `answer` and
    /// then doing `after`; counts the connections it accepted.
    async fn server(answer: &'static str, after: After) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(read) = socket.read(&mut buf).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..read]);
                        // Every test request has the 2-byte body "{}".
                        let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        if request.len() < end + 4 + 2 {
                            continue;
                        }
                        request.drain(..end + 6);
                        if socket.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        if let After::Close = after {
                            return;
                        }
                    }
                });
            }
        });
        let key = Authority::try_from(address.to_string()).expect("authority");
        (key, accepted)
    }

    /// A POST of `{}` to `key`.
    fn post(key: &Authority) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(format!("http://{key}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    }

    /// POSTs `{}` to `key` and reads the whole answer body as text.
    async fn call(pool: &Arc<InlinePool>, key: &Authority) -> Result<String, String> {
        let response = pool
            .request(post(key))
            .await
            .map_err(|err| err.to_string())?;
        let body =
            response
                .into_body()
                .collect()
                .await
                .map_err(|err| match std::error::Error::source(&err) {
                    Some(cause) => format!("{err}: {cause}"),
                    None => err.to_string(),
                })?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }

    const CHUNKED: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                           transfer-encoding: chunked\r\n\r\n\
                           f\r\ndata: {\"a\":1}\n\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";

    #[tokio::test]
    async fn a_body_waiting_for_its_next_piece_holds_no_read_buffer() {
        let first_token = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                           f\r\ndata: {\"a\":1}\n\n\r\n";
        let (key, _) = server(first_token, After::KeepOpen).await;
        let pool = Arc::new(InlinePool::default());
        let mut body = pool
            .request(post(&key))
            .await
            .expect("answered")
            .into_body();
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            frame.data_ref().map(|d| &d[..]),
            Some(&b"data: {\"a\":1}\n\n"[..])
        );
        drop(frame);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        let connection = body.connection.as_ref().expect("still reading");
        assert_eq!(connection.read.capacity(), 0, "no buffer while waiting");
    }

    #[tokio::test]
    async fn a_server_that_refuses_a_large_body_unread_is_heard_not_a_broken_pipe() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = Authority::try_from(listener.local_addr().expect("address").to_string())
            .expect("authority");
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => head.extend_from_slice(&buf[..read]),
                }
            }
            let answer = "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 14\r\n\
                          connection: close\r\n\r\nbody too large";
            let _ = socket.write_all(answer.as_bytes()).await;
            // Closed with the body unread: the kernel resets the
            // connection, and the client's send breaks.
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        let pool = Arc::new(InlinePool::default());
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{key}/v1/chat/completions"))
            .body(Full::new(Bytes::from(vec![b' '; 64 << 20])))
            .expect("request");
        let response = pool.request(request).await.expect("the server's answer");
        assert_eq!(response.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
        let body = response.into_body().collect().await.expect("its body");
        assert_eq!(&body.to_bytes()[..], b"body too large");
        assert_eq!(pool.idle(&key), 0, "a broken connection is not pooled");
    }

    /// Makes three calls, one after another, to a server that answers each
    /// whole and then does `after`; every call must be answered. Returns
    /// how many connections the server accepted.
    async fn three_calls(after: After) -> usize {
        let (key, accepted) = server(CHUNKED, after).await;
        let pool = Arc::new(InlinePool::default());
        for _ in 0..3 {
            let body = call(&pool, &key).await.expect("answered");
            assert_eq!(body, "data: {\"a\":1}\n\ndata: [DONE]\n\n");
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_finished_answer_leaves_its_connection_for_the_next_call() {
        assert_eq!(three_calls(After::KeepOpen).await, 1);
    }

    #[tokio::test]
    async fn a_pooled_connection_its_server_closed_is_replaced_without_an_error() {
        assert_eq!(three_calls(After::Close).await, 3);
    }

    #[tokio::test]
    async fn a_large_answer_is_read_whole_and_its_connection_reused() {
        let body = "x".repeat(300_000);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let (key, accepted) = server(Box::leak(answer.into_boxed_str()), After::KeepOpen).await;
        let pool = Arc::new(InlinePool::default());
        for _ in 0..2 {
            assert_eq!(call(&pool, &key).await.as_deref(), Ok(body.as_str()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_finished_later_returns_its_connection_once_its_end_arrives() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let key = Authority::try_from(listener.local_addr().expect("address").to_string())
            .expect("authority");
        let (send_end, end_wanted) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let done = "e\r\ndata: [DONE]\n\n\r\n";
            socket
                .write_all(format!("{head}{done}").as_bytes())
                .await
                .expect("write");
            // The terminator comes only once the call is done with the body.
            let _ = end_wanted.await;
            socket.write_all(b"0\r\n\r\n").await.expect("write");
            // Held open: the connection stays usable.
            let _ = socket.read(&mut buf).await;
        });
        let pool = Arc::new(InlinePool::default());
        let request = Request::post(format!("http://{key}/v1/chat/completions"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        let response = pool.request(request).await.expect("answered");
        let mut body = response.into_body();
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            frame.data_ref().map(|d| &d[..]),
            Some(&b"data: [DONE]\n\n"[..])
        );
        body.finish_later();
        drop(body);
        assert_eq!(pool.idle(&key), 0, "not before the body's end");
        send_end.send(()).expect("server waiting");
        for _ in 0..10_000 {
            if pool.idle(&key) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle(&key), 1, "pooled once the end arrived");
        server.abort();
    }

    /// Makes two calls, one after another, to a server that answers each
    /// with `answer` and then does `after`: what each call got, and how
    /// many connections the server accepted.
    async fn two_calls(answer: &'static str, after: After) -> ([Result<String, String>; 2], usize) {
        let (key, accepted) = server(answer, after).await;
        let pool = Arc::new(InlinePool::default());
        let first = call(&pool, &key).await;
        let second = call(&pool, &key).await;
        ([first, second], accepted.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn an_answer_that_announces_its_close_is_not_pooled() {
        let answer = "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (answers, accepted) = two_calls(answer, After::KeepOpen).await;
        for answer in answers {
            assert_eq!(answer.as_deref(), Ok("ok"));
        }
        assert_eq!(accepted, 2);
    }

    #[tokio::test]
    async fn a_body_cut_mid_chunk_is_an_error_and_the_connection_is_not_reused() {
        let cut = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\ne\r\ndata: {\"a\"";
        let (answers, accepted) = two_calls(cut, After::Close).await;
        for answer in answers {
            let err = answer.expect_err("cut");
            assert!(err.contains("closed before the answer ended"), "{err}");
        }
        assert_eq!(accepted, 2);
    }

    #[tokio::test]
    async fn a_server_that_answers_nothing_fails_the_call_on_a_fresh_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let key = Authority::try_from(address.to_string()).expect("authority");
        let pool = Arc::new(InlinePool::default());
        let err = call(&pool, &key).await.expect_err("no answer");
        assert!(
            err.contains("reading the answer's head") || err.contains("sending"),
            "{err}"
        );
    }
}
