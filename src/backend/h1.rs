//! The HTTP/1.1 client wire, without a connection: a request written out
//! as bytes, a response head parsed (with `httparse`, hyper's own parser),
//! and a body cut out of the bytes that follow it.
//!
//! [`super::inline`] drives sockets with it. hyper's client connection does
//! the same work but allocates about 25 KiB per connection (its dispatch
//! channel's first block of 32 request slots, an 8 KiB write buffer, an
//! 8 KiB read buffer) and hands every chunk through a channel to the body;
//! with 10,000 streams open that was most of the gateway's memory, and the
//! channel a wake-up per token. What is here keeps one small read buffer
//! per connection and hands each chunk out in the poll that read it.
//!
//! Only what the gateway's upstream calls need: `POST` with a whole body,
//! answers framed by `Content-Length`, `Transfer-Encoding: chunked` or the
//! connection's close; interim `1xx` answers are skipped.

use std::io::Write as _;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

/// A response head larger than this is refused: real servers send a few
/// hundred bytes, and an unbounded head would be unbounded memory.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Most headers a response may have.
const MAX_HEADERS: usize = 100;

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE_BYTES: usize = 4 * 1024;

/// Why an exchange failed on the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    /// The response head is not HTTP/1.x.
    #[error("invalid response head: {0}")]
    Head(String),
    /// The response head passed [`MAX_HEAD_BYTES`].
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    /// The body's framing is broken (a bad chunk size, a missing CRLF).
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
    /// The connection closed before the body's end.
    #[error("connection closed before the answer ended")]
    Truncated,
}

/// A parsed response head, and what follows it on the connection.
#[derive(Debug)]
pub(crate) struct Head {
    /// The status code.
    pub(crate) status: StatusCode,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub(crate) version: Version,
    /// Every header, in order.
    pub(crate) headers: HeaderMap,
    /// How the body is framed.
    pub(crate) body: BodyDecoder,
    /// The connection may carry another exchange once this body ends.
    pub(crate) keep_alive: bool,
}

/// Cuts one body out of the bytes read after its head.
#[derive(Debug)]
pub(crate) enum BodyDecoder {
    /// `Content-Length`: this many bytes remain.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of a chunk.
    Chunked(Chunk),
    /// Neither: the body is everything until the server closes.
    UntilClose,
    /// The body has ended.
    Ended,
}

/// Where a chunked body's decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines until a blank one.
    Trailers,
}

/// What the bytes read so far hold of the body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A piece of the body.
    Data(Bytes),
    /// Nothing whole yet: read more from the connection.
    NeedMore,
    /// The body has ended.
    End,
}

/// Writes `POST`-style request bytes: the request line, `Host`, the
/// request's headers (its own `Host`, `Content-Length`,
/// `Transfer-Encoding` and `Connection` are replaced), the body's length
/// and the body. `path` is the origin-form target (`/v1/chat/completions`).
pub(crate) fn encode_request(
    method: &Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    body_len: usize,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + headers.len() * 48);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if [&HOST, &CONTENT_LENGTH, &TRANSFER_ENCODING, &CONNECTION].contains(&name) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // Writing into a Vec cannot fail.
    let _ = write!(head, "content-length: {body_len}\r\n\r\n");
    head
}

/// Parses the response head at the start of `buf` and removes it (and any
/// interim `1xx` heads before it) from `buf`. `None` while the head is
/// incomplete; an error when it is not HTTP or passed [`MAX_HEAD_BYTES`].
pub(crate) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, WireError> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut slots);
        let length = match response.parse(buf) {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(WireError::HeadTooLarge);
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(WireError::Head(err.to_string())),
        };
        let code = response.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| WireError::Head(format!("status code {code}")))?;
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut headers = HeaderMap::with_capacity(response.headers.len());
        for header in response.headers.iter() {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| WireError::Head(format!("header name {:?}", header.name)))?;
            let value = HeaderValue::from_bytes(header.value)
                .map_err(|_| WireError::Head(format!("value of header {name}")))?;
            headers.append(name, value);
        }
        buf.advance(length);
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(WireError::Head("101 Switching Protocols".into()));
            }
            // 100 Continue, 103 Early Hints: the real answer follows.
            continue;
        }
        let body = body_decoder(status, &headers)?;
        let keep_alive = version == Version::HTTP_11
            && !matches!(body, BodyDecoder::UntilClose)
            && !has_token(&headers, &CONNECTION, "close");
        return Ok(Some(Head {
            status,
            version,
            headers,
            body,
            keep_alive,
        }));
    }
}

