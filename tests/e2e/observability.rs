//! The reference on metrics, health and logs in detail: exact metric deltas, label hygiene, the exposition
//! format, and the JSON access log. `metrics.rs` has the smoke tests
//! (health, readiness, "a decision is counted at all").

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::Response;
use super::fixtures::*;
use super::harness::{
    expect_forwarded, expect_openai_error, expect_portkey_error, poll_until, Proxy, Upstreams,
};
use super::upstream::closed_port_url;

/// How long counting and logging may lag behind the response.
const SETTLE: Duration = Duration::from_secs(5);

// ----- reading /metrics ---------------------------------------------------

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape of `/metrics`, parsed.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    #[track_caller]
    fn take(proxy: &Proxy) -> Scrape {
        let resp = proxy.metrics_get("/metrics");
        assert_eq!(resp.status, 200, "/metrics: {resp:?}");
        let text = resp.text();
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// Samples of `name` whose labels include all of `labels`.
    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the matching samples (0 when there is none).
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, mut rest) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut val = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => val.push(chars.next()?.1),
                '"' => break i,
                c => val.push(c),
            }
        };
        labels.insert(key.trim_start_matches(',').to_string(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A counter and the amount it must rise by.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Waits until every counter has risen by at least its amount since
/// `before`, then asserts each rose by exactly that; returns the last scrape.
#[track_caller]
fn assert_deltas(proxy: &Proxy, before: &Scrape, expected: &[Expected<'_>]) -> Scrape {
    let delta = |now: &Scrape, (name, labels, _): &Expected<'_>| {
        now.sum(name, labels) - before.sum(name, labels)
    };
    let mut now = Scrape::take(proxy);
    poll_until(SETTLE, || {
        now = Scrape::take(proxy);
        expected.iter().all(|e| delta(&now, e) >= e.2)
    });
    let wrong: Vec<String> = expected
        .iter()
        .filter(|e| delta(&now, e) != e.2)
        .map(|e| {
            format!(
                "{}{:?}: rose by {}, expected {}",
                e.0,
                e.1,
                delta(&now, e),
                e.2
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "wrong deltas:\n{}\n--- before ---\n{}\n--- after ---\n{}",
        wrong.join("\n"),
        before.text,
        now.text
    );
    now
}

// ----- counters -----------------------------------------------------------

const CHAT_ROUTE: &str = "/v1/chat/completions";

#[test]
fn request_counters_rise_by_exactly_the_requests_made() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let before = Scrape::take(&proxy);

    for _ in 0..3 {
        expect_openai_error(&proxy.chat(ADMIN), 403, "admin_key_not_allowed");
    }
    expect_forwarded(&proxy.chat(BOT));
    // The client names its workspace by slug: the label is the canonical id.
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions?workspace_id=research")
            .key(BOT)
            .json(CHAT)
            .send(),
    );
    expect_openai_error(
        &proxy.get("/v1/chat/completions").key(BOT).send(),
        405,
        "method_not_allowed",
    );

    let after = assert_deltas(
        &proxy,
        &before,
        &[
            (
                "scopegate_requests_total",
                &[
                    ("plane", "data"),
                    ("route", CHAT_ROUTE),
                    ("decision", "deny"),
                    ("code", "admin_key_not_allowed"),
                ],
                3.0,
            ),
            (
                "scopegate_requests_total",
                &[
                    ("plane", "data"),
                    ("route", CHAT_ROUTE),
                    ("decision", "allow"),
                    ("code", "ok"),
                ],
                2.0,
            ),
            // A 405 is labelled with the route pattern it matched.
            (
                "scopegate_requests_total",
                &[
                    ("route", CHAT_ROUTE),
                    ("decision", "deny"),
                    ("code", "method_not_allowed"),
                ],
                1.0,
            ),
            (
                "scopegate_workspace_requests_total",
                &[("workspace", "ws_research"), ("decision", "allow")],
                2.0,
            ),
            (
                "scopegate_request_duration_seconds_count",
                &[("plane", "data")],
                6.0,
            ),
            (
                "scopegate_request_duration_seconds_count",
                &[("plane", "control")],
                0.0,
            ),
            (
                "scopegate_upstream_responses_total",
                &[("upstream", "completions"), ("status_class", "2xx")],
                2.0,
            ),
            ("scopegate_upstream_responses_total", &[], 2.0),
        ],
    );
    assert_eq!(
        after
            .matching(
                "scopegate_workspace_requests_total",
                &[("workspace", "research")]
            )
            .count(),
        0,
        "the slug became a label:\n{}",
        after.text
    );
    assert_eq!(up.completions.count(), 2);
}

#[test]
fn control_plane_requests_are_counted_with_their_pattern() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let before = Scrape::take(&proxy);

    expect_forwarded(&proxy.get("/v1/admin/workspaces/prod").key(ADMIN).send());
    expect_portkey_error(
        &proxy.get("/v1/admin/workspaces/ws_other").key(ADMIN).send(),
        404,
        "workspace_not_found",
    );

    assert_deltas(
        &proxy,
        &before,
        &[
            (
                "scopegate_requests_total",
                &[
                    ("plane", "control"),
                    ("route", "/v1/admin/workspaces/{workspace_id}"),
                    ("decision", "allow"),
                    ("code", "ok"),
                ],
                1.0,
            ),
            (
                "scopegate_requests_total",
                &[
                    ("plane", "control"),
                    ("route", "/v1/admin/workspaces/{workspace_id}"),
                    ("decision", "deny"),
                    ("code", "workspace_not_found"),
                ],
                1.0,
            ),
            (
                "scopegate_workspace_requests_total",
                &[("workspace", "ws_prod"), ("decision", "allow")],
                1.0,
            ),
            (
                "scopegate_request_duration_seconds_count",
                &[("plane", "control")],
                2.0,
            ),
            (
                "scopegate_upstream_responses_total",
                &[("upstream", "admin"), ("status_class", "2xx")],
                1.0,
            ),
        ],
    );
}

#[test]
fn unmatched_paths_are_labelled_unmatched_never_raw() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    let before = Scrape::take(&proxy);

    expect_openai_error(
        &proxy.get("/v1/zzraw-unmatched-e2e").key(BOT).send(),
        404,
        "route_not_found",
    );
    expect_openai_error(
        &proxy.get("/v1/zzraw-nokey-e2e/42").send(),
        401,
        "missing_api_key",
    );
    expect_openai_error(
        &proxy.get("/v1/zzraw-bad%2Fpath-e2e").key(BOT).send(),
        400,
        "invalid_path",
    );

    let after = assert_deltas(
        &proxy,
        &before,
        &[
            (
                "scopegate_requests_total",
                &[
                    ("route", "unmatched"),
                    ("decision", "deny"),
                    ("code", "route_not_found"),
                ],
                1.0,
            ),
            (
                "scopegate_requests_total",
                &[("route", "unmatched"), ("code", "missing_api_key")],
                1.0,
            ),
            ("scopegate_requests_total", &[("decision", "deny")], 3.0),
        ],
    );
    let leaked: Vec<&str> = after.text.lines().filter(|l| l.contains("zzraw")).collect();
    assert!(leaked.is_empty(), "raw paths in labels: {leaked:#?}");
}

