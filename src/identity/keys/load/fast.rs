//! A fast reader for the plain YAML that keys files are written in.
//!
//! serde_yaml reads about 12 MB/s; a 100k-key file is ~25 MB, so a reload
//! would spend two seconds in the parser alone. Keys files, written by hand
//! or by `scopegate new-key`, use a small part of YAML: block mappings and
//! sequences indented with spaces, one-line flow lists and mappings
//! (`[a, b]`, `{ type: requests, unit: rpm, value: 600 }`, a list of such
//! mappings), one-line plain or quoted scalars, plain decimals (`0.15` for
//! prices), keys that are field names or model patterns (`gpt-4o*`,
//! `"gpt-4o-mini"`), and comments. This module reads exactly that part,
//! about twenty times faster.
//!
//! It never reports errors. On anything outside that part — anchors, tags,
//! block or multi-line scalars, escapes, tabs, several documents — and on
//! anything serde would refuse or read differently — unknown, duplicate or
//! missing fields, values of the wrong shape, empty values, numbers that are
//! not plain decimals — it gives up with `None`, and the caller reads the
//! text with serde_yaml, which then also produces the error messages. So for
//! every text it accepts it must yield the document serde_yaml yields; the
//! differential tests in `tests.rs` check that on thousands of mutated
//! files.

use std::borrow::Cow;

use super::super::model::{
    ClaimNamesSpec, IdentityTokensSpec, KeySpec, KeysDocument, ModelPrices, OrganisationSpec,
    PriceSpec, RateLimitSpec, SecretSpec, UsageLimitSpec, UsageLimitsSpec, WorkspaceSpec,
};

/// Reads a keys document, or `None` when the text is not plain enough.
pub(crate) fn read(text: &str) -> Option<KeysDocument> {
    let mut parser = Parser {
        lines: Lines {
            rest: Some(text),
            bad: false,
        },
        current: None,
    };
    parser.advance();
    let first = parser.current?;
    let root = parser.block(first.indent);
    // A line the scanner refused ends the input early: the parse of what
    // came before proves nothing.
    if parser.lines.bad || parser.current.is_some() {
        return None;
    }
    document(&root?)
}

// ---------------------------------------------------------------------------
// Lines.

/// A line with content: its indentation and the rest, trailing spaces cut.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    content: &'a str,
}

/// The content lines of the text, one at a time: blank and comment lines
/// are skipped. Sets `bad` and stops on characters or markers this reader
/// does not handle.
struct Lines<'a> {
    rest: Option<&'a str>,
    bad: bool,
}

impl<'a> Lines<'a> {
    fn next_line(&mut self) -> Option<Line<'a>> {
        loop {
            let text = self.rest?;
            let (raw, rest) = match memchr::memchr(b'\n', text.as_bytes()) {
                Some(end) => (&text[..end], Some(&text[end + 1..])),
                None => (text, None),
            };
            self.rest = rest;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let content = raw.trim_start_matches(' ');
            let indent = raw.len() - content.len();
            let content = content.trim_end_matches(' ');
            let refused = !plain_characters(raw)
                // Document markers and directives: a leading `---` is
                // common, but not worth handling here.
                || (indent == 0
                    && (content.starts_with("---")
                        || content.starts_with("...")
                        || content.starts_with('%')));
            if refused {
                self.bad = true;
                self.rest = None;
                return None;
            }
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            return Some(Line { indent, content });
        }
    }
}

/// No tabs, carriage returns or other control characters, and none of the
/// characters YAML 1.1 (libyaml) treats as line breaks or forbids.
fn plain_characters(line: &str) -> bool {
    // A fold with no early exit: the compiler checks 16 bytes at a time.
    if line
        .bytes()
        .fold(true, |ok, b| ok & (b.wrapping_sub(0x20) < 0x5f))
    {
        return true;
    }
    line.chars().all(|c| {
        let c = c as u32;
        (0x20..0x7f).contains(&c)
            || (c >= 0xa0 && !matches!(c, 0x2028 | 0x2029 | 0xfeff | 0xfffe | 0xffff))
    })
}

