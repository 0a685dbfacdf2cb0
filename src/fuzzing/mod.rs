//! Harness bodies of the fuzz targets in `fuzz/` (one function per target),
//! shared with `tests/fuzz_replay.rs`, which replays every committed corpus
//! file through them on stable. May import `decision`, `identity`, `limits`
//! and `diag`.
//!
//! Each harness takes arbitrary bytes and panics (through `assert!`) when an
//! invariant of the reader under test breaks; a clean return means the input
//! is fine. The references the readers are compared with are written here,
//! independently of the code under test, and are deliberately simple.
//!
//! Not part of the supported API: hidden from the docs, used only by the
//! fuzz targets and the replay test.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use crate::identity::keys::{KeysDocument, OrgIdx, Snapshot};
use crate::identity::token::{self, JwksSet};

mod usage_reference;
use crate::decision::request::{self, BodyWorkspace};
use crate::decision::routes::{Plane, RouteSpec, RouteTable};
pub use usage_reference::{reference_json, reference_sse, whole_parse_sse};

/// The route table the path target matches against: every built-in route
/// plus a few extra ones that add `{workspace_id}` parameters at several
/// depths and a literal that shadows a parameter.
static TABLE: LazyLock<RouteTable> = LazyLock::new(|| {
    let extra = |methods: &[&str], path: &str, plane: Plane| RouteSpec {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.to_string(),
        plane,
        scopes: vec!["x.read".into()],
        scopes_all: vec![],
        upgrade: None,
        meter: None,
    };
    let routes = [
        extra(&["GET"], "/v1/x/{id}", Plane::Control),
        extra(&["GET"], "/v1/x/latest", Plane::Control),
        extra(&["POST"], "/w/{workspace_id}/chat", Plane::Data),
        extra(
            &["GET", "PUT"],
            "/w/{workspace_id}/{item}/meta",
            Plane::Control,
        ),
        extra(&["GET"], "/w/fixed/{item}/meta", Plane::Control),
    ];
    match RouteTable::build(&routes, true) {
        Ok(t) => t,
        Err(problems) => panic!("the fuzzing route table must build: {problems:?}"),
    }
});

/// Patterns of [`TABLE`], split into segments, for the reference matcher.
static PATTERNS: LazyLock<Vec<(String, Vec<String>)>> = LazyLock::new(|| {
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    for r in TABLE.routes() {
        let pattern = r.pattern.to_string();
        if seen.iter().all(|(p, _)| *p != pattern) {
            let segs = pattern[1..].split('/').map(str::to_string).collect();
            seen.push((pattern, segs));
        }
    }
    seen
});

/// Inputs are read as UTF-8 when they are; otherwise lossily, so that the
/// fuzzer's byte mutations still reach the readers.
fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

// ---------------------------------------------------------------------------
// path_route

/// Target `path_route`: the canonical-path check (the reference on canonical paths) and the route
/// match.
///
/// Invariants: no panic; the check accepts exactly the paths the reference
/// [`reference_canonical`] accepts (so an accepted path has no `//`, no `.`
/// or `..` segment, no backslash, no control character and only valid
/// percent-encoding of allowed bytes); matching is deterministic; a match
/// agrees with [`reference_match`] (segment by segment, literals before
/// parameters) including the `{workspace_id}` value.
pub fn path_route(data: &[u8]) {
    let path = text(data);
    let path = path.as_ref();
    let reason = request::non_canonical_reason(path);
    let reference = reference_canonical(path);
    assert_eq!(
        reason.is_none(),
        reference.is_ok(),
        "canonical check and reference disagree on {path:?}: check says {reason:?}, reference says {reference:?}"
    );
    if reason.is_some() {
        return;
    }
    let first = TABLE.match_path(path);
    let second = TABLE.match_path(path);
    let summary = |m: &Option<crate::decision::routes::PathMatch<'_, '_>>| {
        m.as_ref()
            .map(|m| (m.entry.pattern.to_string(), m.workspace.map(str::to_string)))
    };
    let got = summary(&first);
    assert_eq!(
        got,
        summary(&second),
        "matching {path:?} is not deterministic"
    );
    let expected = reference_match(path);
    assert_eq!(
        got, expected,
        "route match of {path:?} differs from the reference"
    );
}

