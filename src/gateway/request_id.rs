//! Request ids (`x-request-id`) for requests the client did not name: a
//! random per-process prefix and a counter, 32 hex digits, unique within
//! the process and across processes with overwhelming likelihood. Cheap
//! enough for every request (one atomic add and 16 bytes hex-encoded into
//! a buffer on the stack, no formatting machinery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

/// The next id.
pub fn next() -> String {
    next_digits().iter().map(|&b| char::from(b)).collect()
}

/// The next id as a header value (what the proxy sends).
pub fn next_header() -> HeaderValue {
    let digits = next_digits();
    HeaderValue::from_bytes(&digits).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The next id's 32 lower-case hex digits: the prefix, then the counter.
fn next_digits() -> [u8; 32] {
    static IDS: OnceLock<(u64, AtomicU64)> = OnceLock::new();
    let (prefix, counter) = IDS.get_or_init(|| {
        let mut seed = [0u8; 16];
        // Without OS randomness the ids stay unique within the process.
        let _ = getrandom::fill(&mut seed);
        let [a, b] = [&seed[..8], &seed[8..]].map(|s| {
            let mut word = [0u8; 8];
            word.copy_from_slice(s);
            u64::from_le_bytes(word)
        });
        (a, AtomicU64::new(b))
    });
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut out = [b'0'; 32];
    // 8 bytes into 16 digits: the lengths match, so neither can fail.
    let (high, low) = out.split_at_mut(16);
    let _ = hex::encode_to_slice(prefix.to_be_bytes(), high);
    let _ = hex::encode_to_slice(n.to_be_bytes(), low);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_32_hex_digits_and_distinct() {
        let (a, b) = (super::next(), super::next());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(a[..16], b[..16], "one process prefix");
    }

    #[test]
    fn digits_are_the_prefix_then_the_counter_in_hex() {
        let (a, b) = (super::next_header(), super::next_header());
        let (a, b) = (a.to_str().expect("ascii"), b.to_str().expect("ascii"));
        assert_eq!(a.len(), 32);
        assert_eq!(a[..16], b[..16]);
        let count = |s: &str| u64::from_str_radix(&s[16..], 16).expect("hex");
        // Other tests draw ids too: the counter only grows (wrapping aside).
        assert_ne!(count(a), count(b));
        assert!(a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
    }
}
