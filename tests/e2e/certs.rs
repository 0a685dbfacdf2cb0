//! Test certificates made with `rcgen`: a CA, server and client
//! certificates it signs, and the files an HTTPS listener reads. Shared by
//! the TLS listener tests and the harness's HTTP/2 column
//! ([`super::harness::Proto::H2`]).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A CA that signs test certificates.
pub struct Ca(pub CertifiedIssuer<'static, KeyPair>);

/// A certificate and its key, as PEM, and the certificate as DER.
pub struct Pair {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
    pub not_after: i64,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA"))
    }

    pub fn pem(&self) -> String {
        self.0.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid from an
    /// hour ago for `days`.
    pub fn server(&self, name: &str, days: i64) -> Pair {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.leaf(
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            (now - 3600, now + days * 86_400),
        )
    }

    /// A server certificate whose validity ended yesterday.
    pub fn expired_server(&self) -> Pair {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.leaf(
            "expired",
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            (now - 30 * 86_400, now - 86_400),
        )
    }

    pub fn client(&self, name: &str) -> Pair {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.leaf(
            name,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            (now - 3600, now + 86_400),
        )
    }

    pub fn leaf(
        &self,
        name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
        (from, until): (i64, i64),
    ) -> Pair {
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(from).expect("time");
        params.not_after = time::OffsetDateTime::from_unix_timestamp(until).expect("time");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.0).expect("sign");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
            not_after: until,
        }
    }
}

/// The proxy's certificate files: `tls/server.pem` and `tls/server-key.pem`
/// in a folder of the test's, plus a client CA bundle.
pub struct TlsFiles {
    pub dir: TempDir,
}

impl TlsFiles {
    pub fn with(pair: &Pair) -> TlsFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tls")).expect("mkdir");
        let files = TlsFiles { dir };
        std::fs::write(files.cert(), &pair.cert).expect("write cert");
        std::fs::write(files.key(), &pair.key).expect("write key");
        files
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls/server.pem")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls/server-key.pem")
    }

    /// Writes `text` beside `path` and renames it into place (what editors
    /// and most ACME clients do).
    pub fn rename_into(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// Writes the client CA bundle; returns its path.
    pub fn client_ca(&self, ca: &Ca) -> PathBuf {
        let path = self.dir.path().join("tls/clients-ca.pem");
        std::fs::write(&path, ca.pem()).expect("write CA");
        path
    }

    /// The listener's lines beside its address.
    pub fn listen_yaml(&self, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
        let mut out = format!(
            "tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            out.push_str(&format!("  client_ca_file: \"{}\"\n", ca.display()));
        }
        out
    }
}
