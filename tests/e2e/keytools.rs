//! The reference on the command line, the operator's key tools: `new-key` makes an entry a running
//! proxy accepts, and `explain` tells the same story as the proxy.
//! (`cli.rs` checks new-key's output format on its own; this file checks
//! it end to end.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use scopegate::identity::keys::digest_hex;
use serde_yaml::Value as Yaml;

use super::client::Response;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, free_port_pair, run_scopegate, CommandRun, Proxy, ProxyBuilder, Upstreams,
};

/// A config and the shared keys file in a fresh temp dir; the config path.
fn config_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .write_files(dir.path(), free_port_pair());
    (dir, config)
}

/// The `sgk-…` secret new-key printed on stderr.
#[track_caller]
fn secret_of(run: &CommandRun) -> String {
    let secret = run
        .stderr
        .split(|c: char| c.is_whitespace() || "\"'`,;:".contains(c))
        .find(|word| word.starts_with("sgk-"))
        .unwrap_or_else(|| panic!("no sgk- secret on stderr: {run:?}"));
    secret.trim_end_matches('.').to_string()
}

fn new_key(dir: &Path, config: &Path, extra: &[&str]) -> CommandRun {
    let mut args = vec!["new-key", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_scopegate(dir, &args)
}

const CI_BOT: &[&str] = &[
    "--type",
    "workspace-service",
    "--name",
    "CI bot",
    "--workspace",
    "research",
    "--scopes",
    "completions.write",
];

#[test]
fn new_key_entry_appended_to_the_keys_file_is_served() {
    let (dir, config) = config_dir();

    let run = new_key(dir.path(), &config, CI_BOT);

    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let secret = secret_of(&run);
    let body = secret.strip_prefix("sgk-").unwrap();
    // 256 bits: at least 43 base64url characters (64 in hex).
    assert!(body.len() >= 43, "secret too short: {run:?}");
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "secret is not URL-safe: {run:?}"
    );
    assert!(!run.stdout.contains(&secret), "secret on stdout: {run:?}");
    assert!(!run.stdout.contains(body), "secret on stdout: {run:?}");

    // stdout is a `keys:` list item holding the secret's hash.
    let entries: Vec<Yaml> = serde_yaml::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not a YAML list ({e}): {run:?}"));
    assert_eq!(entries.len(), 1, "{run:?}");
    let entry = &entries[0];
    assert_eq!(
        entry["sha256"].as_str(),
        Some(digest_hex(secret.as_bytes()).as_str()),
        "{run:?}"
    );
    assert_eq!(entry["type"].as_str(), Some("workspace-service"));
    assert_eq!(entry["name"].as_str(), Some("CI bot"));
    let scopes: Vec<&str> = entry["scopes"]
        .as_sequence()
        .expect("scopes list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(scopes, ["completions.write"]);
    let key_id = entry["id"].as_str().expect("entry id").to_string();

    // The fixture file ends with its `keys:` list, items indented by two.
    let keys = keys_yaml();
    assert!(keys.ends_with('\n'));
    let appended = format!("{keys}{}", run.stdout);
    std::fs::write(dir.path().join("keys.yaml"), &appended).unwrap();
    let check = run_scopegate(dir.path(), &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(0), "{check:?}\n{appended}");

    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).keys(&appended).start();
    let resp = proxy
        .post("/v1/chat/completions")
        .key(&secret)
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some(key_id.as_str()));
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
    assert!(
        !proxy.logs().contains(body),
        "the new secret appears in the logs"
    );
}

#[test]
fn new_key_makes_a_different_secret_every_time() {
    let (dir, config) = config_dir();

    let first = new_key(dir.path(), &config, CI_BOT);
    let second = new_key(dir.path(), &config, CI_BOT);

    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(second.status.code(), Some(0), "{second:?}");
    assert_ne!(secret_of(&first), secret_of(&second));
    assert_ne!(first.stdout, second.stdout, "same entry (hash) twice");
}

#[test]
fn new_key_refuses_a_scope_its_type_may_not_hold() {
    let (dir, config) = config_dir();

    let run = new_key(
        dir.path(),
        &config,
        &[
            "--type",
            "organisation-service",
            "--name",
            "Ops",
            "--organisation",
            "org_acme",
            "--scopes",
            "completions.write",
        ],
    );

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stdout.trim().is_empty(),
        "an entry was printed: {run:?}"
    );
    assert!(run.stderr.contains("completions.write"), "{run:?}");
    assert!(run.stderr.contains("organisation-service"), "{run:?}");
}

