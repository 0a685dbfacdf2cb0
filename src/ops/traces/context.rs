//! W3C Trace Context: reading a client's `traceparent` (and keeping its
//! `tracestate` to pass on), and writing the `traceparent` sent upstream.
//!
//! Only what the proxy needs: a valid `traceparent` makes the request's
//! span a child of the client's span, and its sampled flag decides whether
//! the request is recorded. An invalid one is ignored and the trace starts
//! anew (its `tracestate` is then dropped too, as the W3C rules say).

use opentelemetry::trace::{SpanId, TraceId};

/// The `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header's name.
pub const TRACESTATE: &str = "tracestate";
/// The `traceparent` header's name, for lookups that skip parsing it.
pub static TRACEPARENT_NAME: http::HeaderName = http::HeaderName::from_static(TRACEPARENT);
/// The `tracestate` header's name, for lookups that skip parsing it.
pub static TRACESTATE_NAME: http::HeaderName = http::HeaderName::from_static(TRACESTATE);
/// Longest `tracestate` passed on (the W3C minimum a vendor must carry).
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// A parsed `traceparent`: the caller's trace, its span, and whether the
/// caller recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace (never all zeros).
    pub trace_id: TraceId,
    /// The caller's span (never all zeros).
    pub parent_id: SpanId,
    /// The sampled flag.
    pub sampled: bool,
}

