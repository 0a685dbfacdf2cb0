//! Pure readers of request parts: the canonical-path rule (the reference on canonical paths), the
//! `workspace_id` query parameter, the API key headers, and the top-level
//! `workspace_id` of a JSON body (the reference on which workspace a request names). No I/O.

use crate::limits::percent::{decode_component, hex_val};
use std::borrow::Cow;

/// Why a path is not canonical (for the 400 message).
pub fn non_canonical_reason(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Some("the path must start with `/`");
    }
    // One pass: the bytes, and the segments as each `/` closes one. A byte
    // refused anywhere wins over a segment refused earlier, as the reasons
    // have always been given.
    let mut segment_reason = None;
    let mut seg_start = 1;
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if !PATH_SPECIAL[usize::from(b)] {
            i += 1;
            continue;
        }
        if b == b'/' {
            if segment_reason.is_none() {
                segment_reason = segment_refusal(&bytes[seg_start..i], true);
            }
            seg_start = i + 1;
            i += 1;
            continue;
        }
        if b == b'\\' {
            return Some("the path contains a backslash");
        }
        if b < 0x20 || b == 0x7f {
            return Some("the path contains a control character");
        }
        if b >= 0x80 {
            return Some(RAW_NON_ASCII);
        }
        // b == b'%'
        if let Some(reason) = percent_refusal(bytes, i) {
            return Some(reason);
        }
        i += 3;
    }
    // The last segment may be empty (a trailing `/` is a different path,
    // 404, not an error).
    segment_reason.or_else(|| segment_refusal(&bytes[seg_start.min(bytes.len())..], false))
}

/// Why the percent-encoding at `bytes[i]` is refused, if it is: not two hex
/// digits, or an encoded `/`, `\\`, `.`, control or unreserved character.
fn percent_refusal(bytes: &[u8], i: usize) -> Option<&'static str> {
    let Some(decoded) = percent_byte(bytes, i) else {
        return Some("the path contains invalid percent-encoding");
    };
    match decoded {
        b'/' => Some("the path contains a percent-encoded `/`"),
        b'\\' => Some("the path contains a percent-encoded backslash"),
        b'.' => Some("the path contains a percent-encoded `.`"),
        0x00..=0x1f | 0x7f => Some("the path contains a percent-encoded control character"),
        // U+0080–U+009F in UTF-8: C1 controls (U+0085 is a line break to
        // several runtimes), refused like C0 controls.
        0xc2 if percent_byte(bytes, i + 3).is_some_and(|n| (0x80..=0x9f).contains(&n)) => {
            Some("the path contains a percent-encoded control character")
        }
        c if is_unreserved(c) => Some("the path percent-encodes an unreserved character"),
        _ => None,
    }
}

/// Why a segment is refused: `//` (an empty segment another follows),
/// `.` and `..`.
fn segment_refusal(seg: &[u8], followed: bool) -> Option<&'static str> {
    match seg {
        [] if followed => Some("the path contains an empty segment (`//`)"),
        b"." | b".." => Some("the path contains a `.` or `..` segment"),
        _ => None,
    }
}

/// Bytes of a path the canonical check looks at: `/`, `\\`, `%`, controls
/// and anything not ASCII; every other byte passes as it is.
static PATH_SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b < 0x20
            || b >= 0x7f
            || b == b'/' as usize
            || b == b'\\' as usize
            || b == b'%' as usize;
        b += 1;
    }
    table
};

/// The reason for a raw byte ≥ 0x80 in a request target.
const RAW_NON_ASCII: &str =
    "the request target contains a raw non-ASCII byte (HTTP request targets are ASCII: percent-encode it)";

/// The byte `%XX` at `bytes[i..]` stands for, if `bytes[i..]` starts with
/// valid percent-encoding.
fn percent_byte(bytes: &[u8], i: usize) -> Option<u8> {
    if bytes.get(i) != Some(&b'%') {
        return None;
    }
    let h = bytes.get(i + 1).and_then(|c| hex_val(*c))?;
    let l = bytes.get(i + 2).and_then(|c| hex_val(*c))?;
    Some(h * 16 + l)
}

