//! Property tests (stable Rust fuzzing): whatever bytes an upstream sends or
//! an operator writes, the decoders and parsers answer with a value or an
//! error, never a panic or a hang.

use llmgate::backend::sse::{SseDecoder, SseError, SseEvent};
use llmgate::chat::{ChatMessage, ChatRequest, Role, SamplingParams};
use llmgate::config::Config;
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
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut start = 0;
        for point in points {
            chunks.push(&stream[start..point]);
            start = point;
        }
        chunks.push(&stream[start..]);
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
    fn the_request_validator_accepts_only_what_upstreams_can_take(
        model in "[a-z]{0,3}",
        messages in 0usize..3,
        temperature in prop::option::of(any::<f32>()),
        top_p in prop::option::of(any::<f32>()),
    ) {
        let req = ChatRequest {
            model: model.clone(),
            messages: vec![ChatMessage { role: Role::User, content: "x".into() }; messages],
            params: SamplingParams { max_tokens: None, temperature, top_p, stop: vec![] },
            stream: false,
            deadline: None,
            caller: Default::default(),
        };
        if req.validate().is_ok() {
            prop_assert!(!model.is_empty() && messages > 0);
            prop_assert!(temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
            prop_assert!(top_p.is_none_or(|p| (0.0..=1.0).contains(&p)));
        }
    }
}
