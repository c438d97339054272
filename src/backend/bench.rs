//! The OpenAI wire's stream reading without a connection, for
//! [`crate::bench_support`]: the per-token decode path (SSE framing, then
//! the chunk dialect) is measured apart from sockets and hyper.
//!
//! The streamed body of a real call is hyper's `Incoming`, which only a
//! connection can make; this reader pushes bytes the way `UpstreamStream`
//! does and maps each [`Step`] the same way, so what a benchmark measures
//! is the adapter's own work per chunk.

use std::collections::VecDeque;

use super::adapter::Adapter;
use super::openai::{ChunkStream, OpenAiBackend};
use super::sse::SseDecoder;
use super::wire::{Dialect, Framing, Step};
use crate::chat::{ChatEvent, Completion};
use crate::config::UpstreamConfig;

/// Reads one OpenAI-compatible SSE answer into [`ChatEvent`]s.
pub(crate) struct OpenAiReader {
    /// Cuts bytes into events.
    framing: SseDecoder,
    /// Reads each event as OpenAI's chunk.
    dialect: ChunkStream,
    /// What the final event reports, filled in as chunks arrive.
    completion: Completion,
    /// Events of a chunk that carried several, not yet handed out.
    queued: VecDeque<ChatEvent>,
}

/// An OpenAI-compatible upstream's adapter, which makes a reader per
/// answer as it does per call. Built once: building it builds an HTTP
/// client, which no call does.
pub(crate) struct OpenAiWire(OpenAiBackend);

impl OpenAiWire {
    /// The adapter of the OpenAI-compatible upstream `config`.
    pub(crate) fn new(config: &UpstreamConfig) -> Self {
        OpenAiWire(OpenAiBackend::new(config, super::http::client()))
    }

    /// A reader for one answer.
    pub(crate) fn reader(&self) -> OpenAiReader {
        OpenAiReader {
            framing: SseDecoder::default(),
            dialect: self.0.dialect(),
            completion: Completion::default(),
            queued: VecDeque::new(),
        }
    }
}

impl OpenAiReader {
    /// Appends bytes as they came off the wire.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        Framing::push(&mut self.framing, bytes);
    }

    /// The next event; `Ok(None)` until more bytes arrive; `Err` with the
    /// adapter's complaint for a broken stream.
    pub(crate) fn next_event(&mut self) -> Result<Option<ChatEvent>, String> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Ok(Some(event));
            }
            let Some(item) = self.framing.next_item()? else {
                return Ok(None);
            };
            match self.dialect.on_item(item, &mut self.completion) {
                Step::Skip => {}
                Step::Token(text) | Step::Last(text) => return Ok(Some(ChatEvent::Token(text))),
                Step::Many(events, _) => self.queued.extend(events),
                Step::Done => {
                    return Ok(Some(ChatEvent::Done(std::mem::take(&mut self.completion))));
                }
                Step::Fail(_, what) => return Err(what),
            }
        }
    }
}