/// Parses a `traceparent` value: `VV-TTTT…(32)-PPPP…(16)-FF`, lower-case
/// hex. Version `ff` is invalid; version `00` is exactly 55 characters; a
/// later version may carry more fields after a `-`. All-zero ids and
/// upper-case hex are invalid. Surrounding spaces and tabs are ignored.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let value = trim_ows(value);
    if value.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_u8(&value[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && value.len() != TRACEPARENT_LEN {
        return None;
    }
    if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let parent_id = hex_u64(&value[36..52])?;
    let flags = hex_u8(&value[53..55])?;
    if trace_id == 0 || parent_id == 0 {
        return None;
    }
    Some(TraceParent {
        trace_id: TraceId::from(trace_id),
        parent_id: SpanId::from(parent_id),
        sampled: flags & 1 == 1,
    })
}

/// Formats a version-00 `traceparent` naming `span_id` in `trace_id`.
pub fn format_traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> String {
    ascii(&traceparent_bytes(trace_id, span_id, sampled))
}

/// The same `traceparent` as a header value, made once from its bytes.
pub fn traceparent_value(trace_id: TraceId, span_id: SpanId, sampled: bool) -> http::HeaderValue {
    let bytes = traceparent_bytes(trace_id, span_id, sampled);
    // Hex digits and dashes: always a valid value.
    http::HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

fn traceparent_bytes(trace_id: TraceId, span_id: SpanId, sampled: bool) -> [u8; TRACEPARENT_LEN] {
    let mut out = [0u8; TRACEPARENT_LEN];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    write_hex(&mut out[3..35], &trace_id.to_bytes());
    out[35] = b'-';
    write_hex(&mut out[36..52], &span_id.to_bytes());
    out[52] = b'-';
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// A trace id as 32 lower-case hex digits, as logs and backends show it.
pub fn trace_id_hex(trace_id: TraceId) -> String {
    let mut out = [0u8; 32];
    write_hex(&mut out, &trace_id.to_bytes());
    ascii(&out)
}

/// The hex digits and dashes written above, as a `String` (always ASCII).
fn ascii(bytes: &[u8]) -> String {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// What a request brought: its parent, if its `traceparent` was valid, and
/// the `tracestate` to pass on with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The client's span, when its `traceparent` was valid.
    pub parent: Option<TraceParent>,
    /// The client's `tracestate`, kept only beside a valid parent.
    pub tracestate: Option<Box<str>>,
    /// The request carried a `traceparent` or `tracestate` line, valid or
    /// not (the proxy then removes them before sending its own).
    pub present: bool,
}

impl Incoming {
    /// From the header values: `traceparent` given once (a repeated one is
    /// invalid, so the caller passes `None` or uses
    /// [`Incoming::from_headers`]), `tracestate` lines joined with `,`.
    pub fn new(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Incoming {
        let parent = traceparent.and_then(parse_traceparent);
        let tracestate = match parent {
            Some(_) => tracestate.and_then(clean_tracestate),
            None => None,
        };
        Incoming {
            parent,
            tracestate,
            present: false,
        }
    }

    /// From a request's headers: a `traceparent` that appears more than
    /// once is invalid; several `tracestate` lines are one list.
    pub fn from_headers(headers: &http::HeaderMap) -> Incoming {
        let mut parents = headers.get_all(&TRACEPARENT_NAME).iter();
        let first = parents.next();
        let traceparent = match (first, parents.next()) {
            (Some(one), None) => Some(one.as_bytes()),
            _ => None,
        };
        let any_parent = first.is_some();
        let mut states = headers.get_all(&TRACESTATE_NAME).iter();
        let tracestate: Option<std::borrow::Cow<'_, [u8]>> = match states.next() {
            None => None,
            Some(first) => {
                let rest: Vec<&http::HeaderValue> = states.collect();
                if rest.is_empty() {
                    Some(std::borrow::Cow::Borrowed(first.as_bytes()))
                } else {
                    let mut joined = first.as_bytes().to_vec();
                    for v in rest {
                        joined.push(b',');
                        joined.extend_from_slice(v.as_bytes());
                    }
                    Some(std::borrow::Cow::Owned(joined))
                }
            }
        };
        let mut incoming = Incoming::new(traceparent, tracestate.as_deref());
        incoming.present = any_parent || tracestate.is_some();
        incoming
    }
}

/// A `tracestate` worth passing on: printable ASCII, not empty, at most
/// [`MAX_TRACESTATE_LEN`] bytes. Anything else is dropped whole.
fn clean_tracestate(value: &[u8]) -> Option<Box<str>> {
    let value = trim_ows(value);
    if value.is_empty() || value.len() > MAX_TRACESTATE_LEN {
        return None;
    }
    if !value.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    std::str::from_utf8(value).ok().map(Box::from)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A lower-case hex digit's value.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_u8(s: &[u8]) -> Option<u8> {
    Some(hex_digit(s[0])? << 4 | hex_digit(s[1])?)
}

fn hex_u64(s: &[u8]) -> Option<u64> {
    s.iter()
        .try_fold(0u64, |acc, &b| Some(acc << 4 | u64::from(hex_digit(b)?)))
}

fn hex_u128(s: &[u8]) -> Option<u128> {
    s.iter()
        .try_fold(0u128, |acc, &b| Some(acc << 4 | u128::from(hex_digit(b)?)))
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    // `out` is always exactly twice `bytes` here; on a mismatch the
    // digits stay zero bytes rather than panicking.
    let _ = hex::encode_to_slice(bytes, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(
            p.trace_id,
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736u128)
        );
        assert_eq!(p.parent_id, SpanId::from(0x00f067aa0ba902b7u64));
        assert!(p.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(!parse_traceparent(unsampled.as_bytes()).unwrap().sampled);
        // Other flag bits do not make it sampled; the sampled bit does.
        assert!(
            !parse_traceparent(VALID.replace("-01", "-02").as_bytes())
                .unwrap()
                .sampled
        );
        assert!(
            parse_traceparent(VALID.replace("-01", "-03").as_bytes())
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn round_trips_through_format() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(format_traceparent(p.trace_id, p.parent_id, true), VALID);
        assert_eq!(
            traceparent_value(p.trace_id, p.parent_id, true).as_bytes(),
            VALID.as_bytes()
        );
        assert_eq!(
            format_traceparent(p.trace_id, p.parent_id, false),
            VALID.replace("-01", "-00")
        );
        assert_eq!(trace_id_hex(p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Leading zeros are kept.
        assert_eq!(
            format_traceparent(TraceId::from(1u128), SpanId::from(2u64), true),
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert!(parse_traceparent(format!(" \t{VALID} ").as_bytes()).is_some());
    }

    #[test]
    fn rejects_invalid_values() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("00", "too short"),
            (&VALID[..54], "one short"),
            (&format!("{VALID}0"), "version 00 with extra characters"),
            (&format!("{VALID}-extra"), "version 00 with an extra field"),
            (&VALID.replacen("00-", "ff-", 1), "version ff"),
            (&VALID.replacen("00-", "0g-", 1), "version not hex"),
            (&VALID.to_uppercase(), "upper case"),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "upper-case trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                "upper-case parent id",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all-zero trace id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all-zero parent id",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                "dash in the wrong place",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "wrong separators",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                "flags not hex",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
                "trace id not hex",
            ),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "a sign is not a digit",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                "a later version with junk after the flags",
            ),
        ];
        for (value, why) in cases {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{why}: {value}");
        }
    }

    #[test]
    fn a_later_version_is_read_for_its_known_fields() {
        let later = VALID.replacen("00-", "cc-", 1);
        assert!(parse_traceparent(later.as_bytes()).unwrap().sampled);
        let with_more = format!("{later}-what-the-future-holds");
        let p = parse_traceparent(with_more.as_bytes()).unwrap();
        assert_eq!(p.parent_id, SpanId::from(0x00f067aa0ba902b7u64));
    }

    #[test]
    fn tracestate_is_kept_only_beside_a_valid_parent() {
        let ok = Incoming::new(Some(VALID.as_bytes()), Some(b"vendor=abc,other=1"));
        assert!(ok.parent.is_some());
        assert_eq!(ok.tracestate.as_deref(), Some("vendor=abc,other=1"));
        let bad = Incoming::new(Some(b"00-zz"), Some(b"vendor=abc"));
        assert_eq!(bad, Incoming::default());
        let none = Incoming::new(None, Some(b"vendor=abc"));
        assert_eq!(none, Incoming::default());
        let too_long = "a=".to_string() + &"b".repeat(MAX_TRACESTATE_LEN);
        let long = Incoming::new(Some(VALID.as_bytes()), Some(too_long.as_bytes()));
        assert!(long.parent.is_some());
        assert_eq!(long.tracestate, None);
        let control = Incoming::new(Some(VALID.as_bytes()), Some(b"a=b\x01"));
        assert_eq!(control.tracestate, None);
    }

    #[test]
    fn from_headers_refuses_a_repeated_traceparent_and_joins_tracestate() {
        let mut h = http::HeaderMap::new();
        h.append(TRACEPARENT, http::HeaderValue::from_static(VALID));
        h.append(TRACESTATE, http::HeaderValue::from_static("a=1"));
        h.append(TRACESTATE, http::HeaderValue::from_static("b=2"));
        let one = Incoming::from_headers(&h);
        assert!(one.parent.is_some());
        assert_eq!(one.tracestate.as_deref(), Some("a=1,b=2"));
        h.append(TRACEPARENT, http::HeaderValue::from_static(VALID));
        let repeated = Incoming::from_headers(&h);
        assert_eq!((repeated.parent, repeated.tracestate), (None, None));
        assert!(repeated.present, "an invalid traceparent is still removed");
        assert_eq!(
            Incoming::from_headers(&http::HeaderMap::new()),
            Incoming::default()
        );
        let mut only_state = http::HeaderMap::new();
        only_state.append(TRACESTATE, http::HeaderValue::from_static("a=1"));
        assert!(Incoming::from_headers(&only_state).present);
    }
}
