//! Property tests (stable Rust fuzzing): whatever bytes an upstream sends or
//! an operator writes, the decoders and parsers answer with a value or an
//! error, never a panic or a hang. (The chat vocabulary's own parsers have
//! theirs in `src/chat/properties.rs`.)

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::BodyExt;
use llmgate::config::Config;
use llmgate::internals::ndjson::{NdjsonDecoder, NdjsonError};
use llmgate::internals::sse::{SseDecoder, SseError, SseEvent};
use llmgate::internals::{BodyLimits, GuardedBody};
use proptest::prelude::*;

/// Decodes `chunks` pushed one after another: the events, or the first error.
fn decode(chunks: &[&[u8]]) -> Result<Vec<SseEvent>, SseError> {
    let mut decoder = SseDecoder::new();
    let mut events = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(event) = decoder.next_event()? {
            events.push(event);
        }
    }
    Ok(events)
}

/// Decodes `chunks` as NDJSON, the final line included: the lines, or the
/// first error.
fn ndjson_lines(chunks: &[&[u8]]) -> Result<Vec<Bytes>, NdjsonError> {
    let mut decoder = NdjsonDecoder::new();
    let mut lines = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(line) = decoder.next_line()? {
            lines.push(line);
        }
    }
    while let Some(line) = decoder.finish()? {
        lines.push(line);
    }
    Ok(lines)
}

/// `bytes` cut at the given points.
fn split_at<'a>(bytes: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(&bytes[start..point]);
        start = point;
    }
    chunks.push(&bytes[start..]);
    chunks
}

/// gRPC messages framed as on the wire: flag, 4-byte length, message.
fn grpc_frames(messages: &[Vec<u8>]) -> Vec<u8> {
    let mut wire = Vec::new();
    for message in messages {
        wire.push(0);
        wire.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        wire.extend_from_slice(message);
    }
    wire
}

/// Reads a request body sent in `chunks` through the front door's guard.
/// Every piece is ready at once, so no timer is ever armed.
fn through_guard(chunks: Vec<&[u8]>, max_message: usize) -> Result<Vec<u8>, String> {
    let frames = chunks.into_iter().map(|chunk| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::copy_from_slice(chunk)))
    });
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let limits = BodyLimits {
        max_message,
        idle: std::time::Duration::from_secs(3600),
    };
    let collected = GuardedBody::new(body, limits)
        .collect()
        .now_or_never()
        .expect("every piece is ready");
    match collected {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(err) => Err(err.to_string()),
    }
}

/// Bytes that look like an SSE stream often enough to reach deep states.
fn sse_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b": ping".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"{\"choices\":[]}".to_vec()),
        Just("é".as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_decoding_never_depends_on_how_bytes_are_split(
        stream in sse_like(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let chunks = split_at(&stream, &cuts);
        let whole = decode(&[&stream]);
        let split = decode(&chunks);
        match (&whole, &split) {
            // A stream with invalid UTF-8 fails however it is split (the
            // event reached before the bad byte may differ).
            (Err(_), Err(_)) => {}
            _ => prop_assert_eq!(whole, split),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_sse_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&[&bytes]);
    }

    #[test]
    fn arbitrary_text_never_panics_the_routing_file_parser(text in "\\PC{0,300}") {
        let _ = Config::parse(&text, "fuzz.yaml", &|_| None);
    }

    #[test]
    fn a_mutated_routing_file_is_parsed_or_rejected_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..8),
    ) {
        let mut text: Vec<char> = include_str!("../../routing.yaml").chars().collect();
        for (at, c) in edits {
            let i = at.index(text.len());
            text[i] = c;
        }
        let text: String = text.into_iter().collect();
        if let Err(err) = Config::parse(&text, "fuzz.yaml", &|_| None) {
            prop_assert!(!err.problems.is_empty());
        }
    }

    #[test]
    fn ndjson_decoding_never_depends_on_how_bytes_are_split(
        stream in prop::collection::vec(
            prop_oneof![
                Just(b"{\"a\":1}".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"  ".to_vec()),
                prop::collection::vec(any::<u8>(), 0..6),
            ],
            0..30,
        ).prop_map(|pieces| pieces.concat()),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        prop_assert_eq!(ndjson_lines(&[&stream]), ndjson_lines(&split_at(&stream, &cuts)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_ndjson_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ndjson_lines(&[&bytes]);
    }

    #[test]
    fn the_body_guard_passes_messages_within_the_limit_whatever_the_split(
        messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let wire = grpc_frames(&messages);
        prop_assert_eq!(through_guard(split_at(&wire, &cuts), 64), Ok(wire.clone()));
    }

    #[test]
    fn the_body_guard_refuses_a_message_over_the_limit_whatever_the_split(
        before in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 0..3),
        over in 33usize..100,
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut messages = before;
        messages.push(vec![7; over]);
        let wire = grpc_frames(&messages);
        let refused = through_guard(split_at(&wire, &cuts), 32);
        prop_assert!(
            refused.as_ref().is_err_and(|err| err.contains("at most 32 bytes")),
            "{:?}", refused
        );
    }
}
