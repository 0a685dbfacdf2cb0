//! SPEC 5.1, row by row and in order: who is refused, with which status,
//! code and body shape, and that nothing refused reaches an upstream.

use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, Proxy, Upstreams,
};
use super::upstream::closed_port_url;

// ----- 401: the key -------------------------------------------------------

#[test]
fn missing_key_is_401() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.post("/v1/chat/completions").json(CHAT).send();

    expect_openai_error(&resp, 401, "missing_api_key");
    up.assert_untouched();
}

#[test]
fn missing_key_on_control_plane_is_portkey_ab05() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/admin/workspaces").send();

    expect_portkey_error(&resp, 401, "missing_api_key");
    up.assert_untouched();
}

#[test]
fn unknown_key_is_401_invalid_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let data = proxy
        .post("/v1/chat/completions")
        .key(UNKNOWN)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(UNKNOWN).send();

    expect_openai_error(&data, 401, "invalid_api_key");
    expect_portkey_error(&control, 401, "invalid_api_key");
    up.assert_untouched();
}

#[test]
fn repeated_key_header_is_401_invalid_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let same_twice = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .key(BOT)
        .json(CHAT)
        .send();
    let two_keys = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .key(ALICE)
        .json(CHAT)
        .send();

    expect_openai_error(&same_twice, 401, "invalid_api_key");
    expect_openai_error(&two_keys, 401, "invalid_api_key");
    up.assert_untouched();
}

#[test]
fn bearer_token_is_accepted_as_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .bearer(BOT)
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.completions.count(), 1);
}

#[test]
fn basic_authorization_carries_no_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    // "sk-test-bot:" in base64: even a valid secret is not read from Basic.
    let resp = proxy
        .post("/v1/chat/completions")
        .header("authorization", "Basic c2stdGVzdC1ib3Q6")
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 401, "missing_api_key");
    up.assert_untouched();
}

#[test]
fn expired_key_is_401_expired_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(EXPIRED)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 401, "expired_api_key");
    up.assert_untouched();
}

#[test]
fn rotated_out_secret_is_expired_and_new_secret_works() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let old = proxy
        .post("/v1/chat/completions")
        .key(ROTATED_OLD)
        .json(CHAT)
        .send();
    expect_openai_error(&old, 401, "expired_api_key");
    up.assert_untouched();

    let new = proxy
        .post("/v1/chat/completions")
        .key(ROTATED_NEW)
        .json(CHAT)
        .send();
    expect_forwarded(&new);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_rotated"));
}

#[test]
fn old_secret_inside_its_window_still_works() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let old = proxy
        .post("/v1/chat/completions")
        .key(ROTATING_OLD)
        .json(CHAT)
        .send();
    let new = proxy
        .post("/v1/chat/completions")
        .key(ROTATING_NEW)
        .json(CHAT)
        .send();

    expect_forwarded(&old);
    expect_forwarded(&new);
    let ids: Vec<_> = up
        .completions
        .requests()
        .iter()
        .map(|r| r.header("x-scopegate-key-id").map(str::to_string))
        .collect();
    assert_eq!(
        ids,
        [Some("key_rotating".into()), Some("key_rotating".into())]
    );
}

#[test]
fn revoked_key_is_401_on_both_planes() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let data = proxy
        .post("/v1/chat/completions")
        .key(REVOKED)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(REVOKED).send();

    expect_openai_error(&data, 401, "revoked_api_key");
    expect_portkey_error(&control, 401, "revoked_api_key");
    up.assert_untouched();
}

#[test]
fn key_is_checked_before_the_route() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/no-such-thing").send();

    expect_openai_error(&resp, 401, "missing_api_key");
    up.assert_untouched();
}

// ----- 404 / 405: the route -----------------------------------------------

#[test]
fn unknown_path_is_404_route_not_found() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let unknown = proxy.get("/v1/no-such-thing").key(BOT).send();
    let trailing_slash = proxy
        .post("/v1/chat/completions/")
        .key(BOT)
        .json(CHAT)
        .send();
    let wrong_case = proxy
        .post("/v1/Chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();

    expect_openai_error(&unknown, 404, "route_not_found");
    expect_openai_error(&trailing_slash, 404, "route_not_found");
    expect_openai_error(&wrong_case, 404, "route_not_found");
    up.assert_untouched();
}

