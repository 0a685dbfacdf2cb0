//! HTTPS upstreams: certificates are verified, against a per-upstream
//! `ca_file` for a private CA, or the system roots otherwise.
//!
//! The fixtures in `tests/fixtures/tls/` are a test CA, a server
//! certificate it signed for `127.0.0.1` and `localhost` (valid for 100
//! years), and an unrelated CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::client::Response;
use super::fixtures::{BOT, CHAT};
use super::harness::{expect_openai_error, Proxy, Upstreams};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

/// The headers of each request a TLS upstream received.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A TLS upstream answering 200 and recording the headers it saw.
struct TlsUpstream {
    addr: SocketAddr,
    seen: Seen,
}

impl TlsUpstream {
    fn start() -> TlsUpstream {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(fixture("server.pem"))
                .expect("server.pem")
                .map(|c| c.expect("cert"))
                .collect();
        let key = PrivateKeyDer::from_pem_file(fixture("server.key")).expect("server.key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Seen = Arc::default();
        let record = seen.clone();
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(n, v)| {
                                        (n.to_string(), v.to_str().unwrap_or_default().to_string())
                                    })
                                    .collect();
                                record.lock().expect("lock").push(headers);
                                async move {
                                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                        Full::new(Bytes::from_static(br#"{"tls":true}"#)),
                                    ))
                                }
                            });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        TlsUpstream { addr, seen }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

fn chat(proxy: &Proxy) -> Response {
    proxy
        .post("/v1/chat/completions")
        .bearer(BOT)
        .json(CHAT)
        .send()
}

#[test]
fn https_upstream_with_private_ca_file_is_verified_and_used() {
    let up = Upstreams::start();
    let tls = TlsUpstream::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&tls.url())
        .completions_yaml(&format!("ca_file: \"{}\"", fixture("ca.pem").display()))
        .start();
    let resp = chat(&proxy);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), proxy.logs());
    assert_eq!(resp.body, br#"{"tls":true}"#);
    let seen = tls.seen.lock().expect("lock");
    let headers = &seen[0];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        get("host"),
        Some(&*format!("127.0.0.1:{}", tls.addr.port()))
    );
    assert_eq!(get("x-scopegate-key-id"), Some("key_bot"));
    assert_eq!(get("authorization"), None);
}

#[test]
fn https_upstream_signed_by_another_ca_is_refused_with_502() {
    let up = Upstreams::start();
    let tls = TlsUpstream::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&tls.url())
        .completions_yaml(&format!(
            "ca_file: \"{}\"",
            fixture("other_ca.pem").display()
        ))
        .start();
    let resp = chat(&proxy);
    expect_openai_error(&resp, 502, "upstream_unavailable");
    assert_eq!(
        tls.count(),
        0,
        "no request may cross an unverified connection"
    );
}

#[test]
fn https_upstream_not_trusted_by_system_roots_is_refused_with_502() {
    let up = Upstreams::start();
    let tls = TlsUpstream::start();
    let proxy = Proxy::builder(&up).completions_url(&tls.url()).start();
    let resp = chat(&proxy);
    expect_openai_error(&resp, 502, "upstream_unavailable");
    assert_eq!(tls.count(), 0);
}
