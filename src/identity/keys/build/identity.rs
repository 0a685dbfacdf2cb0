//! Validation of an organisation's `identity_tokens` into
//! [`TokenSettings`]: issuer and audience, where the signing keys are,
//! algorithms, leeway, the key type tokens act as, claim names, the scope
//! cap, revoked subjects and the per-subject limits (checked by the same
//! code as a key's).
//!
//! Files named here (`jwks_file`, `ca_file`) are only checked for form;
//! reading them is I/O and belongs to the identity module's loader.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{did_you_mean, nearest, shown, spending, Problems};
use crate::identity::keys::model::{IdentityTokensSpec, KeysDocument};
use crate::identity::keys::snapshot::{Digest, OrgIdx};
use crate::identity::keys::tokens::{
    ClaimNames, IdentityIndex, JwksSource, SigningAlg, TokenSettings,
};
use crate::identity::scopes::{KeyType, ScopeError, ScopeRegistry, ScopeSet};

/// Default `jwks_refresh_seconds`.
pub(crate) const DEFAULT_REFRESH_SECONDS: u64 = 300;
/// Bounds of `jwks_refresh_seconds`: no faster than a token naming an
/// unknown `kid` may trigger a fetch, at least once a day.
const REFRESH_SECONDS: (u64, u64) = (10, 86_400);
/// Default `leeway_seconds`.
pub(crate) const DEFAULT_LEEWAY_SECONDS: u64 = 30;
/// Most `leeway_seconds`: more is no longer clock skew.
const MAX_LEEWAY_SECONDS: u64 = 600;
/// Longest issuer, audience or URL.
const MAX_TEXT_LEN: usize = 2048;
/// Longest claim name.
const MAX_CLAIM_NAME_LEN: usize = 256;
use crate::identity::keys::tokens::{is_valid_subject, MAX_SUBJECT_LEN};

/// Checks every organisation's `identity_tokens` and indexes them.
pub(super) fn build_identity(
    doc: &KeysDocument,
    registry: &ScopeRegistry,
    custom: &[&str],
    problems: &mut Problems,
) -> IdentityIndex {
    let mut index = IdentityIndex {
        by_org: vec![None; doc.organisations.len()],
        ..IdentityIndex::default()
    };
    let mut first_of_issuer: HashMap<&str, usize> = HashMap::new();
    for (o, org) in doc.organisations.iter().enumerate() {
        let Some(spec) = &org.identity_tokens else {
            continue;
        };
        let base = format!("organisations[{o}].identity_tokens");
        let checker = Checker {
            base: &base,
            doc,
            registry,
            custom,
        };
        let settings = checker.check(OrgIdx(o as u32), spec, problems);
        if !spec.issuer.is_empty() {
            if let Some(&first) = first_of_issuer.get(spec.issuer.as_str()) {
                problems.push(
                    format!("{base}.issuer"),
                    format!(
                        "issuer `{}` is also organisations[{first}]'s; an issuer's tokens \
                         must lead to one organisation",
                        shown(&spec.issuer)
                    ),
                );
                continue;
            }
            first_of_issuer.insert(&spec.issuer, o);
        }
        if let Some(settings) = settings {
            index
                .issuers
                .insert(settings.issuer.clone(), OrgIdx(o as u32));
            index.by_org[o] = Some(Arc::new(settings));
        }
    }
    if index.any() {
        index.fingerprint = fingerprint(doc);
    }
    index
}

/// SHA-256 of what decides a token's outcome besides the token and the JWK
/// set: the organisations (their workspaces and settings) and the custom
/// scopes.
fn fingerprint(doc: &KeysDocument) -> Digest {
    let text = serde_json::to_vec(&(&doc.organisations, &doc.custom_scopes)).unwrap_or_default();
    crate::identity::keys::digest(&text)
}

struct Checker<'a> {
    base: &'a str,
    doc: &'a KeysDocument,
    registry: &'a ScopeRegistry,
    custom: &'a [&'a str],
}

