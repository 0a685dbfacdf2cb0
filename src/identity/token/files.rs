//! Reading the files `identity_tokens` names: each `jwks_file` (a JWK set)
//! and each `ca_file` (PEM roots for a `jwks_url`). `scopegate check` and
//! every load of the keys file read them; a problem is reported like any
//! other keys-file problem, at the field that names the file, or inside the
//! JWK set at its own `FILE:LINE:COL`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::jwks::{JwksError, JwksSet, MAX_JWKS_BYTES};
use crate::diag::position::PositionIndex;
use crate::diag::Diagnostic;
use crate::identity::keys::{JwksSource, OrgIdx, Snapshot};

/// Largest `ca_file` read.
const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;

/// Reads a JWK set from a file.
///
/// # Errors
/// One diagnostic in the JWK set's file (with its position for JSON
/// errors), or about reading it.
pub fn load_jwks_file(path: &Path) -> Result<JwksSet, Diagnostic> {
    read_jwks_file(path).map_err(|e| match e {
        Unread::NotRead(d) | Unread::Bad(d) => d,
    })
}

/// Why a JWK set file gave no set.
enum Unread {
    /// It could not be read (missing, not a regular file, too large).
    NotRead(Diagnostic),
    /// Its content is wrong.
    Bad(Diagnostic),
}

fn read_jwks_file(path: &Path) -> Result<JwksSet, Unread> {
    let text =
        crate::diag::read_text_file(path, MAX_JWKS_BYTES as u64, "JWK set file").map_err(|d| {
            match d.position {
                None => Unread::NotRead(d),
                Some(_) => Unread::Bad(d),
            }
        })?;
    JwksSet::parse(text.as_bytes()).map_err(|e| {
        Unread::Bad(match e {
            JwksError::Json {
                message,
                line,
                column,
            } => Diagnostic::at(
                path,
                line,
                column,
                format!("JWK set is not valid JSON: {message}"),
            ),
            other => Diagnostic::file(path, format!("JWK set: {other}")),
        })
    })
}

/// Reads the PEM roots of a `ca_file`.
///
/// # Errors
/// In words, when the file cannot be read or holds no certificate.
pub fn load_ca_file(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let text =
        crate::diag::read_text_file(path, MAX_CA_FILE_BYTES, "CA file").map_err(|d| d.message)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA file holds a malformed certificate: {e}"))?;
    if certs.is_empty() {
        return Err("CA file holds no PEM certificate".to_string());
    }
    Ok(certs)
}

