//! Identity tokens on the request path (docs/reference.md#identity-tokens):
//! real tokens signed here (RS256, ES256, EdDSA), their JWK sets in a file
//! or served over local HTTPS, every check before the upstream, rotation
//! through the file and the URL, revocation by reload, per-subject limits
//! (two replicas on a real `redis-server`), budgets and `scopegate usage`.
//! A subject's counters across a restart: `identity_restart.rs`.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

use scopegate::identity::keys::digest_hex;

use super::client::{Proto, Response};
use super::fixtures::{BOT, CHAT};
use super::harness::{
    expect_openai_error, expect_portkey_error, poll_until, run_scopegate, Proxy, RedisServer,
    Upstreams,
};

const RSA_A: &[u8] = include_bytes!("../fixtures/jwt/rsa2048_a.der");
const RSA_B: &[u8] = include_bytes!("../fixtures/jwt/rsa2048_b.der");
const ISSUER: &str = "https://idp.test/";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the test's identity provider, with its public JWK.
pub(super) struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    jwk: Value,
    /// The public key as the HMAC-confusion attacker would use it.
    public: Vec<u8>,
}

impl Signer {
    fn rsa(kid: &str, der: &[u8]) -> Signer {
        let pair = RsaKeyPair::from_der(der).expect("fixture is an RSA key");
        let c: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        Signer {
            kid: kid.into(),
            alg: Algorithm::RS256,
            key: EncodingKey::from_rsa_der(der),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(&c.n), "e": b64(&c.e)}),
            public: pair.public().as_ref().to_vec(),
        }
    }

    pub(super) fn es256(kid: &str) -> Signer {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generates");
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("reads");
        let point = pair.public_key().as_ref().to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::ES256,
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256",
                        "x": b64(&point[1..33]), "y": b64(&point[33..])}),
            public: point,
        }
    }

    fn ed25519(kid: &str) -> Signer {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("generates");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("reads");
        let public = pair.public_key().as_ref().to_vec();
        Signer {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&public)}),
            public,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("signs")
    }

    /// A token of `subject` in `research`, valid for ten minutes.
    pub(super) fn token(&self, subject: &str) -> String {
        self.sign(&claims(subject))
    }
}

pub(super) fn jwks(keys: &[&Signer]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys }).to_string()
}

fn now_s() -> i64 {
    scopegate::identity::keys::now_millis() / 1000
}

fn claims(subject: &str) -> Value {
    json!({"iss": ISSUER, "aud": "scopegate", "sub": subject, "exp": now_s() + 600,
           "iat": now_s() - 5, "workspace_slug": "research",
           "scope": "openid email completions.write"})
}

