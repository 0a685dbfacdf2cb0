//! Readers of a data-plane request (the reference on which data-plane bodies are read, model allowlists and usage in streams): the facts of a JSON
//! body (model, requested maximum output, streaming), the `model` fields of
//! a `multipart/form-data` body, the `model` query parameters, and the one
//! edit the proxy makes to a body: setting `stream_options.include_usage`.
//!
//! The upstream parses the same bytes with its own parser, so where parsers
//! could disagree on what a request names (a repeated field, a case variant
//! Go's `encoding/json` would accept, a malformed multipart body) the
//! request is refused rather than read one way.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::limits::percent::decode_component;

/// Why a body cannot be read; the proxy answers 400 `invalid_json` with the
/// message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// What the proxy reads from a JSON request body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsonFacts {
    /// The top-level string `model`.
    pub model: Option<String>,
    /// The largest of `max_tokens`, `max_completion_tokens` and
    /// `max_output_tokens`, when any is given (and not `null`).
    pub max_output: Option<u64>,
    /// Whether the top-level `stream` is `true`.
    pub stream: bool,
    /// `stream_options.include_usage`, when given (and not `null`).
    pub include_usage: Option<bool>,
    /// `n`, the number of choices asked for, when given (and not `null`).
    pub n: Option<u64>,
    /// Whether the top-level `background` is `true` (a Responses API
    /// request answered later, whose tokens the proxy never sees).
    pub background: bool,
}

const MODEL: usize = 0;
const STREAM: usize = 1;
const STREAM_OPTIONS: usize = 2;
const N: usize = 3;
const BACKGROUND: usize = 4;
/// The first of the fields that are a requested maximum output.
const MAX_OUTPUT: usize = 5;
/// Top-level fields every upstream parser must read as the proxy does; from
/// [`MAX_OUTPUT`] on, the requested maximum output.
const GUARDED: [&str; 8] = [
    "model",
    "stream",
    "stream_options",
    "n",
    "background",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
];
const INCLUDE_USAGE: &str = "include_usage";

/// Reads a JSON request body, which must be an object.
///
/// # Errors
///
/// The body is not a JSON object; `model` is not a string, `stream`,
/// `background` or `stream_options.include_usage` not a boolean,
/// `stream_options` not an object, `n` or a maximum output not a
/// non-negative integer (`null` counts as absent for all but `model`); or
/// one of these fields appears twice, or in another case (`Model`), which
/// some upstream parser could read instead.
pub fn read_json_body(body: &[u8]) -> Result<JsonFacts, BodyError> {
    scan(body).map(|s| s.facts)
}

