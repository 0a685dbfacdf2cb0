//! HTTPS for clients (the reference on HTTPS listeners): TLS listeners offering HTTP/2 by ALPN beside
//! HTTP/1.1, certificates that rotate live, optional client certificates.
//!
//! Every certificate is made with `rcgen` (`super::certs`): a test CA,
//! server certificates it signed (two, for rotation), a client certificate
//! it signed, and a client certificate of another CA. Clients are reqwest
//! over rustls; the upstream hop stays HTTP/1.1 (the recording upstreams
//! speak nothing else).

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::{Ca, Pair, TlsFiles};
use super::client::Response;
use super::connections::closed_after;
use super::fixtures::{ADMIN, BOT, CHAT};
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, poll_until, run_scopegate, Proxy,
    ProxyBuilder, Upstreams,
};

/// How long a rotated certificate may take to reach new handshakes.
const ROTATION_BUDGET: Duration = Duration::from_secs(2);

/// A proxy whose listener is HTTPS over `files`.
fn https_proxy(up: &Upstreams, files: &TlsFiles) -> Proxy {
    https_builder(up, files, None).start()
}

fn https_builder(up: &Upstreams, files: &TlsFiles, client_ca: Option<&Path>) -> ProxyBuilder {
    Proxy::builder(up).listen_entry(&files.listen_yaml(&files.cert(), &files.key(), client_ca))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    /// ALPN `http/1.1` only.
    H1,
    /// ALPN `h2` and `http/1.1`: the server picks.
    Alpn,
    /// ALPN `h2` only.
    H2Only,
}

