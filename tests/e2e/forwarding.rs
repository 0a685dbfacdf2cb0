//! The reference on what goes upstream: what the upstream receives — headers removed, identity headers
//! added, request ids, `set_headers`, Host, and path, query and body byte for
//! byte — and that the upstream's answer comes back as it was.

use super::client::Proto;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, is_valid_request_id, Proxy,
    Upstreams,
};

#[test]
fn key_header_is_not_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-portkey-api-key"), None);
    assert_eq!(seen.header("authorization"), None);
}

#[test]
fn authorization_carrying_the_key_is_not_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .bearer(BOT)
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-portkey-api-key"), None);
}

#[test]
fn provider_authorization_passes_when_the_key_is_in_x_portkey_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("authorization", "Bearer sk-provider-123")
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("authorization"), Some("Bearer sk-provider-123"));
    assert_eq!(seen.header("x-portkey-api-key"), None);
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
}

#[test]
fn client_scopegate_headers_are_stripped() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("x-scopegate-key-id", "key_admin")
        .header("X-Scopegate-Key-Type", "organisation-service")
        .header("x-scopegate-workspace-id", "ws_prod")
        .header("x-scopegate-user-id", "usr_mallory")
        .header("x-scopegate-anything", "1")
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
    assert_eq!(
        seen.header("x-scopegate-key-type"),
        Some("workspace-service")
    );
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
    assert_eq!(seen.header("x-scopegate-user-id"), None);
    assert_eq!(seen.header("x-scopegate-anything"), None);
}

#[test]
fn identity_headers_for_a_workspace_service_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );

    let seen = up.completions.only_request();
    let mut names = seen.header_names_with_prefix("x-scopegate-");
    names.sort();
    assert_eq!(
        names,
        [
            "x-scopegate-key-id",
            "x-scopegate-key-type",
            "x-scopegate-organisation-id",
            "x-scopegate-workspace-id",
        ]
    );
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_bot"));
    assert_eq!(
        seen.header("x-scopegate-key-type"),
        Some("workspace-service")
    );
    assert_eq!(seen.header("x-scopegate-organisation-id"), Some("org_acme"));
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
}

#[test]
fn identity_headers_for_a_workspace_user_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    expect_forwarded(&proxy.post("/v1/embeddings").key(ALICE).json("{}").send());

    let seen = up.completions.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_alice"));
    assert_eq!(seen.header("x-scopegate-key-type"), Some("workspace-user"));
    assert_eq!(seen.header("x-scopegate-organisation-id"), Some("org_acme"));
    // The key names its workspace by slug; upstream gets the canonical id.
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
    assert_eq!(seen.header("x-scopegate-user-id"), Some("usr_alice"));
}

#[test]
fn workspace_header_is_the_canonical_id_when_the_client_names_a_slug() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let by_query = proxy
        .get("/v1/configs?workspace_id=research")
        .key(BOT)
        .send();
    let by_path = proxy.get("/v1/admin/workspaces/prod").key(ADMIN).send();

    expect_forwarded(&by_query);
    expect_forwarded(&by_path);
    let seen = up.admin.requests();
    assert_eq!(
        seen[0].header("x-scopegate-workspace-id"),
        Some("ws_research")
    );
    assert_eq!(seen[1].header("x-scopegate-workspace-id"), Some("ws_prod"));
    // The path itself is not rewritten.
    assert_eq!(seen[1].target, "/v1/admin/workspaces/prod");
}

#[test]
fn organisation_wide_admin_request_has_no_workspace_header() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    expect_forwarded(&proxy.get("/v1/admin/workspaces").key(ADMIN).send());

    let seen = up.admin.only_request();
    assert_eq!(seen.header("x-scopegate-key-id"), Some("key_admin"));
    assert_eq!(
        seen.header("x-scopegate-key-type"),
        Some("organisation-service")
    );
    assert_eq!(seen.header("x-scopegate-organisation-id"), Some("org_acme"));
    assert_eq!(seen.header("x-scopegate-workspace-id"), None);
    assert_eq!(seen.header("x-scopegate-user-id"), None);
}

