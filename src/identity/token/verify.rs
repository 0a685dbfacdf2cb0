//! Verifying a token into an identity: pure, given the token, the time,
//! the keys snapshot (which organisation accepts which issuer, and how) and
//! the organisations' JWK sets.
//!
//! The checks run in a fixed order and the first failure answers, naming
//! its check and never quoting the token:
//!
//! 1. format: three base64url parts, header and payload JSON objects, no
//!    `crit` extensions;
//! 2. `iss` names an organisation that accepts tokens. The issuer is read
//!    from the payload before the signature is checked, only to choose
//!    whose keys verify it; the claims used afterwards are those the
//!    signature covers (the same bytes);
//! 3. `alg` is one the organisation lists; `none` and HMAC never are;
//! 4. that organisation's JWK set has been loaded (else *unavailable*,
//!    answered only after the checks that need no key: see below);
//! 5. `kid` names a key of the set (or is absent and the set holds one
//!    key), and that key is of the kind `alg` needs;
//! 6. the signature verifies (jsonwebtoken, on ring);
//! 7. `aud` contains the audience;
//! 8. `exp` is present and not past, `nbf` and `iat` not in the future,
//!    each within the leeway;
//! 9. the subject (the claim `claims.user` names, `sub` by default) is 1
//!    to 256 visible ASCII characters, and not revoked;
//! 10. the workspace claim names a workspace of the organisation.
//!
//! When the organisation's keys are not loaded yet, checks 7 to 9 still
//! run on the claims as sent: a token they refuse is refused for good (a
//! retry cannot help), so it gets its 401 rather than the 503 that says
//! "try again". Only a token that passes them is *unavailable*. The
//! workspace is not looked up for an unverified token.
//!
//! Scopes are then read, never refused: words that grant nothing
//! (`openid`) are ignored.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::claims::{self, Claims, NumericDate};
use super::jwks::{JwksSet, SetKey};
use super::shape::{self, MAX_TOKEN_BYTES};
use crate::identity::keys::tokens::is_valid_subject;
use crate::identity::keys::{
    Digest, OrgIdx, SigningAlg, Snapshot, TokenSettings, UnixMillis, WsIdx,
};
use crate::identity::scopes::{KeyType, ScopeSet};
use crate::limits::rate::RateLimit;
use crate::limits::Limits;

/// The JWK sets of the organisations that accept tokens.
pub trait KeySets {
    /// An organisation's set; `None` until one has been loaded or fetched.
    fn key_set(&self, org: OrgIdx) -> Option<&JwksSet>;
}

impl KeySets for HashMap<OrgIdx, Arc<JwksSet>> {
    fn key_set(&self, org: OrgIdx) -> Option<&JwksSet> {
        self.get(&org).map(|s| &**s)
    }
}

/// A check of a token, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Check {
    /// Three base64url parts with JSON header and payload.
    Format,
    /// `iss` is an organisation's issuer.
    Issuer,
    /// `alg` is accepted.
    Algorithm,
    /// The organisation's JWK set is loaded.
    Keys,
    /// `kid` names a key that can verify `alg`.
    KeyId,
    /// The signature verifies.
    Signature,
    /// `aud` contains the audience.
    Audience,
    /// `exp` is present and not past.
    Expiry,
    /// `nbf` is not in the future.
    NotBefore,
    /// `iat` is not in the future.
    IssuedAt,
    /// `sub` is a valid subject.
    Subject,
    /// The subject is not revoked.
    Revoked,
    /// The workspace claim names a workspace of the organisation.
    Workspace,
}

impl Check {
    /// Every check, in order.
    pub const ALL: [Check; 13] = [
        Check::Format,
        Check::Issuer,
        Check::Algorithm,
        Check::Keys,
        Check::KeyId,
        Check::Signature,
        Check::Audience,
        Check::Expiry,
        Check::NotBefore,
        Check::IssuedAt,
        Check::Subject,
        Check::Revoked,
        Check::Workspace,
    ];

    /// A short name: what an operator sees in messages and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::Issuer => "iss",
            Check::Keys => "jwks",
            Check::Algorithm => "alg",
            Check::KeyId => "kid",
            Check::Signature => "signature",
            Check::Audience => "aud",
            Check::Expiry => "exp",
            Check::NotBefore => "nbf",
            Check::IssuedAt => "iat",
            Check::Subject => "sub",
            Check::Revoked => "revoked",
            Check::Workspace => "workspace",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a refused token is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    /// 401 `invalid_api_key`.
    Invalid,
    /// 401 `expired_api_key`.
    Expired,
    /// 401 `revoked_api_key`.
    Revoked,
    /// 503 `identity_unavailable`: the issuer's keys are not loaded yet.
    Unavailable,
}

