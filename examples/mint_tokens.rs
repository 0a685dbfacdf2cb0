//! Mints identity tokens for the load benchmark (`benches/load/run.sh`,
//! target `scopegate+tokens`): one RS256 signing key (the RSA-2048 test
//! fixture `tests/fixtures/jwt/rsa2048_a.der`, never to be used elsewhere),
//! its JWK set, and one token for each of COUNT distinct subjects.
//!
//! ```sh
//! cargo run --example mint_tokens -- OUT_DIR [COUNT] [WORKSPACES]
//! ```
//! writes `OUT_DIR/jwks.json` (the public key, kid `bench-rs256`) and
//! `OUT_DIR/tokens.txt` (one token a line). Token `i` has the subject
//! `bench-user-<i>@example.com`, issuer `https://idp.bench.example/`,
//! audience `scopegate`, the workspace `ws_<i mod WORKSPACES>` in
//! `workspace_slug` (the benchmark's keys file names its workspaces
//! `ws_0`…), `scope` `openid profile email completions.write`, issued now
//! and valid for 30 days. COUNT defaults to 10,000, WORKSPACES to 100.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::RsaKeyPair;
use serde_json::json;

const RSA: &[u8] = include_bytes!("../tests/fixtures/jwt/rsa2048_a.der");
const KID: &str = "bench-rs256";
const ISSUER: &str = "https://idp.bench.example/";
const VALID_SECONDS: u64 = 30 * 24 * 3600;

fn arg(args: &[String], i: usize, default: usize) -> Result<usize, String> {
    args.get(i)
        .map_or(Ok(default), |v| v.parse().map_err(|e| format!("{v}: {e}")))
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .ok_or("usage: mint_tokens OUT_DIR [COUNT] [WORKSPACES]")?,
    );
    let count = arg(&args, 1, 10_000)?;
    let workspaces = arg(&args, 2, 100)?.max(1);

    let pair = RsaKeyPair::from_der(RSA).map_err(|e| e.to_string())?;
    let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
        "n": URL_SAFE_NO_PAD.encode(&public.n), "e": URL_SAFE_NO_PAD.encode(&public.e)}]});
    std::fs::write(out.join("jwks.json"), jwks.to_string()).map_err(|e| e.to_string())?;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let key = EncodingKey::from_rsa_der(RSA);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    let mut tokens = Vec::with_capacity(count * 700);
    for i in 0..count {
        let claims = json!({"iss": ISSUER, "aud": "scopegate",
            "sub": format!("bench-user-{i:05}@example.com"),
            "iat": now, "nbf": now, "exp": now + VALID_SECONDS,
            "workspace_slug": format!("ws_{}", i % workspaces),
            "scope": "openid profile email completions.write"});
        let token = jsonwebtoken::encode(&header, &claims, &key).map_err(|e| e.to_string())?;
        tokens.extend_from_slice(token.as_bytes());
        tokens.push(b'\n');
    }
    let mut file = std::fs::File::create(out.join("tokens.txt")).map_err(|e| e.to_string())?;
    file.write_all(&tokens).map_err(|e| e.to_string())?;
    println!("{count} tokens, issuer {ISSUER}, RS256 kid {KID}");
    Ok(())
}