#[test]
fn admin_request_naming_a_workspace_carries_it() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/configs")
        .key(ADMIN)
        .json(r#"{"workspace_id":"ws_prod","name":"c"}"#)
        .send();

    expect_forwarded(&resp);
    let seen = up.admin.only_request();
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_prod"));
    assert_eq!(seen.header("x-scopegate-organisation-id"), Some("org_acme"));
}

#[test]
fn valid_client_request_id_is_kept() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let id = format!("req.{}_A-z", "9".repeat(120));
    assert_eq!(id.len(), 128);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("x-request-id", &id)
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    assert_eq!(resp.request_id(), id);
    assert_eq!(
        up.completions.only_request().header("x-request-id"),
        Some(id.as_str())
    );
}

#[test]
fn invalid_client_request_id_is_replaced() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let too_long = "a".repeat(200);

    for bad in [too_long.as_str(), "has space", "semi;colon", "slash/y"] {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("x-request-id", bad)
            .json(CHAT)
            .send();
        expect_forwarded(&resp);
        let id = resp.request_id();
        assert_ne!(id, bad);
        assert!(is_valid_request_id(id), "generated id {id:?}");
        let upstream_ids: Vec<String> = up
            .completions
            .requests()
            .last()
            .unwrap()
            .header_all("x-request-id")
            .into_iter()
            .map(str::to_string)
            .collect();
        assert_eq!(
            upstream_ids,
            [id],
            "the upstream must see the same single id"
        );
    }
}

#[test]
fn missing_request_id_is_generated_and_shared_with_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let first = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    let second = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();

    expect_forwarded(&first);
    expect_forwarded(&second);
    assert!(is_valid_request_id(first.request_id()));
    assert_ne!(
        first.request_id(),
        second.request_id(),
        "ids must be unique"
    );
    let seen = up.completions.requests();
    assert_eq!(seen[0].header("x-request-id"), Some(first.request_id()));
    assert_eq!(seen[1].header("x-request-id"), Some(second.request_id()));
}

#[test]
fn set_headers_apply_last_and_expand_env() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_yaml(
            "set_headers:\n  \
               authorization: \"Bearer ${SG_E2E_PROVIDER_KEY}\"\n  \
               x-team: \"fixed-${SG_E2E_TEAM}\"",
        )
        .env("SG_E2E_PROVIDER_KEY", "sk-provider-from-env")
        .env("SG_E2E_TEAM", "blue")
        .start();

    let resp = proxy
        .post("/v1/chat/completions")
        .bearer(BOT)
        .header("x-team", "client-says-red")
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(
        seen.header("authorization"),
        Some("Bearer sk-provider-from-env")
    );
    assert_eq!(seen.header("x-team"), Some("fixed-blue"));
    // set_headers belong to their upstream only.
    expect_forwarded(&proxy.get("/v1/configs").key(BOT).send());
    assert_eq!(up.admin.only_request().header("x-team"), None);
}

#[test]
fn set_headers_override_a_provider_authorization() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_yaml("set_headers: {authorization: \"Bearer ${SG_E2E_KEY}\"}")
        .env("SG_E2E_KEY", "sk-held-by-proxy")
        .start();

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("authorization", "Bearer sk-client-provider")
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    let seen = up.completions.only_request();
    assert_eq!(
        seen.header_all("authorization"),
        ["Bearer sk-held-by-proxy"]
    );
}

#[test]
fn host_is_the_upstream_authority() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let data = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(BOT).send();

    expect_forwarded(&data);
    expect_forwarded(&control);
    let completions = up.completions.only_request();
    let admin = up.admin.only_request();
    assert_eq!(
        completions.header("host"),
        Some(up.completions.authority().as_str())
    );
    assert_eq!(admin.header("host"), Some(up.admin.authority().as_str()));
}

