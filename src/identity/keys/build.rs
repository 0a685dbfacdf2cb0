//! Validation of a [`KeysDocument`] and construction of the indexed
//! [`Snapshot`] (the reference on the keys file, the scope vocabulary, which key type may hold which scope and live reload).
//!
//! This module owns every rule of the keys file that is about meaning rather
//! than syntax: unique ids, workspace references, secret hashes, scopes per
//! key type, rate limits, and the spending limits (models, token rates, usage
//! limits, concurrency, `model_prices`; those in `spending`). It reports
//! *every* problem it finds, each with a
//! path into the document (`keys[3].scopes[1]`), so that an operator fixes a
//! file in one round; the loader turns paths into `FILE:LINE:COL`.
//!
//! It runs on every reload of files with 100k keys, so the happy path avoids
//! per-key scans and formatting: uniqueness is checked with hash maps, scope
//! expansions are cached per (scope, key type), and paths are only formatted
//! when there is a problem to report.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::model::{KeySpec, KeysDocument};
use super::snapshot::{
    Digest, DigestMap, Key, KeyIdx, KeyStatus, OrgIdx, Organisation, SecretEntry, Snapshot,
    UnixMillis, Workspace, WsIdx,
};
use crate::identity::scopes::{KeyType, ScopeError, ScopeRegistry, ScopeSet};
use crate::limits::rate::RateLimit;
use crate::limits::Limits;

/// One problem in a keys document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a path into the document such as `keys[3].scopes[1]`,
    /// `organisations[0].workspaces[1].slug` or `custom_scopes[0]`; empty for
    /// the document as a whole. Field names are the keys file's (`type`, not
    /// `key_type`).
    pub path: String,
    /// What is wrong, in words an operator can act on. It never contains a
    /// secret hash (an operator may have pasted a secret there by mistake).
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The rule for ids and slugs, in words, for messages.
pub(crate) const ID_RULE: &str = "1 to 128 characters of letters, digits, `.`, `_`, `:` and `-` \
     (ids go into HTTP headers and metric labels)";

/// Longest id or slug.
const MAX_ID_LEN: usize = 128;

/// Longest `user_id`.
const MAX_USER_ID_LEN: usize = 256;

/// Whether `id` is safe as an HTTP header value and a Prometheus label value
/// without escaping: `[A-Za-z0-9._:-]{1,128}`.
pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks an id or slug; `what` names it ("key id").
fn check_id(what: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        Some(format!("{what} must not be empty"))
    } else if !is_valid_id(id) {
        Some(format!("{what} `{}` must be {ID_RULE}", shown(id)))
    } else {
        None
    }
}

/// A value from the file made safe to quote in a message: control characters
/// escaped, long values cut.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The closest of `candidates` to `name`, when close enough to be a typo.
pub(crate) fn nearest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.filter(|(s, _)| *s >= 0.8).map(|(_, c)| c)
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean `{s}`?)"))
}

/// Parses an RFC 3339 timestamp into unix milliseconds.
fn parse_time(s: &str) -> Result<UnixMillis, String> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as UnixMillis)
        .map_err(|_| {
            format!(
                "expires_at `{}` is not an RFC 3339 timestamp such as `2027-06-01T00:00:00Z`",
                shown(s)
            )
        })
}

