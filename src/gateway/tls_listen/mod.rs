//! HTTPS for clients (docs/reference.md#https-listeners): TLS listeners whose certificates rotate live.
//!
//! Each TLS listener owns a [`CertResolver`]: rustls asks it for the
//! certificate at every handshake, and it answers with the [`CertPair`] in
//! its `ArcSwap`. [`CertPairs`], registered with the one file watcher
//! ([`crate::ops::watch`]), re-reads the files on filesystem events in their
//! folders (a Kubernetes Secret volume swaps a `..data` symlink, so the
//! folder is watched, not the file), on SIGHUP and on a poll; a new pair
//! that parses, matches and has not expired is swapped in for the next
//! handshakes, while open connections keep the one they shook hands with. A
//! pair that fails keeps the old one, logged and counted. pingora (0.9.1,
//! rustls backend, TLS 1.2 and 1.3 only) gets the resolver, the optional
//! client-certificate verifier and the ALPN list through its `TlsSettings`,
//! built into the acceptor with which [`crate::gateway::conn_guard`] does each
//! handshake (under `header_read_timeout_ms`; pingora itself listens on
//! plain TCP).
//!
//! Upstream TLS (a private CA for an `https` upstream) is [`crate::gateway::upstream`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::config::{Config, ListenerTls};
use crate::diag::Diagnostic;
use crate::ops::metrics::metrics;
use crate::ops::watch::{folder_of, in_folders, Trigger, Watched};

/// Largest certificate, key or CA file read.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The crypto provider every TLS object here is built with (pingora's
/// rustls backend uses `ring` too).
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Which file of a listener's `tls` a problem is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsField {
    /// `cert_file`.
    Cert,
    /// `key_file`.
    Key,
    /// `client_ca_file`.
    ClientCa,
}

impl TlsField {
    /// The config field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsField::Cert => "cert_file",
            TlsField::Key => "key_file",
            TlsField::ClientCa => "client_ca_file",
        }
    }
}

/// A TLS file that cannot be used, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct TlsFileError {
    /// The file.
    pub file: PathBuf,
    /// Which setting names it.
    pub field: TlsField,
    /// What is wrong, in words an operator can act on.
    pub problem: String,
}

impl TlsFileError {
    fn new(file: &Path, field: TlsField, problem: impl Into<String>) -> TlsFileError {
        TlsFileError {
            file: file.to_path_buf(),
            field,
            problem: problem.into(),
        }
    }
}

/// Reads a PEM file of at most [`MAX_PEM_FILE_BYTES`].
fn read_pem_file(path: &Path, field: TlsField) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| TlsFileError::new(path, field, format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsFileError::new(path, field, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(TlsFileError::new(
            path,
            field,
            "is larger than 1 MiB: not a PEM certificate or key",
        ));
    }
    Ok(bytes)
}

/// Every certificate in PEM text; at least one.
fn pem_certificates(
    pem: &[u8],
    file: &Path,
    field: TlsField,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::new(file, field, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsFileError::new(
            file,
            field,
            "no PEM certificate (`-----BEGIN CERTIFICATE-----`) found",
        ));
    }
    Ok(certs)
}

/// A certificate chain and the private key that goes with it, checked.
#[derive(Debug)]
pub struct CertPair {
    /// What rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's `notBefore`, Unix seconds.
    pub not_before: i64,
    /// The leaf's `notAfter`, Unix seconds.
    pub not_after: i64,
    /// The leaf's subject, for logs.
    pub subject: String,
}

