//! The hashes prefix affinity ranks endpoints by: a prompt's leading part,
//! an endpoint's URL, and the rendezvous score of the two. Fixed
//! functions (FNV-1a, splitmix64's finaliser), not the standard library's
//! randomly keyed hasher, so every replica and every build ranks alike and
//! a conversation finds its endpoint whichever replica it reaches.

/// The hash of a prompt's leading `chars` characters (role and text of the
/// messages from the first), the same in every replica and every build.
pub(crate) fn prefix_key<'a>(
    messages: impl IntoIterator<Item = (&'a str, &'a str)>,
    chars: u32,
) -> u64 {
    let mut left = chars as usize;
    let mut hash = FNV_OFFSET;
    for (role, text) in messages {
        if left == 0 {
            break;
        }
        hash = fnv1a(hash, role.as_bytes());
        let cut = text.char_indices().nth(left).map_or(text.len(), |(i, _)| i);
        hash = fnv1a(hash, &text.as_bytes()[..cut]);
        left = left.saturating_sub(text[..cut].chars().count());
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, continued from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// An endpoint's score for a prefix: a good mix of both hashes
/// (splitmix64's finaliser), so rankings are independent per prefix.
pub(super) fn rendezvous(prefix: u64, endpoint: u64) -> u64 {
    let mut x = prefix ^ endpoint.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The hash that places an endpoint in rendezvous rankings: its URL's.
pub(super) fn endpoint_key(url: &http::Uri) -> u64 {
    fnv1a(FNV_OFFSET, url.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(messages: &[(&str, &str)], chars: u32) -> u64 {
        prefix_key(messages.iter().copied(), chars)
    }

    #[test]
    fn only_the_leading_characters_count() {
        let system = ("system", "You are terse.");
        let a = key(&[system, ("user", "first question")], 20);
        let b = key(&[system, ("user", "first question, then more")], 20);
        let c = key(&[system, ("user", "another question")], 40);
        assert_eq!(a, b, "the same first 20 characters");
        assert_ne!(a, c);
        assert_eq!(
            key(&[("user", "héllo wörld")], 3),
            key(&[("user", "hél")], 3)
        );
    }

    #[test]
    fn rankings_move_only_the_prefixes_of_an_endpoint_that_leaves() {
        let endpoints: Vec<u64> = (0..5)
            .map(|i| {
                endpoint_key(
                    &format!("http://10.0.0.{i}:8000")
                        .parse()
                        .unwrap_or_default(),
                )
            })
            .collect();
        let first =
            |pool: &[u64], prefix: u64| pool.iter().copied().max_by_key(|e| rendezvous(prefix, *e));
        let without_last = &endpoints[..4];
        let mut moved = 0;
        for prefix in 0..2000u64 {
            let before = first(&endpoints, prefix);
            let after = first(without_last, prefix);
            if before != after {
                assert_eq!(
                    before,
                    Some(endpoints[4]),
                    "only the leaver's prefixes move"
                );
                moved += 1;
            }
        }
        // About a fifth of the prefixes were the leaver's.
        assert!((250..550).contains(&moved), "{moved}");
    }
}
