//! SPEC 5.1, the rows after the scope check: the inspected control-plane
//! body (415, 413, 400 invalid_json) and the workspace a request names
//! (400 conflicting_workspace, 403 workspace_mismatch, 404
//! workspace_not_found), SPEC 5.3.

use super::fixtures::*;
use super::harness::{expect_forwarded, expect_portkey_error, Proxy, Upstreams};

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

// ----- encodings the upstream would decode ---------------------------------

#[test]
fn percent_encoded_query_workspace_is_decoded_before_deciding() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    // What the upstream would decode to ws_prod must be judged as ws_prod.
    let encoded_value = proxy
        .get("/v1/configs?workspace_id=ws%5Fprod")
        .key(BOT)
        .send();
    let encoded_name = proxy
        .get("/v1/configs?workspace_id=ws_research&workspace%5Fid=ws_prod")
        .key(ADMIN)
        .send();
    let foreign = proxy
        .get("/v1/admin/workspaces?workspace_id=ws%5Fother")
        .key(ADMIN)
        .send();

    expect_portkey_error(&encoded_value, 403, "workspace_mismatch");
    expect_portkey_error(&encoded_name, 400, "conflicting_workspace");
    expect_portkey_error(&foreign, 404, "workspace_not_found");
    up.assert_untouched();
}

#[test]
fn json_escaped_body_workspace_is_decoded_before_deciding() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let escaped_value = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace_id":"ws\u005fprod"}"#)
        .send();
    let escaped_name = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace\u005fid":"ws_prod"}"#)
        .send();
    let escaped_duplicate = proxy
        .post("/v1/configs")
        .key(BOT)
        .json(r#"{"workspace_id":"ws_research","workspace\u005fid":"ws_prod"}"#)
        .send();

    expect_portkey_error(&escaped_value, 403, "workspace_mismatch");
    expect_portkey_error(&escaped_name, 403, "workspace_mismatch");
    expect_portkey_error(&escaped_duplicate, 400, "invalid_json");
    up.assert_untouched();
}
