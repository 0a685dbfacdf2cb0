//! The keys file as written (the reference on the keys file): plain serde data, unvalidated.
//!
//! The YAML loader is one producer of a [`KeysDocument`]; a program may also
//! fill one in code and build a [`super::Snapshot`] from it.
//!
//! Two fields need more than derived serde: `usage_limits` may be written as
//! one mapping or as a list (a list of more than one is a validation
//! problem, not a syntax error), and `model_prices` is a mapping whose order
//! matters (the first matching pattern wins), so it is kept as a list of
//! pairs.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole keys file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysDocument {
    /// Organisations and their workspaces.
    #[serde(default)]
    pub organisations: Vec<OrganisationSpec>,
    /// Scopes used only by extra routes.
    #[serde(default)]
    pub custom_scopes: Vec<String>,
    /// The keys.
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Prices per model pattern (the reference on models, tokens and budgets), in file order: the first pattern
    /// that matches a model prices it.
    #[serde(default, skip_serializing_if = "ModelPrices::is_empty")]
    pub model_prices: ModelPrices,
}

/// One organisation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSpec {
    /// Unique id.
    pub id: String,
    /// Its workspaces.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceSpec>,
    /// Identity tokens (JWTs) the organisation accepts besides keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_tokens: Option<IdentityTokensSpec>,
}

/// `identity_tokens` of an organisation as written: which JSON Web Tokens it
/// accepts, where their signing keys are, how claims map to a workspace,
/// scopes and a user, and the limits every subject gets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityTokensSpec {
    /// `iss` must equal it exactly; unique across organisations.
    pub issuer: String,
    /// `aud` (a string or an array) must contain it.
    pub audience: String,
    /// A JWK set on disk, relative to the keys file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// A JWK set fetched over HTTPS (HTTP only for a loopback host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM roots for `jwks_url` (a private CA), relative to the keys file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// How often `jwks_url` is fetched again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh_seconds: Option<u64>,
    /// Accepted `alg` values; default RS256, ES256, EdDSA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway_seconds: Option<u64>,
    /// What a token acts as: `workspace-user` (default) or `workspace-service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// Names of the claims read for the workspace, the scopes and the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<ClaimNamesSpec>,
    /// Optional cap on the scopes a token may hold (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes_allowed: Option<Vec<String>>,
    /// Subjects refused with 401 `revoked_api_key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_subjects: Vec<String>,
    /// Per subject: model allowlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Per subject: request and token rate limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Per subject: a budget (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limits: Option<UsageLimitsSpec>,
    /// Per subject: requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
}

/// `identity_tokens.claims`: claim names, each defaulting as shown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimNamesSpec {
    /// The claim naming the workspace (default `workspace_slug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The claim holding the scopes (default `scope`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    /// The claim naming the user of a workspace-user token (default `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One workspace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Canonical id.
    pub id: String,
    /// Optional alias accepted wherever an id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Model allowlist shared by all the workspace's keys (the reference on models, tokens and budgets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Request and token rate limits shared by all the workspace's keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// The workspace's budget (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limits: Option<UsageLimitsSpec>,
}

/// One key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Stable id: logs, metrics, upstream headers.
    pub id: String,
    /// Human name.
    #[serde(default)]
    pub name: String,
    /// `organisation-service`, `workspace-service` or `workspace-user`.
    #[serde(rename = "type")]
    pub key_type: String,
    /// May be omitted when there is one organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    /// Workspace keys: the workspace id or slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Required for workspace-user keys, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The secret's SHA-256 as 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Instead of `sha256`: several secrets, for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretSpec>>,
    /// Scopes, wildcards allowed.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// `active` (default), `revoked` or `exhausted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Request and token rate limits, all enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Model allowlist (the reference on models, tokens and budgets): patterns where `*` matches any run of
    /// characters; `None`: any model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Requests of this key in flight at once (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    /// The key's budget (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limits: Option<UsageLimitsSpec>,
}

/// One secret of a key under rotation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// 64 hex digits.
    pub sha256: String,
    /// End of this secret's transition window, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One rate limit as written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// `requests` or `tokens`.
    #[serde(rename = "type")]
    pub limit_type: String,
    /// `rps`, `rpm`, `rph` or `rpd`.
    pub unit: String,
    /// Requests or tokens per unit, at least 1.
    pub value: u64,
}

/// One usage limit as written (the reference on models, tokens and budgets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageLimitSpec {
    /// `tokens` or `cost`.
    #[serde(rename = "type")]
    pub limit_type: String,
    /// The budget: tokens, or US dollars; > 0.
    pub credit_limit: f64,
    /// Optional: usage at which an alert is raised; ≤ `credit_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_threshold: Option<f64>,
    /// `daily`, `weekly` or `monthly`; omitted: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset: Option<String>,
}

/// `usage_limits` as written: one mapping (the usual form) or a list of them.
/// A list may hold at most one; validation says so with a position.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum UsageLimitsSpec {
    /// `usage_limits: { type: ..., credit_limit: ... }`.
    One(UsageLimitSpec),
    /// `usage_limits: [ {...}, ... ]`.
    List(Vec<UsageLimitSpec>),
}

impl UsageLimitsSpec {
    /// The limits written, each with its path below `usage_limits`
    /// (`""` for the mapping form, `"[1]"` for list items).
    pub fn entries(&self) -> Vec<(String, &UsageLimitSpec)> {
        match self {
            UsageLimitsSpec::One(u) => vec![(String::new(), u)],
            UsageLimitsSpec::List(list) => list
                .iter()
                .enumerate()
                .map(|(j, u)| (format!("[{j}]"), u))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for UsageLimitsSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UsageLimitsSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a usage limit mapping (type, credit_limit, ...)")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                UsageLimitSpec::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(UsageLimitsSpec::One)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::<UsageLimitSpec>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(UsageLimitsSpec::List)
            }
        }
        d.deserialize_any(V)
    }
}

/// A model's price as written: US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// Per million input tokens.
    pub input: f64,
    /// Per million output tokens.
    pub output: f64,
    /// Per million input tokens read from a cache; default `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Per million input tokens written to a cache; default `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
}

/// `model_prices`: pattern → price, in file order (the first matching
/// pattern wins, so the order is kept). Duplicate patterns are kept too, for
/// validation to report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelPrices(pub Vec<(String, PriceSpec)>);

impl ModelPrices {
    /// Whether no price is given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ModelPrices {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (pattern, price) in &self.0 {
            map.serialize_entry(pattern, price)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ModelPrices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ModelPrices;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of model pattern to { input, output }")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((pattern, price)) = map.next_entry::<String, PriceSpec>()? {
                    out.push((pattern, price));
                }
                Ok(ModelPrices(out))
            }
        }
        d.deserialize_map(V)
    }
}
