//! Observes every call: metrics and one access log line, recorded when the
//! call ends.
//!
//! An LLM call does not end when the service answers: its answer is a
//! token stream that may run for minutes. So the layer wraps the stream and
//! records the call when the stream ends, by its final event, by an error,
//! or by being dropped because the caller cancelled (CANCELLED). It sits
//! outermost, so it times the whole call and sees the code the caller gets,
//! the caller's DEADLINE_EXCEEDED included.

use std::task::{Context, Poll};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tower::{Layer, Service};

use crate::chat::hold::{End, Hold, OnEnd};
use crate::chat::{ChatRequest, ChatStream};
use crate::error::GatewayError;
use crate::telemetry::call::CallRecord;

/// Wraps a chat service in [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ObserveLayer;

/// Records each call's metrics and access log line when it ends.
#[derive(Debug, Clone)]
pub(crate) struct Observe<S> {
    inner: S,
}

/// What a call's stream holds for [`Observe`]: its record, finished by
/// how the stream ends.
struct Recording(CallRecord);

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
    S: Service<ChatRequest, Error = GatewayError>,
    S::Response: Hold,
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
                    // The one box of the stack's holders: the layers
                    // inside hand on their holder unboxed, and the record
                    // joins it (see `chat::hold`).
                    Ok(Box::pin(inner.hold(Recording(record))) as ChatStream)
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

// === impl Recording ===

impl OnEnd for Recording {
    fn on_token(&mut self, _text: &str) {
        self.0.token();
    }

    fn on_end(mut self, end: End<'_>) {
        match end {
            End::Finished(completion) => self.0.done(completion),
            End::Failed(err) => self.0.failed(err),
            // Front ends report a stream that stops without its final
            // event as an incomplete answer; count it the same way.
            End::Cut => self.0.finish(
                tonic::Code::Unavailable,
                Some("the stream ended before its final event"),
            ),
            // The record's own drop says CANCELLED (or INTERNAL while
            // unwinding from a panic).
            End::Dropped => {}
        }
    }
}