// ---------------------------------------------------------------------------
// A small tree.

#[derive(Debug)]
enum Node<'a> {
    Scalar(Scalar<'a>),
    Seq(Vec<Node<'a>>),
    Map(Vec<(&'a str, Node<'a>)>),
}

#[derive(Debug)]
struct Scalar<'a> {
    text: Cow<'a, str>,
    /// Unquoted: `~`, `null` and the empty scalar may mean "none".
    plain: bool,
}

struct Parser<'a> {
    lines: Lines<'a>,
    /// The line being looked at; `None` at the end.
    current: Option<Line<'a>>,
}

fn is_seq_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

/// `key: rest` with a simple key; `rest` is what follows the `: `. A key is
/// plain (field names, and model patterns such as `gpt-4o*`) or quoted
/// without escapes (`"gpt-4o*"`, `'x'`).
fn split_key(content: &str) -> Option<(&str, &str)> {
    let (key, after) = match *content.as_bytes().first()? {
        q @ (b'"' | b'\'') => {
            let end = content[1..].find(q as char)? + 1;
            let key = &content[1..end];
            let after = content[end + 1..].strip_prefix(':')?;
            // `''` (a quote) and `\` escapes are left to serde_yaml.
            if key.contains('\\') || after.starts_with(q as char) {
                return None;
            }
            (key, after)
        }
        _ => {
            let end = memchr::memchr(b':', content.as_bytes())?;
            let key = &content[..end];
            // One pass: a simple key is a pattern key, less `.`, `/`, `*`,
            // that may also start with `_` or `-`.
            let (mut name_bytes, mut pattern_bytes) = (true, true);
            for b in key.bytes() {
                let name = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
                name_bytes &= name;
                pattern_bytes &= name || matches!(b, b'.' | b'/' | b'*');
            }
            let simple = !key.is_empty() && name_bytes;
            let pattern = key
                .as_bytes()
                .first()
                .is_some_and(u8::is_ascii_alphanumeric)
                && pattern_bytes;
            if !(simple || pattern) {
                return None;
            }
            (key, &content[end + 1..])
        }
    };
    (after.is_empty() || after.starts_with(' ')).then(|| (key, after.trim_start()))
}

/// Characters that may not start a plain scalar (or that start something
/// this reader does not handle).
fn is_indicator(c: u8) -> bool {
    matches!(
        c,
        b'-' | b'?'
            | b':'
            | b','
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'#'
            | b'&'
            | b'*'
            | b'!'
            | b'|'
            | b'>'
            | b'\''
            | b'"'
            | b'%'
            | b'@'
            | b'`'
    )
}

/// Whether what follows a value on its line is nothing or a comment.
fn only_comment(rest: &str) -> bool {
    let trimmed = rest.trim_start_matches(' ');
    trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())
}

impl<'a> Parser<'a> {
    fn advance(&mut self) {
        self.current = self.lines.next_line();
    }

