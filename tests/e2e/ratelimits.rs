//! The reference on the keys file's `rate_limits` and on the responses the proxy writes: per-key request limits (GCRA), the 429 and
//! the `x-ratelimit-*` headers. The basic 429 and "refused earlier uses no
//! quota" are in `decision.rs`; this file covers timing, several limits on
//! one key, window boundaries, the control-plane shape and load checks.
//!
//! Waiting for a rate-limit window to pass is the one place these tests
//! let time elapse on purpose; every such wait is a bounded poll or is
//! kept well under a second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scopegate::identity::keys::digest_hex;

use super::client::Response;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, free_port_pair, poll_until,
    run_scopegate, Proxy, ProxyBuilder, Upstreams,
};

/// A workspace-service key on ws_research with `scopes` (a YAML flow list
/// body, e.g. `"completions.write"`) and request limits `(unit, value)`.
fn limited_key(id: &str, secret: &str, scopes: &str, limits: &[(&str, u32)]) -> String {
    let mut entry = format!(
        "  - id: {id}\n    name: {id}\n    type: workspace-service\n    \
         workspace_id: ws_research\n    sha256: \"{hash}\"\n    \
         scopes: [{scopes}]\n    rate_limits:\n",
        hash = digest_hex(secret.as_bytes()),
    );
    for (unit, value) in limits {
        entry.push_str(&format!(
            "      - {{ type: requests, unit: {unit}, value: {value} }}\n"
        ));
    }
    entry
}

/// The value of a header that must be present.
#[track_caller]
fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.header(name)
        .unwrap_or_else(|| panic!("no {name} on {} response: {:?}", resp.status, resp.headers))
}

/// `x-ratelimit-remaining-requests` of each response.
fn remaining(responses: &[Response]) -> Vec<&str> {
    responses
        .iter()
        .map(|r| header(r, "x-ratelimit-remaining-requests"))
        .collect()
}

/// `Retry-After` as whole seconds.
#[track_caller]
fn retry_after(resp: &Response) -> u64 {
    let value = header(resp, "retry-after");
    value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?} is not whole seconds"))
}

/// Parses OpenAI's reset duration format: `250ms`, `1s`, `1.5s`, `6m0s`,
/// `1h1m1s`. Panics on anything else.
#[track_caller]
fn parse_reset(text: &str) -> Duration {
    #[track_caller]
    fn bad(text: &str) -> ! {
        panic!("x-ratelimit-reset-requests {text:?} is not OpenAI's duration format")
    }
    if let Some(ms) = text.strip_suffix("ms") {
        return Duration::from_millis(ms.parse().unwrap_or_else(|_| bad(text)));
    }
    let mut rest = text.strip_suffix('s').unwrap_or_else(|| bad(text));
    let mut total = 0.0_f64;
    for (unit, seconds) in [('h', 3600.0), ('m', 60.0)] {
        if let Some((n, tail)) = rest.split_once(unit) {
            total += n.parse::<u64>().unwrap_or_else(|_| bad(text)) as f64 * seconds;
            rest = tail;
        }
    }
    let secs: f64 = rest.parse().unwrap_or_else(|_| bad(text));
    if !rest.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        bad(text);
    }
    Duration::from_secs_f64(total + secs)
}

#[test]
fn reset_parser_reads_openai_durations() {
    assert_eq!(parse_reset("250ms"), Duration::from_millis(250));
    assert_eq!(parse_reset("1s"), Duration::from_secs(1));
    assert_eq!(parse_reset("1.5s"), Duration::from_millis(1500));
    assert_eq!(parse_reset("6m0s"), Duration::from_secs(360));
    assert_eq!(parse_reset("1h1m1s"), Duration::from_secs(3661));
}

const FAST: &str = "sk-test-rl-fast";
const FAST_TWIN: &str = "sk-test-rl-fast-twin";