#[test]
fn upstream_connect_errors_are_counted() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .completions_url(&closed_port_url())
        .start();
    let before = Scrape::take(&proxy);

    expect_openai_error(&proxy.chat(BOT), 502, "upstream_unavailable");

    assert_deltas(
        &proxy,
        &before,
        &[
            (
                "scopegate_upstream_errors_total",
                &[("upstream", "completions"), ("kind", "connect")],
                1.0,
            ),
            ("scopegate_upstream_errors_total", &[], 1.0),
            (
                "scopegate_requests_total",
                &[("route", CHAT_ROUTE), ("code", "upstream_unavailable")],
                1.0,
            ),
        ],
    );
}

#[test]
fn upstream_timeouts_are_counted() {
    let up = Upstreams::start();
    up.completions.hang();
    let proxy = Proxy::builder(&up)
        .completions_yaml("read_timeout_ms: 300")
        .start();
    let before = Scrape::take(&proxy);

    expect_openai_error(&proxy.chat(BOT), 504, "upstream_timeout");

    assert_deltas(
        &proxy,
        &before,
        &[
            (
                "scopegate_upstream_errors_total",
                &[("upstream", "completions"), ("kind", "timeout")],
                1.0,
            ),
            ("scopegate_upstream_errors_total", &[], 1.0),
            (
                "scopegate_requests_total",
                &[("route", CHAT_ROUTE), ("code", "upstream_timeout")],
                1.0,
            ),
        ],
    );
}

