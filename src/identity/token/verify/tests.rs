use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::identity::scopes::ScopeRegistry;
use crate::identity::token::testing::{
    good_claims, jwks, raw_token, sets, snapshot_with, TestKey, NOW, NOW_S, RSA_A, RSA_B,
};

/// The keys every test signs with, and org_a's and org_b's sets.
struct World {
    rsa: TestKey,
    es: TestKey,
    ed: TestKey,
    snap: Snapshot,
    sets: HashMap<OrgIdx, Arc<JwksSet>>,
}

fn world_with(extra_a: &str) -> World {
    let rsa = TestKey::rsa("rsa", RSA_A);
    let es = TestKey::es256("es");
    let ed = TestKey::ed25519("ed");
    let sets = sets(jwks(&[&rsa, &es, &ed]), jwks(&[&es]));
    World {
        rsa,
        es,
        ed,
        snap: snapshot_with(extra_a),
        sets,
    }
}

fn world() -> World {
    world_with("")
}

impl World {
    fn verify(&self, token: &str) -> Result<VerifiedIdentity, TokenError> {
        verify(token, NOW, &self.snap, &self.sets)
    }

    fn verify_at(&self, token: &str, now: UnixMillis) -> Result<VerifiedIdentity, TokenError> {
        verify(token, now, &self.snap, &self.sets)
    }
}