/// For a JSON object body with `"stream": true` whose
/// `stream_options.include_usage` is not `true`: the same body with only
/// `stream_options.include_usage` set to `true` (the reference on usage in streams). Every other byte
/// is kept as it was: the field is inserted into an existing
/// `stream_options` object, or its value replaced in place, or
/// `"stream_options":{"include_usage":true}` inserted right after the
/// body's opening brace. `None` when nothing needs setting, or the body is
/// not one [`read_json_body`] accepts.
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let scan = scan(body).ok()?;
    if !scan.facts.stream || scan.facts.include_usage == Some(true) {
        return None;
    }
    let (at, remove, insert): (usize, usize, Cow<'static, str>) = match scan.options {
        None => (
            scan.open + 1,
            0,
            if scan.empty {
                r#""stream_options":{"include_usage":true}"#.into()
            } else {
                r#""stream_options":{"include_usage":true},"#.into()
            },
        ),
        Some(Options::Null(span)) => (span.at, span.len, r#"{"include_usage":true}"#.into()),
        Some(Options::Object {
            include_usage: Some(span),
            ..
        }) => (span.at, span.len, "true".into()),
        Some(Options::Object {
            open,
            empty,
            include_usage: None,
        }) => (
            open + 1,
            0,
            if empty {
                r#""include_usage":true"#.into()
            } else {
                r#""include_usage":true,"#.into()
            },
        ),
    };
    let end = at.checked_add(remove)?;
    let mut out = Vec::with_capacity(body.len() + insert.len());
    out.extend_from_slice(body.get(..at)?);
    out.extend_from_slice(insert.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(out)
}

/// Where a value lies in the body.
#[derive(Clone, Copy, Debug)]
struct Span {
    at: usize,
    len: usize,
}

/// What `stream_options` is, with the places an edit touches.
#[derive(Clone, Copy, Debug)]
enum Options {
    /// `"stream_options": null`.
    Null(Span),
    /// An object: where its `{` is, whether it has no field, and where the
    /// value of its `include_usage` is.
    Object {
        open: usize,
        empty: bool,
        include_usage: Option<Span>,
    },
}

/// A JSON body read: the facts plus what [`inject_include_usage`] needs.
struct Scan {
    facts: JsonFacts,
    /// Offset of the body's opening `{`.
    open: usize,
    /// Whether the body is `{}`.
    empty: bool,
    options: Option<Options>,
}

fn scan(body: &[u8]) -> Result<Scan, BodyError> {
    // JSON is UTF-8; values the scan skips are not otherwise checked.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(BodyError(format!(
            "the body is not valid JSON: invalid UTF-8 at byte {}",
            e.valid_up_to()
        )));
    }
    let open = body
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(body.len());
    if body.get(open) != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => BodyError("the body must be a JSON object".into()),
            Err(e) => not_json(&e),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let (fields, empty) = de
        .deserialize_map(FieldsVisitor {
            names: &GUARDED,
            place: "the body",
        })
        .and_then(|r| de.end().map(|()| r))
        .map_err(|e| not_json(&e))?
        .map_err(BodyError)?;

    let model = fields[MODEL]
        .map(|raw| {
            serde_json::from_str::<String>(raw.get())
                .map_err(|_| BodyError("`model` must be a string".into()))
        })
        .transpose()?;
    let stream = fields[STREAM]
        .map(|raw| boolean(raw, "stream"))
        .transpose()?
        .flatten()
        == Some(true);
    let background = fields[BACKGROUND]
        .map(|raw| boolean(raw, "background"))
        .transpose()?
        .flatten()
        == Some(true);
    let count = |raw: &RawValue, name: &str| {
        serde_json::from_str::<Option<u64>>(raw.get())
            .map_err(|_| BodyError(format!("`{name}` must be a non-negative integer")))
    };
    let n = fields[N].map(|raw| count(raw, "n")).transpose()?.flatten();
    let mut max_output: Option<u64> = None;
    for (raw, name) in fields.iter().zip(GUARDED).skip(MAX_OUTPUT) {
        let Some(raw) = raw else { continue };
        max_output = max_output.max(count(raw, name)?);
    }
    let (options, include_usage) = match fields[STREAM_OPTIONS] {
        None => (None, None),
        Some(raw) => stream_options(body, raw)?,
    };
    Ok(Scan {
        facts: JsonFacts {
            model,
            max_output,
            stream,
            include_usage,
            n,
            background,
        },
        open,
        empty,
        options,
    })
}

fn not_json(e: &serde_json::Error) -> BodyError {
    BodyError(format!("the body is not valid JSON: {e}"))
}

/// A `true`/`false`/`null` field (`null`: `None`).
fn boolean(raw: &RawValue, name: &str) -> Result<Option<bool>, BodyError> {
    serde_json::from_str::<Option<bool>>(raw.get())
        .map_err(|_| BodyError(format!("`{name}` must be true or false")))
}

