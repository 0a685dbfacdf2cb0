//! Request ids (`x-request-id`) for requests the client did not name: a
//! random per-process prefix and a counter, 32 hex digits, unique within
//! the process and across processes with overwhelming likelihood. Cheap
//! enough for every request (one atomic add and one format).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The next id.
pub fn next() -> String {
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
    format!(
        "{prefix:016x}{:016x}",
        counter.fetch_add(1, Ordering::Relaxed)
    )
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
}