/// The methods an `Allow` header lists, sorted.
fn allowed_methods(resp: &super::client::Response) -> Vec<String> {
    let allow = resp
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {:?}", resp.headers));
    let mut methods: Vec<String> = allow.split(',').map(|m| m.trim().to_string()).collect();
    methods.sort();
    methods
}

#[test]
fn wrong_method_is_405_with_allow() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/chat/completions").key(BOT).send();
    let files = proxy.put("/v1/files/file_1").key(BOT).send();

    expect_openai_error(&resp, 405, "method_not_allowed");
    assert_eq!(allowed_methods(&resp), ["POST"]);
    expect_openai_error(&files, 405, "method_not_allowed");
    assert_eq!(allowed_methods(&files), ["DELETE", "GET"]);
    up.assert_untouched();
}

#[test]
fn wrong_method_on_control_plane_is_405_in_portkey_shape() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.delete("/v1/admin/workspaces").key(ADMIN).send();

    expect_portkey_error(&resp, 405, "method_not_allowed");
    assert_eq!(allowed_methods(&resp), ["GET", "POST"]);
    up.assert_untouched();
}

#[test]
fn literal_segment_beats_parameter() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    // BOT holds logs.view, which /v1/logs/{id} would accept; /v1/logs/exports
    // is the control-plane logs.list route.
    let bot = proxy.get("/v1/logs/exports").key(BOT).send();
    let message = expect_portkey_error(&bot, 403, "missing_scope");
    assert!(message.contains("logs.list"), "message: {message}");
    up.assert_untouched();

    let admin = proxy.get("/v1/logs/exports").key(ADMIN).send();
    expect_forwarded(&admin);
    assert_eq!(up.admin.only_request().target, "/v1/logs/exports");
    assert_eq!(up.completions.count(), 0);

    // The parameter route still serves other ids, on the data plane.
    let log = proxy.get("/v1/logs/log_123").key(BOT).send();
    expect_forwarded(&log);
    assert_eq!(up.completions.only_request().target, "/v1/logs/log_123");
}

#[test]
fn literal_route_with_wrong_method_does_not_fall_back_to_parameter() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.put("/v1/logs/exports").key(ADMIN).send();

    expect_portkey_error(&resp, 405, "method_not_allowed");
    assert_eq!(allowed_methods(&resp), ["GET", "POST"]);
    up.assert_untouched();
}

// ----- 403 / 412: key type, status and scopes -----------------------------

#[test]
fn admin_key_on_completions_is_403() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(ADMIN)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 403, "admin_key_not_allowed");
    up.assert_untouched();
}

#[test]
fn exhausted_key_on_data_plane_is_412() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(EXHAUSTED)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 412, "budget_exhausted");
    up.assert_untouched();
}

#[test]
fn exhausted_key_still_reaches_control_routes_it_has_scopes_for() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/configs").key(EXHAUSTED).send();

    expect_forwarded(&resp);
    assert_eq!(up.admin.only_request().target, "/v1/configs");
}

#[test]
fn missing_scope_is_403_and_names_the_scope() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(VK_LISTER)
        .json(CHAT)
        .send();

    let message = expect_openai_error(&resp, 403, "missing_scope");
    assert!(message.contains("completions.write"), "message: {message}");
    up.assert_untouched();
}

#[test]
fn missing_scope_on_control_plane_is_portkey_ab03() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/configs").key(ALICE).send();

    let message = expect_portkey_error(&resp, 403, "missing_scope");
    assert!(message.contains("configs.list"), "message: {message}");
    up.assert_untouched();
}

#[test]
fn any_of_scopes_one_is_enough() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let lister = proxy.get("/v1/models").key(VK_LISTER).send();
    let writer = proxy.get("/v1/models").key(BOT).send();

    expect_forwarded(&lister);
    expect_forwarded(&writer);
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn all_of_scopes_need_every_one() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let log = r#"{"request":{},"response":{}}"#;

    let only_write = proxy.post("/v1/logs").key(BOT).json(log).send();
    let message = expect_openai_error(&only_write, 403, "missing_scope");
    assert!(message.contains("logs.write"), "message: {message}");

    let only_logs = proxy.post("/v1/logs").key(LOG_WRITER).json(log).send();
    let message = expect_openai_error(&only_logs, 403, "missing_scope");
    assert!(message.contains("completions.write"), "message: {message}");
    up.assert_untouched();

    let both = proxy.post("/v1/logs").key(LOGGER).json(log).send();
    expect_forwarded(&both);
    assert_eq!(up.completions.count(), 1);
}