/// Decodes a secret hash. The message never quotes the value: an operator
/// who pasted the secret itself instead of its hash must not see it echoed
/// into logs.
fn parse_digest(s: &str) -> Result<Digest, String> {
    const HOW: &str = "sha256 must be 64 hex digits: the SHA-256 of the secret, as \
                       `scopegate hash-key` prints it";
    if s.len() != 64 {
        return Err(format!(
            "{HOW}; this value has {} characters",
            s.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    // One table look-up per digit and one test per byte: a reload decodes
    // one of these per secret.
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let (hi, lo) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        bad |= hi | lo;
        *byte = hi << 4 | (lo & 0x0f);
    }
    if bad & NOT_HEX != 0 {
        return Err(format!(
            "{HOW}; this value has characters that are not hex digits"
        ));
    }
    Ok(out)
}

/// Marks a byte that is not a hex digit in [`NIBBLES`].
const NOT_HEX: u8 = 0x10;

/// Each byte's value as a hex digit (either case), or [`NOT_HEX`].
static NIBBLES: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Whether a custom scope looks like a built-in one: `resource.action` with
/// `[a-z0-9_]+` before the dot and `[A-Za-z0-9_]+` after it.
pub(crate) fn is_scope_shaped(s: &str) -> bool {
    let Some((resource, action)) = s.split_once('.') else {
        return false;
    };
    !resource.is_empty()
        && !action.is_empty()
        && resource
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && action
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Collects problems; paths are formatted by the caller only when needed.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: String, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }
}

/// Validates a keys document and builds its snapshot.
///
/// `registry` is the scope vocabulary in force (the route table's, which
/// includes the custom scopes that extra routes name). Rate and usage state
/// lives in the counter store (`state`), keyed by key id and limits, so a
/// reload neither refills nor empties a quota (the reference on live reload) without this knowing.
///
/// Workspace keys take their organisation from their workspace, so they may
/// omit `organisation_id` even when the file has several organisations (when
/// they give it, it must match). Admin keys may omit it only when the file has
/// exactly one organisation.
///
/// # Errors
/// Every problem in the document, each with its path; the snapshot is built
/// only when there are none.
pub fn build_snapshot(
    doc: &KeysDocument,
    registry: &ScopeRegistry,
) -> Result<Snapshot, Vec<Problem>> {
    let mut problems = Problems::default();
    let custom = check_custom_scopes(&doc.custom_scopes, registry, &mut problems);
    let model_prices = spending::check_model_prices(&doc.model_prices, &mut problems);
    let orgs = build_organisations(doc, &mut problems);
    let identity = identity::build_identity(doc, registry, &custom, &mut problems);
    let mut keys = KeysBuilder {
        doc,
        registry,
        custom: &custom,
        orgs: &orgs,
        problems: &mut problems,
        scope_cache: HashMap::new(),
        list_cache: HashMap::new(),
        workspace_suggestions: HashMap::new(),
        keys: Vec::with_capacity(doc.keys.len()),
        key_ids: HashMap::with_capacity(doc.keys.len()),
        secrets: DigestMap::with_capacity_and_hasher(doc.keys.len(), Default::default()),
    };
    for (i, spec) in doc.keys.iter().enumerate() {
        keys.add(i, spec);
    }
    let KeysBuilder {
        keys,
        key_ids,
        secrets,
        ..
    } = keys;
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    Ok(Snapshot {
        organisations: orgs.organisations,
        workspaces: orgs.workspaces,
        workspace_names: orgs.names,
        keys,
        key_ids,
        secrets,
        custom_scopes: doc.custom_scopes.clone(),
        model_prices,
        identity,
        source_digest: None,
    })
}

/// Checks `custom_scopes`; returns every non-empty entry (also invalid ones,
/// so that keys naming them do not get a second, misleading problem).
fn check_custom_scopes<'d>(
    custom: &'d [String],
    registry: &ScopeRegistry,
    problems: &mut Problems,
) -> Vec<&'d str> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(custom.len());
    let mut out = Vec::with_capacity(custom.len());
    for (j, s) in custom.iter().enumerate() {
        let path = || format!("custom_scopes[{j}]");
        if s.is_empty() {
            problems.push(path(), "custom scope must not be empty");
            continue;
        }
        if let Some(first) = seen.insert(s, j) {
            problems.push(
                path(),
                format!(
                    "duplicate custom scope `{}` (also custom_scopes[{first}])",
                    shown(s)
                ),
            );
            continue;
        }
        if registry.is_builtin(s) {
            problems.push(
                path(),
                format!(
                    "`{s}` is a built-in scope; custom_scopes lists only scopes that are not in \
                     the vocabulary"
                ),
            );
        } else if !is_scope_shaped(s) {
            problems.push(
                path(),
                format!(
                    "custom scope `{}` must look like `resource.action`: lower-case letters, \
                     digits and `_`, a dot, then letters, digits and `_`",
                    shown(s)
                ),
            );
        }
        out.push(s.as_str());
    }
    out
}

/// Organisations and workspaces, indexed.
struct Orgs {
    organisations: Vec<Organisation>,
    org_ids: HashMap<Arc<str>, OrgIdx>,
    workspaces: Vec<Workspace>,
    names: HashMap<Arc<str>, WsIdx>,
}

fn build_organisations(doc: &KeysDocument, problems: &mut Problems) -> Orgs {
    let (organisations, org_ids) = organisation_ids(doc, problems);
    // Workspace ids, then slugs: a slug may not repeat another slug nor be
    // another workspace's id, and the id check must see every id first.
    let (workspaces, ws_paths, ids) = build_workspaces(doc, problems);
    let names = workspace_names(&workspaces, &ws_paths, &ids, problems);
    Orgs {
        organisations,
        org_ids,
        workspaces,
        names,
    }
}

