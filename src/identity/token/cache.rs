//! Verified tokens, remembered until they expire, so that a client sending
//! the same token on every request pays for one signature check.
//!
//! - Keyed by the SHA-256 of the token: the cache never holds a token.
//! - Bounded in entries and in bytes; when a shard is full the oldest
//!   entry goes (first in, first out: tokens of one lifetime are inserted
//!   roughly in expiry order, and an evicted token only costs one more
//!   verification).
//! - An entry is used only until its `exp` (plus leeway), and only in the
//!   generation it was verified in: [`TokenCache::invalidate`] moves to a
//!   new generation in O(1) when a reload changes a JWK set or the identity
//!   settings, and every older entry then misses.
//!
//! 64 shards, each a `parking_lot` mutex over a hash map whose hash is the
//! digest's first bytes (it is uniform already) and a FIFO of digests:
//! lookups are a lock, a probe and a compare; eviction is a pop.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::verify::VerifiedIdentity;
use crate::identity::keys::snapshot::DigestHasher;
use crate::identity::keys::{Digest, UnixMillis};

/// Default bound on entries.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// Default bound on bytes.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

const SHARDS: usize = 64;

struct Entry {
    identity: Arc<VerifiedIdentity>,
    generation: u64,
    /// Heap bytes this entry holds (its identity and strings).
    bytes: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Digest, Entry, BuildHasherDefault<DigestHasher>>,
    order: VecDeque<Digest>,
    heap: usize,
}

impl Shard {
    fn remove(&mut self, digest: &Digest) {
        if let Some(e) = self.map.remove(digest) {
            self.heap -= e.bytes;
        }
    }

    /// Bytes held, counting each entry's slots at [`SLOT_COST`].
    fn used(&self) -> usize {
        self.heap + self.map.len() * SLOT_COST
    }

    /// Evicts the oldest entries until one more of `incoming` heap bytes
    /// fits.
    fn make_room(&mut self, max_entries: usize, max_bytes: usize, incoming: usize) {
        while self.map.len() >= max_entries || self.used() + SLOT_COST + incoming > max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.remove(&oldest);
        }
        // The FIFO may hold digests already removed (expired, replaced):
        // compact it now and then, so it stays near the entries' count.
        if self.order.len() > self.map.len() + max_entries / 4 + 16 {
            let map = &self.map;
            self.order.retain(|d| map.contains_key(d));
        }
    }
}

/// The cache of verified tokens.
pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    max_entries_per_shard: usize,
    max_bytes_per_shard: usize,
    generation: AtomicU64,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

/// Bytes an identity holds on the heap, besides the shared settings.
fn heap_bytes(id: &VerifiedIdentity) -> usize {
    // Arc allocations: two counters, then the value.
    let arc = 2 * size_of::<usize>();
    let user = match &id.user_id {
        Some(u) if !Arc::ptr_eq(u, &id.subject) => arc + u.len(),
        _ => 0,
    };
    arc + size_of::<VerifiedIdentity>()
        + arc
        + id.subject.len()
        + arc
        + id.key_id.len()
        + arc
        + id.counter_id.len()
        + user
}

/// Bytes per entry besides its heap: a map slot (digest, entry, control
/// byte) and a FIFO slot, both doubled for the slack of growth by powers
/// of two and for digests of removed entries still in the FIFO.
const SLOT_COST: usize = 2 * (size_of::<Digest>() + size_of::<Entry>() + 1 + size_of::<Digest>());