/// A client trusting `ca`, reaching `localhost` at `addr`, with an optional
/// client certificate. Each client opens its own connections.
fn client(ca: &Ca, proto: Proto, identity: Option<&Pair>, addr: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .resolve("localhost", addr)
        .tls_info(true)
        .timeout(Duration::from_secs(15));
    b = match proto {
        Proto::H1 => b.http1_only(),
        Proto::Alpn => b,
        Proto::H2Only => b.http2_prior_knowledge(),
    };
    if let Some(p) = identity {
        let pem = format!("{}{}", p.cert, p.key);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

fn url(proxy: &Proxy, path: &str) -> String {
    format!("https://localhost:{}{path}", proxy.addr().port())
}

/// One finished exchange.
struct Exchange {
    response: Response,
    version: reqwest::Version,
    /// The server certificate of the connection that carried it.
    peer: Vec<u8>,
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

async fn exchange(req: reqwest::RequestBuilder) -> Exchange {
    let resp = req.send().await.expect("request");
    let version = resp.version();
    let peer = peer_certificate(&resp);
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.bytes().await.expect("body").to_vec();
    Exchange {
        response: Response {
            status,
            headers,
            body,
        },
        version,
        peer,
    }
}

fn peer_certificate(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// The certificate a new connection is served (a `GET /v1/models` without
/// a key: answered by the proxy alone).
async fn served_certificate(ca: &Ca, addr: SocketAddr, proxy: &Proxy) -> Vec<u8> {
    let c = client(ca, Proto::Alpn, None, addr);
    exchange(c.get(url(proxy, "/v1/models"))).await.peer
}

/// Reads the streamed body until it holds `needle`; returns what was read.
async fn read_until(resp: &mut reqwest::Response, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `{needle}` within 10 s; got {seen:?}"))
            .expect("body chunk")
            .unwrap_or_else(|| panic!("stream ended before `{needle}`; got {seen:?}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    seen
}

async fn read_rest(resp: &mut reqwest::Response) -> String {
    let mut rest = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("stream did not end")
        .expect("body chunk")
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    rest
}

/// Polls new handshakes until one is served `want`; the time it took.
async fn wait_served(ca: &Ca, proxy: &Proxy, want: &[u8]) -> Duration {
    let start = Instant::now();
    loop {
        if served_certificate(ca, proxy.addr(), proxy).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < ROTATION_BUDGET * 3,
            "new handshakes still get the old certificate after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn chat(c: &reqwest::Client, proxy: &Proxy, key: &str) -> reqwest::RequestBuilder {
    c.post(url(proxy, "/v1/chat/completions"))
        .header("x-portkey-api-key", key)
        .header("content-type", "application/json")
        .body(CHAT)
}

#[test]
fn https_serves_the_main_decision_rows_over_http1_and_http2() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let server = ca.server("one", 30);
    let files = TlsFiles::with(&server);
    let proxy = https_proxy(&up, &files);

    for (proto, version) in [
        (Proto::H1, reqwest::Version::HTTP_11),
        (Proto::Alpn, reqwest::Version::HTTP_2),
        (Proto::H2Only, reqwest::Version::HTTP_2),
    ] {
        let c = client(&ca, proto, None, proxy.addr());
        block_on(async {
            let before = up.completions.count();
            let allowed = exchange(chat(&c, &proxy, BOT)).await;
            assert_eq!(allowed.version, version, "{proto:?}");
            assert_eq!(allowed.peer, server.der);
            expect_forwarded(&allowed.response);
            let requests = up.completions.requests();
            assert_eq!(requests.len(), before + 1, "{proto:?}");
            let seen = &requests[before];
            assert_eq!(seen.target, "/v1/chat/completions");
            assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
            assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
            assert_eq!(seen.header("x-portkey-api-key"), None);
            assert_eq!(
                seen.header("host"),
                Some(up.completions.authority().as_str())
            );
            assert_eq!(seen.body, CHAT.as_bytes());

            let missing = exchange(
                c.post(url(&proxy, "/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .body(CHAT),
            )
            .await;
            assert_eq!(missing.version, version);
            expect_openai_error(&missing.response, 401, "missing_api_key");

            let admin = exchange(chat(&c, &proxy, ADMIN)).await;
            expect_openai_error(&admin.response, 403, "admin_key_not_allowed");

            // `//` reaches the proxy as written (HTTP/2 `:path`).
            let odd = exchange(
                c.get(url(&proxy, "/v1//models"))
                    .header("x-portkey-api-key", BOT),
            )
            .await;
            expect_openai_error(&odd.response, 400, "invalid_path");

            // Two header fields (HTTP/2 sends each value as its own field).
            let twice =
                exchange(chat(&c, &proxy, BOT).header("x-portkey-api-key", "sk-test-another"))
                    .await;
            expect_openai_error(&twice.response, 401, "invalid_api_key");

            // A control-plane body in HTTP/2 needs no Content-Length; it is
            // inspected all the same.
            let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
                br#"{"workspace_id":"ws_prod","name":"c"}"#.to_vec(),
            )]);
            let streamed = exchange(
                c.post(url(&proxy, "/v1/configs"))
                    .header("x-portkey-api-key", BOT)
                    .header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(body)),
            )
            .await;
            expect_portkey_error(&streamed.response, 403, "workspace_mismatch");

            // ... and a body that passes the inspection goes up, byte for
            // byte, as an HTTP/1.1 request (the proxy sends it itself).
            let admin_before = up.admin.count();
            let good = br#"{"workspace_id":"ws_research","name":"c"}"#;
            let body = futures_util::stream::iter([Ok::<_, std::io::Error>(good.to_vec())]);
            let inspected = exchange(
                c.post(url(&proxy, "/v1/configs"))
                    .header("x-portkey-api-key", BOT)
                    .header("content-type", "application/json")
                    .body(reqwest::Body::wrap_stream(body)),
            )
            .await;
            expect_forwarded(&inspected.response);
            let seen = &up.admin.requests()[admin_before];
            assert_eq!(seen.body, good, "{proto:?}");
            assert_eq!(seen.header("host"), Some(up.admin.authority().as_str()));
            assert_eq!(
                seen.header("content-length"),
                Some(good.len().to_string().as_str())
            );
        });
    }
    assert_eq!(up.completions.count(), 3, "only the allowed chats went up");
    assert_eq!(up.admin.count(), 3, "only the inspected bodies that passed");
}

#[test]
fn sse_streams_over_http2_before_the_upstream_finishes() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let stream = up.completions.stream("text/event-stream");
    let proxy = https_proxy(&up, &files);
    stream.send("data: {\"delta\":\"first\"}\n\n");

    let c = client(&ca, Proto::H2Only, None, proxy.addr());
    block_on(async {
        let mut resp = c
            .post(url(&proxy, "/v1/chat/completions"))
            .header("x-portkey-api-key", BOT)
            .header("content-type", "application/json")
            .body(r#"{"model":"m","stream":true,"messages":[]}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert!(resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")));
        let first = read_until(&mut resp, "first").await;
        assert!(!first.contains("second"));
        stream.send("data: {\"delta\":\"second\"}\n\n");
        read_until(&mut resp, "second").await;
        stream.send("data: [DONE]\n\n");
        stream.finish();
        let rest = read_rest(&mut resp).await;
        assert!(rest.contains("[DONE]"), "rest: {rest:?}");
    });
}

#[test]
fn a_certificate_renamed_into_place_reaches_new_handshakes_while_an_open_stream_completes() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let one = ca.server("one", 30);
    let two = ca.server("two", 60);
    let files = TlsFiles::with(&one);
    let stream = up.completions.stream("text/event-stream");
    let proxy = https_proxy(&up, &files);
    let listener = proxy.addr().to_string();
    let expiry = |proxy: &Proxy| {
        proxy.metric(
            "scopegate_tls_certificate_expiry_timestamp_seconds",
            &[("listener", &listener)],
        )
    };
    assert_eq!(expiry(&proxy), one.not_after as f64);
    stream.send("data: first\n\n");

    let old = client(&ca, Proto::H2Only, None, proxy.addr());
    block_on(async {
        let mut open = chat(&old, &proxy, BOT).send().await.expect("request");
        assert_eq!(peer_certificate(&open), one.der);
        read_until(&mut open, "first").await;

        TlsFiles::rename_into(&files.key(), &two.key);
        TlsFiles::rename_into(&files.cert(), &two.cert);
        let took = wait_served(&ca, &proxy, &two.der).await;
        assert!(took <= ROTATION_BUDGET, "rotation took {took:?}");

        // The stream opened before the swap goes on, on its connection.
        stream.send("data: second\n\n");
        read_until(&mut open, "second").await;
        stream.finish();
        read_rest(&mut open).await;
        // And that connection still carries requests, with its certificate.
        let again = exchange(old.get(url(&proxy, "/v1/models"))).await;
        assert_eq!(again.peer, one.der);
    });
    assert_eq!(expiry(&proxy), two.not_after as f64);
    assert!(proxy.metric("scopegate_tls_reloads_total", &[("result", "success")]) >= 2.0);
}

#[test]
fn a_kubernetes_secret_symlink_swap_reaches_new_handshakes_within_two_seconds() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let one = ca.server("one", 30);
    let two = ca.server("two", 30);
    // The layout of a Secret volume: tls.crt -> ..data/tls.crt, ..data ->
    // ..<timestamp>; an update writes a new timestamped folder and renames
    // a new ..data symlink over the old one.
    let files = TlsFiles::with(&one);
    let secret = files.dir.path().join("secret");
    let version = |name: &str, pair: &Pair| {
        let dir = secret.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("tls.crt"), &pair.cert).expect("write");
        std::fs::write(dir.join("tls.key"), &pair.key).expect("write");
    };
    version("..2026_11_30_09_00_00.1", &one);
    std::os::unix::fs::symlink("..2026_11_30_09_00_00.1", secret.join("..data")).expect("ln");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).expect("ln");
    }
    let proxy = Proxy::builder(&up)
        .listen_entry(&files.listen_yaml(&secret.join("tls.crt"), &secret.join("tls.key"), None))
        .start();
    block_on(async {
        assert_eq!(served_certificate(&ca, proxy.addr(), &proxy).await, one.der);
        version("..2026_11_30_10_00_00.2", &two);
        std::os::unix::fs::symlink("..2026_11_30_10_00_00.2", secret.join("..data_tmp"))
            .expect("ln");
        std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).expect("swap");
        let took = wait_served(&ca, &proxy, &two.der).await;
        assert!(took <= ROTATION_BUDGET, "rotation took {took:?}");
    });
}

