//! Properties of identity tokens, checked with proptest:
//!
//! - the shape rule: a credential without exactly two dots is never a
//!   token, ordinary keys never are, and any JSON object with `alg` as the
//!   first part makes a three-part credential one;
//! - a token changed in any single character never verifies, whatever the
//!   character and wherever it is;
//! - the scopes a verified token holds are always within what its
//!   organisation allows, whatever its scopes claim holds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::Config;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use scopegate::identity::keys::{parse_keys_str, OrgIdx, Snapshot};
use scopegate::identity::scopes::ScopeRegistry;
use scopegate::identity::token::{is_token, verify, JwksSet};

const CASES: u32 = 256;
const NOW: i64 = 1_800_000_000_000;

struct World {
    snap: Snapshot,
    sets: HashMap<OrgIdx, Arc<JwksSet>>,
    key: EncodingKey,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let keys = "\
organisations:
  - id: org_a
    workspaces: [{ id: ws_a, slug: a }]
    identity_tokens:
      issuer: https://idp.a/
      audience: scopegate
      jwks_file: unused.json
      scopes_allowed: [completions.write, \"logs.*\", configs.read]
keys: []
";
    let snap = parse_keys_str(keys, Path::new("keys.yaml"), &ScopeRegistry::builtin())
        .expect("valid keys file");
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("generates");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("reads");
    let point = pair.public_key().as_ref();
    let set = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}]});
    let set = JwksSet::parse(set.to_string().as_bytes()).expect("usable set");
    World {
        snap,
        sets: HashMap::from([(OrgIdx(0), Arc::new(set))]),
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
    }
});

fn sign(claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k".into());
    jsonwebtoken::encode(&header, claims, &WORLD.key).expect("signs")
}

fn claims(scope: Value) -> Value {
    json!({"iss": "https://idp.a/", "aud": "scopegate", "sub": "alice",
           "exp": NOW / 1000 + 600, "workspace_slug": "a", "scope": scope})
}

/// A JSON value of bounded depth.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "completions.write",
            "logs.*",
            "*",
            "openid",
            "audit_logs.list",
            "workspace_user_api_keys.create",
            "configs.*",
            "logs.view configs.read",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(Config { cases: CASES, ..Config::default() })]

    #[test]
    fn without_exactly_two_dots_nothing_is_a_token(s in "[A-Za-z0-9_.-]{0,64}") {
        if s.matches('.').count() != 2 {
            prop_assert!(!is_token(&s));
        }
    }

    #[test]
    fn keys_are_never_tokens(secret in "[0-9a-f]{64}") {
        let key = format!("sgk-{secret}");
        prop_assert!(!is_token(&key));
    }

    #[test]
    fn an_object_with_alg_first_makes_a_token(
        alg in json_value(),
        extra in prop::collection::btree_map("[a-z]{1,5}", json_value(), 0..3),
        payload in "[A-Za-z0-9_-]{1,40}",
        signature in "[A-Za-z0-9_-]{0,40}",
    ) {
        let mut header: serde_json::Map<String, Value> = extra.into_iter().collect();
        header.insert("alg".into(), alg);
        let first = URL_SAFE_NO_PAD.encode(Value::Object(header).to_string());
        let credential = format!("{first}.{payload}.{signature}");
        prop_assert!(is_token(&credential));
    }

    #[test]
    fn a_token_changed_anywhere_never_verifies(
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.".chars().collect::<Vec<_>>()
        ),
    ) {
        let token = sign(&claims(json!("completions.write")));
        prop_assert!(verify(&token, NOW, &WORLD.snap, &WORLD.sets).is_ok());
        let i = at.index(token.len());
        let mut changed = token.clone().into_bytes();
        prop_assume!(changed[i] != with as u8);
        changed[i] = with as u8;
        let changed = String::from_utf8(changed).expect("ASCII");
        prop_assert!(verify(&changed, NOW, &WORLD.snap, &WORLD.sets).is_err(), "{}", changed);
    }

    #[test]
    fn scopes_stay_within_what_the_organisation_allows(scope in json_value()) {
        let token = sign(&claims(scope));
        let id = verify(&token, NOW, &WORLD.snap, &WORLD.sets).expect("verifies");
        let allowed = &WORLD.snap.identity().for_org(OrgIdx(0)).expect("settings").allowed;
        prop_assert!(allowed.contains_all(&id.scopes));
    }
}