/// The organisations, with their ids checked and indexed.
fn organisation_ids(
    doc: &KeysDocument,
    problems: &mut Problems,
) -> (Vec<Organisation>, HashMap<Arc<str>, OrgIdx>) {
    let mut organisations = Vec::with_capacity(doc.organisations.len());
    let mut org_ids: HashMap<Arc<str>, OrgIdx> = HashMap::new();
    for (o, org) in doc.organisations.iter().enumerate() {
        if let Some(m) = check_id("organisation id", &org.id) {
            problems.push(format!("organisations[{o}].id"), m);
        }
        let id: Arc<str> = org.id.as_str().into();
        match org_ids.get(&id) {
            Some(first) if !org.id.is_empty() => problems.push(
                format!("organisations[{o}].id"),
                format!(
                    "duplicate organisation id `{}` (also organisations[{}])",
                    shown(&org.id),
                    first.0
                ),
            ),
            Some(_) => {}
            None => {
                org_ids.insert(id.clone(), OrgIdx(organisations.len() as u32));
            }
        }
        organisations.push(Organisation { id });
    }

    (organisations, org_ids)
}

/// Where each workspace is written: (organisation, workspace) indexes.
type WsPaths = Vec<(usize, usize)>;

/// Every organisation's workspaces, with their ids and limits checked; with
/// where each is written (organisation, workspace) and the index of each id.
fn build_workspaces<'d>(
    doc: &'d KeysDocument,
    problems: &mut Problems,
) -> (Vec<Workspace>, WsPaths, HashMap<&'d str, usize>) {
    let mut workspaces = Vec::new();
    let mut ws_paths: Vec<(usize, usize)> = Vec::new();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (o, org) in doc.organisations.iter().enumerate() {
        for (w, ws) in org.workspaces.iter().enumerate() {
            let k = workspaces.len();
            if let Some(m) = check_id("workspace id", &ws.id) {
                problems.push(format!("organisations[{o}].workspaces[{w}].id"), m);
            }
            if let Some(&first) = ids.get(ws.id.as_str()) {
                if !ws.id.is_empty() {
                    let (fo, fw) = ws_paths[first];
                    problems.push(
                        format!("organisations[{o}].workspaces[{w}].id"),
                        format!(
                            "duplicate workspace id `{}` (also organisations[{fo}].workspaces[{fw}])",
                            shown(&ws.id)
                        ),
                    );
                }
            } else {
                ids.insert(&ws.id, k);
            }
            ws_paths.push((o, w));
            let written = spending::Written {
                models: ws.models.as_deref(),
                rate_limits: &ws.rate_limits,
                usage_limits: ws.usage_limits.as_ref(),
                max_concurrent_requests: None,
            };
            let owner = spending::Owner {
                base: &|| format!("organisations[{o}].workspaces[{w}]"),
                noun: "workspace",
            };
            let (rate_limits, limits) =
                spending::check_limits(&written, !doc.model_prices.is_empty(), &owner, problems);
            workspaces.push(Workspace {
                id: ws.id.as_str().into(),
                slug: ws.slug.as_deref().map(Into::into),
                organisation: OrgIdx(o as u32),
                rate_limits,
                limits,
            });
        }
    }
    (workspaces, ws_paths, ids)
}

/// The names that lead to each workspace: its id, and its slug unless the
/// slug is malformed, repeated, or another workspace's id.
fn workspace_names(
    workspaces: &[Workspace],
    ws_paths: &[(usize, usize)],
    ids: &HashMap<&str, usize>,
    problems: &mut Problems,
) -> HashMap<Arc<str>, WsIdx> {
    let mut names: HashMap<Arc<str>, WsIdx> = HashMap::with_capacity(workspaces.len() * 2);
    for (k, ws) in workspaces.iter().enumerate() {
        names.entry(ws.id.clone()).or_insert(WsIdx(k as u32));
    }
    let mut slugs: HashMap<&str, usize> = HashMap::new();
    for (k, ws) in workspaces.iter().enumerate() {
        let Some(slug) = ws.slug.as_deref() else {
            continue;
        };
        let (o, w) = ws_paths[k];
        let path = || format!("organisations[{o}].workspaces[{w}].slug");
        if let Some(m) = check_id("workspace slug", slug) {
            problems.push(path(), m);
            continue;
        }
        if let Some(&first) = slugs.get(slug) {
            let (fo, fw) = ws_paths[first];
            problems.push(
                path(),
                format!(
                    "duplicate workspace slug `{slug}` (also organisations[{fo}].workspaces[{fw}])"
                ),
            );
            continue;
        }
        slugs.insert(slug, k);
        match ids.get(slug) {
            Some(&owner) if owner != k => {
                let (fo, fw) = ws_paths[owner];
                problems.push(
                    path(),
                    format!(
                        "workspace slug `{slug}` is the id of another workspace \
                         (organisations[{fo}].workspaces[{fw}]); a name must lead to one workspace"
                    ),
                );
            }
            Some(_) => {} // its own id: harmless
            None => {
                names.insert(slug.into(), WsIdx(k as u32));
            }
        }
    }
    names
}