/// Why a raw query is refused, if it is (400 `invalid_path`, the reference on canonical paths): a
/// raw byte ≥ 0x80 or a control character. RFC 9112 request targets are
/// ASCII; frameworks disagree on how to read anything else. Percent-encoded
/// bytes are the query's own business and pass.
pub fn invalid_query_reason(query: &str) -> Option<&'static str> {
    query.bytes().find_map(|b| match b {
        0x00..=0x1f | 0x7f => Some("the query contains a control character"),
        0x80..=0xff => Some(RAW_NON_ASCII),
        _ => None,
    })
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Every value of a query parameter an upstream could read as
/// `workspace_id`, decoded, lazily (the decision stops at the first
/// disagreement and allocates nothing for plain values). Frameworks differ:
/// some split pairs on `;` as well as `&`, some match names without regard
/// to case, PHP-style ones read `workspace_id[]` (or `workspace_id[0]`) as
/// the same field; every such spelling counts as a workspace source.
pub fn query_workspace_ids(query: Option<&str>) -> impl Iterator<Item = Cow<'_, str>> {
    query_values(query, "workspace_id")
}

/// Every value of the query parameter `name` (lower case ASCII) under the
/// lenient matching of [`query_workspace_ids`].
pub fn query_values<'a>(
    query: Option<&'a str>,
    name: &'static str,
) -> impl Iterator<Item = Cow<'a, str>> {
    query
        .into_iter()
        .flat_map(|q| q.split(['&', ';']))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            lenient_name_eq(&decode_component(k), name).then(|| decode_component(v))
        })
}

/// Whether a field name `k` reads as `name` (lower-case ASCII) to some
/// framework: ASCII case ignored, the two non-ASCII letters Go's
/// `encoding/json` folds onto ASCII (`ſ` → s, Kelvin sign → k) folded, and a
/// trailing PHP-style `[...]` index ignored.
pub fn lenient_name_eq(k: &str, name: &str) -> bool {
    let k = match k.find('[') {
        Some(i) if k.ends_with(']') => &k[..i],
        _ => k,
    };
    folds_to(k, name)
}

/// Whether `k` equals `name` (lower-case ASCII) under ASCII case folding plus
/// Go's `ſ`/`K` (U+212A) folds.
pub fn folds_to(k: &str, name: &str) -> bool {
    let mut want = name.bytes();
    for c in k.chars() {
        let folded = match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c if c.is_ascii() => c.to_ascii_lowercase(),
            _ => return false,
        };
        if want.next() != Some(folded as u8) {
            return false;
        }
    }
    want.next().is_none()
}

/// The API key as presented (the reference on the decision order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// No key at all.
    Missing,
    /// The key header was sent more than once.
    Repeated,
    /// One key.
    Secret(&'a [u8]),
    /// One credential that is an identity token
    /// (docs/reference.md#which-credential-is-a-token), already verified by
    /// the caller of the decision (which holds the JWK sets and the cache).
    Token(&'a crate::identity::token::TokenOutcome),
}

/// Which header carried the key; it is removed upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `x-portkey-api-key` (or no key at all).
    PortkeyHeader,
    /// `Authorization: Bearer`.
    Authorization,
    /// `x-api-key` (Anthropic's SDKs).
    XApiKey,
    /// `api-key` (Azure OpenAI's clients).
    ApiKey,
}

/// What a request's `Upgrade` header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// No `Upgrade` header.
    None,
    /// One `Upgrade: websocket` (any case) on HTTP/1.1.
    WebSocket,
    /// Anything else: another protocol (`h2c`), a list, a repeated header,
    /// or an upgrade on a version other than HTTP/1.1.
    Other,
}