#[test]
fn three_per_second_passes_three_then_429_then_recovers_after_a_third_of_a_second() {
    let up = Upstreams::start();
    let keys = keys_yaml_with(&format!(
        "{}{}",
        limited_key("key_fast", FAST, "completions.write", &[("rps", 3)]),
        limited_key(
            "key_fast_twin",
            FAST_TWIN,
            "completions.write",
            &[("rps", 3)]
        ),
    ));
    let proxy = Proxy::builder(&up).keys(&keys).start();

    let started = Instant::now();
    let burst: Vec<Response> = (0..4).map(|_| proxy.chat(FAST)).collect();
    let refused_at = Instant::now();
    let burst_took = refused_at - started;
    assert!(
        burst_took < Duration::from_millis(900),
        "four requests took {burst_took:?}; the test needs them inside one second"
    );

    let statuses: Vec<u16> = burst.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "responses: {burst:#?}");
    for resp in &burst[..3] {
        expect_forwarded(resp);
    }
    let message = expect_openai_error(&burst[3], 429, "rate_limited");
    assert!(!message.contains(FAST), "secret in message: {message}");
    assert_eq!(remaining(&burst), ["2", "1", "0", "0"]);
    for resp in &burst {
        assert_eq!(header(resp, "x-ratelimit-limit-requests"), "3");
        let reset = parse_reset(header(resp, "x-ratelimit-reset-requests"));
        assert!(
            reset <= Duration::from_secs(1),
            "reset {reset:?} beyond 1 s"
        );
    }
    // One request comes back after period/N: Retry-After rounds up to 1 s.
    assert_eq!(retry_after(&burst[3]), 1);
    assert_eq!(up.completions.count(), 3, "the 429 reached the upstream");

    // Other keys are untouched by key_fast's state.
    let unlimited = proxy.chat(BOT);
    expect_forwarded(&unlimited);
    assert_eq!(unlimited.header("x-ratelimit-limit-requests"), None);
    let twin = proxy.chat(FAST_TWIN);
    expect_forwarded(&twin);
    assert_eq!(header(&twin, "x-ratelimit-remaining-requests"), "2");

    // GCRA: the fourth slot frees 1/3 s after the first request.
    let mut recovered = None;
    let came_back = poll_until(Duration::from_millis(1500), || {
        let resp = proxy.chat(FAST);
        if resp.status == 200 {
            recovered = Some((resp, Instant::now()));
            return true;
        }
        expect_openai_error(&resp, 429, "rate_limited");
        false
    });
    assert!(came_back, "key_fast still refused 1.5 s after its 429");
    let (resp, at) = recovered.unwrap();
    expect_forwarded(&resp);
    assert_eq!(header(&resp, "x-ratelimit-remaining-requests"), "0");
    let since_first = at - started;
    let since_429 = at - refused_at;
    assert!(
        since_first >= Duration::from_millis(320),
        "passed again {since_first:?} after the first request: earlier than period/N"
    );
    assert!(
        since_429 <= Duration::from_millis(1200),
        "passed again only {since_429:?} after the 429"
    );
    assert_eq!(up.completions.count(), 3 + 2 + 1);
}

#[test]
fn tightest_of_several_limits_wins() {
    const SECRET: &str = "sk-test-rl-two-limits";
    let up = Upstreams::start();
    let keys = keys_yaml_with(&limited_key(
        "key_two_limits",
        SECRET,
        "completions.write",
        &[("rps", 10), ("rpm", 3)],
    ));
    let proxy = Proxy::builder(&up).keys(&keys).start();

    let burst: Vec<Response> = (0..4).map(|_| proxy.chat(SECRET)).collect();

    let statuses: Vec<u16> = burst.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "responses: {burst:#?}");
    expect_openai_error(&burst[3], 429, "rate_limited");
    // The rpm limit has the fewest left, so the headers describe it.
    for resp in &burst {
        assert_eq!(header(resp, "x-ratelimit-limit-requests"), "3");
    }
    assert_eq!(remaining(&burst), ["2", "1", "0", "0"]);
    // 3 per minute: one more every 20 s.
    let wait = retry_after(&burst[3]);
    assert!(
        (19..=21).contains(&wait),
        "Retry-After {wait}, expected ≈ 20"
    );
    // The rpm quota is whole again a minute after the burst.
    let reset = parse_reset(header(&burst[2], "x-ratelimit-reset-requests"));
    assert!(
        (Duration::from_secs(55)..=Duration::from_secs(60)).contains(&reset),
        "reset {reset:?} after three of 3/min"
    );
    assert_eq!(up.completions.count(), 3);
}