/// Reads `stream_options` (`null` or an object) and its `include_usage`.
fn stream_options(
    body: &[u8],
    raw: &RawValue,
) -> Result<(Option<Options>, Option<bool>), BodyError> {
    let text = raw.get();
    let span = span_of(body, text)?;
    if text == "null" {
        return Ok((Some(Options::Null(span)), None));
    }
    if !text.starts_with('{') {
        return Err(BodyError("`stream_options` must be an object".into()));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let (fields, empty) = de
        .deserialize_map(FieldsVisitor {
            names: &[INCLUDE_USAGE],
            place: "`stream_options`",
        })
        .map_err(|e| not_json(&e))?
        .map_err(BodyError)?;
    let (include_usage, value) = match fields[0] {
        None => (None, None),
        Some(raw) => (
            Some(span_of(body, raw.get())?),
            boolean(raw, "stream_options.include_usage")?,
        ),
    };
    Ok((
        Some(Options::Object {
            open: span.at,
            empty,
            include_usage,
        }),
        value,
    ))
}

/// Where `part`, a slice of `body`'s text, lies in `body`.
fn span_of(body: &[u8], part: &str) -> Result<Span, BodyError> {
    let at = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    let span = Span {
        at,
        len: part.len(),
    };
    // Always true for a slice borrowed from `body`; checked so a mistake
    // could only refuse a body, never corrupt one.
    match at.checked_add(part.len()).and_then(|end| body.get(at..end)) {
        Some(bytes) if bytes == part.as_bytes() => Ok(span),
        _ => Err(BodyError("the body could not be read".into())),
    }
}

/// Whether an object key would be read as `name` (lower-case ASCII) by a
/// case-insensitive parser: ASCII case is ignored, and so are the two
/// non-ASCII letters Go's `encoding/json` folds into ASCII ones (`ſ` = `s`,
/// the Kelvin sign `K` = `k`).
fn folds_to(key: &str, name: &str) -> bool {
    let mut key = key.chars().map(|c| match c {
        '\u{17F}' => 's',
        '\u{212A}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    let mut name = name.chars();
    loop {
        match (key.next(), name.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// The raw values of the guarded `names` of one JSON object, and whether
/// the object is empty; the inner `Err` says which field is ambiguous.
type Fields<'de> = Result<(Vec<Option<&'de RawValue>>, bool), String>;

/// Collects the raw values of `names` in an object, skipping other fields
/// without building them.
struct FieldsVisitor<'n> {
    names: &'n [&'n str],
    /// For messages: "the body", "`stream_options`".
    place: &'static str,
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields: Vec<Option<&'de RawValue>> = vec![None; self.names.len()];
        let mut empty = true;
        let mut problem: Option<String> = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            empty = false;
            let Some(i) = self.names.iter().position(|n| folds_to(&key, n)) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let raw: &'de RawValue = map.next_value()?;
            if problem.is_some() {
                continue;
            }
            let name = self.names[i];
            if *key != *name {
                problem = Some(format!(
                    "{} has the field `{key}`: write `{name}` exactly, in lower case",
                    self.place
                ));
            } else if fields[i].is_some() {
                problem = Some(format!("`{name}` appears more than once in {}", self.place));
            } else {
                fields[i] = Some(raw);
            }
        }
        Ok(problem.map_or(Ok((fields, empty)), Err))
    }
}

/// Whether a form field or query parameter name could be read as `model` by
/// some upstream framework: `model` in any ASCII case, with surrounding
/// whitespace, or as an array (`model[]`, `model[0]`).
fn names_model(name: &str) -> bool {
    let name = name.trim_matches(|c: char| c.is_ascii_whitespace());
    let Some(head) = name.get(..5) else {
        return false;
    };
    let rest = &name[5..];
    head.eq_ignore_ascii_case("model")
        && (rest.is_empty() || (rest.starts_with('[') && rest.ends_with(']')))
}

/// Every value of a query parameter that names a model (the reference on model allowlists), decoded,
/// read every way an upstream framework could read it: the parameter's
/// decoded name is `model` in any case or an array form (`model[]`); pairs
/// are separated by `&`, and also by `;` (so `model=a;b` names both `a;b`
/// and `a`, and `x=1;model=y` names `y`); a `+` in a value is a space, and
/// also a plus (`model=a+b` names `a b` and `a+b`). The caller checks each.
pub fn query_models(query: Option<&str>) -> Vec<Cow<'_, str>> {
    let mut models = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        push_model_value(pair, &mut models);
        if pair.contains(';') {
            for sub in pair.split(';') {
                push_model_value(sub, &mut models);
            }
        }
    }
    models
}