impl TokenCache {
    /// A cache of at most `max_entries` tokens and about `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_entries_per_shard: max_entries.div_ceil(SHARDS).max(1),
            max_bytes_per_shard: (max_bytes / SHARDS).max(1),
            generation: AtomicU64::new(0),
        }
    }

    /// The key of a token.
    pub fn key(token: &str) -> Digest {
        crate::identity::keys::digest(token.as_bytes())
    }

    fn shard(&self, digest: &Digest) -> &Mutex<Shard> {
        // The map hashes the first bytes; shards take the last one.
        &self.shards[digest[31] as usize % SHARDS]
    }

    /// The current generation: read it *before* verifying, and give it to
    /// [`TokenCache::insert`], so that a verification that raced a reload
    /// is not remembered into the new generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The identity of a token verified before, if it still holds at `now`.
    pub fn get(&self, key: &Digest, now: UnixMillis) -> Option<Arc<VerifiedIdentity>> {
        let generation = self.generation();
        let mut shard = self.shard(key).lock();
        let entry = shard.map.get(key)?;
        if entry.generation == generation && now < entry.identity.valid_until {
            return Some(entry.identity.clone());
        }
        shard.remove(key);
        None
    }

    /// Remembers a verified token, verified in `generation`.
    pub fn insert(&self, key: Digest, identity: Arc<VerifiedIdentity>, generation: u64) {
        if generation != self.generation() {
            return;
        }
        let bytes = heap_bytes(&identity);
        let mut shard = self.shard(&key).lock();
        shard.remove(&key);
        shard.make_room(self.max_entries_per_shard, self.max_bytes_per_shard, bytes);
        shard.heap += bytes;
        shard.map.insert(
            key,
            Entry {
                identity,
                generation,
                bytes,
            },
        );
        shard.order.push_back(key);
    }

    /// Makes every entry miss from now on (a reload changed a JWK set or
    /// the identity settings). O(1); the memory is reclaimed as entries
    /// are looked up or evicted, or at once with [`TokenCache::clear`].
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops every entry and frees their memory.
    pub fn clear(&self) {
        self.invalidate();
        for shard in self.shards.iter() {
            *shard.lock() = Shard::default();
        }
    }

    /// Entries held (some may be stale).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many bytes the cache holds: map and FIFO capacity, and
    /// each entry's identity and strings (the settings they share are
    /// counted nowhere: one per organisation).
    pub fn approx_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.map.capacity() * (size_of::<Digest>() + size_of::<Entry>() + 1)
                    + s.order.capacity() * size_of::<Digest>()
                    + s.heap
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::token::testing::{good_claims, jwks, sets, snapshot_with, TestKey, NOW};
    use crate::identity::token::verify;

    fn identity(subject: &str, valid_until: UnixMillis) -> Arc<VerifiedIdentity> {
        let snap = snapshot_with("");
        let key = TestKey::es256("k");
        let mut claims = good_claims();
        claims["sub"] = subject.into();
        let token = key.sign(&claims);
        let keys = sets(jwks(&[&key]), jwks(&[&key]));
        let mut id = verify(&token, NOW, &snap, &keys).expect("verifies");
        id.valid_until = valid_until;
        Arc::new(id)
    }

    #[test]
    fn hit_until_exp_then_miss() {
        let cache = TokenCache::default();
        let key = TokenCache::key("tok");
        let gen = cache.generation();
        cache.insert(key, identity("alice", NOW + 1000), gen);
        assert_eq!(
            cache.get(&key, NOW).map(|i| i.subject.to_string()),
            Some("alice".into())
        );
        assert!(cache.get(&key, NOW + 999).is_some());
        assert!(cache.get(&key, NOW + 1000).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped when seen");
        assert!(cache.get(&TokenCache::key("other"), NOW).is_none());
    }

    #[test]
    fn invalidation_makes_everything_miss() {
        let cache = TokenCache::default();
        let id = identity("alice", NOW + 60_000);
        let gen = cache.generation();
        for i in 0..100 {
            cache.insert(TokenCache::key(&i.to_string()), id.clone(), gen);
        }
        assert_eq!(cache.len(), 100);
        cache.invalidate();
        assert!(cache.get(&TokenCache::key("5"), NOW).is_none());
        // A verification that started before the reload is not remembered.
        cache.insert(TokenCache::key("late"), id.clone(), gen);
        assert!(cache.get(&TokenCache::key("late"), NOW).is_none());
        cache.insert(TokenCache::key("new"), id, cache.generation());
        assert!(cache.get(&TokenCache::key("new"), NOW).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_in_entries_oldest_out() {
        let cache = TokenCache::new(640, usize::MAX / 2);
        let id = identity("alice", NOW + 60_000);
        let gen = cache.generation();
        for i in 0..10_000 {
            cache.insert(TokenCache::key(&i.to_string()), id.clone(), gen);
        }
        let n = cache.len();
        assert!(n <= 640 && n > 500, "{n}");
        // The newest are kept.
        assert!(cache.get(&TokenCache::key("9999"), NOW).is_some());
        assert!(cache.get(&TokenCache::key("0"), NOW).is_none());
    }

    #[test]
    fn bounded_in_bytes() {
        let cache = TokenCache::new(100_000, 4 * 1024 * 1024);
        let gen = cache.generation();
        let long = "s".repeat(256);
        let template = identity(&long, NOW + 60_000);
        for i in 0..20_000 {
            // A distinct subject per entry, as real tokens have.
            let mut id = (*template).clone();
            id.subject = format!("{i}{long}")[..256].into();
            id.user_id = Some(format!("u{i}{long}")[..256].into());
            cache.insert(TokenCache::key(&i.to_string()), Arc::new(id), gen);
        }
        let bytes = cache.approx_bytes();
        assert!(bytes <= 4 * 1024 * 1024, "{bytes}");
        assert!(cache.len() > 2000, "{}", cache.len());
    }

    #[test]
    fn replacing_an_entry_keeps_one() {
        let cache = TokenCache::default();
        let gen = cache.generation();
        let key = TokenCache::key("t");
        cache.insert(key, identity("a", NOW + 1000), gen);
        cache.insert(key, identity("b", NOW + 1000), gen);
        assert_eq!(cache.len(), 1);
        assert_eq!(
            cache.get(&key, NOW).map(|i| i.subject.to_string()),
            Some("b".into())
        );
    }
}
