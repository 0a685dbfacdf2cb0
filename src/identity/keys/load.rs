//! Reading the keys file (the reference on the keys file and live reload): from bytes on disk to a validated
//! [`Snapshot`], or to every problem with its `FILE:LINE:COL`.
//!
//! The loader owns three things:
//!
//! - **Input hardening.** Only a regular file (symlinks are followed, as
//!   Kubernetes ConfigMaps are symlinks), at most [`MAX_KEYS_FILE_BYTES`],
//!   UTF-8, not empty.
//! - **A fast path.** A valid file is read once, whole, into a
//!   [`KeysDocument`] and handed to [`build_snapshot`]; nothing is spent on
//!   positions. Files in the plain YAML that keys files are written in are
//!   read by a dedicated reader (`fast`, about twenty times faster than
//!   serde_yaml and checked against it); serde_yaml reads everything else.
//! - **A thorough error path.** When that fails, the file is read again
//!   entry by entry, so that one malformed key does not hide the problems of
//!   the others, and every problem gets a position (from a position index
//!   built only now) and the id of the key it concerns: operators think in
//!   ids, not indices. This path only reports: a snapshot only ever comes
//!   from a document read whole, so the two paths cannot disagree on what a
//!   valid file means.

use std::cell::OnceCell;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::build::{build_snapshot, is_valid_id, nearest, Problem};
use super::model::{
    KeySpec, KeysDocument, ModelPrices, OrganisationSpec, PriceSpec, SecretSpec, WorkspaceSpec,
};
use super::{Digest, Snapshot};
use crate::diag::position::PositionIndex;
use crate::diag::read_text_file;
use crate::diag::Diagnostic;
use crate::identity::scopes::ScopeRegistry;

pub(crate) mod fast;

/// Largest keys file accepted: 64 MiB, several times what a million keys
/// take, so a runaway or wrong file cannot exhaust memory.
pub const MAX_KEYS_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Reads, validates and indexes a keys file.
///
/// # Errors
/// The file is missing, not a regular file, larger than
/// [`MAX_KEYS_FILE_BYTES`], not UTF-8, empty, not valid YAML, or breaks any
/// rule of the reference on the keys file; every problem is listed, with its position when known.
pub fn load_keys_file(path: &Path, registry: &ScopeRegistry) -> Result<Snapshot, Vec<Diagnostic>> {
    let text = read_keys_file(path).map_err(|d| vec![d])?;
    parse_keys_str(&text, path, registry)
}

/// Reads a keys file's text with the checks of [`load_keys_file`] (through
/// symlinks, a regular file, at most [`MAX_KEYS_FILE_BYTES`], UTF-8).
///
/// # Errors
/// One diagnostic naming what is wrong.
pub fn read_keys_file(path: &Path) -> Result<String, Diagnostic> {
    read_text_file(path, MAX_KEYS_FILE_BYTES, "keys file")
}

/// Validates and indexes keys-file text; `file` names it in diagnostics.
///
/// # Errors
/// As [`load_keys_file`], less the file-system checks.
pub fn parse_keys_str(
    text: &str,
    file: &Path,
    registry: &ScopeRegistry,
) -> Result<Snapshot, Vec<Diagnostic>> {
    parse_keys_str_digested(text, super::digest(text.as_bytes()), file, registry)
}

/// [`parse_keys_str`] for text whose SHA-256 the caller already has (the
/// reloader hashed it to see that it changed): the text is not hashed again.
///
/// # Errors
/// As [`load_keys_file`], less the file-system checks.
pub fn parse_keys_str_digested(
    text: &str,
    text_digest: Digest,
    file: &Path,
    registry: &ScopeRegistry,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let mut snap = parse_text(text, file, registry)?;
    if let Some(dir) = file.parent() {
        snap.identity.resolve_relative_to(dir);
    }
    snap.source_digest = Some(text_digest);
    Ok(snap)
}