// ----- gauges -------------------------------------------------------------

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn key_gauges_reload_status_build_info_and_process_metrics() {
    let keys = keys_yaml_with(&limited_key_entry());
    let doc: serde_yaml::Value = serde_yaml::from_str(&keys).unwrap();
    let mut by_type: BTreeMap<String, f64> = BTreeMap::new();
    for key in doc["keys"].as_sequence().unwrap() {
        *by_type
            .entry(key["type"].as_str().unwrap().to_string())
            .or_default() += 1.0;
    }
    assert_eq!(by_type.len(), 3, "the fixture holds all three types");
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).keys(&keys).start();

    let scrape = Scrape::take(&proxy);

    // Every key counts, revoked, exhausted and expired ones too.
    for (key_type, count) in &by_type {
        assert_eq!(
            scrape.sum("scopegate_keys", &[("type", key_type)]),
            *count,
            "scopegate_keys{{type={key_type:?}}} in:\n{}",
            scrape.text
        );
    }
    assert_eq!(
        scrape.matching("scopegate_keys", &[]).count(),
        3,
        "{}",
        scrape.text
    );
    assert!(scrape.sum("scopegate_keys_reloads_total", &[("result", "success")]) >= 1.0);
    assert_eq!(
        scrape.sum("scopegate_keys_reloads_total", &[("result", "failure")]),
        0.0
    );
    let last = scrape.sum("scopegate_keys_last_reload_success_timestamp_seconds", &[]);
    assert!(
        (unix_now() - last).abs() < 60.0,
        "last reload success at {last}, now {}",
        unix_now()
    );
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        scrape.sum("scopegate_build_info", &[("version", version)]),
        1.0,
        "{}",
        scrape.text
    );
    assert_eq!(scrape.matching("scopegate_build_info", &[]).count(), 1);
    assert!(scrape.sum("process_resident_memory_bytes", &[]) > 0.0);
    assert!(scrape.matching("process_start_time_seconds", &[]).count() == 1);
}

#[test]
fn duration_histogram_buckets_span_100us_to_60s() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    expect_forwarded(&proxy.chat(BOT));
    let mut scrape = Scrape::take(&proxy);
    poll_until(SETTLE, || {
        scrape = Scrape::take(&proxy);
        scrape.sum(
            "scopegate_request_duration_seconds_count",
            &[("plane", "data")],
        ) >= 1.0
    });

    let buckets: Vec<&Sample> = scrape
        .matching(
            "scopegate_request_duration_seconds_bucket",
            &[("plane", "data")],
        )
        .collect();
    let bounds: Vec<f64> = buckets
        .iter()
        .map(|s| {
            let le = &s.labels["le"];
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or_else(|_| panic!("le {le:?}"))
            }
        })
        .collect();
    let finite: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
    assert_eq!(finite.first(), Some(&0.0001), "bounds {bounds:?}");
    assert_eq!(finite.last(), Some(&60.0), "bounds {bounds:?}");
    assert!(finite.windows(2).all(|w| w[0] < w[1]), "bounds {bounds:?}");
    assert!(
        bounds.contains(&f64::INFINITY),
        "no +Inf bucket: {bounds:?}"
    );
    assert!(
        scrape.text.contains("le=\"0.0001\"") && scrape.text.contains("le=\"60\""),
        "bounds not written as le=\"0.0001\" … le=\"60\""
    );
    // Cumulative, ending at the count.
    let values: Vec<f64> = buckets.iter().map(|s| s.value).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    assert_eq!(
        values.last().copied(),
        Some(scrape.sum(
            "scopegate_request_duration_seconds_count",
            &[("plane", "data")]
        ))
    );
}

// ----- the exposition -----------------------------------------------------

