//! Criterion benches of identity tokens: uncached verification of RS256
//! (RSA-2048), ES256 and EdDSA tokens, the shape rule on an ordinary key
//! and on a token, a cache hit (SHA-256 of the token and a lookup), and,
//! printed once before the benches, the memory of a cache of 100,000
//! verified tokens (the cache's own count, and the process's RSS growth).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

use scopegate::identity::keys::{parse_keys_str, OrgIdx, Snapshot};
use scopegate::identity::scopes::ScopeRegistry;
use scopegate::identity::token::{is_token, verify, JwksSet, TokenCache, VerifiedIdentity};

const NOW: i64 = 1_800_000_000_000;
const RSA: &[u8] = include_bytes!("../tests/fixtures/jwt/rsa2048_a.der");

struct World {
    snap: Snapshot,
    sets: HashMap<OrgIdx, Arc<JwksSet>>,
    /// A token per algorithm.
    tokens: Vec<(&'static str, String)>,
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn claims(sub: &str) -> Value {
    json!({"iss": "https://idp.bench/", "aud": "scopegate", "sub": sub,
           "exp": NOW / 1000 + 3600, "iat": NOW / 1000 - 60, "nbf": NOW / 1000 - 60,
           "workspace_slug": "research", "scope": "openid profile completions.write logs.view"})
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).expect("signs")
}

fn world() -> World {
    let keys = KEYS;
    let snap = parse_keys_str(keys, Path::new("keys.yaml"), &ScopeRegistry::builtin())
        .expect("valid keys file");
    world_with(snap)
}

const KEYS: &str = "\
organisations:
  - id: org_bench
    workspaces: [{ id: ws_research, slug: research }]
    identity_tokens:
      issuer: https://idp.bench/
      audience: scopegate
      jwks_file: unused.json
      rate_limits: [{ type: requests, unit: rpm, value: 600 }]
keys:
  - id: key_bench
    type: workspace-user
    workspace_id: ws_research
    user_id: usr_bench
    sha256: \"c6c3d7a7e1f0a2a9b1b0b4e7d6b0e4c2f2e7b4b8e5a9c1d3e5f7a9b1c3d5e7f9\"
    scopes: [completions.write, logs.view]
";

fn world_with(snap: Snapshot) -> World {
    let rng = ring::rand::SystemRandom::new();
    let rsa = RsaKeyPair::from_der(RSA).expect("fixture");
    let rsa_pub: ring::rsa::PublicKeyComponents<Vec<u8>> = rsa.public().into();
    let ec8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
    let ec =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec8.as_ref(), &rng).expect("ec");
    let ed8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("ed");
    let ed = Ed25519KeyPair::from_pkcs8(ed8.as_ref()).expect("ed");
    let point = ec.public_key().as_ref();
    // Three keys in the set, as a provider mid-rotation publishes.
    let set = json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "n": b64(&rsa_pub.n), "e": b64(&rsa_pub.e)},
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])},
        {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(ed.public_key().as_ref())},
    ]});
    let set = JwksSet::parse(set.to_string().as_bytes()).expect("usable set");
    let c = claims("00000000-0000-4000-8000-000000000000");
    let tokens = vec![
        (
            "RS256-2048",
            sign(Algorithm::RS256, "rsa", &EncodingKey::from_rsa_der(RSA), &c),
        ),
        (
            "ES256",
            sign(
                Algorithm::ES256,
                "ec",
                &EncodingKey::from_ec_der(ec8.as_ref()),
                &c,
            ),
        ),
        (
            "EdDSA",
            sign(
                Algorithm::EdDSA,
                "ed",
                &EncodingKey::from_ed_der(ed8.as_ref()),
                &c,
            ),
        ),
    ];
    World {
        snap,
        sets: HashMap::from([(OrgIdx(0), Arc::new(set))]),
        tokens,
    }
}

/// Resident set size, from /proc/self/statm.
fn rss_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Fills a default cache (100,000 entries, 64 MiB) with distinct
/// subjects and prints what it holds.
fn cache_memory(w: &World) {
    let (_, token) = &w.tokens[1];
    let template = verify(token, NOW, &w.snap, &w.sets).expect("verifies");
    let before = rss_bytes();
    let cache = TokenCache::default();
    let generation = cache.generation();
    for i in 0..100_000u32 {
        let mut id: VerifiedIdentity = template.clone();
        // UUID-like subjects, as most providers use.
        let subject: Arc<str> = format!("{i:08x}-0000-4000-8000-000000000000").into();
        id.user_id = Some(subject.clone());
        id.key_id = format!("token:{subject}").into();
        id.counter_id = format!("org_bench/{subject}").into();
        id.subject = subject;
        cache.insert(
            TokenCache::key(&format!("{token}{i}")),
            Arc::new(id),
            generation,
        );
    }
    let after = rss_bytes();
    let growth = match (before, after) {
        (Some(b), Some(a)) => format!("{:.1} MiB", a.saturating_sub(b) as f64 / 1048576.0),
        _ => "unknown".into(),
    };
    println!(
        "token cache: {} entries, {:.1} MiB by its own count, RSS grew {growth}",
        cache.len(),
        cache.approx_bytes() as f64 / 1048576.0
    );
    black_box(&cache);
}