/// Reads the `Upgrade` header values of a request (`http11`: the request
/// is HTTP/1.1, the only version whose upgrades pingora tunnels).
pub fn upgrade_of(values: &[&[u8]], http11: bool) -> Upgrade {
    match values {
        [] => Upgrade::None,
        [one] if http11 && one.trim_ascii().eq_ignore_ascii_case(b"websocket") => {
            Upgrade::WebSocket
        }
        _ => Upgrade::Other,
    }
}

/// The headers that can carry a key, in order of precedence.
pub const KEY_HEADERS: [&str; 4] = ["x-portkey-api-key", "authorization", "x-api-key", "api-key"];

/// The values of each key header, in the order of [`KEY_HEADERS`].
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyHeaders<'h, 'a> {
    /// `x-portkey-api-key` values.
    pub portkey: &'h [&'a [u8]],
    /// `Authorization` values.
    pub authorization: &'h [&'a [u8]],
    /// `x-api-key` values.
    pub x_api_key: &'h [&'a [u8]],
    /// `api-key` values.
    pub api_key: &'h [&'a [u8]],
}

/// Picks the key (the reference on the decision order): `x-portkey-api-key`; without it
/// `Authorization: Bearer`; without either `x-api-key`, then `api-key`. The
/// first header present decides: sent twice, it is `Repeated`.
pub fn presented_key<'a>(h: &KeyHeaders<'_, 'a>) -> (Presented<'a>, KeySource) {
    match h.portkey {
        [] => {}
        [one] => return (Presented::Secret(trim(one)), KeySource::PortkeyHeader),
        _ => return (Presented::Repeated, KeySource::PortkeyHeader),
    }
    let mut bearer = h.authorization.iter().filter_map(|v| bearer_token(v));
    if let Some(first) = bearer.next() {
        return if bearer.next().is_none() && h.authorization.len() == 1 {
            (Presented::Secret(first), KeySource::Authorization)
        } else {
            (Presented::Repeated, KeySource::Authorization)
        };
    }
    for (values, source) in [
        (h.x_api_key, KeySource::XApiKey),
        (h.api_key, KeySource::ApiKey),
    ] {
        match values {
            [] => {}
            [one] if trim(one).is_empty() => {}
            [one] => return (Presented::Secret(trim(one)), source),
            _ => return (Presented::Repeated, source),
        }
    }
    (Presented::Missing, KeySource::PortkeyHeader)
}

/// The secret a key header's value would present: the token of a Bearer
/// `Authorization`, the trimmed value of the others; `None` when it carries
/// no key (another scheme, empty).
pub fn secret_in<'v>(header: &str, value: &'v [u8]) -> Option<&'v [u8]> {
    if header == "authorization" {
        return bearer_token(value);
    }
    let v = trim(value);
    (!v.is_empty()).then_some(v)
}

/// Every way a key header's value could hold a key, whatever header it is
/// and whether it carried the presented key: the whole trimmed value (a key
/// sent bare, `Authorization: sk-...`), and what follows its first word
/// (`Bearer sk-...`, or any other scheme, `Token sk-...`). The proxy removes
/// the header upstream when any of them is a key of the keys file.
pub fn key_candidates(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let whole = trim(value);
    let after_scheme = whole
        .iter()
        .position(u8::is_ascii_whitespace)
        .map(|i| trim(&whole[i..]))
        .filter(|rest| !rest.is_empty());
    (!whole.is_empty())
        .then_some(whole)
        .into_iter()
        .chain(after_scheme)
}

/// What a request's `Content-Length` fields say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentLength {
    /// No `Content-Length`.
    Absent,
    /// One field with one decimal value.
    One(u64),
    /// Anything else: the field repeated (even with equal values), a list
    /// (`5, 5`), or a value that is not a plain decimal number. An HTTP/1.1
    /// upstream could frame such a body differently from the proxy, so the
    /// request is refused (400 `invalid_request`).
    Invalid,
}

