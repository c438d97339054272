//! A streamed answer that survives its upstream: when the stream breaks
//! after tokens reached the caller (a cut, a silence past `idle_timeout`,
//! an invalid or error event, a 5xx mid-stream), the rest is asked of
//! another endpoint, pool or fallback, within the caller's deadline and the
//! route's attempts, and spliced in. The caller gets one answer: no token
//! twice, none missing, one end, and usage that counts what it received.
//!
//! On the normal path this is one poll and one append of each token's text
//! (the delivered text is what a continuation needs); everything else
//! happens only once a stream broke.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream};

use super::SharedTable;
use super::continuation::{Delivered, could_not_continue};
use super::retry::{self, Answer, Ask, How};
use super::table::Route;
use crate::chat::{ChatEvent, ChatRequest, ChatStream, Completion, Usage};
use crate::error::GatewayError;
use crate::telemetry::metrics;

/// A streamed answer that continues elsewhere when its upstream breaks.
pub(crate) struct Resumable {
    /// The live table: a continuation is routed by the table in force when
    /// the stream broke, so a stream does not keep a replaced table (and
    /// its upstreams' background tasks) alive.
    live: SharedTable,
    /// The route the call began on, by its model name.
    route: Arc<str>,
    /// Most breaks rescued: the route's `retry.attempts`.
    max_rescues: u32,
    req: Arc<ChatRequest>,
    state: State,
    /// What the caller has received so far.
    delivered: Delivered,
    /// Token events delivered before the current segment began.
    tokens_before: u32,
    /// How the current segment was asked for.
    how: How,
    /// Breaks rescued so far.
    rescues: u32,
    /// The error the stream broke with, while a continuation is sought.
    broke: Option<GatewayError>,
    /// Pieces of a tool call reached the caller: neither prefill nor
    /// replay can resume a call half made, so a break ends the answer.
    tool_calls: bool,
}

enum State {
    /// Passing on a segment's events.
    Streaming(ChatStream),
    /// Asking for the rest.
    Continuing(BoxFuture<'static, Result<Answer, GatewayError>>),
    /// Done, or failed.
    Ended,
}

// === impl Resumable ===

impl Resumable {
    /// Wraps `stream`, the first answer to `req` on `route`.
    pub(crate) fn new(
        stream: ChatStream,
        live: SharedTable,
        route: &Route,
        req: Arc<ChatRequest>,
    ) -> Self {
        Resumable {
            live,
            route: route.model.clone(),
            max_rescues: route.retry.attempts.max(1),
            req,
            state: State::Streaming(stream),
            delivered: Delivered::default(),
            tokens_before: 0,
            how: How::Fresh,
            rescues: 0,
            broke: None,
            tool_calls: false,
        }
    }

    /// Whether a stream that broke with `err` is worth continuing.
    fn can_rescue(&self, err: &GatewayError) -> bool {
        err.is_retryable()
            && !self.tool_calls
            && self.rescues < self.max_rescues
            && !retry::out_of_time(&self.req, std::time::Duration::ZERO)
    }

    /// Starts asking for the rest of the answer.
    fn continue_after(&mut self, broke: GatewayError) {
        tracing::info!(
            request_id = %self.req.call.request_id(),
            route = %self.route,
            tokens = self.delivered.tokens,
            error = %broke,
            "stream broke mid-answer; continuing it elsewhere"
        );
        self.rescues += 1;
        self.broke = Some(broke);
        let (table, route, req) = (self.live.load_full(), self.route.clone(), self.req.clone());
        let ask = Ask::Continue(self.delivered.clone());
        self.state = State::Continuing(
            async move {
                let Some(route) = table.lookup(&route) else {
                    return Err(GatewayError::unavailable(format!(
                        "route '{route}' was removed by a reload"
                    )));
                };
                retry::answer(&table, route, &req, &ask).await
            }
            .boxed(),
        );
    }

    /// Ends the answer with `err` after a break nothing could rescue.
    fn fail(&mut self, err: GatewayError) -> Poll<Option<Result<ChatEvent, GatewayError>>> {
        self.state = State::Ended;
        metrics::stream_rescue(&self.route, "failed");
        self.req.call.mark_rescue("failed");
        Poll::Ready(Some(Err(err)))
    }

    /// The final usage: what the caller received, not what the last
    /// upstream generated.
    fn settle(&self, completion: &mut Completion) {
        let Some(usage) = completion.usage.as_mut() else {
            return;
        };
        *usage = match self.how {
            How::Fresh | How::Replay => *usage,
            How::Prefill => Usage {
                // The prompt it reported includes the delivered text.
                input_tokens: usage.input_tokens.saturating_sub(self.tokens_before),
                output_tokens: usage.output_tokens.saturating_add(self.tokens_before),
            },
        };
    }
}

impl Stream for Resumable {
    type Item = Result<ChatEvent, GatewayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Streaming(stream) => match stream.as_mut().poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(ChatEvent::Token(text)))) => {
                        this.delivered.text.push_str(&text);
                        this.delivered.tokens = this.delivered.tokens.saturating_add(1);
                        return Poll::Ready(Some(Ok(ChatEvent::Token(text))));
                    }
                    Poll::Ready(Some(Ok(ChatEvent::ToolCall(delta)))) => {
                        this.tool_calls = true;
                        return Poll::Ready(Some(Ok(ChatEvent::ToolCall(delta))));
                    }
                    Poll::Ready(Some(Ok(ChatEvent::Done(mut completion)))) => {
                        this.state = State::Ended;
                        this.settle(&mut completion);
                        return Poll::Ready(Some(Ok(ChatEvent::Done(completion))));
                    }
                    Poll::Ready(Some(Err(err))) if this.can_rescue(&err) => {
                        this.continue_after(err);
                    }
                    Poll::Ready(Some(Err(err))) => {
                        if !err.is_retryable() {
                            // Not a break: the answer's own error.
                            this.state = State::Ended;
                            return Poll::Ready(Some(Err(err)));
                        }
                        let spent = GatewayError::unavailable(if this.tool_calls {
                            "a tool call was already being streamed, and a half-made call \
                             cannot be resumed; retry the request"
                        } else {
                            "the call's deadline or its route's retry.attempts are spent"
                        });
                        return this.fail(could_not_continue(&err, &spent));
                    }
                    // Upstream streams end with `Done` or an error; an end
                    // without either passes on for the front to report.
                    Poll::Ready(None) => {
                        this.state = State::Ended;
                        return Poll::Ready(None);
                    }
                },
                State::Continuing(next) => match next.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(answer)) => {
                        let outcome = match answer.how {
                            How::Replay => "replay",
                            How::Fresh | How::Prefill => "prefill",
                        };
                        metrics::stream_rescue(&this.route, outcome);
                        this.req.call.mark_rescue(outcome);
                        this.how = answer.how;
                        this.tokens_before = this.delivered.tokens;
                        this.broke = None;
                        this.state = State::Streaming(answer.stream);
                    }
                    Poll::Ready(Err(why)) => {
                        let err = match this.broke.take() {
                            Some(broke) => could_not_continue(&broke, &why),
                            None => why,
                        };
                        return this.fail(err);
                    }
                },
                State::Ended => return Poll::Ready(None),
            }
        }
    }
}
