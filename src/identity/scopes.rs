//! The scope vocabulary (the reference on the scope vocabulary), which key type may hold which scope (4.3),
//! and compact scope sets so that a scope check is a few bit operations.
//!
//! Known scopes have fixed ids. Custom scopes (named by extra routes) are
//! appended by [`ScopeRegistry::with_custom`] once, when the route table is
//! built, so ids never change while the process runs and a keys reload can
//! never shift them under a compiled route.

use std::collections::HashMap;
use std::fmt;

/// The three key types of the Portkey model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// The admin key: organisation-wide.
    OrganisationService,
    /// A workspace-bound service key.
    WorkspaceService,
    /// A workspace-bound key that belongs to a user.
    WorkspaceUser,
}

impl KeyType {
    /// The name used in the keys file and in the `x-scopegate-key-type` header.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::OrganisationService => "organisation-service",
            KeyType::WorkspaceService => "workspace-service",
            KeyType::WorkspaceUser => "workspace-user",
        }
    }

    /// Parses the keys-file spelling.
    pub fn parse(s: &str) -> Option<KeyType> {
        match s {
            "organisation-service" => Some(KeyType::OrganisationService),
            "workspace-service" => Some(KeyType::WorkspaceService),
            "workspace-user" => Some(KeyType::WorkspaceUser),
            _ => None,
        }
    }

    /// Admin keys act across their organisation.
    pub fn is_admin(self) -> bool {
        self == KeyType::OrganisationService
    }

    /// All types, for gauges that must show zeros too.
    pub const ALL: [KeyType; 3] = [
        KeyType::OrganisationService,
        KeyType::WorkspaceService,
        KeyType::WorkspaceUser,
    ];
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may hold a scope (the reference on which key type may hold which scope).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Data-plane scopes: workspace keys only.
    WorkspaceKeys,
    /// Organisation-only scopes: admin keys only.
    AdminKeys,
    /// Service keys only (organisation-service, workspace-service).
    ServiceKeys,
    /// Any key type.
    Any,
}

impl Holder {
    /// Whether a key of type `t` may hold a scope with this holder rule.
    pub fn allows(self, t: KeyType) -> bool {
        match self {
            Holder::WorkspaceKeys => !t.is_admin(),
            Holder::AdminKeys => t.is_admin(),
            Holder::ServiceKeys => t != KeyType::WorkspaceUser,
            Holder::Any => true,
        }
    }

    /// Words for error messages: "only X keys may hold it".
    pub fn describe(self) -> &'static str {
        match self {
            Holder::WorkspaceKeys => "workspace keys (workspace-service, workspace-user)",
            Holder::AdminKeys => "admin keys (organisation-service)",
            Holder::ServiceKeys => "service keys (organisation-service, workspace-service)",
            Holder::Any => "any key",
        }
    }
}

const CRUDL: &[&str] = &["create", "read", "update", "delete", "list"];
const API_KEY_ACTIONS: &[&str] = &["create", "read", "update", "delete", "list", "rotate"];

/// Resources with their actions and holder rule, in the reference's order.
/// Per-action exceptions (`workspaces.delete` is admin-only) are applied in
/// [`builtin_scopes`].
const RESOURCES: &[(&str, &[&str], Holder)] = &[
    ("completions", &["write"], Holder::WorkspaceKeys),
    ("logs", &["write"], Holder::WorkspaceKeys),
    ("prompts", &["render"], Holder::WorkspaceKeys),
    ("logs", &["list", "view", "export"], Holder::Any),
    ("analytics", &["view"], Holder::Any),
    ("audit_logs", &["list"], Holder::AdminKeys),
    ("workspaces", CRUDL, Holder::Any),
    ("workspace_users", CRUDL, Holder::Any),
    ("organisation_users", CRUDL, Holder::AdminKeys),
    ("configs", CRUDL, Holder::Any),
    (
        "virtual_keys",
        &[
            "create",
            "read",
            "update",
            "delete",
            "list",
            "duplicate",
            "copy",
        ],
        Holder::Any,
    ),
    ("providers", CRUDL, Holder::Any),
    ("guardrails", CRUDL, Holder::Any),
    ("policies", CRUDL, Holder::Any),
    ("workspace_integrations", CRUDL, Holder::Any),
    ("mcp_servers", CRUDL, Holder::Any),
    (
        "prompts",
        &["create", "read", "update", "delete", "list", "publish"],
        Holder::Any,
    ),
    (
        "organisation_service_api_keys",
        API_KEY_ACTIONS,
        Holder::AdminKeys,
    ),
    (
        "workspace_service_api_keys",
        API_KEY_ACTIONS,
        Holder::ServiceKeys,
    ),
    (
        "workspace_user_api_keys",
        API_KEY_ACTIONS,
        Holder::ServiceKeys,
    ),
];

