//! The demo's identity-token step: a signing key made at start (Ed25519),
//! its JWK set served on loopback to the proxy (`jwks_url`), the example
//! organisation `org_acme` accepting tokens signed with it, and tokens for
//! two subjects, each with a small per-subject budget.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Each subject's monthly budget in tokens: a call of the step reserves its
/// input and `max_tokens` (10) and settles about 30, so a subject's 4th call
/// answers 412.
const SUBJECT_BUDGET: u64 = 100;

/// The demo identity provider: its key, its JWK set and where it serves it.
pub struct DemoIdp {
    key: EncodingKey,
    jwks: String,
    listener: Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
}

impl DemoIdp {
    /// Makes a key and binds a loopback port for its JWK set.
    ///
    /// # Errors
    /// No key or no port.
    pub fn start() -> Result<DemoIdp, String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "demo-1", "use": "sig", "x": x}]})
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        Ok(DemoIdp {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwks,
            listener: Mutex::new(Some(listener)),
            addr,
        })
    }

    /// Where the proxy fetches the set.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// A token of `subject` in `ws_research`, valid for 12 hours.
    fn token(&self, subject: &str) -> String {
        let now = crate::identity::keys::now_millis() / 1000;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("demo-1".into());
        let claims = json!({"iss": "https://idp.demo.scopegate/", "aud": "scopegate",
            "sub": subject, "iat": now, "exp": now + 12 * 3600,
            "workspace_slug": "research", "scope": "openid completions.write"});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default()
    }

    /// A copy of the keys file at `keys_file` in which `org_acme` accepts
    /// this provider's tokens, written beside the demo's state.
    ///
    /// # Errors
    /// The keys file cannot be read, is not a mapping, or the copy cannot
    /// be written.
    pub fn keys_file_with_tokens(&self, keys_file: &Path) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(keys_file).map_err(|e| e.to_string())?;
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
        let settings: serde_yaml::Value = serde_yaml::from_str(&format!(
            "{{ issuer: \"https://idp.demo.scopegate/\", audience: scopegate, \
               jwks_url: \"{}\", algorithms: [EdDSA], \
               usage_limits: {{ type: tokens, credit_limit: {SUBJECT_BUDGET}, periodic_reset: monthly }} }}",
            self.jwks_url()
        ))
        .map_err(|e| e.to_string())?;
        let org = doc
            .get_mut("organisations")
            .and_then(|o| o.as_sequence_mut())
            .and_then(|orgs| {
                orgs.iter_mut()
                    .find(|o| o.get("id").and_then(|i| i.as_str()) == Some("org_acme"))
            })
            .and_then(|o| o.as_mapping_mut())
            .ok_or("the example keys file has no organisation org_acme")?;
        org.insert("identity_tokens".into(), settings);
        let out =
            std::env::temp_dir().join(format!("scopegate-demo-{}-keys.yaml", std::process::id()));
        let yaml = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
        std::fs::write(&out, yaml).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// The walkthrough's step: tokens of two subjects, one spending its
    /// budget.
    pub fn print_step(&self, base: &str, chat: &str) {
        let (alice, bob) = (
            self.token("alice@example.com"),
            self.token("bob@example.com"),
        );
        println!(
            "# 12. Identity tokens: the demo made a signing key and serves its JWK set at {} ;",
            self.jwks_url()
        );
        println!("#     org_acme accepts tokens it signs, each subject with its own {SUBJECT_BUDGET}-token monthly budget.");
        println!(
            "#     alice's 4th call answers 412 budget_exhausted; bob's budget is his own (200)."
        );
        println!("ALICE_TOKEN='{alice}'");
        println!("BOB_TOKEN='{bob}'");
        println!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' {base}/v1/chat/completions -H \"Authorization: Bearer $ALICE_TOKEN\" -H 'Content-Type: application/json' -d '{chat}'; done");
        println!("curl -s -o /dev/null -w '%{{http_code}}\\n' {base}/v1/chat/completions -H \"Authorization: Bearer $BOB_TOKEN\" -H 'Content-Type: application/json' -d '{chat}'");
        println!();
    }

    /// Serves the JWK set until shutdown.
    async fn serve(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        let _ = listener.set_nonblocking(true);
        let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
            return;
        };
        let body = self.jwks.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                accepted = listener.accept() => {
                    let Ok((mut stream, _)) = accepted else { continue };
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/jwk-set+json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        }
    }
}

/// [`DemoIdp::serve`] as a background service of the demo server.
pub struct DemoIdpService(pub std::sync::Arc<DemoIdp>);

#[async_trait]
impl BackgroundService for DemoIdpService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.serve(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::identity::keys::OrgIdx;
    use crate::identity::token::JwksSet;

    #[test]
    fn the_example_organisation_accepts_the_demo_providers_tokens() {
        let idp = DemoIdp::start().expect("provider");
        let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keys.yaml");
        let copy = idp.keys_file_with_tokens(&keys).expect("copy");
        let table = crate::decision::routes::RouteTable::build(&[], true).expect("routes");
        let snap = crate::ops::reload::load_keys(&copy, &table).expect("the copy is valid");
        let _ = std::fs::remove_file(&copy);
        let settings = snap
            .identity()
            .all()
            .next()
            .expect("org_acme accepts tokens");
        assert_eq!(&*snap.organisation(settings.organisation).id, "org_acme");
        let set = JwksSet::parse(idp.jwks.as_bytes()).expect("a usable set");
        let sets = HashMap::from([(OrgIdx(settings.organisation.0), Arc::new(set))]);
        let now = crate::identity::keys::now_millis();
        let id = crate::identity::token::verify(&idp.token("alice@example.com"), now, &snap, &sets)
            .expect("the demo token verifies");
        assert_eq!(id.key_id(), "token:alice@example.com");
        assert_eq!(&*snap.workspace(id.workspace).id, "ws_research");
    }
}