#[test]
fn a_refusal_consumes_nothing_from_any_limit() {
    const SECRET: &str = "sk-test-rl-refusals";
    let up = Upstreams::start();
    let keys = keys_yaml_with(&limited_key(
        "key_refusals",
        SECRET,
        "completions.write",
        &[("rps", 2), ("rpm", 3)],
    ));
    let proxy = Proxy::builder(&up).keys(&keys).start();

    let started = Instant::now();
    let first: Vec<u16> = (0..2).map(|_| proxy.chat(SECRET).status).collect();
    assert_eq!(first, [200, 200]);
    // Refused by the rps limit (its next slot frees 500 ms after the first
    // request); had they been taken from the rpm limit (1 left), the key
    // would be stuck for 20 s.
    let mut refused = 0;
    while refused < 5 && started.elapsed() < Duration::from_millis(400) {
        let resp = proxy.chat(SECRET);
        expect_openai_error(&resp, 429, "rate_limited");
        assert_eq!(retry_after(&resp), 1);
        refused += 1;
    }
    assert!(refused >= 1, "too slow to send a refused request");

    let mut third = None;
    let passed = poll_until(Duration::from_millis(1500), || {
        let resp = proxy.chat(SECRET);
        let ok = resp.status == 200;
        third = Some(resp);
        ok
    });
    let third = third.unwrap();
    assert!(
        passed,
        "the rpm limit was charged for refused requests: {third:?}"
    );
    assert_eq!(header(&third, "x-ratelimit-remaining-requests"), "0");

    // Now the rpm limit is spent: exactly three passed.
    let fourth = proxy.chat(SECRET);
    expect_openai_error(&fourth, 429, "rate_limited");
    let wait = retry_after(&fourth);
    assert!(
        (18..=21).contains(&wait),
        "Retry-After {wait}, expected ≈ 20"
    );
    // Both limits have 0 left here, so either may be the one reported.
    assert_eq!(header(&fourth, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(up.completions.count(), 3);
}

/// Sleeps until `before` ahead of the next wall-clock second.
fn sleep_until_before_next_second(before: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into_second = Duration::from_nanos(u64::from(now.subsec_nanos()));
    let second = Duration::from_secs(1);
    let mut wait = second - into_second;
    if wait < before + Duration::from_millis(20) {
        wait += second;
    }
    std::thread::sleep(wait - before);
}

fn wall_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_burst_across_a_second_boundary_does_not_pass_twice_the_limit() {
    const SECRET: &str = "sk-test-rl-boundary";
    let up = Upstreams::start();
    let keys = keys_yaml_with(&limited_key(
        "key_boundary",
        SECRET,
        "completions.write",
        &[("rps", 5)],
    ));
    let proxy = Proxy::builder(&up).keys(&keys).start();

    // A fixed one-second window would pass 5 before the boundary and 5
    // after; GCRA passes 5, then one more every 200 ms.
    sleep_until_before_next_second(Duration::from_millis(80));
    let second_before = wall_second();
    let started = Instant::now();
    let before: Vec<u16> = (0..5).map(|_| proxy.chat(SECRET).status).collect();
    while wall_second() == second_before {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(10));
    let after: Vec<u16> = (0..5).map(|_| proxy.chat(SECRET).status).collect();
    let took = started.elapsed();

    assert_eq!(before, [200; 5], "the first burst of 5 must pass");
    assert!(
        after.iter().all(|s| [200, 429].contains(s)),
        "after: {after:?}"
    );
    let passed = before.iter().chain(&after).filter(|s| **s == 200).count();
    assert!(
        took < Duration::from_millis(400),
        "the two bursts took {took:?}; too slow to judge the boundary"
    );
    // GCRA refills one request per 200 ms of elapsed time.
    let refill = usize::try_from(took.as_millis() / 200).unwrap();
    assert!(
        passed <= 5 + refill,
        "{passed} passed within {took:?} across a second boundary (limit 5/s): \
         before {before:?}, after {after:?}"
    );
    assert_eq!(up.completions.count(), passed);
}

#[test]
fn control_plane_429_is_portkey_shaped() {
    const SECRET: &str = "sk-test-rl-control";
    let up = Upstreams::start();
    let keys = keys_yaml_with(&limited_key(
        "key_control_limited",
        SECRET,
        "configs.list",
        &[("rph", 1)],
    ));
    let proxy = Proxy::builder(&up).keys(&keys).start();

    let first = proxy.get("/v1/configs").key(SECRET).send();
    let second = proxy.get("/v1/configs").key(SECRET).send();

    expect_forwarded(&first);
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "1");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "0");
    expect_portkey_error(&second, 429, "rate_limited");
    let wait = retry_after(&second);
    assert!(
        (3500..=3600).contains(&wait),
        "Retry-After {wait}, expected ≈ 3600"
    );
    assert_eq!(header(&second, "x-ratelimit-limit-requests"), "1");
    assert_eq!(header(&second, "x-ratelimit-remaining-requests"), "0");
    let reset = parse_reset(header(&second, "x-ratelimit-reset-requests"));
    assert!(
        reset > Duration::from_secs(3500) && reset <= Duration::from_secs(3600),
        "reset {reset:?}"
    );
    assert_eq!(up.admin.count(), 1);
    assert_eq!(up.completions.count(), 0);
}

#[test]
fn a_zero_token_limit_is_refused_at_load_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let entry = format!(
        "  - id: key_tokens\n    name: Tokens\n    type: workspace-service\n    \
         workspace_id: ws_research\n    sha256: \"{}\"\n    \
         scopes: [\"completions.write\"]\n    rate_limits:\n      \
         - {{ type: tokens, unit: rpm, value: 0 }}\n",
        digest_hex(b"sk-test-tokens")
    );
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .keys(&keys_yaml_with(&entry))
        .write_files(dir.path(), free_port_pair());

    let run = run_scopegate(dir.path(), &["check", "--config", config.to_str().unwrap()]);

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("value"), "{run:?}");
    assert!(run.stderr.contains("keys.yaml:"), "{run:?}");
}