/// Every known scope with its holder rule, in a fixed order (the ids).
pub fn builtin_scopes() -> Vec<(String, Holder)> {
    let mut out = Vec::new();
    for (resource, actions, holder) in RESOURCES {
        for action in *actions {
            let name = format!("{resource}.{action}");
            let holder = if name == "workspaces.delete" {
                Holder::AdminKeys
            } else {
                *holder
            };
            out.push((name, holder));
        }
    }
    out
}

/// Most scopes a process can know (built-in plus custom).
pub const MAX_SCOPES: usize = 256;
const WORDS: usize = MAX_SCOPES / 64;

/// A dense scope id; fixed for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScopeId(u16);

impl ScopeId {
    /// The index into the registry.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A set of scopes as a bitset: the check on the request path is an AND.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet([u64; WORDS]);

impl ScopeSet {
    /// The empty set.
    pub const EMPTY: ScopeSet = ScopeSet([0; WORDS]);

    /// Adds one scope.
    pub fn insert(&mut self, id: ScopeId) {
        self.0[id.index() / 64] |= 1u64 << (id.index() % 64);
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: ScopeId) -> bool {
        self.0[id.index() / 64] & (1u64 << (id.index() % 64)) != 0
    }

    /// Whether the sets share at least one scope.
    pub fn intersects(&self, other: &ScopeSet) -> bool {
        self.0.iter().zip(other.0.iter()).any(|(a, b)| a & b != 0)
    }

    /// Whether every scope of `other` is in `self`.
    pub fn contains_all(&self, other: &ScopeSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & b == *b)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The ids in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = ScopeId> + '_ {
        (0..MAX_SCOPES)
            .map(|i| ScopeId(i as u16))
            .filter(|id| self.contains(*id))
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|i| i.0)).finish()
    }
}

/// A scope name that is not known; carries the nearest known name, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownScope {
    /// The name as written.
    pub name: String,
    /// The closest known scope, for "did you mean".
    pub nearest: Option<String>,
}

impl fmt::Display for UnknownScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown scope `{}`", self.name)?;
        if let Some(n) = &self.nearest {
            write!(f, " (did you mean `{n}`?)")?;
        }
        Ok(())
    }
}

/// Names ↔ ids for every scope this process knows.
#[derive(Clone, Debug)]
pub struct ScopeRegistry {
    names: Vec<String>,
    holders: Vec<Holder>,
    by_name: HashMap<String, ScopeId>,
    builtin_count: usize,
}

impl Default for ScopeRegistry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl ScopeRegistry {
    /// The vocabulary of the reference and nothing else.
    pub fn builtin() -> ScopeRegistry {
        let mut reg = ScopeRegistry {
            names: Vec::new(),
            holders: Vec::new(),
            by_name: HashMap::new(),
            builtin_count: 0,
        };
        for (name, holder) in builtin_scopes() {
            reg.push(name, holder);
        }
        reg.builtin_count = reg.names.len();
        reg
    }

