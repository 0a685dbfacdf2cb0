//! Extra data routes with `meter` (the reference on the route table and usage counting): such a route — Azure's
//! `/openai/deployments/{d}/chat/completions` as `chat` — is read, checked
//! and counted exactly like the built-in one, over HTTP/1.1 and HTTP/2.
//! `meter` where it cannot count is a config error with its position, and
//! `scopegate check` warns about an extra data route without it that a key
//! whose tokens are counted can reach.

use std::time::Duration;

use scopegate::identity::keys::digest_hex;

use super::client::Proto;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, poll_until, run_scopegate, Proxy, ProxyBuilder,
    Upstreams,
};
use super::spending::assert_received_exactly;

const MINI: &str = "sk-test-meter-mini";
const TPM: &str = "sk-test-meter-tpm";
const BUDGET: &str = "sk-test-meter-budget";

const AZURE_CHAT: &str = "/openai/deployments/gpt4o/chat/completions";
const AZURE_EMBED: &str = "/openai/deployments/ada/embeddings";

const ROUTES: &str = r#"routes:
  - { methods: [POST], path: "/openai/deployments/{d}/chat/completions", plane: data, scopes: [completions.write], meter: chat }
  - { methods: [POST], path: "/openai/deployments/{d}/embeddings", plane: data, scopes: [completions.write], meter: embeddings }"#;

fn keys() -> String {
    let entry = |id: &str, secret: &str, extra: &str| {
        format!(
            "  - id: {id}\n    type: workspace-service\n    workspace_id: ws_prod\n    \
             sha256: \"{}\"\n    scopes: [\"completions.write\"]\n{extra}",
            digest_hex(secret.as_bytes())
        )
    };
    keys_yaml_with(
        &[
            entry("key_meter_mini", MINI, "    models: [\"gpt-4o-mini\"]\n"),
            entry(
                "key_meter_tpm",
                TPM,
                "    rate_limits: [{ type: tokens, unit: rpm, value: 1000 }]\n",
            ),
            entry(
                "key_meter_budget",
                BUDGET,
                "    usage_limits: { type: tokens, credit_limit: 100000 }\n",
            ),
        ]
        .concat(),
    )
}

fn builder(up: &Upstreams) -> ProxyBuilder {
    Proxy::builder(up).https().keys(&keys()).config(ROUTES)
}

