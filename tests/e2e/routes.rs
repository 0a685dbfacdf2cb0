//! The reference on the route table: extra routes from the server config, and `builtin_routes`.

use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, Proxy, Upstreams,
};

const X_READER: &str = "sk-test-x-reader";

/// The shared keys plus a custom scope `x.read` and a key holding it.
fn keys_with_custom_scope() -> String {
    keys_yaml_with(&format!(
        r#"  - id: key_x_reader
    name: X reader
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["x.read"]
"#,
        scopegate::identity::keys::digest_hex(X_READER.as_bytes())
    ))
    .replacen("keys:\n", "custom_scopes: [\"x.read\"]\nkeys:\n", 1)
}

#[test]
fn extra_route_with_a_custom_scope_is_enforced() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_with_custom_scope())
        .config(
            r#"routes: [{methods: [GET], path: "/v1/x/{id}", plane: control, scopes: [x.read]}]"#,
        )
        .start();

    let denied = proxy.get("/v1/x/thing_1").key(BOT).send();
    let message = expect_portkey_error(&denied, 403, "missing_scope");
    assert!(message.contains("x.read"), "message: {message}");
    up.assert_untouched();

    expect_forwarded(&proxy.get("/v1/x/thing_1").key(X_READER).send());
    assert_eq!(up.admin.only_request().target, "/v1/x/thing_1");
}

#[test]
fn extra_route_wins_over_the_builtin_one() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config(r#"routes: [{methods: [GET], path: "/v1/models", plane: control, scopes: [configs.list]}]"#)
        .start();

    let lister = proxy.get("/v1/models").key(VK_LISTER).send();
    expect_portkey_error(&lister, 403, "missing_scope");
    up.assert_untouched();

    expect_forwarded(&proxy.get("/v1/models").key(BOT).send());
    assert_eq!(up.admin.only_request().target, "/v1/models");
    assert_eq!(up.completions.count(), 0);
}

#[test]
fn without_builtin_routes_only_the_listed_routes_exist() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("builtin_routes: false")
        .config(r#"routes: [{methods: [POST], path: "/v1/chat/completions", plane: data, scopes_all: [completions.write, logs.write]}]"#)
        .start();

    expect_openai_error(
        &proxy.get("/v1/models").key(BOT).send(),
        404,
        "route_not_found",
    );
    expect_openai_error(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
        403,
        "missing_scope",
    );
    up.assert_untouched();

    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(LOGGER)
            .json(CHAT)
            .send(),
    );
}
