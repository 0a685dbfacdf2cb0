//! The scanner on answers of any size and depth, fed in odd pieces.

use super::*;
use crate::limits::response::{JsonTap, Observed, Reported};

/// `depth` nested objects and arrays: `{"a":[{"a":[ ... 1 ... ]}]}`.
fn nested(depth: usize) -> String {
    let mut out = String::with_capacity(depth * 8);
    for _ in 0..depth {
        out.push_str(r#"{"a":["#);
    }
    out.push('1');
    for _ in 0..depth {
        out.push_str("]}");
    }
    out
}

/// Piece sizes that cycle through small primes and a large odd one, so
/// every kind of boundary falls between two pieces somewhere.
fn odd_pieces(input: &[u8]) -> Vec<&[u8]> {
    let sizes = [1, 3, 7, 13, 4099, 65_537];
    let mut pieces = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= input.len() {
            break;
        }
        let end = (at + size).min(input.len());
        pieces.push(&input[at..end]);
        at = end;
    }
    pieces
}

fn read(pieces: &[&[u8]]) -> Observed {
    let mut tap = JsonTap::new();
    for piece in pieces {
        tap.feed(piece);
    }
    tap.finish()
}

fn plain(input: u64, output: u64) -> Option<Reported> {
    Some(Reported {
        input,
        output,
        ..Reported::default()
    })
}

#[test]
fn usage_after_ten_thousand_levels_is_read() {
    let deep = nested(10_000);
    // A Responses body whose tool schema nests; an Anthropic message whose
    // tool_use input nests; a chat body with deep logprobs.
    let bodies = [
        format!(
            r#"{{"model":"gpt-x","tools":[{{"type":"function","parameters":{deep}}}],"output":[{{"type":"message","content":[{{"text":"hey"}}]}}],"usage":{{"input_tokens":9,"output_tokens":2}}}}"#
        ),
        format!(
            r#"{{"model":"gpt-x","content":[{{"type":"text","text":"hey"}},{{"type":"tool_use","input":{deep}}}],"usage":{{"input_tokens":9,"output_tokens":2}}}}"#
        ),
        format!(
            r#"{{"model":"gpt-x","choices":[{{"message":{{"content":"hey"}},"logprobs":{deep}}}],"usage":{{"prompt_tokens":9,"completion_tokens":2}}}}"#
        ),
    ];
    for body in &bodies {
        for pieces in [vec![body.as_bytes()], odd_pieces(body.as_bytes())] {
            let seen = read(&pieces);
            assert_eq!(seen.reported, plain(9, 2));
            assert_eq!(seen.model.as_deref(), Some("gpt-x"));
            assert_eq!(seen.generated_bytes, 3);
        }
    }
}

#[test]
fn deep_nesting_on_a_tracked_path_is_skipped_not_an_error() {
    // Past the levels that matter, content is skipped whatever it holds.
    let deep = nested(10_000);
    let body = format!(
        r#"{{"choices":[{{"message":{{"tool_calls":[{{"function":{{"arguments":"ab","x":{deep}}}}}]}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":1}}}}"#
    );
    let seen = read(&[body.as_bytes()]);
    assert_eq!(seen.reported, plain(1, 1));
    assert_eq!(seen.generated_bytes, 2);
}

