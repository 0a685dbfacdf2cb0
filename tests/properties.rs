//! Properties of the pure decision (`policy::decide`), checked with
//! proptest over generated requests against a fixed world of keys and
//! routes:
//!
//! - an admin key is never allowed on the data plane;
//! - a workspace key is only ever allowed in its own workspace, and an admin
//!   key only in a workspace of its own organisation;
//! - only an allowed verdict can reach an upstream, and it always carries a
//!   route, a key and the plane of that route;
//! - a path the canonical check accepts is already normal by an independent
//!   RFC 3986 normaliser, and routes as its normal form does.
//!
//! Case counts are kept small (`CASES`) so the file runs in a few seconds in
//! a debug build.

use std::sync::LazyLock;

use http::Method;
use proptest::prelude::*;
use proptest::test_runner::Config;

use scopegate::decision::decide::{decide, Body, Outcome, RequestFacts};
use scopegate::decision::request::{non_canonical_reason, Presented};
use scopegate::decision::routes::{Plane, RouteSpec, RouteTable};
use scopegate::identity::keys::{build_snapshot, digest_hex, KeysDocument, Snapshot};
use scopegate::identity::scopes::KeyType;

const CASES: u32 = 512;
const NOW: i64 = 1_800_000_000_000;
const MAX_BODY: usize = 4096;

struct World {
    table: RouteTable,
    snap: Snapshot,
}

/// Key id → (secret, the canonical workspace id a workspace key is bound
/// to, the organisation id).
const KEYS: &[(&str, &str, Option<&str>, &str)] = &[
    ("admin_a", "s-admin-a", None, "org_a"),
    ("admin_b", "s-admin-b", None, "org_b"),
    ("admin_narrow", "s-admin-narrow", None, "org_a"),
    ("svc_a1", "s-svc-a1", Some("ws_a1"), "org_a"),
    ("svc_a2", "s-svc-a2", Some("ws_a2"), "org_a"),
    ("svc_b1", "s-svc-b1", Some("ws_b1"), "org_b"),
    ("user_a1", "s-user-a1", Some("ws_a1"), "org_a"),
    ("svc_spent", "s-svc-spent", Some("ws_a2"), "org_a"),
    ("svc_revoked", "s-svc-revoked", Some("ws_a1"), "org_a"),
];

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let h = |s: &str| digest_hex(s.as_bytes());
    let yaml = format!(
        r#"
organisations:
  - id: org_a
    workspaces:
      - id: ws_a1
        slug: a1
      - id: ws_a2
  - id: org_b
    workspaces:
      - id: ws_b1
        slug: b1
custom_scopes: ["x.read"]
keys:
  - {{ id: admin_a, type: organisation-service, organisation_id: org_a, sha256: "{}", scopes: ["*"] }}
  - {{ id: admin_b, type: organisation-service, organisation_id: org_b, sha256: "{}", scopes: ["*"] }}
  - {{ id: admin_narrow, type: organisation-service, organisation_id: org_a, sha256: "{}", scopes: ["configs.*", "logs.view", "virtual_keys.list"] }}
  - {{ id: svc_a1, type: workspace-service, workspace_id: a1, sha256: "{}", scopes: ["*"] }}
  - {{ id: svc_a2, type: workspace-service, workspace_id: ws_a2, sha256: "{}", scopes: ["*"] }}
  - {{ id: svc_b1, type: workspace-service, workspace_id: b1, sha256: "{}", scopes: ["*"] }}
  - {{ id: user_a1, type: workspace-user, workspace_id: ws_a1, user_id: u1, sha256: "{}", scopes: ["*"] }}
  - {{ id: svc_spent, type: workspace-service, workspace_id: ws_a2, sha256: "{}", status: exhausted, scopes: ["*"] }}
  - {{ id: svc_revoked, type: workspace-service, workspace_id: ws_a1, sha256: "{}", status: revoked, scopes: ["*"] }}
"#,
        h(KEYS[0].1),
        h(KEYS[1].1),
        h(KEYS[2].1),
        h(KEYS[3].1),
        h(KEYS[4].1),
        h(KEYS[5].1),
        h(KEYS[6].1),
        h(KEYS[7].1),
        h(KEYS[8].1),
    );
    let route = |methods: &[&str], path: &str, plane: Plane, scope: &str| RouteSpec {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
        plane,
        scopes: vec![scope.into()],
        scopes_all: vec![],
        upgrade: None,
        meter: None,
    };
    let extra = vec![
        route(&["GET"], "/v1/x/{id}", Plane::Control, "x.read"),
        // A data-plane route an admin key holds the scope for.
        route(
            &["GET", "POST"],
            "/w/{workspace_id}/stats",
            Plane::Data,
            "x.read",
        ),
        route(
            &["POST", "PUT"],
            "/w/{workspace_id}/chat",
            Plane::Data,
            "completions.write",
        ),
        route(
            &["POST", "PATCH"],
            "/c/{workspace_id}/cfg",
            Plane::Control,
            "configs.update",
        ),
    ];
    let table = RouteTable::build(&extra, true).expect("routes build");
    let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("keys yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("keys valid");
    World { table, snap }
});

