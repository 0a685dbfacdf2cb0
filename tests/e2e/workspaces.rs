//! The reference on the decision order, the rows after the scope check: the inspected control-plane
//! body (415, 413, 400 invalid_json) and the workspace a request names
//! (400 conflicting_workspace, 403 workspace_mismatch, 404
//! workspace_not_found), the reference on which workspace a request names. Every request with a body goes over
//! HTTP/1.1 and over HTTP/2 (the protocol is a column of the tables).

use super::client::{Proto, Req};
use super::fixtures::*;
use super::harness::{expect_forwarded, expect_portkey_error, Proxy, Upstreams};

// ----- the inspected body, and the workspace it names ---------------------

/// How a row's body is sent.
#[derive(Clone, Copy)]
enum Sent<'a> {
    /// No body at all.
    Nothing,
    /// With its `content-length`.
    Whole(&'a str),
    /// Chunked over HTTP/1.1; over HTTP/2 two DATA frames, no length.
    Chunked(&'a str),
}

/// What a row must come to.
#[derive(Clone, Copy, Debug)]
enum Want<'a> {
    /// Refused with this status and code.
    Refused(u16, &'a str),
    /// Forwarded byte for byte, acting in this workspace (`None`:
    /// organisation-wide).
    Forwarded(Option<&'a str>),
}

/// One request of a table.
struct Row<'a> {
    method: &'a str,
    target: &'a str,
    key: &'a str,
    /// Content-Type fields, in order (none, one, or repeated).
    content_types: &'a [&'a str],
    body: Sent<'a>,
    want: Want<'a>,
}

const JSON: &[&str] = &["application/json"];

fn row<'a>(
    method: &'a str,
    target: &'a str,
    key: &'a str,
    content_types: &'a [&'a str],
    body: Sent<'a>,
    want: Want<'a>,
) -> Row<'a> {
    Row {
        method,
        target,
        key,
        content_types,
        body,
        want,
    }
}

/// Sends every row over both protocols; refusals must leave the admin
/// upstream untouched, forwarded rows must reach it byte for byte.
fn run_rows(rows: &[Row<'_>]) {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .https()
        .config("max_inspect_body_bytes: 1024")
        .start();
    for proto in Proto::ALL {
        for r in rows {
            let before = up.admin.count();
            let mut req: Req = proxy.request(r.method, r.target).key(r.key);
            for ct in r.content_types {
                req = req.header("content-type", ct);
            }
            let text = match r.body {
                Sent::Nothing => "",
                Sent::Whole(b) => {
                    req = req.body(b);
                    b
                }
                Sent::Chunked(b) => {
                    let half = b.len() / 2;
                    req = req.chunked([&b[..half], &b[half..]]);
                    b
                }
            };
            let case = format!("{proto:?} {} {} {:?}", r.method, r.target, r.want);
            let resp = req.over(proto).send();
            match r.want {
                Want::Refused(status, code) => {
                    expect_portkey_error(&resp, status, code);
                    assert_eq!(up.admin.count(), before, "{case}: reached the upstream");
                }
                Want::Forwarded(workspace) => {
                    expect_forwarded(&resp);
                    let seen = &up.admin.requests()[before];
                    assert_eq!(seen.method, r.method, "{case}");
                    assert_eq!(seen.target, r.target, "{case}");
                    assert_eq!(seen.body, text.as_bytes(), "{case}");
                    assert_eq!(
                        seen.header("content-type"),
                        r.content_types.first().copied(),
                        "{case}"
                    );
                    assert_eq!(seen.header("x-scopegate-workspace-id"), workspace, "{case}");
                    assert_eq!(seen.header("host"), Some(up.admin.authority().as_str()));
                    assert_eq!(seen.header("x-portkey-api-key"), None);
                }
            }
        }
    }
    assert_eq!(up.completions.count(), 0);
}

#[test]
fn inspected_control_plane_bodies() {
    use Sent::*;
    use Want::*;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(2000));
    let plain_big = "x".repeat(4096);
    run_rows(&[
        // 415: a body the proxy inspects must say it is JSON, once.
        row(
            "POST",
            "/v1/configs",
            BOT,
            &["text/plain"],
            Whole(r#"{"name":"c"}"#),
            Refused(415, "unsupported_media_type"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            &[],
            Whole(r#"{"name":"c"}"#),
            Refused(415, "unsupported_media_type"),
        ),
        row(
            "PUT",
            "/v1/configs/cfg_1",
            BOT,
            &["application/x-www-form-urlencoded"],
            Whole("workspace_id=ws_prod"),
            Refused(415, "unsupported_media_type"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            &["text/plain", "application/json"],
            Whole(r#"{"name":"c"}"#),
            Refused(415, "unsupported_media_type"),
        ),
        // ... and that comes before its size.
        row(
            "POST",
            "/v1/configs",
            BOT,
            &["text/plain"],
            Whole(&plain_big),
            Refused(415, "unsupported_media_type"),
        ),
        // 413, declared or chunked.
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(&big),
            Refused(413, "body_too_large"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Chunked(&big),
            Refused(413, "body_too_large"),
        ),
        // 400 invalid_json.
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"name": "#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Chunked(r#"{"name": "#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id": 5}"#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id": null}"#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id": ["ws_research"]}"#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id": {"id": "ws_research"}}"#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id":"ws_research","workspace_id":"ws_research"}"#),
            Refused(400, "invalid_json"),
        ),
        row(
            "POST",
            "/v1/configs",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"ws_research","name":"x","workspace_id":"ws_prod"}"#),
            Refused(400, "invalid_json"),
        ),
        // Read and forwarded byte for byte: a charset, a chunked body (no
        // length over HTTP/2), an empty body (not inspected).
        row(
            "POST",
            "/v1/configs",
            BOT,
            &["application/json; charset=utf-8"],
            Whole(r#"{"name":"c","workspace_id":"ws_research"}"#),
            Forwarded(Some("ws_research")),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Chunked(r#"{"name":"chunked","workspace_id":"research"}"#),
            Forwarded(Some("ws_research")),
        ),
        row(
            "POST",
            "/v1/admin/workspaces",
            ADMIN,
            &[],
            Nothing,
            Forwarded(None),
        ),
        row(
            "POST",
            "/v1/admin/workspaces",
            ADMIN,
            &[],
            Whole(""),
            Forwarded(None),
        ),
        // Only the top-level workspace_id counts.
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"config":{"workspace_id":"ws_prod"},"items":[{"workspace_id":7}]}"#),
            Forwarded(Some("ws_research")),
        ),
    ]);
}

