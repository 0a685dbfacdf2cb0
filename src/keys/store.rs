//! The live keys: one `ArcSwap` so a request loads a snapshot without a lock
//! and keeps it for its whole life, while a reload swaps in the next one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Snapshot;

/// Holds the current snapshot; cheap to clone and share.
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