/// How the body after a head with `status` and `headers` is framed
/// (RFC 9112 section 6.3, for answers to `POST`).
fn body_decoder(status: StatusCode, headers: &HeaderMap) -> Result<BodyDecoder, WireError> {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(BodyDecoder::Ended);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Chunked must be the last coding; anything else runs to the close.
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .next_back();
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => {
                BodyDecoder::Chunked(Chunk::Size)
            }
            _ => BodyDecoder::UntilClose,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let parsed = value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| WireError::Head("invalid Content-Length".into()))?;
        if length.is_some_and(|seen| seen != parsed) {
            return Err(WireError::Head("conflicting Content-Length".into()));
        }
        length = Some(parsed);
    }
    Ok(match length {
        Some(0) => BodyDecoder::Ended,
        Some(length) => BodyDecoder::Length(length),
        None => BodyDecoder::UntilClose,
    })
}

/// Whether the comma-separated header `name` lists `token`.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

// === impl BodyDecoder ===

impl BodyDecoder {
    /// Takes the next piece of the body out of `buf`. The piece shares
    /// `buf`'s memory; nothing is copied.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self {
                BodyDecoder::Ended => return Ok(Decoded::End),
                BodyDecoder::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = take_up_to(buf, remaining);
                    if *remaining == 0 {
                        *self = BodyDecoder::Ended;
                    }
                    return Ok(Decoded::Data(take));
                }
                BodyDecoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                BodyDecoder::Chunked(chunk) => match *chunk {
                    Chunk::Size => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(Decoded::NeedMore);
                        };
                        let size = chunk_size(&line)?;
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(mut remaining) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let take = take_up_to(buf, &mut remaining);
                        *chunk = if remaining == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(remaining)
                        };
                        return Ok(Decoded::Data(take));
                    }
                    Chunk::DataEnd => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(Decoded::NeedMore);
                        };
                        if !line.is_empty() {
                            return Err(WireError::Chunked("no CRLF after a chunk's data"));
                        }
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(Decoded::NeedMore);
                        };
                        if line.is_empty() {
                            *self = BodyDecoder::Ended;
                        }
                    }
                },
            }
        }
    }

    /// The connection closed (read returned 0 bytes): the end of a body
    /// framed by the close, a truncation of any other.
    pub(crate) fn on_close(&mut self) -> Result<(), WireError> {
        match self {
            BodyDecoder::UntilClose | BodyDecoder::Ended => {
                *self = BodyDecoder::Ended;
                Ok(())
            }
            BodyDecoder::Length(_) | BodyDecoder::Chunked(_) => Err(WireError::Truncated),
        }
    }

    /// Whether the body has ended.
    pub(crate) fn is_ended(&self) -> bool {
        matches!(self, BodyDecoder::Ended)
    }

    /// Bytes of the body still to come, when the framing says.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(remaining) => Some(*remaining),
            BodyDecoder::Ended => Some(0),
            BodyDecoder::Chunked(_) | BodyDecoder::UntilClose => None,
        }
    }
}

/// Up to `remaining` bytes off the front of `buf` (which is not empty),
/// counted off `remaining`.
fn take_up_to(buf: &mut BytesMut, remaining: &mut u64) -> Bytes {
    let take = usize::try_from(*remaining).map_or(buf.len(), |left| left.min(buf.len()));
    *remaining -= take as u64;
    buf.split_to(take).freeze()
}

/// The next line of `buf` without its line ending (CRLF, or a lone LF as
/// RFC 9112 lets a recipient accept), removed from `buf`; `None` until a
/// whole line is there.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    let Some(end) = buf.iter().position(|&byte| byte == b'\n') else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(WireError::Chunked("line too long"));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line))
}