#[test]
fn wildcard_scope_allows_every_action() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let list = proxy.get("/v1/admin/workspaces").key(ADMIN).send();
    let create = proxy
        .post("/v1/admin/workspaces")
        .key(ADMIN)
        .json(r#"{"name":"new"}"#)
        .send();
    let delete = proxy
        .delete("/v1/admin/workspaces/ws_prod")
        .key(ADMIN)
        .send();

    expect_forwarded(&list);
    expect_forwarded(&create);
    expect_forwarded(&delete);
    assert_eq!(up.admin.count(), 3);
}

#[test]
fn scope_is_checked_before_the_body() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs")
        .key(ALICE)
        .json("{not json")
        .send();

    expect_portkey_error(&resp, 403, "missing_scope");
    up.assert_untouched();
}

// ----- 415 / 413 / 400: the inspected body --------------------------------

#[test]
fn control_plane_body_needs_json_content_type() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let body = r#"{"name":"c"}"#;

    let text = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "text/plain")
        .body(body)
        .send();
    let missing = proxy.post("/v1/configs").key(BOT).body(body).send();
    let form = proxy
        .put("/v1/configs/cfg_1")
        .key(BOT)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("workspace_id=ws_prod")
        .send();

    expect_portkey_error(&text, 415, "unsupported_media_type");
    expect_portkey_error(&missing, 415, "unsupported_media_type");
    expect_portkey_error(&form, 415, "unsupported_media_type");
    up.assert_untouched();
}

#[test]
fn json_content_type_with_charset_is_accepted() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"name":"c","workspace_id":"ws_research"}"#)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.admin.count(), 1);
}

#[test]
fn empty_control_plane_body_is_not_inspected() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let no_body = proxy.post("/v1/admin/workspaces").key(ADMIN).send();
    let empty = proxy
        .post("/v1/admin/workspaces")
        .key(ADMIN)
        .body("")
        .send();

    expect_forwarded(&no_body);
    expect_forwarded(&empty);
    assert_eq!(up.admin.count(), 2);
}

#[test]
fn inspected_body_over_limit_is_413() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 1024")
        .start();
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2000));

    let resp = proxy.post("/v1/configs").key(BOT).json(&big).send();

    expect_portkey_error(&resp, 413, "body_too_large");
    up.assert_untouched();
}

#[test]
fn chunked_body_over_limit_is_413() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 1024")
        .start();
    let filler = "x".repeat(700);
    let pieces = [
        "{\"name\":\"".to_string(),
        filler.clone(),
        filler,
        "\"}".into(),
    ];

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "application/json")
        .chunked(&pieces)
        .send();

    expect_portkey_error(&resp, 413, "body_too_large");
    up.assert_untouched();
}

#[test]
fn unsupported_media_type_is_checked_before_size() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 1024")
        .start();

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "text/plain")
        .body("x".repeat(4096))
        .send();

    expect_portkey_error(&resp, 415, "unsupported_media_type");
    up.assert_untouched();
}

#[test]
fn invalid_json_body_is_400() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"name": "#)
        .send();

    expect_portkey_error(&resp, 400, "invalid_json");
    up.assert_untouched();
}

#[test]
fn workspace_id_not_a_string_is_400_invalid_json() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    for body in [
        r#"{"workspace_id": 5}"#,
        r#"{"workspace_id": null}"#,
        r#"{"workspace_id": ["ws_research"]}"#,
        r#"{"workspace_id": {"id": "ws_research"}}"#,
    ] {
        let resp = proxy.post("/v1/configs").key(BOT).json(body).send();
        expect_portkey_error(&resp, 400, "invalid_json");
    }
    up.assert_untouched();
}

