//! Holding something until a token stream ends: permits, a pending
//! settlement, an endpoint's load, a call's record.
//!
//! An LLM call does not end when its service answers: the answer is a token
//! stream that may run for minutes, and whatever the call holds must last
//! to its last token (linkerd's `PendingUntilEos`, tower's advice to move
//! the load handle into the body). A stream ends in one of four ways: its
//! final event, an error, stopping without its final event (cut), or being
//! dropped before any of those (the caller left, a deadline cut it above).
//! [`HoldUntilEnd`] wraps a [`ChatStream`] and a guard implementing
//! [`OnEnd`], shows the guard each token and how the stream ended, and
//! drops the guard at that moment, so whatever the guard holds is released
//! when the stream ends rather than when the front end gets round to
//! dropping it. The inner stream is dropped with it, which closes the
//! upstream request.
//!
//! # Boxes on a streamed call
//! Holders that wrap the same stream one after the other share one holder
//! and so one box: [`Hold::hold`] on a [`HoldUntilEnd`] adds the new guard
//! beside the ones it has (a tuple) instead of wrapping it again. The stack
//! layers return unboxed holders to each other (rate → in-flight → limits
//! → auth), and [`observe`](crate::stack::observe) boxes them once with the
//! call's record. What remains boxed on a streamed call, innermost first:
//! - the backend's decoder over the upstream body (`backend::wire`): the
//!   adapters differ, so it is erased where it enters the vocabulary;
//! - the endpoint's load holder (`balance::endpoint`): the endpoint's
//!   dispatch answers with a [`ChatStream`], the one type every upstream
//!   kind shares;
//! - the upstream's time limits (`balance::upstream`, a [`TimedStream`]);
//! - the router's continuation of a broken stream and its replay of the
//!   first event (`route::resume`, `route::retry`);
//! - the caller's deadline (`stack::deadline`, a [`TimedStream`]), only
//!   when the call has one;
//! - the stack's one holder (observe, in-flight, rate), built in `observe`.
//!
//! The first four are separated by the balancer's pick and the router's
//! retries and continuations, which hand on a [`ChatStream`] by design:
//! each attempt may land on an upstream of another kind.
//!
//! [`TimedStream`]: super::timed::TimedStream

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::Stream;
use pin_project_lite::pin_project;

use crate::chat::{ChatEvent, ChatStream, Completion};
use crate::error::GatewayError;

/// How a held stream ended, as its guard learns it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum End<'a> {
    /// With its final event.
    Finished(&'a Completion),
    /// With this error, which the caller sees.
    Failed(&'a GatewayError),
    /// It stopped without its final event; front ends report an
    /// incomplete answer.
    Cut,
    /// It was dropped before it ended: the caller left, or a layer above
    /// cut it.
    Dropped,
}

/// What a held stream keeps alive until it ends, told what passes and how
/// it ended. Dropping the guard is its release: implement [`OnEnd::on_end`]
/// only to learn something from the end first.
pub(crate) trait OnEnd: Send + Unpin + 'static {
    /// A token passed (rate metering counts the text, a call's record
    /// times it).
    fn on_token(&mut self, _text: &str) {}

    /// The stream ended this way; the guard is dropped right after.
    fn on_end(self, _end: End<'_>)
    where
        Self: Sized,
    {
    }
}

/// A [`ChatStream`] that holds `G` until it ends. See the module docs.
pub(crate) struct HoldUntilEnd<G: OnEnd> {
    /// The tokens; `None` once the stream ended.
    inner: Option<ChatStream>,
    /// Released when the stream ends; `None` once it was.
    guard: Option<G>,
}

/// A token stream that can take one more guard to hold until its end.
pub(crate) trait Hold {
    /// The stream holding `G` as well.
    type Holding<G: OnEnd>: Stream<Item = Result<ChatEvent, GatewayError>> + Send + 'static;

    /// Holds `guard` until the stream ends too.
    fn hold<G: OnEnd>(self, guard: G) -> Self::Holding<G>;
}

pin_project! {
    /// A response future whose stream, once it arrives, holds `H` (or
    /// nothing, when `None`). A failed response drops `H` at once: the
    /// call is over.
    pub(crate) struct HoldOnReady<F, H> {
        #[pin]
        response: F,
        held: Option<H>,
    }
}

// === impl HoldUntilEnd ===

impl<G: OnEnd> HoldUntilEnd<G> {
    /// `inner`, holding `guard` until it ends.
    pub(crate) fn new(inner: ChatStream, guard: G) -> Self {
        HoldUntilEnd {
            inner: Some(inner),
            guard: Some(guard),
        }
    }
}

impl<G: OnEnd> Stream for HoldUntilEnd<G> {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = ready!(inner.as_mut().poll_next(cx));
        let end = match &item {
            Some(Ok(ChatEvent::Token(text))) => {
                if let Some(guard) = this.guard.as_mut() {
                    guard.on_token(text);
                }
                return Poll::Ready(item);
            }
            // A piece of a tool call is output like a token: it counts for
            // the call's metrics and token estimates the same way.
            Some(Ok(ChatEvent::ToolCall(delta))) => {
                if let Some(guard) = this.guard.as_mut() {
                    guard.on_token(&delta.arguments);
                }
                return Poll::Ready(item);
            }
            Some(Ok(ChatEvent::Done(completion))) => End::Finished(completion),
            Some(Err(err)) => End::Failed(err),
            None => End::Cut,
        };
        // The upstream first, then the guard: what the guard releases is
        // free once nothing is generating for this call any more.
        this.inner = None;
        if let Some(guard) = this.guard.take() {
            guard.on_end(end);
        }
        Poll::Ready(item)
    }
}

