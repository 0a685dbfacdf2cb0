//! TEMPORARY STUB.
use super::Snapshot;
use crate::diag::Diagnostic;
use crate::scopes::ScopeRegistry;
use std::path::Path;

/// Stub.
pub fn parse_keys_str(
    _text: &str,
    _file: &Path,
    _registry: &ScopeRegistry,
    _previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    Err(vec![])
}
/// Stub.
pub fn load_keys_file(
    _path: &Path,
    _registry: &ScopeRegistry,
    _previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    Err(vec![])
}