fn parse_text(
    text: &str,
    file: &Path,
    registry: &ScopeRegistry,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(vec![Diagnostic::file(file, "keys file is empty")]);
    }
    let build_whole = |doc: &KeysDocument| {
        build_snapshot(doc, registry).map_err(|problems| {
            let found = problems.into_iter().map(Found::from_problem).collect();
            Report::new(file, text, doc).render(found)
        })
    };
    if let Some(doc) = fast::read(text) {
        return build_whole(&doc);
    }
    let typed_error = match serde_yaml::from_str::<KeysDocument>(text) {
        // serde reads a document of only comments as all defaults; a keys
        // file cut down to nothing must not silently mean "no keys".
        Ok(doc) if is_empty_document(&doc, text) => {
            return Err(vec![WholeFile::Empty.into_diagnostic(file, text)]);
        }
        Ok(doc) => return build_whole(&doc),
        Err(e) => e,
    };
    // The document could not be read whole: read it entry by entry to
    // collect every problem.
    let mut found = Vec::new();
    let doc = match read_leniently(text, &mut found) {
        Ok(doc) => doc,
        Err(whole_file) => return Err(vec![whole_file.into_diagnostic(file, text)]),
    };
    if let Err(problems) = build_snapshot(&doc.doc, registry) {
        found.extend(
            problems
                .into_iter()
                .filter(|p| !doc.is_under_failed_entry(&p.path))
                .map(Found::from_problem),
        );
    }
    if found.is_empty() {
        // The entry-by-entry reading is more lenient than serde in a corner
        // (e.g. `keys: ~`): serde's own message is the answer then.
        found.push(Found::from_serde(&typed_error, ""));
    }
    Err(Report::new(file, text, &doc.doc).render(found))
}

/// Whether a document that serde read as all defaults is in fact empty (only
/// comments, `~`, `---`). Only then is the text read again.
fn is_empty_document(doc: &KeysDocument, text: &str) -> bool {
    doc.keys.is_empty()
        && doc.organisations.is_empty()
        && doc.custom_scopes.is_empty()
        && doc.model_prices.is_empty()
        && matches!(serde_yaml::from_str::<Value>(text), Ok(Value::Null))
}

/// One diagnostic for a serde_yaml error that ended the reading of a whole
/// document (the server config): the field path in front of the message, the
/// position of an unknown field's key, `invalid YAML:` for syntax errors.
pub(crate) fn document_error(file: &Path, text: &str, e: &serde_yaml::Error) -> Diagnostic {
    let f = Found::from_serde(e, "");
    let syntax = serde_yaml::from_str::<serde::de::IgnoredAny>(text).is_err();
    let position = match f.anchor {
        Anchor::At(line, col) => Some((line, col)),
        Anchor::Key => PositionIndex::new(text).and_then(|ix| ix.locate_key(&f.locate)),
        Anchor::Value => PositionIndex::new(text).and_then(|ix| ix.locate(&f.locate)),
    };
    let message = match (syntax, f.path.is_empty()) {
        (true, _) => format!("invalid YAML: {}", f.message),
        (false, true) => f.message,
        (false, false) => format!("{}: {}", f.path, f.message),
    };
    Diagnostic {
        file: file.to_path_buf(),
        position,
        message,
    }
}

/// Where a problem points.
#[derive(Debug)]
enum Anchor {
    /// The node at the path (the value, for a field).
    Value,
    /// The key of the field at the path (unknown fields).
    Key,
    /// A position known from serde_yaml.
    At(usize, usize),
}

/// One problem before it gets its position.
#[derive(Debug)]
struct Found {
    /// Shown in the message (`keys[3].scopes[1]`).
    path: String,
    /// What to locate (may go deeper than `path`, e.g. to an unknown field).
    locate: String,
    anchor: Anchor,
    message: String,
}

impl Found {
    fn from_problem(p: Problem) -> Found {
        Found {
            locate: p.path.clone(),
            path: p.path,
            anchor: Anchor::Value,
            message: p.message,
        }
    }

    /// A serde error while reading the entry at `base`.
    fn from_serde(e: &serde_yaml::Error, base: &str) -> Found {
        let (inner, message) = split_serde_message(e);
        let path = join_path(base, &inner);
        // serde_yaml puts an unknown field at the start of its mapping; the
        // index finds the field itself. Other locations are exact, but only
        // when the whole document was read (not an entry re-read on its own).
        let (locate, anchor) = match (unknown_field_name(&message), e.location()) {
            (Some(field), _) => (join_path(&path, field), Anchor::Key),
            (None, Some(l)) if base.is_empty() => (path.clone(), Anchor::At(l.line(), l.column())),
            (None, _) => (path.clone(), Anchor::Value),
        };
        Found {
            path,
            locate,
            anchor,
            message: improve_message(&message),
        }
    }
}

