//! Identity tokens (JWTs): which credential is a token, JWK sets (parsed,
//! read from files, fetched, refreshed), verification into an identity, a
//! cache of verified tokens, and the report `scopegate inspect-token` prints.
//! It may import `identity::keys`, `identity::scopes`, `limits` and `diag`;
//! nothing of pingora, the gateway or the decision: the glue calls in,
//! never the other way.
//!
//! Everything but [`fetch`] is pure: verification takes the token, the time,
//! the keys snapshot and the organisations' JWK sets as input.

pub mod cache;
pub mod claims;
pub mod fetch;
pub mod files;
pub mod inspect;
pub mod jwks;
pub mod refresh;
pub mod shape;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;

pub use cache::TokenCache;
pub use inspect::{inspect, Inspection};
pub use jwks::{JwksError, JwksSet, KeyKind, SkipReason};
pub use refresh::{RefreshPolicy, RefreshState};
pub use shape::is_token;
pub use verify::{verify, Check, Failure, KeySets, TokenError, TokenOutcome, VerifiedIdentity};