/// Reads every `jwks_file` of the snapshot and checks every `ca_file`.
/// `keys_file` and `keys_text` are the keys file the snapshot came from
/// (for the position of the field naming a file that cannot be read).
///
/// # Errors
/// Every problem found.
pub fn load_files(
    snap: &Snapshot,
    keys_file: &Path,
    keys_text: &str,
) -> Result<HashMap<OrgIdx, Arc<JwksSet>>, Vec<Diagnostic>> {
    let mut sets = HashMap::new();
    let mut problems = Vec::new();
    let index = std::cell::OnceCell::new();
    let at_field = |org: OrgIdx, field: &str, message: String| {
        let path = format!("organisations[{}].identity_tokens.{field}", org.0);
        let position = index
            .get_or_init(|| PositionIndex::new(keys_text))
            .as_ref()
            .and_then(|ix: &PositionIndex| ix.locate(&path));
        Diagnostic {
            file: keys_file.to_path_buf(),
            position,
            message: format!(
                "organisations[{}] ({}): identity_tokens.{field}: {message}",
                org.0,
                snap.organisation(org).id
            ),
        }
    };
    for settings in snap.identity().all() {
        let org = settings.organisation;
        match &settings.jwks {
            JwksSource::File(path) => match read_jwks_file(path) {
                Ok(set) => {
                    sets.insert(org, Arc::new(set));
                }
                // Not read at all: point at the field that names it.
                Err(Unread::NotRead(d)) => problems.push(at_field(
                    org,
                    "jwks_file",
                    format!("{}: {}", path.display(), d.message),
                )),
                Err(Unread::Bad(d)) => problems.push(d),
            },
            JwksSource::Url {
                ca_file: Some(path),
                ..
            } => {
                if let Err(m) = load_ca_file(path) {
                    problems.push(at_field(org, "ca_file", format!("{}: {m}", path.display())));
                }
            }
            JwksSource::Url { ca_file: None, .. } => {}
        }
    }
    if problems.is_empty() {
        Ok(sets)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keys::parse_keys_str;
    use crate::identity::scopes::ScopeRegistry;
    use crate::identity::token::testing::{jwks_json, TestKey};

    const KEYS: &str = "\
organisations:
  - id: org_a
    workspaces: [{ id: ws_a }]
    identity_tokens:
      issuer: https://idp.a/
      audience: scopegate
      jwks_file: jwks/a.json
  - id: org_b
    identity_tokens:
      issuer: https://idp.b/
      audience: scopegate
      jwks_url: https://idp.b/keys
      ca_file: ca.pem
keys: []
";

    fn setup(
        jwks: Option<&str>,
        ca: Option<&str>,
    ) -> (tempfile::TempDir, Snapshot, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_file = dir.path().join("keys.yaml");
        std::fs::write(&keys_file, KEYS).expect("write");
        std::fs::create_dir(dir.path().join("jwks")).expect("mkdir");
        if let Some(j) = jwks {
            std::fs::write(dir.path().join("jwks/a.json"), j).expect("write");
        }
        if let Some(c) = ca {
            std::fs::write(dir.path().join("ca.pem"), c).expect("write");
        }
        let snap = parse_keys_str(KEYS, &keys_file, &ScopeRegistry::builtin()).expect("valid");
        (dir, snap, keys_file)
    }

    const CA: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tls/ca.pem"
    ));

    #[test]
    fn reads_the_set_relative_to_the_keys_file() {
        let key = TestKey::es256("k1");
        let (_dir, snap, keys_file) = setup(Some(&jwks_json(&[&key])), Some(CA));
        let sets = load_files(&snap, &keys_file, KEYS).expect("loads");
        assert_eq!(sets.len(), 1);
        assert!(sets[&OrgIdx(0)].find("k1").is_some());
    }

    #[test]
    fn a_missing_file_points_at_the_field() {
        let (_dir, snap, keys_file) = setup(None, Some(CA));
        let d = load_files(&snap, &keys_file, KEYS).expect_err("missing");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].file, keys_file);
        assert_eq!(d[0].position, Some((7, 18)));
        assert!(
            d[0].message
                .starts_with("organisations[0] (org_a): identity_tokens.jwks_file: ")
                && d[0]
                    .message
                    .ends_with("jwks/a.json: JWK set file not found"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn bad_json_points_into_the_set() {
        let (dir, snap, keys_file) =
            setup(Some("{\"keys\": [\n  {\"kty\": \"EC\",}\n]}"), Some(CA));
        let d = load_files(&snap, &keys_file, KEYS).expect_err("bad");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].file, dir.path().join("jwks/a.json"));
        assert_eq!(d[0].position, Some((2, 16)));
        assert!(
            d[0].message
                .starts_with("JWK set is not valid JSON: trailing comma"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn a_set_without_usable_keys_says_why() {
        let set = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#;
        let (_dir, snap, keys_file) = setup(Some(set), Some(CA));
        let d = load_files(&snap, &keys_file, KEYS).expect_err("unusable");
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message.contains("no usable signing key")
                && d[0]
                    .message
                    .contains("keys[0]: a key type other than RSA, EC and OKP")
                && d[0].message.contains("keys[1]: not a signing key"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate() {
        let key = TestKey::ed25519("k");
        let (_dir, snap, keys_file) = setup(Some(&jwks_json(&[&key])), Some("not a certificate\n"));
        let d = load_files(&snap, &keys_file, KEYS).expect_err("bad ca");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].position, Some((13, 16)));
        assert!(
            d[0].message
                .ends_with("ca.pem: CA file holds no PEM certificate"),
            "{}",
            d[0].message
        );
        let (_dir, snap, keys_file) = setup(Some(&jwks_json(&[&key])), None);
        let d = load_files(&snap, &keys_file, KEYS).expect_err("no ca");
        assert!(
            d[0].message.ends_with("ca.pem: CA file not found"),
            "{}",
            d[0].message
        );
    }
}