impl CertPair {
    /// Reads and checks the pair in `cert_file` and `key_file` (see
    /// [`CertPair::from_pem`]).
    ///
    /// # Errors
    /// As [`CertPair::from_pem`], and when a file cannot be read.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertPair, TlsFileError> {
        let cert_pem = read_pem_file(cert_file, TlsField::Cert)?;
        let key_pem = read_pem_file(key_file, TlsField::Key)?;
        CertPair::from_pem(&cert_pem, &key_pem, cert_file, key_file)
    }

    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8,
    /// PKCS#1 or SEC1) and checks that the key is the leaf's. The file names
    /// are for messages only. Expiry is not checked here (see
    /// [`CertPair::check_validity`]).
    ///
    /// # Errors
    /// No certificate, bad PEM, a certificate that does not parse, no or an
    /// unsupported key, or a key that does not match the leaf.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_file: &Path,
        key_file: &Path,
    ) -> Result<CertPair, TlsFileError> {
        let chain = pem_certificates(cert_pem, cert_file, TlsField::Cert)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            let problem = match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key found (PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA \
                     PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)"
                        .to_string()
                }
                e => format!("bad PEM: {e}"),
            };
            TlsFileError::new(key_file, TlsField::Key, problem)
        })?;
        let (not_before, not_after, subject) = {
            let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).map_err(|e| {
                TlsFileError::new(
                    cert_file,
                    TlsField::Cert,
                    format!("cannot parse the first certificate: {e}"),
                )
            })?;
            (
                leaf.validity().not_before.timestamp(),
                leaf.validity().not_after.timestamp(),
                leaf.subject().to_string(),
            )
        };
        let signing_key = provider().key_provider.load_private_key(key).map_err(|e| {
            TlsFileError::new(
                key_file,
                TlsField::Key,
                format!("unsupported private key: {e}"),
            )
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // ring can name the public key of every key type it loads; an
            // unknown answer is not a mismatch.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsFileError::new(
                    key_file,
                    TlsField::Key,
                    format!(
                        "the private key does not match the certificate in {}",
                        cert_file.display()
                    ),
                ))
            }
            Err(e) => {
                return Err(TlsFileError::new(
                    cert_file,
                    TlsField::Cert,
                    format!("cannot use the first certificate: {e}"),
                ))
            }
        }
        Ok(CertPair {
            certified: Arc::new(certified),
            not_before,
            not_after,
            subject,
        })
    }

    /// Refuses a leaf that has expired at `now` (Unix seconds).
    ///
    /// # Errors
    /// The certificate's `notAfter` is in the past.
    pub fn check_validity(&self, now: i64, cert_file: &Path) -> Result<(), TlsFileError> {
        if self.not_after < now {
            return Err(TlsFileError::new(
                cert_file,
                TlsField::Cert,
                format!("the certificate expired at {}", format_unix(self.not_after)),
            ));
        }
        Ok(())
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &[u8] {
        self.certified.cert.first().map_or(&[], |c| c.as_ref())
    }
}