impl Checker<'_> {
    fn at(&self, field: &str) -> String {
        format!("{}.{field}", self.base)
    }

    /// The settings, or `None` when any problem was found.
    fn check(
        &self,
        org: OrgIdx,
        spec: &IdentityTokensSpec,
        problems: &mut Problems,
    ) -> Option<TokenSettings> {
        let before = problems.0.len();
        self.text("issuer", &spec.issuer, problems);
        self.text("audience", &spec.audience, problems);
        let jwks = self.jwks(spec, problems);
        let algorithms = self.algorithms(spec.algorithms.as_deref(), problems);
        let leeway = spec.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if leeway > MAX_LEEWAY_SECONDS {
            problems.push(
                self.at("leeway_seconds"),
                format!(
                    "leeway_seconds must be at most {MAX_LEEWAY_SECONDS}: it allows for clock \
                     skew, not for tokens past their lifetime"
                ),
            );
        }
        let key_type = self.key_type(spec.key_type.as_deref(), problems);
        let claims = self.claims(spec, problems);
        let (scope_words, allowed) =
            self.scopes(spec.scopes_allowed.as_deref(), key_type, problems);
        let revoked_subjects = self.revoked(&spec.revoked_subjects, problems);
        let written = spending::Written {
            models: spec.models.as_deref(),
            rate_limits: &spec.rate_limits,
            usage_limits: spec.usage_limits.as_ref(),
            max_concurrent_requests: spec.max_concurrent_requests,
        };
        let owner = spending::Owner {
            base: &|| self.base.to_string(),
            noun: "token subject",
        };
        let (rate_limits, limits) = spending::check_limits(
            &written,
            !self.doc.model_prices.is_empty(),
            &owner,
            problems,
        );
        if problems.0.len() > before {
            return None;
        }
        Some(TokenSettings {
            organisation: org,
            issuer: spec.issuer.as_str().into(),
            audience: spec.audience.as_str().into(),
            jwks: jwks?,
            algorithms,
            leeway: Duration::from_secs(leeway),
            key_type,
            claims,
            scope_words,
            allowed,
            revoked_subjects,
            rate_limits,
            limits,
        })
    }

    /// `issuer` and `audience`: compared exactly, so any non-empty text
    /// without control characters.
    fn text(&self, field: &str, value: &str, problems: &mut Problems) {
        if value.is_empty() {
            problems.push(self.at(field), format!("{field} must not be empty"));
        } else if value.len() > MAX_TEXT_LEN || value.chars().any(char::is_control) {
            problems.push(
                self.at(field),
                format!("{field} must be at most {MAX_TEXT_LEN} bytes without control characters"),
            );
        }
    }

    fn jwks(&self, spec: &IdentityTokensSpec, problems: &mut Problems) -> Option<JwksSource> {
        let refresh = spec.jwks_refresh_seconds;
        match (&spec.jwks_file, &spec.jwks_url) {
            (Some(_), Some(_)) => {
                problems.push(
                    self.at("jwks_url"),
                    "give either jwks_file or jwks_url, not both",
                );
                None
            }
            (None, None) => {
                problems.push(
                    self.base.to_string(),
                    "identity_tokens needs jwks_file (a JWK set next to the keys file) or \
                     jwks_url (where the identity provider publishes its keys)",
                );
                None
            }
            (Some(file), None) => {
                let mut ok = self.path("jwks_file", file, problems);
                if spec.ca_file.is_some() {
                    problems.push(
                        self.at("ca_file"),
                        "ca_file verifies the server of jwks_url; with jwks_file it has no use",
                    );
                    ok = false;
                }
                if refresh.is_some() {
                    problems.push(
                        self.at("jwks_refresh_seconds"),
                        "jwks_refresh_seconds is for jwks_url; a jwks_file is read again when \
                         the keys file is",
                    );
                    ok = false;
                }
                ok.then(|| JwksSource::File(PathBuf::from(file)))
            }
            (None, Some(url)) => {
                let mut ok = match check_jwks_url(url) {
                    Ok(false) if spec.ca_file.is_some() => {
                        problems.push(
                            self.at("ca_file"),
                            "ca_file verifies an https server; this jwks_url is http",
                        );
                        false
                    }
                    Ok(_) => true,
                    Err(m) => {
                        problems.push(self.at("jwks_url"), m);
                        false
                    }
                };
                if let Some(ca) = &spec.ca_file {
                    ok &= self.path("ca_file", ca, problems);
                }
                let seconds = refresh.unwrap_or(DEFAULT_REFRESH_SECONDS);
                if !(REFRESH_SECONDS.0..=REFRESH_SECONDS.1).contains(&seconds) {
                    problems.push(
                        self.at("jwks_refresh_seconds"),
                        format!(
                            "jwks_refresh_seconds must be from {} to {} (a day)",
                            REFRESH_SECONDS.0, REFRESH_SECONDS.1
                        ),
                    );
                    ok = false;
                }
                ok.then(|| JwksSource::Url {
                    url: url.as_str().into(),
                    ca_file: spec.ca_file.as_deref().map(PathBuf::from),
                    refresh: Duration::from_secs(seconds),
                })
            }
        }
    }

    fn path(&self, field: &str, value: &str, problems: &mut Problems) -> bool {
        let ok = !value.is_empty() && !value.chars().any(char::is_control);
        if !ok {
            problems.push(
                self.at(field),
                format!("{field} must be a file path (relative to the keys file, or absolute)"),
            );
        }
        ok
    }

    fn algorithms(&self, written: Option<&[String]>, problems: &mut Problems) -> Vec<SigningAlg> {
        let Some(written) = written else {
            return SigningAlg::DEFAULT.to_vec();
        };
        if written.is_empty() {
            problems.push(
                self.at("algorithms"),
                "algorithms is empty, which would refuse every token; omit it for the default \
                 (RS256, ES256, EdDSA)",
            );
        }
        let mut out: Vec<SigningAlg> = Vec::with_capacity(written.len());
        for (j, name) in written.iter().enumerate() {
            let at = || self.at(&format!("algorithms[{j}]"));
            match SigningAlg::parse(name) {
                Some(alg) if out.contains(&alg) => {
                    problems.push(at(), format!("{alg} is listed twice"));
                }
                Some(alg) => out.push(alg),
                None if name.eq_ignore_ascii_case("none") || name.starts_with("HS") => {
                    problems.push(
                        at(),
                        format!(
                            "`{}` is never accepted: unsigned tokens and tokens signed with a \
                             shared secret cannot be verified with an identity provider's \
                             public keys",
                            shown(name)
                        ),
                    );
                }
                None => {
                    let names = SigningAlg::ALL.map(SigningAlg::as_str);
                    problems.push(
                        at(),
                        format!(
                            "unknown algorithm `{}`{}; the algorithms are {}",
                            shown(name),
                            did_you_mean(nearest(name, names.iter().copied())),
                            names.join(", ")
                        ),
                    );
                }
            }
        }
        out
    }

    fn key_type(&self, written: Option<&str>, problems: &mut Problems) -> KeyType {
        match written {
            None => KeyType::WorkspaceUser,
            Some(s) => match KeyType::parse(s) {
                Some(t) if !t.is_admin() => t,
                Some(_) => {
                    problems.push(
                        self.at("key_type"),
                        "a token acts as a workspace key: key_type is `workspace-user` or \
                         `workspace-service`",
                    );
                    KeyType::WorkspaceUser
                }
                None => {
                    problems.push(
                        self.at("key_type"),
                        format!(
                            "unknown key_type `{}`; expected `workspace-user` (the default) or \
                             `workspace-service`",
                            shown(s)
                        ),
                    );
                    KeyType::WorkspaceUser
                }
            },
        }
    }

    fn claims(&self, spec: &IdentityTokensSpec, problems: &mut Problems) -> ClaimNames {
        let written = spec.claims.clone().unwrap_or_default();
        let mut name = |field: &str, value: Option<String>, default: &str| -> Arc<str> {
            let value = value.unwrap_or_else(|| default.to_string());
            if value.is_empty()
                || value.len() > MAX_CLAIM_NAME_LEN
                || value.chars().any(char::is_control)
            {
                problems.push(
                    self.at(&format!("claims.{field}")),
                    format!(
                        "claim name must be 1 to {MAX_CLAIM_NAME_LEN} bytes without control \
                         characters"
                    ),
                );
            }
            value.into()
        };
        ClaimNames {
            workspace: name("workspace", written.workspace, "workspace_slug"),
            scopes: name("scopes", written.scopes, "scope"),
            user: name("user", written.user, "sub"),
        }
    }

    /// The scope words a token may use and what each grants, and the most
    /// a token can hold.
    fn scopes(
        &self,
        cap: Option<&[String]>,
        key_type: KeyType,
        problems: &mut Problems,
    ) -> (HashMap<Box<str>, ScopeSet>, ScopeSet) {
        let registry = self.registry;
        let mut allowed = ScopeSet::EMPTY;
        match cap {
            None => {
                for id in registry.ids() {
                    if registry.holder(id).allows(key_type) {
                        allowed.insert(id);
                    }
                }
            }
            Some([]) => problems.push(
                self.at("scopes_allowed"),
                "scopes_allowed is empty, which would grant tokens nothing; omit it to allow \
                 every scope a token's key_type may hold",
            ),
            Some(list) => {
                for (j, written) in list.iter().enumerate() {
                    match registry.expand(written, key_type, self.custom) {
                        Ok(set) => set.iter().for_each(|id| allowed.insert(id)),
                        Err(e) => problems.push(
                            self.at(&format!("scopes_allowed[{j}]")),
                            scope_message(&e, key_type),
                        ),
                    }
                }
            }
        }
        let cut = |set: ScopeSet| {
            let mut out = ScopeSet::EMPTY;
            set.iter()
                .filter(|id| allowed.contains(*id))
                .for_each(|id| out.insert(id));
            out
        };
        let mut words: HashMap<Box<str>, ScopeSet> = HashMap::new();
        let mut resources: HashSet<&str> = HashSet::new();
        for id in registry.ids() {
            let name = registry.name(id);
            if let Some((resource, _)) = name.split_once('.') {
                resources.insert(resource);
            }
            let mut one = ScopeSet::EMPTY;
            one.insert(id);
            let granted = cut(one);
            if !granted.is_empty() {
                words.insert(name.into(), granted);
            }
        }
        for resource in resources {
            let wildcard = format!("{resource}.*");
            if let Ok(set) = registry.expand(&wildcard, key_type, self.custom) {
                let granted = cut(set);
                if !granted.is_empty() {
                    words.insert(wildcard.into(), granted);
                }
            }
        }
        if !allowed.is_empty() {
            words.insert("*".into(), allowed);
        }
        (words, allowed)
    }

    fn revoked(&self, written: &[String], problems: &mut Problems) -> HashSet<Box<str>> {
        let mut out = HashSet::with_capacity(written.len());
        for (j, s) in written.iter().enumerate() {
            if is_valid_subject(s) {
                out.insert(s.as_str().into());
            } else {
                problems.push(
                    self.at(&format!("revoked_subjects[{j}]")),
                    format!(
                        "a subject is 1 to {MAX_SUBJECT_LEN} visible ASCII characters; `{}` \
                         can never match one",
                        shown(s)
                    ),
                );
            }
        }
        out
    }
}

