use super::*;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

/// A test CA.
fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

/// A leaf for `localhost` signed by `ca`, valid from `from` to `until`
/// (Unix seconds): (certificate PEM, key PEM).
fn leaf_between(ca: &CertifiedIssuer<'_, KeyPair>, from: i64, until: i64) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).expect("time");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).expect("time");
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    (cert.pem(), key.serialize_pem())
}

fn leaf(ca: &CertifiedIssuer<'_, KeyPair>) -> (String, String) {
    let now = now_unix();
    leaf_between(ca, now - 3600, now + 86_400)
}

fn pair(cert: &str, key: &str) -> Result<CertPair, TlsFileError> {
    CertPair::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        Path::new("server.pem"),
        Path::new("server-key.pem"),
    )
}

#[test]
fn a_matching_pair_loads_with_the_leaf_first_and_its_validity() {
    let ca = ca();
    let now = now_unix();
    let (cert, key) = leaf_between(&ca, now - 60, now + 7200);
    // A chain: leaf, then the CA.
    let chain = format!("{cert}{}", ca.pem());
    let p = pair(&chain, &key).expect("loads");
    assert_eq!(p.certified.cert.len(), 2);
    assert_eq!(p.not_after, now + 7200);
    assert_eq!(p.not_before, now - 60);
    assert!(p.check_validity(now, Path::new("server.pem")).is_ok());
    let (_, parsed) = x509_parser::parse_x509_certificate(p.leaf()).expect("leaf parses");
    assert!(!parsed.is_ca());
}

#[test]
fn a_key_of_another_certificate_is_a_mismatch_named_on_the_key_file() {
    let ca = ca();
    let (cert, _) = leaf(&ca);
    let (_, other_key) = leaf(&ca);
    let e = pair(&cert, &other_key).expect_err("mismatch");
    assert_eq!(e.field, TlsField::Key);
    assert_eq!(
        e.to_string(),
        "server-key.pem: the private key does not match the certificate in server.pem"
    );
}

#[test]
fn an_expired_certificate_loads_but_fails_the_validity_check() {
    let ca = ca();
    let now = now_unix();
    let (cert, key) = leaf_between(&ca, now - 7200, now - 3600);
    let p = pair(&cert, &key).expect("parses");
    let e = p
        .check_validity(now, Path::new("server.pem"))
        .expect_err("expired");
    assert_eq!(e.field, TlsField::Cert);
    assert!(e.problem.starts_with("the certificate expired at "), "{e}");
}

#[test]
fn files_without_pem_items_say_what_was_expected() {
    let ca = ca();
    let (cert, key) = leaf(&ca);
    let e = pair("hello", &key).expect_err("no cert");
    assert_eq!(e.field, TlsField::Cert);
    assert!(e.problem.contains("no PEM certificate"), "{e}");
    let e = pair(&cert, &cert).expect_err("no key");
    assert_eq!(e.field, TlsField::Key);
    assert!(e.problem.contains("no PEM private key"), "{e}");
}

#[test]
fn the_resolver_serves_the_new_pair_while_an_old_handle_stays_valid() {
    let ca = ca();
    let (c1, k1) = leaf(&ca);
    let (c2, k2) = leaf(&ca);
    let resolver = CertResolver::new(pair(&c1, &k1).expect("first"));
    let old = resolver.current();
    resolver.set(pair(&c2, &k2).expect("second"));
    let new = resolver.current();
    assert_ne!(old.leaf(), new.leaf());
    // What an open connection holds is untouched by the swap.
    assert_eq!(
        old.leaf(),
        CertificateDer::from_pem_slice(c1.as_bytes())
            .expect("pem")
            .as_ref()
    );
}

/// A TLS listener over files in a temp dir, and the dir.
fn listener_on_files(cert: &str, key: &str) -> (TlsListener, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("server.pem"), cert).expect("write");
    std::fs::write(dir.path().join("server-key.pem"), key).expect("write");
    let tls = ListenerTls {
        cert_file: dir.path().join("server.pem"),
        key_file: dir.path().join("server-key.pem"),
        client_ca_file: None,
        http2: true,
    };
    let l = TlsListener::load("127.0.0.1:0", &tls).expect("loads");
    (l, dir)
}

fn failures() -> u64 {
    metrics().map_or(0, |m| m.tls_reloads.with_label_values(&["failure"]).get())
}

#[test]
fn a_reload_puts_a_good_pair_in_force_and_keeps_the_old_one_on_a_mismatch() {
    let ca = ca();
    let (c1, k1) = leaf(&ca);
    let (c2, k2) = leaf(&ca);
    let (c3, _) = leaf(&ca);
    let (l, dir) = listener_on_files(&c1, &k1);
    let mut seen = Seen::Content(l.loaded_digest);
    let first = l.resolver().current();

    // Nothing changed: a poll leaves everything as it is.
    reload_if_changed(&l, &mut seen, Trigger::Poll);
    assert!(Arc::ptr_eq(&first, &l.resolver().current()));

    std::fs::write(dir.path().join("server.pem"), &c2).expect("write");
    std::fs::write(dir.path().join("server-key.pem"), &k2).expect("write");
    reload_if_changed(&l, &mut seen, Trigger::FsEvent);
    let second = l.resolver().current();
    assert_eq!(second.leaf(), pair(&c2, &k2).expect("pair").leaf());

    // A certificate whose key is not beside it: refused, counted, kept.
    let before = failures();
    std::fs::write(dir.path().join("server.pem"), &c3).expect("write");
    reload_if_changed(&l, &mut seen, Trigger::FsEvent);
    assert!(Arc::ptr_eq(&second, &l.resolver().current()));
    assert!(failures() > before);
    // The same bad content is not retried (nor counted) on every poll.
    let counted = failures();
    reload_if_changed(&l, &mut seen, Trigger::Poll);
    assert!(Arc::ptr_eq(&second, &l.resolver().current()));
    assert!(failures() >= counted);
}

#[test]
fn a_missing_file_at_start_is_reported_on_its_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = ListenerTls {
        cert_file: dir.path().join("nope.pem"),
        key_file: dir.path().join("nope-key.pem"),
        client_ca_file: Some(dir.path().join("ca.pem")),
        http2: true,
    };
    let errors = TlsListener::load("127.0.0.1:0", &tls)
        .err()
        .expect("refused");
    let fields: Vec<TlsField> = errors.iter().map(|e| e.field).collect();
    assert_eq!(fields, vec![TlsField::Cert, TlsField::ClientCa]);
}

#[test]
fn a_client_ca_file_builds_a_verifier_and_a_leaf_key_file_does_not() {
    let ca = ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write");
    assert!(client_verifier(&ca_file).is_ok());
    let (_, key) = leaf(&ca);
    std::fs::write(&ca_file, key).expect("write");
    let e = client_verifier(&ca_file).expect_err("refused");
    assert_eq!(e.field, TlsField::ClientCa);
}
