//! `check`'s warnings about cost budgets and model allowlists
//! (docs/reference.md#unpriced-models): a key or workspace with a `cost`
//! usage limit is refused every model no `model_prices` pattern prices, so
//! an allowlist pattern that no price covers names models it can never
//! use. A warning, not an error: the file is valid, and the operator may
//! mean it (a model priced later).

use std::path::Path;

use crate::diag::Diagnostic;
use crate::identity::keys::Snapshot;
use crate::limits::{Limits, UsageKind};

/// The patterns of `limits.models` no price covers, when `limits` (or the
/// workspace's `ws`) has a cost budget. A pattern is covered when a price
/// pattern matches it taken literally (`"*"` covers everything, `gpt-4o*`
/// covers `gpt-4o*` and `gpt-4o-mini`, but `gpt-4o-mini` does not cover
/// `gpt-4o*`, which also allows `gpt-4o`).
fn uncovered<'a>(
    snap: &Snapshot,
    limits: &'a Limits,
    ws: Option<&Limits>,
) -> Vec<(usize, &'a str)> {
    let cost = |l: &Limits| l.usage.is_some_and(|u| u.kind == UsageKind::Cost);
    if !(cost(limits) || ws.is_some_and(cost)) {
        return Vec::new();
    }
    let Some(models) = &limits.models else {
        return Vec::new();
    };
    models
        .iter()
        .enumerate()
        .filter(|(_, p)| crate::limits::price::price_for(snap.model_prices(), p).is_none())
        .map(|(i, p)| (i, &**p))
        .collect()
}

/// One warning per allowlist pattern of a cost-limited key or workspace
/// that no `model_prices` pattern covers, each at its place in the keys
/// file (`keys_file`).
pub fn unpriced_model_warnings(keys_file: &Path, snap: &Snapshot) -> Vec<Diagnostic> {
    let text = std::fs::read_to_string(keys_file).unwrap_or_default();
    let index = crate::diag::position::PositionIndex::new(&text);
    let at = |path: String| index.as_ref().and_then(|ix| ix.locate(&path));
    let mut out = Vec::new();
    let mut warn = |path: String, who: String, pattern: &str| {
        out.push(Diagnostic {
            file: keys_file.to_path_buf(),
            position: at(path.clone()),
            message: format!(
                "warning: {path} ({who}): the model pattern `{pattern}` has no price in \
                 `model_prices`, and a cost budget applies: requests for models it allows \
                 that no price covers are refused (model_not_priced). Price them, or add a \
                 `\"*\"` price at the end of `model_prices`."
            ),
        });
    };
    for (k, key) in snap.keys().iter().enumerate() {
        let ws = key.workspace.map(|w| &snap.workspace(w).limits);
        for (m, pattern) in uncovered(snap, &key.limits, ws) {
            warn(
                format!("keys[{k}].models[{m}]"),
                key.id.to_string(),
                pattern,
            );
        }
    }
    let mut per_org: Vec<usize> = vec![0; snap.organisations().len()];
    for ws in snap.workspaces() {
        let o = ws.organisation.0 as usize;
        let w = per_org.get(o).copied().unwrap_or(0);
        if let Some(n) = per_org.get_mut(o) {
            *n += 1;
        }
        for (m, pattern) in uncovered(snap, &ws.limits, None) {
            warn(
                format!("organisations[{o}].workspaces[{w}].models[{m}]"),
                ws.id.to_string(),
                pattern,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::{build_snapshot, digest_hex, KeysDocument};
    use crate::identity::scopes::ScopeRegistry;

    #[test]
    fn an_allowlist_pattern_no_price_covers_is_warned_about_under_a_cost_budget() {
        let yaml = format!(
            r#"organisations:
  - id: o
    workspaces:
      - id: w
        models: ["gpt-4o*", "o1"]
        usage_limits: {{ type: cost, credit_limit: 5 }}
      - id: free
        models: ["o1"]
keys:
  - id: k
    type: workspace-service
    workspace_id: free
    sha256: "{}"
    scopes: ["completions.write"]
    models: ["gpt-4o-mini", "claude-*"]
    usage_limits: {{ type: cost, credit_limit: 5 }}
  - id: tokens_only
    type: workspace-service
    workspace_id: free
    sha256: "{}"
    scopes: ["completions.write"]
    models: ["claude-*"]
    usage_limits: {{ type: tokens, credit_limit: 5 }}
model_prices:
  "gpt-4o*": {{ input: 1, output: 1 }}
"#,
            digest_hex(b"k"),
            digest_hex(b"t")
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys.yaml");
        std::fs::write(&path, &yaml).expect("write");
        let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("yaml");
        let snap = build_snapshot(&doc, &ScopeRegistry::builtin()).expect("valid");
        let got: Vec<String> = unpriced_model_warnings(&path, &snap)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert_eq!(got.len(), 2, "{got:#?}");
        assert!(
            got[0].contains(
                "keys.yaml:15:29: warning: keys[0].models[1] (k): the model pattern `claude-*`"
            ),
            "{got:#?}"
        );
        assert!(
            got[1].contains("keys.yaml:5:29: warning: organisations[0].workspaces[0].models[1] (w): the model pattern `o1`"),
            "{got:#?}"
        );
    }
}