fn join_path(base: &str, inner: &str) -> String {
    match (base.is_empty(), inner.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => inner.to_string(),
        (false, false) if inner.starts_with('[') => format!("{base}{inner}"),
        (false, false) => format!("{base}.{inner}"),
    }
}

/// serde_yaml's message without its ` at line L column C`, and the path it
/// put in front (`rate_limits[0].value: invalid type ...`), if any.
fn split_serde_message(e: &serde_yaml::Error) -> (String, String) {
    let mut text = e.to_string();
    if let Some(l) = e.location() {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        if let Some(at) = text.find(&suffix) {
            text.replace_range(at..at + suffix.len(), "");
        }
    }
    if let Some((path, rest)) = text.split_once(": ") {
        // Field names, indices, and model patterns (`model_prices.gpt-4o*`).
        let is_path = !path.is_empty()
            && path.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']' | '-' | '*' | '/')
            });
        if is_path {
            return (path.to_string(), rest.to_string());
        }
    }
    (String::new(), text)
}

/// The field of an "unknown field `x`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

/// Turns serde's "unknown field `sha265`, expected one of `id`, ..." into
/// "unknown field `sha265` (did you mean `sha256`?)" when one is close.
fn improve_message(message: &str) -> String {
    let Some(field) = unknown_field_name(message) else {
        return message.to_string();
    };
    let expected: Vec<&str> = message
        .split_once(", expected ")
        .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    match nearest(field, expected.iter().copied()) {
        Some(n) => format!("unknown field `{field}` (did you mean `{n}`?)"),
        None => message.to_string(),
    }
}

