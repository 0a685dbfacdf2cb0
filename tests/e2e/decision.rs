//! The reference on the decision order, row by row and in order: who is refused, with which status,
//! code and body shape, and that nothing refused reaches an upstream. The
//! body and workspace rows are in `workspaces.rs`, the path rows in
//! `paths.rs`.

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

// ----- 429: rate limits ---------------------------------------------------

#[test]
fn rate_limit_exceeded_is_429_with_retry_after() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&limited_key_entry()))
        .start();
    let call = || {
        proxy
            .post("/v1/chat/completions")
            .key(LIMITED)
            .json(CHAT)
            .send()
    };

    // Refused before the rate-limit step: no quota used, no headers.
    let not_found = proxy.get("/v1/nowhere").key(LIMITED).send();
    let no_scope = proxy.post("/v1/logs").key(LIMITED).json("{}").send();
    expect_openai_error(&not_found, 404, "route_not_found");
    expect_openai_error(&no_scope, 403, "missing_scope");
    assert!(not_found.header("x-ratelimit-limit-requests").is_none());
    assert!(no_scope.header("x-ratelimit-limit-requests").is_none());

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
    assert!(
        (1..=3600).contains(&retry_after),
        "Retry-After {retry_after}"
    );
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

// ----- attempts to slip past the decision ---------------------------------

#[test]
fn bearer_scheme_is_case_insensitive() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .header("authorization", &format!("bearer {BOT}"))
        .json(CHAT)
        .send();

    expect_forwarded(&resp);
    assert_eq!(up.completions.only_request().header("authorization"), None);
}

#[test]
fn x_portkey_api_key_wins_over_authorization_without_fallback() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .key(UNKNOWN)
        .bearer(BOT)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 401, "invalid_api_key");
    up.assert_untouched();
}

#[test]
fn repeated_authorization_carrying_the_key_is_401_invalid_api_key() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let resp = proxy
        .post("/v1/chat/completions")
        .bearer(BOT)
        .bearer(BOT)
        .json(CHAT)
        .send();

    expect_openai_error(&resp, 401, "invalid_api_key");
    up.assert_untouched();
}
