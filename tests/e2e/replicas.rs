//! The reference on limits shared by replicas: replicas share limits and usage through Redis. Two
//! real `scopegate` processes in front of one recording upstream and one
//! `redis-server` of the test's own ([`RedisServer`]): request limits, a
//! token budget and a concurrency limit hold across both; Redis frozen or
//! killed (`on_error: allow` and `deny`), then back; a keys reload; a
//! replica killed with a request in flight.
//!
//! Each test is skipped, with a message, when `redis-server` is missing.

use std::time::{Duration, Instant};

use scopegate::identity::keys::digest_hex;

use super::client::{Conn, Response};
use super::fixtures::*;
use super::harness::{
    expect_openai_error, poll_until, run_scopegate, Proxy, RedisServer, Upstreams,
};
use super::upstream::StreamControl;

/// `timeout_ms` of the tests where Redis fails: the documented default. A
/// request may wait that long for Redis, plus `MARGIN` for a debug build on
/// a loaded machine.
const TIMEOUT_MS: u64 = 50;
const MARGIN: Duration = Duration::from_millis(500);
/// `timeout_ms` of the tests where Redis stays up: on a loaded test machine
/// a round trip can exceed 50 ms, and `allow` would then count that request
/// on the replica alone, which is not what these tests look at.
const PATIENT_MS: u64 = 2000;

const SIX_PER_HOUR: &str = "sk-test-replicas-six";
const THREE_PER_HOUR: &str = "sk-test-replicas-three";
const PROBE: &str = "sk-test-replicas-probe";
const BUDGET: &str = "sk-test-replicas-budget";
const ONE_AT_A_TIME: &str = "sk-test-replicas-one";

/// A workspace-service key on ws_research with `completions.write` and
/// `extra` (YAML lines at the key's indentation).
fn key_entry(id: &str, secret: &str, extra: &str) -> String {
    format!(
        "  - id: {id}\n    name: {id}\n    type: workspace-service\n    \
         workspace_id: ws_research\n    sha256: \"{}\"\n    \
         scopes: [\"completions.write\"]\n{extra}",
        digest_hex(secret.as_bytes())
    )
}

fn requests_per_hour(n: u32) -> String {
    format!("    rate_limits: [{{ type: requests, unit: rph, value: {n} }}]\n")
}

/// The keys file every replica of these tests reads.
fn replica_keys() -> String {
    keys_yaml_with(
        &[
            key_entry("key_six", SIX_PER_HOUR, &requests_per_hour(6)),
            key_entry("key_three", THREE_PER_HOUR, &requests_per_hour(3)),
            key_entry("key_probe", PROBE, &requests_per_hour(100_000)),
            key_entry(
                "key_budget",
                BUDGET,
                "    usage_limits: { type: tokens, credit_limit: 90, periodic_reset: monthly }\n",
            ),
            key_entry("key_one", ONE_AT_A_TIME, "    max_concurrent_requests: 1\n"),
        ]
        .concat(),
    )
}

/// Two replicas in front of `up`, sharing `redis`.
fn two_replicas(
    up: &Upstreams,
    redis: &RedisServer,
    on_error: &str,
    timeout_ms: u64,
) -> (Proxy, Proxy) {
    // CHAT names no max_tokens: reserve its input only, as the budget
    // arithmetic below counts.
    let builder = Proxy::builder(up)
        .keys(&replica_keys())
        .config(&redis.state_config(on_error, timeout_ms))
        .config("default_output_reservation: 0");
    (builder.clone().start(), builder.start())
}

/// Sends `f` and measures how long the answer took.
/// Opens a stream of `ONE_AT_A_TIME` through replica `a` and waits for its
/// first event, so that it holds the key's one concurrency slot; checks
/// that replica `b` is then refused 429. Returns the client's connection
/// and the upstream's control of the stream.
fn hold_the_slot(a: &Proxy, b: &Proxy, up: &Upstreams) -> (Conn, StreamControl) {
    let stream = up.completions.stream("text/event-stream");
    let (mut conn, status, _) = a
        .post("/v1/chat/completions")
        .key(ONE_AT_A_TIME)
        .json(CHAT)
        .send_streaming();
    assert_eq!(status, 200);
    stream.send("data: {}\n\n");
    conn.read_until("data:");
    expect_openai_error(&b.chat(ONE_AT_A_TIME), 429, "concurrency_limited");
    (conn, stream)
}

fn timed(f: impl FnOnce() -> Response) -> (Response, Duration) {
    let started = Instant::now();
    let resp = f();
    (resp, started.elapsed())
}

#[track_caller]
fn expect_rate_limited(resp: &Response) {
    expect_openai_error(resp, 429, "rate_limited");
}