#[test]
fn exposition_passes_promtool_check_metrics() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);
    // Something in every family that has labels.
    expect_forwarded(&proxy.chat(BOT));
    expect_forwarded(&proxy.get("/v1/configs").key(BOT).send());
    expect_openai_error(&proxy.chat(ADMIN), 403, "admin_key_not_allowed");
    expect_openai_error(
        &proxy.get("/v1/nowhere").key(BOT).send(),
        404,
        "route_not_found",
    );
    poll_until(SETTLE, || {
        Scrape::take(&proxy).sum("scopegate_requests_total", &[]) >= 4.0
    });
    let resp = proxy.metrics_get("/metrics");
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content-type {content_type:?}"
    );

    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("NOTE: promtool is not on PATH; skipping `promtool check metrics`");
            return;
        }
        Err(e) => panic!("spawn promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&resp.body)
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        resp.text()
    );
}

#[test]
fn unknown_paths_on_the_metrics_listener_are_404() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    for path in ["/", "/nope", "/metrics/extra", "/v1/chat/completions"] {
        assert_eq!(proxy.metrics_get(path).status, 404, "GET {path}");
    }
    assert_eq!(proxy.metrics_get("/healthz").status, 200);
    assert_eq!(proxy.metrics_get("/readyz").status, 200);
}

// ----- the access log -----------------------------------------------------

/// The JSON log lines with target `scopegate::access`.
fn access_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "scopegate::access")
        .collect()
}

/// A field of a tracing-subscriber JSON line, flattened or under `fields`.
fn field<'a>(line: &'a Value, name: &str) -> &'a Value {
    match &line[name] {
        Value::Null => &line["fields"][name],
        v => v,
    }
}

/// Waits until at least `n` access lines were written; returns them all.
fn wait_for_access_lines(proxy: &Proxy, n: usize) -> Vec<Value> {
    poll_until(SETTLE, || access_lines(&proxy.logs()).len() >= n);
    access_lines(&proxy.logs())
}

/// What one request's access line must say; `None`: not checked.
struct Expect {
    resp: Response,
    method: &'static str,
    path: &'static str,
    code: &'static str,
    route: Option<&'static str>,
    key_id: Option<&'static str>,
    workspace: Option<&'static str>,
    upstream: Option<&'static str>,
}

impl Expect {
    fn new(resp: Response, method: &'static str, path: &'static str, code: &'static str) -> Self {
        Expect {
            resp,
            method,
            path,
            code,
            route: None,
            key_id: None,
            workspace: None,
            upstream: None,
        }
    }

    fn route(mut self, route: &'static str) -> Self {
        self.route = Some(route);
        self
    }

    fn key_id(mut self, key_id: &'static str) -> Self {
        self.key_id = Some(key_id);
        self
    }

    fn workspace(mut self, workspace: &'static str) -> Self {
        self.workspace = Some(workspace);
        self
    }

    fn upstream(mut self, upstream: &'static str) -> Self {
        self.upstream = Some(upstream);
        self
    }
}

const QUERY_SECRET: &str = "sk-query-secret-e2e-5d1c";
const CHAT_PATH: &str = "/v1/chat/completions";

/// `path` with a query carrying a secret-looking value.
fn with_query(path: &str) -> String {
    format!("{path}?api_key={QUERY_SECRET}&x=1")
}