/// A chunk-size line's size: hex digits, then optional whitespace and
/// `;extensions`, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let digits = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = &line[digits..];
    let rest_ok = rest.iter().all(|&byte| byte == b' ' || byte == b'\t')
        || rest.trim_ascii_start().first() == Some(&b';');
    if digits == 0 || digits > 15 || !rest_ok {
        return Err(WireError::Chunked("bad chunk size"));
    }
    let text =
        std::str::from_utf8(&line[..digits]).map_err(|_| WireError::Chunked("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| WireError::Chunked("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str) -> (Result<Option<Head>, WireError>, BytesMut) {
        let mut buf = BytesMut::from(text);
        (parse_head(&mut buf), buf)
    }

    /// Feeds `wire` to a decoder `split` bytes at a time, as reads would
    /// bring it, and returns the body and whether it ended.
    fn decode_in_pieces(mut decoder: BodyDecoder, wire: &[u8], split: usize) -> (Vec<u8>, bool) {
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(data)) => body.extend_from_slice(&data),
                    Ok(Decoded::NeedMore) => break,
                    Ok(Decoded::End) => return (body, true),
                    Err(err) => panic!("decode failed: {err}"),
                }
            }
        }
        (body, false)
    }

    #[test]
    fn a_request_carries_host_its_headers_and_its_length() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("host", HeaderValue::from_static("elsewhere"));
        let head = encode_request(
            &Method::POST,
            "/v1/chat/completions",
            "10.0.0.1:8000",
            &headers,
            12,
        );
        assert_eq!(
            String::from_utf8_lossy(&head),
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.1:8000\r\n\
             content-type: application/json\r\ncontent-length: 12\r\n\r\n"
        );
    }

    #[test]
    fn a_head_is_parsed_and_removed_leaving_the_body() {
        let (head, rest) = head_of(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             transfer-encoding: chunked\r\n\r\n5\r\nhello",
        );
        let head = head.expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.headers["content-type"], "text/event-stream");
        assert!(matches!(head.body, BodyDecoder::Chunked(Chunk::Size)));
        assert!(head.keep_alive);
        assert_eq!(&rest[..], b"5\r\nhello");
    }

    #[test]
    fn a_partial_head_waits_and_an_endless_one_is_refused() {
        let (head, rest) = head_of("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(matches!(head, Ok(None)));
        assert_eq!(rest.len(), 27);
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD_BYTES));
        assert!(matches!(head_of(&endless).0, Err(WireError::HeadTooLarge)));
        assert!(matches!(
            head_of("SSH-2.0-OpenSSH\r\n\r\n").0,
            Err(WireError::Head(_))
        ));
    }

    #[test]
    fn interim_answers_are_skipped() {
        let (head, rest) = head_of(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        );
        let head = head.expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.body.remaining(), Some(2));
        assert_eq!(&rest[..], b"ok");
    }

    #[test]
    fn framing_follows_the_headers() {
        let framing = |text: &str| head_of(text).0.expect("valid").expect("complete");
        let close = framing("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\n");
        assert!(!close.keep_alive);
        let until_close = framing("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(until_close.body, BodyDecoder::UntilClose));
        assert!(!until_close.keep_alive);
        let old = framing("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n");
        assert!(!old.keep_alive);
        let empty = framing("HTTP/1.1 204 No Content\r\n\r\n");
        assert!(empty.body.is_ended());
        let gzip_then_chunked =
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(gzip_then_chunked.body, BodyDecoder::Chunked(_)));
        assert!(matches!(
            head_of("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n").0,
            Err(WireError::Head(_))
        ));
        assert!(matches!(
            head_of("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").0,
            Err(WireError::Head(_))
        ));
    }

    #[test]
    fn a_chunked_body_decodes_whatever_the_reads_split() {
        let wire = b"6;ext=1\r\ndata: \r\n10\r\n{\"token\": \"hi\"}\n\r\n0\r\ntrailer: x\r\n\r\n";
        for split in 1..=wire.len() {
            let (body, ended) = decode_in_pieces(BodyDecoder::Chunked(Chunk::Size), wire, split);
            assert_eq!(body, b"data: {\"token\": \"hi\"}\n", "split {split}");
            assert!(ended, "split {split}");
        }
    }

    #[test]
    fn a_length_body_ends_at_its_length() {
        let (body, ended) = decode_in_pieces(BodyDecoder::Length(5), b"hello", 2);
        assert_eq!(body, b"hello");
        assert!(ended);
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"-1\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            let mut decoder = BodyDecoder::Chunked(Chunk::Size);
            let outcome = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(
                matches!(outcome, Err(WireError::Chunked(_))),
                "{:?} gave {outcome:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn a_close_ends_only_a_body_framed_by_it() {
        assert!(BodyDecoder::UntilClose.on_close().is_ok());
        assert!(matches!(
            BodyDecoder::Length(3).on_close(),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            BodyDecoder::Chunked(Chunk::Data(1)).on_close(),
            Err(WireError::Truncated)
        ));
    }
}
