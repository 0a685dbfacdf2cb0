use std::path::Path;

use crate::diag::Diagnostic;
use crate::identity::keys::tokens::{JwksSource, SigningAlg};
use crate::identity::keys::{parse_keys_str, Snapshot};
use crate::identity::scopes::{KeyType, ScopeRegistry};

/// Two organisations; `{A}` is replaced by org_a's identity_tokens body
/// (indented six spaces), `{B}` by org_b's.
fn doc(a: &str, b: &str) -> String {
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    let mut out = String::from(
        "organisations:\n  - id: org_a\n    workspaces:\n      - id: ws_a\n        slug: a\n",
    );
    if !a.is_empty() {
        out.push_str("    identity_tokens:\n");
        out.push_str(&indent(a));
    }
    out.push_str("  - id: org_b\n    workspaces:\n      - id: ws_b\n");
    if !b.is_empty() {
        out.push_str("    identity_tokens:\n");
        out.push_str(&indent(b));
    }
    out.push_str("keys: []\n");
    out
}

const MINIMAL: &str = "issuer: https://idp.a/\naudience: scopegate\njwks_file: jwks.json";

fn load(text: &str) -> Result<Snapshot, Vec<Diagnostic>> {
    parse_keys_str(text, Path::new("conf/keys.yaml"), &ScopeRegistry::builtin())
}

fn ok(text: &str) -> Snapshot {
    match load(text) {
        Ok(s) => s,
        Err(d) => panic!("expected valid, got {d:#?}\n{text}"),
    }
}