// ---------------------------------------------------------------------------
// Generators.

/// Workspace names a request may use: ids, slugs, unknown, odd.
const WS_NAMES: &[&str] = &["ws_a1", "a1", "ws_a2", "ws_b1", "b1", "ws_zz", "", "WS_A1"];

/// Segments paths are made of: literals of the route table, workspace names,
/// and the shapes the canonical rule is about.
const SEGMENTS: &[&str] = &[
    "v1",
    "chat",
    "completions",
    "files",
    "admin",
    "workspaces",
    "users",
    "configs",
    "x",
    "logs",
    "exports",
    "models",
    "w",
    "c",
    "stats",
    "cfg",
    "api-keys",
    "id1",
    "ws_a1",
    "a1",
    "ws_b1",
    ".",
    "..",
    "",
    "%2e",
    "%2E",
    "%41",
    "%7e",
    "%c3%a9",
    "%C3%A9",
    "%40",
    "a%20b",
    "%2F",
    "%5c",
    "\\",
    "%zz",
    "%4",
    "~",
    ";",
    "..;",
    "\u{1}",
    "\u{e9}",
    "%00",
];

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(SEGMENTS).prop_map(str::to_string),
        1 => prop::collection::vec(prop::sample::select(&['a', 'z', '%', '.', '/', '2', 'e', 'F', ';'][..]), 0..4)
            .prop_map(|v| v.into_iter().collect::<String>()),
    ]
}

