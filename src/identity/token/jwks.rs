//! JWK sets: an identity provider's public signing keys.
//!
//! A set is parsed key by key: keys this proxy cannot use (encryption keys,
//! symmetric keys, other curves, RSA under 2048 bits, malformed entries) are
//! skipped with a reason rather than failing the whole set, because
//! providers publish such keys next to the signing ones. A set with no
//! usable key at all is an error.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::identity::keys::{Digest, SigningAlg};

/// Largest JWK set read, from a file or over the network.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Most keys kept from one set.
pub const MAX_KEYS: usize = 100;

/// What kind of public key a JWK is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, with its modulus length in bits.
    Rsa {
        /// Modulus length.
        bits: u32,
    },
    /// ECDSA on P-256.
    EcP256,
    /// ECDSA on P-384.
    EcP384,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind verifies `alg`.
    pub fn verifies(self, alg: SigningAlg) -> bool {
        match alg {
            SigningAlg::RS256 | SigningAlg::RS384 | SigningAlg::RS512 | SigningAlg::PS256 => {
                matches!(self, KeyKind::Rsa { .. })
            }
            SigningAlg::ES256 => self == KeyKind::EcP256,
            SigningAlg::ES384 => self == KeyKind::EcP384,
            SigningAlg::EdDSA => self == KeyKind::Ed25519,
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyKind::EcP256 => f.write_str("EC P-256"),
            KeyKind::EcP384 => f.write_str("EC P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

/// One usable key of a set.
#[derive(Clone)]
pub struct SetKey {
    /// Its `kid`, if it has one.
    pub kid: Option<Box<str>>,
    /// What kind of key.
    pub kind: KeyKind,
    /// Its `alg`, when the set says which algorithm it is for.
    pub alg: Option<SigningAlg>,
    pub(crate) key: DecodingKey,
}

impl SetKey {
    /// The key in jsonwebtoken's form.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

impl fmt::Debug for SetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why a key of a set was skipped; [`SkipReason::as_str`] is a short label
/// fit for a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// `use` is not `sig`, `key_ops` lacks `verify`, or `alg` is an
    /// encryption algorithm.
    NotForSignatures,
    /// `kty` is neither RSA, EC nor OKP (e.g. a symmetric `oct` key).
    UnsupportedType,
    /// An EC or OKP curve other than P-256, P-384 and Ed25519.
    UnsupportedCurve,
    /// An `alg` this proxy does not verify (HMAC, PS384, ES512, …).
    UnsupportedAlg,
    /// An RSA modulus under 2048 or over 8192 bits.
    RsaSize,
    /// Missing or malformed members.
    Malformed,
    /// A `kid` an earlier key of the set already has.
    DuplicateKid,
    /// Past [`MAX_KEYS`].
    TooMany,
}

impl SkipReason {
    /// A short label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotForSignatures => "not_for_signatures",
            SkipReason::UnsupportedType => "unsupported_type",
            SkipReason::UnsupportedCurve => "unsupported_curve",
            SkipReason::UnsupportedAlg => "unsupported_alg",
            SkipReason::RsaSize => "rsa_size",
            SkipReason::Malformed => "malformed",
            SkipReason::DuplicateKid => "duplicate_kid",
            SkipReason::TooMany => "too_many",
        }
    }

    /// In words, for `scopegate check` and logs.
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::NotForSignatures => "not a signing key",
            SkipReason::UnsupportedType => "a key type other than RSA, EC and OKP",
            SkipReason::UnsupportedCurve => "a curve other than P-256, P-384 and Ed25519",
            SkipReason::UnsupportedAlg => "an algorithm scopegate does not verify",
            SkipReason::RsaSize => "an RSA key under 2048 or over 8192 bits",
            SkipReason::Malformed => "missing or malformed members",
            SkipReason::DuplicateKid => "a kid an earlier key already has",
            SkipReason::TooMany => "more keys than scopegate keeps from one set",
        }
    }
}

/// A key that was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its position in `keys`.
    pub index: usize,
    /// Its `kid` when it had a string one (cut to 64 characters).
    pub kid: Option<String>,
    /// Why.
    pub reason: SkipReason,
}

/// Why a set could not be used at all.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// Not JSON; line and column are 1-based.
    #[error("not valid JSON: {message}")]
    Json {
        /// serde_json's message without its position.
        message: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// JSON, but not an object with a `keys` array.
    #[error("a JWK set is a JSON object with a `keys` array")]
    NotASet,
    /// No key of the set can verify tokens.
    #[error("no usable signing key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519){}", describe_skipped(.0))]
    NoUsableKey(Vec<Skipped>),
    /// Larger than [`MAX_JWKS_BYTES`].
    #[error("larger than {} KiB", MAX_JWKS_BYTES / 1024)]
    TooLarge,
}

fn describe_skipped(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = skipped
        .iter()
        .map(|s| format!("keys[{}]: {}", s.index, s.reason.describe()))
        .collect();
    format!("; skipped {}", parts.join(", "))
}

/// A parsed JWK set.
#[derive(Clone, Debug)]
pub struct JwksSet {
    keys: Vec<SetKey>,
    skipped: Vec<Skipped>,
    digest: Digest,
}