#[test]
fn repeated_workspace_id_in_body_is_400_invalid_json() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let same = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace_id":"ws_research","workspace_id":"ws_research"}"#)
        .send();
    let different = proxy
        .post("/v1/configs")
        .key(ADMIN)
        .json(r#"{"workspace_id":"ws_research","name":"x","workspace_id":"ws_prod"}"#)
        .send();

    expect_portkey_error(&same, 400, "invalid_json");
    expect_portkey_error(&different, 400, "invalid_json");
    up.assert_untouched();
}

#[test]
fn only_top_level_workspace_id_counts() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"config":{"workspace_id":"ws_prod"},"items":[{"workspace_id":7}]}"#)
        .send();

    expect_forwarded(&resp);
    let seen = up.admin.only_request();
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
}

// ----- 400 / 403 / 404: which workspace -----------------------------------

#[test]
fn path_and_query_workspaces_disagree_is_400_conflicting() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .get("/v1/admin/workspaces/ws_research?workspace_id=ws_prod")
        .key(ADMIN)
        .send();

    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
}

#[test]
fn query_and_body_workspaces_disagree_is_400_conflicting() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs?workspace_id=ws_research")
        .key(ADMIN)
        .json(r#"{"workspace_id":"ws_prod"}"#)
        .send();

    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
}

#[test]
fn path_and_body_workspaces_disagree_is_400_conflicting() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .put("/v1/admin/workspaces/ws_research")
        .key(ADMIN)
        .json(r#"{"workspace_id":"prod","name":"renamed"}"#)
        .send();

    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
}

#[test]
fn repeated_query_workspace_id_with_different_values_is_400() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .get("/v1/configs?workspace_id=ws_research&workspace_id=ws_prod")
        .key(ADMIN)
        .send();

    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
}

#[test]
fn conflict_is_reported_before_mismatch() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    // Both name foreign workspaces, and they disagree: 400 comes first.
    let resp = proxy
        .get("/v1/admin/workspaces/ws_prod?workspace_id=ws_other")
        .key(BOT)
        .send();

    expect_portkey_error(&resp, 400, "conflicting_workspace");
    up.assert_untouched();
}

#[test]
fn slug_and_id_of_the_same_workspace_agree() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .put("/v1/admin/workspaces/research?workspace_id=ws_research")
        .key(ADMIN)
        .json(r#"{"workspace_id":"research","name":"Research"}"#)
        .send();

    expect_forwarded(&resp);
    let seen = up.admin.only_request();
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
}

#[test]
fn repeated_query_workspace_id_with_the_same_workspace_is_allowed() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .get("/v1/configs?workspace_id=ws_research&workspace_id=ws_research")
        .key(ADMIN)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.admin.count(), 1);
}

#[test]
fn workspace_key_naming_another_workspace_is_403() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let by_id = proxy.get("/v1/admin/workspaces/ws_prod").key(BOT).send();
    let by_slug = proxy.get("/v1/admin/workspaces/prod").key(BOT).send();
    let by_query = proxy.get("/v1/configs?workspace_id=prod").key(BOT).send();
    let by_body = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace_id":"ws_prod","name":"c"}"#)
        .send();
    let other_org = proxy.get("/v1/admin/workspaces/ws_other").key(BOT).send();

    for resp in [&by_id, &by_slug, &by_query, &by_body, &other_org] {
        expect_portkey_error(resp, 403, "workspace_mismatch");
    }
    up.assert_untouched();
}

#[test]
fn workspace_key_naming_unknown_workspace_is_403_mismatch() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy.get("/v1/admin/workspaces/ws_nowhere").key(BOT).send();

    expect_portkey_error(&resp, 403, "workspace_mismatch");
    up.assert_untouched();
}

#[test]
fn workspace_key_naming_its_own_workspace_is_allowed() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let by_slug = proxy.get("/v1/admin/workspaces/research").key(BOT).send();
    let by_id = proxy
        .get("/v1/configs?workspace_id=ws_research")
        .key(BOT)
        .send();

    expect_forwarded(&by_slug);
    expect_forwarded(&by_id);
    let targets: Vec<_> = up.admin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/v1/admin/workspaces/research",
            "/v1/configs?workspace_id=ws_research"
        ]
    );
}

