//! The edge every front shares: what a call is before it is a wire
//! request. The gRPC and HTTP fronts (and any front added beside them)
//! read the same things from their headers and treat them alike here:
//!
//! - the request id (the caller's `x-request-id` when safe, else a new one);
//! - the caller and its key, checked before the body is read, so a
//!   stranger cannot make the gateway buffer a body for nothing;
//! - the deadline, trimmed so the gateway's own DEADLINE_EXCEEDED reaches
//!   the caller before the caller's timer fires;
//! - refusals before the stack, recorded like any other call, so metrics
//!   and access logs are the same whichever front a call came through;
//! - the models a key may see;
//! - a stack that panics: the caller gets INTERNAL, not a dropped
//!   connection.
//!
//! Each front keeps only its wire: parsing, encoding, and mapping a
//! [`GatewayError`] to its own status at its own edge.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::chat::{
    CallContext, Caller, ChatEvent, ChatRequest, ChatStream, Completion, RequestId, ToolCall,
    ToolCallsBuilder,
};
use crate::error::{ErrorKind, GatewayError};
use crate::route::SharedTable;
use crate::route::table::Route;
use crate::stack::guard::{KeyPolicy, SharedGuard};
use crate::stack::{self, ChatService};
use crate::telemetry::call::CallRecord;

/// What every front holds: the call path, the live table, and who may call.
#[derive(Clone)]
pub(crate) struct Edge {
    /// The call path behind every front.
    stack: ChatService,
    /// The live table, for listings and for naming the route of a refusal.
    table: SharedTable,
    /// Keys and their models.
    guard: SharedGuard,
}

// === impl Edge ===

impl Edge {
    /// The edge over `stack`, listing from `table`, admitting by `guard`.
    pub(crate) fn new(stack: ChatService, table: SharedTable, guard: SharedGuard) -> Self {
        Edge {
            stack,
            table,
            guard,
        }
    }

    /// The caller's key, when the gateway needs one: an error for a caller
    /// without a valid one. Checked from headers alone, before any body.
    pub(crate) fn authenticate(
        &self,
        caller: &Caller,
    ) -> Result<Option<Arc<KeyPolicy>>, GatewayError> {
        self.guard.load().authenticate(caller)
    }

    /// The caller, admitted: known by its key's name from here on, so the
    /// stack's auth layer finds the key by name instead of hashing the
    /// secret a second time. An error for a caller without a valid key.
    pub(crate) fn admit(&self, caller: Caller) -> Result<Caller, GatewayError> {
        Ok(match self.authenticate(&caller)? {
            Some(key) => Caller::Key(key.name.clone()),
            None => caller,
        })
    }

    /// Calls the stack. A panic below becomes INTERNAL for this one call
    /// (the call record counts it as a panic), never a dropped connection;
    /// fronts read the stream through [`poll_events`] for the same reason.
    ///
    /// The call is pinned here to one snapshot of keys, limits and routes,
    /// which every layer and the router read, so a reload while it passes
    /// the stack cannot mix two files in one call.
    pub(crate) async fn call(&self, req: ChatRequest) -> Result<ChatStream, GatewayError> {
        stack::guard::pin(&req.call, &self.guard);
        unwinding(self.stack.clone().oneshot(req)).await
    }

    /// Records a call refused before it reached the stack, so it counts in
    /// metrics and the access log like any other. `model` is what the
    /// caller asked for; empty when the body was never read.
    pub(crate) fn refused(&self, call: CallContext, model: &str, stream: bool, err: &GatewayError) {
        if let Some(route) = self.table.load().lookup(model) {
            call.place_route(route.model.clone());
        }
        CallRecord::start(call, model, stream).failed(err);
    }

    /// The routes `key` may call, in the table's order: a listing names
    /// internal upstreams, so nobody sees more than they may use.
    pub(crate) fn visible_routes(&self, key: Option<&KeyPolicy>) -> Vec<Arc<Route>> {
        self.table
            .load()
            .routes()
            .iter()
            .filter(|route| key.is_none_or(|key| key.models.allows(&route.model)))
            .cloned()
            .collect()
    }

    /// The route `model` names, if `key` may call it. A route the key may
    /// not call is reported as not routed, so a listing confirms nothing.
    pub(crate) fn visible_route(&self, key: Option<&KeyPolicy>, model: &str) -> Option<Arc<Route>> {
        self.table
            .load()
            .lookup(model)
            .filter(|route| key.is_none_or(|key| key.models.allows(&route.model)))
            .cloned()
    }
}

