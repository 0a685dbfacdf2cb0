//! TEMPORARY STUB (replaced by the keys helper's implementation).
use super::{KeysDocument, Snapshot};
use crate::scopes::ScopeRegistry;

/// A problem in a keys document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path into the document.
    pub path: String,
    /// Message.
    pub message: String,
}

/// Stub.
pub fn build_snapshot(
    _doc: &KeysDocument,
    _registry: &ScopeRegistry,
    _previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Problem>> {
    Err(vec![])
}
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}