    /// The block node whose first line is the current one, at `indent`.
    fn block(&mut self, indent: usize) -> Option<Node<'a>> {
        let line = self.current?;
        if line.indent != indent {
            return None;
        }
        if is_seq_item(line.content) {
            self.seq(indent)
        } else {
            let (key, rest) = split_key(line.content)?;
            self.advance();
            self.map(indent, key, rest)
        }
    }

    /// A block mapping at `indent` whose first entry (already consumed) is
    /// `key: rest`.
    fn map(&mut self, indent: usize, key: &'a str, rest: &'a str) -> Option<Node<'a>> {
        let mut entries: Vec<(&'a str, Node<'a>)> = Vec::with_capacity(8);
        let mut key = key;
        let mut rest = rest;
        loop {
            let value = self.value(indent, rest)?;
            if entries.iter().any(|(k, _)| *k == key) {
                return None;
            }
            entries.push((key, value));
            let Some(line) = self.current else {
                break;
            };
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            if is_seq_item(line.content) {
                // A sequence at a mapping's indentation can only be the value
                // of a key with nothing after it, which `value` consumed.
                return None;
            }
            (key, rest) = split_key(line.content)?;
            self.advance();
        }
        Some(Node::Map(entries))
    }

    /// The value of a mapping entry at `indent`: `rest` on the key's line,
    /// or the lines below.
    fn value(&mut self, indent: usize, rest: &'a str) -> Option<Node<'a>> {
        // `key:   # note` is `key:` with a comment.
        if !rest.is_empty() && !rest.starts_with('#') {
            return inline(rest);
        }
        // Nothing after the key: the value is on the next lines, either more
        // indented, or a sequence at the same indentation. Anything else
        // would be an empty value, which serde reads in ways this reader
        // does not copy.
        let line = self.current?;
        if line.indent > indent || (line.indent == indent && is_seq_item(line.content)) {
            self.block(line.indent)
        } else {
            None
        }
    }

    /// A block sequence at `indent`; the current line is its first item.
    fn seq(&mut self, indent: usize) -> Option<Node<'a>> {
        let mut items = Vec::new();
        while let Some(line) = self.current {
            if line.indent < indent || (line.indent == indent && !is_seq_item(line.content)) {
                break;
            }
            if line.indent > indent || line.content == "-" {
                return None;
            }
            let after = &line.content[2..];
            let item = after.trim_start_matches(' ');
            let column = indent + 2 + (after.len() - item.len());
            if is_seq_item(item) {
                return None;
            }
            self.advance();
            let node = match split_key(item) {
                Some((key, rest)) => self.map(column, key, rest)?,
                None => inline(item)?,
            };
            items.push(node);
        }
        Some(Node::Seq(items))
    }
}

/// A value on one line: a scalar or a one-line flow collection, then at
/// most a comment.
fn inline(s: &str) -> Option<Node<'_>> {
    let (node, rest) = match *s.as_bytes().first()? {
        b'[' => flow_seq(&s[1..])?,
        b'{' => flow_map(&s[1..])?,
        b'"' | b'\'' => {
            let (scalar, rest) = quoted(s)?;
            (Node::Scalar(scalar), rest)
        }
        c if is_indicator(c) => return None,
        _ => {
            let text = match s.find(" #") {
                Some(end) => s[..end].trim_end_matches(' '),
                None => s,
            };
            if text.contains(": ") || text.ends_with(':') {
                return None;
            }
            return Some(Node::Scalar(Scalar {
                text: Cow::Borrowed(text),
                plain: true,
            }));
        }
    };
    only_comment(rest).then_some(node)
}

/// A quoted scalar at the start of `s`; returns it and what follows.
fn quoted(s: &str) -> Option<(Scalar<'_>, &str)> {
    let bytes = s.as_bytes();
    let quote = *bytes.first()?;
    if quote == b'"' {
        let end = s[1..].find('"')? + 1;
        let text = &s[1..end];
        if text.contains('\\') {
            return None;
        }
        return Some((
            Scalar {
                text: Cow::Borrowed(text),
                plain: false,
            },
            &s[end + 1..],
        ));
    }
    // Single quotes: `''` is a quote.
    let mut i = 1;
    loop {
        let at = i + s[i..].find('\'')?;
        if bytes.get(at + 1) == Some(&b'\'') {
            i = at + 2;
            continue;
        }
        let text = &s[1..at];
        let text = if text.contains("''") {
            Cow::Owned(text.replace("''", "'"))
        } else {
            Cow::Borrowed(text)
        };
        return Some((Scalar { text, plain: false }, &s[at + 1..]));
    }
}

/// A scalar inside a flow collection, up to `,` or the closer.
fn flow_scalar(s: &str) -> Option<(Scalar<'_>, &str)> {
    let s = s.trim_start_matches(' ');
    match *s.as_bytes().first()? {
        b'"' | b'\'' => {
            let (scalar, rest) = quoted(s)?;
            Some((scalar, rest.trim_start_matches(' ')))
        }
        c if is_indicator(c) => None,
        _ => {
            let end = s.find([',', ']', '}', '[', '{', ':', '#'])?;
            if matches!(s.as_bytes()[end], b'[' | b'{' | b':' | b'#') {
                return None;
            }
            let text = s[..end].trim_end_matches(' ');
            Some((
                Scalar {
                    text: Cow::Borrowed(text),
                    plain: true,
                },
                &s[end..],
            ))
        }
    }
}

