//! The live keys: one `ArcSwap` so a request loads a snapshot without a lock
//! and keeps it for its whole life, while a reload swaps in the next one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Snapshot;

/// Holds the current snapshot; cheap to clone and share.
///
/// The YAML loader is only one producer of snapshots: a program (or a test)
/// can describe keys in code, build a snapshot, serve it, and swap in the
/// next one at any time. Requests in flight keep the snapshot they started
/// with.
///
/// ```
/// use scopegate::identity::keys::{build_snapshot, digest_hex, KeySpec, KeyStore, KeysDocument,
///     OrganisationSpec, WorkspaceSpec};
/// use scopegate::decision::decide::{decide, Body, Outcome, RequestFacts};
/// use scopegate::decision::request::Presented;
/// use scopegate::decision::routes::RouteTable;
///
/// let table = RouteTable::build(&[], true).unwrap();
/// let mut doc = KeysDocument {
///     organisations: vec![OrganisationSpec {
///         id: "org_acme".into(),
///         workspaces: vec![WorkspaceSpec {
///             id: "ws_research".into(),
///             slug: Some("research".into()),
///             ..WorkspaceSpec::default()
///         }],
///         ..OrganisationSpec::default()
///     }],
///     ..KeysDocument::default()
/// };
/// doc.keys.push(KeySpec {
///     id: "key_bot".into(),
///     key_type: "workspace-service".into(),
///     workspace_id: Some("research".into()),
///     sha256: Some(digest_hex(b"sgk-secret")),
///     scopes: vec!["completions.write".into()],
///     ..KeySpec::default()
/// });
/// let store = KeyStore::new(build_snapshot(&doc, table.registry()).unwrap());
///
/// // What the proxy does for each request: load once, decide against it.
/// let snap = store.load();
/// let facts = RequestFacts {
///     method: &http::Method::POST,
///     path: "/v1/chat/completions",
///     query: None,
///     key: Presented::Secret(b"sgk-secret"),
///     content_type: None,
///     content_type_repeated: false,
///     bad_content_length: false,
///     upgrade: scopegate::decision::request::Upgrade::None,
///     body: Body::Empty,
///     now: 0,
///     max_body: 65536,
///     max_data_body: 16 * 1024 * 1024,
///     used_up: &scopegate::decision::decide::nothing_used,
/// };
/// assert_eq!(decide(&table, &snap, &facts).outcome, Outcome::Allow);
///
/// // Revoke the key in code and swap: new requests see it at once, while
/// // `snap` (a request in flight) keeps the keys it started with.
/// doc.keys[0].status = Some("revoked".into());
/// store.swap(build_snapshot(&doc, table.registry()).unwrap());
/// assert!(matches!(decide(&table, &store.load(), &facts).outcome, Outcome::Deny(_)));
/// assert_eq!(decide(&table, &snap, &facts).outcome, Outcome::Allow);
///
/// // To serve it: `scopegate::gateway::server::serve(config, table, store)`.
/// ```
#[derive(Clone, Debug)]
pub struct KeyStore {
    current: Arc<ArcSwap<Snapshot>>,
}

impl KeyStore {
    /// A store serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> KeyStore {
        KeyStore {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
        }
    }

    /// The snapshot now in force. Requests hold this `Arc` until they end,
    /// so a swap never changes the keys under a request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot atomically; returns the previous one.
    pub fn swap(&self, next: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(next))
    }
}

/// Hands memory freed after a load (the file text, the parsed document, an
/// old snapshot) back to the OS, so a proxy's resident size reflects the
/// keys it holds rather than the peak of the last load. A no-op unless the
/// process allocates with mimalloc (the `scopegate` binary does).
pub fn release_freed_memory() {
    // SAFETY: `mi_collect` only walks mimalloc's own heaps; it is safe to
    // call at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_guard_remains_valid_after_swap() {
        let store = KeyStore::new(Snapshot::default());
        let before = store.load();
        let mut next = Snapshot::default();
        next.custom_scopes.push("x.read".into());
        store.swap(next);
        assert!(before.custom_scopes().is_empty());
        assert_eq!(store.load().custom_scopes(), ["x.read".to_string()]);
    }
}
