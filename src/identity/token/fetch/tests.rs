use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use super::*;
use crate::identity::token::testing::{jwks_json, TestKey};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn response(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one request head from `stream`.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A server on 127.0.0.1 that answers one connection with `reply` (or
/// nothing, when `None`) and hands back the request head it read.
async fn serve_once(reply: Option<Vec<u8>>, tls: bool) -> (SocketAddr, oneshot::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        if tls {
            use rustls_pki_types::pem::PemObject as _;
            let certs = rustls_pki_types::CertificateDer::pem_file_iter(fixture("server.pem"))
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key =
                rustls_pki_types::PrivateKeyDer::from_pem_file(fixture("server.key")).expect("key");
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
            let Ok(mut stream) = tokio_rustls::TlsAcceptor::from(Arc::new(config))
                .accept(tcp)
                .await
            else {
                return;
            };
            let head = read_head(&mut stream).await;
            let _ = tx.send(head);
            if let Some(r) = reply {
                let _ = stream.write_all(&r).await;
                let _ = stream.shutdown().await;
            }
        } else {
            let mut stream = tcp;
            let head = read_head(&mut stream).await;
            let _ = tx.send(head);
            match reply {
                Some(r) => {
                    let _ = stream.write_all(&r).await;
                    let _ = stream.shutdown().await;
                }
                // Hold the connection open without answering.
                None => tokio::time::sleep(Duration::from_secs(30)).await,
            }
        }
    });
    (addr, rx)
}

fn system_tls() -> Arc<rustls::ClientConfig> {
    // Plain-HTTP tests never use it; the fixture CA keeps the tests
    // independent of the machine's roots.
    tls_config(Some(&fixture("ca.pem"))).expect("ca")
}

#[tokio::test]
async fn fetches_a_set_over_loopback_http() {
    let key = TestKey::es256("k1");
    let (addr, head) = serve_once(Some(response("200 OK", &jwks_json(&[&key]))), false).await;
    let url = format!("http://{addr}/.well-known/jwks.json?v=1");
    let set = fetch_jwks(&url, &system_tls(), Duration::from_secs(5))
        .await
        .expect("fetched");
    assert!(set.find("k1").is_some());
    let head = head.await.expect("request seen");
    assert!(
        head.starts_with("GET /.well-known/jwks.json?v=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("host: {addr}\r\n")),
        "{head}"
    );
}

#[tokio::test]
async fn fetches_over_https_with_the_ca_file() {
    let key = TestKey::ed25519("k1");
    let (addr, _) = serve_once(Some(response("200 OK", &jwks_json(&[&key]))), true).await;
    let url = format!("https://localhost:{}/keys", addr.port());
    let set = fetch_jwks(&url, &system_tls(), Duration::from_secs(5))
        .await
        .expect("fetched");
    assert!(set.find("k1").is_some());
}

#[tokio::test]
async fn refuses_a_server_the_roots_do_not_vouch_for() {
    let key = TestKey::ed25519("k1");
    let (addr, _) = serve_once(Some(response("200 OK", &jwks_json(&[&key]))), true).await;
    let url = format!("https://localhost:{}/keys", addr.port());
    let other = tls_config(Some(&fixture("other_ca.pem"))).expect("ca");
    let e = fetch_jwks(&url, &other, Duration::from_secs(5))
        .await
        .expect_err("untrusted");
    assert_eq!(e.as_str(), "tls", "{e}");
}

#[tokio::test]
async fn answers_other_than_a_set_fail() {
    for (reply, label) in [
        (response("404 Not Found", "{}"), "status"),
        (
            b"HTTP/1.1 302 Found\r\nlocation: https://elsewhere/\r\ncontent-length: 0\r\n\r\n"
                .to_vec(),
            "status",
        ),
        (response("200 OK", "<html>"), "invalid"),
        (response("200 OK", r#"{"keys":[]}"#), "invalid"),
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                MAX_JWKS_BYTES + 1
            )
            .into_bytes(),
            "too_large",
        ),
        (
            {
                // Chunked, no length: the cap applies while reading.
                let chunk = "a".repeat(64 * 1024);
                let mut r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
                for _ in 0..17 {
                    r.extend(format!("{:x}\r\n{chunk}\r\n", chunk.len()).into_bytes());
                }
                r.extend(b"0\r\n\r\n");
                r
            },
            "too_large",
        ),
        (b"garbage\r\n\r\n".to_vec(), "http"),
    ] {
        let (addr, _) = serve_once(Some(reply), false).await;
        let e = fetch_jwks(
            &format!("http://{addr}/k"),
            &system_tls(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("fails");
        assert_eq!(e.as_str(), label, "{e}");
    }
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let (addr, _) = serve_once(None, false).await;
    let e = fetch_jwks(
        &format!("http://{addr}/k"),
        &system_tls(),
        Duration::from_millis(300),
    )
    .await
    .expect_err("times out");
    assert!(matches!(e, FetchError::Timeout(_)), "{e}");
}

#[tokio::test]
async fn unreachable_and_refused_urls() {
    // A port nothing listens on: bind, learn the port, close.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let e = fetch_jwks(
        &format!("http://127.0.0.1:{port}/k"),
        &system_tls(),
        Duration::from_secs(5),
    )
    .await
    .expect_err("refused");
    assert_eq!(e.as_str(), "connect", "{e}");
    for url in [
        "http://idp.example.com/keys",
        "ftp://127.0.0.1/k",
        "not a url",
    ] {
        let e = fetch_jwks(url, &system_tls(), Duration::from_secs(5))
            .await
            .expect_err("refused before connecting");
        assert_eq!(e.as_str(), "url", "{url}: {e}");
    }
}

#[test]
fn tls_config_from_a_ca_file_or_the_system() {
    assert!(tls_config(Some(&fixture("ca.pem"))).is_ok());
    let e = tls_config(Some(&fixture("server.key"))).expect_err("no certificate");
    assert!(e.contains("no PEM certificate"), "{e}");
}