#[test]
fn two_replicas_let_exactly_the_request_limit_through_together() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "allow", PATIENT_MS);
    let responses: Vec<Response> = (0..14)
        .map(|i| {
            let replica = if i % 2 == 0 { &a } else { &b };
            replica.chat(SIX_PER_HOUR)
        })
        .collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    // Each replica alone would pass 6: 12 in all, not 6.
    assert_eq!(statuses, [[200; 6].as_slice(), &[429; 8]].concat());
    for refused in &responses[6..] {
        expect_rate_limited(refused);
    }
    assert_eq!(
        up.completions.count(),
        6,
        "the upstream saw more than the limit"
    );
    // The shared count shows in the headers of both replicas.
    assert_eq!(
        responses[5].header("x-ratelimit-remaining-requests"),
        Some("0")
    );
}

const USAGE_BODY: &str = r#"{"id":"c1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":30,"completion_tokens":10,"total_tokens":40}}"#;

/// `used_tokens` of `key_budget` as `scopegate usage` reads it from Redis
/// with `proxy`'s config.
fn used_tokens(proxy: &Proxy) -> serde_json::Value {
    let dir = proxy.keys_path().parent().unwrap().to_path_buf();
    let config = dir.join("scopegate.yaml");
    let run = run_scopegate(
        &dir,
        &[
            "usage",
            "--config",
            config.to_str().unwrap(),
            "--key",
            "key_budget",
            "--json",
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let rows: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_default();
    rows[0]["used_tokens"].clone()
}

#[test]
fn two_replicas_share_a_token_budget_and_stop_where_one_would() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    up.completions.reply(
        200,
        &[("content-type", "application/json")],
        USAGE_BODY.as_bytes(),
    );
    let (a, b) = two_replicas(&up, &redis, "allow", PATIENT_MS);
    // As in spending.rs with one replica: each request reserves 17 tokens
    // (len/4) and settles the 40 the upstream reports, so 80 + 17 > 90
    // refuses the third. Settlement runs after the response; the test
    // waits for it (through `scopegate usage`, which reads Redis) so the
    // outcome does not depend on that race.
    let mut statuses = Vec::new();
    for (i, replica) in [&a, &b, &a, &b].into_iter().enumerate() {
        let resp = replica.chat(BUDGET);
        statuses.push(resp.status);
        if resp.status == 412 {
            expect_openai_error(&resp, 412, "budget_exhausted");
        } else {
            let expected = 40 * (i as u64 + 1);
            assert!(
                poll_until(Duration::from_secs(3), || used_tokens(&b) == expected),
                "usage in Redis is {}, not {expected}",
                used_tokens(&b)
            );
        }
    }
    assert_eq!(statuses, vec![200, 200, 412, 412]);
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn a_stream_on_one_replica_holds_the_concurrency_slot_of_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "allow", PATIENT_MS);
    let (mut conn, stream) = hold_the_slot(&a, &b, &up);
    expect_openai_error(&a.chat(ONE_AT_A_TIME), 429, "concurrency_limited");
    assert_eq!(up.completions.count(), 1);

    stream.send("data: [DONE]\n\n");
    stream.finish();
    conn.read_body();
    assert!(
        poll_until(Duration::from_secs(3), || b.chat(ONE_AT_A_TIME).status
            == 200),
        "replica B still refuses 3 s after the stream on A ended"
    );
}

#[test]
fn redis_frozen_with_allow_answers_within_the_timeout_and_limits_hold_per_replica() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "allow", TIMEOUT_MS);
    // Both replicas are connected and counting in Redis: 2 of 3 used.
    assert_eq!(a.chat(THREE_PER_HOUR).status, 200);
    assert_eq!(b.chat(THREE_PER_HOUR).status, 200);

    // SIGSTOP: the connections stay open and nothing answers, the worst
    // case for waiting (a refused connection fails at once).
    redis.freeze();
    let bound = Duration::from_millis(TIMEOUT_MS) + MARGIN;
    let mut passed = [0, 0];
    for i in 0..12 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (resp, took) = timed(|| replica.chat(THREE_PER_HOUR));
        assert!(
            took <= bound,
            "request {i} took {took:?} with Redis frozen (bound {bound:?})"
        );
        match resp.status {
            200 => passed[i % 2] += 1,
            _ => expect_rate_limited(&resp),
        }
    }
    // Each replica's own counters keep the limit: at most 3 each, never
    // unlimited. (Exactly 3, as the fallback counts only the outage,
    // unless a warm-up request itself exceeded 50 ms and was counted there.)
    for n in passed {
        assert!(
            (1..=3).contains(&n),
            "admitted per replica during the outage: {passed:?}"
        );
    }
    assert_eq!(up.completions.count(), 2 + passed[0] + passed[1]);
    for replica in [&a, &b] {
        assert!(replica.metric("scopegate_state_errors_total", &[]) > 0.0);
    }
}

