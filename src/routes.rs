//! The route table (SPEC 4.1): methods + path pattern → plane + scopes.

use serde::Deserialize;

/// Which upstream a route goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// Completions upstream; workspace keys only.
    Data,
    /// Admin upstream.
    Control,
}

impl Plane {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Data => "data",
            Plane::Control => "control",
        }
    }
}

/// An extra route as written in the server config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// HTTP methods, upper case.
    pub methods: Vec<String>,
    /// Pattern; `{name}` matches one non-empty segment.
    pub path: String,
    /// `data` or `control`.
    pub plane: Plane,
    /// Any-of.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// All-of.
    #[serde(default)]
    pub scopes_all: Vec<String>,
}