fn used(proxy: &Proxy, key: &str) -> serde_json::Value {
    let config = proxy.keys_path().with_file_name("scopegate.yaml");
    let run = run_scopegate(
        proxy.keys_path().parent().unwrap(),
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--key",
            key,
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap_or_default()[0].clone()
}

#[test]
fn a_metered_route_checks_models_and_content_types_like_the_builtin_one() {
    let up = Upstreams::start();
    let proxy = builder(&up).start();
    for proto in Proto::ALL {
        for (ct, body, status, code) in [
            (
                "application/json",
                r#"{"messages":[]}"#,
                400,
                "missing_model",
            ),
            (
                "application/json",
                r#"{"model":"gpt-4o","messages":[]}"#,
                403,
                "model_not_allowed",
            ),
            (
                "application/json",
                r#"{"model":"gpt-4o-mini","Model":"gpt-4o"}"#,
                400,
                "invalid_json",
            ),
            (
                "text/plain",
                r#"{"model":"gpt-4o"}"#,
                415,
                "unsupported_media_type",
            ),
        ] {
            let resp = proxy
                .post(AZURE_CHAT)
                .key(MINI)
                .header("content-type", ct)
                .body(body)
                .over(proto)
                .send();
            expect_openai_error(&resp, status, code);
        }
        for (body, why) in [
            (
                r#"{"model":"m","max_tokens":5000,"messages":[]}"#,
                "max_tokens",
            ),
            // No maximum: the default reservation (4096) applies here too.
            (r#"{"model":"m","messages":[]}"#, "default"),
            (r#"{"model":"m","max_tokens":300,"n":4,"messages":[]}"#, "n"),
        ] {
            let resp = proxy
                .post(AZURE_CHAT)
                .key(TPM)
                .json(body)
                .over(proto)
                .send();
            let msg = expect_openai_error(&resp, 429, "rate_limited");
            assert!(msg.contains("whole"), "{proto:?} {why}: {msg}");
        }
    }
    up.assert_untouched();
    for proto in Proto::ALL {
        let before = up.completions.count();
        let body = r#"{"model":"gpt-4o-mini","messages":[]}"#;
        let resp = proxy
            .post(AZURE_CHAT)
            .key(MINI)
            .json(body)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let seen = &up.completions.requests()[before];
        assert_eq!(seen.target, AZURE_CHAT);
        assert_received_exactly(&up, seen, body.as_bytes(), "application/json");
    }
}

#[test]
fn a_metered_route_reserves_injects_and_settles_like_the_builtin_one() {
    for proto in Proto::ALL {
        let up = Upstreams::start();
        let proxy = builder(&up).start();
        // A token rate limit sees the reservation at admission.
        let body = r#"{"model":"m","max_tokens":10,"n":2,"messages":[]}"#;
        let resp = proxy
            .post(AZURE_CHAT)
            .key(TPM)
            .json(body)
            .over(proto)
            .send();
        expect_forwarded(&resp);
        let reserved = body.len() / 4 + 20;
        assert_eq!(
            resp.header("x-ratelimit-remaining-tokens"),
            Some((1000 - reserved).to_string().as_str()),
            "{proto:?}"
        );

        // A stream gets include_usage upstream; the client gets its stream.
        let stream = up.completions.stream("text/event-stream");
        let mut open = proxy
            .post(AZURE_CHAT)
            .key(BUDGET)
            .json(r#"{"model":"gpt-4o","stream":true,"messages":[]}"#)
            .over(proto)
            .open();
        assert_eq!(open.status, 200);
        let c1 = r#"{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#;
        let u = r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;
        stream.send(&format!("data: {c1}\n\ndata: {u}\n\ndata: [DONE]\n\n"));
        stream.finish();
        let got = String::from_utf8_lossy(&open.read_body()).into_owned();
        assert!(got.contains("hi") && got.contains("[DONE]"), "{got}");
        assert!(
            !got.contains("prompt_tokens") && !got.contains("\"usage\""),
            "{got}"
        );
        let seen = up.completions.requests().pop().expect("forwarded");
        let injected = r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#;
        assert_received_exactly(&up, &seen, injected.as_bytes(), "application/json");

        // An embedding answer's usage settles exactly.
        up.completions.reply(
            200,
            &[("content-type", "application/json")],
            br#"{"object":"list","data":[],"model":"ada","usage":{"prompt_tokens":7,"total_tokens":7}}"#,
        );
        let resp = proxy
            .post(AZURE_EMBED)
            .key(BUDGET)
            .json(r#"{"model":"ada","input":"hello"}"#)
            .over(proto)
            .send();
        assert_eq!(resp.status, 200);
        assert!(
            poll_until(Duration::from_secs(3), || {
                let u = used(&proxy, "key_meter_budget");
                u["input_tokens"] == 37 && u["output_tokens"] == 10 && u["estimated_tokens"] == 0
            }),
            "{proto:?}: {}",
            used(&proxy, "key_meter_budget")
        );
    }
}

/// Writes `builder`'s files and runs `scopegate check` on them.
fn check(builder: &ProxyBuilder) -> super::harness::CommandRun {
    let dir = tempfile::tempdir().expect("tempdir");
    builder.write_files(dir.path(), (18080, 19464));
    let run = run_scopegate(dir.path(), &["check", "--config", "scopegate.yaml"]);
    drop(dir);
    run
}

#[test]
fn meter_where_it_cannot_count_is_a_config_error_with_its_position() {
    for (route, says) in [
        (
            r#"{ methods: [POST], path: "/v1/x", plane: control, scopes: [configs.read], meter: chat }"#,
            "routes[0].meter: `meter: chat` is for data-plane routes",
        ),
        (
            r#"{ methods: [GET, POST], path: "/v1/rt", plane: data, scopes: [completions.write], upgrade: websocket, meter: responses }"#,
            "routes[0].meter: `meter: responses` cannot be combined with `upgrade`",
        ),
        (
            r#"{ methods: [GET], path: "/v1/g", plane: data, scopes: [completions.write], meter: chat }"#,
            "has no POST",
        ),
        (
            r#"{ methods: [POST], path: "/v1/g", plane: data, scopes: [completions.write], meter: rerank }"#,
            "unknown variant `rerank`",
        ),
    ] {
        let builder = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
            .config(&format!("routes:\n  - {route}"));
        let run = check(&builder);
        assert_eq!(run.status.code(), Some(1), "{run:?}");
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or_else(|| panic!("no `{says}` in {run:?}"));
        // FILE:LINE:COL: the config's own place for it.
        let mut parts = line.splitn(4, ':');
        assert!(
            parts.next().unwrap_or_default().ends_with("scopegate.yaml"),
            "{line}"
        );
        for _ in 0..2 {
            let n = parts.next().unwrap_or_default();
            assert!(n.parse::<usize>().is_ok(), "{line}");
        }
    }
}

#[test]
fn check_warns_about_an_unmetered_data_route_a_counted_key_can_reach() {
    let routes = r#"routes:
  - { methods: [POST], path: "/openai/deployments/{d}/chat/completions", plane: data, scopes: [completions.write], meter: chat }
  - { methods: [POST], path: "/openai/deployments/{d}/completions", plane: data, scopes: [completions.write] }
  - { methods: [POST], path: "/v1/logs/bulk", plane: data, scopes: [logs.write] }
  - { methods: [POST], path: "/v1/chat/completions", plane: data, scopes: [completions.write] }
  - { methods: [GET], path: "/openai/realtime", plane: data, scopes: [completions.write], upgrade: websocket }
  - { methods: [GET], path: "/openai/deployments/{d}/status", plane: data, scopes: [completions.write] }"#;
    // The GET routes get no advice: `meter` counts POST answers only and
    // never an upgraded connection, so it could not be set there.
    let builder = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .keys(&keys())
        .config(routes);
    let run = check(&builder);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert!(run.stdout.contains(": ok: "), "{run:?}");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{run:?}");
    let w = warnings[0];
    assert!(w.contains("scopegate.yaml:"), "{w}");
    assert!(w.contains("routes[1]"), "{w}");
    assert!(w.contains("/openai/deployments/{d}/completions"), "{w}");
    assert!(
        w.contains("key_meter_tpm") && w.contains("key_meter_budget"),
        "{w}"
    );
    assert!(
        !w.contains("key_meter_mini"),
        "models alone count nothing: {w}"
    );

    // Without keys whose tokens are counted, nothing to warn about.
    let quiet =
        check(&ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9").config(routes));
    assert_eq!(quiet.status.code(), Some(0), "{quiet:?}");
    assert!(!quiet.stderr.contains("warning"), "{quiet:?}");
}
