//! A key's own view, `GET /v1/scopegate/key`
//! (docs/reference.md#a-keys-own-view): answered by the proxy for every key
//! type, never forwarded, counted in no limit; its values follow real
//! spending, a reservation and a concurrency slot in flight — over HTTP/1.1
//! and HTTP/2 ([`Proto::ALL`]), and across two replicas sharing Redis.

use std::time::Duration;

use scopegate::identity::keys::digest_hex;
use serde_json::Value;

use super::client::Proto;
use super::fixtures::*;
use super::harness::{expect_openai_error, poll_until, Proxy, RedisServer, Upstreams};

const WATCHED: &str = "sk-test-view-watched";
const VIEW: &str = "/v1/scopegate/key";

/// key_watched: every kind of limit, so the view lists each.
fn watched_entry() -> String {
    format!(
        r#"  - id: key_watched
    name: Watched
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{}"
    scopes: ["completions.write"]
    models: ["gpt-4o-mini"]
    max_concurrent_requests: 2
    rate_limits:
      - {{ type: requests, unit: rph, value: 100 }}
      - {{ type: tokens, unit: rpd, value: 100000 }}
    usage_limits: {{ type: tokens, credit_limit: 100000, periodic_reset: monthly }}
"#,
        digest_hex(WATCHED.as_bytes())
    )
}

/// A chat body of a known reservation: its bytes ÷ 4 plus `max_tokens`.
const BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":96,"messages":[{"role":"user","content":"hello there"}]}"#;
const RESERVED: u64 = BODY.len() as u64 / 4 + 96;
const ANSWER: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;

fn view(proxy: &Proxy, secret: &str, proto: Proto) -> Value {
    let resp = proxy.get(VIEW).key(secret).over(proto).send();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("x-request-id").is_some());
    resp.json()
}

/// The `limits` item of `scope` and `type`.
fn limit(v: &Value, scope: &str, kind: &str) -> Value {
    v["limits"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|i| i["scope"] == scope && i["type"] == kind)
                .cloned()
        })
        .unwrap_or_else(|| panic!("no {scope} {kind} limit in {v:#}"))
}

#[test]
fn the_view_follows_spending_a_reservation_and_a_slot_in_flight() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&watched_entry()))
        .https()
        .start();
    let mut spent = 0u64;
    let mut calls = 0u64;
    for proto in Proto::ALL {
        up.completions.reply(
            200,
            &[("content-type", "application/json")],
            ANSWER.as_bytes(),
        );
        let resp = proxy
            .post("/v1/chat/completions")
            .key(WATCHED)
            .json(BODY)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200);
        spent += 40;
        calls += 1;
        let mut v = Value::Null;
        assert!(poll_until(Duration::from_secs(5), || {
            v = view(&proxy, WATCHED, proto);
            limit(&v, "key", "usage")["used"] == spent
        }));
        assert_eq!(v["key"]["id"], "key_watched");
        assert_eq!(v["key"]["type"], "workspace-service");
        assert_eq!(v["key"]["workspace_id"], "ws_prod");
        assert_eq!(v["key"]["organisation_id"], "org_acme");
        assert_eq!(v["key"]["scopes"], serde_json::json!(["completions.write"]));
        assert_eq!(v["models"]["key"], serde_json::json!(["gpt-4o-mini"]));
        assert_eq!(v["models"]["workspace"], Value::Null);
        let usage = limit(&v, "key", "usage");
        assert_eq!(usage["kind"], "tokens");
        assert_eq!(usage["limit"], 100000);
        assert_eq!(usage["reserved"], 0);
        assert_eq!(usage["remaining"], 100000 - spent);
        assert!(usage["resets_at"]
            .as_str()
            .is_some_and(|t| t.ends_with("T00:00:00Z")));
        // Views count in no limit: requests used are the chats alone.
        let requests = limit(&v, "key", "requests");
        assert_eq!(requests["unit"], "rph");
        assert_eq!(requests["remaining"], 100 - calls, "{v:#}");
        let tokens = limit(&v, "key", "tokens");
        // A token comes back every 864 ms: allow one for a slow machine.
        let left = tokens["remaining"].as_u64().unwrap_or_default();
        assert!(
            (100_000 - spent..=100_000 - spent + 1).contains(&left),
            "{v:#}"
        );
        assert_eq!(limit(&v, "key", "concurrency")["in_flight"], 0);
        assert_eq!(v["limits"].as_array().map(Vec::len), Some(4), "{v:#}");
    }
    // A stream in flight holds its reservation and a concurrency slot.
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = proxy
        .post("/v1/chat/completions")
        .key(WATCHED)
        .json(BODY.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""))
        .send_streaming();
    assert_eq!(status, 200);
    stream.send("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n");
    conn.read_until("data:");
    // The streamed body is 14 bytes longer (`"stream":true,`).
    let streaming_reserved = (BODY.len() as u64 + 14) / 4 + 96;
    for proto in Proto::ALL {
        let v = view(&proxy, WATCHED, proto);
        let usage = limit(&v, "key", "usage");
        assert_eq!(limit(&v, "key", "concurrency")["in_flight"], 1, "{v:#}");
        assert_eq!(usage["reserved"], streaming_reserved, "{v:#}");
        assert_eq!(usage["remaining"], 100000 - spent - streaming_reserved);
    }
    drop(stream);
    drop(conn);
    assert!(poll_until(Duration::from_secs(5), || {
        let v = view(&proxy, WATCHED, Proto::H1);
        limit(&v, "key", "concurrency")["in_flight"] == 0
            && limit(&v, "key", "usage")["reserved"] == 0
    }));
    assert_eq!(up.completions.count(), 3, "views never reach an upstream");
    assert_eq!(up.admin.count(), 0);
}