/// The canonical-path rules written out directly: `Err` names the first rule broken.
pub fn reference_canonical(path: &str) -> Result<(), &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("not absolute");
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (n, seg) in segments.iter().enumerate() {
        if seg.is_empty() && n + 1 != segments.len() {
            return Err("empty segment");
        }
        // A C1 control (U+0080–U+009F) percent-encoded as UTF-8: `%C2%8X`
        // or `%C2%9X`, hex digits in either case.
        let lower = seg.to_ascii_lowercase();
        if lower.contains("%c2%8") || lower.contains("%c2%9") {
            return Err("encoded C1 control");
        }
        if *seg == "." || *seg == ".." {
            return Err("dot segment");
        }
        let mut chars = seg.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                return Err("backslash");
            }
            if c.is_ascii_control() {
                return Err("control character");
            }
            if !c.is_ascii() {
                return Err("raw non-ASCII character");
            }
            if c != '%' {
                continue;
            }
            let hex: String = chars.by_ref().take(2).collect();
            if hex.len() != 2 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                return Err("invalid percent-encoding");
            }
            let byte = u8::from_str_radix(&hex, 16).map_err(|_| "invalid percent-encoding")?;
            let decoded = char::from(byte);
            if decoded == '/' || decoded == '\\' || decoded.is_ascii_control() {
                return Err("encoded separator or control");
            }
            if decoded.is_ascii_alphanumeric() || "-._~".contains(decoded) {
                return Err("encoded unreserved character");
            }
        }
    }
    Ok(())
}

/// Which pattern a canonical path should match, by brute force over every
/// pattern: segment counts equal, literals equal, parameters non-empty; of
/// several, the one with a literal at the first segment where they differ
/// (what a router with literal-first backtracking picks). Returns the
/// pattern and the `{workspace_id}` value.
pub fn reference_match(path: &str) -> Option<(String, Option<String>)> {
    let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let mut best: Option<(Vec<bool>, &str, Option<String>)> = None;
    for (pattern, psegs) in PATTERNS.iter() {
        if psegs.len() != segs.len() {
            continue;
        }
        let mut literal_mask = Vec::with_capacity(segs.len());
        let mut workspace = None;
        let mut ok = true;
        for (p, s) in psegs.iter().zip(&segs) {
            if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if s.is_empty() {
                    ok = false;
                    break;
                }
                if name == "workspace_id" {
                    workspace = Some(s.to_string());
                }
                literal_mask.push(false);
            } else if p == s {
                literal_mask.push(true);
            } else {
                ok = false;
                break;
            }
        }
        if ok && best.as_ref().is_none_or(|(m, _, _)| literal_mask > *m) {
            best = Some((literal_mask, pattern, workspace));
        }
    }
    best.map(|(_, p, w)| (p.to_string(), w))
}

// ---------------------------------------------------------------------------
// keys_reader

/// Target `keys_reader`: the fast keys-file reader against serde_yaml, and
/// the whole loader.
///
/// The input is read twice: as a keys file, and as the scalars of a plain
/// keys file ([`keys_template`]), which the fast reader usually accepts.
///
/// Invariants: no panic; whatever the fast reader accepts, serde_yaml reads
/// as the same [`KeysDocument`]; the loader ([`crate::identity::keys::parse_keys_str`])
/// returns a snapshot only for a text serde_yaml reads whole, and otherwise
/// at least one diagnostic. Memory is bounded by the fuzzer's
/// `-rss_limit_mb` (alias bombs, deep nesting).
pub fn keys_reader(data: &[u8]) {
    let text = text(data);
    keys_text(&text);
    // Mutated files are mostly not plain YAML any more, so the fast reader
    // gives up on them; the same bytes as the scalars of a plain file reach
    // its scalar rules (quotes, numbers, `~`, `yes`, `#`, `: `...).
    keys_text(&keys_template(&text));
}