    /// The vocabulary plus custom scope names (any key type may hold those).
    ///
    /// # Errors
    /// When the total would exceed [`MAX_SCOPES`].
    pub fn with_custom<I, S>(custom: I) -> Result<ScopeRegistry, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut reg = Self::builtin();
        for name in custom {
            let name = name.as_ref();
            if reg.by_name.contains_key(name) {
                continue;
            }
            if reg.names.len() >= MAX_SCOPES {
                return Err(format!(
                    "too many custom scopes: at most {} are supported",
                    MAX_SCOPES - reg.builtin_count
                ));
            }
            reg.push(name.to_string(), Holder::Any);
        }
        Ok(reg)
    }

    fn push(&mut self, name: String, holder: Holder) {
        let id = ScopeId(self.names.len() as u16);
        self.by_name.insert(name.clone(), id);
        self.names.push(name);
        self.holders.push(holder);
    }

    /// The id of a scope name, if known.
    pub fn id(&self, name: &str) -> Option<ScopeId> {
        self.by_name.get(name).copied()
    }

    /// The name of an id.
    pub fn name(&self, id: ScopeId) -> &str {
        &self.names[id.index()]
    }

    /// Who may hold the scope.
    pub fn holder(&self, id: ScopeId) -> Holder {
        self.holders[id.index()]
    }

    /// Whether the name is one of the reference's vocabulary (not custom).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.id(name)
            .is_some_and(|id| id.index() < self.builtin_count)
    }

    /// All ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = ScopeId> {
        (0..self.names.len()).map(|i| ScopeId(i as u16))
    }

    /// Names of every scope in a set, in id order.
    pub fn names_of(&self, set: &ScopeSet) -> Vec<&str> {
        set.iter().map(|id| self.name(id)).collect()
    }

    /// The known name closest to `name` (edit distance), when close enough to
    /// be a plausible typo.
    pub fn nearest(&self, name: &str, extra: &[&str]) -> Option<String> {
        let candidates = self
            .names
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied());
        let mut best: Option<(f64, &str)> = None;
        for c in candidates {
            let score = strsim::jaro_winkler(name, c);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, c));
            }
        }
        best.filter(|(s, _)| *s >= 0.75).map(|(_, c)| c.to_string())
    }

    /// Expands one scope as written in a keys file for a key of type `t`.
    ///
    /// `*` is every scope the type may hold; `R.*` every action of `R` the type
    /// may hold. `custom` names the keys file's `custom_scopes`: they are valid
    /// even when no route uses them (then they grant nothing here).
    ///
    /// # Errors
    /// Unknown names (with the nearest known one), a scope the type may not
    /// hold, or a wildcard that grants the type nothing.
    pub fn expand(
        &self,
        written: &str,
        t: KeyType,
        custom: &[&str],
    ) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::EMPTY;
        if written == "*" {
            for id in self.ids() {
                if self.holder(id).allows(t) {
                    set.insert(id);
                }
            }
            return Ok(set);
        }
        if let Some(resource) = written.strip_suffix(".*") {
            let prefix = format!("{resource}.");
            let mut any_known = false;
            for id in self.ids() {
                if self.name(id).starts_with(&prefix) {
                    any_known = true;
                    if self.holder(id).allows(t) {
                        set.insert(id);
                    }
                }
            }
            if !any_known {
                return Err(ScopeError::Unknown(UnknownScope {
                    name: written.to_string(),
                    nearest: self.nearest_resource(resource),
                }));
            }
            if set.is_empty() {
                return Err(ScopeError::NothingForType {
                    scope: written.to_string(),
                    key_type: t,
                });
            }
            return Ok(set);
        }
        match self.id(written) {
            Some(id) => {
                let holder = self.holder(id);
                if !holder.allows(t) {
                    return Err(ScopeError::NotForType {
                        scope: written.to_string(),
                        key_type: t,
                        holder,
                    });
                }
                set.insert(id);
                Ok(set)
            }
            None if custom.contains(&written) => Ok(set),
            None => Err(ScopeError::Unknown(UnknownScope {
                name: written.to_string(),
                nearest: self.nearest(written, custom),
            })),
        }
    }

    fn nearest_resource(&self, resource: &str) -> Option<String> {
        let mut resources: Vec<&str> = self
            .names
            .iter()
            .filter_map(|n| n.split_once('.').map(|(r, _)| r))
            .collect();
        resources.dedup();
        let mut best: Option<(f64, &str)> = None;
        for r in resources {
            let score = strsim::jaro_winkler(resource, r);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, r));
            }
        }
        best.filter(|(s, _)| *s >= 0.75)
            .map(|(_, r)| format!("{r}.*"))
    }
}

