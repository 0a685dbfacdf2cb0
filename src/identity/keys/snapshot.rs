//! An immutable, indexed view of one keys file: what the decision reads.
//!
//! A snapshot is built whole (and validated whole) off the request path and
//! then swapped in; requests hold an `Arc<Snapshot>` for their whole life.
//! Lookups are by the SHA-256 of the presented secret, which is already
//! uniformly random, so the hash map uses its first 8 bytes as the hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::tokens::IdentityIndex;
use crate::identity::scopes::{KeyType, ScopeSet};
use crate::limits::rate::RateLimit;
use crate::limits::{Limits, PriceTable};

/// Unix time in milliseconds; the decision takes "now" as input.
pub type UnixMillis = i64;

/// Wall-clock now, for the decision's `now` (expiry is wall-clock time).
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Index of a key in [`Snapshot::keys`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyIdx(pub u32);

/// Index of a workspace in [`Snapshot::workspaces`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WsIdx(pub u32);

/// Index of an organisation in [`Snapshot::organisations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OrgIdx(pub u32);

/// A key's status (the reference on the keys file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Refused everywhere with 401.
    Revoked,
    /// Refused on the data plane with 412.
    Exhausted,
}

impl KeyStatus {
    /// Parses the keys-file spelling.
    pub fn parse(s: &str) -> Option<KeyStatus> {
        match s {
            "active" => Some(KeyStatus::Active),
            "revoked" => Some(KeyStatus::Revoked),
            "exhausted" => Some(KeyStatus::Exhausted),
            _ => None,
        }
    }

    /// The keys-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Exhausted => "exhausted",
        }
    }
}

/// An organisation.
#[derive(Clone, Debug)]
pub struct Organisation {
    /// Its id.
    pub id: Arc<str>,
}

/// A workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Canonical id (what goes upstream and into metrics).
    pub id: Arc<str>,
    /// Optional alias.
    pub slug: Option<Arc<str>>,
    /// Owning organisation.
    pub organisation: OrgIdx,
    /// Request rate limits shared by all the workspace's keys (empty:
    /// unlimited).
    pub rate_limits: Vec<RateLimit>,
    /// spending limits shared by all its keys (`max_concurrent` is always
    /// `None`).
    pub limits: Limits,
}

impl Workspace {
    /// Models, token rates and usage limit of the workspace.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// A validated key.
#[derive(Clone, Debug)]
pub struct Key {
    /// Stable id.
    pub id: Arc<str>,
    /// Human name.
    pub name: Arc<str>,
    /// Type.
    pub key_type: KeyType,
    /// Owning organisation.
    pub organisation: OrgIdx,
    /// The workspace of a workspace key; `None` for admin keys.
    pub workspace: Option<WsIdx>,
    /// The user of a workspace-user key.
    pub user_id: Option<Arc<str>>,
    /// Scopes with wildcards expanded.
    pub scopes: ScopeSet,
    /// After this instant the key is refused (401 `expired_api_key`).
    pub expires_at: Option<UnixMillis>,
    /// Status.
    pub status: KeyStatus,
    /// The limits as configured (empty: unlimited).
    pub rate_limits: Vec<RateLimit>,
    /// spending limits: models, token rates, usage limit, concurrency.
    pub limits: Limits,
}

impl Key {
    /// Models, token rates, usage limit and concurrency of the key.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// Where a presented secret leads.
#[derive(Clone, Copy, Debug)]
pub struct SecretEntry {
    /// The key it belongs to.
    pub key: KeyIdx,
    /// End of this secret's rotation window.
    pub expires_at: Option<UnixMillis>,
}

/// Hashes a SHA-256 digest by taking its first 8 bytes: the input is already
/// uniformly distributed, so SipHash would only cost time.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its bytes in one call (arrays hash elements via
        // `Hash for [T; N]` → slice → `write` of the whole buffer for u8).
        let mut buf = [0u8; 8];
        let n = bytes.len().min(8);
        buf[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(buf);
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of a slice carries no information here.
    }
}

/// Map from secret digest to key.
pub type DigestMap = HashMap<Digest, SecretEntry, BuildHasherDefault<DigestHasher>>;

/// One loaded keys file (or an in-memory equivalent), indexed for lookup.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(crate) organisations: Vec<Organisation>,
    pub(crate) workspaces: Vec<Workspace>,
    /// Workspace id and slug → workspace.
    pub(crate) workspace_names: HashMap<Arc<str>, WsIdx>,
    pub(crate) keys: Vec<Key>,
    pub(crate) key_ids: HashMap<Arc<str>, KeyIdx>,
    pub(crate) secrets: DigestMap,
    pub(crate) custom_scopes: Vec<String>,
    /// `model_prices` in file order.
    pub(crate) model_prices: PriceTable,
    /// Organisations' `identity_tokens`, by issuer.
    pub(crate) identity: IdentityIndex,
    /// SHA-256 of the keys-file text this was built from; `None` when built
    /// in memory. The reloader compares the file against it.
    pub(crate) source_digest: Option<Digest>,
}