fn with(mut base: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().expect("an object") {
        if v.is_null() {
            base.as_object_mut().expect("object").remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// Writes `text` to `path` by an atomic rename, as an operator's tool does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A keys file: org_acme (workspaces research and prod) accepting tokens
/// of [`ISSUER`] with `source` (the `jwks_file`/`jwks_url` lines) and
/// `extra` (further `identity_tokens` lines, unindented), the workspace
/// `research` with `ws_extra` (unindented), and the key [`BOT`].
pub(super) fn keys_yaml(source: &str, extra: &str, ws_extra: &str) -> String {
    let indent = |text: &str, n: usize| -> String {
        text.lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    format!(
        "organisations:
  - id: org_acme
    workspaces:
      - id: ws_research
        slug: research
{}      - id: ws_prod
    identity_tokens:
      issuer: \"{ISSUER}\"
      audience: scopegate
      revoked_subjects: [mallory]
{}{}keys:
  - id: key_bot
    name: bot
    type: workspace-service
    workspace_id: ws_research
    sha256: \"{}\"
    scopes: [completions.write]
",
        indent(ws_extra, 8),
        indent(source, 6),
        indent(extra, 6),
        digest_hex(BOT.as_bytes()),
    )
}

/// A folder with `jwks.json` holding `set`, and its `jwks_file` line.
pub(super) fn jwks_dir(set: &str) -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, set).expect("write jwks");
    let line = format!("jwks_file: \"{}\"", path.display());
    (dir, path, line)
}

pub(super) fn chat(proxy: &Proxy, proto: Proto, token: &str) -> Response {
    proxy
        .post("/v1/chat/completions")
        .bearer(token)
        .json(CHAT)
        .over(proto)
        .send()
}

#[test]
fn tokens_of_three_algorithms_act_as_workspace_keys_and_never_leak() {
    let (rsa, es, ed) = (
        Signer::rsa("rsa", RSA_A),
        Signer::es256("es"),
        Signer::ed25519("ed"),
    );
    let (_dir, _, source) = jwks_dir(&jwks(&[&rsa, &es, &ed]));
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml(&source, "", ""))
        .env("RUST_LOG", "trace")
        .https()
        .start();
    let mut tokens = Vec::new();
    for proto in Proto::ALL {
        for signer in [&rsa, &es, &ed] {
            let token = signer.token("alice");
            let resp = chat(&proxy, proto, &token);
            assert_eq!(
                resp.status,
                200,
                "{proto:?} {:?}: {}",
                signer.alg,
                resp.text()
            );
            // Again, from the cache.
            assert_eq!(chat(&proxy, proto, &token).status, 200);
            tokens.push(token);
        }
        // Carried by x-api-key too, the way Anthropic's SDKs send a key.
        let resp = proxy
            .post("/v1/chat/completions")
            .header("x-api-key", &ed.token("alice"))
            .json(CHAT)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let seen = up.completions.requests();
    assert_eq!(seen.len(), 14);
    for r in &seen {
        assert_eq!(r.header("x-scopegate-key-id"), Some("token:alice"));
        assert_eq!(r.header("x-scopegate-key-type"), Some("workspace-user"));
        assert_eq!(r.header("x-scopegate-organisation-id"), Some("org_acme"));
        assert_eq!(r.header("x-scopegate-workspace-id"), Some("ws_research"));
        assert_eq!(r.header("x-scopegate-user-id"), Some("alice"));
        assert_eq!(r.header("authorization"), None, "the carrying header goes");
        assert_eq!(r.header("x-api-key"), None, "the carrying header goes");
    }
    // The token is nowhere: not upstream, not in any log line (trace
    // level), not in a metric.
    let metrics = proxy.metrics_get("/metrics").text();
    let logs = proxy.logs();
    for token in &tokens {
        let signature = token.rsplit('.').next().expect("three parts");
        for r in &seen {
            assert!(!format!("{:?}", r.headers).contains(signature));
            assert!(!String::from_utf8_lossy(&r.body).contains(signature));
        }
        assert!(!logs.contains(signature), "a token reached the log");
        assert!(!metrics.contains(signature));
    }
    assert!(
        logs.contains("token:alice"),
        "the access log names the subject"
    );
    assert!(
        !metrics.contains("alice"),
        "no metric label holds a subject"
    );
    assert!(proxy.metric("scopegate_token_verifications_total", &[("result", "ok")]) >= 14.0);
    assert_eq!(
        proxy.metric("scopegate_jwks_keys", &[("organisation", "org_acme")]),
        3.0
    );
}

#[test]
fn every_token_check_refuses_before_any_upstream() {
    let rsa = Signer::rsa("rsa", RSA_A);
    let es = Signer::es256("es");
    let (_dir, _, source) = jwks_dir(&jwks(&[&rsa, &es]));
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml(&source, "", ""))
        .https()
        .start();
    let good = claims("alice");
    // Signed by a key the set does not hold, under a kid it does.
    let impostor = Signer {
        kid: "rsa".into(),
        ..Signer::rsa("rsa", RSA_B)
    };
    let raw = |header: &str, payload: &Value, signature: &[u8]| {
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.to_string().as_bytes()),
            b64(signature)
        )
    };
    // The classic key confusion: HS256 with the RSA public key as the secret.
    let hs256 = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa".into());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(&rsa.public)).expect("signs")
    };
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "expired",
            es.sign(&with(good.clone(), json!({"exp": now_s() - 120}))),
            401,
            "expired_api_key",
            "(exp)",
        ),
        (
            "revoked",
            es.token("mallory"),
            401,
            "revoked_api_key",
            "(revoked)",
        ),
        (
            "audience",
            es.sign(&with(good.clone(), json!({"aud": ["other"]}))),
            401,
            "invalid_api_key",
            "(aud)",
        ),
        (
            "issuer",
            es.sign(&with(good.clone(), json!({"iss": "https://evil.test/"}))),
            401,
            "invalid_api_key",
            "(iss)",
        ),
        (
            "unknown kid",
            Signer::es256("nope").token("alice"),
            401,
            "invalid_api_key",
            "(kid)",
        ),
        (
            "signature",
            impostor.token("alice"),
            401,
            "invalid_api_key",
            "(signature)",
        ),
        (
            "alg none",
            raw(r#"{"alg":"none"}"#, &good, b""),
            401,
            "invalid_api_key",
            "(alg)",
        ),
        (
            "hs256 with the rsa public key",
            hs256,
            401,
            "invalid_api_key",
            "(alg)",
        ),
        (
            "no exp",
            es.sign(&with(good.clone(), json!({"exp": null}))),
            401,
            "invalid_api_key",
            "(exp)",
        ),
        (
            "not yet",
            es.sign(&with(good.clone(), json!({"nbf": now_s() + 600}))),
            401,
            "invalid_api_key",
            "(nbf)",
        ),
        (
            "subject",
            es.sign(&with(good.clone(), json!({"sub": "a b"}))),
            401,
            "invalid_api_key",
            "(sub)",
        ),
        (
            "workspace",
            es.sign(&with(good.clone(), json!({"workspace_slug": "nowhere"}))),
            401,
            "invalid_api_key",
            "(workspace)",
        ),
        (
            "scopes",
            es.sign(&with(good.clone(), json!({"scope": "openid logs.view"}))),
            403,
            "missing_scope",
            "",
        ),
    ];
    for proto in Proto::ALL {
        for (what, token, status, code, check) in &cases {
            let resp = chat(&proxy, proto, token);
            let message = expect_openai_error(&resp, *status, code);
            assert!(message.contains(check), "{what}: {message}");
            let body = resp.text();
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(!body.contains(part), "{what}: the answer quotes the token");
            }
        }
        // A control-plane path answers in Portkey's shape.
        let resp = proxy
            .get("/v1/configs")
            .bearer(&cases[0].1)
            .over(proto)
            .send();
        expect_portkey_error(&resp, 401, "expired_api_key");
        // A token in another workspace than the request names.
        let configs = es.sign(&with(good.clone(), json!({"scope": "configs.list"})));
        let resp = proxy
            .get("/v1/configs?workspace_id=ws_prod")
            .bearer(&configs)
            .over(proto)
            .send();
        expect_portkey_error(&resp, 403, "workspace_mismatch");
    }
    up.assert_untouched();
    assert!(
        proxy.metric(
            "scopegate_token_verifications_total",
            &[("result", "invalid")]
        ) >= 20.0
    );
    assert!(
        proxy.metric(
            "scopegate_token_verifications_total",
            &[("result", "expired")]
        ) >= 2.0
    );
    assert!(
        proxy.metric(
            "scopegate_token_verifications_total",
            &[("result", "revoked")]
        ) >= 2.0
    );
}