impl Failure {
    /// The `result` label of `scopegate_token_verifications_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Invalid => "invalid",
            Failure::Expired => "expired",
            Failure::Revoked => "revoked",
            Failure::Unavailable => "unavailable",
        }
    }

    /// The error code of the answer.
    pub fn code(self) -> &'static str {
        match self {
            Failure::Invalid => "invalid_api_key",
            Failure::Expired => "expired_api_key",
            Failure::Revoked => "revoked_api_key",
            Failure::Unavailable => "identity_unavailable",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        match self {
            Failure::Unavailable => 503,
            _ => 401,
        }
    }
}

/// Why a token was refused. The message names the check and never holds
/// any part of the token: it may go into an error body and a log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    /// The check that failed.
    pub check: Check,
    /// How to answer.
    pub failure: Failure,
    /// In words.
    pub message: Cow<'static, str>,
    /// The token's `kid` is not in the set: a fetched set may be stale, so
    /// the refresher may fetch it again (at most once per 10 s).
    pub unknown_kid: bool,
    /// The organisation, once the issuer was known.
    pub organisation: Option<OrgIdx>,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "identity token refused ({}): {}",
            self.check, self.message
        )
    }
}

impl std::error::Error for TokenError {}

/// What a verified token is: a workspace key without an entry of its own.
/// Two are equal when they name the same caller with the same grants,
/// verified under the same settings and keys.
#[derive(Clone, Debug)]
pub struct VerifiedIdentity {
    /// The organisation whose issuer signed it.
    pub organisation: OrgIdx,
    /// The workspace its claim names.
    pub workspace: WsIdx,
    /// The subject: the value of the claim `claims.user` names (`sub` by
    /// default). Its counters, logs and upstream headers are
    /// `token:<subject>`.
    pub subject: Arc<str>,
    /// `token:<subject>`: its id in logs, upstream headers and reports.
    pub key_id: Arc<str>,
    /// Its counters' id: `<organisation id>/<subject>` (scope
    /// [`Scope::Token`](crate::limits::Scope::Token)).
    pub counter_id: Arc<str>,
    /// What it acts as.
    pub key_type: KeyType,
    /// The user of a workspace-user token: the subject itself.
    pub user_id: Option<Arc<str>>,
    /// Its scopes, within what the organisation allows.
    pub scopes: ScopeSet,
    /// `exp`.
    pub expires_at: UnixMillis,
    /// `exp` plus the leeway: from then on it no longer verifies.
    pub valid_until: UnixMillis,
    /// The organisation's settings, with the per-subject limits.
    pub settings: Arc<TokenSettings>,
    /// The identity settings' fingerprint it was verified under
    /// ([`IdentityIndex::fingerprint`](crate::identity::keys::IdentityIndex::fingerprint)).
    pub fingerprint: Digest,
    /// The digest of the JWK set that verified it.
    pub keys_digest: Digest,
}

impl VerifiedIdentity {
    /// Whether this identity, verified before, still holds under `snap`
    /// and the key sets in force: the same identity settings (organisations,
    /// workspaces, revocations) and the same JWK set for its organisation.
    /// A reload that changes neither keeps cached identities.
    pub fn still_holds(&self, snap: &Snapshot, sets: &dyn KeySets) -> bool {
        *snap.identity().fingerprint() == self.fingerprint
            && sets
                .key_set(self.organisation)
                .is_some_and(|s| *s.digest() == self.keys_digest)
    }
}

impl PartialEq for VerifiedIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.counter_id == other.counter_id
            && self.workspace == other.workspace
            && self.key_type == other.key_type
            && self.scopes == other.scopes
            && self.expires_at == other.expires_at
            && self.fingerprint == other.fingerprint
            && self.keys_digest == other.keys_digest
    }
}

impl Eq for VerifiedIdentity {}

impl VerifiedIdentity {
    /// The id it is known by in logs and upstream headers:
    /// `token:<subject>`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Per-subject request rate limits.
    pub fn rate_limits(&self) -> &[RateLimit] {
        &self.settings.rate_limits
    }

    /// Per-subject models, token rates, usage limit and concurrency.
    pub fn limits(&self) -> &Limits {
        &self.settings.limits
    }
}

/// What became of a presented token: the identity it verified into (maybe
/// from the cache), or why it was refused.
pub type TokenOutcome = Result<Arc<VerifiedIdentity>, TokenError>;