/// `a, b]` or `{..}, {..}]` (after the `[`).
fn flow_seq(s: &str) -> Option<(Node<'_>, &str)> {
    let mut items = Vec::new();
    let mut rest = s.trim_start_matches(' ');
    if let Some(after) = rest.strip_prefix(']') {
        return Some((Node::Seq(items), after));
    }
    loop {
        let item = rest.trim_start_matches(' ');
        let after = if let Some(inner) = item.strip_prefix('{') {
            // `[{ type: tokens, unit: rpm, value: 5 }]`
            let (map, after) = flow_map(inner)?;
            items.push(map);
            after.trim_start_matches(' ')
        } else {
            let (scalar, after) = flow_scalar(item)?;
            items.push(Node::Scalar(scalar));
            after
        };
        if let Some(after) = after.strip_prefix(',') {
            rest = after;
        } else {
            let after = after.strip_prefix(']')?;
            return Some((Node::Seq(items), after));
        }
    }
}

/// `k: v, k2: v2 }` (after the `{`).
fn flow_map(s: &str) -> Option<(Node<'_>, &str)> {
    let mut entries: Vec<(&str, Node<'_>)> = Vec::new();
    let mut rest = s.trim_start_matches(' ');
    if let Some(after) = rest.strip_prefix('}') {
        return Some((Node::Map(entries), after));
    }
    loop {
        let colon = rest.find(':')?;
        let key = rest[..colon].trim_start_matches(' ');
        let simple = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !simple || !rest[colon + 1..].starts_with(' ') {
            return None;
        }
        let (scalar, after) = flow_scalar(&rest[colon + 1..])?;
        if entries.iter().any(|(k, _)| *k == key) {
            return None;
        }
        entries.push((key, Node::Scalar(scalar)));
        if let Some(after) = after.strip_prefix(',') {
            rest = after;
        } else {
            let after = after.strip_prefix('}')?;
            return Some((Node::Map(entries), after));
        }
    }
}

// ---------------------------------------------------------------------------
// From the tree to the model, the way serde_yaml would read it.

fn string(n: &Node<'_>) -> Option<String> {
    match n {
        Node::Scalar(s) if !(s.plain && s.text.is_empty()) => Some(s.text.to_string()),
        _ => None,
    }
}

/// `Option<String>`: serde_yaml reads a plain `~`, `null`, `Null` or `NULL`
/// as none.
fn optional(n: &Node<'_>) -> Option<Option<String>> {
    match n {
        Node::Scalar(s) if s.plain && matches!(&*s.text, "" | "~" | "null" | "Null" | "NULL") => {
            Some(None)
        }
        Node::Scalar(s) => Some(Some(s.text.to_string())),
        _ => None,
    }
}

/// A plain decimal without sign or leading zeros; other spellings (`0x10`,
/// `+5`, `1_000`) go to serde_yaml.
fn number(n: &Node<'_>) -> Option<u64> {
    match n {
        Node::Scalar(s)
            if s.plain
                && !s.text.is_empty()
                && s.text.bytes().all(|b| b.is_ascii_digit())
                && (s.text.len() == 1 || !s.text.starts_with('0')) =>
        {
            s.text.parse().ok()
        }
        _ => None,
    }
}

/// An `f64` as serde_yaml reads a plain decimal: `12`, `0.15`; no sign,
/// exponent, leading zeros or special values (those go to serde_yaml).
fn float(n: &Node<'_>) -> Option<f64> {
    let Node::Scalar(s) = n else {
        return None;
    };
    let (int, frac) = match s.text.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (&*s.text, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let ok = s.plain
        && digits(int)
        && int.len() <= 19
        && (int.len() == 1 || !int.starts_with('0'))
        && frac.is_none_or(digits);
    if ok {
        s.text.parse().ok()
    } else {
        None
    }
}

fn list<T>(n: &Node<'_>, item: impl Fn(&Node<'_>) -> Option<T>) -> Option<Vec<T>> {
    match n {
        Node::Seq(items) => items.iter().map(item).collect(),
        _ => None,
    }
}

fn entries<'n, 'a>(n: &'n Node<'a>) -> Option<&'n [(&'a str, Node<'a>)]> {
    match n {
        Node::Map(entries) => Some(entries),
        _ => None,
    }
}

