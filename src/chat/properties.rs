//! Property tests of the vocabulary's own parsers: whatever a caller sends
//! (a request, an authorization header), the answer is a value or a
//! refusal, never a panic, and it is the documented one.
//!
//! In the crate rather than in `tests/it/properties.rs` beside the other
//! property tests: they build a [`ChatRequest`] field by field, which the
//! public API has no reason to allow.

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_request_validator_accepts_only_what_upstreams_can_take(
        model in "[a-z]{0,3}",
        messages in 0usize..3,
        temperature in prop::option::of(any::<f32>()),
        top_p in prop::option::of(any::<f32>()),
    ) {
        let req = ChatRequest {
            model: model.clone(),
            messages: vec![ChatMessage::text(Role::User, "x"); messages],
            params: SamplingParams { max_tokens: None, temperature, top_p, stop: vec![] },
            extras: Default::default(),
            stream: false,
            deadline: None,
            call: Default::default(),
            caller: Default::default(),
            prefill: false,
        };
        if req.validate().is_ok() {
            prop_assert!(!model.is_empty() && messages > 0);
            prop_assert!(temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
            prop_assert!(top_p.is_none_or(|p| (0.0..=1.0).contains(&p)));
        }
    }

    #[test]
    fn only_a_bearer_key_of_printable_ascii_is_a_presented_key(value in prop::collection::vec(any::<u8>(), 0..40)) {
        match Caller::from_authorization(Some(&value)) {
            Caller::Presented(key) => {
                let text = String::from_utf8(value).expect("a presented key came from text");
                prop_assert!(text.trim().to_ascii_lowercase().starts_with("bearer "));
                prop_assert!(!key.expose().is_empty());
                prop_assert!(key.expose().bytes().all(|b| b.is_ascii_graphic()));
                prop_assert!(text.trim_end().ends_with(key.expose()));
            }
            Caller::Unreadable => {}
            other => prop_assert!(false, "a header is never {:?}", other),
        }
    }

    #[test]
    fn a_bearer_key_is_read_back_whatever_the_scheme_case(
        key in "[!-~]{1,40}",
        scheme in "[bB][eE][aA][rR][eE][rR]",
    ) {
        let header = format!("{scheme} {key}");
        match Caller::from_authorization(Some(header.as_bytes())) {
            Caller::Presented(presented) => prop_assert_eq!(presented.expose(), key.as_str()),
            other => prop_assert!(false, "{} read as {:?}", header, other),
        }
    }
}