/// The header members read.
#[derive(Deserialize)]
struct Header {
    alg: Value,
    #[serde(default)]
    kid: Option<Value>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// Records the checks a token passed, with what they saw (for
/// `inspect-token`); the request path records nothing.
pub(crate) trait Trace {
    fn passed(&mut self, check: Check, detail: &dyn Fn() -> String);
}

struct NoTrace;

impl Trace for NoTrace {
    #[inline]
    fn passed(&mut self, _: Check, _: &dyn Fn() -> String) {}
}

impl Trace for Vec<(Check, String)> {
    fn passed(&mut self, check: Check, detail: &dyn Fn() -> String) {
        self.push((check, detail()));
    }
}

/// Verifies a token at `now`.
///
/// # Errors
/// The first check that fails.
pub fn verify(
    token: &str,
    now: UnixMillis,
    snap: &Snapshot,
    sets: &dyn KeySets,
) -> Result<VerifiedIdentity, TokenError> {
    run(token, now, snap, sets, &mut NoTrace)
}

fn fail(check: Check, message: impl Into<Cow<'static, str>>) -> TokenError {
    TokenError {
        check,
        failure: Failure::Invalid,
        message: message.into(),
        unknown_kid: false,
        organisation: None,
    }
}

fn to_jwt(alg: SigningAlg) -> jsonwebtoken::Algorithm {
    use jsonwebtoken::Algorithm as A;
    match alg {
        SigningAlg::RS256 => A::RS256,
        SigningAlg::RS384 => A::RS384,
        SigningAlg::RS512 => A::RS512,
        SigningAlg::PS256 => A::PS256,
        SigningAlg::ES256 => A::ES256,
        SigningAlg::ES384 => A::ES384,
        SigningAlg::EdDSA => A::EdDSA,
    }
}

pub(crate) fn run(
    token: &str,
    now: UnixMillis,
    snap: &Snapshot,
    sets: &dyn KeySets,
    trace: &mut dyn Trace,
) -> Result<VerifiedIdentity, TokenError> {
    // 1. Format.
    let (parts, header, claims) = format(token, trace)?;
    // 2. Issuer: chooses the organisation, hence the keys.
    let o = issuer(&claims, snap, trace)?;
    let settings = o.settings;
    // 3. Algorithm: needs no key.
    let alg = algorithm(&header, &o, trace)?;
    // 4. The organisation's keys; without them, the checks that need no
    // key still answer first (a refusal a retry cannot change).
    let set = sets.key_set(o.org);
    if let Some(set) = set {
        trace.passed(Check::Keys, &|| format!("{} usable keys", set.len()));
        // 5. Key id.
        let key = signing_key(&header, set, alg, &o, trace)?;
        // 6. Signature.
        let verified = jsonwebtoken::crypto::verify(
            parts.signature,
            parts.signing_input.as_bytes(),
            &key.key,
            to_jwt(alg),
        )
        .unwrap_or(false);
        if !verified {
            return Err(o.fail(
                Check::Signature,
                "the token's signature does not verify".into(),
            ));
        }
        trace.passed(Check::Signature, &|| "verified".into());
    }
    // 7. Audience.
    if !claims::audience_contains(&claims, &settings.audience) {
        return Err(o.fail(
            Check::Audience,
            "the token's audience (aud) does not include this organisation's".into(),
        ));
    }
    trace.passed(Check::Audience, &|| {
        format!("contains {}", settings.audience)
    });
    // 8. Times.
    let (exp, valid_until) = times(&claims, now, &o, trace)?;
    // 9. Subject.
    let sub = subject(&claims, &o, trace)?;
    let Some(set) = set else {
        return Err(TokenError {
            failure: Failure::Unavailable,
            ..o.fail(
                Check::Keys,
                "the signing keys of the token's issuer have not been loaded yet".into(),
            )
        });
    };
    // 10. Workspace.
    let workspace = workspace(&claims, snap, &o, trace)?;
    let subject: Arc<str> = sub.into();
    let user_id = (settings.key_type == KeyType::WorkspaceUser).then(|| subject.clone());
    Ok(VerifiedIdentity {
        organisation: o.org,
        workspace,
        key_id: format!("token:{subject}").into(),
        counter_id: format!("{}/{subject}", snap.organisation(o.org).id).into(),
        subject,
        key_type: settings.key_type,
        user_id,
        scopes: scopes(&claims, settings),
        expires_at: exp,
        valid_until,
        settings: settings.clone(),
        fingerprint: *snap.identity().fingerprint(),
        keys_digest: *set.digest(),
    })
}

/// The organisation a token's issuer chose, for the checks after it: their
/// failures name it.
struct Org<'s> {
    org: OrgIdx,
    settings: &'s Arc<TokenSettings>,
}