fn document(n: &Node<'_>) -> Option<KeysDocument> {
    let mut doc = KeysDocument::default();
    for (name, v) in entries(n)? {
        match *name {
            "organisations" => doc.organisations = list(v, organisation)?,
            "custom_scopes" => doc.custom_scopes = list(v, string)?,
            "keys" => doc.keys = list(v, key)?,
            "model_prices" => doc.model_prices = model_prices(v)?,
            _ => return None,
        }
    }
    Some(doc)
}

fn organisation(n: &Node<'_>) -> Option<OrganisationSpec> {
    let mut org = OrganisationSpec::default();
    let mut has_id = false;
    for (name, v) in entries(n)? {
        match *name {
            "id" => {
                org.id = string(v)?;
                has_id = true;
            }
            "workspaces" => org.workspaces = list(v, workspace)?,
            "identity_tokens" => org.identity_tokens = Some(identity_tokens(v)?),
            _ => return None,
        }
    }
    has_id.then_some(org)
}

fn identity_tokens(n: &Node<'_>) -> Option<IdentityTokensSpec> {
    let mut t = IdentityTokensSpec::default();
    let mut seen = 0u8;
    for (name, v) in entries(n)? {
        match *name {
            "issuer" => {
                t.issuer = string(v)?;
                seen |= 1;
            }
            "audience" => {
                t.audience = string(v)?;
                seen |= 2;
            }
            "jwks_file" => t.jwks_file = optional(v)?,
            "jwks_url" => t.jwks_url = optional(v)?,
            "ca_file" => t.ca_file = optional(v)?,
            "jwks_refresh_seconds" => t.jwks_refresh_seconds = Some(number(v)?),
            "algorithms" => t.algorithms = Some(list(v, string)?),
            "leeway_seconds" => t.leeway_seconds = Some(number(v)?),
            "key_type" => t.key_type = optional(v)?,
            "claims" => t.claims = Some(claim_names(v)?),
            "scopes_allowed" => t.scopes_allowed = Some(list(v, string)?),
            "revoked_subjects" => t.revoked_subjects = list(v, string)?,
            "models" => t.models = Some(list(v, string)?),
            "rate_limits" => t.rate_limits = list(v, rate_limit)?,
            "usage_limits" => t.usage_limits = Some(usage_limits(v)?),
            "max_concurrent_requests" => t.max_concurrent_requests = Some(number(v)?),
            _ => return None,
        }
    }
    (seen == 3).then_some(t)
}

fn claim_names(n: &Node<'_>) -> Option<ClaimNamesSpec> {
    let mut c = ClaimNamesSpec::default();
    for (name, v) in entries(n)? {
        match *name {
            "workspace" => c.workspace = optional(v)?,
            "scopes" => c.scopes = optional(v)?,
            "user" => c.user = optional(v)?,
            _ => return None,
        }
    }
    Some(c)
}

fn workspace(n: &Node<'_>) -> Option<WorkspaceSpec> {
    let mut ws = WorkspaceSpec::default();
    let mut has_id = false;
    for (name, v) in entries(n)? {
        match *name {
            "id" => {
                ws.id = string(v)?;
                has_id = true;
            }
            "slug" => ws.slug = optional(v)?,
            "models" => ws.models = Some(list(v, string)?),
            "rate_limits" => ws.rate_limits = list(v, rate_limit)?,
            "usage_limits" => ws.usage_limits = Some(usage_limits(v)?),
            _ => return None,
        }
    }
    has_id.then_some(ws)
}