/// The input's lines as the scalars of a keys file in the plain form the
/// fast reader reads.
pub fn keys_template(input: &str) -> String {
    let mut parts = input.split('\n');
    let mut next = || parts.next().unwrap_or("x");
    let (org, ws, slug, id, name) = (next(), next(), next(), next(), next());
    let (sha, scope, value, status) = (next(), next(), next(), next());
    format!(
        "organisations:\n  - id: {org}\n    workspaces:\n      - id: {ws}\n        slug: {slug}\n\
         keys:\n  - id: {id}\n    name: {name}\n    type: workspace-service\n    workspace_id: {ws}\n\
         \x20   sha256: {sha}\n    scopes: [{scope}, completions.write]\n    status: {status}\n\
         \x20   rate_limits:\n      - {{ type: requests, unit: rpm, value: {value} }}\n"
    )
}

fn keys_text(text: &str) {
    if let Some(fast) = crate::identity::keys::load::fast::read(text) {
        match serde_yaml::from_str::<KeysDocument>(text) {
            Ok(slow) => assert_eq!(
                fast, slow,
                "fast reader and serde_yaml read {text:?} differently"
            ),
            Err(e) => panic!("fast reader accepted {text:?}, serde_yaml refuses it: {e}"),
        }
    }
    let loaded: Result<Snapshot, _> =
        crate::identity::keys::parse_keys_str(text, Path::new("fuzz.yaml"), TABLE.registry());
    match loaded {
        Ok(_) => {
            let stripped = text.strip_prefix('\u{feff}').unwrap_or(text);
            assert!(
                serde_yaml::from_str::<KeysDocument>(stripped).is_ok(),
                "the loader built a snapshot from {text:?}, which serde_yaml cannot read"
            );
        }
        Err(diagnostics) => assert!(
            !diagnostics.is_empty(),
            "the loader refused {text:?} without a diagnostic"
        ),
    }
}

// ---------------------------------------------------------------------------
// json_workspace

/// Target `json_workspace`: the control-plane body reader
/// ([`request::body_workspace`]).
///
/// Invariants: no panic; wherever serde_json reads the body as a
/// [`serde_json::Value`], the reader agrees with [`reference_body_workspace`]
/// (a repeated top-level `workspace_id` is an error, escapes are decoded, a
/// non-string value is an error, a non-object body names nothing).
pub fn json_workspace(data: &[u8]) {
    let got = request::body_workspace(data);
    let Some(expected) = reference_body_workspace(data) else {
        return;
    };
    match (&got, &expected) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "body {:?}", text(data)),
        (Err(_), Err(_)) => {}
        _ => panic!(
            "body {:?}: reader says {got:?}, reference says {expected:?}",
            text(data)
        ),
    }
}

/// The top-level `workspace_id` by serde_json's own data model: `None` when
/// serde_json cannot read the body, `Err` for a repeated or non-string
/// `workspace_id`.
pub fn reference_body_workspace(body: &[u8]) -> Option<Result<BodyWorkspace, ()>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !value.is_object() {
        return Some(Ok(BodyWorkspace::Absent));
    }
    // A `Value` keeps only the last of repeated keys; read the members again
    // as a list to see them all.
    let Entries(members) = serde_json::from_slice(body).ok()?;
    // Every member name an upstream could read as `workspace_id`: Go's
    // encoding/json folds ASCII case and maps `ſ` to s and the Kelvin sign
    // to k.
    let folded = |k: &str| -> String {
        k.chars()
            .map(|c| match c {
                '\u{17f}' => 's',
                '\u{212a}' => 'k',
                c => c.to_ascii_lowercase(),
            })
            .collect()
    };
    let mut named = members
        .into_iter()
        .filter(|(k, _)| folded(k) == "workspace_id");
    Some(match (named.next(), named.next()) {
        (None, _) => Ok(BodyWorkspace::Absent),
        (Some((_, serde_json::Value::String(s))), None) => Ok(BodyWorkspace::Named(s)),
        _ => Err(()),
    })
}