/// A JWK set server over HTTPS on 127.0.0.1 (the fixture certificate for
/// `localhost`), answering every request with the status and body set
/// last, counting the requests.
struct JwksServer {
    addr: SocketAddr,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn tls_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

impl JwksServer {
    fn start(status: u16, body: &str) -> JwksServer {
        use rustls_pki_types::pem::PemObject as _;
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(tls_fixture("server.pem"))
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_file(tls_fixture("server.key")).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let answer = Arc::new(Mutex::new((status, body.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = thread::spawn({
            let (answer, hits) = (answer.clone(), hits.clone());
            move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    let serve = async {
                        loop {
                            let Ok((tcp, _)) = listener.accept().await else {
                                continue;
                            };
                            let (acceptor, answer, hits) =
                                (acceptor.clone(), answer.clone(), hits.clone());
                            tokio::spawn(async move {
                                let Ok(mut tls) = acceptor.accept(tcp).await else {
                                    return;
                                };
                                let mut head = Vec::new();
                                let mut byte = [0u8; 1];
                                while !head.ends_with(b"\r\n\r\n") {
                                    match tls.read(&mut byte).await {
                                        Ok(1) => head.push(byte[0]),
                                        _ => return,
                                    }
                                }
                                hits.fetch_add(1, Ordering::SeqCst);
                                let (status, body) = answer.lock().expect("answer").clone();
                                let reply = format!(
                                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = tls.write_all(reply.as_bytes()).await;
                                let _ = tls.shutdown().await;
                            });
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve => {}
                    }
                });
            }
        });
        JwksServer {
            addr,
            answer,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn set(&self, status: u16, body: &str) {
        *self.answer.lock().expect("answer") = (status, body.to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The `jwks_url` lines for this server, trusting the fixture CA.
    fn source(&self) -> String {
        format!(
            "jwks_url: \"https://localhost:{}/jwks\"\nca_file: \"{}\"\njwks_refresh_seconds: 3600",
            self.addr.port(),
            tls_fixture("ca.pem").display()
        )
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_jwks_url_is_unavailable_until_fetched_then_follows_rotation_by_unknown_kid() {
    let (k1, k2, k3) = (
        Signer::es256("k1"),
        Signer::ed25519("k2"),
        Signer::rsa("k3", RSA_A),
    );
    let server = JwksServer::start(503, "down");
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml(&server.source(), "", ""))
        .start();
    // Before a first fetch succeeds: 503, except for a token refused for
    // good by a check that needs no key.
    let t1 = k1.token("alice");
    expect_openai_error(&chat(&proxy, Proto::H1, &t1), 503, "identity_unavailable");
    let expired = k1.sign(&with(claims("alice"), json!({"exp": now_s() - 120})));
    expect_openai_error(&chat(&proxy, Proto::H1, &expired), 401, "expired_api_key");
    expect_openai_error(
        &chat(&proxy, Proto::H1, &k1.token("mallory")),
        401,
        "revoked_api_key",
    );
    up.assert_untouched();
    // The provider comes up: the retry (1 s, 2 s, …) picks the set up.
    server.set(200, &jwks(&[&k1]));
    assert!(
        poll_until(Duration::from_secs(15), || chat(&proxy, Proto::H1, &t1)
            .status
            == 200),
        "the set was not fetched after the provider came up"
    );
    assert!(
        proxy.metric(
            "scopegate_jwks_refreshes_total",
            &[("organisation", "org_acme"), ("result", "status")]
        ) >= 1.0
    );
    // A new key: a token naming it has the set fetched at once (once 10 s
    // have passed since the last fetch), long before the hourly refresh.
    server.set(200, &jwks(&[&k1, &k2]));
    let t2 = k2.token("alice");
    assert!(
        poll_until(Duration::from_secs(15), || chat(&proxy, Proto::H1, &t2)
            .status
            == 200),
        "the unknown kid did not have the set fetched"
    );
    // Made-up kids do not hammer the provider: no fetch within 10 s of
    // the last one.
    let before = server.hits();
    let forged = Signer::es256("made-up").token("alice");
    for _ in 0..5 {
        expect_openai_error(&chat(&proxy, Proto::H1, &forged), 401, "invalid_api_key");
    }
    assert_eq!(server.hits(), before, "made-up kids fetched the set again");
    // k1 withdrawn, k3 added: once the set is fetched again (the first
    // token naming k3 after the 10 s gap), k1's tokens — cached ones too —
    // stop verifying.
    server.set(200, &jwks(&[&k2, &k3]));
    let t3 = k3.token("alice");
    assert!(
        poll_until(Duration::from_secs(20), || chat(&proxy, Proto::H1, &t3)
            .status
            == 200),
        "k3 never verified"
    );
    let message = expect_openai_error(&chat(&proxy, Proto::H1, &t1), 401, "invalid_api_key");
    assert!(message.contains("(kid)"), "{message}");
    assert_eq!(
        proxy.metric("scopegate_jwks_keys", &[("organisation", "org_acme")]),
        2.0
    );
    // A failed fetch keeps the last good set.
    server.set(500, "oops");
    assert_eq!(chat(&proxy, Proto::H1, &k2.token("bob")).status, 200);
}

#[test]
fn a_jwks_file_rotates_and_revocation_applies_by_reload() {
    let (k1, k2) = (Signer::es256("k1"), Signer::ed25519("k2"));
    let (_dir, path, source) = jwks_dir(&jwks(&[&k1]));
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml(&source, "", ""))
        .start();
    let (t1, t2) = (k1.token("alice"), k2.token("alice"));
    assert_eq!(chat(&proxy, Proto::H1, &t1).status, 200);
    expect_openai_error(&chat(&proxy, Proto::H1, &t2), 401, "invalid_api_key");
    // Publish k2 beside k1: both verify.
    replace(&path, &jwks(&[&k1, &k2]));
    assert!(poll_until(Duration::from_secs(5), || {
        chat(&proxy, Proto::H1, &t2).status == 200
    }));
    assert_eq!(chat(&proxy, Proto::H1, &t1).status, 200);
    // Withdraw k1: its (cached) token stops verifying within 2 s.
    replace(&path, &jwks(&[&k2]));
    assert!(
        poll_until(Duration::from_secs(2), || {
            chat(&proxy, Proto::H1, &t1).status == 401
        }),
        "a withdrawn key still verified"
    );
    // A bad file keeps the last good set.
    let invalid = || {
        proxy.metric(
            "scopegate_jwks_refreshes_total",
            &[("organisation", "org_acme"), ("result", "invalid")],
        )
    };
    replace(&path, "{ not json");
    assert!(poll_until(Duration::from_secs(5), || invalid() >= 1.0));
    assert_eq!(chat(&proxy, Proto::H1, &t2).status, 200);
    expect_openai_error(&chat(&proxy, Proto::H1, &t1), 401, "invalid_api_key");
    // Revoking a subject by a keys reload refuses its cached token.
    replace(
        &proxy.keys_path(),
        &keys_yaml(&source, "revoked_subjects: [mallory, alice]", "")
            .replace("      revoked_subjects: [mallory]\n", ""),
    );
    assert!(poll_until(Duration::from_secs(5), || {
        chat(&proxy, Proto::H1, &t2).status == 401
    }));
    let forwarded = up.completions.count();
    expect_openai_error(&chat(&proxy, Proto::H1, &t2), 401, "revoked_api_key");
    assert_eq!(chat(&proxy, Proto::H1, &k2.token("bob")).status, 200);
    assert_eq!(
        up.completions.count(),
        forwarded + 1,
        "only bob's request went up"
    );
}

/// `scopegate usage --json` with `proxy`'s config and `args`.
pub(super) fn usage(proxy: &Proxy, args: &[&str]) -> Value {
    let dir = proxy.keys_path().parent().expect("dir").to_path_buf();
    let config = dir.join("scopegate.yaml");
    let mut all = vec![
        "usage",
        "--config",
        config.to_str().expect("utf-8"),
        "--json",
    ];
    all.extend_from_slice(args);
    let run = run_scopegate(&dir, &all);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_default()
}

pub(super) const USAGE_BODY: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;

#[test]
fn each_subject_has_its_own_budget_and_usage_lists_the_subjects() {
    let es = Signer::es256("es");
    let (_dir, _, source) = jwks_dir(&jwks(&[&es]));
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml(
            &source,
            "usage_limits: { type: tokens, credit_limit: 50, periodic_reset: monthly }",
            "",
        ))
        .config("default_output_reservation: 0")
        .https()
        .start();
    let alice = es.token("alice");
    // Over HTTP/2: the body is read, the answer metered, as over HTTP/1.1.
    assert_eq!(chat(&proxy, Proto::H2, &alice).status, 200);
    let used = |args: &[&str]| usage(&proxy, args)[0]["used_tokens"].clone();
    assert!(
        poll_until(Duration::from_secs(5), || used(&["--key", "token:alice"])
            == 40),
        "{:?}",
        usage(&proxy, &["--key", "token:alice"])
    );
    // 40 used + 17 reserved > 50: alice's budget is spent; bob's is whole.
    let forwarded = up.completions.count();
    expect_openai_error(&chat(&proxy, Proto::H1, &alice), 412, "budget_exhausted");
    assert_eq!(
        up.completions.count(),
        forwarded,
        "the refusal went upstream"
    );
    expect_openai_error(&chat(&proxy, Proto::H2, &alice), 412, "budget_exhausted");
    assert_eq!(
        up.completions.count(),
        forwarded,
        "the refusal went upstream"
    );
    // The token's own view: its subject's budget, read from the same store,
    // answered by the proxy itself over both protocols.
    for proto in Proto::ALL {
        let view = proxy
            .get("/v1/scopegate/key")
            .bearer(&alice)
            .over(proto)
            .send();
        assert_eq!(view.status, 200, "[{proto:?}] {}", view.text());
        let v = view.json();
        assert_eq!(v["key"]["id"], "token:alice", "{v}");
        assert_eq!(v["key"]["user_id"], "alice", "{v}");
        assert_eq!(v["key"]["workspace_id"], "ws_research", "{v}");
        assert!(v["key"]["expires_at"].is_string(), "{v}");
        let budget = &v["limits"][0];
        assert_eq!(budget["scope"], "key", "{v}");
        assert_eq!(budget["type"], "usage", "{v}");
        assert_eq!(budget["used"], 40, "{v}");
        assert_eq!(budget["remaining"], 10, "{v}");
        assert_eq!(up.completions.count(), forwarded, "the view went upstream");
    }
    assert_eq!(chat(&proxy, Proto::H2, &es.token("bob")).status, 200);
    let listed = || {
        let rows = usage(&proxy, &[]);
        let mut ids: Vec<String> = rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["scope"] == "token")
            .map(|r| format!("{} {}", r["id"].as_str().unwrap_or(""), r["organisation"]))
            .collect();
        ids.sort();
        ids
    };
    assert!(
        poll_until(Duration::from_secs(5), || listed().len() == 2),
        "{:?}",
        listed()
    );
    assert_eq!(
        listed(),
        ["token:alice \"org_acme\"", "token:bob \"org_acme\""]
    );
}

#[test]
fn two_replicas_share_per_subject_and_workspace_limits_through_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let es = Signer::es256("es");
    let (_dir, _, source) = jwks_dir(&jwks(&[&es]));
    let up = Upstreams::start();
    let builder = Proxy::builder(&up)
        .keys(&keys_yaml(
            &source,
            "rate_limits: [{ type: requests, unit: rph, value: 3 }]\n\
             usage_limits: { type: tokens, credit_limit: 1000000, periodic_reset: monthly }",
            "rate_limits: [{ type: requests, unit: rph, value: 6 }]",
        ))
        .config(&redis.state_config("allow", 2000))
        .config("default_output_reservation: 0");
    let (a, b) = (builder.clone().start(), builder.start());
    let alice = es.token("alice");
    let statuses: Vec<u16> = (0..5)
        .map(|i| chat(if i % 2 == 0 { &a } else { &b }, Proto::H1, &alice).status)
        .collect();
    // Each replica alone would let 3 through: 3 in all.
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(up.completions.count(), 3);
    // Another subject counts apart; the workspace's 6 bind tokens and keys
    // together: 3 (alice) + 2 (bob) + 1 (the key) use it up.
    let bob = es.token("bob");
    assert_eq!(chat(&a, Proto::H1, &bob).status, 200);
    assert_eq!(chat(&b, Proto::H1, &bob).status, 200);
    assert_eq!(a.chat(BOT).status, 200);
    expect_openai_error(&b.chat(BOT), 429, "rate_limited");
    expect_openai_error(&a.chat(&es.token("carol")), 429, "rate_limited");
    assert_eq!(up.completions.count(), 6);
    // `scopegate usage` finds the subjects with usage this period in Redis.
    let subjects = || -> Vec<String> {
        let mut ids: Vec<String> = usage(&b, &[])
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["scope"] == "token")
            .filter_map(|r| r["id"].as_str().map(String::from))
            .collect();
        ids.sort();
        ids
    };
    assert!(
        poll_until(Duration::from_secs(5), || subjects()
            == ["token:alice", "token:bob"]),
        "{:?}",
        subjects()
    );
}

/// `scopegate explain --token` with `token` on stdin.
fn explain_token(dir: &Path, config: &Path, token: &str, method: &str, path: &str) -> String {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(super::harness::scopegate_bin())
        .args(["explain", "--token", "--config"])
        .arg(config)
        .args([method, path])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scopegate");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(token.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("explain");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explain_decides_a_tokens_request_without_sending_it() {
    let es = Signer::es256("es");
    let (jdir, _, source) = jwks_dir(&jwks(&[&es]));
    let config = super::harness::ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .keys(&keys_yaml(&source, "", ""))
        .write_files(jdir.path(), super::harness::free_port_pair());
    let out = explain_token(
        jdir.path(),
        &config,
        &format!("Bearer {}", es.token("alice")),
        "POST",
        "/v1/chat/completions",
    );
    assert!(
        out.contains("key:       token:alice (workspace-user, identity token)"),
        "{out}"
    );
    assert!(out.contains("decision:  allow"), "{out}");
    assert!(out.contains("x-scopegate-key-id: token:alice"), "{out}");
    assert!(out.contains("x-scopegate-user-id: alice"), "{out}");
    let out = explain_token(
        jdir.path(),
        &config,
        &es.token("alice"),
        "GET",
        "/v1/configs?workspace_id=ws_prod",
    );
    assert!(out.contains("decision:  deny 403 missing_scope"), "{out}");
    let expired = es.sign(&with(claims("alice"), json!({"exp": now_s() - 120})));
    let out = explain_token(
        jdir.path(),
        &config,
        &expired,
        "POST",
        "/v1/chat/completions",
    );
    assert!(out.contains("decision:  deny 401 expired_api_key"), "{out}");
    assert!(
        !out.contains(expired.rsplit('.').next().unwrap_or("-")),
        "{out}"
    );
}

#[test]
fn serve_refuses_to_start_with_a_jwks_file_it_cannot_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere.json");
    let source = format!("jwks_file: \"{}\"", missing.display());
    let config = super::harness::ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .keys(&keys_yaml(&source, "", ""))
        .write_files(dir.path(), super::harness::free_port_pair());
    let run = run_scopegate(
        dir.path(),
        &["serve", "--config", config.to_str().expect("utf-8")],
    );
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr.contains("identity_tokens.jwks_file") && run.stderr.contains("nowhere.json"),
        "{run:?}"
    );
}