impl Org<'_> {
    fn fail(&self, check: Check, message: Cow<'static, str>) -> TokenError {
        TokenError {
            organisation: Some(self.org),
            ..fail(check, message)
        }
    }
}

/// Check 1: three base64url parts, header and payload JSON objects, no
/// `crit`.
fn format<'t>(
    token: &'t str,
    trace: &mut dyn Trace,
) -> Result<(shape::Parts<'t>, Header, Claims), TokenError> {
    const FORMAT: &str = "a token is three base64url parts whose header and payload are JSON \
                          objects, the header with `alg`";
    if token.len() > MAX_TOKEN_BYTES {
        return Err(fail(
            Check::Format,
            format!("the token is longer than {} KiB", MAX_TOKEN_BYTES / 1024),
        ));
    }
    let parts = shape::split(token).ok_or_else(|| fail(Check::Format, FORMAT))?;
    let header: Header = shape::decode_part(parts.header)
        .and_then(|json| shape::object(&json))
        .ok_or_else(|| fail(Check::Format, FORMAT))?;
    let claims: Claims = shape::decode_part(parts.payload)
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| fail(Check::Format, FORMAT))?;
    if header.crit.is_some() {
        return Err(fail(
            Check::Format,
            "the header has `crit`: it names extensions scopegate does not implement",
        ));
    }
    trace.passed(Check::Format, &|| {
        "three parts; header and payload are JSON objects".into()
    });
    Ok((parts, header, claims))
}

/// Check 2: `iss` names an organisation that accepts tokens.
fn issuer<'s>(
    claims: &Claims,
    snap: &'s Snapshot,
    trace: &mut dyn Trace,
) -> Result<Org<'s>, TokenError> {
    let iss = claims::string(claims, "iss")
        .ok_or_else(|| fail(Check::Issuer, "the token has no issuer (iss)"))?;
    let settings = snap.identity().for_issuer(iss).ok_or_else(|| {
        fail(
            Check::Issuer,
            "the token's issuer (iss) is not one any organisation accepts",
        )
    })?;
    let org = settings.organisation;
    trace.passed(Check::Issuer, &|| {
        format!("{iss} → organisation {}", snap.organisation(org).id)
    });
    Ok(Org { org, settings })
}

/// Check 3: `alg` is one the organisation lists; `none` and HMAC never are.
fn algorithm(
    header: &Header,
    o: &Org<'_>,
    trace: &mut dyn Trace,
) -> Result<SigningAlg, TokenError> {
    let alg_name = header.alg.as_str().unwrap_or("");
    if alg_name.eq_ignore_ascii_case("none") || alg_name.starts_with("HS") {
        return Err(o.fail(
            Check::Algorithm,
            "unsigned (none) and shared-secret (HS256, HS384, HS512) tokens are never accepted"
                .into(),
        ));
    }
    let alg = SigningAlg::parse(alg_name)
        .filter(|a| o.settings.accepts(*a))
        .ok_or_else(|| {
            let list: Vec<&str> = o.settings.algorithms.iter().map(|a| a.as_str()).collect();
            o.fail(
                Check::Algorithm,
                format!(
                    "the token's alg is not one its organisation accepts ({})",
                    list.join(", ")
                )
                .into(),
            )
        })?;
    trace.passed(Check::Algorithm, &|| alg.to_string());
    Ok(alg)
}

/// Check 5: `kid` names a key of the set (or is absent and the set holds
/// one key), of the kind `alg` needs.
fn signing_key<'k>(
    header: &Header,
    set: &'k JwksSet,
    alg: SigningAlg,
    o: &Org<'_>,
    trace: &mut dyn Trace,
) -> Result<&'k SetKey, TokenError> {
    let key = match &header.kid {
        Some(Value::String(kid)) => set.find(kid).ok_or_else(|| TokenError {
            unknown_kid: true,
            ..o.fail(
                Check::KeyId,
                "the token's kid names no key of its issuer's key set".into(),
            )
        })?,
        Some(_) => return Err(o.fail(Check::KeyId, "the token's kid is not a string".into())),
        None => set.only().ok_or_else(|| {
            o.fail(
                Check::KeyId,
                format!(
                    "the token has no kid, and its issuer's key set holds {} keys",
                    set.len()
                )
                .into(),
            )
        })?,
    };
    if !key.kind.verifies(alg) || key.alg.is_some_and(|a| a != alg) {
        return Err(o.fail(
            Check::KeyId,
            format!(
                "the key the token names is a {} key that cannot verify {alg}",
                key.kind
            )
            .into(),
        ));
    }
    trace.passed(Check::KeyId, &|| match &key.kid {
        Some(kid) => format!("{kid} ({})", key.kind),
        None => format!("the set's only key ({})", key.kind),
    });
    Ok(key)
}