#[test]
fn each_plane_goes_to_its_own_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
    expect_forwarded(&proxy.get("/v1/admin/workspaces").key(ADMIN).send());

    assert_eq!(up.completions.only_request().target, "/v1/chat/completions");
    assert_eq!(up.admin.only_request().target, "/v1/admin/workspaces");
}

#[test]
fn method_path_and_query_are_forwarded_byte_for_byte() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let targets = [
        (
            "GET",
            "/v1/files/a%20b?limit=10&after=x%2Fy&order=desc&flag",
        ),
        ("DELETE", "/v1/files/file%2Babc"),
        ("GET", "/v1/fine_tuning/jobs/ftjob_1/events?limit=2&limit=3"),
        ("GET", "/v1/models?q=caf%C3%A9&empty="),
    ];

    for (method, target) in targets {
        expect_forwarded(&proxy.request(method, target).key(BOT).send());
    }

    let seen: Vec<_> = up
        .completions
        .requests()
        .into_iter()
        .map(|r| (r.method, r.target))
        .collect();
    let expected: Vec<_> = targets
        .iter()
        .map(|(m, t)| (m.to_string(), t.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn control_plane_json_body_is_forwarded_byte_for_byte() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let body = "{ \"name\" :\t\"caf\u{e9} \u{2615} \\u00e9\\n\",\r\n  \"workspace_id\":\"research\" ,\n\"n\": [1.50, 2e3, -0]  }\n";

    let resp = proxy.post("/v1/configs").key(BOT).json(body).send();

    expect_forwarded(&resp);
    let seen = up.admin.only_request();
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("x-scopegate-workspace-id"), Some("ws_research"));
}

#[test]
fn large_json_body_under_the_limit_arrives_identical() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let filler: String = (0..60 * 1024 - 64)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let body = format!(r#"{{"workspace_id":"ws_research","blob":"{filler}"}}"#);
    assert!(body.len() > 60 * 1024 - 32 && body.len() < 65536);

    let resp = proxy.post("/v1/configs").key(BOT).json(&body).send();

    expect_forwarded(&resp);
    assert!(
        up.admin.only_request().body == body.as_bytes(),
        "body changed"
    );
}

#[test]
fn chunked_request_body_is_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let pieces = [
        r#"{"workspace_id":"#,
        r#""ws_research","#,
        r#""name":"chunked"}"#,
    ];

    let resp = proxy
        .post("/v1/configs")
        .key(BOT)
        .header("content-type", "application/json")
        .chunked(pieces)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.admin.only_request().body, pieces.concat().as_bytes());
}

#[test]
fn chunked_data_plane_body_is_forwarded() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let pieces = [&CHAT[..10], &CHAT[10..40], &CHAT[40..]];

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("content-type", "application/json")
        .chunked(pieces)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.completions.only_request().body, CHAT.as_bytes());
}

#[test]
fn data_plane_body_is_not_inspected() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("max_inspect_body_bytes: 1024")
        .start();
    let audio: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();

    let resp = proxy
        .post("/v1/audio/transcriptions")
        .key(BOT)
        .header("content-type", "application/octet-stream")
        .body(&audio)
        .send();

    expect_forwarded(&resp);
    assert!(up.completions.only_request().body == audio, "body changed");
}

#[test]
fn upstream_response_comes_back_as_it_was() {
    let up = Upstreams::start();
    up.completions.reply(
        201,
        &[("content-type", "application/json"), ("x-upstream", "yes")],
        br#"{"id":"chatcmpl-1"}"#,
    );
    up.admin.reply(
        500,
        &[("content-type", "application/json")],
        br#"{"success":false,"data":{"message":"upstream broke"}}"#,
    );
    let proxy = Proxy::start(&up);

    let data = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .json(CHAT)
        .send();
    let control = proxy.get("/v1/configs").key(BOT).send();

    assert_eq!(data.status, 201);
    assert_eq!(data.header("x-upstream"), Some("yes"));
    assert_eq!(data.body, br#"{"id":"chatcmpl-1"}"#);
    assert!(is_valid_request_id(data.request_id()));
    assert_eq!(control.status, 500);
    assert_eq!(
        control.body,
        br#"{"success":false,"data":{"message":"upstream broke"}}"#
    );
}

#[test]
fn response_carries_one_request_id_even_when_the_upstream_sends_its_own() {
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "from-upstream"),
        ],
        br#"{"ok":true}"#,
    );
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("x-request-id", "from-client")
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    assert_eq!(resp.header_all("x-request-id"), ["from-client"]);
}

