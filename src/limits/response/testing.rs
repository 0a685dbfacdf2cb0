//! Test support: the ways a body can arrive in pieces.

/// Every way the tests feed `input`: whole, split in two at every byte
/// position, and one byte at a time.
pub(super) fn chunkings(input: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut all = vec![vec![input]];
    for at in 0..=input.len() {
        let (head, tail) = input.split_at(at);
        all.push(vec![head, tail]);
    }
    all.push(input.chunks(1).collect());
    all
}
