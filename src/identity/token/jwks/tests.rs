use serde_json::json;

use super::*;
use crate::identity::token::testing::{TestKey, RSA_A};

fn parse(v: serde_json::Value) -> Result<JwksSet, JwksError> {
    JwksSet::parse(v.to_string().as_bytes())
}

#[test]
fn reads_rsa_ec_and_okp_keys() {
    let (rsa, es, es384, ed) = (
        TestKey::rsa("r", RSA_A),
        TestKey::es256("e"),
        TestKey::es384("e3"),
        TestKey::ed25519("d"),
    );
    let set = parse(json!({"keys": [rsa.jwk, es.jwk, es384.jwk, ed.jwk]})).expect("set");
    assert_eq!(set.len(), 4);
    assert!(set.skipped().is_empty());
    assert_eq!(
        set.find("r").map(|k| k.kind),
        Some(KeyKind::Rsa { bits: 2048 })
    );
    assert_eq!(set.find("e").map(|k| k.kind), Some(KeyKind::EcP256));
    assert_eq!(set.find("e3").map(|k| k.kind), Some(KeyKind::EcP384));
    assert_eq!(set.find("d").map(|k| k.kind), Some(KeyKind::Ed25519));
    assert!(set.find("x").is_none());
    assert!(set.only().is_none());
}

#[test]
fn skips_what_it_cannot_use_and_says_why() {
    let es = TestKey::es256("good");
    let mut enc = TestKey::rsa("enc", RSA_A).jwk;
    enc["use"] = "enc".into();
    let mut oaep = TestKey::rsa("oaep", RSA_A).jwk;
    oaep["alg"] = "RSA-OAEP".into();
    oaep.as_object_mut().map(|o| o.remove("use"));
    let mut ops = TestKey::es256("ops").jwk;
    ops["key_ops"] = json!(["sign"]);
    let mut p521 = TestKey::es256("p521").jwk;
    p521["crv"] = "P-521".into();
    let mut x448 = TestKey::ed25519("x448").jwk;
    x448["crv"] = "X25519".into();
    let mut ps512 = TestKey::rsa("ps512", RSA_A).jwk;
    ps512["alg"] = "PS512".into();
    let weak = json!({"kty": "RSA", "kid": "weak", "e": "AQAB",
                      "n": URL_SAFE_NO_PAD.encode([0xc1u8; 128])});
    let mut short_x = TestKey::es256("short").jwk;
    short_x["x"] = "AQAB".into();
    let mut mismatch = TestKey::es256("mismatch").jwk;
    mismatch["alg"] = "RS256".into();
    let dup = TestKey::es256("good").jwk;
    let set = parse(json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        enc, oaep, ops, p521, x448, ps512, weak, short_x, mismatch,
        es.jwk, dup, "not an object", {"kid": "nokty"}
    ]}))
    .expect("one usable key");
    assert_eq!(set.len(), 1);
    assert_eq!(set.only().and_then(|k| k.kid.as_deref()), Some("good"));
    let reasons: Vec<(Option<&str>, &str)> = set
        .skipped()
        .iter()
        .map(|s| (s.kid.as_deref(), s.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some("hmac"), "unsupported_type"),
            (Some("enc"), "not_for_signatures"),
            (Some("oaep"), "not_for_signatures"),
            (Some("ops"), "not_for_signatures"),
            (Some("p521"), "unsupported_curve"),
            (Some("x448"), "unsupported_curve"),
            (Some("ps512"), "unsupported_alg"),
            (Some("weak"), "rsa_size"),
            (Some("short"), "malformed"),
            (Some("mismatch"), "malformed"),
            (Some("good"), "duplicate_kid"),
            (None, "malformed"),
            (Some("nokty"), "malformed"),
        ]
    );
}

#[test]
fn whole_set_errors() {
    assert!(matches!(
        JwksSet::parse(b"{\"keys\": [}"),
        Err(JwksError::Json {
            line: 1,
            column: 11,
            ..
        })
    ));
    for v in [
        json!([]),
        json!({"keys": {}}),
        json!({"key": []}),
        json!("x"),
    ] {
        assert_eq!(parse(v).err(), Some(JwksError::NotASet));
    }
    let e = parse(json!({"keys": []})).expect_err("empty");
    assert_eq!(e, JwksError::NoUsableKey(Vec::new()));
    let e = parse(json!({"keys": [{"kty": "oct", "k": "eA"}]})).expect_err("no usable");
    assert_eq!(
        e.to_string(),
        "no usable signing key (RSA of 2048 bits or more, EC P-256 or P-384, Ed25519); \
         skipped keys[0]: a key type other than RSA, EC and OKP"
    );
    let big = vec![b' '; MAX_JWKS_BYTES + 1];
    assert_eq!(JwksSet::parse(&big).err(), Some(JwksError::TooLarge));
}

#[test]
fn keeps_at_most_max_keys() {
    let key = TestKey::es256("k").jwk;
    let keys: Vec<serde_json::Value> = (0..MAX_KEYS + 5)
        .map(|i| {
            let mut k = key.clone();
            k["kid"] = format!("k{i}").into();
            k
        })
        .collect();
    let set = parse(json!({ "keys": keys })).expect("set");
    assert_eq!(set.len(), MAX_KEYS);
    assert_eq!(set.skipped().len(), 5);
    assert!(set
        .skipped()
        .iter()
        .all(|s| s.reason == SkipReason::TooMany));
}

#[test]
fn the_digest_follows_the_content() {
    let a = TestKey::es256("a").jwk;
    let b = TestKey::es256("b").jwk;
    let one = parse(json!({"keys": [a.clone()]})).expect("set");
    let same = parse(json!({"keys": [a.clone()]})).expect("set");
    let two = parse(json!({"keys": [a, b]})).expect("set");
    assert_eq!(one.digest(), same.digest());
    assert_ne!(one.digest(), two.digest());
}