/// RFC 9113 8.2.3: an HTTP/2 client may send each cookie as its own
/// `cookie` field; the upstream hop is HTTP/1.1, where a request has one
/// `Cookie` header. Both forward paths join them with `; ` — pingora's (a
/// body the proxy does not read) and the proxy's own (a control-plane JSON
/// body it inspected) — and so does an HTTP/1.1 client's repeated header.
#[test]
fn cookie_fields_reach_the_upstream_as_one_header() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    for proto in Proto::ALL {
        for (path, body) in [
            ("/v1/chat/completions", CHAT),
            ("/v1/configs", r#"{"name":"c"}"#),
        ] {
            let resp = proxy
                .post(path)
                .key(BOT)
                .header("cookie", "a=1")
                .header("cookie", "b=2; c=3")
                .json(body)
                .over(proto)
                .send();
            expect_forwarded(&resp);
            let seen = if path == "/v1/configs" {
                up.admin.requests().pop()
            } else {
                up.completions.requests().pop()
            }
            .expect("forwarded");
            assert_eq!(
                seen.header("cookie"),
                Some("a=1; b=2; c=3"),
                "{proto:?} {path}"
            );
            assert_eq!(seen.body, body.as_bytes());
        }
    }
}

/// A request whose `Content-Length` is repeated or a list could be framed
/// otherwise by an HTTP/1.1 upstream: refused with 400 before any upstream.
/// Over HTTP/2, values the h2 layer cannot parse (`5, 5`) or reconcile
/// (`5` and `6`) are a stream error there (RFC 9113 8.1.1: a malformed
/// request); equal repeated values reach the proxy, which refuses them.
#[test]
fn an_ambiguous_content_length_is_refused_before_any_upstream() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    let lengths: &[&[&str]] = &[&["5, 5"], &["5", "5"], &["5", "6"], &["05, 5"]];
    for proto in Proto::ALL {
        for (path, key, openai) in [
            ("/v1/chat/completions", BOT, true),
            ("/v1/configs", BOT, false),
            ("/v1/files", UNKNOWN, true),
        ] {
            for values in lengths {
                let mut req = proxy
                    .post(path)
                    .key(key)
                    .header("content-type", "application/json");
                for v in *values {
                    req = req.header("content-length", v);
                }
                let req = req.exact("hello").over(proto);
                let case = format!("{proto:?} {path} {values:?}");
                let resp = match proto {
                    Proto::H1 => req.send(),
                    Proto::H2 => match req.try_send_h2() {
                        Ok(resp) => resp,
                        // Reset by the h2 layer, before the decision.
                        Err(e) if *values != ["5", "5"] => {
                            assert!(e.contains("PROTOCOL_ERROR"), "{case}: {e}");
                            continue;
                        }
                        Err(e) => panic!("{case}: {e}"),
                    },
                };
                assert_eq!(resp.status, 400, "{case}: {}", resp.text());
                // pingora refuses differing values itself (its own 400);
                // the values it reconciles reach the decision.
                if *values != ["5", "6"] {
                    if openai {
                        expect_openai_error(&resp, 400, "invalid_request");
                    } else {
                        expect_portkey_error(&resp, 400, "invalid_request");
                    }
                }
            }
        }
    }
    up.assert_untouched();
    // One plain length passes.
    for proto in Proto::ALL {
        let resp = proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("content-type", "application/json")
            .header("content-length", &CHAT.len().to_string())
            .exact(CHAT)
            .over(proto)
            .send();
        expect_forwarded(&resp);
    }
    assert_eq!(up.completions.count(), 2);
}