fn key(n: &Node<'_>) -> Option<KeySpec> {
    let mut k = KeySpec::default();
    let (mut has_id, mut has_type) = (false, false);
    for (name, v) in entries(n)? {
        match *name {
            "id" => {
                k.id = string(v)?;
                has_id = true;
            }
            "type" => {
                k.key_type = string(v)?;
                has_type = true;
            }
            "name" => k.name = string(v)?,
            "organisation_id" => k.organisation_id = optional(v)?,
            "workspace_id" => k.workspace_id = optional(v)?,
            "user_id" => k.user_id = optional(v)?,
            "sha256" => k.sha256 = optional(v)?,
            "secrets" => k.secrets = Some(list(v, secret)?),
            "scopes" => k.scopes = list(v, string)?,
            "expires_at" => k.expires_at = optional(v)?,
            "status" => k.status = optional(v)?,
            "rate_limits" => k.rate_limits = list(v, rate_limit)?,
            "models" => k.models = Some(list(v, string)?),
            "max_concurrent_requests" => k.max_concurrent_requests = Some(number(v)?),
            "usage_limits" => k.usage_limits = Some(usage_limits(v)?),
            _ => return None,
        }
    }
    (has_id && has_type).then_some(k)
}

fn secret(n: &Node<'_>) -> Option<SecretSpec> {
    let mut s = SecretSpec::default();
    let mut has_hash = false;
    for (name, v) in entries(n)? {
        match *name {
            "sha256" => {
                s.sha256 = string(v)?;
                has_hash = true;
            }
            "expires_at" => s.expires_at = optional(v)?,
            _ => return None,
        }
    }
    has_hash.then_some(s)
}

fn rate_limit(n: &Node<'_>) -> Option<RateLimitSpec> {
    let mut r = RateLimitSpec::default();
    let mut seen = 0u8;
    for (name, v) in entries(n)? {
        match *name {
            "type" => {
                r.limit_type = string(v)?;
                seen |= 1;
            }
            "unit" => {
                r.unit = string(v)?;
                seen |= 2;
            }
            "value" => {
                r.value = number(v)?;
                seen |= 4;
            }
            _ => return None,
        }
    }
    (seen == 7).then_some(r)
}

/// One mapping, or a list of mappings (flow lists hold only scalars here).
fn usage_limits(n: &Node<'_>) -> Option<UsageLimitsSpec> {
    match n {
        Node::Map(_) => usage_limit(n).map(UsageLimitsSpec::One),
        Node::Seq(_) => list(n, usage_limit).map(UsageLimitsSpec::List),
        Node::Scalar(_) => None,
    }
}

fn usage_limit(n: &Node<'_>) -> Option<UsageLimitSpec> {
    let mut u = UsageLimitSpec::default();
    let mut seen = 0u8;
    for (name, v) in entries(n)? {
        match *name {
            "type" => {
                u.limit_type = string(v)?;
                seen |= 1;
            }
            "credit_limit" => {
                u.credit_limit = float(v)?;
                seen |= 2;
            }
            "alert_threshold" => u.alert_threshold = Some(float(v)?),
            "periodic_reset" => u.periodic_reset = optional(v)?,
            _ => return None,
        }
    }
    (seen == 3).then_some(u)
}

fn model_prices(n: &Node<'_>) -> Option<ModelPrices> {
    let prices = entries(n)?
        .iter()
        .map(|(pattern, v)| Some((pattern.to_string(), price(v)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(ModelPrices(prices))
}

fn price(n: &Node<'_>) -> Option<PriceSpec> {
    let mut p = PriceSpec::default();
    let mut seen = 0u8;
    for (name, v) in entries(n)? {
        match *name {
            "input" => {
                p.input = float(v)?;
                seen |= 1;
            }
            "output" => {
                p.output = float(v)?;
                seen |= 2;
            }
            "cached_input" if p.cached_input.is_none() => p.cached_input = Some(float(v)?),
            "cache_write" if p.cache_write.is_none() => p.cache_write = Some(float(v)?),
            _ => return None,
        }
    }
    (seen == 3).then_some(p)
}

#[cfg(test)]
mod tests;