#[test]
fn a_key_that_does_not_match_keeps_the_old_certificate_and_counts_a_failure() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let one = ca.server("one", 30);
    let two = ca.server("two", 30);
    let files = TlsFiles::with(&one);
    let proxy = https_proxy(&up, &files);
    let failures =
        |proxy: &Proxy| proxy.metric("scopegate_tls_reloads_total", &[("result", "failure")]);
    assert_eq!(failures(&proxy), 0.0);

    // The new certificate arrives without its key.
    TlsFiles::rename_into(&files.cert(), &two.cert);
    let start = Instant::now();
    while failures(&proxy) < 1.0 {
        assert!(start.elapsed() < ROTATION_BUDGET * 3, "no failure counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The log line travels through a pipe and a reader thread: it may
    // arrive a moment after the metric shows the failure.
    assert!(
        poll_until(ROTATION_BUDGET, || proxy
            .logs()
            .contains("does not match the certificate")),
        "{}",
        proxy.logs()
    );
    block_on(async {
        assert_eq!(served_certificate(&ca, proxy.addr(), &proxy).await, one.der);
        // Its key follows: now the pair is good and goes in force.
        TlsFiles::rename_into(&files.key(), &two.key);
        wait_served(&ca, &proxy, &two.der).await;
    });
    assert_eq!(failures(&proxy), 1.0);
}

#[test]
fn sighup_reloads_the_certificate_too() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let one = ca.server("one", 30);
    let files = TlsFiles::with(&one);
    let proxy = https_proxy(&up, &files);
    let successes =
        |proxy: &Proxy| proxy.metric("scopegate_tls_reloads_total", &[("result", "success")]);
    let before = successes(&proxy);
    proxy.signal(libc::SIGHUP);
    let start = Instant::now();
    while successes(&proxy) <= before {
        assert!(
            start.elapsed() < ROTATION_BUDGET * 3,
            "SIGHUP did not reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn client_certificates_are_required_when_a_client_ca_is_set() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let other = Ca::new("other CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let client_ca = files.client_ca(&ca);
    let proxy = https_builder(&up, &files, Some(&client_ca)).start();
    let good = ca.client("good client");
    let stranger = other.client("stranger");

    block_on(async {
        for proto in [Proto::H1, Proto::H2Only] {
            let none = client(&ca, proto, None, proxy.addr());
            assert!(
                chat(&none, &proxy, BOT).send().await.is_err(),
                "{proto:?}: a client without a certificate got an answer"
            );
            let wrong = client(&ca, proto, Some(&stranger), proxy.addr());
            assert!(
                chat(&wrong, &proxy, BOT).send().await.is_err(),
                "{proto:?}: a client certificate of another CA got an answer"
            );
            let right = client(&ca, proto, Some(&good), proxy.addr());
            expect_forwarded(&exchange(chat(&right, &proxy, BOT)).await.response);
        }
    });
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn http2_false_offers_http1_only() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = Proxy::builder(&up)
        .listen_entry(&format!(
            "{}http2: false",
            files.listen_yaml(&files.cert(), &files.key(), None)
        ))
        .start();
    let c = client(&ca, Proto::Alpn, None, proxy.addr());
    let done = block_on(exchange(chat(&c, &proxy, BOT)));
    assert_eq!(done.version, reqwest::Version::HTTP_11);
    expect_forwarded(&done.response);
}

/// Runs `openssl s_client` against `addr` with one protocol flag; `None`
/// when `openssl` is not installed, else whether a session was set up.
fn openssl_handshake(addr: SocketAddr, flag: &str) -> Option<bool> {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), flag])
        // Let the client offer old protocols at all (OpenSSL 3 refuses
        // TLS 1.0/1.1 at its default security level).
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let established = out.status.success()
        && stdout.contains("Cipher is")
        && !stdout.contains("Cipher is (NONE)");
    if !established {
        // The refusal must come from the server (an alert), not from this
        // client declining to offer the protocol.
        assert!(
            stderr.contains("alert") && !stderr.contains("no protocols available"),
            "openssl {flag} was not refused by the server: {stderr}"
        );
    }
    Some(established)
}