impl<G: OnEnd> Drop for HoldUntilEnd<G> {
    /// Dropped before its end: the guard hears so before the upstream
    /// request closes (the inner stream is dropped after this), so a
    /// cancelled call is on record by the time the upstream sees it go.
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.on_end(End::Dropped);
        }
    }
}

impl Hold for ChatStream {
    type Holding<G: OnEnd> = HoldUntilEnd<G>;

    fn hold<G: OnEnd>(self, guard: G) -> HoldUntilEnd<G> {
        HoldUntilEnd::new(self, guard)
    }
}

impl<H: OnEnd> Hold for HoldUntilEnd<H> {
    type Holding<G: OnEnd> = HoldUntilEnd<(H, G)>;

    /// The same holder with one more guard: no new wrapper, no new box.
    fn hold<G: OnEnd>(mut self, guard: G) -> HoldUntilEnd<(H, G)> {
        // A holder is handed on before it is polled, so it still holds
        // its guard; were it over, the new guard would be dropped here,
        // released at once like the ones before it.
        let held = self.guard.take();
        HoldUntilEnd {
            inner: self.inner.take(),
            guard: held.map(|held| (held, guard)),
        }
    }
}

// === impl HoldOnReady ===

impl<F, H> HoldOnReady<F, H> {
    /// `response`'s stream will hold `held`.
    pub(crate) fn new(response: F, held: Option<H>) -> Self {
        HoldOnReady { response, held }
    }
}

impl<F, S, H> Future for HoldOnReady<F, H>
where
    F: Future<Output = Result<S, GatewayError>>,
    S: Hold,
    H: OnEnd,
{
    type Output = Result<S::Holding<Option<H>>, GatewayError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let stream = ready!(this.response.poll(cx))?;
        Poll::Ready(Ok(stream.hold(this.held.take())))
    }
}

// === impl OnEnd ===

impl<G: OnEnd> OnEnd for Option<G> {
    fn on_token(&mut self, text: &str) {
        if let Some(guard) = self {
            guard.on_token(text);
        }
    }

    fn on_end(self, end: End<'_>) {
        if let Some(guard) = self {
            guard.on_end(end);
        }
    }
}

/// Two guards on one stream, `A` from the layer nearer the upstream. They
/// learn of an event in the order separate wrappers would have (inner
/// first), and of a drop outer first, as nested wrappers are dropped.
impl<A: OnEnd, B: OnEnd> OnEnd for (A, B) {
    fn on_token(&mut self, text: &str) {
        self.0.on_token(text);
        self.1.on_token(text);
    }

    fn on_end(self, end: End<'_>) {
        let (inner, outer) = self;
        if let End::Dropped = end {
            outer.on_end(end);
            inner.on_end(end);
        } else {
            inner.on_end(end);
            outer.on_end(end);
        }
    }
}