impl Snapshot {
    /// SHA-256 of the keys-file text this snapshot was parsed from.
    pub fn source_digest(&self) -> Option<&Digest> {
        self.source_digest.as_ref()
    }

    /// Finds the key for a secret's digest.
    pub fn lookup(&self, digest: &Digest) -> Option<(KeyIdx, &SecretEntry)> {
        self.secrets.get(digest).map(|e| (e.key, e))
    }

    /// A key by index.
    pub fn key(&self, idx: KeyIdx) -> &Key {
        &self.keys[idx.0 as usize]
    }

    /// A key by its id.
    pub fn key_by_id(&self, id: &str) -> Option<(KeyIdx, &Key)> {
        self.key_ids.get(id).map(|i| (*i, self.key(*i)))
    }

    /// A workspace by index.
    pub fn workspace(&self, idx: WsIdx) -> &Workspace {
        &self.workspaces[idx.0 as usize]
    }

    /// A workspace by its canonical id (not its slug).
    pub fn workspace_by_id(&self, id: &str) -> Option<(WsIdx, &Workspace)> {
        let idx = self.workspace_by_name(id)?;
        let ws = self.workspace(idx);
        (&*ws.id == id).then_some((idx, ws))
    }

    /// The limits a request with this key must pass: the key's, and its
    /// workspace's when it has one (the reference on models, tokens and budgets: every one of them applies).
    pub fn limits_for(&self, idx: KeyIdx) -> (&Limits, Option<&Limits>) {
        let key = self.key(idx);
        (
            &key.limits,
            key.workspace.map(|w| &self.workspace(w).limits),
        )
    }

    /// `model_prices` in file order: the first pattern that matches a model
    /// prices it.
    pub fn model_prices(&self) -> &PriceTable {
        &self.model_prices
    }

    /// Resolves a workspace id or slug.
    pub fn workspace_by_name(&self, name: &str) -> Option<WsIdx> {
        self.workspace_names.get(name).copied()
    }

    /// An organisation by index.
    pub fn organisation(&self, idx: OrgIdx) -> &Organisation {
        &self.organisations[idx.0 as usize]
    }

    /// The identity-token settings of the organisations that accept tokens.
    pub fn identity(&self) -> &IdentityIndex {
        &self.identity
    }

    /// All keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// All workspaces.
    pub fn workspaces(&self) -> &[Workspace] {
        &self.workspaces
    }

    /// All organisations.
    pub fn organisations(&self) -> &[Organisation] {
        &self.organisations
    }

    /// The keys file's `custom_scopes`.
    pub fn custom_scopes(&self) -> &[String] {
        &self.custom_scopes
    }

    /// Number of keys of each type, for the `scopegate_keys` gauge.
    pub fn count_by_type(&self, t: KeyType) -> usize {
        self.keys.iter().filter(|k| k.key_type == t).count()
    }
}
