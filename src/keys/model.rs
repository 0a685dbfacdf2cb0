//! The keys file as written (SPEC 3): plain serde data, unvalidated.
//!
//! The YAML loader is one producer of a [`KeysDocument`]; a program may also
//! fill one in code and build a [`super::Snapshot`] from it.

use serde::{Deserialize, Serialize};

/// The whole keys file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// One organisation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganisationSpec {
    /// Unique id.
    pub id: String,
    /// Its workspaces.
    #[serde(default)]
    pub workspaces: Vec<WorkspaceSpec>,
}

/// One workspace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    /// Canonical id.
    pub id: String,
    /// Optional alias accepted wherever an id is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
}

/// One key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Request rate limits, all enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitSpec>,
}

/// One secret of a key under rotation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// 64 hex digits.
    pub sha256: String,
    /// End of this secret's transition window, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One rate limit as written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// `requests` (`tokens` is not supported yet).
    #[serde(rename = "type")]
    pub limit_type: String,
    /// `rps`, `rpm`, `rph` or `rpd`.
    pub unit: String,
    /// Requests per unit, at least 1.
    pub value: u64,
}
