//! An incremental decoder for Server-Sent Events, as OpenAI-compatible
//! servers stream completions.
//!
//! Bytes arrive in whatever pieces TCP delivers: an event can be split at any
//! byte (inside a UTF-8 character, between `\r` and `\n`), and one read can
//! carry many events. The decoder buffers what it is given and hands out
//! whole events, following the WHATWG parsing rules: `\n`, `\r\n` and `\r`
//! end lines, lines starting with `:` are comments (keep-alives), several
//! `data:` lines join with `\n`, and a blank line ends an event.

use bytes::{Buf, BytesMut};

/// Largest event (or unterminated line) the decoder holds before giving up,
/// so a misbehaving upstream cannot make the gateway buffer without bound.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; empty when the server sent none.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why a stream of bytes is not valid SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A line was not UTF-8.
    #[error("the event stream is not valid UTF-8")]
    InvalidUtf8,
    /// An event grew past [`MAX_EVENT_BYTES`].
    #[error("an event exceeded {MAX_EVENT_BYTES} bytes")]
    TooLarge,
}

/// The largest decode buffer let go whenever it empties (see
/// [`SseDecoder::next_event`]).
const SMALL_BUFFER: usize = 1024;

/// Turns byte chunks into events.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes received and not yet consumed as whole lines.
    buf: BytesMut,
    /// The event being assembled.
    pending: SseEvent,
    /// Whether the pending event has any `data:` line (an event without one
    /// is not dispatched).
    has_data: bool,
    /// The last line ended with `\r` at the very end of a chunk: a `\n`
    /// starting the next chunk belongs to that line ending.
    skip_lf: bool,
    /// How much of `buf` is known to hold no line ending: a line dripped in
    /// small reads is scanned once, not once per read (which was quadratic
    /// in the line's length).
    scanned: usize,
}

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as they came off the wire.
    pub fn push(&mut self, mut chunk: &[u8]) {
        if self.skip_lf && !chunk.is_empty() {
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
            self.skip_lf = false;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole event, or `None` until more bytes arrive.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        loop {
            let Some(end) = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .map(|at| self.scanned + at)
            else {
                if self.buf.is_empty() && self.buf.capacity() <= SMALL_BUFFER {
                    // Nothing half-read: a stream waiting for its next
                    // token holds no buffer. A large one, grown by a burst,
                    // is kept for the next: the allocator's churn would
                    // cost more than its bytes.
                    self.buf = BytesMut::new();
                }
                self.scanned = self.buf.len();
                if self.buf.len() + self.pending.data.len() > MAX_EVENT_BYTES {
                    return Err(SseError::TooLarge);
                }
                return Ok(None);
            };
            let terminator = match (self.buf[end], self.buf.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => {
                    self.skip_lf = true;
                    1
                }
                _ => 1,
            };
            let line = std::str::from_utf8(&self.buf[..end]).map_err(|_| SseError::InvalidUtf8)?;
            let dispatched = if line.is_empty() {
                self.dispatch()
            } else {
                apply_field(&mut self.pending, &mut self.has_data, line)?;
                None
            };
            self.buf.advance(end + terminator);
            self.scanned = 0;
            if dispatched.is_some() {
                return Ok(dispatched);
            }
        }
    }

    /// Ends the pending event at a blank line.
    fn dispatch(&mut self) -> Option<SseEvent> {
        if !self.has_data {
            self.pending.event.clear();
            return None;
        }
        self.has_data = false;
        Some(std::mem::take(&mut self.pending))
    }
}

/// Applies one non-empty line to the event being assembled.
fn apply_field(pending: &mut SseEvent, has_data: &mut bool, line: &str) -> Result<(), SseError> {
    if line.starts_with(':') {
        return Ok(());
    }
    let (name, value) = match line.split_once(':') {
        Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
        None => (line, ""),
    };
    match name {
        "data" => {
            if *has_data {
                pending.data.push('\n');
            }
            pending.data.push_str(value);
            *has_data = true;
            if pending.data.len() > MAX_EVENT_BYTES {
                return Err(SseError::TooLarge);
            }
        }
        "event" => {
            pending.event.clear();
            pending.event.push_str(value);
        }
        // `id`, `retry` and unknown fields do not matter to a completion.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut SseDecoder) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = decoder.next_event().expect("valid stream") {
            events.push(event);
        }
        events
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn splits_several_events_in_one_chunk() {
        let mut decoder = SseDecoder::new();
        decoder.push(b"data: one\n\ndata: two\n\ndata: [DONE]\n\n");
        assert_eq!(data(&decode_all(&mut decoder)), ["one", "two", "[DONE]"]);
    }

    #[test]
    fn every_split_point_and_line_ending_gives_the_same_events() {
        let streams: [&[u8]; 3] = [
            b": keep-alive\n\ndata: {\"a\":\"h\xc3\xa9\"}\n\nevent: x\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n",
            b": keep-alive\r\n\r\ndata: {\"a\":\"h\xc3\xa9\"}\r\n\r\nevent: x\r\ndata: l1\r\ndata: l2\r\n\r\ndata: [DONE]\r\n\r\n",
            b": keep-alive\r\rdata: {\"a\":\"h\xc3\xa9\"}\r\revent: x\rdata: l1\rdata: l2\r\rdata: [DONE]\r\r",
        ];
        for stream in streams {
            for split in 0..=stream.len() {
                let mut decoder = SseDecoder::new();
                decoder.push(&stream[..split]);
                let mut events = decode_all(&mut decoder);
                decoder.push(&stream[split..]);
                events.extend(decode_all(&mut decoder));
                assert_eq!(
                    data(&events),
                    ["{\"a\":\"hé\"}", "l1\nl2", "[DONE]"],
                    "split at {split}"
                );
                assert_eq!(events[1].event, "x");
            }
        }
    }

    #[test]
    fn a_long_line_dripped_in_small_reads_decodes_whole() {
        let line = "x".repeat(10_000);
        let stream = format!("data: {line}\r\n\r\ndata: [DONE]\n\n");
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            decoder.push(piece);
            events.extend(decode_all(&mut decoder));
        }
        assert_eq!(data(&events), [line.as_str(), "[DONE]"]);
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        let mut decoder = SseDecoder::new();
        decoder.push(b"data: partial");
        assert_eq!(decoder.next_event(), Ok(None));
        decoder.push(b"\n");
        assert_eq!(decoder.next_event(), Ok(None));
    }

    #[test]
    fn a_line_without_end_beyond_the_limit_is_an_error() {
        let mut decoder = SseDecoder::new();
        decoder.push(&vec![b'x'; MAX_EVENT_BYTES + 1]);
        assert_eq!(decoder.next_event(), Err(SseError::TooLarge));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut decoder = SseDecoder::new();
        decoder.push(b"data: \xff\n\n");
        assert_eq!(decoder.next_event(), Err(SseError::InvalidUtf8));
    }
}
