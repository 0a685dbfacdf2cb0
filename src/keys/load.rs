//! TEMPORARY minimal loader (replaced by the keys helper's implementation).
use super::{build_snapshot, KeysDocument, Snapshot};
use crate::diag::Diagnostic;
use crate::scopes::ScopeRegistry;
use std::path::Path;

/// Parses keys YAML.
///
/// # Errors
/// Problems.
pub fn parse_keys_str(
    text: &str,
    file: &Path,
    registry: &ScopeRegistry,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let doc: KeysDocument =
        serde_yaml::from_str(text).map_err(|e| vec![Diagnostic::file(file, e.to_string())])?;
    build_snapshot(&doc, registry, previous).map_err(|ps| {
        ps.into_iter()
            .map(|p| Diagnostic::file(file, p.to_string()))
            .collect()
    })
}
/// Loads a keys file.
///
/// # Errors
/// Problems.
pub fn load_keys_file(
    path: &Path,
    registry: &ScopeRegistry,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<Diagnostic>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![Diagnostic::file(path, e.to_string())])?;
    parse_keys_str(&text, path, registry, previous)
}