/// A path: often a route pattern with its parameters filled in, otherwise
/// random segments.
fn path() -> impl Strategy<Value = String> {
    let patterns: Vec<String> = {
        let mut v: Vec<String> = WORLD
            .table
            .routes()
            .iter()
            .map(|r| r.pattern.to_string())
            .collect();
        v.dedup();
        v
    };
    let filled = (
        prop::sample::select(patterns),
        prop::collection::vec(prop_oneof![prop::sample::select(WS_NAMES), Just("id1")], 3),
    )
        .prop_map(|(pattern, fills)| {
            let mut n = 0;
            pattern
                .split('/')
                .map(|seg| {
                    if seg.starts_with('{') {
                        n += 1;
                        fills[(n - 1) % fills.len()].to_string()
                    } else {
                        seg.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("/")
        });
    let random =
        prop::collection::vec(segment(), 1..6).prop_map(|segs| format!("/{}", segs.join("/")));
    prop_oneof![2 => filled, 1 => random]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let pair = prop_oneof![
        prop::sample::select(WS_NAMES).prop_map(|w| format!("workspace_id={w}")),
        prop::sample::select(WS_NAMES).prop_map(|w| format!("workspace%5Fid={w}")),
        Just("limit=10".to_string()),
    ];
    prop::option::of(prop::collection::vec(pair, 1..3).prop_map(|v| v.join("&")))
}

/// Which key header: one of the world's keys, an unknown one, none, two.
#[derive(Clone, Debug)]
enum KeyChoice {
    Known(usize),
    Unknown,
    Missing,
    Repeated,
}

fn key_choice() -> impl Strategy<Value = KeyChoice> {
    prop_oneof![
        8 => (0..KEYS.len()).prop_map(KeyChoice::Known),
        1 => Just(KeyChoice::Unknown),
        1 => Just(KeyChoice::Missing),
        1 => Just(KeyChoice::Repeated),
    ]
}

#[derive(Clone, Debug)]
enum BodyChoice {
    Empty,
    Unread(Option<u64>),
    Read(String),
    TooLarge,
}

fn body() -> impl Strategy<Value = BodyChoice> {
    prop_oneof![
        Just(BodyChoice::Empty),
        prop::option::of(prop_oneof![Just(0u64), Just(10), Just(1 << 20)])
            .prop_map(BodyChoice::Unread),
        prop::sample::select(WS_NAMES)
            .prop_map(|w| BodyChoice::Read(format!(r#"{{"workspace_id":"{w}"}}"#))),
        Just(BodyChoice::Read(r#"{"name":"x"}"#.into())),
        Just(BodyChoice::Read(r#"{"workspace_id":1}"#.into())),
        Just(BodyChoice::Read("not json".into())),
        Just(BodyChoice::TooLarge),
    ]
}

#[derive(Clone, Debug)]
struct Request {
    method: Method,
    path: String,
    query: Option<String>,
    key: KeyChoice,
    json: bool,
    body: BodyChoice,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ]),
        path(),
        query(),
        key_choice(),
        any::<bool>(),
        body(),
    )
        .prop_map(|(method, path, query, key, json, body)| Request {
            method,
            path,
            query,
            key,
            json,
            body,
        })
}

/// What the proxy does: decide, and if the decision asks for the body,
/// decide again with it read (or too large).
fn run(
    r: &Request,
) -> (
    scopegate::decision::decide::Verdict,
    scopegate::decision::decide::Verdict,
) {
    let w = &*WORLD;
    let key = match &r.key {
        KeyChoice::Known(i) => Presented::Secret(KEYS[*i].1.as_bytes()),
        KeyChoice::Unknown => Presented::Secret(b"s-nobody"),
        KeyChoice::Missing => Presented::Missing,
        KeyChoice::Repeated => Presented::Repeated,
    };
    let body = match &r.body {
        BodyChoice::Empty => Body::Empty,
        BodyChoice::Unread(n) => Body::Unread { declared_len: *n },
        BodyChoice::Read(b) => Body::Read(b.as_bytes()),
        BodyChoice::TooLarge => Body::TooLarge,
    };
    let content_type: Option<&[u8]> = if r.json {
        Some(b"application/json")
    } else {
        Some(b"text/plain")
    };
    let mut facts = RequestFacts {
        method: &r.method,
        path: &r.path,
        query: r.query.as_deref(),
        key,
        content_type,
        content_type_repeated: false,
        bad_content_length: false,
        upgrade: scopegate::decision::request::Upgrade::None,
        body,
        now: NOW,
        max_body: MAX_BODY,
        max_data_body: MAX_BODY,
        used_up: &scopegate::decision::decide::nothing_used,
    };
    let first = decide(&w.table, &w.snap, &facts);
    if first.outcome != Outcome::ReadBody {
        return (first.clone(), first);
    }
    // The proxy reads at most MAX_BODY bytes: the generated body stands in
    // for what was read.
    let read = match &r.body {
        BodyChoice::Read(b) => Body::Read(b.as_bytes()),
        BodyChoice::TooLarge => Body::TooLarge,
        BodyChoice::Unread(Some(n)) if *n as usize > MAX_BODY => Body::TooLarge,
        _ => Body::Read(br#"{"workspace_id":"ws_a1"}"#),
    };
    facts.body = read;
    let second = decide(&w.table, &w.snap, &facts);
    (first, second)
}

fn canonical_ws(snap: &Snapshot, id: &str) -> String {
    let idx = snap.workspace_by_name(id).expect("known workspace");
    snap.workspace(idx).id.to_string()
}

proptest! {
    #![proptest_config(Config { cases: CASES, ..Config::default() })]

    #[test]
    fn admin_keys_are_never_allowed_on_the_data_plane(r in request()) {
        let w = &*WORLD;
        let (_, v) = run(&r);
        if v.outcome == Outcome::Allow {
            let key = w.snap.key(v.key.expect("allowed verdict has a key"));
            let route = w.table.route(v.route.expect("allowed verdict has a route"));
            prop_assert!(
                !(key.key_type.is_admin() && route.plane == Plane::Data),
                "admin key {} allowed on data-plane {} {}", key.id, r.method, r.path
            );
        }
    }

    #[test]
    fn keys_act_only_in_their_own_workspace_or_organisation(r in request()) {
        let w = &*WORLD;
        let (_, v) = run(&r);
        if v.outcome != Outcome::Allow {
            return Ok(());
        }
        let KeyChoice::Known(i) = r.key else {
            return Err(TestCaseError::fail(format!("allowed without a known key: {r:?}")));
        };
        let (id, _, own_ws, own_org) = KEYS[i];
        let key = w.snap.key(v.key.expect("allowed verdict has a key"));
        prop_assert_eq!(&*key.id, id);
        match own_ws {
            Some(ws) => {
                prop_assert!(key.key_type != KeyType::OrganisationService);
                let acted = v.workspace.map(|x| w.snap.workspace(x).id.to_string());
                prop_assert_eq!(acted, Some(canonical_ws(&w.snap, ws)));
            }
            None => {
                if let Some(x) = v.workspace {
                    let org = w.snap.workspace(x).organisation;
                    prop_assert_eq!(&*w.snap.organisation(org).id, own_org);
                }
            }
        }
    }

    #[test]
    fn only_an_allowed_verdict_can_reach_an_upstream(r in request()) {
        let w = &*WORLD;
        let (first, v) = run(&r);
        if first.outcome == Outcome::ReadBody {
            // Only inspected control-plane writes ask for the body.
            let route = w.table.route(first.route.expect("ReadBody has a route"));
            prop_assert_eq!(route.plane, Plane::Control);
            prop_assert!(matches!(r.method, Method::POST | Method::PUT | Method::PATCH));
            prop_assert!(matches!(r.body, BodyChoice::Unread(_)));
        }
        // After the body is read the decision is final: the proxy refuses
        // anything but Allow, and forwards to `verdict.plane`.
        prop_assert!(v.outcome != Outcome::ReadBody, "ReadBody twice for {r:?}");
        match &v.outcome {
            Outcome::Allow => {
                let route = w.table.route(v.route.expect("allowed verdict has a route"));
                prop_assert_eq!(v.plane, Some(route.plane));
                prop_assert!(v.key.is_some());
                prop_assert!(non_canonical_reason(&r.path).is_none());
                prop_assert!(route.requirement.is_met_by(&w.snap.key(v.key.expect("key")).scopes));
            }
            Outcome::Deny(d) => {
                prop_assert!(!d.message.is_empty());
                if matches!(r.key, KeyChoice::Unknown | KeyChoice::Missing | KeyChoice::Repeated) {
                    prop_assert!(v.key.is_none());
                }
            }
            Outcome::KeyView { .. } => {
                // Answered by the proxy itself, never forwarded: only for a
                // known key on the one path it answers.
                prop_assert!(v.key.is_some());
                prop_assert_eq!(r.path.as_str(), scopegate::decision::key_view::PATH);
                prop_assert_eq!(&r.method, &Method::GET);
            }
            Outcome::ReadBody => unreachable!(),
        }
    }

    #[test]
    fn canonical_paths_are_normal_and_route_as_their_normal_form(p in path()) {
        let w = &*WORLD;
        if non_canonical_reason(&p).is_some() {
            return Ok(());
        }
        let normal = normalise(&p);
        prop_assert_eq!(&normal, &upper_hex(&p), "canonical path {:?} is not normal", p);
        let routed = |path: &str| {
            w.table
                .match_path(path)
                .map(|m| (m.entry.pattern.to_string(), m.workspace.map(upper_hex)))
        };
        prop_assert_eq!(routed(&p), routed(&normal));
    }
}

// ---------------------------------------------------------------------------
// An independent normaliser: what an upstream that normalises paths
// (RFC 3986 6.2.2, plus merged slashes as common servers do) would make of
// a path.

/// RFC 3986 normal form: hex digits upper case, unreserved characters
/// decoded, dot segments removed (5.2.4), empty segments merged.
fn normalise(path: &str) -> String {
    let decoded = decode_unreserved(path);
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    for (i, seg) in segs.iter().enumerate() {
        match *seg {
            "." => {}
            ".." => {
                out.pop();
            }
            "" if i != last => {}
            s => out.push(s),
        }
    }
    // A trailing `.`/`..` leaves a directory path.
    if matches!(segs.last(), Some(&".") | Some(&"..")) {
        out.push("");
    }
    format!("/{}", out.join("/"))
}

/// Decodes `%XX` of unreserved characters, upper-cases the others.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if let (b'%', Some(hex)) = (b[i], path.get(i + 1..i + 3)) {
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                let c = char::from(v);
                if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                    out.push(c);
                } else {
                    out.push('%');
                    out.push_str(&hex.to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        let c = path[i..].chars().next().expect("in bounds");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// The path with the hex digits of its percent-encodings upper case
/// (equivalent by RFC 3986 6.2.2.1).
fn upper_hex(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let n = rest
            .bytes()
            .take(2)
            .take_while(u8::is_ascii_hexdigit)
            .count();
        out.push_str(&rest[..n].to_ascii_uppercase());
        rest = &rest[n..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_reference_normaliser_normalises() {
    assert_eq!(normalise("/a/./b/../c"), "/a/c");
    assert_eq!(normalise("/a//b/"), "/a/b/");
    assert_eq!(normalise("/a/%7e%41/%c3%a9"), "/a/~A/%C3%A9");
    assert_eq!(normalise("/a/b/.."), "/a/");
    assert_eq!(normalise("/%2e%2E/x"), "/x");
}

/// The generators are not vacuous: over a sample, requests reach every
/// outcome the properties are about.
#[test]
fn generated_requests_reach_the_outcomes_the_properties_are_about() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use scopegate::decision::errors::ErrorCode;

    let w = &*WORLD;
    let mut runner = TestRunner::deterministic();
    let strategy = request();
    let (mut admin_allowed, mut ws_allowed, mut admin_data_denied) = (0, 0, 0);
    let (mut read_body, mut mismatch, mut named_allowed) = (0, 0, 0);
    for _ in 0..2000 {
        let r = strategy.new_tree(&mut runner).expect("generates").current();
        let (first, v) = run(&r);
        read_body += usize::from(first.outcome == Outcome::ReadBody);
        match &v.outcome {
            Outcome::Allow => {
                let key = w.snap.key(v.key.expect("key"));
                if key.key_type.is_admin() {
                    admin_allowed += 1;
                } else {
                    ws_allowed += 1;
                }
                named_allowed += usize::from(
                    r.query.as_deref().is_some_and(|q| q.contains("workspace"))
                        || r.path.starts_with("/w/"),
                );
            }
            Outcome::Deny(d) if d.code == ErrorCode::AdminKeyNotAllowed => admin_data_denied += 1,
            Outcome::Deny(d) if d.code == ErrorCode::WorkspaceMismatch => mismatch += 1,
            _ => {}
        }
    }
    let counts = [
        admin_allowed,
        ws_allowed,
        admin_data_denied,
        read_body,
        mismatch,
        named_allowed,
    ];
    assert!(counts.iter().all(|n| *n >= 5), "{counts:?}");
}
