//! An incremental decoder for newline-delimited JSON, as Ollama streams its
//! answers (`application/x-ndjson`: one JSON object per line).
//!
//! Bytes arrive in whatever pieces TCP delivers: a line can be split at any
//! byte (inside a UTF-8 character, between `\r` and `\n`), and one read can
//! carry many lines. The decoder buffers what it is given and hands out
//! whole lines without their terminator, skipping blank ones; the JSON in
//! them is the caller's to parse. Lines are cut out of the buffer without
//! copying, and a line arriving in many reads is scanned for its end only
//! once.

use bytes::{Buf, Bytes, BytesMut};

/// Largest line the decoder holds before giving up, so a misbehaving
/// upstream cannot make the gateway buffer without bound.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Why a stream of bytes is not usable NDJSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NdjsonError {
    /// A line grew past [`MAX_LINE_BYTES`].
    #[error("a line exceeded {MAX_LINE_BYTES} bytes")]
    TooLarge,
}

/// Turns byte chunks into lines.
#[derive(Debug, Default)]
pub struct NdjsonDecoder {
    /// Bytes received and not yet handed out as whole lines.
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`.
    scanned: usize,
}

impl NdjsonDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes as they came off the wire.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole line (without `\n` or `\r\n`), or `None` until more
    /// bytes arrive. Blank lines are skipped.
    pub fn next_line(&mut self) -> Result<Option<Bytes>, NdjsonError> {
        loop {
            let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_LINE_BYTES {
                    return Err(NdjsonError::TooLarge);
                }
                return Ok(None);
            };
            let end = self.scanned + at;
            self.scanned = 0;
            if end > MAX_LINE_BYTES {
                return Err(NdjsonError::TooLarge);
            }
            let mut line = self.buf.split_to(end).freeze();
            self.buf.advance(1);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if !is_blank(&line) {
                return Ok(Some(line));
            }
        }
    }

    /// At the end of the body: whatever is left as a last line, even
    /// without its newline; `None` when nothing (or only blanks) is left.
    pub fn finish(&mut self) -> Result<Option<Bytes>, NdjsonError> {
        if let Some(line) = self.next_line()? {
            return Ok(Some(line));
        }
        self.scanned = 0;
        let rest = self.buf.split().freeze();
        Ok((!is_blank(&rest)).then_some(rest))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(decoder: &mut NdjsonDecoder) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(line) = decoder.next_line().expect("valid stream") {
            out.push(String::from_utf8(line.to_vec()).expect("utf-8"));
        }
        out
    }

    #[test]
    fn several_lines_in_one_chunk_come_out_one_by_one() {
        let mut decoder = NdjsonDecoder::new();
        decoder.push(b"{\"a\":1}\n{\"a\":2}\n\n{\"a\":3}\n");
        assert_eq!(
            lines(&mut decoder),
            [r#"{"a":1}"#, r#"{"a":2}"#, r#"{"a":3}"#]
        );
    }

    #[test]
    fn every_split_point_and_line_ending_gives_the_same_lines() {
        let streams: [&[u8]; 2] = [
            b"{\"t\":\"h\xc3\xa9\"}\n\n{\"t\":\"x\"}\n{\"done\":true}\n",
            b"{\"t\":\"h\xc3\xa9\"}\r\n\r\n{\"t\":\"x\"}\r\n{\"done\":true}\r\n",
        ];
        for stream in streams {
            for split in 0..=stream.len() {
                let mut decoder = NdjsonDecoder::new();
                decoder.push(&stream[..split]);
                let mut got = lines(&mut decoder);
                decoder.push(&stream[split..]);
                got.extend(lines(&mut decoder));
                assert_eq!(
                    got,
                    [r#"{"t":"hé"}"#, r#"{"t":"x"}"#, r#"{"done":true}"#],
                    "split at {split}"
                );
                assert_eq!(decoder.finish(), Ok(None), "split at {split}");
            }
        }
    }

    #[test]
    fn a_line_dripped_byte_by_byte_comes_out_once_whole() {
        let mut decoder = NdjsonDecoder::new();
        for &b in b"{\"token\":\"abc\"}" {
            decoder.push(&[b]);
            assert_eq!(decoder.next_line(), Ok(None));
        }
        decoder.push(b"\n");
        assert_eq!(
            decoder.next_line(),
            Ok(Some(Bytes::from_static(b"{\"token\":\"abc\"}")))
        );
    }

    #[test]
    fn a_last_line_without_newline_is_returned_at_the_end() {
        let mut decoder = NdjsonDecoder::new();
        decoder.push(b"{\"a\":1}\n{\"done\":true}");
        assert_eq!(lines(&mut decoder), [r#"{"a":1}"#]);
        assert_eq!(
            decoder.finish(),
            Ok(Some(Bytes::from_static(b"{\"done\":true}")))
        );
        assert_eq!(decoder.finish(), Ok(None));
    }

    #[test]
    fn a_line_beyond_the_limit_is_an_error_even_before_its_end() {
        let mut decoder = NdjsonDecoder::new();
        decoder.push(&vec![b'x'; MAX_LINE_BYTES + 1]);
        assert_eq!(decoder.next_line(), Err(NdjsonError::TooLarge));

        let mut decoder = NdjsonDecoder::new();
        let mut long = vec![b'x'; MAX_LINE_BYTES + 1];
        long.push(b'\n');
        decoder.push(&long);
        assert_eq!(decoder.next_line(), Err(NdjsonError::TooLarge));
    }
}
