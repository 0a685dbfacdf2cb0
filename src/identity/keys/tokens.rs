//! An organisation's identity-token settings, validated: plain data the
//! token verifier (`crate::identity`) reads. No I/O and no cryptography
//! here; the keys file only says which tokens are accepted and what they
//! grant.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::snapshot::{Digest, OrgIdx};
use crate::identity::scopes::{KeyType, ScopeSet};
use crate::limits::rate::RateLimit;
use crate::limits::Limits;

/// Longest subject (and user) a token may name.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Whether `s` is a valid subject or user: 1 to 256 visible ASCII
/// characters (it goes into upstream headers and counter names).
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBJECT_LEN && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A signature algorithm an organisation may accept. `none` and the HMAC
/// algorithms are not among them: a proxy that verifies with public keys
/// must never accept a token signed with a shared secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl SigningAlg {
    /// Every algorithm that may be listed.
    pub const ALL: [SigningAlg; 7] = [
        SigningAlg::RS256,
        SigningAlg::RS384,
        SigningAlg::RS512,
        SigningAlg::PS256,
        SigningAlg::ES256,
        SigningAlg::ES384,
        SigningAlg::EdDSA,
    ];

    /// What is accepted when `algorithms` is not given.
    pub const DEFAULT: [SigningAlg; 3] = [SigningAlg::RS256, SigningAlg::ES256, SigningAlg::EdDSA];

    /// The JOSE name (`alg`).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::RS384 => "RS384",
            SigningAlg::RS512 => "RS512",
            SigningAlg::PS256 => "PS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::ES384 => "ES384",
            SigningAlg::EdDSA => "EdDSA",
        }
    }

    /// Parses a JOSE name; `None` for anything not in [`SigningAlg::ALL`].
    pub fn parse(s: &str) -> Option<SigningAlg> {
        SigningAlg::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an organisation's signing keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWK set on disk: as written, then (once loaded from a file)
    /// resolved against the keys file's folder.
    File(PathBuf),
    /// A JWK set fetched over the network.
    Url {
        /// `https://…`, or `http://` to a loopback host.
        url: Arc<str>,
        /// PEM roots to verify the server with, instead of the system's.
        ca_file: Option<PathBuf>,
        /// How often the set is fetched again.
        refresh: Duration,
    },
}

/// The claim names a token is read with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    /// The workspace claim (default `workspace_slug`).
    pub workspace: Arc<str>,
    /// The scopes claim (default `scope`).
    pub scopes: Arc<str>,
    /// The user claim (default `sub`).
    pub user: Arc<str>,
}

/// One organisation's `identity_tokens`, validated.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// The organisation.
    pub organisation: OrgIdx,
    /// `iss` must equal it.
    pub issuer: Arc<str>,
    /// `aud` must contain it.
    pub audience: Arc<str>,
    /// Where the signing keys are.
    pub jwks: JwksSource,
    /// Accepted algorithms, in the order written.
    pub algorithms: Vec<SigningAlg>,
    /// Clock skew allowed for `exp`, `nbf`, `iat`.
    pub leeway: Duration,
    /// What a token acts as (a workspace key type).
    pub key_type: KeyType,
    /// Claim names.
    pub claims: ClaimNames,
    /// Every scope word a token may carry that grants something, mapped to
    /// what it grants: known scopes, `R.*` and `*`, already cut down to what
    /// `key_type` may hold and to `scopes_allowed`. Words not in the map
    /// (`openid`, `email`, …) grant nothing.
    pub scope_words: HashMap<Box<str>, ScopeSet>,
    /// The most a token can hold.
    pub allowed: ScopeSet,
    /// Subjects refused as revoked.
    pub revoked_subjects: HashSet<Box<str>>,
    /// Per-subject request rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Per-subject models, token rates, usage limit and concurrency.
    pub limits: Limits,
}

impl TokenSettings {
    /// Whether `alg` is accepted.
    pub fn accepts(&self, alg: SigningAlg) -> bool {
        self.algorithms.contains(&alg)
    }
}

/// The identity-token settings of a whole keys file.
#[derive(Clone, Debug, Default)]
pub struct IdentityIndex {
    /// Issuer → the organisation that accepts its tokens.
    pub(crate) issuers: HashMap<Arc<str>, OrgIdx>,
    /// Per organisation (by index), its settings.
    pub(crate) by_org: Vec<Option<Arc<TokenSettings>>>,
    /// SHA-256 over everything that decides a token's outcome (settings,
    /// organisations and their workspaces): when a reload leaves it
    /// unchanged, identities verified before still hold.
    pub(crate) fingerprint: Digest,
}

impl IdentityIndex {
    /// Whether any organisation accepts tokens (only then are credentials
    /// looked at as tokens).
    pub fn any(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// The settings of the organisation whose issuer is `iss`.
    pub fn for_issuer(&self, iss: &str) -> Option<&Arc<TokenSettings>> {
        let org = self.issuers.get(iss)?;
        self.for_org(*org)
    }

    /// An organisation's settings.
    pub fn for_org(&self, org: OrgIdx) -> Option<&Arc<TokenSettings>> {
        self.by_org.get(org.0 as usize).and_then(Option::as_ref)
    }

    /// Every organisation's settings.
    pub fn all(&self) -> impl Iterator<Item = &Arc<TokenSettings>> {
        self.by_org.iter().flatten()
    }

    /// Makes the relative paths of `jwks_file` and `ca_file` relative to
    /// `dir`, the keys file's folder.
    pub(crate) fn resolve_relative_to(&mut self, dir: &Path) {
        for settings in self.by_org.iter_mut().flatten() {
            let s = Arc::make_mut(settings);
            match &mut s.jwks {
                JwksSource::File(path) => *path = dir.join(&*path),
                JwksSource::Url {
                    ca_file: Some(path),
                    ..
                } => *path = dir.join(&*path),
                JwksSource::Url { ca_file: None, .. } => {}
            }
        }
    }

    /// See the field: changes whenever the outcome of some token may.
    pub fn fingerprint(&self) -> &Digest {
        &self.fingerprint
    }
}