/// The message for a scope of `scopes_allowed` that is refused.
fn scope_message(e: &ScopeError, key_type: KeyType) -> String {
    match e {
        ScopeError::NotForType { .. } | ScopeError::NothingForType { .. } => {
            format!("{e}; tokens act as {key_type} keys (identity_tokens.key_type)")
        }
        ScopeError::Unknown(_) => e.to_string(),
    }
}

/// Checks a `jwks_url`: `https://host…`, or `http://` to a loopback host
/// (`localhost`, 127.0.0.0/8, `[::1]`). Returns whether it is https.
pub(crate) fn check_jwks_url(url: &str) -> Result<bool, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("jwks_url `{}` is not a URL", shown(url)))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "jwks_url `{}` must start with https:// (or http:// for a loopback host)",
                shown(url)
            ))
        }
    };
    let Some(authority) = uri.authority() else {
        return Err(format!("jwks_url `{}` names no host", shown(url)));
    };
    if authority.as_str().contains('@') {
        return Err("jwks_url must not carry a user name or password".to_string());
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("jwks_url `{}` names no host", shown(url)));
    }
    if !https && !is_loopback_host(host) {
        return Err(format!(
            "jwks_url `{}` is http: only a loopback host (localhost, 127.0.0.1, [::1]) may be \
             reached without TLS; signing keys fetched in the clear could be replaced on the way",
            shown(url)
        ));
    }
    Ok(https)
}

/// `localhost`, an address of 127.0.0.0/8, or `::1` (with or without
/// brackets).
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
