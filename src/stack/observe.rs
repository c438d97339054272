//! Observes every call: metrics and one access log line, recorded when the
//! call ends.
//!
//! An LLM call does not end when the service answers: its answer is a
//! token stream that may run for minutes. So the layer wraps the stream and
//! records the call when the stream ends, by its final event, by an error,
//! or by being dropped because the caller cancelled (CANCELLED). It sits
//! outermost, so it times the whole call and sees the code the caller gets,
//! the caller's DEADLINE_EXCEEDED included.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};
use tower::{Layer, Service};

use crate::chat::{ChatEvent, ChatRequest, ChatStream};
use crate::error::GatewayError;
use crate::telemetry::call::CallRecord;

/// Wraps a chat service in [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

/// Records each call's metrics and access log line when it ends.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

/// A token stream that records its call as tokens pass and when it ends.
pub struct ObservedStream {
    /// Declared first so it is dropped first: a cancelled call is on record
    /// before its upstream request is closed.
    record: CallRecord,
    /// The tokens.
    inner: ChatStream,
}

// === impl ObserveLayer ===

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

// === impl Observe ===

impl<S> Service<ChatRequest> for Observe<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = GatewayError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<ChatStream, GatewayError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ChatRequest) -> Self::Future {
        // Moved into the future: if the caller leaves before the answer
        // starts, dropping the future records the call as cancelled.
        let mut record = CallRecord::start(req.call.clone(), &req.model, req.stream);
        let response = self.inner.call(req);
        async move {
            match response.await {
                Ok(inner) => {
                    record.answering();
                    Ok(Box::pin(ObservedStream { record, inner }) as ChatStream)
                }
                Err(err) => {
                    record.failed(&err);
                    Err(err)
                }
            }
        }
        .boxed()
    }
}

// === impl ObservedStream ===

impl Stream for ObservedStream {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = ready!(this.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(ChatEvent::Token(_))) => this.record.token(),
            Some(Ok(ChatEvent::Done(completion))) => this.record.done(completion),
            Some(Err(err)) => this.record.failed(err),
            // Front ends report a stream that stops without its final
            // event as an incomplete answer; count it the same way.
            None => this.record.finish(
                tonic::Code::Unavailable,
                Some("the stream ended before its final event"),
            ),
        }
        Poll::Ready(item)
    }
}