impl JwksSet {
    /// Parses a JWK set (`{"keys": [...]}`).
    ///
    /// # Errors
    /// Not JSON, not a set, larger than [`MAX_JWKS_BYTES`], or no usable key.
    pub fn parse(bytes: &[u8]) -> Result<JwksSet, JwksError> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge);
        }
        let root: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Json {
            message: without_position(&e),
            line: e.line(),
            column: e.column(),
        })?;
        let Some(Value::Array(entries)) = root.get("keys") else {
            return Err(JwksError::NotASet);
        };
        let mut keys: Vec<SetKey> = Vec::new();
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str);
            let skip = |reason| Skipped {
                index,
                kid: kid.map(|k| k.chars().take(64).collect()),
                reason,
            };
            if keys.len() == MAX_KEYS {
                skipped.push(skip(SkipReason::TooMany));
                continue;
            }
            match read_key(entry) {
                Ok(key) => {
                    let duplicate = key.kid.is_some()
                        && keys.iter().any(|k| k.kid.is_some() && k.kid == key.kid);
                    if duplicate {
                        skipped.push(skip(SkipReason::DuplicateKid));
                    } else {
                        keys.push(key);
                    }
                }
                Err(reason) => skipped.push(skip(reason)),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(skipped));
        }
        Ok(JwksSet {
            keys,
            skipped,
            digest: crate::identity::keys::digest(bytes),
        })
    }

    /// The key whose `kid` is `kid`.
    pub fn find(&self, kid: &str) -> Option<&SetKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The only key of the set, when it has exactly one (a token may then
    /// omit `kid`).
    pub fn only(&self) -> Option<&SetKey> {
        match self.keys.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The usable keys.
    pub fn keys(&self) -> &[SetKey] {
        &self.keys
    }

    /// How many keys are usable (for the `scopegate_jwks_keys` gauge).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true: a set without a usable key is refused.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys that were skipped, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// SHA-256 of the set as read: a changed set means cached identities
    /// may no longer hold.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_string()
}

/// Length in bytes of a base64url member, or `None` when it is not one.
fn decoded_len(entry: &Value, name: &str) -> Option<usize> {
    let text = entry.get(name)?.as_str()?;
    URL_SAFE_NO_PAD.decode(text).ok().map(|b| b.len())
}

/// Reads one JWK, or why it is skipped.
fn read_key(entry: &Value) -> Result<SetKey, SkipReason> {
    if !entry.is_object() {
        return Err(SkipReason::Malformed);
    }
    match entry.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err(SkipReason::NotForSignatures),
    }
    if let Some(ops) = entry.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err(SkipReason::NotForSignatures);
        }
    }
    let alg = match entry.get("alg") {
        None => None,
        Some(Value::String(a)) => match SigningAlg::parse(a) {
            Some(alg) => Some(alg),
            None if a.starts_with("RSA") || a.starts_with("ECDH") || a.starts_with("A") => {
                return Err(SkipReason::NotForSignatures)
            }
            None => return Err(SkipReason::UnsupportedAlg),
        },
        Some(_) => return Err(SkipReason::Malformed),
    };
    let kind = match entry.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let n = decoded_len(entry, "n").ok_or(SkipReason::Malformed)?;
            decoded_len(entry, "e").ok_or(SkipReason::Malformed)?;
            let bits = modulus_bits(entry).ok_or(SkipReason::Malformed)?;
            if n == 0 || !(2048..=8192).contains(&bits) {
                return Err(SkipReason::RsaSize);
            }
            KeyKind::Rsa { bits }
        }
        Some("EC") => {
            let (kind, len) = match entry.get("crv").and_then(Value::as_str) {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                _ => return Err(SkipReason::UnsupportedCurve),
            };
            let ok = decoded_len(entry, "x") == Some(len) && decoded_len(entry, "y") == Some(len);
            if !ok {
                return Err(SkipReason::Malformed);
            }
            kind
        }
        Some("OKP") => {
            if entry.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err(SkipReason::UnsupportedCurve);
            }
            if decoded_len(entry, "x") != Some(32) {
                return Err(SkipReason::Malformed);
            }
            KeyKind::Ed25519
        }
        Some(_) => return Err(SkipReason::UnsupportedType),
        None => return Err(SkipReason::Malformed),
    };
    if alg.is_some_and(|a| !kind.verifies(a)) {
        return Err(SkipReason::Malformed);
    }
    // jsonwebtoken's own JWK model turns the members into a verifying key.
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|_| SkipReason::Malformed)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| SkipReason::Malformed)?;
    let kid = entry
        .get("kid")
        .map(|k| k.as_str().map(Box::from).ok_or(SkipReason::Malformed))
        .transpose()?;
    Ok(SetKey {
        kid,
        kind,
        alg,
        key,
    })
}

/// Bits of an RSA modulus (leading zero bytes do not count).
fn modulus_bits(entry: &Value) -> Option<u32> {
    let n = URL_SAFE_NO_PAD.decode(entry.get("n")?.as_str()?).ok()?;
    let first = n.iter().position(|b| *b != 0)?;
    let significant = &n[first..];
    let top = significant.first()?;
    Some((significant.len() as u32 - 1) * 8 + (8 - top.leading_zeros()))
}

#[cfg(test)]
mod tests;