fn format_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Builds the verifier that requires client certificates signed by a CA in
/// `ca_file` (mTLS).
///
/// # Errors
/// The file cannot be read, holds no certificate, or one that is not a CA
/// rustls can use.
pub fn client_verifier(ca_file: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsFileError> {
    let pem = read_pem_file(ca_file, TlsField::ClientCa)?;
    let mut roots = RootCertStore::empty();
    for cert in pem_certificates(&pem, ca_file, TlsField::ClientCa)? {
        roots.add(cert).map_err(|e| {
            TlsFileError::new(ca_file, TlsField::ClientCa, format!("unusable CA: {e}"))
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsFileError::new(ca_file, TlsField::ClientCa, e.to_string()))
}

/// Serves the certificate pair in force to every new handshake.
pub struct CertResolver {
    current: ArcSwap<CertPair>,
}

impl CertResolver {
    /// A resolver serving `pair`.
    pub fn new(pair: CertPair) -> CertResolver {
        CertResolver {
            current: ArcSwap::from_pointee(pair),
        }
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertPair> {
        self.current.load_full()
    }

    /// Puts `pair` in force for the next handshakes.
    pub fn set(&self, pair: CertPair) {
        self.current.store(Arc::new(pair));
    }
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pair = self.current.load();
        f.debug_struct("CertResolver")
            .field("subject", &pair.subject)
            .field("not_after", &pair.not_after)
            .finish()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

/// One HTTPS listener: its files, its resolver, its client verifier.
pub struct TlsListener {
    address: String,
    cert_file: PathBuf,
    key_file: PathBuf,
    http2: bool,
    resolver: Arc<CertResolver>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// Digest of the file contents the pair in force came from.
    loaded_digest: [u8; 32],
}

impl TlsListener {
    /// Loads the listener's pair (and client CA): it must load, match and
    /// not have expired.
    ///
    /// # Errors
    /// Every problem of the files.
    pub fn load(address: &str, tls: &ListenerTls) -> Result<TlsListener, Vec<TlsFileError>> {
        let mut problems = Vec::new();
        let files = read_pair_files(&tls.cert_file, &tls.key_file);
        let pair = files
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|(c, k)| CertPair::from_pem(c, k, &tls.cert_file, &tls.key_file))
            .and_then(|p| p.check_validity(now_unix(), &tls.cert_file).map(|()| p));
        let pair = pair.map_err(|e| problems.push(e)).ok();
        let client_verifier = match &tls.client_ca_file {
            Some(ca) => client_verifier(ca).map_err(|e| problems.push(e)).ok(),
            None => None,
        };
        match (pair, files) {
            (Some(pair), Ok((cert, key))) if problems.is_empty() => Ok(TlsListener {
                address: address.to_string(),
                cert_file: tls.cert_file.clone(),
                key_file: tls.key_file.clone(),
                http2: tls.http2,
                resolver: Arc::new(CertResolver::new(pair)),
                client_verifier,
                loaded_digest: pair_digest(&cert, &key),
            }),
            _ => Err(problems),
        }
    }

    /// The listen address, as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The resolver new handshakes ask.
    pub fn resolver(&self) -> &Arc<CertResolver> {
        &self.resolver
    }

    /// pingora's settings for this listener: the resolver, mTLS when
    /// configured, and ALPN `h2` + `http/1.1` (or `http/1.1` alone).
    /// pingora's rustls backend allows TLS 1.2 and 1.3 only.
    ///
    /// # Errors
    /// Never in pingora 0.9.1; its constructor returns a `Result`.
    pub fn settings(&self) -> anyhow::Result<TlsSettings> {
        // The paths are ignored once a resolver is set.
        let mut settings = TlsSettings::intermediate("", "")
            .map_err(|e| anyhow::anyhow!("listen `{}`: {e}", self.address))?;
        settings.set_cert_resolver(self.resolver.clone());
        if let Some(verifier) = &self.client_verifier {
            settings.set_client_cert_verifier(verifier.clone());
        }
        if self.http2 {
            settings.enable_h2();
        } else {
            settings.set_alpn(ALPN::H1);
        }
        Ok(settings)
    }

    /// Whether the TLS listener at `addr` is this process's: a handshake
    /// presents the certificate this listener is serving. (A client
    /// certificate is not needed to see the server's, so this works on mTLS
    /// listeners too.)
    pub fn answers_as_this_process(&self, addr: &SocketAddr) -> bool {
        probe_presents(addr, self.resolver.current().leaf())
    }
}

fn read_pair_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsFileError> {
    Ok((
        read_pem_file(cert, TlsField::Cert)?,
        read_pem_file(key, TlsField::Key)?,
    ))
}

fn pair_digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert.len() as u64).to_le_bytes());
    h.update(cert);
    h.update(key);
    h.finalize().into()
}

/// Loads every TLS listener of `config`, in config order.
///
/// # Errors
/// Every problem of every listener's files, positioned at the setting that
/// names the file when the config text can be read again.
pub fn load_listeners(config: &Config) -> Result<Vec<Arc<TlsListener>>, Vec<Diagnostic>> {
    let mut out = Vec::new();
    let mut problems: Vec<(usize, TlsFileError)> = Vec::new();
    for (i, listener) in config.listen.iter().enumerate() {
        let Some(tls) = &listener.tls else { continue };
        match TlsListener::load(&listener.address, tls) {
            Ok(l) => out.push(Arc::new(l)),
            Err(errors) => problems.extend(errors.into_iter().map(|e| (i, e))),
        }
    }
    if problems.is_empty() {
        return Ok(out);
    }
    let text = crate::diag::read_text_file(
        &config.path,
        crate::config::MAX_CONFIG_FILE_BYTES,
        "config file",
    )
    .ok();
    let index = text
        .as_deref()
        .and_then(crate::diag::position::PositionIndex::new);
    Err(problems
        .into_iter()
        .map(|(i, e)| {
            let at = format!("listen[{i}].tls.{}", e.field.as_str());
            Diagnostic {
                file: config.path.clone(),
                position: index.as_ref().and_then(|ix| ix.locate(&at)),
                message: format!("{at}: {e}"),
            }
        })
        .collect())
}

/// What one look at a listener's files found.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(TlsFileError),
}