/// Adds the value(s) of `name=value` when the name reads as `model`.
fn push_model_value<'q>(pair: &'q str, models: &mut Vec<Cow<'q, str>>) {
    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
    if !names_model(&decode_component(k)) {
        return;
    }
    models.push(decode_component(v));
    if v.contains('+') {
        // Decoders that leave `+` alone (outside form decoding).
        let kept = decode_component(&v.replace('+', "%2B")).into_owned();
        models.push(Cow::Owned(kept));
    }
}

/// The value of every part of a `multipart/form-data` body whose name is
/// `model` (in any case, or as an array such as `model[]`), in order.
///
/// The parser is strict (CRLF line ends, no preamble, no folded headers, no
/// RFC 2231 `name*`, no backslash in quoted parameters, no encoded `model`
/// part), so that whatever it accepts, every upstream parser reads the same
/// parts.
///
/// # Errors
///
/// The content type is not `multipart/form-data` with a boundary, or the
/// body is malformed, or a `model` value is not UTF-8.
pub fn multipart_models(content_type: &[u8], body: &[u8]) -> Result<Vec<String>, BodyError> {
    let (essence, params) = header_params(content_type)?;
    if !essence.eq_ignore_ascii_case(b"multipart/form-data") {
        return Err(BodyError("the body is not multipart/form-data".into()));
    }
    let boundary = single_param(&params, "boundary")?
        .ok_or_else(|| BodyError("the multipart content type has no boundary".into()))?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(BodyError(
            "the multipart boundary must be 1 to 70 characters".into(),
        ));
    }
    let mut delimiter = b"\r\n--".to_vec();
    delimiter.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delimiter);

    // The body opens with the first delimiter (without its CRLF).
    let mut rest = body
        .strip_prefix(&delimiter[2..])
        .ok_or_else(|| malformed("it does not start with the boundary"))?;
    let mut models = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            // The close delimiter; what follows is an epilogue.
            return Ok(models);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or_else(|| malformed("a boundary line has extra characters"))?;
        // A part runs to the next delimiter; its headers end within it.
        let part_end = finder
            .find(rest)
            .ok_or_else(|| malformed("a part does not end with the boundary"))?;
        let part = &rest[..part_end];
        let headers_end = if part.starts_with(b"\r\n") {
            0
        } else {
            memchr::memmem::find(part, b"\r\n\r\n")
                .map(|i| i + 2)
                .ok_or_else(|| malformed("a part's headers do not end"))?
        };
        let name = part_name(&part[..headers_end])?;
        if name.as_deref().is_some_and(names_model) {
            let value = std::str::from_utf8(&part[headers_end + 2..])
                .map_err(|_| BodyError("the multipart `model` field is not UTF-8".into()))?;
            models.push(value.to_owned());
        }
        rest = &rest[part_end + delimiter.len()..];
    }
}

fn malformed(why: &str) -> BodyError {
    BodyError(format!("the multipart body is malformed: {why}"))
}