#[test]
fn tls_1_0_and_1_1_are_refused_while_1_2_and_1_3_are_served() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = https_proxy(&up, &files);
    let Some(tls12) = openssl_handshake(proxy.addr(), "-tls1_2") else {
        eprintln!("openssl not installed; the versions are pingora's (TLS 1.2 and 1.3)");
        return;
    };
    assert!(tls12, "TLS 1.2 refused");
    assert_eq!(openssl_handshake(proxy.addr(), "-tls1_3"), Some(true));
    assert_eq!(openssl_handshake(proxy.addr(), "-tls1_1"), Some(false));
    assert_eq!(openssl_handshake(proxy.addr(), "-tls1"), Some(false));
}

#[test]
fn plaintext_http_on_the_tls_port_is_closed_and_the_listener_keeps_serving() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = https_proxy(&up, &files);

    let mut plain = TcpStream::connect(proxy.addr()).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    match plain.read_to_end(&mut answer) {
        Ok(_) => assert!(
            !answer.starts_with(b"HTTP/"),
            "answered plain HTTP: {answer:?}"
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the listener kept a plaintext connection open: {e}"
        ),
    }

    let c = client(&ca, Proto::Alpn, None, proxy.addr());
    expect_forwarded(&block_on(exchange(chat(&c, &proxy, BOT))).response);
}

