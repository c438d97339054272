//! The simulator's embeddings: a unit vector per input, drawn from a
//! generator seeded by a hash of the input, so the same input gets the
//! same vector in every run, on every replica, in process (`kind: sim`)
//! and behind `llmgate sim`'s OpenAI (`/v1/embeddings`) and Ollama
//! (`/api/embed`) APIs alike.

/// The dimensions of a simulated vector unless a call asks for others:
/// the size of common small embedding models.
pub(crate) const DIMENSIONS: u32 = 384;

/// The vector for `input` (a text's bytes, or token ids as little-endian
/// bytes), `dimensions` long, scaled to length 1 so cosine similarity is
/// a dot product, as with real embedding models.
pub(crate) fn vector(input: &[u8], dimensions: usize) -> Vec<f32> {
    let mut state = fnv1a(input);
    let mut next = move || {
        // splitmix64: tiny, and the same on every platform.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    raw.into_iter().map(|v| (v * scale) as f32).collect()
}

/// The vector for token ids, hashed as their little-endian bytes.
pub(crate) fn token_vector(ids: &[u32], dimensions: usize) -> Vec<f32> {
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    vector(&bytes, dimensions)
}

/// The tokens a text counts for: its words, at least one, as the
/// simulator counts a prompt.
pub(crate) fn tokens(text: &str) -> u32 {
    u32::try_from(text.split_whitespace().count().max(1)).unwrap_or(u32::MAX)
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike the
/// standard library's hasher, so a simulated vector never changes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_unit_length_deterministic_and_differ_by_input() {
        let a = vector(b"hello", 64);
        assert_eq!(a, vector(b"hello", 64));
        assert_ne!(a, vector(b"world", 64));
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(tokens("two words"), 2);
        assert_eq!(tokens(""), 1);
    }
}