#[test]
fn a_body_workspace_must_agree_with_the_others_and_the_key() {
    use Sent::*;
    use Want::*;
    run_rows(&[
        row(
            "POST",
            "/v1/configs?workspace_id=ws_research",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"ws_prod"}"#),
            Refused(400, "conflicting_workspace"),
        ),
        row(
            "PUT",
            "/v1/admin/workspaces/ws_research",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"prod","name":"renamed"}"#),
            Refused(400, "conflicting_workspace"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id":"ws_prod","name":"c"}"#),
            Refused(403, "workspace_mismatch"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Chunked(r#"{"workspace_id":"ws_prod","name":"c"}"#),
            Refused(403, "workspace_mismatch"),
        ),
        row(
            "POST",
            "/v1/configs",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"nowhere"}"#),
            Refused(404, "workspace_not_found"),
        ),
        // What the upstream would decode to ws_prod is judged as ws_prod.
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id":"ws\u005fprod"}"#),
            Refused(403, "workspace_mismatch"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace\u005fid":"ws_prod"}"#),
            Refused(403, "workspace_mismatch"),
        ),
        row(
            "POST",
            "/v1/configs",
            BOT,
            JSON,
            Whole(r#"{"workspace_id":"ws_research","workspace\u005fid":"ws_prod"}"#),
            Refused(400, "invalid_json"),
        ),
        // Slug and id of one workspace agree, in every source.
        row(
            "PUT",
            "/v1/admin/workspaces/research?workspace_id=ws_research",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"research","name":"Research"}"#),
            Forwarded(Some("ws_research")),
        ),
        row(
            "POST",
            "/v1/configs",
            ADMIN,
            JSON,
            Whole(r#"{"workspace_id":"prod"}"#),
            Forwarded(Some("ws_prod")),
        ),
    ]);
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
    let other_org = proxy.get("/v1/admin/workspaces/ws_other").key(BOT).send();

    for resp in [&by_id, &by_slug, &by_query, &other_org] {
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

    expect_portkey_error(&by_path, 404, "workspace_not_found");
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