#[test]
fn admin_key_naming_unknown_workspace_is_404() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let by_path = proxy
        .get("/v1/admin/workspaces/ws_nowhere")
        .key(ADMIN)
        .send();
    let by_body = proxy
        .post("/v1/configs")
        .key(ADMIN)
        .json(r#"{"workspace_id":"nowhere"}"#)
        .send();

    expect_portkey_error(&by_path, 404, "workspace_not_found");
    expect_portkey_error(&by_body, 404, "workspace_not_found");
    up.assert_untouched();
}

#[test]
fn admin_key_naming_workspace_of_another_organisation_is_404() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let by_id = proxy.get("/v1/admin/workspaces/ws_other").key(ADMIN).send();
    let by_slug = proxy.get("/v1/admin/workspaces/other").key(ADMIN).send();
    let reverse = proxy
        .get("/v1/admin/workspaces/ws_research")
        .key(OTHER_ADMIN)
        .send();

    expect_portkey_error(&by_id, 404, "workspace_not_found");
    expect_portkey_error(&by_slug, 404, "workspace_not_found");
    expect_portkey_error(&reverse, 404, "workspace_not_found");
    up.assert_untouched();
}

// ----- 429: rate limits ---------------------------------------------------

#[test]
fn rate_limit_exceeded_is_429_with_retry_after() {
    let limited = format!(
        r#"  - id: key_limited
    name: Limited
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
    rate_limits:
      - {{ type: requests, unit: rpm, value: 2 }}
"#,
        scopegate::keys::digest_hex(b"sk-test-limited")
    );
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).keys(&keys_yaml_with(&limited)).start();
    let call = || {
        proxy
            .post("/v1/chat/completions")
            .key("sk-test-limited")
            .json(CHAT)
            .send()
    };

    let first = call();
    let second = call();
    let third = call();

    expect_forwarded(&first);
    expect_forwarded(&second);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(first.header("x-ratelimit-reset-requests").is_some());
    expect_openai_error(&third, 429, "rate_limited");
    let retry_after: u64 = third
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(third.header("x-ratelimit-remaining-requests"), Some("0"));
    assert_eq!(up.completions.count(), 2);

    // Refused before the rate-limit step: no quota used, no headers.
    let unlimited = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    assert!(unlimited.header("x-ratelimit-limit-requests").is_none());
}

// ----- 502 / 504: the upstream --------------------------------------------

#[test]
fn upstream_refusing_connections_is_502() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&closed_port_url())
        .admin_url(&closed_port_url())
        .start();

    let data = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(BOT).send();

    expect_openai_error(&data, 502, "upstream_unavailable");
    expect_portkey_error(&control, 502, "upstream_unavailable");
}

#[test]
fn upstream_closing_without_answer_is_502() {
    let up = Upstreams::start();
    up.completions.abort();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 502, "upstream_unavailable");
    assert!(up.completions.connections() >= 1);
}

#[test]
fn upstream_too_slow_is_504() {
    let up = Upstreams::start();
    up.completions.hang();
    up.admin.hang();
    let proxy = Proxy::builder(&up)
        .completions_yaml("read_timeout_ms: 300")
        .admin_yaml("read_timeout_ms: 300")
        .start();

    let data = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(BOT).send();

    expect_openai_error(&data, 504, "upstream_timeout");
    expect_portkey_error(&control, 504, "upstream_timeout");
    assert_eq!(
        up.completions.count(),
        1,
        "the request did reach the upstream"
    );
}

// ----- shape follows the path ---------------------------------------------

#[test]
fn control_plane_error_shape_holds_for_any_method_and_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let no_key_delete = proxy.delete("/v1/admin/workspaces").send();
    let bad_key_patch = proxy
        .request("PATCH", "/v1/api-keys/key_1")
        .key(UNKNOWN)
        .send();
    let no_key_analytics = proxy.get("/v1/analytics/graphs/requests").send();

    expect_portkey_error(&no_key_delete, 401, "missing_api_key");
    expect_portkey_error(&bad_key_patch, 401, "invalid_api_key");
    expect_portkey_error(&no_key_analytics, 401, "missing_api_key");
    up.assert_untouched();
}

#[test]
fn denial_echoes_a_valid_client_request_id() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .header("x-request-id", "client-req.42_A")
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 401, "missing_api_key");
    assert_eq!(resp.request_id(), "client-req.42_A");
}
