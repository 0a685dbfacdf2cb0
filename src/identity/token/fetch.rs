//! Fetching a JWK set from a `jwks_url`: one GET over HTTP/1.1, HTTPS
//! verified against the system roots or the entry's `ca_file`, plain HTTP
//! only to a loopback host; a time limit on the whole exchange, a size cap
//! on the body, no redirects followed (a provider's keys are at the URL
//! configured, or nowhere).
//!
//! hyper's client connection and tokio-rustls, both already in the
//! dependency tree, do the work; the refresh schedule is in
//! [`super::refresh`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use super::jwks::{JwksError, JwksSet, MAX_JWKS_BYTES};
use crate::identity::keys::build::identity::is_loopback_host;

/// Time allowed for one fetch (connect, TLS, request, body).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a fetch gave no set. [`FetchError::as_str`] is a label for the
/// `result` of `scopegate_jwks_refreshes_total`.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL cannot be fetched (scheme, host).
    #[error("{0}")]
    Url(String),
    /// No TCP connection.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The TLS handshake failed (certificate not trusted, name mismatch…).
    #[error("TLS: {0}")]
    Tls(String),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// A status other than 200.
    #[error("the server answered {0}")]
    Status(u16),
    /// The body is larger than [`MAX_JWKS_BYTES`].
    #[error("the JWK set is larger than {} KiB", MAX_JWKS_BYTES / 1024)]
    TooLarge,
    /// Not done within the time limit.
    #[error("no answer within {} s", .0.as_secs_f32())]
    Timeout(Duration),
    /// The body is not a usable JWK set.
    #[error("{0}")]
    Jwks(JwksError),
}

impl FetchError {
    /// A short label.
    pub fn as_str(&self) -> &'static str {
        match self {
            FetchError::Url(_) => "url",
            FetchError::Connect(_) => "connect",
            FetchError::Tls(_) => "tls",
            FetchError::Http(_) => "http",
            FetchError::Status(_) => "status",
            FetchError::TooLarge => "too_large",
            FetchError::Timeout(_) => "timeout",
            FetchError::Jwks(_) => "invalid",
        }
    }
}

/// A TLS client configuration that trusts the certificates of `ca_file`,
/// or the system's roots when there is none.
///
/// # Errors
/// The CA file cannot be read, or no root could be found.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = match ca_file {
        Some(path) => {
            super::files::load_ca_file(path).map_err(|m| format!("{}: {m}", path.display()))?
        }
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match ca_file {
            Some(path) => format!("{}: no usable CA certificate", path.display()),
            None => "no system root certificates found".to_string(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Fetches and parses the JWK set at `url`.
///
/// # Errors
/// See [`FetchError`].
pub async fn fetch_jwks(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<JwksSet, FetchError> {
    let body = fetch_body(url, tls, timeout).await?;
    JwksSet::parse(&body).map_err(FetchError::Jwks)
}

async fn fetch_body(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| FetchError::Url("not a URL".into()))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::Url("only https (or http to loopback)".into())),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| FetchError::Url("no host".into()))?
        .clone();
    let host = authority.host();
    if !https && !is_loopback_host(host) {
        return Err(FetchError::Url("http only to a loopback host".into()));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let request = http::Request::get(path)
        .header(http::header::HOST, authority.as_str())
        .header(
            http::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(http::header::USER_AGENT, "scopegate")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Url(e.to_string()))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name =
                ServerName::try_from(bare.clone()).map_err(|e| FetchError::Url(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| FetchError::Tls(e.to_string()))?;
            send(stream, request).await
        } else {
            send(tcp, request).await
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

/// Aborts the connection task when the fetch ends (or is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send<S>(stream: S, request: http::Request<Empty<Bytes>>) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if response.status() != http::StatusCode::OK {
        return Err(FetchError::Status(response.status().as_u16()));
    }
    let too_large = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64);
    if too_large {
        return Err(FetchError::TooLarge);
    }
    match Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
        Err(e) => Err(FetchError::Http(e.to_string())),
    }
}

#[cfg(test)]
mod tests;