#[test]
fn a_forty_mib_answer_fed_in_odd_pieces_is_read_to_its_usage() {
    // 40 MiB of generated text, then 40 MiB of logprobs-like structure,
    // then the usage.
    let text = "word ".repeat(8 << 20);
    let mut logprobs = String::with_capacity(41 << 20);
    logprobs.push('[');
    while logprobs.len() < 40 << 20 {
        logprobs.push_str(r#"{"token":"w\"o","logprob":-0.25,"bytes":[119,111],"top_logprobs":[{"token":"x","logprob":-1e-3}]},"#);
    }
    logprobs.push_str("{}]");
    let body = format!(
        r#"{{"id":"c","model":"gpt-4o","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":{{"content":{logprobs}}}}}],"usage":{{"prompt_tokens":12,"completion_tokens":8388608,"prompt_tokens_details":{{"cached_tokens":4}}}}}}"#
    );
    let seen = read(&odd_pieces(body.as_bytes()));
    assert_eq!(
        seen.reported,
        Some(Reported {
            input: 12,
            output: 8 << 20,
            cached_input: 4,
            cache_write: 0
        })
    );
    assert_eq!(seen.generated_bytes, text.len() as u64);
}

#[test]
fn an_unfinished_or_malformed_document_reveals_nothing() {
    let deep = nested(300);
    let good = format!(r#"{{"x":{deep},"usage":{{"prompt_tokens":1}}}}"#);
    assert_eq!(read(&[good.as_bytes()]).reported, plain(1, 0));
    for bad in [
        // Cut inside the skipped part, or before the end.
        good[..good.len() / 2].to_owned(),
        good[..good.len() - 1].to_owned(),
        // Unbalanced skipped part: it swallows the rest.
        format!(r#"{{"x":[{deep},"usage":{{"prompt_tokens":1}}}}"#),
        // Bytes that are no JSON inside a skipped part.
        r#"{"x":[DONE],"usage":{"prompt_tokens":1}}"#.to_owned(),
        r#"{"x":{"a":b},"usage":{"prompt_tokens":1}}"#.to_owned(),
        // Trailing bytes, leading zeros, bad escapes, bad literals.
        format!("{good} x"),
        r#"{"usage":{"prompt_tokens":01}}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1},"model":"a\q"}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1},"model":nul}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1},}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1}]"#.to_owned(),
        r#"{"usage" {"prompt_tokens":1}}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1-}}"#.to_owned(),
        r#"{"usage":{"prompt_tokens":1.}}"#.to_owned(),
    ] {
        assert_eq!(read(&[bad.as_bytes()]), Observed::default(), "{bad:.80}");
        let bytes: Vec<&[u8]> = bad.as_bytes().chunks(1).collect();
        assert_eq!(read(&bytes), Observed::default(), "{bad:.80}");
    }
}

#[test]
fn numbers_in_every_form_are_read_or_refused_like_json() {
    for (number, count) in [
        ("0", Some(0)),
        ("7", Some(7)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("-0", None),
        ("-3", None),
        ("3.0", None),
        ("3e2", None),
        ("3E+2", None),
        ("0.5e-2", None),
    ] {
        let body = format!(r#"{{"usage":{{"prompt_tokens":{number}}}}}"#);
        let expected = count.and_then(|c| plain(c, 0));
        for pieces in [vec![body.as_bytes()], body.as_bytes().chunks(1).collect()] {
            assert_eq!(read(&pieces).reported, expected, "{number}");
        }
    }
    // A number may end the document.
    let mut scanner = Scanner::new(Shape::Body);
    scanner.feed(b"12");
    assert!(scanner.finish());
}

#[test]
fn the_scanner_holds_no_more_than_its_caps() {
    // A model longer than its cap, a 5 MiB key and a 5 MiB event type are
    // measured, not kept.
    let long = "k".repeat(5 << 20);
    let body = format!(r#"{{"{long}":1,"model":"{long}","usage":{{"prompt_tokens":1}}}}"#);
    let mut scanner = Scanner::new(Shape::Body);
    for piece in body.as_bytes().chunks(8191) {
        scanner.feed(piece);
    }
    assert!(scanner.finish());
    assert!(scanner.findings().models[TOP].bytes.capacity() <= MODEL_CAP);
    assert_eq!(scanner.findings().models[TOP].model(), None);
    let event = format!(r#"{{"type":"{long}"}}"#);
    let mut scanner = Scanner::new(Shape::Event);
    scanner.feed(event.as_bytes());
    assert!(scanner.finish());
    assert!(scanner.findings().kind.bytes.capacity() <= KIND_CAP);
    assert!(scanner.findings().kind.is_string());
    assert_eq!(scanner.findings().kind.text(), None);
}

/// The word-at-a-time search for the end of a string's plain run finds
/// what a byte-by-byte search finds: at every position, in strings of
/// every length around the word and the vector-search boundaries, among
/// bytes that differ from `"` and `\` by one bit (the high one included).
#[test]
fn the_string_stop_search_finds_the_first_quote_or_backslash() {
    let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\');
    let fillers = [b'a', 0xA2, 0xDC, b'#', b'!', b']', 0x00, 0xFF, b'\n'];
    let mut checked = 0;
    for len in 0..=140 {
        for &fill in &fillers {
            let plain = vec![fill; len];
            assert_eq!(super::string_stop(&plain), naive(&plain), "{len} {fill}");
            for at in 0..len {
                for stop in [b'"', b'\\'] {
                    let mut s = plain.clone();
                    s[at] = stop;
                    // A second stop further on must not be the one found.
                    if at + 3 < len {
                        s[at + 3] = b'"';
                    }
                    assert_eq!(super::string_stop(&s), naive(&s), "{len} {fill} {at}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100_000);
}