fn benches(c: &mut Criterion) {
    let w = world();
    cache_memory(&w);
    let mut g = c.benchmark_group("verify_uncached");
    for (name, token) in &w.tokens {
        assert!(verify(token, NOW, &w.snap, &w.sets).is_ok(), "{name}");
        g.bench_function(*name, |b| {
            b.iter(|| verify(black_box(token), NOW, &w.snap, &w.sets))
        });
    }
    g.finish();

    // The signature check alone (jsonwebtoken on ring), to tell the
    // crypto from the rest of verification.
    let mut g = c.benchmark_group("signature_only");
    for ((name, token), kid) in w.tokens.iter().zip(["rsa", "ec", "ed"]) {
        let key = w.sets[&OrgIdx(0)].find(kid).expect("key");
        let (input, signature) = token.rsplit_once('.').expect("three parts");
        let alg = match *name {
            "RS256-2048" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let decoding = key.decoding_key();
        g.bench_function(*name, |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(black_box(signature), input.as_bytes(), decoding, alg)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("shape");
    g.bench_function("key", |b| {
        let key = "sgk-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        b.iter(|| is_token(black_box(key)))
    });
    g.bench_function("token", |b| b.iter(|| is_token(black_box(&w.tokens[0].1))));
    g.finish();

    let cache = TokenCache::default();
    let (_, token) = &w.tokens[0];
    let id = Arc::new(verify(token, NOW, &w.snap, &w.sets).expect("verifies"));
    cache.insert(TokenCache::key(token), id, cache.generation());
    c.bench_function("cache_hit", |b| {
        b.iter(|| cache.get(&TokenCache::key(black_box(token)), NOW).is_some())
    });
}

/// The decision for a chat completion by a token found in the cache (the
/// three-part scan, SHA-256 of the token, the cache lookup, the check that
/// it still holds, then the decision) beside the same decision for a key.
fn decision_cached_token_vs_key(c: &mut Criterion) {
    use scopegate::decision::decide::{decide, nothing_used, Body, Outcome, RequestFacts};
    use scopegate::decision::request::{Presented, Upgrade};
    use scopegate::decision::routes::RouteTable;
    use scopegate::identity::keys::KeyStore;
    use scopegate::ops::tokens::TokenKeys;

    let w = world();
    let table = RouteTable::build(&[], true).expect("routes");
    let secret = b"sgk-bench-key";
    // The bench keys file holds a made-up digest: put the real one in.
    let text = KEYS.replace(
        "c6c3d7a7e1f0a2a9b1b0b4e7d6b0e4c2f2e7b4b8e5a9c1d3e5f7a9b1c3d5e7f9",
        &scopegate::identity::keys::digest_hex(secret),
    );
    let snap = parse_keys_str(&text, Path::new("keys.yaml"), &ScopeRegistry::builtin())
        .expect("valid keys file");
    let files = Arc::new(arc_swap::ArcSwap::from_pointee(w.sets.clone()));
    let store = KeyStore::new(snap);
    let tokens = TokenKeys::new(store.clone(), files);
    let snap = store.load();
    let token = &w.tokens[1].1;
    let gen = tokens.cache().generation();
    let id = Arc::new(verify(token, NOW, &snap, &tokens.sets(&snap)).expect("verifies"));
    tokens.cache().insert(TokenCache::key(token), id, gen);
    fn chat<'a>(method: &'a http::Method, key: Presented<'a>) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path: "/v1/chat/completions",
            query: None,
            key,
            content_type: None,
            content_type_repeated: false,
            bad_content_length: false,
            upgrade: Upgrade::None,
            body: Body::Empty,
            now: NOW,
            max_body: 65536,
            max_data_body: 16 * 1024 * 1024,
            used_up: &nothing_used,
        }
    }
    let post = http::Method::POST;
    let facts = |key| chat(&post, key);
    let mut g = c.benchmark_group("decision_chat");
    assert_eq!(
        decide(&table, &snap, &facts(Presented::Secret(secret))).outcome,
        Outcome::Allow
    );
    g.bench_function("key", |b| {
        b.iter(|| decide(&table, &snap, &facts(Presented::Secret(black_box(secret)))))
    });
    let cached = |t: &str| {
        assert!(is_token(t));
        tokens.cached(t, &snap, NOW).expect("cached")
    };
    let hit = cached(token);
    assert_eq!(
        decide(&table, &snap, &chat(&post, Presented::Token(&hit))).outcome,
        Outcome::Allow
    );
    g.bench_function("cached_token", |b| {
        b.iter(|| {
            // As the gateway: the three-part scan, the digest, the cache.
            let t = black_box(token.as_str());
            let outcome = scopegate::identity::token::shape::split(t)
                .and_then(|_| tokens.cached_digest(&TokenCache::key(t), &snap, NOW))
                .expect("cached");
            decide(&table, &snap, &chat(&post, Presented::Token(&outcome)))
        })
    });
    g.finish();
}

criterion_group!(identity, benches, decision_cached_token_vs_key);
criterion_main!(identity);