/// The TLS listeners' certificate pairs, as the file watcher
/// ([`crate::ops::watch`]) sees them: read again at every look, put in
/// force when their content changed (or on SIGHUP) and the pair is good.
pub struct CertPairs {
    listeners: Vec<Arc<TlsListener>>,
    seen: Vec<Seen>,
}

impl CertPairs {
    /// The pairs of `listeners`, as loaded.
    pub fn new(listeners: Vec<Arc<TlsListener>>) -> CertPairs {
        let seen = listeners
            .iter()
            .map(|l| Seen::Content(l.loaded_digest))
            .collect();
        CertPairs { listeners, seen }
    }
}

impl Watched for CertPairs {
    fn folders(&self) -> Vec<PathBuf> {
        let mut folders: Vec<PathBuf> = Vec::new();
        for l in &self.listeners {
            for file in [&l.cert_file, &l.key_file] {
                let dir = folder_of(file);
                if !folders.contains(&dir) {
                    folders.push(dir);
                }
            }
        }
        folders
    }

    fn concerns(&self, paths: &[PathBuf]) -> bool {
        in_folders(paths, &self.folders())
    }

    fn look(&mut self, trigger: Trigger) -> Option<Duration> {
        for (listener, last) in self.listeners.iter().zip(self.seen.iter_mut()) {
            reload_if_changed(listener, last, trigger);
        }
        None
    }
}

/// Looks at one listener's files; loads them when their content differs
/// from the last look (or on SIGHUP), and puts the pair in force when it
/// is good.
fn reload_if_changed(listener: &TlsListener, last: &mut Seen, trigger: Trigger) {
    let files = read_pair_files(&listener.cert_file, &listener.key_file);
    let now_seen = match &files {
        Ok((cert, key)) => Seen::Content(pair_digest(cert, key)),
        Err(e) => Seen::Unreadable(e.clone()),
    };
    if now_seen == *last && trigger != Trigger::Signal {
        return;
    }
    *last = now_seen;
    let result = files.and_then(|(cert, key)| {
        let pair = CertPair::from_pem(&cert, &key, &listener.cert_file, &listener.key_file)?;
        pair.check_validity(now_unix(), &listener.cert_file)?;
        Ok(pair)
    });
    match result {
        Ok(pair) => {
            let (not_after, subject) = (pair.not_after, pair.subject.clone());
            listener.resolver.set(pair);
            if let Some(m) = metrics() {
                m.tls_loaded(&listener.address, not_after);
            }
            tracing::info!(
                listener = %listener.address,
                trigger = trigger.as_str(),
                subject = %subject,
                not_after = %format_unix(not_after),
                "TLS certificate reloaded; new handshakes use it"
            );
        }
        Err(e) => {
            if let Some(m) = metrics() {
                m.tls_load_failed();
            }
            tracing::error!(
                listener = %listener.address,
                trigger = trigger.as_str(),
                problem = %e,
                "TLS certificate reload rejected; the certificate in force stays"
            );
        }
    }
}

/// A client that accepts exactly one server certificate (the readiness
/// probe's: "is this listener ours?"), and records that it saw it.
#[derive(Debug)]
struct ExpectCertificate {
    leaf: Vec<u8>,
    seen: AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ExpectCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_slice() {
            self.seen.store(true, Ordering::Release);
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not this process's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether a TLS handshake with `addr` is presented `leaf`.
fn probe_presents(addr: &SocketAddr, leaf: &[u8]) -> bool {
    let verifier = Arc::new(ExpectCertificate {
        leaf: leaf.to_vec(),
        seen: AtomicBool::new(false),
        provider: provider(),
    });
    let Ok(config) = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
    else {
        return false;
    };
    let config = config
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let Ok(mut conn) = rustls::ClientConnection::new(Arc::new(config), name) else {
        return false;
    };
    let Ok(mut tcp) = std::net::TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = tcp.set_write_timeout(Some(Duration::from_millis(500)));
    // Finish the handshake (a half-done one would hold a connection until
    // the handshake deadline); an mTLS listener refuses it after showing its
    // certificate.
    while conn.is_handshaking() {
        if conn.complete_io(&mut tcp).is_err() {
            break;
        }
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    verifier.seen.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests;