#[test]
fn check_validates_the_tls_files_and_serve_refuses_a_bad_pair() {
    let ca = Ca::new("test CA");
    let one = ca.server("one", 30);
    let two = ca.server("two", 30);
    let files = TlsFiles::with(&one);
    let builder = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .listen_entry(&files.listen_yaml(&files.cert(), &files.key(), None));
    let config_dir = tempfile::tempdir().expect("tempdir");
    builder.write_files(config_dir.path(), (18443, 19464));
    let check = || run_scopegate(config_dir.path(), &["check", "--config", "scopegate.yaml"]);

    let good = check();
    assert!(good.status.success(), "{good:?}");
    assert!(good.stdout.contains("1 TLS listener"), "{good:?}");

    std::fs::write(files.key(), &two.key).expect("write");
    let mismatch = check();
    assert!(!mismatch.status.success(), "{mismatch:?}");
    assert!(
        mismatch.stderr.contains("scopegate.yaml:5:")
            && mismatch.stderr.contains("listen[0].tls.key_file: ")
            && mismatch
                .stderr
                .contains("the private key does not match the certificate"),
        "{mismatch:?}"
    );
    let serve = run_scopegate(config_dir.path(), &["serve", "--config", "scopegate.yaml"]);
    assert!(!serve.status.success(), "{serve:?}");
    assert!(serve.stderr.contains("does not match"), "{serve:?}");

    let expired = ca.expired_server();
    std::fs::write(files.cert(), &expired.cert).expect("write");
    std::fs::write(files.key(), &expired.key).expect("write");
    let old = check();
    assert!(!old.status.success(), "{old:?}");
    assert!(
        old.stderr.contains("listen[0].tls.cert_file: ")
            && old.stderr.contains("the certificate expired at "),
        "{old:?}"
    );

    std::fs::write(files.cert(), "not a certificate").expect("write");
    let garbage = check();
    assert!(garbage.stderr.contains("no PEM certificate"), "{garbage:?}");
}

/// A rustls client config trusting `ca`, offering ALPN `alpn`.
fn rustls_client(ca: &Ca, alpn: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA"))
        .expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(config)
}

/// A blocking TLS connection to `proxy` trusting `ca`, offering only
/// ALPN `alpn`, with the handshake done.
fn tls_conn(
    ca: &Ca,
    proxy: &Proxy,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(rustls_client(ca, alpn), name).expect("client");
    let sock = TcpStream::connect(proxy.addr()).expect("connect");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls
}

/// A blocking TLS connection to `proxy` trusting `ca`, offering only
/// ALPN `http/1.1`, with the handshake done.
fn http1_tls_conn(
    ca: &Ca,
    proxy: &Proxy,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_conn(ca, proxy, b"http/1.1")
}