/// Sends one request of each kind; returns what each access line must say.
fn requests_of_every_kind(proxy: &Proxy) -> Vec<Expect> {
    let mut cases = Vec::new();

    let resp = proxy
        .post(&with_query(CHAT_PATH))
        .key(BOT)
        .json(CHAT)
        .send();
    expect_forwarded(&resp);
    cases.push(
        Expect::new(resp, "POST", CHAT_PATH, "ok")
            .route(CHAT_PATH)
            .key_id("key_bot")
            .workspace("ws_research")
            .upstream("completions"),
    );

    let resp = proxy
        .get(&with_query("/v1/admin/workspaces"))
        .key(ADMIN)
        .send();
    expect_forwarded(&resp);
    cases.push(
        Expect::new(resp, "GET", "/v1/admin/workspaces", "ok")
            .route("/v1/admin/workspaces")
            .key_id("key_admin")
            .upstream("admin"),
    );

    let resp = proxy
        .get("/v1/models")
        .bearer(ALICE)
        .header("x-request-id", "e2e-access-log.3")
        .send();
    expect_forwarded(&resp);
    assert_eq!(resp.request_id(), "e2e-access-log.3");
    cases.push(
        Expect::new(resp, "GET", "/v1/models", "ok")
            .route("/v1/models")
            .key_id("key_alice")
            .workspace("ws_research")
            .upstream("completions"),
    );

    let resp = proxy.post(&with_query(CHAT_PATH)).json(CHAT).send();
    expect_openai_error(&resp, 401, "missing_api_key");
    cases.push(Expect::new(resp, "POST", CHAT_PATH, "missing_api_key"));

    let resp = proxy.get("/v1/configs").key(UNKNOWN).send();
    expect_portkey_error(&resp, 401, "invalid_api_key");
    cases.push(Expect::new(resp, "GET", "/v1/configs", "invalid_api_key"));

    let resp = proxy.post(CHAT_PATH).key(ADMIN).json(CHAT).send();
    expect_openai_error(&resp, 403, "admin_key_not_allowed");
    cases.push(
        Expect::new(resp, "POST", CHAT_PATH, "admin_key_not_allowed")
            .route(CHAT_PATH)
            .key_id("key_admin"),
    );

    let resp = proxy.get(&with_query("/v1/nowhere")).key(BOT).send();
    expect_openai_error(&resp, 404, "route_not_found");
    cases.push(
        Expect::new(resp, "GET", "/v1/nowhere", "route_not_found")
            .route("unmatched")
            .key_id("key_bot"),
    );

    let resp = proxy.get(CHAT_PATH).key(BOT).send();
    expect_openai_error(&resp, 405, "method_not_allowed");
    cases.push(
        Expect::new(resp, "GET", CHAT_PATH, "method_not_allowed")
            .route(CHAT_PATH)
            .key_id("key_bot"),
    );

    let resp = proxy.get("/v1/configs?workspace_id=prod").key(BOT).send();
    expect_portkey_error(&resp, 403, "workspace_mismatch");
    cases.push(
        Expect::new(resp, "GET", "/v1/configs", "workspace_mismatch")
            .route("/v1/configs")
            .key_id("key_bot"),
    );

    let resp = proxy.get(&with_query("/v1/files/a%2Fb")).key(BOT).send();
    expect_openai_error(&resp, 400, "invalid_path");
    cases.push(Expect::new(resp, "GET", "/v1/files/a%2Fb", "invalid_path"));

    cases
}