/// A problem with the file as a whole.
enum WholeFile {
    Syntax(serde_yaml::Error),
    Empty,
    NotAMapping(&'static str),
}

impl WholeFile {
    fn into_diagnostic(self, file: &Path, text: &str) -> Diagnostic {
        match self {
            WholeFile::Syntax(e) => {
                let (_, message) = split_serde_message(&e);
                let message = format!("invalid YAML: {message}");
                match e.location() {
                    Some(l) => Diagnostic::at(file, l.line(), l.column(), message),
                    None => Diagnostic::file(file, message),
                }
            }
            WholeFile::Empty => {
                Diagnostic::file(file, "keys file is empty: it has comments but no content")
            }
            WholeFile::NotAMapping(kind) => {
                let message = format!(
                    "keys file must be a mapping with `organisations`, `custom_scopes` and \
                     `keys`, but it is {kind}"
                );
                match PositionIndex::new(text).and_then(|ix| ix.locate("")) {
                    Some((line, col)) => Diagnostic::at(file, line, col, message),
                    None => Diagnostic::file(file, message),
                }
            }
        }
    }
}

/// The document as far as it could be read, entry by entry.
struct Lenient {
    /// Entries that failed are replaced by what could be salvaged (ids,
    /// hashes), so that indices stay those of the file and references to
    /// them (a key naming a workspace) still resolve.
    doc: KeysDocument,
    /// Paths of entries that failed: validation problems under them would
    /// only echo the failure.
    failed: Vec<String>,
}

impl Lenient {
    fn is_under_failed_entry(&self, path: &str) -> bool {
        self.failed.iter().any(|f| {
            path.strip_prefix(f.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "empty",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar's text, for salvaging ids from entries that failed.
fn scalar_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

/// Deserializes one entry. serde_yaml's `Value` deserializer knows no paths,
/// so on failure the entry is written out and read back as text, which
/// yields the path of the problem inside the entry.
fn entry<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, Found> {
    let first = match T::deserialize(value) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    match serde_yaml::to_string(value).map(|t| serde_yaml::from_str::<T>(&t)) {
        // As text it is fine (text keeps `123` a string where a `Value` has
        // made it a number): text is what the fast path reads.
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Found::from_serde(&e, path)),
        Err(_) => Err(Found::from_serde(&first, path)),
    }
}

/// A top-level field that must be a list; empty (`keys:`) counts as none.
fn list(value: Value, path: &str, found: &mut Vec<Found>) -> Vec<Value> {
    match value {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items,
        other => {
            found.push(Found {
                path: path.to_string(),
                locate: path.to_string(),
                anchor: Anchor::Value,
                message: format!("`{path}` must be a list, but it is {}", kind_of(&other)),
            });
            Vec::new()
        }
    }
}

/// Reads the document entry by entry, collecting problems in `found`.
fn read_leniently(text: &str, found: &mut Vec<Found>) -> Result<Lenient, WholeFile> {
    let root: Value = serde_yaml::from_str(text).map_err(WholeFile::Syntax)?;
    let map: Mapping = match root {
        Value::Mapping(m) => m,
        Value::Null => return Err(WholeFile::Empty),
        other => return Err(WholeFile::NotAMapping(kind_of(&other))),
    };
    let mut out = Lenient {
        doc: KeysDocument::default(),
        failed: Vec::new(),
    };
    const FIELDS: [&str; 4] = ["organisations", "custom_scopes", "keys", "model_prices"];
    for (name, value) in map {
        let name = match name {
            Value::String(s) => s,
            other => {
                found.push(Found {
                    path: String::new(),
                    locate: String::new(),
                    anchor: Anchor::Value,
                    message: format!(
                        "a top-level field name must be text, not {}",
                        kind_of(&other)
                    ),
                });
                continue;
            }
        };
        match name.as_str() {
            "organisations" => {
                for (o, v) in list(value, "organisations", found).into_iter().enumerate() {
                    let org = read_organisation(&v, o, &mut out, found);
                    out.doc.organisations.push(org);
                }
            }
            "custom_scopes" => {
                for (j, v) in list(value, "custom_scopes", found).into_iter().enumerate() {
                    let path = format!("custom_scopes[{j}]");
                    match entry::<String>(&v, &path) {
                        Ok(s) => out.doc.custom_scopes.push(s),
                        Err(f) => {
                            found.push(f);
                            out.failed.push(path);
                            out.doc.custom_scopes.push(String::new());
                        }
                    }
                }
            }
            "keys" => {
                for (i, v) in list(value, "keys", found).into_iter().enumerate() {
                    let path = format!("keys[{i}]");
                    match entry::<KeySpec>(&v, &path) {
                        Ok(k) => out.doc.keys.push(k),
                        Err(f) => {
                            found.push(f);
                            out.doc.keys.push(salvage_key(&v));
                            out.failed.push(path);
                        }
                    }
                }
            }
            "model_prices" => match entry::<ModelPrices>(&value, "model_prices") {
                Ok(prices) => out.doc.model_prices = prices,
                Err(f) => {
                    found.push(f);
                    out.failed.push("model_prices".to_string());
                    out.doc.model_prices = salvage_prices(&value);
                }
            },
            other => {
                let hint = nearest(other, FIELDS.iter().copied())
                    .map_or_else(String::new, |n| format!(" (did you mean `{n}`?)"));
                found.push(Found {
                    path: String::new(),
                    locate: other.to_string(),
                    anchor: Anchor::Key,
                    message: format!(
                        "unknown top-level field `{}`{hint}; the fields are `organisations`, \
                         `custom_scopes`, `keys` and `model_prices`",
                        super::build::shown(other)
                    ),
                });
            }
        }
    }
    Ok(out)
}

fn read_organisation(
    v: &Value,
    o: usize,
    out: &mut Lenient,
    found: &mut Vec<Found>,
) -> OrganisationSpec {
    let path = format!("organisations[{o}]");
    match entry::<OrganisationSpec>(v, &path) {
        Ok(org) => org,
        Err(f) => {
            found.push(f);
            out.failed.push(path);
            // Keep the workspaces: keys that name them must still resolve.
            let workspaces = v
                .get("workspaces")
                .and_then(Value::as_sequence)
                .map(|items| {
                    items
                        .iter()
                        .map(|w| {
                            entry::<WorkspaceSpec>(w, "").unwrap_or_else(|_| WorkspaceSpec {
                                id: scalar_text(w.get("id")),
                                slug: w.get("slug").map(|s| scalar_text(Some(s))),
                                ..WorkspaceSpec::default()
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            OrganisationSpec {
                id: scalar_text(v.get("id")),
                workspaces,
                ..OrganisationSpec::default()
            }
        }
    }
}

/// The patterns of a `model_prices` that could not be read, priced 0: so
/// that a `type: cost` usage limit does not also report missing prices.
fn salvage_prices(v: &Value) -> ModelPrices {
    let patterns = v.as_mapping().map(|m| {
        m.keys()
            .map(|k| (scalar_text(Some(k)), PriceSpec::default()))
            .collect()
    });
    ModelPrices(patterns.unwrap_or_default())
}

/// What uniqueness checks need from a key that could not be read: its id
/// and secret hashes.
fn salvage_key(v: &Value) -> KeySpec {
    let text = |field: &str| v.get(field).and_then(Value::as_str).map(str::to_string);
    let secrets = v.get("secrets").and_then(Value::as_sequence).map(|items| {
        items
            .iter()
            .filter_map(|s| s.get("sha256").and_then(Value::as_str))
            .map(|h| SecretSpec {
                sha256: h.to_string(),
                expires_at: None,
            })
            .collect()
    });
    KeySpec {
        id: scalar_text(v.get("id")),
        sha256: text("sha256"),
        secrets,
        ..KeySpec::default()
    }
}

/// Turns problems into diagnostics: positions from a [`PositionIndex`]
/// (built on first use), ids of the keys, workspaces and organisations
/// concerned in the messages, sorted by position.
struct Report<'a> {
    file: &'a Path,
    text: &'a str,
    doc: &'a KeysDocument,
    index: OnceCell<Option<PositionIndex>>,
}

impl<'a> Report<'a> {
    fn new(file: &'a Path, text: &'a str, doc: &'a KeysDocument) -> Report<'a> {
        Report {
            file,
            text,
            doc,
            index: OnceCell::new(),
        }
    }

    fn render(&self, found: Vec<Found>) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = found
            .into_iter()
            .map(|f| {
                let position = match f.anchor {
                    Anchor::At(line, col) => Some((line, col)),
                    Anchor::Value => self.index().and_then(|ix| ix.locate(&f.locate)),
                    Anchor::Key => self.index().and_then(|ix| ix.locate_key(&f.locate)),
                };
                Diagnostic {
                    file: self.file.to_path_buf(),
                    position,
                    message: self.describe(&f.path, &f.message),
                }
            })
            .collect();
        // Stable: problems at one position keep their order.
        out.sort_by_key(|d| d.position.unwrap_or((usize::MAX, usize::MAX)));
        out
    }

    fn index(&self) -> Option<&PositionIndex> {
        self.index
            .get_or_init(|| PositionIndex::new(self.text))
            .as_ref()
    }

    /// `keys[3] (key_bot): scopes[1]: unknown scope ...`.
    fn describe(&self, path: &str, message: &str) -> String {
        if path.is_empty() {
            return message.to_string();
        }
        let (entity, id, rest) = self.entity_of(path);
        let mut out = String::from(entity);
        if let Some(id) = id.filter(|id| is_valid_id(id)) {
            out.push_str(" (");
            out.push_str(id);
            out.push(')');
        }
        if !rest.is_empty() {
            out.push_str(": ");
            out.push_str(rest);
        }
        out.push_str(": ");
        out.push_str(message);
        out
    }

    /// Splits a path into the entry it is about (`keys[3]`), that entry's
    /// id, and the rest (`scopes[1]`).
    fn entity_of<'p>(&self, path: &'p str) -> (&'p str, Option<&'a str>, &'p str) {
        fn index_after(path: &str, prefix: &str) -> Option<(usize, usize)> {
            let rest = path.strip_prefix(prefix)?;
            let end = rest.find(']')?;
            Some((rest[..end].parse().ok()?, prefix.len() + end + 1))
        }
        let split = |end: usize| -> (&'p str, &'p str) {
            let rest = &path[end..];
            (&path[..end], rest.strip_prefix('.').unwrap_or(rest))
        };
        if let Some((i, end)) = index_after(path, "keys[") {
            let (entity, rest) = split(end);
            return (entity, self.doc.keys.get(i).map(|k| k.id.as_str()), rest);
        }
        if let Some((o, end)) = index_after(path, "organisations[") {
            let org = self.doc.organisations.get(o);
            if let Some((w, ws_end)) = index_after(&path[end..], ".workspaces[") {
                let (entity, rest) = split(end + ws_end);
                let ws = org.and_then(|org| org.workspaces.get(w));
                return (entity, ws.map(|w| w.id.as_str()), rest);
            }
            let (entity, rest) = split(end);
            return (entity, org.map(|org| org.id.as_str()), rest);
        }
        (path, None, "")
    }
}

#[cfg(test)]
mod tests;