/// The caller's request id from the header's value, when it is safe to
/// log and forward; a new one otherwise.
pub(crate) fn request_id(value: Option<&[u8]>) -> RequestId {
    value
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(RequestId::from_caller)
        .unwrap_or_else(RequestId::generate)
}

/// When the gateway answers a call with `budget` at the latest: now plus
/// [`answer_by`]. A budget too large to add to the clock (centuries) is no
/// limit.
pub(crate) fn deadline(budget: Option<Duration>) -> Option<Instant> {
    budget.and_then(|budget| Instant::now().checked_add(answer_by(budget)))
}

/// How much of the caller's budget the gateway uses before it answers
/// DEADLINE_EXCEEDED itself.
///
/// The answer has to travel back before the caller's own timer fires: a
/// caller whose timer wins sees a local timeout (tonic clients report
/// CANCELLED) instead of our status and the reason in it. Keeping a tenth of
/// the budget, at most 10 ms, for the trip back lets the gateway's
/// DEADLINE_EXCEEDED arrive first.
pub(crate) fn answer_by(budget: Duration) -> Duration {
    budget - (budget / 10).min(Duration::from_millis(10))
}

/// The error for a stream that stopped without its final event.
pub(crate) fn truncated() -> GatewayError {
    GatewayError::unavailable(
        "the upstream stream ended before its final chunk; the answer is incomplete",
    )
}

/// The error a caller sees when the gateway panicked on its call.
fn panicked() -> GatewayError {
    GatewayError::new(
        ErrorKind::Internal,
        "the gateway failed on this call (a bug, logged with its request id); retrying may \
         work, and the operators can find the cause in the gateway's log"
            .to_string(),
    )
}

/// Polls a call's token stream as a front's encoder does, a panic below
/// ending the stream with INTERNAL. Catching costs nothing until something
/// panics, and needs no wrapper (nor its box) around the stream; the front
/// must not poll the stream again after an error, which it never does.
pub(crate) fn poll_events(
    events: &mut ChatStream,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<ChatEvent, GatewayError>>> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| events.as_mut().poll_next(cx))) {
        Ok(poll) => poll,
        Err(_) => Poll::Ready(Some(Err(panicked()))),
    }
}

/// Sends a streamed answer's first write on its own. When an upstream has
/// already sent several tokens, a front gathers them into one write, and
/// the server flushes only once the body has nothing ready; without this,
/// the first token would wait until every token already there was read.
/// After the first write the body answers `Pending` once, having woken
/// itself, and the server flushes the head and first token before asking
/// again.
#[derive(Debug, Default)]
pub(crate) struct FirstWrite {
    /// Where the stream is: nothing written, the first write out and its
    /// flush still to be let through, or past it.
    stage: FirstWriteStage,
}

/// The stages of a [`FirstWrite`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum FirstWriteStage {
    /// No write yet: the next one goes alone.
    #[default]
    Ahead,
    /// The first write went out; the next poll yields so it is flushed.
    Flush,
    /// Writes are gathered as usual.
    Past,
}

impl FirstWrite {
    /// Whether the write being built must go now, alone: true until the
    /// first write is out.
    pub(crate) fn alone(&self) -> bool {
        self.stage == FirstWriteStage::Ahead
    }

    /// Notes a write handed to the server.
    pub(crate) fn wrote(&mut self) {
        if self.stage == FirstWriteStage::Ahead {
            self.stage = FirstWriteStage::Flush;
        }
    }

    /// Called first in every poll: `true` means answer `Pending` now (the
    /// task is already woken), so the server flushes the first write.
    pub(crate) fn yield_for_flush(&mut self, cx: &mut Context<'_>) -> bool {
        if self.stage != FirstWriteStage::Flush {
            return false;
        }
        self.stage = FirstWriteStage::Past;
        cx.waker().wake_by_ref();
        true
    }
}

/// A whole answer, gathered from its stream: what every front's unary
/// answer is built from.
pub(crate) struct WholeAnswer {
    /// The text, every token joined.
    pub text: String,
    /// The tool calls, their pieces joined.
    pub tool_calls: Vec<ToolCall>,
    /// How it ended.
    pub completion: Completion,
}

