//! The reference on live reload: the keys file reloads while the proxy runs; a bad file changes
//! nothing. Tests wait on the effect (or the reload counter), never a sleep.

use std::path::Path;
use std::time::Duration;

use super::fixtures::*;
use super::harness::{expect_forwarded, expect_openai_error, poll_until, Proxy, Upstreams};

/// The reference: in force within 2 s; the bound leaves room for a loaded machine.
const RELOAD_BOUND: Duration = Duration::from_secs(5);

const NEW_SECRET: &str = "sk-test-added-later";

/// Replaces the file the way editors and config managers do: write a
/// sibling, then rename over the original.
fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn new_key_entry() -> String {
    format!(
        r#"  - id: key_added
    name: Added later
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
"#,
        scopegate::identity::keys::digest_hex(NEW_SECRET.as_bytes())
    )
}

#[test]
fn a_key_added_to_the_file_starts_working() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let call = || {
        proxy
            .post("/v1/chat/completions")
            .key(NEW_SECRET)
            .json(CHAT)
            .send()
    };
    expect_openai_error(&call(), 401, "invalid_api_key");

    replace_atomically(&proxy.keys_path(), &keys_yaml_with(&new_key_entry()));

    assert!(
        poll_until(RELOAD_BOUND, || call().status == 200),
        "the added key still fails {RELOAD_BOUND:?} after the rename"
    );
    let seen = up.completions.requests();
    let last = seen.last().unwrap();
    assert_eq!(last.header("x-scopegate-key-id"), Some("key_added"));
    assert_eq!(last.header("x-scopegate-workspace-id"), Some("ws_prod"));
}

#[test]
fn a_key_revoked_by_an_in_place_rewrite_stops_working() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let call = || {
        proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send()
    };
    expect_forwarded(&call());
    let bot_scopes = r#"    scopes: ["completions.write", "logs.view", "configs.*", "workspaces.read", "workspaces.list"]"#;
    let revoked =
        keys_yaml().replacen(bot_scopes, &format!("{bot_scopes}\n    status: revoked"), 1);
    assert_ne!(revoked, keys_yaml());

    std::fs::write(proxy.keys_path(), revoked).unwrap();

    assert!(
        poll_until(RELOAD_BOUND, || call().status == 401),
        "the revoked key still works {RELOAD_BOUND:?} after the write"
    );
    expect_openai_error(&call(), 401, "revoked_api_key");
}

#[test]
fn an_invalid_file_keeps_the_last_good_keys() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let failures = || proxy.metric("scopegate_keys_reloads_total", &[("result", "failure")]);
    let before = failures();

    replace_atomically(
        &proxy.keys_path(),
        "organisations: [\nkeys:\n  - id: half-written",
    );

    assert!(
        poll_until(RELOAD_BOUND, || failures() > before),
        "no failed reload counted"
    );
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
    assert_eq!(proxy.metrics_get("/readyz").status, 200);
}

#[test]
fn sighup_reloads_the_keys_file() {
    let up = Upstreams::start();
    // A poll so slow it cannot be what picks the change up.
    let proxy = Proxy::builder(&up)
        .config("reload_poll_interval_ms: 3600000")
        .start();
    let successes = || proxy.metric("scopegate_keys_reloads_total", &[("result", "success")]);
    let before = successes();

    proxy.signal(libc::SIGHUP);

    assert!(
        poll_until(RELOAD_BOUND, || successes() > before),
        "SIGHUP did not cause a reload"
    );
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
}

#[test]
fn rate_limit_state_survives_a_reload() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&limited_key_entry()))
        .start();
    let limited = || {
        proxy
            .post("/v1/chat/completions")
            .key(LIMITED)
            .json(CHAT)
            .send()
    };
    expect_forwarded(&limited());
    expect_forwarded(&limited());

    // key_limited keeps its id and limits; another key is added.
    let both = keys_yaml_with(&format!("{}{}", limited_key_entry(), new_key_entry()));
    replace_atomically(&proxy.keys_path(), &both);
    let added = || {
        proxy
            .post("/v1/chat/completions")
            .key(NEW_SECRET)
            .json(CHAT)
            .send()
    };
    assert!(
        poll_until(RELOAD_BOUND, || added().status == 200),
        "the reload did not happen"
    );

    expect_openai_error(&limited(), 429, "rate_limited");
}