/// Why a written scope was refused for a key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not in the vocabulary nor in `custom_scopes`.
    #[error("{0}")]
    Unknown(UnknownScope),
    /// Known, but this key type may not hold it.
    #[error("scope `{scope}` is not allowed for a {key_type} key: only {} may hold it", holder.describe())]
    NotForType {
        /// The scope as written.
        scope: String,
        /// The key's type.
        key_type: KeyType,
        /// Who may hold it.
        holder: Holder,
    },
    /// A wildcard whose expansion for this type is empty.
    #[error("scope `{scope}` grants nothing to a {key_type} key")]
    NothingForType {
        /// The scope as written.
        scope: String,
        /// The key's type.
        key_type: KeyType,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_every_scope_of_the_spec() {
        let reg = ScopeRegistry::builtin();
        for name in [
            "completions.write",
            "logs.write",
            "prompts.render",
            "logs.list",
            "logs.view",
            "logs.export",
            "analytics.view",
            "audit_logs.list",
            "workspaces.delete",
            "virtual_keys.copy",
            "virtual_keys.duplicate",
            "prompts.publish",
            "workspace_user_api_keys.rotate",
            "mcp_servers.list",
        ] {
            assert!(reg.id(name).is_some(), "{name}");
        }
        assert_eq!(builtin_scopes().len(), 84);
    }

    #[test]
    fn holder_rules_follow_spec_4_3() {
        let reg = ScopeRegistry::builtin();
        let h = |n: &str| reg.holder(reg.id(n).expect("known"));
        assert_eq!(h("completions.write"), Holder::WorkspaceKeys);
        assert_eq!(h("workspaces.delete"), Holder::AdminKeys);
        assert_eq!(h("workspaces.create"), Holder::Any);
        assert_eq!(h("audit_logs.list"), Holder::AdminKeys);
        assert_eq!(h("organisation_users.list"), Holder::AdminKeys);
        assert_eq!(h("workspace_user_api_keys.create"), Holder::ServiceKeys);
        assert_eq!(h("logs.view"), Holder::Any);
    }

    #[test]
    fn wildcards_expand_per_type() {
        let reg = ScopeRegistry::builtin();
        let ws = reg
            .expand("workspaces.*", KeyType::WorkspaceService, &[])
            .expect("expands");
        assert!(!ws.contains(reg.id("workspaces.delete").expect("known")));
        assert!(ws.contains(reg.id("workspaces.read").expect("known")));
        let all_admin = reg
            .expand("*", KeyType::OrganisationService, &[])
            .expect("expands");
        assert!(!all_admin.contains(reg.id("completions.write").expect("known")));
        assert!(all_admin.contains(reg.id("audit_logs.list").expect("known")));
    }

    #[test]
    fn typo_names_nearest_scope() {
        let reg = ScopeRegistry::builtin();
        let err = reg
            .expand("completions.wirte", KeyType::WorkspaceService, &[])
            .expect_err("typo");
        assert_eq!(
            err.to_string(),
            "unknown scope `completions.wirte` (did you mean `completions.write`?)"
        );
        let err = reg
            .expand("workspace.*", KeyType::OrganisationService, &[])
            .expect_err("typo");
        assert!(
            err.to_string().contains("did you mean `workspaces.*`"),
            "{err}"
        );
    }

    #[test]
    fn type_rules_refuse_with_reason() {
        let reg = ScopeRegistry::builtin();
        let err = reg
            .expand("completions.write", KeyType::OrganisationService, &[])
            .expect_err("admin");
        assert!(err.to_string().contains("only workspace keys"), "{err}");
        let err = reg
            .expand("organisation_users.*", KeyType::WorkspaceUser, &[])
            .expect_err("nothing");
        assert!(matches!(err, ScopeError::NothingForType { .. }));
    }

    #[test]
    fn scope_set_any_and_all() {
        let mut a = ScopeSet::EMPTY;
        let mut b = ScopeSet::EMPTY;
        a.insert(ScopeId(3));
        a.insert(ScopeId(200));
        b.insert(ScopeId(200));
        assert!(a.intersects(&b));
        assert!(a.contains_all(&b));
        b.insert(ScopeId(4));
        assert!(!a.contains_all(&b));
    }
}