/// The members of a JSON object in order, repeats kept.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(Members)
    }
}

// ---------------------------------------------------------------------------
// query

/// Target `query`: the `workspace_id` query reader
/// ([`request::query_workspace_ids`]).
///
/// Invariants: no panic; it yields exactly the values
/// [`reference_query_workspace_ids`] yields, in order; no query yields
/// nothing.
pub fn query(data: &[u8]) {
    let q = text(data);
    let got: Vec<String> = request::query_workspace_ids(Some(&q))
        .map(Cow::into_owned)
        .collect();
    assert_eq!(
        got,
        reference_query_workspace_ids(&q),
        "query {q:?} read differently from the reference"
    );
    assert_eq!(request::query_workspace_ids(None).count(), 0);
}

/// `application/x-www-form-urlencoded` pairs split on `&`, name and value
/// at the first `=`, `+` as a space, valid `%XX` decoded, anything else
/// kept, then UTF-8 with replacement; the values of the pairs named
/// `workspace_id`.
pub fn reference_query_workspace_ids(query: &str) -> Vec<String> {
    fn decode(s: &str) -> String {
        let mut bytes = Vec::with_capacity(s.len());
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            let hex = rest
                .get(1..3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
            match (c, hex) {
                ('%', Some(h)) => {
                    bytes.extend(u8::from_str_radix(h, 16).ok());
                    rest = &rest[3..];
                }
                _ => {
                    if c == '+' {
                        bytes.push(b' ');
                    } else {
                        let mut buf = [0u8; 4];
                        bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
    // Frameworks split pairs on `&` or `;`, may ignore case (Go folds `ſ`
    // and the Kelvin sign too) and read `name[]` / `name[0]` as `name`.
    let reads_as_workspace_id = |name: &str| -> bool {
        let base = match (name.find('['), name.ends_with(']')) {
            (Some(i), true) => &name[..i],
            _ => name,
        };
        let folded: String = base
            .chars()
            .map(|c| match c {
                '\u{17f}' => 's',
                '\u{212a}' => 'k',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        folded == "workspace_id"
    };
    query
        .split(['&', ';'])
        .filter_map(|pair| {
            let mut parts = pair.splitn(2, '=');
            let name = decode(parts.next().unwrap_or(""));
            let value = decode(parts.next().unwrap_or(""));
            reads_as_workspace_id(&name).then_some(value)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// usage readers (the reference on models, tokens and budgets)

/// Target `usage_sse`: the streaming SSE usage reader and filter
/// ([`crate::limits::response::SseTap`]).
///
/// The first byte picks strip mode and a split point; a hash of the stream
/// picks two more. Invariants: no panic; the bytes out and what was
/// observed do not depend on how the stream is cut into chunks (whole, two
/// pieces, three pieces, one byte at a time); without stripping the output
/// is the input, chunk for chunk; and what was observed is what the
/// whole-answer serde_json reference ([`reference_sse`]) finds, wherever
/// serde_json can read every event.
pub fn usage_sse(data: &[u8]) {
    use crate::limits::response::SseTap;
    let Some((&head, stream)) = data.split_first() else {
        return;
    };
    let strip = head & 1 == 1;
    let cut = usize::from(head >> 1) % (stream.len() + 1);
    let run = |pieces: &[&[u8]]| {
        let mut tap = SseTap::new(strip);
        let mut out = Vec::new();
        for p in pieces {
            let before = out.len();
            tap.feed(p, &mut out);
            if !strip {
                assert_eq!(&out[before..], *p, "pass-through changed a chunk");
            }
        }
        tap.finish(&mut out);
        (out, tap.observed())
    };
    let whole = run(&[stream]);
    let (a, b) = stream.split_at(cut);
    assert_eq!(run(&[a, b]), whole, "a split at {cut} changed the result");
    let three = split_by_hash(stream);
    assert_eq!(run(&three), whole, "a split in three changed the result");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(
        run(&bytes),
        whole,
        "byte-by-byte feeding changed the result"
    );
    if let Some(reference) = reference_sse(stream) {
        assert_eq!(
            whole.1, reference,
            "the streaming reader and the reference disagree"
        );
    }
}

/// Target `usage_json`: the streaming JSON usage reader, settlement and the
/// Content-Encoding decoders. Invariants: no panic; the reader's result does
/// not depend on chunking (halves, three hash-chosen pieces, single bytes);
/// it is what the whole-answer serde_json reference ([`reference_json`])
/// finds wherever serde_json can read the body; the scanner never refuses
/// JSON serde_json reads; a charge is what was reported, or nothing for an
/// error, or an estimate that is never 0 output for an answer with text;
/// decoders never panic on garbage.
pub fn usage_json(data: &[u8]) {
    use crate::limits::response::{settle, Decoder, JsonTap, Observed};
    let read = |pieces: &[&[u8]]| -> Observed {
        let mut tap = JsonTap::new();
        for piece in pieces {
            tap.feed(piece);
        }
        tap.finish()
    };
    let observed = read(&[data]);
    let (a, b) = data.split_at(data.len() / 2);
    assert_eq!(read(&[a, b]), observed, "chunking changed the JSON reading");
    assert_eq!(
        read(&split_by_hash(data)),
        observed,
        "a split in three changed the JSON reading"
    );
    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(
        read(&bytes),
        observed,
        "byte-by-byte feeding changed the JSON reading"
    );
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(
            crate::limits::response::scans_as_json(data),
            "the scanner refuses JSON serde_json reads"
        );
    }
    if let Some(reference) = reference_json(data) {
        assert_eq!(
            observed, reference,
            "the streaming reader and the reference disagree"
        );
    }
    for status in [200u16, 429, 500] {
        let c = settle::settle(100, status, &observed, Some("m"));
        match observed.reported {
            Some(r) => assert_eq!((c.input, c.output, c.estimated), (r.input, r.output, false)),
            None if status >= 400 => assert_eq!((c.input, c.output), (0, 0)),
            None => {
                assert!(c.estimated && c.input == 100);
                assert_eq!(c.output == 0, observed.generated_bytes == 0);
            }
        }
    }
    for enc in ["gzip", "deflate", "br", "zstd"] {
        if let Some(mut d) = Decoder::for_encoding_with_limit(enc, 1 << 20) {
            let _ = d.feed(data);
        }
    }
}

/// `data` in three pieces, cut where a hash of it says.
fn split_by_hash(data: &[u8]) -> Vec<&[u8]> {
    // FNV-1a: any cheap hash will do, it only has to vary with the input.
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let len = data.len() as u64 + 1;
    let mut cuts = [(hash % len) as usize, ((hash >> 32) % len) as usize];
    cuts.sort_unstable();
    vec![&data[..cuts[0]], &data[cuts[0]..cuts[1]], &data[cuts[1]..]]
}

/// Target `request_body`: the data-plane request readers (the reference on models, tokens and budgets).
/// Invariants: no panic; an injected body parses to the original value with
/// `stream_options.include_usage` set to `true` and reads back as such.
pub fn request_body(data: &[u8]) {
    use crate::limits::body::{
        inject_include_usage, multipart_models, query_models, read_json_body,
    };
    let _ = read_json_body(data);
    let _ = multipart_models(b"multipart/form-data; boundary=b", data);
    let _ = query_models(Some(&text(data)));
    if let Some(injected) = inject_include_usage(data) {
        let facts = read_json_body(&injected).expect("an injected body reads");
        assert_eq!(facts.include_usage, Some(true));
        // serde_json's `Value` refuses some texts the grammar allows and the
        // reader skips (a lone surrogate escape in another field, numbers
        // out of f64 range): compare values only where it reads both.
        let (Ok(mut original), Ok(after)) = (
            serde_json::from_slice::<serde_json::Value>(data),
            serde_json::from_slice::<serde_json::Value>(&injected),
        ) else {
            return;
        };
        if let Some(obj) = original.as_object_mut() {
            let opts = obj
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            if opts.is_null() {
                *opts = serde_json::json!({});
            }
            if let Some(o) = opts.as_object_mut() {
                o.insert("include_usage".into(), serde_json::Value::Bool(true));
            }
        }
        assert_eq!(after, original, "injection changed more than include_usage");
    }
}

// ---------------------------------------------------------------------------
// token_shape

/// A keys snapshot with one organisation accepting `https://idp.fuzz/`,
/// and its JWK set (the P-256 example key of RFC 7517, appendix A.1).
static TOKENS: LazyLock<(Snapshot, HashMap<OrgIdx, Arc<JwksSet>>)> = LazyLock::new(|| {
    let keys = "organisations:\n  - id: org_f\n    workspaces: [{ id: ws_f, slug: f }]\n    \
                identity_tokens:\n      issuer: https://idp.fuzz/\n      audience: sg\n      \
                jwks_file: unused.json\n      algorithms: [ES256, RS256, EdDSA, PS256]\nkeys: []\n";
    let snap =
        crate::identity::keys::parse_keys_str(keys, Path::new("fuzz.yaml"), TABLE.registry())
            .expect("the token world's keys file is valid");
    let set = JwksSet::parse(
        br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"1",
            "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#,
    )
    .expect("the token world's JWK set is usable");
    (snap, HashMap::from([(OrgIdx(0), Arc::new(set))]))
});

/// Target `token_shape`: the rule that tells tokens from keys, the claim
/// readers and the verifier, on arbitrary credentials.
///
/// The input is tried as a credential, as the payload of a token-shaped
/// credential (so that it reaches the claim readers behind the format
/// check), and as a claims object read directly.
///
/// Invariants: no panic; a credential the rule calls a token has exactly
/// two dots; one without a dot never is; nothing verifies (nobody here
/// holds the private key); a refusal's message never quotes the input.
pub fn token_shape(data: &[u8]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let text = text(data);
    token_credential(&text);
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"1"}"#);
    token_credential(&format!("{header}.{}.AAAA", URL_SAFE_NO_PAD.encode(data)));
    if let Ok(claims) = serde_json::from_slice::<token::claims::Claims>(data) {
        let _ = token::claims::numeric_date(&claims, "exp");
        let _ = token::claims::audience_contains(&claims, "sg");
        let _ = token::claims::scope_words(&claims, "scope");
        let _ = token::claims::workspace(&claims, "workspace_slug");
    }
}

fn token_credential(credential: &str) {
    let is_token = token::is_token(credential);
    if is_token {
        assert_eq!(credential.matches('.').count(), 2, "{credential:?}");
    }
    if !credential.contains('.') {
        assert!(!is_token, "{credential:?}");
    }
    let (snap, sets) = &*TOKENS;
    let now = 1_800_000_000_000;
    match token::verify(credential, now, snap, sets) {
        Ok(id) => panic!("{credential:?} verified as {id:?} without a private key"),
        Err(e) => {
            let message = e.to_string();
            let quoted = credential.len() >= 12 && message.contains(credential);
            assert!(!quoted, "the refusal quotes the credential: {message}");
        }
    }
}

// content_type

/// Keys for [`content_type`]: one restricted by `models`, one whose tokens
/// are counted, one without limits; all may call the data plane.
static MEDIA_KEYS: LazyLock<Snapshot> = LazyLock::new(|| {
    let h = |s: &str| crate::identity::keys::digest_hex(s.as_bytes());
    let yaml = format!(
        "organisations:\n  - id: org\n    workspaces: [{{ id: ws }}]\nkeys:\n\
         \x20 - {{ id: models, type: workspace-service, workspace_id: ws, sha256: \"{}\", \
         scopes: [completions.write], models: [\"gpt-4o-mini\"] }}\n\
         \x20 - {{ id: tokens, type: workspace-service, workspace_id: ws, sha256: \"{}\", \
         scopes: [completions.write], rate_limits: [{{ type: tokens, unit: rpm, value: 100 }}] }}\n\
         \x20 - {{ id: free, type: workspace-service, workspace_id: ws, sha256: \"{}\", \
         scopes: [completions.write] }}\n",
        h("models"),
        h("tokens"),
        h("free")
    );
    let doc: KeysDocument = match serde_yaml::from_str(&yaml) {
        Ok(d) => d,
        Err(e) => panic!("the fuzzing keys must parse: {e}"),
    };
    match crate::identity::keys::build_snapshot(&doc, TABLE.registry()) {
        Ok(s) => s,
        Err(problems) => panic!("the fuzzing keys must build: {problems:?}"),
    }
});

/// What a `Content-Type` makes a data-plane body, written independently of
/// [`request::media_type`]: `json` for `application/json` and any
/// `type/subtype+json`, `multipart` for `multipart/form-data`, else
/// `other` (parameters after `;` ignored, ASCII case ignored).
pub fn reference_media(ct: &str) -> &'static str {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or_default()
        .trim_matches([' ', '\t'])
        .to_ascii_lowercase();
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let Some((kind, subtype)) = essence.split_once('/') else {
        return "other";
    };
    let token = |t: &str| !t.is_empty() && t.chars().all(tchar);
    if !token(kind) || !token(subtype) {
        return "other";
    }
    match (kind, subtype) {
        ("application", "json") => "json",
        (_, sub) if sub.len() > "+json".len() && sub.ends_with("+json") => "json",
        ("multipart", "form-data") => "multipart",
        _ => "other",
    }
}

/// Target `content_type`: which data-plane bodies are read (the reference on which data-plane bodies are read).
/// The input is a `Content-Type` value, a newline, then a body.
///
/// Invariants: no panic; [`request::media_type`] agrees with
/// [`reference_media`] on every valid header value; for a key restricted
/// by `models` or whose tokens are counted, an inference route (`POST
/// /v1/chat/completions`) never lets an unread body through: a JSON or
/// multipart one is read (or too large), anything else is 415 — and a read
/// body is allowed only when it is a JSON object or multipart body the
/// readers accept; a repeated Content-Type is always 415 there; for a key
/// without such limits nothing is read or refused for its type; off the
/// inference routes (`POST /v1/files`) a body of another type is never
/// refused for it.
pub fn content_type(data: &[u8]) {
    use crate::decision::decide::{decide, nothing_used, Body, Outcome, RequestFacts};
    use crate::decision::request::{media_type, Media, Presented, Upgrade};

    let (ct, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    // Only what can be a header value reaches the proxy.
    if http::HeaderValue::from_bytes(ct).is_err() {
        return;
    }
    let media = media_type(Some(ct));
    let want = reference_media(&text(ct));
    let got = match media {
        Media::Json => "json",
        Media::Multipart => "multipart",
        Media::Other => "other",
        Media::Missing => "missing",
    };
    assert_eq!(got, want, "media type of {:?}", text(ct));

    let decide_with = |path: &str, key: &str, repeated: bool, b: Body<'_>| {
        let facts = RequestFacts {
            method: &http::Method::POST,
            path,
            query: None,
            key: Presented::Secret(key.as_bytes()),
            content_type: Some(ct),
            content_type_repeated: repeated,
            bad_content_length: false,
            upgrade: Upgrade::None,
            body: b,
            now: 0,
            max_body: 1024,
            max_data_body: 4096,
            used_up: &nothing_used,
        };
        decide(&TABLE, &MEDIA_KEYS, &facts).outcome
    };
    let code = |o: &Outcome| match o {
        Outcome::Allow => "allow",
        Outcome::ReadBody => "read_body",
        Outcome::KeyView { .. } => "key_view",
        Outcome::Deny(d) => d.code.as_str(),
    };
    let unread = Body::Unread {
        declared_len: Some(body.len().max(1) as u64),
    };
    let readable = want != "other";
    for key in ["models", "tokens"] {
        let chat = "/v1/chat/completions";
        let first = decide_with(chat, key, false, unread);
        let expected = match (readable, body.len() > 4096) {
            (false, _) => "unsupported_media_type",
            (true, false) => "read_body",
            (true, true) => "body_too_large",
        };
        assert_eq!(code(&first), expected, "{key} {:?}", text(ct));
        assert_eq!(
            code(&decide_with(chat, key, true, unread)),
            "unsupported_media_type"
        );
        if readable && !body.is_empty() && body.len() <= 4096 {
            let read = decide_with(chat, key, false, Body::Read(body));
            if matches!(read, Outcome::Allow) {
                let accepted = match media {
                    Media::Json => crate::limits::body::read_json_body(body).is_ok(),
                    _ => crate::limits::body::multipart_models(ct, body).is_ok(),
                };
                assert!(accepted, "{key}: an unreadable body was allowed");
            }
            assert!(!matches!(read, Outcome::ReadBody), "read twice");
        }
        let files = decide_with("/v1/files", key, false, unread);
        assert_ne!(code(&files), "unsupported_media_type", "{key} /v1/files");
    }
    let free = decide_with("/v1/chat/completions", "free", false, unread);
    assert_eq!(code(&free), "allow", "a key without limits is not read");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harnesses_accept_ordinary_inputs() {
        path_route(b"/v1/chat/completions");
        path_route(b"/w/ws_1/items/meta");
        path_route(b"/v1//x");
        keys_reader(b"keys: []\n");
        json_workspace(br#"{"workspace_id":"ws"}"#);
        query(b"workspace_id=a&workspace%5Fid=b+c");
        content_type(b"application/json\n{\"model\":\"gpt-4o-mini\"}");
        content_type(b"text/plain\n{\"model\":\"gpt-4o\"}");
    }

    #[test]
    fn the_media_reference_reads_what_the_contract_says() {
        assert_eq!(reference_media("application/json; charset=utf-8"), "json");
        assert_eq!(reference_media("Application/Vnd.Api+JSON"), "json");
        assert_eq!(reference_media("application/+json"), "other");
        assert_eq!(
            reference_media("multipart/form-data; boundary=x"),
            "multipart"
        );
        assert_eq!(reference_media("text/plain"), "other");
        assert_eq!(reference_media(""), "other");
    }

    #[test]
    fn keys_reader_survives_alias_bombs_and_deep_nesting() {
        // Nine levels of nine aliases each: 9^9 nodes if expanded.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .iter()
            .zip("bcdefghi".chars())
        {
            let refs = vec![format!("*{prev}"); 9].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        keys_reader(bomb.as_bytes());
        keys_reader(format!("keys: {}{}\n", "[".repeat(5000), "]".repeat(5000)).as_bytes());
        keys_reader("- ".repeat(5000).as_bytes());
        keys_reader(format!("keys:\n{}", "  ".repeat(3000) + "- x\n").as_bytes());
    }

    #[test]
    fn the_keys_template_is_read_by_the_fast_reader() {
        let text = keys_template(&format!(
            "org_a\nws_a\na\nk1\nKey one\n{}\nconfigs.read\n600\nactive",
            "ab".repeat(32)
        ));
        assert!(
            crate::identity::keys::load::fast::read(&text).is_some(),
            "{text}"
        );
        let loaded =
            crate::identity::keys::parse_keys_str(&text, Path::new("t.yaml"), TABLE.registry());
        assert!(loaded.is_ok(), "{text}: {loaded:?}");
    }

    #[test]
    fn reference_matcher_prefers_literals() {
        assert_eq!(
            reference_match("/v1/x/latest"),
            Some(("/v1/x/latest".into(), None))
        );
        assert_eq!(
            reference_match("/w/fixed/a/meta"),
            Some(("/w/fixed/{item}/meta".into(), None))
        );
        assert_eq!(
            reference_match("/w/ws/a/meta"),
            Some(("/w/{workspace_id}/{item}/meta".into(), Some("ws".into())))
        );
    }
}