/// The diagnostics as `FILE:LINE:COL: message` lines.
fn problems(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected problems in\n{text}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

fn one_problem(text: &str) -> String {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap_or_default()
}

#[test]
fn minimal_settings_take_the_defaults() {
    let snap = ok(&doc(MINIMAL, ""));
    let ids = snap.identity();
    assert!(ids.any());
    let s = ids.for_issuer("https://idp.a/").expect("issuer indexed");
    assert_eq!(&*snap.organisation(s.organisation).id, "org_a");
    assert_eq!(s.algorithms, SigningAlg::DEFAULT);
    assert_eq!(s.leeway.as_secs(), 30);
    assert_eq!(s.key_type, KeyType::WorkspaceUser);
    assert_eq!(&*s.claims.workspace, "workspace_slug");
    assert_eq!(&*s.claims.scopes, "scope");
    assert_eq!(&*s.claims.user, "sub");
    // Relative to the keys file's folder.
    assert_eq!(s.jwks, JwksSource::File("conf/jwks.json".into()));
    assert!(ids.for_issuer("https://idp.b/").is_none());
    assert!(ids.for_org(crate::identity::keys::OrgIdx(1)).is_none());
}

#[test]
fn no_identity_tokens_means_no_tokens() {
    let snap = ok(&doc("", ""));
    assert!(!snap.identity().any());
}

#[test]
fn every_field_is_read() {
    let a = "\
issuer: https://idp.a/
audience: scopegate
jwks_url: https://idp.a/keys
ca_file: /etc/ca.pem
jwks_refresh_seconds: 60
algorithms: [ES384, PS256]
leeway_seconds: 0
key_type: workspace-service
claims: { workspace: ws, scopes: scp, user: oid }
scopes_allowed: [completions.write, \"logs.*\"]
revoked_subjects: [mallory]
models: [\"gpt-4o*\"]
rate_limits: [{ type: requests, unit: rpm, value: 60 }, { type: tokens, unit: rpd, value: 1000 }]
usage_limits: { type: tokens, credit_limit: 1000000, periodic_reset: daily }
max_concurrent_requests: 4";
    let snap = ok(&doc(a, ""));
    let s = snap
        .identity()
        .for_issuer("https://idp.a/")
        .expect("indexed");
    assert_eq!(
        s.jwks,
        JwksSource::Url {
            url: "https://idp.a/keys".into(),
            ca_file: Some("/etc/ca.pem".into()),
            refresh: std::time::Duration::from_secs(60),
        }
    );
    assert_eq!(s.algorithms, [SigningAlg::ES384, SigningAlg::PS256]);
    assert_eq!(s.leeway.as_secs(), 0);
    assert_eq!(s.key_type, KeyType::WorkspaceService);
    assert_eq!(&*s.claims.user, "oid");
    assert!(s.revoked_subjects.contains("mallory"));
    assert_eq!(s.rate_limits.len(), 1);
    assert_eq!(s.limits.token_rates.len(), 1);
    assert_eq!(s.limits.max_concurrent, Some(4));
    assert!(s.limits.usage.is_some());
    let reg = ScopeRegistry::builtin();
    let names = reg.names_of(&s.allowed);
    assert!(names.contains(&"completions.write"));
    assert!(names.contains(&"logs.export"));
    assert!(!names.contains(&"configs.read"));
    // Words map to what they grant within the cap.
    let logs = s.scope_words.get("logs.*").expect("logs.*");
    assert!(logs.contains(reg.id("logs.write").expect("known")));
    assert!(!s.scope_words.contains_key("configs.read"));
    assert!(!s.scope_words.contains_key("configs.*"));
    assert_eq!(s.scope_words.get("*"), Some(&s.allowed));
}

#[test]
fn relative_ca_file_is_relative_to_the_keys_file() {
    let a = "issuer: i\naudience: a\njwks_url: https://idp/keys\nca_file: ca.pem";
    let snap = ok(&doc(a, ""));
    let s = snap.identity().for_issuer("i").expect("indexed");
    assert!(
        matches!(&s.jwks, JwksSource::Url { ca_file: Some(p), .. } if p == Path::new("conf/ca.pem"))
    );
}

#[test]
fn a_workspace_user_token_never_gets_service_only_scopes() {
    let snap = ok(&doc(MINIMAL, ""));
    let s = snap
        .identity()
        .for_issuer("https://idp.a/")
        .expect("indexed");
    let reg = ScopeRegistry::builtin();
    let names = reg.names_of(&s.allowed);
    assert!(names.contains(&"completions.write"));
    assert!(!names.contains(&"workspace_user_api_keys.create"));
    assert!(!names.contains(&"audit_logs.list"));
    assert!(!s.scope_words.contains_key("audit_logs.list"));
    assert!(!s.scope_words.contains_key("organisation_users.*"));
}

#[test]
fn issuer_is_unique_across_organisations() {
    let p = one_problem(&doc(MINIMAL, MINIMAL));
    assert_eq!(
        p,
        "conf/keys.yaml:14:15: organisations[1] (org_b): identity_tokens.issuer: issuer \
         `https://idp.a/` is also organisations[0]'s; an issuer's tokens must lead to one \
         organisation"
    );
}

#[test]
fn problems_point_at_the_field() {
    for (body, want) in [
        (
            "issuer: \"\"\naudience: a\njwks_file: j",
            "conf/keys.yaml:7:15: organisations[0] (org_a): identity_tokens.issuer: issuer must not be empty",
        ),
        (
            "issuer: i\naudience: a",
            "conf/keys.yaml:7:7: organisations[0] (org_a): identity_tokens: identity_tokens needs jwks_file",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\njwks_url: https://x/",
            "conf/keys.yaml:10:17: organisations[0] (org_a): identity_tokens.jwks_url: give either jwks_file or jwks_url, not both",
        ),
        (
            "issuer: i\naudience: a\njwks_url: http://idp.example.com/keys",
            "conf/keys.yaml:9:17: organisations[0] (org_a): identity_tokens.jwks_url: jwks_url `http://idp.example.com/keys` is http: only a loopback host",
        ),
        (
            "issuer: i\naudience: a\njwks_url: ftp://idp/keys",
            "identity_tokens.jwks_url: jwks_url `ftp://idp/keys` must start with https://",
        ),
        (
            "issuer: i\naudience: a\njwks_url: https://u:p@idp/keys",
            "identity_tokens.jwks_url: jwks_url must not carry a user name or password",
        ),
        (
            "issuer: i\naudience: a\njwks_url: http://127.0.0.1:8080/keys\nca_file: ca.pem",
            "identity_tokens.ca_file: ca_file verifies an https server",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nca_file: ca.pem",
            "conf/keys.yaml:10:16: organisations[0] (org_a): identity_tokens.ca_file: ca_file verifies the server of jwks_url",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\njwks_refresh_seconds: 60",
            "identity_tokens.jwks_refresh_seconds: jwks_refresh_seconds is for jwks_url",
        ),
        (
            "issuer: i\naudience: a\njwks_url: https://idp/keys\njwks_refresh_seconds: 5",
            "identity_tokens.jwks_refresh_seconds: jwks_refresh_seconds must be from 10 to 86400",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nalgorithms: [RS256, HS256]",
            "conf/keys.yaml:10:27: organisations[0] (org_a): identity_tokens.algorithms[1]: `HS256` is never accepted",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nalgorithms: [none]",
            "identity_tokens.algorithms[0]: `none` is never accepted",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nalgorithms: [RS265]",
            "identity_tokens.algorithms[0]: unknown algorithm `RS265` (did you mean `RS256`?)",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nalgorithms: [ES256, ES256]",
            "identity_tokens.algorithms[1]: ES256 is listed twice",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nalgorithms: []",
            "identity_tokens.algorithms: algorithms is empty",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nleeway_seconds: 3600",
            "identity_tokens.leeway_seconds: leeway_seconds must be at most 600",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nkey_type: organisation-service",
            "identity_tokens.key_type: a token acts as a workspace key",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nkey_type: robot",
            "identity_tokens.key_type: unknown key_type `robot`",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nclaims: { workspace: \"\" }",
            "identity_tokens.claims.workspace: claim name must be 1 to 256 bytes",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nscopes_allowed: [completions.wirte]",
            "conf/keys.yaml:10:24: organisations[0] (org_a): identity_tokens.scopes_allowed[0]: unknown scope `completions.wirte` (did you mean `completions.write`?)",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nscopes_allowed: [audit_logs.list]",
            "identity_tokens.scopes_allowed[0]: scope `audit_logs.list` is not allowed for a workspace-user key: only admin keys (organisation-service) may hold it; tokens act as workspace-user keys",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nscopes_allowed: []",
            "identity_tokens.scopes_allowed: scopes_allowed is empty",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nrevoked_subjects: [\"has space\"]",
            "identity_tokens.revoked_subjects[0]: a subject is 1 to 256 visible ASCII characters",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nrate_limits: [{ type: requests, unit: rpw, value: 1 }]",
            "identity_tokens.rate_limits[0].unit: unknown rate limit unit `rpw`",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nusage_limits: { type: cost, credit_limit: 5 }",
            "identity_tokens.usage_limits.type: a usage limit of type `cost` needs `model_prices`",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nusage_limits: [{ type: tokens, credit_limit: 5 }, { type: tokens, credit_limit: 6 }]",
            "identity_tokens.usage_limits[1]: at most one usage_limits per token subject",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nmax_concurrent_requests: 0",
            "identity_tokens.max_concurrent_requests: max_concurrent_requests must be at least 1",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nmodels: []",
            "identity_tokens.models: models is empty",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\njwks_ur: https://x/",
            "conf/keys.yaml:10:7: organisations[0] (org_a): identity_tokens: unknown field `jwks_ur` (did you mean `jwks_url`?)",
        ),
        (
            "issuer: i\naudience: a\njwks_file: j\nclaims: { workspaces: w }",
            "identity_tokens.claims: unknown field `workspaces` (did you mean `workspace`?)",
        ),
        (
            "audience: a\njwks_file: j",
            "identity_tokens: missing field `issuer`",
        ),
    ] {
        let p = one_problem(&doc(body, ""));
        assert!(p.contains(want), "got {p}\nwant {want}\nfor\n{body}");
    }
}

#[test]
fn loopback_http_is_allowed() {
    for url in [
        "http://127.0.0.1:8080/keys",
        "http://localhost/keys",
        "http://[::1]:9/keys",
        "http://127.9.9.9/jwks",
        "https://idp.example.com/keys",
    ] {
        let a = format!("issuer: i\naudience: a\njwks_url: \"{url}\"");
        ok(&doc(&a, ""));
    }
    for url in [
        "http://10.0.0.1/keys",
        "http://localhost.example.com/keys",
        "http://[::2]/keys",
    ] {
        let a = format!("issuer: i\naudience: a\njwks_url: \"{url}\"");
        let p = one_problem(&doc(&a, ""));
        assert!(p.contains("only a loopback host"), "{p}");
    }
}

#[test]
fn the_fingerprint_moves_with_what_decides_a_token() {
    let base = ok(&doc(MINIMAL, ""));
    let same = ok(&doc(MINIMAL, ""));
    assert_eq!(base.identity().fingerprint(), same.identity().fingerprint());
    let revoked = ok(&doc(&format!("{MINIMAL}\nrevoked_subjects: [bob]"), ""));
    assert_ne!(
        base.identity().fingerprint(),
        revoked.identity().fingerprint()
    );
    let renamed = ok(&doc(MINIMAL, "").replace("slug: a", "slug: a2"));
    assert_ne!(
        base.identity().fingerprint(),
        renamed.identity().fingerprint()
    );
}