/// The header deadline (`conn_guard`) holds on HTTPS listeners too, timed
/// from the end of the handshake.
#[test]
fn a_header_trickled_over_https_is_cut_at_the_header_deadline() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = https_builder(&up, &files, None)
        .config("header_read_timeout_ms: 1000")
        .start();
    let mut tls = http1_tls_conn(&ca, &proxy);
    let started = Instant::now();
    let every = Duration::from_millis(100);
    tls.sock.set_read_timeout(Some(every)).expect("timeout");
    let request =
        format!("GET /v1/configs HTTP/1.1\r\nhost: localhost\r\nx-portkey-api-key: {BOT}\r\n\r\n");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered_at = None;
    // One byte per `every`, until the proxy says something.
    for b in request.bytes() {
        if tls.write_all(&[b]).and_then(|()| tls.flush()).is_err() {
            break;
        }
        match tls.read(&mut buf) {
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                answered_at = Some(started.elapsed());
                break;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("TLS read: {e}"),
        }
    }
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    let at = answered_at.expect("no answer while trickling");
    assert!(
        at >= Duration::from_millis(900) && at < Duration::from_millis(1500),
        "cut after {at:?}"
    );
    up.assert_untouched();
    assert_eq!(
        proxy.metric(
            "scopegate_downstream_header_errors_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
}

/// HTTP/2 has its own framing: its connections carry no header deadline
/// and stay up between requests.
#[test]
fn http2_connections_are_not_cut_by_the_header_deadline() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = https_builder(&up, &files, None)
        .config("header_read_timeout_ms: 300")
        .start();
    let c = client(&ca, Proto::H2Only, None, proxy.addr());
    block_on(async {
        let first = exchange(chat(&c, &proxy, BOT)).await;
        assert_eq!(first.version, reqwest::Version::HTTP_2);
        expect_forwarded(&first.response);
        // Longer than the header deadline (the gap is the test).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let second = exchange(chat(&c, &proxy, BOT)).await;
        expect_forwarded(&second.response);
    });
    assert_eq!(
        proxy.metric(
            "scopegate_downstream_header_errors_total",
            &[("reason", "timeout")]
        ),
        0.0
    );
}

// ---------------------------------------------------------------------------
// Connections cannot be held for free: the handshake deadline, HTTP/2
// idleness, the bound on open connections.

/// The idle timeout the HTTP/2 tests run with.
const IDLE: Duration = Duration::from_millis(300);
/// How late after its deadline a connection may be closed.
const CLOSE_SLACK: Duration = Duration::from_millis(700);

/// The client connection preface, then an empty SETTINGS frame.
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// A SETTINGS frame with the ACK flag.
const H2_SETTINGS_ACK: &[u8] = b"\0\0\0\x04\x01\0\0\0\0";

#[test]
fn a_tls_handshake_that_does_not_finish_is_cut_at_the_header_deadline() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let deadline = Duration::from_millis(500);
    let proxy = https_builder(&up, &files, None)
        .config(&format!("header_read_timeout_ms: {}", deadline.as_millis()))
        .start();

    // One client says nothing; one sends its ClientHello, reads what the
    // server answers and never sends its Finished.
    let started = Instant::now();
    let mut silent = TcpStream::connect(proxy.addr()).expect("connect");
    let mut half = TcpStream::connect(proxy.addr()).expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut hello = rustls::ClientConnection::new(rustls_client(&ca, b"h2"), name).expect("client");
    hello.write_tls(&mut half).expect("ClientHello");
    half.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    hello.read_tls(&mut half).expect("the server's flight");
    hello.process_new_packets().expect("a valid server flight");
    assert!(hello.wants_write(), "the client's Finished is held back");

    // Others are served meanwhile.
    let c = client(&ca, Proto::Alpn, None, proxy.addr());
    expect_forwarded(&block_on(exchange(chat(&c, &proxy, BOT))).response);

    for (who, sock) in [("silent", &mut silent), ("half-done", &mut half)] {
        let at = closed_after(sock, started, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the {who} handshake was not cut"));
        assert!(
            at >= deadline - Duration::from_millis(50) && at < deadline + CLOSE_SLACK,
            "{who}: cut after {at:?}"
        );
    }
    // scopegate's deadline ended them, not pingora's (60 s, an ERROR line).
    let logs = proxy.logs();
    assert!(!logs.contains("Downstream handshake"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert_eq!(up.completions.count(), 1);
}

/// How long after `since` the server closed `tls` (EOF, with or without
/// `close_notify`, or reset); `None` when it is still open after `wait`.
fn tls_closed_after(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    since: Instant,
    wait: Duration,
) -> Option<Duration> {
    tls.sock.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(since.elapsed()),
        }
    }
}

