//! Embeddings in the one vocabulary: what a call asks to embed, and the
//! vectors that come back.
//!
//! An embedding call travels the chat path unchanged (the same keys,
//! limits, routes, retries, balancers and records) as a [`ChatRequest`]
//! with no messages whose `extras.embed` says what to embed; the backend
//! answers it with one final event whose [`Completion`] carries the
//! vectors. Carrying it this way rather than as a second request type is
//! what lets every layer (admission, token estimates, load held until the
//! answer ends, the access log) serve embeddings without knowing them:
//! only the fronts and the adapters do.
//!
//! [`ChatRequest`]: super::ChatRequest
//! [`Completion`]: super::Completion

use crate::error::GatewayError;

/// The most inputs one call may embed (OpenAI's own limit).
pub(crate) const MAX_EMBED_INPUTS: usize = 2048;

/// The most dimensions a caller may ask for: larger than any model's, and
/// a bound on what the simulator allocates per vector.
pub(crate) const MAX_DIMENSIONS: u32 = 65_536;

/// Bytes a token id counts for in limits and token estimates: the bytes
/// of text a token stands for in those estimates.
const BYTES_PER_TOKEN_ID: usize = 4;

/// What one embedding call asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EmbedRequest {
    /// The inputs, one vector each, in order.
    pub input: EmbedInput,
    /// The vectors' length, for models that can shorten them (OpenAI's
    /// `text-embedding-3`, Matryoshka models on vLLM); `None` is the
    /// model's own.
    pub dimensions: Option<u32>,
}

/// The inputs of an embedding call: texts, or texts already tokenized
/// for the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EmbedInput {
    /// Texts.
    Texts(Vec<String>),
    /// Token ids, one list per input.
    Tokens(Vec<Vec<u32>>),
}

/// The vectors an upstream answered with, one per input in input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Embeddings {
    /// The vectors.
    pub vectors: Vec<Vec<f32>>,
}

// === impl EmbedRequest ===

impl EmbedRequest {
    /// How many inputs the call embeds.
    pub(crate) fn len(&self) -> usize {
        match &self.input {
            EmbedInput::Texts(texts) => texts.len(),
            EmbedInput::Tokens(lists) => lists.len(),
        }
    }

    /// Whether there is nothing to embed.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input's size in bytes as limits and token estimates count it:
    /// texts by their bytes, token ids as the text they stand for.
    pub(crate) fn content_len(&self) -> usize {
        match &self.input {
            EmbedInput::Texts(texts) => texts.iter().map(String::len).sum(),
            EmbedInput::Tokens(lists) => lists
                .iter()
                .map(|ids| ids.len().saturating_mul(BYTES_PER_TOKEN_ID))
                .fold(0, usize::saturating_add),
        }
    }

    /// What every upstream needs, checked before the call goes anywhere,
    /// naming the field (`input`, `input[3]`, `dimensions`).
    pub(crate) fn validate(&self) -> Result<(), GatewayError> {
        if self.is_empty() {
            return Err(GatewayError::invalid_argument(
                "input",
                "is empty; send a text, a list of texts or a list of token lists",
            ));
        }
        if self.len() > MAX_EMBED_INPUTS {
            return Err(GatewayError::invalid_argument(
                "input",
                &format!(
                    "has {} inputs; send at most {MAX_EMBED_INPUTS} per call",
                    self.len()
                ),
            ));
        }
        let empty = match &self.input {
            EmbedInput::Texts(texts) => texts.iter().position(String::is_empty),
            EmbedInput::Tokens(lists) => lists.iter().position(Vec::is_empty),
        };
        if let Some(i) = empty {
            return Err(GatewayError::invalid_argument(
                &format!("input[{i}]"),
                "is empty; every input needs at least one character or token",
            ));
        }
        if self
            .dimensions
            .is_some_and(|d| d == 0 || d > MAX_DIMENSIONS)
        {
            return Err(GatewayError::invalid_argument(
                "dimensions",
                &format!("must be between 1 and {MAX_DIMENSIONS}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_count_by_their_text_and_bad_ones_are_named() {
        let texts = EmbedRequest {
            input: EmbedInput::Texts(vec!["abc".into(), "de".into()]),
            dimensions: None,
        };
        assert_eq!(texts.content_len(), 5);
        assert!(texts.validate().is_ok());
        let tokens = EmbedRequest {
            input: EmbedInput::Tokens(vec![vec![1, 2, 3], vec![]]),
            dimensions: Some(8),
        };
        assert_eq!(tokens.content_len(), 12);
        let err = tokens.validate().expect_err("an empty token list");
        assert!(err.message().contains("input[1]"), "{err:?}");
        let none = EmbedRequest {
            input: EmbedInput::Texts(Vec::new()),
            dimensions: None,
        };
        assert!(none.validate().is_err());
        let zero = EmbedRequest {
            dimensions: Some(0),
            ..texts
        };
        let err = zero.validate().expect_err("zero dimensions");
        assert!(err.message().contains("dimensions"), "{err:?}");
    }
}
