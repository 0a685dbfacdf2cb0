//! Which credential is a token: three base64url parts joined by `.`, whose
//! first part decodes to a JSON object with `alg`. Anything else is a key.
//!
//! [`is_token`] runs on every request once some organisation accepts
//! tokens, so an ordinary key (`sgk-…`, no dot) is turned away after one
//! scan for dots, before anything is decoded.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// Longest first part looked at: a header with a certificate chain (`x5c`)
/// takes a few KiB; anything longer is not treated as a token.
pub const MAX_HEADER_CHARS: usize = 8 * 1024;

/// Longest token verified (a header, a payload and a signature); longer
/// token-shaped credentials fail the format check.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Whether `credential` is a token by the shape rule.
pub fn is_token(credential: &str) -> bool {
    split(credential).is_some_and(|parts| header_has_alg(parts.header))
}

/// The three parts of a token-shaped credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parts<'t> {
    /// The encoded header.
    pub header: &'t str,
    /// The encoded payload.
    pub payload: &'t str,
    /// The encoded signature.
    pub signature: &'t str,
    /// `header.payload`: what the signature signs.
    pub signing_input: &'t str,
}

/// The bytes of a compact JWS: base64url's alphabet and the two dots.
static TOKEN_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.';
        b += 1;
    }
    table
};

/// Splits a credential into three non-empty base64url parts; `None` when it
/// is not so shaped (the common case, a key, leaves at the dot count).
pub fn split(credential: &str) -> Option<Parts<'_>> {
    let bytes = credential.as_bytes();
    let mut dots = memchr::memchr_iter(b'.', bytes);
    let (first, second) = (dots.next()?, dots.next()?);
    if dots.next().is_some() {
        return None;
    }
    let header = &credential[..first];
    let payload = &credential[first + 1..second];
    let signature = &credential[second + 1..];
    // A table lookup per byte, with no early exit: a token is mostly
    // checked whole, and a branch per character costs several times this.
    let all_b64 = bytes
        .iter()
        .fold(true, |ok, &b| ok & TOKEN_CHAR[usize::from(b)]);
    // The signature may be empty only for `alg: none`, which is still a
    // token (so that it is refused as one, by name).
    if header.is_empty() || payload.is_empty() || !all_b64 || header.len() > MAX_HEADER_CHARS {
        return None;
    }
    Some(Parts {
        header,
        payload,
        signature,
        signing_input: &credential[..second],
    })
}

/// Decodes one base64url part (no padding, canonical).
pub fn decode_part(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

/// A JSON object with an `alg` member (of any value).
#[derive(Deserialize)]
struct AlgProbe {
    #[allow(dead_code)]
    alg: IgnoredAny,
}

fn header_has_alg(header: &str) -> bool {
    decode_part(header).is_some_and(|json| object::<AlgProbe>(&json).is_some())
}

/// Reads a JSON object into `T` (serde would also read a struct from an
/// array; a JOSE header or a payload is an object).
pub fn object<'de, T: serde::Deserialize<'de>>(json: &'de [u8]) -> Option<T> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn keys_are_not_tokens() {
        for key in [
            "sgk-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "",
            "sk-proj-abc",
            "a.b",
            "..",
            "a..c",
            ".b.c",
            "a.b.c.d",
        ] {
            assert!(!is_token(key), "{key:?}");
        }
    }

    #[test]
    fn a_json_header_with_alg_makes_a_token() {
        let h = b64(r#"{"alg":"RS256","kid":"k1"}"#);
        assert!(is_token(&format!("{h}.e30.c2ln")));
        // `alg: none` with an empty signature is a token, refused later.
        let none = b64(r#"{"alg":"none"}"#);
        assert!(is_token(&format!("{none}.e30.")));
        // Any value of alg: the alg check names what is wrong.
        assert!(is_token(&format!("{}.e30.x", b64(r#"{"alg":5}"#))));
        assert!(is_token(&format!(
            "{}.e30.x",
            b64(r#" { "alg" : "ES256" } "#)
        )));
    }

    #[test]
    fn other_three_part_credentials_are_keys() {
        for header in [
            r#"{"typ":"JWT"}"#,
            r#"["alg"]"#,
            r#""alg""#,
            r#"{"alg":"RS256""#,
            r#"{"alg":"RS256","alg":"ES256"}"#,
            "not json",
        ] {
            let t = format!("{}.e30.c2ln", b64(header));
            assert!(!is_token(&t), "{header}");
        }
        // Padding, standard-alphabet characters, spaces.
        let h = b64(r#"{"alg":"RS256"}"#);
        for t in [
            format!("{h}=.e30.c2ln"),
            format!("{h}.e30+.c2ln"),
            format!("{h}.e30/.c2ln"),
            format!("{h} .e30.c2ln"),
            format!("{h}.e30.c2ln\n"),
        ] {
            assert!(!is_token(&t), "{t:?}");
        }
        // A header part too long to be one.
        let long = b64(&format!(
            r#"{{"alg":"RS256","x":"{}"}}"#,
            "a".repeat(MAX_HEADER_CHARS)
        ));
        assert!(!is_token(&format!("{long}.e30.c2ln")));
    }

    #[test]
    fn split_gives_the_signing_input() {
        let p = split("aa.bb.cc").expect("three parts");
        assert_eq!(p.header, "aa");
        assert_eq!(p.payload, "bb");
        assert_eq!(p.signature, "cc");
        assert_eq!(p.signing_input, "aa.bb");
        assert_eq!(split("aa.bb.").map(|p| p.signature), Some(""));
    }

    #[test]
    fn only_base64url_and_dots_make_a_token() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
            assert_eq!(TOKEN_CHAR[usize::from(b)], want, "byte {b}");
            if b != b'.' {
                let mut t = b"aa.bb.cc".to_vec();
                t[4] = b;
                let shaped = std::str::from_utf8(&t).ok().and_then(split).is_some();
                assert_eq!(shaped, want, "byte {b} inside the payload");
            }
        }
    }
}