/// The `name` of a part from its header lines (each ending in CRLF).
fn part_name(headers: &[u8]) -> Result<Option<String>, BodyError> {
    let mut disposition: Option<&[u8]> = None;
    let mut encoding: Option<&[u8]> = None;
    for line in headers.split_inclusive(|b| *b == b'\n') {
        let line = line
            .strip_suffix(b"\r\n")
            .ok_or_else(|| malformed("a header line does not end with CRLF"))?;
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| malformed("a header line has no colon"))?;
        let (field, value) = (&line[..colon], &line[colon + 1..]);
        if field.is_empty() || !field.iter().all(|b| is_token_byte(*b)) {
            return Err(malformed("a header name is not a token"));
        }
        // A bare CR or LF could end the line for another parser.
        if value.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
            return Err(malformed("a header value has a control character"));
        }
        let slot = if field.eq_ignore_ascii_case(b"content-disposition") {
            &mut disposition
        } else if field.eq_ignore_ascii_case(b"content-transfer-encoding") {
            &mut encoding
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(malformed("a part repeats a header"));
        }
    }
    let Some(disposition) = disposition else {
        return Ok(None);
    };
    let (_, params) = header_params(disposition)?;
    let Some(name) = single_param(&params, "name")? else {
        return Ok(None);
    };
    let name = std::str::from_utf8(name)
        .map_err(|_| malformed("a part name is not UTF-8"))?
        .to_owned();
    if names_model(&name) {
        if let Some(enc) = encoding {
            let enc = trim(enc);
            if !(enc.eq_ignore_ascii_case(b"7bit")
                || enc.eq_ignore_ascii_case(b"8bit")
                || enc.eq_ignore_ascii_case(b"binary"))
            {
                return Err(malformed("the `model` part has a transfer encoding"));
            }
        }
    }
    Ok(Some(name))
}

/// The one value of a parameter (`None` when absent).
///
/// # Errors
///
/// The parameter is repeated, or given in RFC 2231 form (`name*`), which
/// parsers decode differently.
fn single_param<'a>(params: &[Param<'a>], name: &str) -> Result<Option<&'a [u8]>, BodyError> {
    let mut found = None;
    for (k, v) in params {
        if k.eq_ignore_ascii_case(name.as_bytes()) {
            if found.replace(*v).is_some() {
                return Err(malformed(&format!("the parameter `{name}` is repeated")));
            }
        } else if k.len() > name.len()
            && k[..name.len()].eq_ignore_ascii_case(name.as_bytes())
            && k[name.len()] == b'*'
        {
            return Err(malformed(&format!(
                "the parameter `{name}*` is not supported"
            )));
        }
    }
    Ok(found)
}

/// A header parameter: name and value, as written.
type Param<'a> = (&'a [u8], &'a [u8]);

/// Splits a header value `type; a=b; c="d"` into its trimmed first item and
/// its parameters (a quoted value without its quotes).
fn header_params(v: &[u8]) -> Result<(&[u8], Vec<Param<'_>>), BodyError> {
    let first_end = v.iter().position(|b| *b == b';').unwrap_or(v.len());
    let essence = trim(&v[..first_end]);
    let mut params = Vec::new();
    let mut i = first_end;
    loop {
        i = skip_ows(v, i);
        if i >= v.len() {
            return Ok((essence, params));
        }
        if v[i] != b';' {
            return Err(malformed("a header parameter is malformed"));
        }
        i = skip_ows(v, i + 1);
        if i >= v.len() {
            return Ok((essence, params));
        }
        let name_start = i;
        while i < v.len() && is_token_byte(v[i]) {
            i += 1;
        }
        let name = &v[name_start..i];
        if name.is_empty() || v.get(i) != Some(&b'=') {
            return Err(malformed("a header parameter is malformed"));
        }
        i += 1;
        let value = if v.get(i) == Some(&b'"') {
            let start = i + 1;
            let len = v[start..]
                .iter()
                .position(|b| matches!(b, b'"' | b'\\'))
                .ok_or_else(|| malformed("a quoted header parameter does not end"))?;
            if v[start + len] == b'\\' {
                return Err(malformed("a quoted header parameter has a backslash"));
            }
            i = start + len + 1;
            &v[start..start + len]
        } else {
            let start = i;
            while i < v.len() && is_token_byte(v[i]) {
                i += 1;
            }
            if i == start {
                return Err(malformed("a header parameter has no value"));
            }
            &v[start..i]
        };
        params.push((name, value));
    }
}

fn skip_ows(v: &[u8], mut i: usize) -> usize {
    while i < v.len() && matches!(v[i], b' ' | b'\t') {
        i += 1;
    }
    i
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests;