/// Reads the values of a request's `Content-Length` fields.
pub fn content_length(values: &[&[u8]]) -> ContentLength {
    match values {
        [] => ContentLength::Absent,
        [one] => {
            let v = trim(one);
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return ContentLength::Invalid;
            }
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .map_or(ContentLength::Invalid, ContentLength::One)
        }
        _ => ContentLength::Invalid,
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The token of an `Authorization: Bearer <token>` value (scheme is
/// case-insensitive); `None` for other schemes or an empty token.
pub fn bearer_token(v: &[u8]) -> Option<&[u8]> {
    let v = trim(v);
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || !v[6].is_ascii_whitespace() {
        return None;
    }
    let token = trim(&v[7..]);
    (!token.is_empty()).then_some(token)
}

/// Whether a `Content-Type` is `application/json` (parameters allowed).
pub fn is_json_content_type(ct: Option<&[u8]>) -> bool {
    let Some(ct) = ct else { return false };
    let essence = ct.split(|b| *b == b';').next().unwrap_or_default();
    trim(essence).eq_ignore_ascii_case(b"application/json")
}

/// What a data-plane request body's `Content-Type` makes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// No `Content-Type`.
    Missing,
    /// `application/json`, or any structured `type/subtype+json`
    /// (`application/vnd.api+json`); parameters allowed.
    Json,
    /// `multipart/form-data` (parameters allowed).
    Multipart,
    /// Anything else (`text/plain`, a form, a malformed value).
    Other,
}

/// RFC 9110's `tchar`: the bytes of a token (a media type's type and subtype).
static TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// Classifies a `Content-Type` value (the first, when repeated: the caller
/// refuses a repeated one wherever it matters).
pub fn media_type(ct: Option<&[u8]>) -> Media {
    let Some(ct) = ct else {
        return Media::Missing;
    };
    // The type nearly every client sends, exactly: no parsing needed.
    if ct == b"application/json" {
        return Media::Json;
    }
    let essence = trim(ct.split(|b| *b == b';').next().unwrap_or_default());
    let Some(slash) = essence.iter().position(|b| *b == b'/') else {
        return Media::Other;
    };
    let (kind, subtype) = (&essence[..slash], &essence[slash + 1..]);
    let token = |t: &[u8]| !t.is_empty() && t.iter().all(|&b| TCHAR[usize::from(b)]);
    if !token(kind) || !token(subtype) {
        return Media::Other;
    }
    // Compared without a lower-cased copy: this runs for every data-plane
    // request with a body.
    let json_suffix =
        subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json");
    if essence.eq_ignore_ascii_case(b"application/json") || json_suffix {
        Media::Json
    } else if essence.eq_ignore_ascii_case(b"multipart/form-data") {
        Media::Multipart
    } else {
        Media::Other
    }
}

/// Whether a `Content-Type` is `multipart/form-data` (parameters allowed).
pub fn is_multipart_content_type(ct: Option<&[u8]>) -> bool {
    let Some(ct) = ct else { return false };
    let essence = ct.split(|b| *b == b';').next().unwrap_or_default();
    trim(essence).eq_ignore_ascii_case(b"multipart/form-data")
}

/// What the top-level `workspace_id` of a JSON body says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyWorkspace {
    /// No `workspace_id` field (or the body is not an object).
    Absent,
    /// One string value.
    Named(String),
}

/// Why a body could not be read for its workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidBody(pub String);