#[test]
fn new_key_refuses_an_unknown_workspace_and_names_it() {
    let (dir, config) = config_dir();

    let run = new_key(
        dir.path(),
        &config,
        &[
            "--type",
            "workspace-service",
            "--name",
            "Lost",
            "--workspace",
            "nowhere",
            "--scopes",
            "completions.write",
        ],
    );

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stdout.trim().is_empty(),
        "an entry was printed: {run:?}"
    );
    assert!(run.stderr.contains("nowhere"), "{run:?}");
}

// ----- explain agrees with the proxy --------------------------------------

/// One request of the agreement table, with what both must answer.
struct Row {
    key_id: &'static str,
    secret: &'static str,
    method: &'static str,
    target: &'static str,
    body: Option<&'static str>,
    /// 200 for allowed (the upstream's default reply), else the deny status.
    status: u16,
    /// `ok` when allowed.
    code: &'static str,
}

const fn row(
    key_id: &'static str,
    secret: &'static str,
    method: &'static str,
    target: &'static str,
    body: Option<&'static str>,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        key_id,
        secret,
        method,
        target,
        body,
        status,
        code,
    }
}

const CHAT_BODY: Option<&str> = Some(CHAT);

#[rustfmt::skip]
const TABLE: &[Row] = &[
    row("key_bot", BOT, "POST", "/v1/chat/completions", CHAT_BODY, 200, "ok"),
    row("key_alice", ALICE, "POST", "/v1/chat/completions", CHAT_BODY, 200, "ok"),
    row("key_admin", ADMIN, "POST", "/v1/chat/completions", CHAT_BODY, 403, "admin_key_not_allowed"),
    row("key_vk_lister", VK_LISTER, "POST", "/v1/chat/completions", CHAT_BODY, 403, "missing_scope"),
    row("key_vk_lister", VK_LISTER, "GET", "/v1/models", None, 200, "ok"),
    row("key_bot", BOT, "GET", "/v1/no-such-thing", None, 404, "route_not_found"),
    row("key_bot", BOT, "GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
    row("key_bot", BOT, "GET", "/v1//configs", None, 400, "invalid_path"),
    row("key_bot", BOT, "GET", "/v1/configs?workspace_id=prod", None, 403, "workspace_mismatch"),
    row("key_bot", BOT, "GET", "/v1/configs?workspace_id=research", None, 200, "ok"),
    row("key_bot", BOT, "GET", "/v1/configs?workspace_id=research&workspace_id=ws_prod", None, 400, "conflicting_workspace"),
    row("key_bot", BOT, "GET", "/v1/logs/exports", None, 403, "missing_scope"),
    row("key_admin", ADMIN, "GET", "/v1/admin/workspaces", None, 200, "ok"),
    row("key_admin", ADMIN, "GET", "/v1/admin/workspaces/research", None, 200, "ok"),
    row("key_admin", ADMIN, "GET", "/v1/admin/workspaces/ws_other", None, 404, "workspace_not_found"),
    row("key_admin", ADMIN, "POST", "/v1/configs", Some(r#"{"name":"c","workspace_id":"ws_other"}"#), 404, "workspace_not_found"),
    row("key_admin", ADMIN, "POST", "/v1/configs", Some(r#"{"name":"c","workspace_id":"prod"}"#), 200, "ok"),
    row("key_bot", BOT, "POST", "/v1/configs", Some(r#"{"name":"c","workspace_id":"ws_prod"}"#), 403, "workspace_mismatch"),
    row("key_bot", BOT, "POST", "/v1/configs", Some(r#"{"name":"c","workspace_id":"research"}"#), 200, "ok"),
    row("key_bot", BOT, "POST", "/v1/configs?workspace_id=research", Some(r#"{"workspace_id":"prod"}"#), 400, "conflicting_workspace"),
    row("key_bot", BOT, "POST", "/v1/configs", Some("{not json"), 400, "invalid_json"),
    row("key_logger", LOGGER, "POST", "/v1/logs", Some("{}"), 200, "ok"),
    row("key_bot", BOT, "POST", "/v1/logs", Some("{}"), 403, "missing_scope"),
    row("key_alice", ALICE, "GET", "/v1/configs", None, 403, "missing_scope"),
    row("key_revoked", REVOKED, "GET", "/v1/configs", None, 401, "revoked_api_key"),
    row("key_expired", EXPIRED, "POST", "/v1/chat/completions", CHAT_BODY, 401, "expired_api_key"),
    row("key_exhausted", EXHAUSTED, "POST", "/v1/chat/completions", CHAT_BODY, 412, "budget_exhausted"),
    row("key_exhausted", EXHAUSTED, "GET", "/v1/configs", None, 200, "ok"),
];

/// What `explain` printed, parsed.
#[derive(Debug)]
struct Explained {
    status: u16,
    code: String,
    /// `completions` or `admin`, when allowed.
    upstream: Option<String>,
    /// The `x-scopegate-*: value` lines.
    headers: BTreeMap<String, String>,
}

#[track_caller]
fn parse_explain(run: &CommandRun) -> Explained {
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let decision = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("decision:"))
        .unwrap_or_else(|| panic!("no decision line: {run:?}"));
    let words: Vec<&str> = decision.split_whitespace().collect();
    let (status, code) = match words.as_slice() {
        ["allow"] => (200, "ok".to_string()),
        ["deny", status, code] => (
            status
                .parse()
                .unwrap_or_else(|_| panic!("bad status: {run:?}")),
            code.to_string(),
        ),
        _ => panic!("unexpected decision line: {run:?}"),
    };
    if status != 200 {
        assert!(
            run.stdout.lines().any(|l| l.starts_with("message:")),
            "deny without a message line: {run:?}"
        );
    }
    let upstream = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("upstream:"))
        .map(|u| u.split_whitespace().next().unwrap_or("").to_string());
    let headers = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("x-scopegate-"))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Explained {
        status,
        code,
        upstream,
        headers,
    }
}

/// The error code of a proxy-written error, in either shape.
fn error_code(resp: &Response) -> String {
    let body = resp.json();
    body["error"]["code"]
        .as_str()
        .or_else(|| body["data"]["code"].as_str())
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string()
}

#[test]
fn explain_agrees_with_the_proxy() {
    assert!(TABLE.len() >= 12);
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let dir = proxy.keys_path().parent().unwrap().to_path_buf();
    let config = dir.join("scopegate.yaml");
    let bodies = tempfile::tempdir().unwrap();

    let mut failures = Vec::new();
    for (i, row) in TABLE.iter().enumerate() {
        let label = format!(
            "row {i}: {} {} {} body {:?}",
            row.key_id, row.method, row.target, row.body
        );

        let mut args = vec![
            "explain".to_string(),
            "--config".into(),
            config.to_str().unwrap().into(),
            "--key-id".into(),
            row.key_id.into(),
            row.method.into(),
            row.target.into(),
        ];
        if let Some(body) = row.body {
            let file = bodies.path().join(format!("body-{i}.json"));
            std::fs::write(&file, body).unwrap();
            args.extend(["--body".to_string(), file.to_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let explained = parse_explain(&run_scopegate(&dir, &args));

        let before = (up.completions.count(), up.admin.count());
        let mut req = proxy.request(row.method, row.target).key(row.secret);
        if let Some(body) = row.body {
            req = req.json(body);
        }
        let resp = req.send();
        let after = (up.completions.count(), up.admin.count());
        let proxy_code = if resp.status == 200 {
            "ok".to_string()
        } else {
            error_code(&resp)
        };

        let expected = (row.status, row.code.to_string());
        let from_explain = (explained.status, explained.code.clone());
        let from_proxy = (resp.status, proxy_code);
        if from_explain != expected || from_proxy != expected {
            failures.push(format!(
                "{label}: expected {expected:?}, explain {from_explain:?}, proxy {from_proxy:?}"
            ));
            continue;
        }
        if row.status != 200 {
            assert_eq!(before, after, "{label}: a denied request went upstream");
            continue;
        }

        // Allowed: the same upstream and the same identity headers.
        let (upstream, seen) = if after.0 > before.0 {
            ("completions", up.completions.requests().pop().unwrap())
        } else {
            ("admin", up.admin.requests().pop().unwrap())
        };
        if explained.upstream.as_deref() != Some(upstream) {
            failures.push(format!(
                "{label}: proxy went to {upstream}, explain says {:?}",
                explained.upstream
            ));
        }
        let upstream_identity: BTreeMap<String, String> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-scopegate-"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        if upstream_identity != explained.headers {
            failures.push(format!(
                "{label}: upstream saw {upstream_identity:?}, explain printed {:?}",
                explained.headers
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "explain and the proxy disagree:\n{}",
        failures.join("\n")
    );
}
