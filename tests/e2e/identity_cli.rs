//! Identity tokens at the command line: `scopegate check` reads the JWK
//! set a keys file names, and `scopegate inspect-token` verifies a token
//! read from stdin (never from an argument) and prints its checks.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;

use super::harness::{free_port_pair, scopegate_bin, ProxyBuilder};

/// An Ed25519 key: its signing key and its JWK set.
fn ed25519() -> (EncodingKey, String) {
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("generates");
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("reads");
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let set = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": x}]});
    (EncodingKey::from_ed_der(pkcs8.as_ref()), set.to_string())
}

fn now_s() -> i64 {
    scopegate::identity::keys::now_millis() / 1000
}

fn token(key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    jsonwebtoken::encode(&header, &claims, key).expect("signs")
}

fn claims() -> serde_json::Value {
    json!({"iss": "https://idp.test/", "aud": "scopegate", "sub": "alice",
           "exp": now_s() + 600, "workspace_slug": "research",
           "scope": "openid completions.write"})
}

/// A config whose keys file accepts tokens from `https://idp.test/`, with
/// its JWK set in `jwks/idp.json`.
fn setup(jwks: Option<&str>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .write_files(dir.path(), free_port_pair());
    std::fs::write(
        dir.path().join("keys.yaml"),
        "organisations:
  - id: org_acme
    workspaces: [{ id: ws_research, slug: research }]
    identity_tokens:
      issuer: https://idp.test/
      audience: scopegate
      jwks_file: jwks/idp.json
      rate_limits: [{ type: requests, unit: rpm, value: 60 }]
keys: []
",
    )
    .expect("write keys");
    std::fs::create_dir(dir.path().join("jwks")).expect("mkdir");
    if let Some(j) = jwks {
        std::fs::write(dir.path().join("jwks/idp.json"), j).expect("write jwks");
    }
    (dir, config.to_string_lossy().into_owned())
}

fn run(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(scopegate_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("SCOPEGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scopegate");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    child.wait_with_output().expect("scopegate runs")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn check_reads_the_jwk_set() {
    let (_, set) = ed25519();
    let (dir, config) = setup(Some(&set));
    let out = run(dir.path(), &["check", "--config", &config], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("identity tokens from 1 issuer (1 JWK set file)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn check_points_at_a_missing_or_broken_jwk_set() {
    let (dir, config) = setup(None);
    let out = run(dir.path(), &["check", "--config", &config], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("keys.yaml:7:18: organisations[0] (org_acme): identity_tokens.jwks_file:")
            && stderr.contains("JWK set file not found"),
        "{stderr}"
    );
    let (dir, config) = setup(Some("{\"keys\": [\n  {\"kty\": \"OKP\" \"x\": 1}\n]}"));
    let out = run(dir.path(), &["check", "--config", &config], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("idp.json:2:17: JWK set is not valid JSON"),
        "{stderr}"
    );
}

#[test]
fn inspect_token_accepts_a_good_token_and_shows_the_identity() {
    let (key, set) = ed25519();
    let (dir, config) = setup(Some(&set));
    let token = token(&key, claims());
    let out = run(
        dir.path(),
        &["inspect-token", "--config", &config],
        &format!("{token}\n"),
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for want in [
        "signature  ok   verified",
        "accepted",
        "key id:                  token:alice",
        "workspace:               ws_research",
        "scopes:                  completions.write",
        "rate limits:             60 requests per 60 s",
    ] {
        assert!(stdout.contains(want), "{want:?} not in\n{stdout}");
    }
    assert!(!stdout.contains(&token) && !text(&out.stderr).contains(&token));
    // As copied from an Authorization header.
    let out = run(
        dir.path(),
        &["inspect-token", "--config", &config],
        &format!("Bearer {token}"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}

#[test]
fn inspect_token_refuses_and_says_which_check() {
    let (key, set) = ed25519();
    let (dir, config) = setup(Some(&set));
    let mut expired = claims();
    expired["exp"] = json!(now_s() - 3600);
    let out = run(
        dir.path(),
        &["inspect-token", "--config", &config],
        &token(&key, expired),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("exp        FAIL the token has expired"),
        "{stdout}"
    );
    assert!(stdout.contains("refused: 401 expired_api_key"), "{stdout}");
    // Signed by another key under the same kid.
    let (other, _) = ed25519();
    let out = run(
        dir.path(),
        &["inspect-token", "--config", &config],
        &token(&other, claims()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("signature  FAIL"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn inspect_token_never_takes_the_token_as_an_argument() {
    let (key, set) = ed25519();
    let (dir, config) = setup(Some(&set));
    let token = token(&key, claims());
    let out = run(
        dir.path(),
        &["inspect-token", "--config", &config, &token],
        "",
    );
    assert_eq!(out.status.code(), Some(2), "clap refuses the argument");
    let out = run(dir.path(), &["inspect-token", "--config", &config], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no token on stdin"),
        "{}",
        text(&out.stderr)
    );
}