#[test]
fn one_access_line_per_request_without_query_or_secrets() {
    let up = Upstreams::start();
    let proxy = Proxy::start(&up);

    let cases = requests_of_every_kind(&proxy);

    let n = cases.len();
    let lines = wait_for_access_lines(&proxy, n);
    assert_eq!(
        lines.len(),
        n,
        "expected {n} access lines:\n{}",
        proxy.logs()
    );

    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for line in &lines {
        let id = field(line, "request_id").as_str().unwrap_or_else(|| {
            panic!("access line without request_id: {line}");
        });
        assert!(
            by_id.insert(id.to_string(), line).is_none(),
            "request id {id} logged twice"
        );
    }
    let sent: BTreeSet<&str> = cases.iter().map(|c| c.resp.request_id()).collect();
    let logged: BTreeSet<&str> = by_id.keys().map(String::as_str).collect();
    assert_eq!(logged, sent, "access lines do not match the responses");

    for c in &cases {
        let line = by_id[c.resp.request_id()];
        let s = |name: &str| field(line, name).as_str().map(str::to_string);
        assert_eq!(s("method").as_deref(), Some(c.method), "{line}");
        assert_eq!(s("path").as_deref(), Some(c.path), "{line}");
        assert_eq!(
            field(line, "status").as_u64(),
            Some(u64::from(c.resp.status)),
            "{line}"
        );
        assert_eq!(s("code").as_deref(), Some(c.code), "{line}");
        let decision = if c.code == "ok" { "allow" } else { "deny" };
        assert_eq!(s("decision").as_deref(), Some(decision), "{line}");
        for name in ["route", "key_id", "workspace", "upstream"] {
            assert!(!field(line, name).is_null(), "no {name} in {line}");
        }
        if let Some(route) = c.route {
            assert_eq!(s("route").as_deref(), Some(route), "{line}");
        }
        if let Some(key_id) = c.key_id {
            assert_eq!(s("key_id").as_deref(), Some(key_id), "{line}");
        }
        if let Some(workspace) = c.workspace {
            assert_eq!(s("workspace").as_deref(), Some(workspace), "{line}");
        }
        match c.upstream {
            Some(upstream) => assert_eq!(s("upstream").as_deref(), Some(upstream), "{line}"),
            None => assert!(
                !matches!(s("upstream").as_deref(), Some("completions" | "admin")),
                "a refused request names an upstream: {line}"
            ),
        }
        let duration = field(line, "duration_ms").as_f64();
        assert!(
            duration.is_some_and(|d| (0.0..60_000.0).contains(&d)),
            "duration_ms in {line}"
        );
    }

    let logs = proxy.logs();
    for secret in [QUERY_SECRET, BOT, ADMIN, ALICE, UNKNOWN] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

/// Not only the access line: pingora's own "Fail to proxy" error line
/// prints `ProxyHttp::request_summary`, which by default holds the full URI.
#[test]
fn query_string_stays_out_of_the_logs_when_the_upstream_fails() {
    let up = Upstreams::start();
    up.admin.hang();
    let proxy = Proxy::builder(&up)
        .completions_url(&closed_port_url())
        .admin_yaml("read_timeout_ms: 300")
        .start();

    let refused = proxy
        .post(&with_query(CHAT_PATH))
        .key(BOT)
        .json(CHAT)
        .send();
    let timed_out = proxy.get(&with_query("/v1/configs")).key(BOT).send();

    expect_openai_error(&refused, 502, "upstream_unavailable");
    expect_portkey_error(&timed_out, 504, "upstream_timeout");
    let lines = wait_for_access_lines(&proxy, 2);
    assert_eq!(lines.len(), 2, "{}", proxy.logs());
    let logs = proxy.logs();
    let leaked: Vec<&str> = logs.lines().filter(|l| l.contains(QUERY_SECRET)).collect();
    assert!(
        leaked.is_empty(),
        "the query string reached the logs:\n{}",
        leaked.join("\n")
    );
}

// ----- secrets ------------------------------------------------------------

#[test]
fn no_secret_or_authorization_value_in_metrics_or_logs() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .keys(&keys_yaml_with(&limited_key_entry()))
        .start();
    let secrets = [
        ADMIN,
        OTHER_ADMIN,
        BOT,
        ALICE,
        VK_LISTER,
        LOGGER,
        LOG_WRITER,
        EXPIRED,
        ROTATED_NEW,
        ROTATED_OLD,
        ROTATING_NEW,
        ROTATING_OLD,
        REVOKED,
        EXHAUSTED,
        LIMITED,
        UNKNOWN,
    ];
    let provider = "Bearer sk-provider-e2e-9a7b";
    let basic = "Basic c2stdGVzdC1ib3Q6";

    let mut sent = 0;
    for secret in secrets {
        let _ = proxy.chat(secret);
        let _ = proxy.get("/v1/configs").bearer(secret).send();
        sent += 2;
    }
    expect_forwarded(
        &proxy
            .post("/v1/chat/completions")
            .key(BOT)
            .header("authorization", provider)
            .json(CHAT)
            .send(),
    );
    let _ = proxy
        .post("/v1/chat/completions")
        .header("authorization", basic)
        .json(CHAT)
        .send();
    let _ = proxy.get("/v1/models").key(&format!("{BOT}x")).send();
    sent += 3;
    wait_for_access_lines(&proxy, sent);

    let metrics = Scrape::take(&proxy).text;
    let logs = proxy.logs();
    let mut needles: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    needles.extend([
        provider.into(),
        "sk-provider-e2e-9a7b".into(),
        basic.into(),
        "c2stdGVzdC1ib3Q6".into(),
    ]);
    for needle in &needles {
        assert!(!metrics.contains(needle.as_str()), "{needle} in /metrics");
        assert!(!logs.contains(needle.as_str()), "{needle} in the logs");
    }
}
