//! A token subject's counters across a restart
//! (docs/reference.md#per-subject-counters): a subject spends its own usage
//! budget through a recording upstream until it is refused, the proxy stops
//! on SIGTERM and starts again on the same store — the local SQLite file,
//! or one `redis-server` shared by two replicas — and the subject is still
//! refused, with the same code and before any upstream, while another
//! subject passes; `scopegate usage --key token:<subject>` shows what was
//! spent.

use std::time::Duration;

use serde_json::Value;

use super::client::{Proto, Response};
use super::harness::{
    expect_openai_error, poll_until, Proxy, ProxyBuilder, RedisServer, Upstreams,
};
use super::identity_tokens::{chat, jwks, jwks_dir, keys_yaml, usage, Signer, USAGE_BODY};

/// Each subject's budget: the upstream reports [`PER_CALL`] tokens a call,
/// so a few calls spend it.
const SUBJECT_BUDGET: &str =
    "usage_limits: { type: tokens, credit_limit: 100, periodic_reset: monthly }";
/// Tokens the upstream reports per call ([`USAGE_BODY`]).
const PER_CALL: u64 = 40;

/// The row of `scopegate usage --key token:<subject>` (Null when none).
fn subject_usage(proxy: &Proxy, subject: &str) -> Value {
    usage(proxy, &["--key", &format!("token:{subject}")])[0].clone()
}

/// Sends `token`'s chat completions through `proxies` in turn until one is
/// refused. After each forwarded call, waits until `scopegate usage` shows
/// it settled in the store. Returns the refusal and the tokens spent.
fn spend_until_refused(
    proxies: &[&Proxy],
    up: &Upstreams,
    token: &str,
    subject: &str,
) -> (Response, u64) {
    for call in 0..10_u64 {
        let proxy = proxies[call as usize % proxies.len()];
        let before = up.completions.count();
        let resp = chat(proxy, Proto::H1, token);
        if resp.status != 200 {
            assert_eq!(up.completions.count(), before, "the refusal went upstream");
            return (resp, call * PER_CALL);
        }
        let spent = (call + 1) * PER_CALL;
        assert!(
            poll_until(Duration::from_secs(10), || subject_usage(proxy, subject)
                ["used_tokens"]
                == spent),
            "call {}: {}",
            call + 1,
            subject_usage(proxy, subject)
        );
    }
    panic!("{subject} was never refused");
}

/// A proxy in front of `up` accepting `signer`'s tokens with
/// [`SUBJECT_BUDGET`], its jwks file at `source`, and `state` config.
fn builder(up: &Upstreams, source: &str, state: &str) -> ProxyBuilder {
    Proxy::builder(up)
        .keys(&keys_yaml(source, SUBJECT_BUDGET, ""))
        .config("default_output_reservation: 0")
        .config(state)
}

/// Checks a restarted set of proxies: `alice` (who spent `spent` and was
/// refused with `code`) is refused again by each, over both protocols,
/// before any upstream; `bob` passes; `scopegate usage` shows alice's
/// `spent`.
#[track_caller]
fn after_restart(proxies: &[&Proxy], up: &Upstreams, signer: &Signer, code: &str, spent: u64) {
    let forwarded = up.completions.count();
    let alice = signer.token("alice");
    for proxy in proxies {
        for proto in Proto::ALL {
            let message = expect_openai_error(&chat(proxy, proto, &alice), 412, code);
            assert!(!message.contains(&alice), "{message}");
        }
    }
    assert_eq!(
        up.completions.count(),
        forwarded,
        "a refused subject's call went upstream after the restart"
    );
    for proxy in proxies {
        let resp = chat(proxy, Proto::H1, &signer.token("bob"));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(up.completions.count(), forwarded + proxies.len());
    let row = subject_usage(proxies[0], "alice");
    assert_eq!(row["used_tokens"], spent, "{row}");
    assert_eq!(row["organisation"], "org_acme", "{row}");
}

#[test]
fn a_subjects_spent_budget_survives_a_restart_on_the_local_store() {
    let es = Signer::es256("es");
    let (_jwks, _, source) = jwks_dir(&jwks(&[&es]));
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state = format!(
        "state: {{ backend: local, path: \"{}\" }}",
        state_dir.path().join("state.db").display()
    );
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let builder = builder(&up, &source, &state).https();
    let mut proxy = builder.clone().start();
    let (refusal, spent) = spend_until_refused(&[&proxy], &up, &es.token("alice"), "alice");
    expect_openai_error(&refusal, 412, "budget_exhausted");
    assert!(spent >= 2 * PER_CALL, "{spent}");
    proxy.terminate();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    drop(proxy);

    let proxy = builder.start();
    after_restart(&[&proxy], &up, &es, "budget_exhausted", spent);
    assert_eq!(up.completions.count() as u64, spent / PER_CALL + 1);
}

#[test]
fn a_subjects_spent_budget_survives_restarting_two_replicas_on_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let es = Signer::es256("es");
    let (_jwks, _, source) = jwks_dir(&jwks(&[&es]));
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let builder = builder(&up, &source, &redis.state_config("allow", 2000)).https();
    let (mut a, mut b) = (builder.clone().start(), builder.clone().start());
    // The calls alternate between the replicas: the budget is one.
    let (refusal, spent) = spend_until_refused(&[&a, &b], &up, &es.token("alice"), "alice");
    expect_openai_error(&refusal, 412, "budget_exhausted");
    assert!(spent >= 2 * PER_CALL, "{spent}");
    for proxy in [&mut a, &mut b] {
        proxy.terminate();
        assert!(proxy.wait_exit(Duration::from_secs(10)).success());
    }
    drop((a, b));

    let (a, b) = (builder.clone().start(), builder.start());
    after_restart(&[&a, &b], &up, &es, "budget_exhausted", spent);
    assert_eq!(up.completions.count() as u64, spent / PER_CALL + 2);
}