#[test]
fn an_http2_connection_with_no_stream_is_closed_after_idle_timeout_ms() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let proxy = https_builder(&up, &files, None)
        .config(&format!("idle_timeout_ms: {}", IDLE.as_millis()))
        .start();

    let mut tls = tls_conn(&ca, &proxy, b"h2");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(H2_HELLO).expect("preface");
    tls.flush().expect("flush");
    // The server's first frame is its SETTINGS.
    let mut frame = [0u8; 9];
    tls.read_exact(&mut frame).expect("server SETTINGS");
    assert_eq!((frame[3], frame[4] & 1), (4, 0), "{frame:?}");
    let len = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let mut payload = vec![0u8; len];
    tls.read_exact(&mut payload).expect("SETTINGS payload");
    tls.write_all(H2_SETTINGS_ACK).expect("ACK");
    tls.flush().expect("flush");
    let since = Instant::now();

    let closed = tls_closed_after(&mut tls, since, Duration::from_secs(5))
        .expect("the idle HTTP/2 connection stayed open");
    // The proxy's clock started a little before `since` (the lower bound
    // only shows that something else did not close it at once).
    assert!(
        closed >= IDLE / 2 && closed < IDLE + CLOSE_SLACK,
        "closed after {closed:?}"
    );
    // Others are served.
    let c = client(&ca, Proto::H2Only, None, proxy.addr());
    expect_forwarded(&block_on(exchange(chat(&c, &proxy, BOT))).response);
}

#[test]
fn an_http2_connection_with_an_open_stream_outlives_idle_timeout_ms() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let stream = up.completions.stream("text/event-stream");
    let proxy = https_builder(&up, &files, None)
        .config(&format!("idle_timeout_ms: {}", IDLE.as_millis()))
        .start();
    stream.send("data: {\"delta\":\"first\"}\n\n");

    let c = client(&ca, Proto::H2Only, None, proxy.addr());
    block_on(async {
        let mut resp = chat(&c, &proxy, BOT)
            .body(r#"{"model":"m","stream":true,"messages":[]}"#)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        read_until(&mut resp, "first").await;
        // Three idle timeouts with the stream open and silent (the gap is
        // the test).
        tokio::time::sleep(IDLE * 3).await;
        stream.send("data: {\"delta\":\"second\"}\n\n");
        read_until(&mut resp, "second").await;
        stream.send("data: [DONE]\n\n");
        stream.finish();
        let rest = read_rest(&mut resp).await;
        assert!(rest.contains("[DONE]"), "rest: {rest:?}");
    });
}

#[test]
fn tls_connections_hold_a_slot_of_max_client_connections_from_accept_through_the_handshake() {
    let up = Upstreams::start();
    let ca = Ca::new("test CA");
    let files = TlsFiles::with(&ca.server("one", 30));
    let deadline = Duration::from_millis(1000);
    let proxy = https_builder(&up, &files, None)
        .config("max_client_connections: 2")
        .config(&format!("header_read_timeout_ms: {}", deadline.as_millis()))
        .start();
    let listener = proxy.addr().to_string();
    let refused = || {
        proxy.metric(
            "scopegate_downstream_connections_refused_total",
            &[("listener", &listener)],
        )
    };

    // Two connections that never start their handshake hold both slots
    // (`threads: 1`: connections are admitted in the order they came).
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(proxy.addr()).expect("connect"))
        .collect();
    let mut third = TcpStream::connect(proxy.addr()).expect("connect");
    let at = closed_after(&mut third, Instant::now(), Duration::from_secs(2))
        .expect("a third connection was kept");
    assert!(at < Duration::from_millis(500), "closed after {at:?}");
    assert_eq!(refused(), 1.0);
    let c = client(&ca, Proto::Alpn, None, proxy.addr());
    assert!(
        block_on(async { chat(&c, &proxy, BOT).send().await }).is_err(),
        "a client beyond the bound was served"
    );
    assert_eq!(refused(), 2.0);
    up.assert_untouched();

    // The stalled handshakes are cut at the deadline; then clients are served.
    for sock in &mut stalled {
        let cut = closed_after(sock, started, Duration::from_secs(10)).expect("not cut");
        assert!(cut < deadline + CLOSE_SLACK, "cut after {cut:?}");
    }
    assert!(
        poll_until(Duration::from_secs(5), || {
            let c = client(&ca, Proto::Alpn, None, proxy.addr());
            block_on(async { chat(&c, &proxy, BOT).send().await }).is_ok_and(|r| r.status() == 200)
        }),
        "no client was served once the slots were free"
    );
    assert_eq!(up.completions.count(), 1);
}