/// Reads the top-level `workspace_id` of a JSON body without building the
/// whole document; refuses invalid JSON, a non-string value, and a repeated
/// field (two parsers could disagree on which one wins).
pub fn body_workspace(body: &[u8]) -> Result<BodyWorkspace, InvalidBody> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::fmt;

    struct Top;
    impl<'de> Visitor<'de> for Top {
        type Value = Result<BodyWorkspace, String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found: Option<String> = None;
            let mut problem: Option<String> = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                // Go's encoding/json matches field names without regard to
                // case, and the last of several wins: every spelling that
                // folds to `workspace_id` is the workspace, and a second one
                // is refused like a repeated field.
                if folds_to(&key, "workspace_id") {
                    let v: serde_json::Value = map.next_value()?;
                    if problem.is_some() {
                        continue;
                    }
                    match v {
                        serde_json::Value::String(s) if found.is_none() => found = Some(s),
                        serde_json::Value::String(_) => {
                            problem =
                                Some("`workspace_id` appears more than once in the body".into())
                        }
                        _ => problem = Some("`workspace_id` in the body must be a string".into()),
                    }
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(match problem {
                Some(p) => Err(p),
                None => Ok(found.map_or(BodyWorkspace::Absent, BodyWorkspace::Named)),
            })
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Ok(BodyWorkspace::Absent))
        }
    }

    // JSON is UTF-8: skipped string values are not checked by the
    // visitor, so check the whole text (an upstream parser would refuse it).
    if let Err(e) = std::str::from_utf8(body) {
        return Err(InvalidBody(format!(
            "the body is not valid JSON: invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = (&mut de)
        .deserialize_any(Top)
        .and_then(|r| de.end().map(|_| r))
        .map_err(|e| InvalidBody(format!("the body is not valid JSON: {e}")))?;
    result.map_err(InvalidBody)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check as it was written before it became one pass: every byte
    /// first, then the segments (the percent-encoding rules are shared).
    /// The one-pass check must give the same reason for every path.
    fn two_pass_reason(path: &str) -> Option<&'static str> {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Some("the path must start with `/`");
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'\\' {
                return Some("the path contains a backslash");
            }
            if b < 0x20 || b == 0x7f {
                return Some("the path contains a control character");
            }
            if b >= 0x80 {
                return Some(RAW_NON_ASCII);
            }
            if b == b'%' {
                if let Some(reason) = percent_refusal(bytes, i) {
                    return Some(reason);
                }
                i += 3;
                continue;
            }
            i += 1;
        }
        let mut segments = path[1..].split('/').peekable();
        while let Some(seg) = segments.next() {
            if seg.is_empty() && segments.peek().is_some() {
                return Some("the path contains an empty segment (`//`)");
            }
            if seg == "." || seg == ".." {
                return Some("the path contains a `.` or `..` segment");
            }
        }
        None
    }

    #[test]
    fn token_bytes_are_rfc_9110_tchar() {
        for b in 0..=255u8 {
            let want = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(TCHAR[usize::from(b)], want, "byte {b}");
            let ct = [b"text/x".as_slice(), &[b]].concat();
            assert!(media_type(Some(&ct)) == Media::Other, "{ct:?}");
            let json = [b"application/a".as_slice(), &[b], b"+json"].concat();
            assert_eq!(media_type(Some(&json)) == Media::Json, want, "{json:?}");
        }
    }

    #[test]
    fn one_pass_check_gives_the_two_pass_reasons() {
        // Every path of up to 6 characters from an alphabet that reaches
        // each rule (slashes, dots, percent-encodings, a backslash, a
        // control, a C1 control's lead byte), after a leading `/`.
        const ALPHABET: [&str; 9] = ["/", ".", "a", "%2", "%c2%8", "5", "e", "\\", "\u{1}"];
        let mut stack = vec![String::from("/")];
        let mut checked = 0;
        while let Some(p) = stack.pop() {
            assert_eq!(non_canonical_reason(&p), two_pass_reason(&p), "{p:?}");
            checked += 1;
            if p.chars().count() < 7 {
                for piece in ALPHABET {
                    stack.push(format!("{p}{piece}"));
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
        for p in [
            "",
            "a/b",
            "/v1/chat/completions",
            "/v1/./x",
            "/v1/../x",
            "/v1//x",
            "/v1/x/",
            "/v1/x/.",
            "/%2e",
            "/a%2fb",
            "/caf\u{e9}",
        ] {
            assert_eq!(non_canonical_reason(p), two_pass_reason(p), "{p:?}");
        }
    }

    #[test]
    fn canonical_paths_pass() {
        for p in [
            "/v1/chat/completions",
            "/v1/files/a%20b",
            "/v1/files/%C3%A9",
            "/v1/chat/completions/",
            "/",
        ] {
            assert_eq!(non_canonical_reason(p), None, "{p}");
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        for p in [
            "//v1/chat",
            "/v1//chat",
            "/v1/./chat",
            "/v1/../chat",
            "/v1/..",
            "/v1\\chat",
            "/v1/\x01",
            "/v1/%zz",
            "/v1/%4",
            "/v1/a%2Fb",
            "/v1/a%2fb",
            "/v1/a%5Cb",
            "/v1/%2E%2E",
            "/v1/a%00",
            "/v1/a%0A",
            "/v1/%41",
            "/v1/%7E",
            "/v1/%2D",
            "/v1/%5F",
            "/v1/%30",
            "/v1/%7f",
            "v1/x",
        ] {
            assert!(non_canonical_reason(p).is_some(), "{p:?}");
        }
    }

    #[test]
    fn raw_non_ascii_bytes_in_the_path_are_refused() {
        for p in [
            "/v1/files/\u{85}",
            "/v1/files/caf\u{e9}",
            "/v1/\u{2028}",
            "/v1/files/\u{fffd}",
        ] {
            assert_eq!(non_canonical_reason(p), Some(RAW_NON_ASCII), "{p:?}");
        }
    }

    #[test]
    fn percent_encoded_c1_controls_are_refused_other_utf8_passes() {
        for p in ["/v1/files/%C2%85", "/v1/files/a%c2%80b", "/v1/files/%C2%9F"] {
            assert_eq!(
                non_canonical_reason(p),
                Some("the path contains a percent-encoded control character"),
                "{p:?}"
            );
        }
        for p in [
            "/v1/files/%C2%A0",
            "/v1/files/%C2%20",
            "/v1/files/%C2",
            "/v1/files/%E2%80%A8",
            "/v1/files/%FF",
        ] {
            assert_eq!(non_canonical_reason(p), None, "{p:?}");
        }
    }

    #[test]
    fn queries_with_raw_non_ascii_or_control_bytes_are_refused() {
        assert_eq!(
            invalid_query_reason("workspace_id=ws_\u{85}"),
            Some(RAW_NON_ASCII)
        );
        assert_eq!(invalid_query_reason("a=\u{e9}"), Some(RAW_NON_ASCII));
        assert!(invalid_query_reason("a=b\x01").is_some());
        assert!(invalid_query_reason("a=b\x7f").is_some());
        assert_eq!(invalid_query_reason("a=%C2%85&b=%E9&c=x+y"), None);
        assert_eq!(invalid_query_reason(""), None);
    }

    #[test]
    fn only_one_websocket_token_on_http11_is_a_websocket_upgrade() {
        assert_eq!(upgrade_of(&[], true), Upgrade::None);
        assert_eq!(upgrade_of(&[b"websocket"], true), Upgrade::WebSocket);
        assert_eq!(upgrade_of(&[b" WebSocket "], true), Upgrade::WebSocket);
        assert_eq!(upgrade_of(&[b"websocket"], false), Upgrade::Other);
        assert_eq!(upgrade_of(&[b"h2c"], true), Upgrade::Other);
        assert_eq!(upgrade_of(&[b"websocket, h2c"], true), Upgrade::Other);
        assert_eq!(
            upgrade_of(&[b"websocket", b"websocket"], true),
            Upgrade::Other
        );
        assert_eq!(upgrade_of(&[b""], true), Upgrade::Other);
    }

    #[test]
    fn query_workspace_values_are_decoded() {
        let ids = |q| query_workspace_ids(q).collect::<Vec<_>>();
        assert_eq!(
            ids(Some("a=1&workspace_id=ws%5F1&workspace%5Fid=x")),
            vec!["ws_1", "x"]
        );
        assert!(ids(Some("workspace=1")).is_empty());
        assert!(ids(None).is_empty());
    }

    fn key(
        portkey: &[&'static [u8]],
        authorization: &[&'static [u8]],
        x_api_key: &[&'static [u8]],
        api_key: &[&'static [u8]],
    ) -> (Presented<'static>, KeySource) {
        presented_key(&KeyHeaders {
            portkey,
            authorization,
            x_api_key,
            api_key,
        })
    }

    #[test]
    fn key_comes_from_portkey_header_then_bearer_then_x_api_key_then_api_key() {
        assert_eq!(
            key(&[b"k1"], &[b"Bearer k2"], &[b"k3"], &[b"k4"]),
            (Presented::Secret(b"k1"), KeySource::PortkeyHeader)
        );
        assert_eq!(
            key(&[], &[b"bearer  k2 "], &[b"k3"], &[b"k4"]),
            (Presented::Secret(b"k2"), KeySource::Authorization)
        );
        assert_eq!(
            key(&[], &[b"Basic abc"], &[b"k3"], &[b"k4"]),
            (Presented::Secret(b"k3"), KeySource::XApiKey)
        );
        assert_eq!(
            key(&[], &[], &[], &[b" k4 "]),
            (Presented::Secret(b"k4"), KeySource::ApiKey)
        );
        assert_eq!(key(&[], &[b"Basic abc"], &[], &[]).0, Presented::Missing);
        assert_eq!(key(&[b"a", b"b"], &[], &[], &[]).0, Presented::Repeated);
        assert_eq!(
            key(&[], &[b"Bearer a", b"Bearer b"], &[], &[]).0,
            Presented::Repeated
        );
        assert_eq!(key(&[], &[], &[b"a", b"b"], &[b"c"]).0, Presented::Repeated);
        assert_eq!(key(&[], &[], &[], &[b"a", b"a"]).0, Presented::Repeated);
        // A repeated lower-precedence header does not matter once a
        // higher one carries the key.
        assert_eq!(
            key(&[b"k"], &[], &[b"a", b"b"], &[]).0,
            Presented::Secret(b"k")
        );
        assert_eq!(key(&[], &[], &[], &[]).0, Presented::Missing);
        assert_eq!(key(&[], &[b"Bearer "], &[], &[]).0, Presented::Missing);
        assert_eq!(key(&[], &[], &[b"  "], &[]).0, Presented::Missing);
    }

    #[test]
    fn a_key_is_found_bare_after_bearer_or_after_any_scheme() {
        let found = |v: &'static [u8]| key_candidates(v).collect::<Vec<_>>();
        assert_eq!(found(b" sk-1 "), vec![&b"sk-1"[..]]);
        assert_eq!(found(b"Bearer sk-1"), vec![&b"Bearer sk-1"[..], b"sk-1"]);
        assert_eq!(found(b"Token  sk-1 "), vec![&b"Token  sk-1"[..], b"sk-1"]);
        assert_eq!(found(b"bearer\tsk-1"), vec![&b"bearer\tsk-1"[..], b"sk-1"]);
        assert!(found(b"").is_empty());
        assert!(found(b"   ").is_empty());
        assert_eq!(found(b"Bearer "), vec![&b"Bearer"[..]]);
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        assert_eq!(content_length(&[]), ContentLength::Absent);
        assert_eq!(content_length(&[b"5"]), ContentLength::One(5));
        assert_eq!(content_length(&[b" 0 "]), ContentLength::One(0));
        for bad in [
            &[&b"5, 5"[..]][..],
            &[b"5", b"5"],
            &[b"5", b"6"],
            &[b"+5"],
            &[b"-1"],
            &[b""],
            &[b"0x10"],
            &[b"5 5"],
            &[b"99999999999999999999"],
        ] {
            assert_eq!(content_length(bad), ContentLength::Invalid, "{bad:?}");
        }
    }

    #[test]
    fn media_types_of_data_plane_bodies() {
        for json in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"application/vnd.api+json",
            b"text/plain+json",
            b" application/problem+JSON ;x=y",
        ] {
            assert_eq!(media_type(Some(json)), Media::Json, "{json:?}");
        }
        assert_eq!(
            media_type(Some(b"multipart/form-data; boundary=b")),
            Media::Multipart
        );
        for other in [
            &b"text/plain"[..],
            b"application/x-www-form-urlencoded",
            b"application/jsonx",
            b"application/json-seq",
            b"+json",
            b"application/+json",
            b"/+json",
            b"application json",
            b"",
            b"multipart/mixed",
        ] {
            assert_eq!(media_type(Some(other)), Media::Other, "{other:?}");
        }
        assert_eq!(media_type(None), Media::Missing);
    }

    #[test]
    fn secrets_in_key_headers() {
        assert_eq!(secret_in("authorization", b"Bearer k"), Some(&b"k"[..]));
        assert_eq!(secret_in("authorization", b"Basic k"), None);
        assert_eq!(secret_in("x-api-key", b" k "), Some(&b"k"[..]));
        assert_eq!(secret_in("api-key", b""), None);
    }

    #[test]
    fn query_workspace_spellings_an_upstream_could_read() {
        let ids = |q| query_workspace_ids(q).collect::<Vec<_>>();
        assert_eq!(
            ids(Some(
                "WORKSPACE_ID=a&workspace_id[]=b&x=1;workspace_id=c&Workspace_Id[0]=d"
            )),
            vec!["a", "b", "c", "d"]
        );
        assert_eq!(ids(Some("work\u{17f}pace_id=a")), vec!["a"]);
        assert_eq!(ids(Some("work%C5%BFpace_id=a")), vec!["a"]);
        assert!(ids(Some("workspace_ids=a&workspace=b&workspace_id_x=c")).is_empty());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type(Some(b"application/json")));
        assert!(is_json_content_type(Some(
            b"Application/JSON; charset=utf-8"
        )));
        assert!(!is_json_content_type(Some(b"text/plain")));
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn body_workspace_case_variants_are_the_workspace() {
        assert_eq!(
            body_workspace(br#"{"WORKSPACE_ID":"ws"}"#),
            Ok(BodyWorkspace::Named("ws".into()))
        );
        assert_eq!(
            body_workspace("{\"work\u{17f}pace_id\":\"ws\"}".as_bytes()),
            Ok(BodyWorkspace::Named("ws".into()))
        );
        assert!(body_workspace(br#"{"workspace_id":"a","Workspace_ID":"b"}"#).is_err());
        assert!(body_workspace(br#"{"workspace_id":"a","WORKSPACE_ID":"a"}"#).is_err());
        assert_eq!(
            body_workspace(br#"{"workspace-id":"x","workspaceid":"y"}"#),
            Ok(BodyWorkspace::Absent)
        );
    }

    #[test]
    fn body_workspace_rules() {
        assert_eq!(
            body_workspace(br#"{"a":{"workspace_id":1},"workspace_id":"ws"}"#),
            Ok(BodyWorkspace::Named("ws".into()))
        );
        assert_eq!(body_workspace(br#"{"a":1}"#), Ok(BodyWorkspace::Absent));
        assert_eq!(body_workspace(br#"[1,2]"#), Ok(BodyWorkspace::Absent));
        assert!(body_workspace(br#"{"workspace_id":1}"#).is_err());
        assert!(body_workspace(br#"{"workspace_id":"a","workspace_id":"a"}"#).is_err());
        assert!(body_workspace(br#"{"workspace\u005fid":"a","workspace_id":"b"}"#).is_err());
        assert!(body_workspace(br#"{"a":1"#).is_err());
        assert!(body_workspace(br#"{"a":1} x"#).is_err());
        assert!(body_workspace(b"not json").is_err());
        assert!(body_workspace(b"{\"a\":\"\xff\",\"workspace_id\":\"w\"}").is_err());
    }
}
