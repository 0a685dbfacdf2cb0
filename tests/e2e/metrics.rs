//! The reference on metrics, health and logs, the parts a client of the metrics listener sees.

use std::time::Duration;

use super::fixtures::*;
use super::harness::{
    accepts, expect_forwarded, expect_openai_error, poll_until, Proxy, Upstreams,
};

/// A `scopegate_requests_total` sample with this decision and code, at 1.
fn has_sample(text: &str, decision: &str, code: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("scopegate_requests_total{")
            && l.contains(&format!("decision=\"{decision}\""))
            && l.contains(&format!("code=\"{code}\""))
            && l.ends_with(" 1")
    })
}

#[test]
fn healthz_and_readyz_answer_200() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    assert_eq!(proxy.metrics_get("/healthz").status, 200);
    assert_eq!(proxy.metrics_get("/readyz").status, 200);
}

#[test]
fn readyz_is_200_only_once_the_proxy_port_accepts() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).ready_on_readyz_alone().start();

    // A load balancer sends traffic as soon as /readyz says 200.
    assert!(
        accepts(proxy.addr()),
        "/readyz said 200 but the proxy port refuses connections"
    );
    expect_forwarded(&proxy.get("/v1/models").key(BOT).send());
}

#[test]
fn decisions_are_counted() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
    expect_openai_error(
        &proxy.post("/v1/chat/completions").json(CHAT).send(),
        401,
        "missing_api_key",
    );

    // Counting may happen just after the response is written: poll.
    let mut text = String::new();
    let counted = poll_until(Duration::from_secs(5), || {
        let metrics = proxy.metrics_get("/metrics");
        assert_eq!(metrics.status, 200);
        text = metrics.text();
        has_sample(&text, "allow", "ok") && has_sample(&text, "deny", "missing_api_key")
    });

    assert!(
        counted,
        "allow/ok and deny/missing_api_key not both counted in:\n{text}"
    );
    assert!(!text.contains(BOT), "a secret leaked into metrics");
}

#[test]
fn no_secret_appears_in_the_logs() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .bearer(ALICE)
            .json(CHAT)
            .send(),
    );
    let provider = proxy
        .post("/v1/chat/completions")
        .key(BOT)
        .header("authorization", "Bearer sk-provider-secret-xyz")
        .json(CHAT)
        .send();
    expect_forwarded(&provider);
    expect_openai_error(
        &proxy.get("/v1/models").key(UNKNOWN).send(),
        401,
        "invalid_api_key",
    );

    let logs = proxy.logs();
    for secret in [BOT, ALICE, UNKNOWN, "sk-provider-secret-xyz"] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}

#[test]
fn proxy_without_a_metrics_listener_serves() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).without_metrics().start();

    expect_forwarded(&proxy.get("/v1/models").key(BOT).send());
}