/// Check 8: `exp` present and not past, `nbf` and `iat` not in the future,
/// each within the leeway. Returns `exp` and the end of validity.
fn times(
    claims: &Claims,
    now: UnixMillis,
    o: &Org<'_>,
    trace: &mut dyn Trace,
) -> Result<(UnixMillis, UnixMillis), TokenError> {
    let leeway = i64::try_from(o.settings.leeway.as_millis()).unwrap_or(i64::MAX);
    let exp = match claims::numeric_date(claims, "exp") {
        NumericDate::Missing => {
            return Err(o.fail(Check::Expiry, "the token has no expiry (exp)".into()))
        }
        NumericDate::Invalid => return Err(o.fail(Check::Expiry, "exp is not a number".into())),
        NumericDate::At(exp) => exp,
    };
    let valid_until = exp.saturating_add(leeway);
    if now >= valid_until {
        return Err(TokenError {
            failure: Failure::Expired,
            ..o.fail(Check::Expiry, "the token has expired".into())
        });
    }
    trace.passed(Check::Expiry, &|| {
        format!("{} (in {} s)", exp / 1000, (exp - now).div_euclid(1000))
    });
    let latest = now.saturating_add(leeway);
    for (check, name, message) in [
        (Check::NotBefore, "nbf", "the token is not valid yet (nbf)"),
        (
            Check::IssuedAt,
            "iat",
            "the token was issued in the future (iat)",
        ),
    ] {
        match claims::numeric_date(claims, name) {
            NumericDate::Missing => trace.passed(check, &|| "absent".into()),
            NumericDate::Invalid => {
                return Err(o.fail(check, format!("{name} is not a number").into()))
            }
            NumericDate::At(t) if t > latest => return Err(o.fail(check, message.into())),
            NumericDate::At(t) => trace.passed(check, &|| format!("{}", t / 1000)),
        }
    }
    Ok((exp, valid_until))
}

/// Check 9: the subject (the claim `claims.user` names) is 1 to 256
/// visible ASCII characters, and not revoked.
fn subject<'c>(
    claims: &'c Claims,
    o: &Org<'_>,
    trace: &mut dyn Trace,
) -> Result<&'c str, TokenError> {
    let name = &o.settings.claims.user;
    let sub = claims::string(claims, name)
        .filter(|s| is_valid_subject(s))
        .ok_or_else(|| {
            o.fail(
                Check::Subject,
                format!(
                    "the token's subject (claim `{name}`) is missing or not 1 to 256 visible \
                     ASCII characters"
                )
                .into(),
            )
        })?;
    trace.passed(Check::Subject, &|| sub.to_string());
    if o.settings.revoked_subjects.contains(sub) {
        return Err(TokenError {
            failure: Failure::Revoked,
            ..o.fail(Check::Revoked, "the token's subject is revoked".into())
        });
    }
    trace.passed(Check::Revoked, &|| "not revoked".into());
    Ok(sub)
}

/// Check 10: the workspace claim names a workspace of the organisation.
fn workspace(
    claims: &Claims,
    snap: &Snapshot,
    o: &Org<'_>,
    trace: &mut dyn Trace,
) -> Result<WsIdx, TokenError> {
    let ws_claim = &o.settings.claims.workspace;
    let name = claims::workspace(claims, ws_claim)
        .ok()
        .flatten()
        .ok_or_else(|| {
            o.fail(
                Check::Workspace,
                format!(
                    "the token names no workspace (claim `{ws_claim}`, or `{}`)",
                    claims::WORKSPACE_FALLBACK
                )
                .into(),
            )
        })?;
    let workspace = snap
        .workspace_by_name(name)
        .filter(|w| snap.workspace(*w).organisation == o.org)
        .ok_or_else(|| {
            o.fail(
                Check::Workspace,
                format!(
                    "the workspace the token names is not one of organisation {}",
                    snap.organisation(o.org).id
                )
                .into(),
            )
        })?;
    trace.passed(Check::Workspace, &|| {
        snap.workspace(workspace).id.to_string()
    });
    Ok(workspace)
}

/// Scopes: what the words grant, within the organisation's cap.
fn scopes(claims: &Claims, settings: &TokenSettings) -> ScopeSet {
    let mut scopes = ScopeSet::EMPTY;
    for word in claims::scope_words(claims, &settings.claims.scopes) {
        if let Some(granted) = settings.scope_words.get(word) {
            for id in granted.iter() {
                scopes.insert(id);
            }
        }
    }
    scopes
}

#[cfg(test)]
mod tests;