/// What a layer that never holds anything holds.
impl OnEnd for Infallible {}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::StreamExt;

    use super::*;
    use crate::chat::Usage;

    /// Writes what it sees into a shared log, and its release when dropped.
    struct Witness {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Witness {
        fn new(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Self {
            Witness {
                name,
                log: log.clone(),
            }
        }

        fn note(&self, what: String) {
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{}: {what}", self.name));
        }
    }

    impl OnEnd for Witness {
        fn on_token(&mut self, text: &str) {
            self.note(format!("token {text}"));
        }

        fn on_end(self, end: End<'_>) {
            let how = match end {
                End::Finished(completion) => format!("finished {:?}", completion.usage),
                End::Failed(err) => format!("failed {}", err.message()),
                End::Cut => "cut".to_string(),
                End::Dropped => "dropped".to_string(),
            };
            self.note(how);
        }
    }

    impl Drop for Witness {
        fn drop(&mut self) {
            self.note("released".to_string());
        }
    }

    fn log() -> Arc<Mutex<Vec<String>>> {
        Arc::default()
    }

    fn seen(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stream(items: Vec<Result<ChatEvent, GatewayError>>) -> ChatStream {
        Box::pin(futures_util::stream::iter(items))
    }

    fn token(text: &str) -> Result<ChatEvent, GatewayError> {
        Ok(ChatEvent::Token(text.to_string()))
    }

    fn done() -> Result<ChatEvent, GatewayError> {
        Ok(ChatEvent::Done(Completion {
            usage: Some(Usage {
                input_tokens: 3,
                output_tokens: 2,
            }),
            ..Completion::default()
        }))
    }

    #[tokio::test]
    async fn the_guard_sees_each_token_and_is_released_with_the_final_event() {
        let log = log();
        let mut held = stream(vec![token("a"), token("b"), done()]).hold(Witness::new("g", &log));
        assert!(matches!(held.next().await, Some(Ok(ChatEvent::Token(_)))));
        assert!(matches!(held.next().await, Some(Ok(ChatEvent::Token(_)))));
        assert_eq!(seen(&log), ["g: token a", "g: token b"], "held mid-stream");
        assert!(matches!(held.next().await, Some(Ok(ChatEvent::Done(_)))));
        assert_eq!(
            seen(&log)[2..],
            [
                "g: finished Some(Usage { input_tokens: 3, output_tokens: 2 })",
                "g: released"
            ],
            "released with the final event, before the stream is dropped"
        );
        assert!(held.next().await.is_none(), "nothing after the end");
        drop(held);
        assert_eq!(seen(&log).len(), 4, "released once");
    }

    #[tokio::test]
    async fn an_error_releases_the_guard_and_shows_it_the_error() {
        let log = log();
        let mut held = stream(vec![
            token("a"),
            Err(GatewayError::unavailable("upstream reset")),
            token("never"),
        ])
        .hold(Witness::new("g", &log));
        assert!(held.next().await.is_some());
        assert!(matches!(held.next().await, Some(Err(_))));
        assert_eq!(
            seen(&log),
            ["g: token a", "g: failed upstream reset", "g: released"]
        );
        assert!(held.next().await.is_none(), "the failed stream is over");
    }

    #[tokio::test]
    async fn a_stream_that_stops_without_its_final_event_is_cut() {
        let log = log();
        let mut held = stream(vec![token("a")]).hold(Witness::new("g", &log));
        assert!(held.next().await.is_some());
        assert!(held.next().await.is_none());
        assert_eq!(seen(&log), ["g: token a", "g: cut", "g: released"]);
    }

    #[tokio::test]
    async fn dropping_the_stream_midway_releases_the_guard_as_dropped() {
        let log = log();
        let mut held = stream(vec![token("a"), done()]).hold(Witness::new("g", &log));
        assert!(held.next().await.is_some());
        drop(held);
        assert_eq!(seen(&log), ["g: token a", "g: dropped", "g: released"]);
    }

    #[tokio::test]
    async fn a_dropped_stream_tells_its_guard_before_the_upstream_closes() {
        let log = log();
        let upstream = Witness::new("upstream", &log);
        let inner: ChatStream = Box::pin(
            futures_util::stream::pending::<Result<ChatEvent, GatewayError>>().map(move |e| {
                let _closed_with_the_stream = &upstream;
                e
            }),
        );
        drop(inner.hold(Witness::new("g", &log)));
        assert_eq!(
            seen(&log),
            ["g: dropped", "g: released", "upstream: released"]
        );
    }

    #[tokio::test]
    async fn a_second_guard_shares_the_holder_and_learns_after_the_first() {
        let log = log();
        let mut held = stream(vec![token("a"), done()])
            .hold(Witness::new("inner", &log))
            .hold(Witness::new("outer", &log));
        assert!(held.next().await.is_some());
        assert!(held.next().await.is_some());
        assert_eq!(
            seen(&log),
            [
                "inner: token a",
                "outer: token a",
                "inner: finished Some(Usage { input_tokens: 3, output_tokens: 2 })",
                "inner: released",
                "outer: finished Some(Usage { input_tokens: 3, output_tokens: 2 })",
                "outer: released",
            ]
        );
    }

    #[tokio::test]
    async fn shared_guards_hear_of_a_drop_outer_first() {
        let log = log();
        let held = stream(vec![token("a")])
            .hold(Witness::new("inner", &log))
            .hold(Witness::new("outer", &log));
        drop(held);
        assert_eq!(
            seen(&log),
            [
                "outer: dropped",
                "outer: released",
                "inner: dropped",
                "inner: released"
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_response_releases_what_its_stream_would_have_held() {
        let log = log();
        let response = async { Err::<ChatStream, _>(GatewayError::unavailable("refused")) };
        let result = HoldOnReady::new(response, Some(Witness::new("g", &log))).await;
        assert!(result.is_err());
        assert_eq!(seen(&log), ["g: released"], "released, never streamed");
    }

    #[tokio::test]
    async fn a_response_stream_holds_what_was_admitted_until_its_end() {
        let log = log();
        let response = async { Ok::<_, GatewayError>(stream(vec![token("a"), done()])) };
        let mut held = HoldOnReady::new(response, Some(Witness::new("g", &log)))
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert!(seen(&log).is_empty(), "held while the call streams");
        while held.next().await.is_some() {}
        assert_eq!(seen(&log).last().map(String::as_str), Some("g: released"));
    }
}
