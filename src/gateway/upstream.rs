//! Upstream TLS: pingora's rustls backend verifies against the system roots
//! by default; an upstream's `ca_file` replaces them with a private CA.

use std::path::Path;
use std::sync::Arc;

use pingora::utils::tls::WrappedX509;

/// Reads a PEM bundle into pingora's per-peer CA list.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn load_ca_file(path: &Path) -> anyhow::Result<Arc<[WrappedX509]>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read CA file: {e}", path.display()))?
    {
        let cert = cert.map_err(|e| anyhow::anyhow!("{}: bad certificate: {e}", path.display()))?;
        let der = cert.as_ref().to_vec();
        // Validate it parses before handing it to pingora (which would panic).
        x509_check(&der).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        certs.push(WrappedX509::new(der, |raw| {
            pingora::utils::tls::parse_x509(raw)
        }));
    }
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found in CA file", path.display());
    }
    Ok(certs.into())
}

fn x509_check(der: &[u8]) -> Result<(), String> {
    // pingora's own parser panics on a certificate it cannot read.
    x509_parser::parse_x509_certificate(der)
        .map(|_| ())
        .map_err(|e| format!("cannot parse certificate: {e}"))
}