#[test]
fn every_key_type_may_read_its_view_and_nothing_else_gets_one() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).https().start();
    for proto in Proto::ALL {
        for (secret, kind, workspace, user) in [
            (ADMIN, "organisation-service", Value::Null, Value::Null),
            (BOT, "workspace-service", "ws_research".into(), Value::Null),
            (
                ALICE,
                "workspace-user",
                "ws_research".into(),
                "usr_alice".into(),
            ),
            (
                VK_LISTER,
                "workspace-service",
                "ws_research".into(),
                Value::Null,
            ),
            (
                EXHAUSTED,
                "workspace-service",
                "ws_research".into(),
                Value::Null,
            ),
        ] {
            let v = view(&proxy, secret, proto);
            assert_eq!(v["key"]["type"], kind);
            assert_eq!(v["key"]["workspace_id"], workspace);
            assert_eq!(v["key"]["user_id"], user);
            assert_eq!(v["limits"], serde_json::json!([]));
        }
        let rotating = view(&proxy, ROTATING_OLD, proto);
        assert!(rotating["key"]["expires_at"].is_string(), "{rotating:#}");
        for (secret, code) in [
            ("", "missing_api_key"),
            (UNKNOWN, "invalid_api_key"),
            (EXPIRED, "expired_api_key"),
            (REVOKED, "revoked_api_key"),
        ] {
            let req = proxy.get(VIEW).over(proto);
            let req = if secret.is_empty() {
                req
            } else {
                req.key(secret)
            };
            expect_openai_error(&req.send(), 401, code);
        }
        let post = proxy.post(VIEW).key(BOT).json("{}").over(proto).send();
        expect_openai_error(&post, 405, "method_not_allowed");
        assert_eq!(post.header("allow"), Some("GET"));
    }
    up.assert_untouched();
    // Counted as answered, never as forwarded.
    assert!(
        proxy.metric(
            "scopegate_requests_total",
            &[("route", VIEW), ("code", "ok")]
        ) >= 10.0
    );
    assert_eq!(proxy.metric("scopegate_upstream_responses_total", &[]), 0.0);
}

#[test]
fn two_replicas_sharing_redis_show_one_view_and_503_without_it() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let builder = Proxy::builder(&up)
        .keys(&keys_yaml_with(&watched_entry()))
        .config(&redis.state_config("allow", 2000));
    let (a, b) = (builder.clone().start(), builder.start());
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        ANSWER.as_bytes(),
    );
    assert_eq!(
        a.post("/v1/chat/completions")
            .key(WATCHED)
            .json(BODY)
            .send()
            .status,
        200
    );
    // Spent through a, seen through b.
    let mut v = Value::Null;
    assert!(
        poll_until(Duration::from_secs(5), || {
            v = view(&b, WATCHED, Proto::H1);
            limit(&v, "key", "usage")["used"] == 40
        }),
        "{v:#}"
    );
    assert_eq!(limit(&v, "key", "requests")["remaining"], 99);
    let left = limit(&v, "key", "tokens")["remaining"]
        .as_u64()
        .unwrap_or_default();
    assert!((100_000 - 40..=100_000 - 39).contains(&left), "{v:#}");
    // A stream in flight on a: its reservation and slot show on b.
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = a
        .post("/v1/chat/completions")
        .key(WATCHED)
        .json(BODY)
        .send_streaming();
    assert_eq!(status, 200);
    stream.send("data: {}\n\n");
    conn.read_until("data:");
    let v = view(&b, WATCHED, Proto::H1);
    assert_eq!(limit(&v, "key", "concurrency")["in_flight"], 1, "{v:#}");
    assert_eq!(limit(&v, "key", "usage")["reserved"], RESERVED, "{v:#}");
    assert_eq!(
        limit(&v, "key", "usage")["remaining"],
        100000 - 40 - RESERVED
    );
    drop(stream);
    drop(conn);
    assert!(poll_until(Duration::from_secs(5), || {
        let v = view(&b, WATCHED, Proto::H1);
        limit(&v, "key", "concurrency")["in_flight"] == 0
    }));
    let before = up.completions.count();
    // Redis gone: the view cannot tell, whatever on_error says.
    redis.kill();
    for proxy in [&a, &b] {
        let resp = proxy.get(VIEW).key(WATCHED).send();
        expect_openai_error(&resp, 503, "limits_unavailable");
    }
    // A key without limits needs no store.
    assert_eq!(b.get(VIEW).key(BOT).send().status, 200);
    assert_eq!(
        up.completions.count(),
        before,
        "views never reach an upstream"
    );
}

#[test]
fn explain_says_the_proxy_answers_the_view_itself() {
    let up = Upstreams::start();
    let dir = tempfile::tempdir().unwrap();
    let config = Proxy::builder(&up)
        .keys(&keys_yaml_with(&watched_entry()))
        .write_files(dir.path(), (1, 2));
    let run = super::harness::run_scopegate(
        dir.path(),
        &[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--key-id",
            "key_admin",
            "GET",
            VIEW,
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("answered by the proxy: the key's own view"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("upstream:"), "{run:?}");
}
