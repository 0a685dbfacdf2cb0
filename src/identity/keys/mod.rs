//! API keys: the file model, validation, the indexed snapshot the decision
//! reads, and the store that swaps snapshots atomically.

pub mod build;
pub mod load;
pub mod model;
pub mod snapshot;
pub mod store;
pub mod tokens;

pub use build::{build_snapshot, Problem};
pub use load::{load_keys_file, parse_keys_str, parse_keys_str_digested, read_keys_file};
pub use model::{
    ClaimNamesSpec, IdentityTokensSpec, KeySpec, KeysDocument, ModelPrices, OrganisationSpec,
    PriceSpec, RateLimitSpec, SecretSpec, UsageLimitSpec, UsageLimitsSpec, WorkspaceSpec,
};
pub use snapshot::{
    now_millis, Digest, Key, KeyIdx, KeyStatus, OrgIdx, Organisation, SecretEntry, Snapshot,
    UnixMillis, Workspace, WsIdx,
};
pub use store::{release_freed_memory, KeyStore};
pub use tokens::{ClaimNames, IdentityIndex, JwksSource, SigningAlg, TokenSettings};

/// SHA-256 of a presented secret.
///
/// Computed with ring (already in the tree under rustls): its assembly uses
/// the CPU's SHA extensions where they exist, like `sha2`, and AVX2 or SSSE3
/// where they do not, where `sha2` falls back to portable code at about 12
/// times the instructions (many server CPUs before Ice Lake have no SHA
/// extensions). Every request with a key hashes it once.
pub fn digest(secret: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 as 64 lowercase hex digits (what the keys file stores).
pub fn digest_hex(secret: &[u8]) -> String {
    hex::encode(digest(secret))
}