/// Reads `events` to their end into one [`WholeAnswer`]; a stream that ends
/// without its final event is [`truncated`].
pub(crate) async fn gather(mut events: ChatStream) -> Result<WholeAnswer, GatewayError> {
    let mut text = String::new();
    let mut calls = ToolCallsBuilder::default();
    while let Some(event) = std::future::poll_fn(|cx| poll_events(&mut events, cx)).await {
        match event? {
            ChatEvent::Token(token) => text.push_str(&token),
            ChatEvent::ToolCall(delta) => calls.push(delta),
            ChatEvent::Done(completion) => {
                return Ok(WholeAnswer {
                    text,
                    tool_calls: calls.finish(),
                    completion,
                });
            }
        }
    }
    Err(truncated())
}

/// The final event of an embedding call: its completion, which carries
/// the vectors (the stream, and what it holds, ends with it). A stream
/// without one, or whose final event has no vectors, is an incomplete
/// answer.
pub(crate) async fn embedded(mut events: ChatStream) -> Result<Completion, GatewayError> {
    while let Some(event) = std::future::poll_fn(|cx| poll_events(&mut events, cx)).await {
        if let ChatEvent::Done(completion) = event? {
            return match completion.embeddings {
                Some(_) => Ok(completion),
                None => Err(truncated()),
            };
        }
    }
    Err(truncated())
}

/// Runs `future`, which a front awaits to answer, turning a panic into
/// INTERNAL.
pub(crate) async fn unwinding<T>(
    future: impl Future<Output = Result<T, GatewayError>>,
) -> Result<T, GatewayError> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Err(panicked()))
}

/// Polls a streaming front's body once, as the server would: its next
/// write as text (empty at its end), or `None` when it has nothing yet.
#[cfg(test)]
pub(crate) fn poll_write<S>(body: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> + Unpin,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(body).poll_next(&mut cx) {
        Poll::Ready(Some(Ok(bytes))) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Poll::Ready(None) => Some(String::new()),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicking_stream() -> ChatStream {
        Box::pin(futures_util::stream::poll_fn(
            |_| -> Poll<Option<Result<ChatEvent, GatewayError>>> { panic!("a bug in a layer") },
        ))
    }

    #[test]
    fn a_stream_that_panics_ends_with_internal() {
        let mut events = panicking_stream();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match poll_events(&mut events, &mut cx) {
            Poll::Ready(Some(Err(err))) => assert_eq!(err.kind(), ErrorKind::Internal),
            _ => panic!("the panic became an INTERNAL error"),
        }
    }

    /// A waker that counts its wake-ups.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_write_goes_alone_then_yields_once_woken_so_it_is_flushed() {
        let wakes = Arc::new(CountingWaker(0.into()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut first = FirstWrite::default();
        assert!(first.alone());
        assert!(!first.yield_for_flush(&mut cx), "nothing to flush yet");
        first.wrote();
        assert!(!first.alone(), "later writes gather what is ready");
        assert!(first.yield_for_flush(&mut cx));
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        first.wrote();
        assert!(!first.yield_for_flush(&mut cx), "only the first write");
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_that_panics_answers_internal() {
        let outcome: Result<(), GatewayError> =
            unwinding(async { panic!("a bug in a layer") }).await;
        let err = outcome.expect_err("the panic became an error");
        assert_eq!(err.kind(), ErrorKind::Internal);
        assert!(err.message().contains("request id"), "{}", err.message());
    }

    #[test]
    fn the_gateway_answers_before_the_callers_timer_fires() {
        assert_eq!(
            answer_by(Duration::from_millis(50)),
            Duration::from_millis(45)
        );
        assert_eq!(
            answer_by(Duration::from_secs(30)),
            Duration::from_millis(29_990)
        );
    }

    #[tokio::test]
    async fn a_budget_beyond_the_clock_is_no_deadline() {
        assert!(deadline(Some(Duration::MAX)).is_none());
        assert!(deadline(None).is_none());
        let soon = deadline(Some(Duration::from_secs(1))).expect("a deadline");
        assert!(soon <= Instant::now() + Duration::from_secs(1));
    }

    #[test]
    fn a_callers_safe_request_id_is_kept_and_any_other_replaced() {
        assert_eq!(request_id(Some(b"req-42")).as_str(), "req-42");
        let replaced = request_id(Some(b"has spaces"));
        assert_ne!(replaced.as_str(), "has spaces");
        assert_eq!(request_id(Some(&[0xff, 0xfe])).as_str().len(), 36);
    }
}
