//! Properties every reader keeps on any input: no panic, and the same
//! answer however the input is cut into pieces.

use proptest::prelude::*;

use super::{Decoder, JsonTap, SseTap};

/// Bytes biased towards what the readers look for.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"event: message_delta\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b":".to_vec()),
        Just(b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}".to_vec()),
        Just(b"\"usage\":null".to_vec()),
        Just(b"{\"a\":1,\"usage\":null}".to_vec()),
        Just(b"{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(b",".to_vec()),
        Just(b"}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..8),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|parts| parts.concat())
}

fn cut(input: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for point in points {
        pieces.push(input[from..point].to_vec());
        from = point;
    }
    pieces.push(input[from..].to_vec());
    pieces
}

fn tap_all(strip: bool, pieces: &[Vec<u8>]) -> (Vec<u8>, super::Observed) {
    let mut tap = SseTap::new(strip);
    let mut out = Vec::new();
    for piece in pieces {
        tap.feed(piece, &mut out);
    }
    tap.finish(&mut out);
    (out, tap.observed())
}

proptest! {
    #[test]
    fn sse_reader_never_panics_and_ignores_how_input_is_cut(
        input in stream_bytes(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        strip in any::<bool>(),
    ) {
        let whole = tap_all(strip, std::slice::from_ref(&input));
        let pieces = tap_all(strip, &cut(&input, &cuts));
        prop_assert_eq!(&whole, &pieces);
        if !strip || !input.windows(5).any(|w| w == b"usage") {
            prop_assert_eq!(&whole.0, &input);
        }
    }

    #[test]
    fn sse_reader_survives_arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        for strip in [false, true] {
            let _ = tap_all(strip, std::slice::from_ref(&input));
        }
    }

    #[test]
    fn json_reader_never_panics(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut tap = JsonTap::new();
        tap.feed(&input);
        let _ = tap.finish();
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(
        input in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(any::<usize>(), 0..4),
    ) {
        for encoding in ["gzip", "deflate", "br", "zstd", "identity"] {
            let Some(mut decoder) = Decoder::for_encoding_with_limit(encoding, 1 << 16) else {
                continue;
            };
            for piece in cut(&input, &cuts) {
                if decoder.feed(&piece).is_err() {
                    break;
                }
            }
        }
    }
}
