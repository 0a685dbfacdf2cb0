//! Test keys and tokens: EC and Ed25519 keys generated with ring, RSA-2048
//! from fixtures (ring cannot generate RSA keys), JWK sets built from them,
//! tokens signed with jsonwebtoken.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Value};

use super::jwks::JwksSet;
use crate::identity::keys::{parse_keys_str, OrgIdx, Snapshot};
use crate::identity::scopes::ScopeRegistry;

/// RSA-2048 fixtures (PKCS#1 DER).
pub(crate) const RSA_A: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/rsa2048_a.der"
));
pub(crate) const RSA_B: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/jwt/rsa2048_b.der"
));

/// A private key with its public JWK.
pub(crate) struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// The public JWK (with `kid`, without `alg`).
    pub jwk: Value,
    /// The public key bytes (RSA: DER of RSAPublicKey; EC: the point;
    /// Ed25519: the 32 bytes): what an HMAC-confusion attacker would use.
    pub public: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    pub fn rsa(kid: &str, der: &[u8]) -> TestKey {
        let pair = RsaKeyPair::from_der(der).expect("fixture is an RSA key");
        let components: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig",
                        "n": b64(&components.n), "e": b64(&components.e)}),
            public: pair.public().as_ref().to_vec(),
        }
    }

    fn ec(kid: &str, p384: bool) -> TestKey {
        let (signing, alg, crv) = if p384 {
            (&ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384, "P-384")
        } else {
            (&ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256, "P-256")
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).expect("generates");
        let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).expect("reads");
        let point = pair.public_key().as_ref().to_vec();
        let half = (point.len() - 1) / 2;
        TestKey {
            kid: kid.into(),
            alg,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "kid": kid, "crv": crv,
                        "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])}),
            public: point,
        }
    }

    pub fn es256(kid: &str) -> TestKey {
        TestKey::ec(kid, false)
    }

    pub fn es384(kid: &str) -> TestKey {
        TestKey::ec(kid, true)
    }

    pub fn ed25519(kid: &str) -> TestKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generates");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("reads");
        let public = pair.public_key().as_ref().to_vec();
        TestKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&public)}),
            public,
        }
    }

    /// The same key under another algorithm of its family (RS384, PS256…).
    pub fn with_alg(mut self, alg: Algorithm) -> TestKey {
        self.alg = alg;
        self
    }

    /// A token with `{alg, kid, typ}` and `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(&header, claims)
    }

    /// A token with the given header.
    pub fn sign_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signs")
    }
}

/// `{"keys": [...]}` of the keys' public JWKs.
pub(crate) fn jwks_json(keys: &[&TestKey]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys }).to_string()
}

pub(crate) fn jwks(keys: &[&TestKey]) -> JwksSet {
    JwksSet::parse(jwks_json(keys).as_bytes()).expect("test set is usable")
}

/// A token from raw header and payload JSON and a raw signature.
pub(crate) fn raw_token(header: &str, payload: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(payload.as_bytes()),
        b64(signature)
    )
}

/// The time tests verify at: 2027-01-15T08:00:00Z, in milliseconds.
pub(crate) const NOW: i64 = 1_800_000_000_000;
/// [`NOW`] in seconds.
pub(crate) const NOW_S: i64 = NOW / 1000;

/// A keys file with org_a (issuer `https://idp.a/`, audience `scopegate`,
/// workspaces ws_a1 (slug a1) and ws_a2) and org_b (issuer
/// `https://idp.b/`, workspace ws_b1); `extra_a` is appended to org_a's
/// identity_tokens (indented six spaces).
pub(crate) fn snapshot_with(extra_a: &str) -> Snapshot {
    let extra: String = extra_a.lines().map(|l| format!("      {l}\n")).collect();
    let text = format!(
        "\
organisations:
  - id: org_a
    workspaces:
      - id: ws_a1
        slug: a1
      - id: ws_a2
    identity_tokens:
      issuer: https://idp.a/
      audience: scopegate
      jwks_file: a.json
{extra}  - id: org_b
    workspaces:
      - id: ws_b1
    identity_tokens:
      issuer: https://idp.b/
      audience: scopegate
      jwks_file: b.json
      key_type: workspace-service
keys: []
"
    );
    parse_keys_str(&text, Path::new("keys.yaml"), &ScopeRegistry::builtin())
        .unwrap_or_else(|d| panic!("test keys file is valid: {d:?}\n{text}"))
}

/// org_a's and org_b's sets.
pub(crate) fn sets(a: JwksSet, b: JwksSet) -> HashMap<OrgIdx, Arc<JwksSet>> {
    HashMap::from([(OrgIdx(0), Arc::new(a)), (OrgIdx(1), Arc::new(b))])
}

/// Claims that pass every check for org_a at [`NOW`].
pub(crate) fn good_claims() -> Value {
    json!({
        "iss": "https://idp.a/",
        "aud": "scopegate",
        "sub": "alice",
        "exp": NOW_S + 3600,
        "iat": NOW_S - 60,
        "workspace_slug": "a1",
        "scope": "openid completions.write logs.view",
    })
}