/// Asserts a refusal by `check` answered as `failure`; returns the error.
#[track_caller]
fn refused(
    result: Result<VerifiedIdentity, TokenError>,
    check: Check,
    failure: Failure,
) -> TokenError {
    match result {
        Ok(id) => panic!("expected a refusal at {check}, got {id:?}"),
        Err(e) => {
            assert_eq!((e.check, e.failure), (check, failure), "{e}");
            e
        }
    }
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().expect("object").iter() {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn names(scopes: &ScopeSet) -> Vec<String> {
    ScopeRegistry::builtin()
        .names_of(scopes)
        .into_iter()
        .map(String::from)
        .collect()
}

#[test]
fn rs256_es256_and_eddsa_tokens_verify_into_an_identity() {
    let w = world();
    for key in [&w.rsa, &w.es, &w.ed] {
        let id = w.verify(&key.sign(&good_claims())).expect("verifies");
        assert_eq!(&*w.snap.organisation(id.organisation).id, "org_a");
        assert_eq!(&*w.snap.workspace(id.workspace).id, "ws_a1");
        assert_eq!(&*id.subject, "alice");
        assert_eq!(id.key_id(), "token:alice");
        assert_eq!(id.key_type, KeyType::WorkspaceUser);
        assert_eq!(id.user_id.as_deref(), Some("alice"));
        assert_eq!(names(&id.scopes), ["completions.write", "logs.view"]);
        assert_eq!(id.expires_at, (NOW_S + 3600) * 1000);
        assert_eq!(id.valid_until, (NOW_S + 3600 + 30) * 1000);
    }
}

#[test]
fn other_listed_algorithms_verify_only_when_listed() {
    let w = world_with("algorithms: [RS384, RS512, PS256, ES384]");
    let es384 = TestKey::es384("es384");
    let rsa = TestKey::rsa("rsa", RSA_A);
    let mut w = w;
    w.sets = sets(jwks(&[&rsa, &es384]), jwks(&[&w.es]));
    for alg in [Algorithm::RS384, Algorithm::RS512, Algorithm::PS256] {
        let key = TestKey::rsa("rsa", RSA_A).with_alg(alg);
        w.verify(&key.sign(&good_claims()))
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
    w.verify(&es384.sign(&good_claims())).expect("ES384");
    // RS256 is no longer listed.
    let e = refused(
        w.verify(&rsa.sign(&good_claims())),
        Check::Algorithm,
        Failure::Invalid,
    );
    assert!(e.message.contains("(RS384, RS512, PS256, ES384)"), "{e}");
    // By default, ES384 and PS256 are not accepted.
    let d = world();
    let mut d_sets = d.sets.clone();
    d_sets.insert(OrgIdx(0), Arc::new(jwks(&[&rsa, &es384])));
    for token in [
        es384.sign(&good_claims()),
        TestKey::rsa("rsa", RSA_A)
            .with_alg(Algorithm::PS256)
            .sign(&good_claims()),
    ] {
        refused(
            verify(&token, NOW, &d.snap, &d_sets),
            Check::Algorithm,
            Failure::Invalid,
        );
    }
}

#[test]
fn format_failures() {
    let w = world();
    let good = w.es.sign(&good_claims());
    let (h, rest) = good.split_once('.').expect("parts");
    let (_, sig) = rest.split_once('.').expect("parts");
    for token in [
        "sgk-abc".to_string(),
        "a.b".to_string(),
        format!("{h}.%%%.{sig}"),
        format!("{h}.{}.{sig}", "A".repeat(MAX_TOKEN_BYTES)),
        raw_token(r#"{"alg":"ES256","kid":"es"}"#, "[1,2]", b"x"),
        raw_token(r#"{"alg":"ES256","kid":"es"}"#, "not json", b"x"),
        raw_token(r#"{"kid":"es"}"#, "{}", b"x"),
        raw_token(
            r#"{"alg":"ES256","kid":"es","crit":["exp"]}"#,
            &good_claims().to_string(),
            b"x",
        ),
    ] {
        refused(w.verify(&token), Check::Format, Failure::Invalid);
    }
}

#[test]
fn the_issuer_chooses_the_organisation_and_its_keys() {
    let w = world();
    refused(
        w.verify(&w.es.sign(&with(good_claims(), json!({"iss": null})))),
        Check::Issuer,
        Failure::Invalid,
    );
    refused(
        w.verify(
            &w.es
                .sign(&with(good_claims(), json!({"iss": "https://evil/"}))),
        ),
        Check::Issuer,
        Failure::Invalid,
    );
    refused(
        w.verify(
            &w.es
                .sign(&with(good_claims(), json!({"iss": ["https://idp.a/"]}))),
        ),
        Check::Issuer,
        Failure::Invalid,
    );
    // Exact comparison: no trailing-slash or case leniency.
    refused(
        w.verify(
            &w.es
                .sign(&with(good_claims(), json!({"iss": "https://idp.a"}))),
        ),
        Check::Issuer,
        Failure::Invalid,
    );
    // org_b's tokens verify with org_b's set only: the RSA key is in
    // org_a's set, not org_b's.
    let b = with(
        good_claims(),
        json!({"iss": "https://idp.b/", "workspace_slug": "ws_b1"}),
    );
    let id = w.verify(&w.es.sign(&b)).expect("org_b");
    assert_eq!(&*w.snap.organisation(id.organisation).id, "org_b");
    assert_eq!(id.key_type, KeyType::WorkspaceService);
    assert_eq!(id.user_id, None);
    let e = refused(w.verify(&w.rsa.sign(&b)), Check::KeyId, Failure::Invalid);
    assert_eq!(e.organisation, Some(OrgIdx(1)));
}

#[test]
fn no_set_yet_means_unavailable() {
    let mut w = world();
    w.sets.remove(&OrgIdx(0));
    let e = refused(
        w.verify(&w.es.sign(&good_claims())),
        Check::Keys,
        Failure::Unavailable,
    );
    assert_eq!(
        (e.failure.status(), e.failure.code()),
        (503, "identity_unavailable")
    );
    assert_eq!(e.failure.as_str(), "unavailable");
}

#[test]
fn unsigned_and_hmac_tokens_never_verify() {
    let w = world();
    let claims = good_claims().to_string();
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"None","kid":"rsa"}"#,
        r#"{"alg":"HS256","kid":"rsa"}"#,
    ] {
        refused(
            w.verify(&raw_token(header, &claims, b"")),
            Check::Algorithm,
            Failure::Invalid,
        );
    }
    // The classic confusion: an HS256 token whose HMAC secret is the RSA
    // public key (as DER, and as the JWK's modulus), naming the RSA key.
    for secret in [
        w.rsa.public.clone(),
        w.rsa.jwk["n"].as_str().unwrap_or("").as_bytes().to_vec(),
    ] {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let mut header = Header::new(alg);
            header.kid = Some("rsa".into());
            let token =
                jsonwebtoken::encode(&header, &good_claims(), &EncodingKey::from_secret(&secret))
                    .expect("signs");
            let e = refused(w.verify(&token), Check::Algorithm, Failure::Invalid);
            assert!(e.message.contains("never accepted"), "{e}");
        }
    }
    // Other alg values.
    for header in [
        r#"{"alg":5,"kid":"es"}"#,
        r#"{"alg":"ES512","kid":"es"}"#,
        r#"{"alg":"es256","kid":"es"}"#,
    ] {
        refused(
            w.verify(&raw_token(header, &claims, b"sig")),
            Check::Algorithm,
            Failure::Invalid,
        );
    }
}

#[test]
fn kid_rules() {
    let w = world();
    let e = refused(
        w.verify(&TestKey::es256("nope").sign(&good_claims())),
        Check::KeyId,
        Failure::Invalid,
    );
    assert!(e.unknown_kid, "an unknown kid may trigger a refresh");
    // No kid: only when the set holds one key (org_b's).
    let b = with(
        good_claims(),
        json!({"iss": "https://idp.b/", "workspace_slug": "ws_b1"}),
    );
    let no_kid = |key: &TestKey, claims: &Value| key.sign_with(&Header::new(key.alg), claims);
    w.verify(&no_kid(&w.es, &b)).expect("one key, no kid");
    let e = refused(
        w.verify(&no_kid(&w.es, &good_claims())),
        Check::KeyId,
        Failure::Invalid,
    );
    assert!(e.message.contains("holds 3 keys") && !e.unknown_kid, "{e}");
    // A kid that is not a string.
    let claims = good_claims().to_string();
    refused(
        w.verify(&raw_token(r#"{"alg":"ES256","kid":7}"#, &claims, b"x")),
        Check::KeyId,
        Failure::Invalid,
    );
    // A kid naming a key of another kind than alg needs.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("rsa".into());
    let e = refused(
        w.verify(&w.es.sign_with(&header, &good_claims())),
        Check::KeyId,
        Failure::Invalid,
    );
    assert!(
        e.message.contains("RSA-2048 key that cannot verify ES256"),
        "{e}"
    );
    // A JWK whose own alg differs from the token's.
    let mut jwk = w.rsa.jwk.clone();
    jwk["alg"] = "RS512".into();
    let set = JwksSet::parse(json!({"keys": [jwk]}).to_string().as_bytes()).expect("set");
    let mut sets = w.sets.clone();
    sets.insert(OrgIdx(0), Arc::new(set));
    refused(
        verify(&w.rsa.sign(&good_claims()), NOW, &w.snap, &sets),
        Check::KeyId,
        Failure::Invalid,
    );
}

#[test]
fn signatures_must_verify() {
    let w = world();
    let token = w.rsa.sign(&good_claims());
    let (h, rest) = token.split_once('.').expect("parts");
    let (_, sig) = rest.split_once('.').expect("parts");
    // Claims changed after signing.
    let forged = raw_token(
        r#"{"alg":"RS256","typ":"JWT","kid":"rsa"}"#,
        &with(good_claims(), json!({"sub": "admin"})).to_string(),
        b"",
    );
    let (_, forged_payload) = forged.split_once('.').expect("parts");
    let (forged_payload, _) = forged_payload.split_once('.').expect("parts");
    refused(
        w.verify(&format!("{h}.{forged_payload}.{sig}")),
        Check::Signature,
        Failure::Invalid,
    );
    // Another key under the set's kid.
    for impostor in [
        TestKey::rsa("rsa", RSA_B),
        TestKey::es256("es"),
        TestKey::ed25519("ed"),
    ] {
        refused(
            w.verify(&impostor.sign(&good_claims())),
            Check::Signature,
            Failure::Invalid,
        );
    }
    // A signature that is not base64url, or empty.
    refused(
        w.verify(&format!("{h}.{}.", token.split('.').nth(1).unwrap_or(""))),
        Check::Signature,
        Failure::Invalid,
    );
    // ES256 signatures are not malleable into acceptance by truncation.
    let es = w.es.sign(&good_claims());
    refused(
        w.verify(&es[..es.len() - 2]),
        Check::Signature,
        Failure::Invalid,
    );
}

#[test]
fn audience_string_or_array() {
    let w = world();
    w.verify(
        &w.es
            .sign(&with(good_claims(), json!({"aud": ["x", "scopegate"]}))),
    )
    .expect("array");
    for aud in [
        json!("other"),
        json!(["other"]),
        Value::Null,
        json!("scopegate "),
    ] {
        refused(
            w.verify(&w.es.sign(&with(good_claims(), json!({ "aud": aud })))),
            Check::Audience,
            Failure::Invalid,
        );
    }
}

#[test]
fn expiry_with_leeway_edges() {
    let w = world();
    let exp = NOW_S + 10;
    let token = w.es.sign(&with(good_claims(), json!({ "exp": exp })));
    let edge = (exp + 30) * 1000;
    w.verify_at(&token, edge - 1).expect("within the leeway");
    let e = refused(w.verify_at(&token, edge), Check::Expiry, Failure::Expired);
    assert_eq!(e.failure.code(), "expired_api_key");
    refused(
        w.verify_at(&token, edge + 86_400_000),
        Check::Expiry,
        Failure::Expired,
    );
    // Missing or malformed exp is invalid, not expired.
    refused(
        w.verify(&w.es.sign(&with(good_claims(), json!({"exp": null})))),
        Check::Expiry,
        Failure::Invalid,
    );
    refused(
        w.verify(&w.es.sign(&with(good_claims(), json!({"exp": "soon"})))),
        Check::Expiry,
        Failure::Invalid,
    );
    // Fractional seconds count.
    let token =
        w.es.sign(&with(good_claims(), json!({ "exp": exp as f64 + 0.5 })));
    w.verify_at(&token, edge + 499).expect("half a second more");
    refused(
        w.verify_at(&token, edge + 500),
        Check::Expiry,
        Failure::Expired,
    );
    // No leeway.
    let z = world_with("leeway_seconds: 0");
    let token = z.es.sign(&with(good_claims(), json!({ "exp": exp })));
    z.verify_at(&token, exp * 1000 - 1).expect("just before");
    refused(
        z.verify_at(&token, exp * 1000),
        Check::Expiry,
        Failure::Expired,
    );
}

#[test]
fn not_before_and_issued_at_with_leeway_edges() {
    let w = world();
    for (claim, check) in [("nbf", Check::NotBefore), ("iat", Check::IssuedAt)] {
        let at = |t: i64| w.es.sign(&with(good_claims(), json!({ claim: t })));
        w.verify(&at(NOW_S + 30)).expect("at the leeway");
        refused(w.verify(&at(NOW_S + 31)), check, Failure::Invalid);
        w.verify(&at(NOW_S - 86_400)).expect("in the past");
        refused(
            w.verify(&w.es.sign(&with(good_claims(), json!({ claim: "now" })))),
            check,
            Failure::Invalid,
        );
        // Absent is fine.
        w.verify(&w.es.sign(&with(good_claims(), json!({ claim: null }))))
            .expect("absent");
    }
}

#[test]
fn subject_shapes() {
    let w = world();
    for sub in [
        Value::Null,
        json!(""),
        json!("has space"),
        json!("é"),
        json!("a\u{7}"),
        json!(42),
        json!("x".repeat(257)),
    ] {
        refused(
            w.verify(&w.es.sign(&with(good_claims(), json!({ "sub": sub })))),
            Check::Subject,
            Failure::Invalid,
        );
    }
    let long = "x".repeat(256);
    let id = w
        .verify(&w.es.sign(&with(good_claims(), json!({ "sub": long }))))
        .expect("256 characters");
    assert_eq!(id.subject.len(), 256);
}

#[test]
fn revoked_subjects_are_refused_as_revoked() {
    let w = world_with("revoked_subjects: [alice]");
    let e = refused(
        w.verify(&w.es.sign(&good_claims())),
        Check::Revoked,
        Failure::Revoked,
    );
    assert_eq!(e.failure.code(), "revoked_api_key");
    w.verify(&w.es.sign(&with(good_claims(), json!({"sub": "bob"}))))
        .expect("others pass");
}

#[test]
fn workspace_claim_by_id_slug_and_fallback() {
    let w = world();
    let ws = |claims: Value| {
        w.verify(&w.es.sign(&claims))
            .map(|id| w.snap.workspace(id.workspace).id.to_string())
    };
    assert_eq!(
        ws(with(good_claims(), json!({"workspace_slug": "ws_a2"})))
            .ok()
            .as_deref(),
        Some("ws_a2")
    );
    assert_eq!(
        ws(with(
            good_claims(),
            json!({"workspace_slug": null, "portkey_workspace": "a1"})
        ))
        .ok()
        .as_deref(),
        Some("ws_a1")
    );
    for value in [
        Value::Null,
        json!("ws_b1"),
        json!("nope"),
        json!(["a1"]),
        json!(""),
    ] {
        refused(
            w.verify(
                &w.es
                    .sign(&with(good_claims(), json!({ "workspace_slug": value }))),
            ),
            Check::Workspace,
            Failure::Invalid,
        );
    }
    // A configured claim name.
    let c = world_with("claims: { workspace: team }");
    let id = c
        .verify(&c.es.sign(&with(
            good_claims(),
            json!({"workspace_slug": null, "team": "ws_a2"}),
        )))
        .expect("named claim");
    assert_eq!(&*c.snap.workspace(id.workspace).id, "ws_a2");
}

#[test]
fn the_user_claim_names_the_subject() {
    let w = world_with("claims: { user: oid }\nrevoked_subjects: [u-bad]");
    let id = w
        .verify(&w.es.sign(&with(good_claims(), json!({"oid": "u-123"}))))
        .expect("oid");
    // One subject: counters, `token:<subject>` and the user id agree.
    assert_eq!(&*id.subject, "u-123");
    assert_eq!(id.user_id.as_deref(), Some("u-123"));
    assert_eq!(id.key_id(), "token:u-123");
    let e = refused(
        w.verify(&w.es.sign(&good_claims())),
        Check::Subject,
        Failure::Invalid,
    );
    assert!(e.message.contains("claim `oid`"), "{}", e.message);
    refused(
        w.verify(&w.es.sign(&with(good_claims(), json!({"oid": "a b"})))),
        Check::Subject,
        Failure::Invalid,
    );
    refused(
        w.verify(&w.es.sign(&with(good_claims(), json!({"oid": "u-bad"})))),
        Check::Revoked,
        Failure::Revoked,
    );
}

#[test]
fn without_keys_a_refusal_for_good_comes_before_unavailable() {
    let mut w = world_with("revoked_subjects: [mallory]");
    w.sets.remove(&OrgIdx(0));
    let past = with(good_claims(), json!({"exp": NOW_S - 3600}));
    refused(w.verify(&w.es.sign(&past)), Check::Expiry, Failure::Expired);
    let revoked = with(good_claims(), json!({"sub": "mallory"}));
    refused(
        w.verify(&w.es.sign(&revoked)),
        Check::Revoked,
        Failure::Revoked,
    );
    let aud = with(good_claims(), json!({"aud": "other"}));
    refused(
        w.verify(&w.es.sign(&aud)),
        Check::Audience,
        Failure::Invalid,
    );
    refused(
        w.verify(&raw_token(
            r#"{"alg":"HS256"}"#,
            &good_claims().to_string(),
            b"x",
        )),
        Check::Algorithm,
        Failure::Invalid,
    );
    // The workspace is not looked up for an unverified token.
    let ws = with(good_claims(), json!({"workspace_slug": "nope"}));
    refused(w.verify(&w.es.sign(&ws)), Check::Keys, Failure::Unavailable);
}

#[test]
fn scopes_are_filtered_and_expanded() {
    let w = world();
    let scopes = |value: Value| {
        names(
            &w.verify(&w.es.sign(&with(good_claims(), json!({ "scope": value }))))
                .expect("verifies")
                .scopes,
        )
    };
    assert_eq!(
        scopes(json!(["completions.write", 5, "openid"])),
        ["completions.write"]
    );
    assert_eq!(
        scopes(json!(
            "audit_logs.list workspace_user_api_keys.create email"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        scopes(json!("logs.*")),
        ["logs.write", "logs.list", "logs.view", "logs.export"]
    );
    let all = scopes(json!("*"));
    assert!(
        all.contains(&"completions.write".to_string()) && all.contains(&"configs.read".to_string())
    );
    assert!(!all.contains(&"audit_logs.list".to_string()));
    assert!(!all.contains(&"workspace_user_api_keys.create".to_string()));
    assert_eq!(scopes(Value::Null), Vec::<String>::new());
    // `scopes` when the named claim is absent.
    let id = w
        .verify(&w.es.sign(&with(
            good_claims(),
            json!({"scope": null, "scopes": ["logs.view"]}),
        )))
        .expect("verifies");
    assert_eq!(names(&id.scopes), ["logs.view"]);
    // scopes_allowed caps, also wildcards.
    let c = world_with("scopes_allowed: [completions.write]");
    let id = c
        .verify(
            &c.es
                .sign(&with(good_claims(), json!({"scope": "* logs.view"}))),
        )
        .expect("verifies");
    assert_eq!(names(&id.scopes), ["completions.write"]);
    // A service token may hold service-only scopes.
    let b = with(
        good_claims(),
        json!({"iss": "https://idp.b/", "workspace_slug": "ws_b1", "scope": "workspace_user_api_keys.create"}),
    );
    let id = w.verify(&w.es.sign(&b)).expect("org_b");
    assert_eq!(names(&id.scopes), ["workspace_user_api_keys.create"]);
}

#[test]
fn limits_come_from_the_organisation() {
    let w = world_with("models: [\"gpt-4o-mini\"]\nrate_limits: [{ type: requests, unit: rpm, value: 60 }]\nusage_limits: { type: tokens, credit_limit: 1000 }\nmax_concurrent_requests: 3");
    let id = w.verify(&w.es.sign(&good_claims())).expect("verifies");
    assert_eq!(id.rate_limits().len(), 1);
    assert_eq!(id.limits().max_concurrent, Some(3));
    assert!(id.limits().allows_model("gpt-4o-mini") && !id.limits().allows_model("o1"));
    assert!(id.limits().usage.is_some());
}

#[test]
fn messages_never_quote_the_token() {
    let w = world_with("revoked_subjects: [secret-subject-1]");
    let claims = with(
        good_claims(),
        json!({"sub": "secret-subject-1", "workspace_slug": "secret-ws-2", "aud": "secret-aud-3"}),
    );
    let tokens = [
        w.es.sign(&claims),
        w.es.sign(&with(claims.clone(), json!({"aud": "scopegate"}))),
        w.es.sign(&with(
            claims.clone(),
            json!({"aud": "scopegate", "sub": "bob"}),
        )),
        TestKey::es256("secret-kid-4").sign(&claims),
        raw_token(r#"{"alg":"secret-alg-5"}"#, &claims.to_string(), b""),
    ];
    for token in &tokens {
        let e = w.verify(token).expect_err("refused");
        let text = e.to_string();
        assert!(
            !text.contains("secret-") && !text.contains(&token[..20]),
            "{text}"
        );
    }
}

#[test]
fn a_verified_identity_holds_until_its_settings_or_its_set_change() {
    let w = world();
    let id = w.verify(&w.es.sign(&good_claims())).expect("verifies");
    assert!(id.still_holds(&w.snap, &w.sets));
    // The same keys file parsed again, and org_b's set replaced: nothing it
    // depends on changed.
    let mut other = w.sets.clone();
    other.insert(OrgIdx(1), Arc::new(jwks(&[&w.ed])));
    assert!(id.still_holds(&snapshot_with(""), &other));
    // Its organisation's set changed (a key withdrawn or added).
    let mut changed = w.sets.clone();
    changed.insert(OrgIdx(0), Arc::new(jwks(&[&w.es])));
    assert!(!id.still_holds(&w.snap, &changed));
    let mut gone = w.sets.clone();
    gone.remove(&OrgIdx(0));
    assert!(!id.still_holds(&w.snap, &gone));
    // The identity settings changed: a revocation, say.
    assert!(!id.still_holds(&snapshot_with("revoked_subjects: [bob]"), &w.sets));
}