#[test]
fn redis_killed_with_deny_answers_503_limits_unavailable_and_forwards_nothing() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "deny", TIMEOUT_MS);
    // (A loaded machine can exceed 50 ms once: that is a 503 too.)
    assert!(poll_until(Duration::from_secs(5), || a
        .chat(THREE_PER_HOUR)
        .status
        == 200));
    redis.kill();
    let bound = Duration::from_millis(TIMEOUT_MS) + MARGIN;
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let (resp, took) = timed(|| replica.chat(THREE_PER_HOUR));
        assert!(took <= bound, "request {i} took {took:?} (bound {bound:?})");
        let message = expect_openai_error(&resp, 503, "limits_unavailable");
        assert!(!message.contains("redis://"), "the URL leaked: {message}");
    }
    assert_eq!(up.completions.count(), 1, "a refused request was forwarded");
}

/// Whether the replica logged that it reaches Redis again.
fn reconnected(proxy: &Proxy) -> bool {
    proxy.logs().contains("reachable again")
}

#[test]
fn redis_back_on_the_same_port_resumes_sharing_within_seconds() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "allow", PATIENT_MS);
    for replica in [&a, &b] {
        assert_eq!(replica.chat(PROBE).status, 200);
    }
    redis.kill();
    for replica in [&a, &b] {
        // Fallback counters answer meanwhile.
        assert_eq!(replica.chat(PROBE).status, 200);
        assert!(replica.metric("scopegate_state_errors_total", &[]) > 0.0);
    }

    redis.restart();
    let back = Instant::now();
    // While down, one request per 500 ms tries Redis: keep traffic going.
    let resumed = poll_until(Duration::from_secs(5), || {
        for replica in [&a, &b] {
            assert_eq!(replica.chat(PROBE).status, 200);
        }
        reconnected(&a) && reconnected(&b)
    });
    assert!(
        resumed,
        "a replica still does not use Redis 5 s after it came back"
    );
    let took = back.elapsed();
    // Shared again: 6 across both, not 6 each.
    let statuses: Vec<u16> = (0..10)
        .map(|i| {
            let replica = if i % 2 == 0 { &a } else { &b };
            replica.chat(SIX_PER_HOUR).status
        })
        .collect();
    assert_eq!(statuses, [[200; 6].as_slice(), &[429; 4]].concat());
    eprintln!("sharing resumed {took:?} after Redis restarted");
    for replica in [&a, &b] {
        assert!(replica.metric("scopegate_state_errors_total", &[]) > 0.0);
    }
}

#[test]
fn a_keys_reload_keeps_the_shared_request_count() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let up = Upstreams::start();
    let (a, b) = two_replicas(&up, &redis, "allow", PATIENT_MS);
    for replica in [&a, &a, &b, &b] {
        assert_eq!(replica.chat(SIX_PER_HOUR).status, 200);
    }
    // An unrelated change: one more key. Both replicas reload.
    let changed = format!(
        "{}{}",
        replica_keys(),
        key_entry("key_unrelated", "sk-test-replicas-unrelated", "")
    );
    for replica in [&a, &b] {
        let successes = || replica.metric("scopegate_keys_reloads_total", &[("result", "success")]);
        let before = successes();
        let path = replica.keys_path();
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, &changed).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            poll_until(Duration::from_secs(5), || successes() > before),
            "no successful reload counted"
        );
    }
    let statuses: Vec<u16> = [&a, &b, &a, &b]
        .into_iter()
        .map(|replica| replica.chat(SIX_PER_HOUR).status)
        .collect();
    assert_eq!(statuses, vec![200, 200, 429, 429]);
    assert_eq!(up.completions.count(), 6);
}

#[test]
fn a_killed_replica_frees_its_concurrency_slot_when_the_lease_expires() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const LEASE: Duration = Duration::from_millis(1500);
    let up = Upstreams::start();
    let builder = Proxy::builder(&up)
        .keys(&replica_keys())
        .config(&redis.state_config("allow", PATIENT_MS))
        .env("SCOPEGATE_TEST_LEASE_MS", &LEASE.as_millis().to_string());
    let a = builder.clone().start();
    let b = builder.start();
    let (_conn, stream) = hold_the_slot(&a, &b, &up);
    // A live replica renews its lease: longer than a lease, still held.
    // (The one deliberate wait of these tests: time itself is the subject.)
    std::thread::sleep(LEASE + Duration::from_millis(500));
    expect_openai_error(&b.chat(ONE_AT_A_TIME), 429, "concurrency_limited");

    a.signal(libc::SIGKILL);
    let killed = Instant::now();
    expect_openai_error(&b.chat(ONE_AT_A_TIME), 429, "concurrency_limited");
    let freed = poll_until(LEASE * 3, || b.chat(ONE_AT_A_TIME).status == 200);
    let took = killed.elapsed();
    assert!(
        freed,
        "the dead replica's slot is still held after {took:?}"
    );
    assert!(
        took <= LEASE + MARGIN * 2,
        "the slot was freed {took:?} after the kill (lease {LEASE:?})"
    );
    drop(stream);
}