/// Builds keys one by one; holds the indexes that uniqueness checks need.
struct KeysBuilder<'a> {
    doc: &'a KeysDocument,
    registry: &'a ScopeRegistry,
    custom: &'a [&'a str],
    orgs: &'a Orgs,
    problems: &'a mut Problems,
    /// Keys share few distinct scope lists: each (scope, type) is expanded
    /// once, and each valid (list, type) is united once, so a 100k-key file
    /// costs a hash lookup per key.
    scope_cache: HashMap<(&'a str, KeyType), Result<ScopeSet, ScopeError>>,
    list_cache: HashMap<(&'a [String], KeyType), ScopeSet>,
    /// "did you mean" for unknown workspaces, once per name (a typo is often
    /// copied into many keys, and the search is linear in workspaces).
    workspace_suggestions: HashMap<&'a str, Option<String>>,
    keys: Vec<Key>,
    key_ids: HashMap<Arc<str>, KeyIdx>,
    secrets: DigestMap,
}

impl<'a> KeysBuilder<'a> {
    fn add(&mut self, i: usize, spec: &'a KeySpec) {
        let idx = KeyIdx(self.keys.len() as u32);
        let at = |field: &str| format!("keys[{i}].{field}");

        if let Some(m) = check_id("key id", &spec.id) {
            self.problems.push(at("id"), m);
        } else if spec.id.starts_with("token:") {
            // `token:<subject>` names an identity token's subject in logs,
            // upstream headers and reports.
            self.problems.push(
                at("id"),
                format!(
                    "key id `{}` must not start with `token:`, which names identity tokens' subjects",
                    shown(&spec.id)
                ),
            );
        }
        let id: Arc<str> = spec.id.as_str().into();
        if let Some(first) = self.key_ids.get(&id) {
            if !spec.id.is_empty() {
                self.problems.push(
                    at("id"),
                    format!(
                        "duplicate key id `{}` (also keys[{}])",
                        shown(&spec.id),
                        first.0
                    ),
                );
            }
        } else {
            self.key_ids.insert(id.clone(), idx);
        }

        let key_type = KeyType::parse(&spec.key_type);
        if key_type.is_none() {
            self.problems.push(
                at("type"),
                format!(
                    "unknown key type `{}`; the types are `organisation-service` (admin key), \
                     `workspace-service` and `workspace-user`",
                    shown(&spec.key_type)
                ),
            );
        }

        let status = match spec.status.as_deref() {
            None => KeyStatus::Active,
            Some(s) => KeyStatus::parse(s).unwrap_or_else(|| {
                self.problems.push(
                    at("status"),
                    format!(
                        "unknown status `{}`; expected `active`, `revoked` or `exhausted`",
                        shown(s)
                    ),
                );
                KeyStatus::Active
            }),
        };

        let (organisation, workspace) = self.placement(i, spec, key_type);
        let user_id = self.user_id(i, spec, key_type);
        self.add_secrets(i, spec, idx);
        let scopes = match key_type {
            Some(t) => self.scopes(i, spec, t),
            None => ScopeSet::EMPTY,
        };
        let expires_at = spec.expires_at.as_deref().and_then(|s| {
            parse_time(s)
                .map_err(|m| self.problems.push(at("expires_at"), m))
                .ok()
        });
        let (rate_limits, limits) = self.limits(i, spec);

        self.keys.push(Key {
            id,
            name: spec.name.as_str().into(),
            key_type: key_type.unwrap_or(KeyType::WorkspaceService),
            organisation,
            workspace,
            user_id,
            scopes,
            expires_at,
            status,
            rate_limits,
            limits,
        });
    }

    /// The key's organisation and workspace.
    fn placement(
        &mut self,
        i: usize,
        spec: &'a KeySpec,
        key_type: Option<KeyType>,
    ) -> (OrgIdx, Option<WsIdx>) {
        let orgs = self.orgs;
        let given_org = spec.organisation_id.as_deref().and_then(|o| {
            let found = orgs.org_ids.get(o).copied();
            if found.is_none() {
                let hint = nearest(o, orgs.organisations.iter().map(|x| &*x.id));
                self.problems.push(
                    format!("keys[{i}].organisation_id"),
                    format!("unknown organisation `{}`{}", shown(o), did_you_mean(hint)),
                );
            }
            found
        });
        let Some(key_type) = key_type else {
            return (given_org.unwrap_or(OrgIdx(0)), None);
        };
        if key_type.is_admin() {
            if spec.workspace_id.is_some() {
                self.problems.push(
                    format!("keys[{i}].workspace_id"),
                    "an organisation-service (admin) key must not have a workspace_id: admin \
                     keys act across their whole organisation",
                );
            }
            let org = match (given_org, spec.organisation_id.is_some()) {
                (Some(o), _) => o,
                (None, true) => OrgIdx(0), // unknown: already reported
                (None, false) => self.default_org(i),
            };
            return (org, None);
        }
        let Some(name) = spec.workspace_id.as_deref() else {
            self.problems.push(
                format!("keys[{i}]"),
                format!("a {key_type} key needs workspace_id: the id or slug of its workspace"),
            );
            return (given_org.unwrap_or(OrgIdx(0)), None);
        };
        let Some(ws) = orgs.names.get(name).copied() else {
            let hint = self
                .workspace_suggestions
                .entry(name)
                .or_insert_with(|| {
                    // File order, so that ties always suggest the same name.
                    let names = orgs
                        .workspaces
                        .iter()
                        .flat_map(|w| std::iter::once(&*w.id).chain(w.slug.as_deref()));
                    nearest(name, names).map(str::to_string)
                })
                .clone();
            self.problems.push(
                format!("keys[{i}].workspace_id"),
                format!(
                    "unknown workspace `{}`{}",
                    shown(name),
                    did_you_mean(hint.as_deref())
                ),
            );
            return (given_org.unwrap_or(OrgIdx(0)), None);
        };
        let ws_org = orgs.workspaces[ws.0 as usize].organisation;
        if let Some(o) = given_org {
            if o != ws_org {
                self.problems.push(
                    format!("keys[{i}].organisation_id"),
                    format!(
                        "workspace `{}` belongs to organisation `{}`, not `{}`",
                        shown(name),
                        orgs.organisations[ws_org.0 as usize].id,
                        orgs.organisations[o.0 as usize].id
                    ),
                );
            }
        }
        (ws_org, Some(ws))
    }

    /// The organisation of an admin key that does not name one.
    fn default_org(&mut self, i: usize) -> OrgIdx {
        match self.orgs.organisations.len() {
            1 => OrgIdx(0),
            0 => {
                self.problems.push(
                    format!("keys[{i}]"),
                    "the file defines no organisations; add one under `organisations`",
                );
                OrgIdx(0)
            }
            n => {
                self.problems.push(
                    format!("keys[{i}]"),
                    format!(
                        "an organisation-service key needs organisation_id when the file \
                         defines {n} organisations"
                    ),
                );
                OrgIdx(0)
            }
        }
    }

    fn user_id(&mut self, i: usize, spec: &KeySpec, key_type: Option<KeyType>) -> Option<Arc<str>> {
        match (key_type, spec.user_id.as_deref()) {
            (Some(KeyType::WorkspaceUser), None) => {
                self.problems.push(
                    format!("keys[{i}]"),
                    "a workspace-user key needs user_id: the user it belongs to",
                );
                None
            }
            (Some(KeyType::WorkspaceUser), Some(u)) => {
                let ok = !u.is_empty()
                    && u.len() <= MAX_USER_ID_LEN
                    && u.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    self.problems.push(
                        format!("keys[{i}].user_id"),
                        format!(
                            "user_id `{}` must be 1 to {MAX_USER_ID_LEN} visible ASCII characters \
                             without spaces (it is sent upstream in x-scopegate-user-id)",
                            shown(u)
                        ),
                    );
                }
                Some(u.into())
            }
            (Some(t), Some(_)) => {
                self.problems.push(
                    format!("keys[{i}].user_id"),
                    format!("user_id is only for workspace-user keys; a {t} key must not have one"),
                );
                None
            }
            (_, _) => None,
        }
    }

    fn add_secrets(&mut self, i: usize, spec: &KeySpec, idx: KeyIdx) {
        match (&spec.sha256, &spec.secrets) {
            (Some(_), Some(_)) => self.problems.push(
                format!("keys[{i}].secrets"),
                "give either `sha256` or `secrets`, not both",
            ),
            (Some(hash), None) => {
                self.add_secret(hash, None, idx, || format!("keys[{i}].sha256"));
            }
            (None, Some(list)) if !list.is_empty() => {
                for (j, secret) in list.iter().enumerate() {
                    let expires_at = secret.expires_at.as_deref().and_then(|s| {
                        parse_time(s)
                            .map_err(|m| {
                                self.problems
                                    .push(format!("keys[{i}].secrets[{j}].expires_at"), m)
                            })
                            .ok()
                    });
                    self.add_secret(&secret.sha256, expires_at, idx, || {
                        format!("keys[{i}].secrets[{j}].sha256")
                    });
                }
            }
            (None, Some(_)) => self.problems.push(
                format!("keys[{i}].secrets"),
                "`secrets` is empty; a key needs at least one secret hash",
            ),
            (None, None) => self.problems.push(
                format!("keys[{i}]"),
                "a key needs `sha256` (the SHA-256 of its secret) or a non-empty `secrets` list",
            ),
        }
    }

    fn add_secret(
        &mut self,
        hash: &str,
        expires_at: Option<UnixMillis>,
        idx: KeyIdx,
        path: impl Fn() -> String,
    ) {
        let digest = match parse_digest(hash) {
            Ok(d) => d,
            Err(m) => {
                self.problems.push(path(), m);
                return;
            }
        };
        let entry = SecretEntry {
            key: idx,
            expires_at,
        };
        if let Some(first) = self.secrets.get(&digest) {
            let message = if first.key == idx {
                "this hash appears twice in this key's secrets".to_string()
            } else {
                let other = first.key.0 as usize;
                let other_id = self.doc.keys.get(other).map_or("", |k| k.id.as_str());
                format!(
                    "this hash is also the secret of keys[{other}] (`{}`); every secret must be \
                     unique across the file",
                    shown(other_id)
                )
            };
            self.problems.push(path(), message);
            return;
        }
        self.secrets.insert(digest, entry);
    }

    fn scopes(&mut self, i: usize, spec: &'a KeySpec, t: KeyType) -> ScopeSet {
        if spec.scopes.is_empty() {
            self.problems.push(
                format!("keys[{i}].scopes"),
                "every key needs at least one scope",
            );
            return ScopeSet::EMPTY;
        }
        if let Some(set) = self.list_cache.get(&(spec.scopes.as_slice(), t)) {
            return *set;
        }
        let mut all = ScopeSet::EMPTY;
        let mut valid = true;
        for (j, written) in spec.scopes.iter().enumerate() {
            let registry = self.registry;
            let custom = self.custom;
            let expanded = self
                .scope_cache
                .entry((written.as_str(), t))
                .or_insert_with(|| registry.expand(written, t, custom));
            match expanded {
                Ok(set) => {
                    for id in set.iter() {
                        all.insert(id);
                    }
                }
                Err(e) => {
                    valid = false;
                    let message = e.to_string();
                    self.problems
                        .push(format!("keys[{i}].scopes[{j}]"), message);
                }
            }
        }
        if valid {
            self.list_cache.insert((spec.scopes.as_slice(), t), all);
        }
        all
    }

    /// The key's request rate limits and spending limits.
    fn limits(&mut self, i: usize, spec: &KeySpec) -> (Vec<RateLimit>, Limits) {
        let written = spending::Written {
            models: spec.models.as_deref(),
            rate_limits: &spec.rate_limits,
            usage_limits: spec.usage_limits.as_ref(),
            max_concurrent_requests: spec.max_concurrent_requests,
        };
        let owner = spending::Owner {
            base: &|| format!("keys[{i}]"),
            noun: "key",
        };
        spending::check_limits(
            &written,
            !self.doc.model_prices.is_empty(),
            &owner,
            self.problems,
        )
    }
}

pub(crate) mod identity;
mod spending;

#[cfg(test)]
mod tests;
