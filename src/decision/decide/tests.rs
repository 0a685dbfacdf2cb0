//! Table tests of the decision: one per row of the reference on the decision order and per rule of which workspace a request names.

use super::*;
use crate::decision::routes::{RouteSpec, RouteTable};
use crate::identity::keys::{build_snapshot, digest_hex, KeysDocument};

const NOW: UnixMillis = 1_800_000_000_000; // 2027-01-15

fn keys_yaml() -> String {
    let h = |s: &str| digest_hex(s.as_bytes());
    format!(
        r#"
organisations:
  - id: org_a
    workspaces:
      - id: ws_research
        slug: research
      - id: ws_prod
  - id: org_b
    workspaces:
      - id: ws_other
custom_scopes: ["x.read"]
keys:
  - id: admin
    type: organisation-service
    organisation_id: org_a
    sha256: "{admin}"
    scopes: ["workspaces.*", "configs.*", "logs.view"]
  - id: bot
    type: workspace-service
    workspace_id: research
    sha256: "{bot}"
    scopes: ["completions.write", "configs.*", "x.read"]
  - id: alice
    type: workspace-user
    workspace_id: ws_prod
    user_id: usr_alice
    sha256: "{alice}"
    scopes: ["completions.write", "logs.write"]
  - id: models_only
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{models}"
    scopes: ["virtual_keys.list"]
  - id: old
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{old}"
    expires_at: "2026-01-01T00:00:00Z"
    scopes: ["completions.write"]
  - id: rotating
    type: workspace-service
    workspace_id: ws_prod
    secrets:
      - sha256: "{rot_new}"
      - sha256: "{rot_old}"
        expires_at: "2026-01-01T00:00:00Z"
      - sha256: "{rot_grace}"
        expires_at: "2099-01-01T00:00:00Z"
    scopes: ["completions.write"]
  - id: revoked
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{revoked}"
    status: revoked
    scopes: ["completions.write"]
  - id: exhausted
    type: workspace-service
    workspace_id: ws_prod
    sha256: "{exhausted}"
    status: exhausted
    scopes: ["completions.write", "configs.read"]
"#,
        admin = h("admin"),
        bot = h("bot"),
        alice = h("alice"),
        models = h("models"),
        old = h("old"),
        rot_new = h("rot-new"),
        rot_old = h("rot-old"),
        rot_grace = h("rot-grace"),
        revoked = h("revoked"),
        exhausted = h("exhausted"),
    )
}

struct World {
    table: RouteTable,
    snap: Snapshot,
}

fn world() -> World {
    let extra = vec![RouteSpec {
        methods: vec!["GET".into()],
        path: "/v1/x/{id}".into(),
        plane: Plane::Control,
        scopes: vec!["x.read".into()],
        scopes_all: vec![],
        upgrade: None,
        meter: None,
    }];
    let table = RouteTable::build(&extra, true).expect("routes");
    let doc: KeysDocument = serde_yaml::from_str(&keys_yaml()).expect("yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("valid keys");
    World { table, snap }
}

/// A request under test.
struct Req<'a> {
    method: Method,
    path: &'a str,
    query: Option<&'a str>,
    key: Presented<'a>,
    content_type: Option<&'a [u8]>,
    body: Body<'a>,
}

fn req<'a>(method: &str, path_and_query: &'a str, key: &'a str) -> Req<'a> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    Req {
        method: Method::from_bytes(method.as_bytes()).expect("method"),
        path,
        query,
        key: if key.is_empty() {
            Presented::Missing
        } else {
            Presented::Secret(key.as_bytes())
        },
        content_type: None,
        body: Body::Empty,
    }
}

impl<'a> Req<'a> {
    fn json(mut self, body: &'a str) -> Self {
        self.content_type = Some(b"application/json");
        self.body = Body::Read(body.as_bytes());
        self
    }
}

fn run(w: &World, r: &Req<'_>) -> Verdict {
    let facts = RequestFacts {
        method: &r.method,
        path: r.path,
        query: r.query,
        key: r.key,
        content_type: r.content_type,
        content_type_repeated: false,
        bad_content_length: false,
        upgrade: Upgrade::None,
        body: r.body,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::decision::decide::nothing_used,
    };
    decide(&w.table, &w.snap, &facts)
}

fn code(v: &Verdict) -> &'static str {
    match &v.outcome {
        Outcome::Allow => "allow",
        Outcome::ReadBody => "read_body",
        Outcome::KeyView { .. } => "key_view",
        Outcome::Deny(d) => d.code.as_str(),
    }
}

fn ws_id(w: &World, v: &Verdict) -> Option<String> {
    v.workspace.map(|i| w.snap.workspace(i).id.to_string())
}

#[test]
fn every_row_of_the_decision_table() {
    let w = world();
    let cases: Vec<(Req<'_>, &str)> = vec![
        (req("POST", "/v1//chat", "bot"), "invalid_path"),
        (req("POST", "/v1/chat/completions", ""), "missing_api_key"),
        (
            req("POST", "/v1/chat/completions", "nope"),
            "invalid_api_key",
        ),
        (
            Req {
                key: Presented::Repeated,
                ..req("POST", "/v1/chat/completions", "bot")
            },
            "invalid_api_key",
        ),
        (
            req("POST", "/v1/chat/completions", "old"),
            "expired_api_key",
        ),
        (
            req("POST", "/v1/chat/completions", "rot-old"),
            "expired_api_key",
        ),
        (
            req("POST", "/v1/chat/completions", "revoked"),
            "revoked_api_key",
        ),
        (req("POST", "/v1/nothing", "bot"), "route_not_found"),
        (
            req("GET", "/v1/chat/completions", "bot"),
            "method_not_allowed",
        ),
        (
            req("POST", "/v1/chat/completions", "admin"),
            "admin_key_not_allowed",
        ),
        (
            req("POST", "/v1/chat/completions", "exhausted"),
            "budget_exhausted",
        ),
        (req("GET", "/v1/admin/workspaces", "bot"), "missing_scope"),
        (
            Req {
                content_type: Some(b"text/plain"),
                body: Body::Unread {
                    declared_len: Some(5),
                },
                ..req("POST", "/v1/configs", "bot")
            },
            "unsupported_media_type",
        ),
        (
            Req {
                content_type: Some(b"application/json"),
                body: Body::Unread {
                    declared_len: Some(5000),
                },
                ..req("POST", "/v1/configs", "bot")
            },
            "body_too_large",
        ),
        (req("POST", "/v1/configs", "bot").json("{"), "invalid_json"),
        (
            req(
                "GET",
                "/v1/configs?workspace_id=ws_prod&workspace_id=ws_research",
                "admin",
            ),
            "conflicting_workspace",
        ),
        (
            req("GET", "/v1/configs?workspace_id=ws_prod", "bot"),
            "workspace_mismatch",
        ),
        (
            req("GET", "/v1/configs?workspace_id=ws_other", "admin"),
            "workspace_not_found",
        ),
        (req("POST", "/v1/chat/completions", "bot"), "allow"),
    ];
    for (r, want) in &cases {
        let v = run(&w, r);
        assert_eq!(code(&v), *want, "{} {}?{:?}", r.method, r.path, r.query);
    }
}

#[test]
fn rotation_keeps_new_and_in_window_secrets() {
    let w = world();
    for secret in ["rot-new", "rot-grace"] {
        let v = run(&w, &req("POST", "/v1/chat/completions", secret));
        assert_eq!(code(&v), "allow", "{secret}");
    }
}

#[test]
fn exhausted_key_still_works_on_the_control_plane() {
    let w = world();
    let v = run(&w, &req("GET", "/v1/configs/c1", "exhausted"));
    assert_eq!(code(&v), "allow");
}

#[test]
fn unread_control_plane_body_asks_to_be_read() {
    let w = world();
    let r = Req {
        content_type: Some(b"application/json"),
        body: Body::Unread {
            declared_len: Some(10),
        },
        ..req("POST", "/v1/configs", "bot")
    };
    assert_eq!(run(&w, &r).outcome, Outcome::ReadBody);
    // Chunked (unknown length) with any content type is read first: it may be empty.
    let r = Req {
        body: Body::Unread { declared_len: None },
        ..req("POST", "/v1/configs", "bot")
    };
    assert_eq!(run(&w, &r).outcome, Outcome::ReadBody);
    let r = Req {
        body: Body::Read(b""),
        ..req("POST", "/v1/configs", "bot")
    };
    assert_eq!(code(&run(&w, &r)), "allow");
}

#[test]
fn data_plane_bodies_are_not_inspected() {
    let w = world();
    let r = Req {
        content_type: Some(b"text/plain"),
        body: Body::Unread {
            declared_len: Some(99_999),
        },
        ..req("POST", "/v1/chat/completions", "bot")
    };
    assert_eq!(code(&run(&w, &r)), "allow");
}

#[test]
fn workspace_sources_resolve_by_id_or_slug() {
    let w = world();
    // A workspace key naming its own workspace by slug, id, and in the body.
    for (r, want) in [
        (
            req("GET", "/v1/configs?workspace_id=research", "bot"),
            "allow",
        ),
        (
            req("GET", "/v1/configs?workspace_id=ws_research", "bot"),
            "allow",
        ),
        (
            req("POST", "/v1/configs?workspace_id=research", "bot")
                .json(r#"{"workspace_id":"ws_research"}"#),
            "allow",
        ),
        (
            req("POST", "/v1/configs?workspace_id=research", "bot")
                .json(r#"{"workspace_id":"ws_prod"}"#),
            "conflicting_workspace",
        ),
        (
            req("POST", "/v1/configs", "bot").json(r#"{"workspace_id":"nowhere"}"#),
            "workspace_mismatch",
        ),
        (
            req("POST", "/v1/configs", "bot").json(r#"{"workspace_id":7}"#),
            "invalid_json",
        ),
        (
            req("POST", "/v1/configs", "bot")
                .json(r#"{"workspace_id":"research","workspace_id":"research"}"#),
            "invalid_json",
        ),
    ] {
        let v = run(&w, &r);
        assert_eq!(code(&v), want, "{:?} {:?}", r.query, r.body);
        if want == "allow" {
            assert_eq!(ws_id(&w, &v).as_deref(), Some("ws_research"));
        }
    }
}

#[test]
fn admin_keys_act_org_wide_or_in_a_named_workspace_of_their_org() {
    let w = world();
    let v = run(&w, &req("GET", "/v1/admin/workspaces", "admin"));
    assert_eq!(code(&v), "allow");
    assert_eq!(ws_id(&w, &v), None);
    let v = run(&w, &req("GET", "/v1/admin/workspaces/research", "admin"));
    assert_eq!(code(&v), "allow");
    assert_eq!(ws_id(&w, &v).as_deref(), Some("ws_research"));
    let v = run(&w, &req("GET", "/v1/admin/workspaces/ws_other", "admin"));
    assert_eq!(code(&v), "workspace_not_found");
    let v = run(
        &w,
        &req(
            "GET",
            "/v1/admin/workspaces/ws_prod?workspace_id=ws_research",
            "admin",
        ),
    );
    assert_eq!(code(&v), "conflicting_workspace");
}

#[test]
fn scopes_any_of_all_of_and_custom() {
    let w = world();
    assert_eq!(code(&run(&w, &req("GET", "/v1/models", "models"))), "allow");
    // POST /v1/logs needs completions.write AND logs.write.
    assert_eq!(code(&run(&w, &req("POST", "/v1/logs", "alice"))), "allow");
    let v = run(&w, &req("POST", "/v1/logs", "bot"));
    assert_eq!(code(&v), "missing_scope");
    let Outcome::Deny(d) = &v.outcome else {
        unreachable!()
    };
    assert!(d.message.contains("`logs.write`"), "{}", d.message);
    assert_eq!(code(&run(&w, &req("GET", "/v1/x/1", "bot"))), "allow");
    assert_eq!(
        code(&run(&w, &req("GET", "/v1/x/1", "alice"))),
        "missing_scope"
    );
}

#[test]
fn method_not_allowed_carries_allow_and_control_shape() {
    let w = world();
    let v = run(&w, &req("PATCH", "/v1/admin/workspaces", "admin"));
    let Outcome::Deny(d) = &v.outcome else {
        unreachable!()
    };
    assert_eq!(d.code, ErrorCode::MethodNotAllowed);
    assert_eq!(d.allow.as_deref(), Some("GET, POST"));
    assert_eq!(v.shape, ErrorShape::Portkey);
    assert_eq!(v.pattern.as_deref(), Some("/v1/admin/workspaces"));
}

#[test]
fn error_shape_follows_the_path_not_the_key() {
    let w = world();
    assert_eq!(
        run(&w, &req("GET", "/v1/configs", "")).shape,
        ErrorShape::Portkey
    );
    assert_eq!(
        run(&w, &req("POST", "/v1/chat/completions", "")).shape,
        ErrorShape::OpenAi
    );
    assert_eq!(
        run(&w, &req("GET", "/v1/unknown", "")).shape,
        ErrorShape::OpenAi
    );
    assert_eq!(
        run(&w, &req("GET", "/v1//configs", "")).shape,
        ErrorShape::OpenAi
    );
}

#[test]
fn decide_as_skips_the_secret_but_not_the_rules() {
    let w = world();
    let (idx, _) = w.snap.key_by_id("admin").expect("admin");
    let facts = RequestFacts {
        method: &Method::POST,
        path: "/v1/chat/completions",
        query: None,
        key: Presented::Missing,
        content_type: None,
        content_type_repeated: false,
        bad_content_length: false,
        upgrade: Upgrade::None,
        body: Body::Empty,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::decision::decide::nothing_used,
    };
    let v = decide_as(&w.table, &w.snap, &facts, idx);
    assert_eq!(code(&v), "admin_key_not_allowed");
}

/// A table with WebSocket routes on both planes, and keys with and without
/// limits that count tokens.
fn upgrade_world() -> World {
    let h = |s: &str| digest_hex(s.as_bytes());
    let route = |path: &str, plane: Plane, scope: &str| RouteSpec {
        methods: vec!["GET".into(), "POST".into()],
        path: path.into(),
        plane,
        scopes: vec![scope.into()],
        scopes_all: vec![],
        upgrade: Some("websocket".into()),
        meter: None,
    };
    let extra = vec![
        route("/v1/realtime", Plane::Data, "completions.write"),
        route(
            "/v1/admin/live/{workspace_id}",
            Plane::Control,
            "configs.read",
        ),
    ];
    let table = RouteTable::build(&extra, true).expect("routes");
    let yaml = format!(
        r#"
organisations:
  - id: org_a
    workspaces:
      - id: ws_research
      - id: ws_budget
        usage_limits: {{ type: tokens, credit_limit: 1000 }}
      - id: ws_other
keys:
  - id: bot
    type: workspace-service
    workspace_id: ws_research
    sha256: "{bot}"
    scopes: ["completions.write", "configs.read"]
    max_concurrent_requests: 1
    rate_limits: [{{ type: requests, unit: rpm, value: 5 }}]
  - id: lister
    type: workspace-service
    workspace_id: ws_research
    sha256: "{lister}"
    scopes: ["virtual_keys.list"]
  - id: tokens
    type: workspace-service
    workspace_id: ws_research
    sha256: "{tokens}"
    scopes: ["completions.write", "configs.read"]
    rate_limits: [{{ type: tokens, unit: rpm, value: 1000 }}]
  - id: costly
    type: workspace-service
    workspace_id: ws_research
    sha256: "{costly}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 1000 }}
  - id: in_budget_ws
    type: workspace-service
    workspace_id: ws_budget
    sha256: "{in_budget_ws}"
    scopes: ["completions.write"]
  - id: admin
    type: organisation-service
    sha256: "{admin}"
    scopes: ["configs.*"]
"#,
        bot = h("bot"),
        lister = h("lister"),
        tokens = h("tokens"),
        costly = h("costly"),
        in_budget_ws = h("in-budget-ws"),
        admin = h("admin"),
    );
    let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("valid keys");
    World { table, snap }
}

fn run_upgrade(w: &World, method: Method, path: &str, key: &str, upgrade: Upgrade) -> Verdict {
    let facts = RequestFacts {
        method: &method,
        path,
        query: None,
        key: if key.is_empty() {
            Presented::Missing
        } else {
            Presented::Secret(key.as_bytes())
        },
        content_type: None,
        content_type_repeated: false,
        bad_content_length: false,
        upgrade,
        body: Body::Empty,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::decision::decide::nothing_used,
    };
    decide(&w.table, &w.snap, &facts)
}

#[test]
fn websocket_upgrade_passes_only_on_an_opted_in_get_route() {
    let w = upgrade_world();
    let ws = Upgrade::WebSocket;
    let v = run_upgrade(&w, Method::GET, "/v1/realtime", "bot", ws);
    assert_eq!(code(&v), "allow");
    assert_eq!(v.plane, Some(Plane::Data));
    assert_eq!(ws_id(&w, &v).as_deref(), Some("ws_research"));
    let v = run_upgrade(&w, Method::GET, "/v1/admin/live/ws_research", "bot", ws);
    assert_eq!(code(&v), "allow");
    assert_eq!(v.plane, Some(Plane::Control));
    // The route's POST does not take upgrades; nor do built-in routes.
    for (method, path) in [
        (Method::POST, "/v1/realtime"),
        (Method::GET, "/v1/models"),
        (Method::GET, "/v1/files"),
    ] {
        let v = run_upgrade(&w, method, path, "bot", ws);
        assert_eq!(code(&v), "upgrade_not_allowed", "{path}");
    }
    // Without an upgrade the route is an ordinary route.
    let v = run_upgrade(&w, Method::POST, "/v1/realtime", "bot", Upgrade::None);
    assert_eq!(code(&v), "allow");
}

#[test]
fn other_upgrades_are_refused_even_on_an_opted_in_route() {
    let w = upgrade_world();
    let v = run_upgrade(&w, Method::GET, "/v1/realtime", "bot", Upgrade::Other);
    assert_eq!(code(&v), "upgrade_not_allowed");
    let Outcome::Deny(d) = &v.outcome else {
        panic!("denied")
    };
    assert!(d.message.contains("Only WebSocket"), "{}", d.message);
}

#[test]
fn an_upgrade_is_decided_like_any_request_first() {
    let w = upgrade_world();
    let ws = Upgrade::WebSocket;
    let cases = [
        ("/v1/realtime", "", "missing_api_key"),
        ("/v1/realtime", "nobody", "invalid_api_key"),
        ("/v1/realtime", "lister", "missing_scope"),
        ("/v1/realtime", "admin", "admin_key_not_allowed"),
        ("/v1/admin/live/ws_other", "bot", "workspace_mismatch"),
        ("/v1//realtime", "bot", "invalid_path"),
    ];
    for (path, key, want) in cases {
        let v = run_upgrade(&w, Method::GET, path, key, ws);
        assert_eq!(code(&v), want, "{path} as {key:?}");
    }
}

#[test]
fn keys_whose_limits_count_tokens_get_no_tunnel() {
    let w = upgrade_world();
    for key in ["tokens", "costly", "in-budget-ws"] {
        let v = run_upgrade(&w, Method::GET, "/v1/realtime", key, Upgrade::WebSocket);
        assert_eq!(code(&v), "upgrade_not_allowed", "{key}");
        let Outcome::Deny(d) = &v.outcome else {
            panic!("denied")
        };
        assert!(d.message.contains("cannot be counted"), "{}", d.message);
        // The same key's plain requests pass.
        let v = run_upgrade(&w, Method::GET, "/v1/realtime", key, Upgrade::None);
        assert_eq!(code(&v), "allow", "{key}");
    }
    // Request rate limits and max_concurrent_requests do not stop a tunnel:
    // it is one request and holds one slot.
    let v = run_upgrade(&w, Method::GET, "/v1/realtime", "bot", Upgrade::WebSocket);
    assert_eq!(code(&v), "allow");
}

#[test]
fn raw_non_ascii_in_path_or_query_is_invalid_path_before_the_key() {
    let w = world();
    for pq in [
        "/v1/files/\u{85}",
        "/v1/files/caf\u{e9}",
        "/v1/files/%C2%85",
        "/v1/files/a?x=\u{85}",
        "/v1/files/a?x=\x01",
    ] {
        let v = run(&w, &req("GET", pq, "nobody"));
        assert_eq!(code(&v), "invalid_path", "{pq:?}");
        assert_eq!(v.key, None);
    }
    let v = run(&w, &req("GET", "/v1/files/caf%C3%A9?x=%C2%85", "bot"));
    assert_eq!(code(&v), "allow");
}

/// Keys whose limits make the data plane read bodies, and routes that are
/// metered, plain, or take WebSocket upgrades.
fn spending_world() -> World {
    let h = |s: &str| digest_hex(s.as_bytes());
    let route = |methods: &[&str], path: &str, upgrade: Option<&str>, meter| RouteSpec {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: path.into(),
        plane: Plane::Data,
        scopes: vec!["completions.write".into()],
        scopes_all: vec![],
        upgrade: upgrade.map(str::to_string),
        meter,
    };
    let extra = vec![
        route(
            &["POST"],
            "/openai/deployments/{d}/chat/completions",
            None,
            Some(UsageApi::Chat),
        ),
        route(&["POST"], "/x/plain", None, None),
        route(&["GET"], "/v1/realtime", Some("websocket"), None),
    ];
    let table = RouteTable::build(&extra, true).expect("routes");
    let yaml = format!(
        r#"
organisations:
  - id: org_a
    workspaces:
      - id: ws_research
      - id: ws_prod
      - id: ws_models
        models: ["gpt-4o*"]
keys:
  - id: mini
    type: workspace-service
    workspace_id: ws_research
    sha256: "{mini}"
    scopes: ["completions.write"]
    models: ["gpt-4o-mini", "whisper-1"]
  - id: tpm
    type: workspace-service
    workspace_id: ws_research
    sha256: "{tpm}"
    scopes: ["completions.write"]
    rate_limits: [{{ type: tokens, unit: rpm, value: 1000 }}]
  - id: budget
    type: workspace-service
    workspace_id: ws_research
    sha256: "{budget}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 1000 }}
  - id: reqs
    type: workspace-service
    workspace_id: ws_research
    sha256: "{reqs}"
    scopes: ["completions.write"]
    rate_limits: [{{ type: requests, unit: rpm, value: 10 }}]
  - id: in_models_ws
    type: workspace-service
    workspace_id: ws_models
    sha256: "{in_models_ws}"
    scopes: ["completions.write"]
"#,
        mini = h("mini"),
        tpm = h("tpm"),
        budget = h("budget"),
        reqs = h("reqs"),
        in_models_ws = h("in-models-ws"),
    );
    let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("valid keys");
    World { table, snap }
}

/// A request with a content type (possibly repeated) and a body.
struct Data<'a> {
    path: &'a str,
    key: &'a str,
    content_type: Option<&'a str>,
    repeated: bool,
    body: Body<'a>,
    upgrade: Upgrade,
    method: Method,
}

fn data<'a>(
    path: &'a str,
    key: &'a str,
    content_type: Option<&'a str>,
    body: Body<'a>,
) -> Data<'a> {
    Data {
        path,
        key,
        content_type,
        repeated: false,
        body,
        upgrade: Upgrade::None,
        method: Method::POST,
    }
}

fn unread(n: u64) -> Body<'static> {
    Body::Unread {
        declared_len: Some(n),
    }
}

fn run_data(w: &World, d: &Data<'_>) -> Verdict {
    let (path, query) = match d.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (d.path, None),
    };
    let facts = RequestFacts {
        method: &d.method,
        path,
        query,
        key: Presented::Secret(d.key.as_bytes()),
        content_type: d.content_type.map(str::as_bytes),
        content_type_repeated: d.repeated,
        bad_content_length: false,
        upgrade: d.upgrade,
        body: d.body,
        now: NOW,
        max_body: 1024,
        max_data_body: 4096,
        used_up: &crate::decision::decide::nothing_used,
    };
    decide(&w.table, &w.snap, &facts)
}

#[test]
fn inference_bodies_must_be_a_type_the_proxy_reads() {
    let w = spending_world();
    let chat = "/v1/chat/completions?model=gpt-4o-mini";
    let json = Some("application/json");
    for key in ["mini", "tpm", "budget", "in-models-ws"] {
        for (ct, repeated, body, want) in [
            (
                Some("text/plain"),
                false,
                unread(20),
                "unsupported_media_type",
            ),
            (None, false, unread(20), "unsupported_media_type"),
            (
                Some("application/x-www-form-urlencoded"),
                false,
                unread(20),
                "unsupported_media_type",
            ),
            // A chunked body is refused before it is read.
            (
                Some("text/plain"),
                false,
                Body::Unread { declared_len: None },
                "unsupported_media_type",
            ),
            (json, true, unread(20), "unsupported_media_type"),
            // Refused before its size: the type is known from the header.
            (
                Some("text/plain"),
                false,
                unread(1 << 40),
                "unsupported_media_type",
            ),
            (json, false, unread(20), "read_body"),
            (
                Some("application/vnd.api+json"),
                false,
                unread(20),
                "read_body",
            ),
            (
                Some("Application/JSON; charset=utf-8"),
                false,
                unread(20),
                "read_body",
            ),
            (
                Some("multipart/form-data; boundary=b"),
                false,
                unread(20),
                "read_body",
            ),
            (json, false, unread(1 << 40), "body_too_large"),
        ] {
            let d = Data {
                repeated,
                ..data(chat, key, ct, body)
            };
            assert_eq!(
                code(&run_data(&w, &d)),
                want,
                "{key} {ct:?} {repeated} {body:?}"
            );
        }
    }
    // No body, no type to check.
    let v = run_data(&w, &data(chat, "tpm", Some("text/plain"), Body::Empty));
    assert_eq!(code(&v), "allow");
    // A key without such limits is not read at all.
    let v = run_data(&w, &data(chat, "reqs", Some("text/plain"), unread(20)));
    assert_eq!(code(&v), "allow");
    assert!(!v.spend.expect("spend").body_read);
    // The metered extra route is an inference route.
    let azure = "/openai/deployments/gpt/chat/completions";
    let v = run_data(&w, &data(azure, "tpm", Some("text/plain"), unread(20)));
    assert_eq!(code(&v), "unsupported_media_type");
}

#[test]
fn the_workspace_steps_come_before_the_data_plane_body() {
    let w = spending_world();
    let d = data(
        "/v1/chat/completions?workspace_id=ws_prod",
        "mini",
        Some("text/plain"),
        unread(20),
    );
    assert_eq!(code(&run_data(&w, &d)), "workspace_mismatch");
}

#[test]
fn other_data_routes_read_json_and_stream_other_types() {
    let w = spending_world();
    for key in ["mini", "tpm", "budget"] {
        let octets = data(
            "/v1/files",
            key,
            Some("application/octet-stream"),
            unread(99_999),
        );
        let v = run_data(&w, &octets);
        assert_eq!(code(&v), "allow", "{key}");
        assert!(!v.spend.expect("spend").body_read);
        let none = data("/x/plain", key, None, unread(10));
        assert_eq!(code(&run_data(&w, &none)), "allow", "{key}");
        let json = data("/v1/files", key, Some("application/json"), unread(10));
        assert_eq!(code(&run_data(&w, &json)), "read_body", "{key}");
        let twice = Data {
            repeated: true,
            ..data("/v1/files", key, Some("application/json"), unread(10))
        };
        assert_eq!(code(&run_data(&w, &twice)), "unsupported_media_type");
    }
    // Multipart off the inference routes is read for its model only when
    // models are restricted.
    let form = Some("multipart/form-data; boundary=b");
    let v = run_data(&w, &data("/v1/files", "mini", form, unread(10)));
    assert_eq!(code(&v), "read_body");
    let v = run_data(&w, &data("/v1/files", "tpm", form, unread(10)));
    assert_eq!(code(&v), "allow");
}

#[test]
fn read_bodies_give_the_spend_facts() {
    let w = spending_world();
    let body = r#"{"model":"gpt-4o-mini","max_tokens":50,"n":3,"stream":true}"#;
    let v = run_data(
        &w,
        &data(
            "/v1/chat/completions",
            "tpm",
            Some("application/json"),
            Body::Read(body.as_bytes()),
        ),
    );
    assert_eq!(code(&v), "allow");
    let s = v.spend.expect("spend");
    assert_eq!(
        (s.body_read, s.body_len, s.usage, s.counted),
        (true, body.len() as u64, Some(UsageApi::Chat), true)
    );
    assert_eq!((s.max_output, s.n, s.stream), (Some(50), Some(3), true));
    assert_eq!(s.model.as_deref(), Some("gpt-4o-mini"));
    // Models only: read and checked, not counted.
    let v = run_data(
        &w,
        &data(
            "/v1/chat/completions",
            "mini",
            Some("application/json"),
            Body::Read(body.as_bytes()),
        ),
    );
    assert_eq!(v.spend.map(|s| s.counted), Some(false));
    // A multipart model is the request's model.
    let form =
        "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
    let v = run_data(
        &w,
        &data(
            "/v1/audio/transcriptions",
            "mini",
            Some("multipart/form-data; boundary=b"),
            Body::Read(form.as_bytes()),
        ),
    );
    assert_eq!(code(&v), "allow");
    assert_eq!(v.spend.and_then(|s| s.model).as_deref(), Some("whisper-1"));
    // A counted request with no body is counted (and read, by the proxy).
    let v = run_data(&w, &data("/v1/embeddings", "budget", None, Body::Empty));
    let s = v.spend.expect("spend");
    assert_eq!(
        (s.counted, s.body_read, s.usage),
        (true, false, Some(UsageApi::Embeddings))
    );
}

#[test]
fn tokens_the_proxy_cannot_see_are_refused_to_keys_that_count_them() {
    let w = spending_world();
    let json = Some("application/json");
    let bg = Body::Read(br#"{"model":"gpt-4o-mini","background":true}"#);
    let fg = Body::Read(br#"{"model":"gpt-4o-mini","background":false}"#);
    for (path, body, key, want) in [
        ("/v1/batches", unread(10), "tpm", "usage_not_metered"),
        ("/v1/batches", unread(10), "budget", "usage_not_metered"),
        ("/v1/batches", Body::Empty, "budget", "usage_not_metered"),
        (
            "/v1/prompts/p/completions",
            Body::Empty,
            "tpm",
            "usage_not_metered",
        ),
        ("/v1/responses", bg, "tpm", "usage_not_metered"),
        ("/v1/responses", bg, "budget", "usage_not_metered"),
        ("/v1/responses", fg, "budget", "allow"),
        // Models are checked first (the step beside it).
        ("/v1/batches", unread(10), "mini", "model_not_allowed"),
        ("/v1/responses", bg, "mini", "allow"),
        ("/v1/batches", unread(10), "reqs", "allow"),
        ("/v1/prompts/p/completions", Body::Empty, "reqs", "allow"),
    ] {
        let v = run_data(&w, &data(path, key, json, body));
        let got = match (code(&v), body) {
            ("read_body", Body::Unread { .. }) => {
                run_data(&w, &data(path, key, json, Body::Read(b"{}")))
            }
            _ => v,
        };
        assert_eq!(code(&got), want, "{key} {path} {body:?}");
    }
}

#[test]
fn a_metered_route_is_checked_like_its_builtin_one() {
    let w = spending_world();
    let azure = "/openai/deployments/gpt/chat/completions";
    let json = Some("application/json");
    for (key, body, want) in [
        ("mini", r#"{"messages":[]}"#, "missing_model"),
        ("mini", r#"{"model":"gpt-4o"}"#, "model_not_allowed"),
        ("mini", r#"{"model":"gpt-4o-mini"}"#, "allow"),
        ("in-models-ws", r#"{"model":"o1"}"#, "model_not_allowed"),
        ("tpm", r#"{"Model":"x"}"#, "invalid_json"),
        ("tpm", r#"{"stream":true}"#, "allow"),
    ] {
        let v = run_data(&w, &data(azure, key, json, Body::Read(body.as_bytes())));
        assert_eq!(code(&v), want, "{key} {body}");
    }
    let v = run_data(&w, &data(azure, "tpm", json, Body::Read(b"{}")));
    assert_eq!(
        v.spend.map(|s| (s.usage, s.counted)),
        Some((Some(UsageApi::Chat), true))
    );
    // The plain extra route is not counted.
    let v = run_data(&w, &data("/x/plain", "tpm", json, Body::Read(b"{}")));
    assert_eq!(v.spend.map(|s| (s.usage, s.counted)), Some((None, false)));
}

#[test]
fn a_websocket_opens_for_a_model_restricted_key_only_with_an_allowed_model() {
    let w = spending_world();
    for (path, key, want) in [
        ("/v1/realtime", "mini", "missing_model"),
        ("/v1/realtime?model=gpt-4o", "mini", "model_not_allowed"),
        ("/v1/realtime?model=gpt-4o-mini", "mini", "allow"),
        (
            "/v1/realtime?model=gpt-4o-mini&MODEL=o1",
            "mini",
            "model_not_allowed",
        ),
        ("/v1/realtime", "in-models-ws", "missing_model"),
        (
            "/v1/realtime?model=gpt-4o-realtime",
            "in-models-ws",
            "allow",
        ),
        ("/v1/realtime", "reqs", "allow"),
    ] {
        let d = Data {
            upgrade: Upgrade::WebSocket,
            method: Method::GET,
            ..data(path, key, None, Body::Empty)
        };
        assert_eq!(code(&run_data(&w, &d)), want, "{path} {key}");
    }
    // Without the upgrade, the route's GET needs no model.
    let d = Data {
        method: Method::GET,
        ..data("/v1/realtime", "mini", None, Body::Empty)
    };
    assert_eq!(code(&run_data(&w, &d)), "allow");
}

#[test]
fn an_ambiguous_content_length_is_refused_right_after_the_path() {
    let w = world();
    for (pq, key, shape) in [
        ("/v1/chat/completions", "bot", ErrorShape::OpenAi),
        ("/v1/configs", "", ErrorShape::Portkey),
        ("/nowhere", "nobody", ErrorShape::OpenAi),
    ] {
        let r = req("POST", pq, key);
        let facts = RequestFacts {
            method: &r.method,
            path: r.path,
            query: r.query,
            key: r.key,
            content_type: None,
            content_type_repeated: false,
            bad_content_length: true,
            upgrade: Upgrade::None,
            body: Body::Unread { declared_len: None },
            now: NOW,
            max_body: 1024,
            max_data_body: 4096,
            used_up: &crate::decision::decide::nothing_used,
        };
        let v = decide(&w.table, &w.snap, &facts);
        assert_eq!(code(&v), "invalid_request", "{pq}");
        assert_eq!(v.shape, shape, "{pq}");
        assert_eq!(v.key, None);
    }
    let v = run(&w, &req("POST", "/v1//x", "bot"));
    assert_eq!(code(&v), "invalid_path");
}

/// Keys and a workspace with cost budgets, and prices for some models.
fn cost_world(catch_all: bool) -> World {
    let h = |s: &str| digest_hex(s.as_bytes());
    let table = RouteTable::build(&[], true).expect("routes");
    let star = if catch_all {
        "  \"*\": { input: 1, output: 1 }\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"
organisations:
  - id: org_a
    workspaces:
      - id: ws_plain
      - id: ws_costly
        usage_limits: {{ type: cost, credit_limit: 5 }}
keys:
  - id: cost
    type: workspace-service
    workspace_id: ws_plain
    sha256: "{cost}"
    scopes: ["completions.write"]
    usage_limits: {{ type: cost, credit_limit: 5 }}
  - id: cost_models
    type: workspace-service
    workspace_id: ws_plain
    sha256: "{cost_models}"
    scopes: ["completions.write"]
    models: ["gpt-4o*", "claude-*"]
    usage_limits: {{ type: cost, credit_limit: 5 }}
  - id: in_costly_ws
    type: workspace-service
    workspace_id: ws_costly
    sha256: "{in_costly_ws}"
    scopes: ["completions.write"]
  - id: tokens
    type: workspace-service
    workspace_id: ws_plain
    sha256: "{tokens}"
    scopes: ["completions.write"]
    usage_limits: {{ type: tokens, credit_limit: 5000 }}
model_prices:
  "gpt-4o-mini": {{ input: 0.15, output: 0.60, cached_input: 0.075 }}
{star}"#,
        cost = h("cost"),
        cost_models = h("cost-models"),
        in_costly_ws = h("in-costly-ws"),
        tokens = h("tokens"),
    );
    let doc: KeysDocument = serde_yaml::from_str(&yaml).expect("yaml");
    let snap = build_snapshot(&doc, table.registry()).expect("valid keys");
    World { table, snap }
}

#[test]
fn a_cost_budget_needs_a_named_and_priced_model_on_counted_routes() {
    let w = cost_world(false);
    let json = Some("application/json");
    let form = Some("multipart/form-data; boundary=b");
    let multipart = |model: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--b--\r\n")
    };
    let (mp_priced, mp_unpriced) = (multipart("gpt-4o-mini"), multipart("whisper-1"));
    let cases: Vec<(&str, &str, Option<&str>, Body<'_>, &str)> = vec![
        // The body, the query and a multipart part all name models.
        (
            "/v1/chat/completions",
            "cost",
            json,
            Body::Read(br#"{"model":"gpt-4o-mini"}"#),
            "allow",
        ),
        (
            "/v1/chat/completions",
            "cost",
            json,
            Body::Read(br#"{"model":"o1"}"#),
            "model_not_priced",
        ),
        (
            "/v1/chat/completions",
            "cost",
            json,
            Body::Read(br#"{"messages":[]}"#),
            "missing_model",
        ),
        (
            "/v1/chat/completions",
            "cost",
            json,
            Body::Empty,
            "missing_model",
        ),
        (
            "/v1/chat/completions?model=o1",
            "cost",
            json,
            Body::Read(br#"{"model":"gpt-4o-mini"}"#),
            "model_not_priced",
        ),
        (
            "/v1/chat/completions?model=gpt-4o-mini",
            "cost",
            json,
            Body::Read(b"{}"),
            "allow",
        ),
        (
            "/v1/embeddings?model=o1",
            "cost",
            json,
            Body::Read(b"{}"),
            "model_not_priced",
        ),
        (
            "/v1/responses",
            "cost",
            form,
            Body::Read(mp_priced.as_bytes()),
            "allow",
        ),
        (
            "/v1/responses",
            "cost",
            form,
            Body::Read(mp_unpriced.as_bytes()),
            "model_not_priced",
        ),
        // The workspace's budget binds its keys.
        (
            "/v1/messages",
            "in-costly-ws",
            json,
            Body::Read(br#"{"model":"claude-x"}"#),
            "model_not_priced",
        ),
        (
            "/v1/messages",
            "in-costly-ws",
            json,
            Body::Read(b"{}"),
            "missing_model",
        ),
        // Routes that carry no usage are not concerned.
        (
            "/v1/images/generations",
            "cost",
            json,
            Body::Read(br#"{"model":"dall-e-3"}"#),
            "allow",
        ),
        // The allowlist answers first (its step comes before).
        (
            "/v1/chat/completions",
            "cost-models",
            json,
            Body::Read(br#"{"model":"o1"}"#),
            "model_not_allowed",
        ),
        (
            "/v1/chat/completions",
            "cost-models",
            json,
            Body::Read(br#"{"model":"gpt-4o"}"#),
            "model_not_priced",
        ),
        (
            "/v1/chat/completions",
            "cost-models",
            json,
            Body::Read(b"{}"),
            "missing_model",
        ),
        // Then tokens the proxy cannot see, then the price.
        (
            "/v1/responses",
            "cost",
            json,
            Body::Read(br#"{"model":"o1","background":true}"#),
            "usage_not_metered",
        ),
        // Keys without a cost budget behave as before.
        (
            "/v1/chat/completions",
            "tokens",
            json,
            Body::Read(br#"{"model":"o1"}"#),
            "allow",
        ),
        (
            "/v1/chat/completions",
            "tokens",
            json,
            Body::Read(b"{}"),
            "allow",
        ),
    ];
    for (path, key, ct, body, want) in cases {
        let v = run_data(&w, &data(path, key, ct, body));
        assert_eq!(code(&v), want, "{key} {path} {body:?}");
        if let Outcome::Deny(d) = &v.outcome {
            if d.code == ErrorCode::ModelNotPriced {
                assert!(d.message.contains("has no price"), "{}", d.message);
            }
        }
    }
    // `"*"` prices every other model.
    let all = cost_world(true);
    let v = run_data(
        &all,
        &data(
            "/v1/chat/completions?model=o1",
            "cost",
            json,
            Body::Read(br#"{"model":"claude-x"}"#),
        ),
    );
    assert_eq!(code(&v), "allow");
    // A model named only by the query is the request's model.
    assert_eq!(
        v.spend.and_then(|s| s.model).as_deref(),
        Some("claude-x"),
        "the body's model first"
    );
    let v = run_data(
        &all,
        &data(
            "/v1/chat/completions?model=o1",
            "cost",
            json,
            Body::Read(b"{}"),
        ),
    );
    assert_eq!(v.spend.and_then(|s| s.model).as_deref(), Some("o1"));
}

#[test]
fn the_key_view_needs_valid_credentials_and_nothing_else() {
    let w = world();
    let view = "/v1/scopegate/key";
    for (r, want) in [
        // Every key type, whatever its scopes or status on the data plane.
        (req("GET", view, "admin"), "key_view"),
        (req("GET", view, "bot"), "key_view"),
        (req("GET", view, "alice"), "key_view"),
        (req("GET", view, "models"), "key_view"),
        (req("GET", view, "exhausted"), "key_view"),
        (req("GET", "/v1/scopegate/key?x=1", "bot"), "key_view"),
        // The credential steps apply.
        (req("GET", view, ""), "missing_api_key"),
        (req("GET", view, "nobody"), "invalid_api_key"),
        (req("GET", view, "old"), "expired_api_key"),
        (req("GET", view, "rot-old"), "expired_api_key"),
        (req("GET", view, "revoked"), "revoked_api_key"),
        // GET only; other paths under it are not it.
        (req("POST", view, "bot"), "method_not_allowed"),
        (req("GET", "/v1/scopegate/key/", "bot"), "route_not_found"),
        (req("GET", "/v1/scopegate//key", "bot"), "invalid_path"),
    ] {
        let v = run(&w, &r);
        assert_eq!(code(&v), want, "{} {}", r.method, r.path);
        if want == "key_view" {
            assert_eq!(v.shape, ErrorShape::OpenAi);
            assert_eq!(v.pattern.as_deref(), Some(view));
            assert!(v.spend.is_none(), "nothing to count");
        }
    }
    let post = run(&w, &req("POST", view, "bot"));
    match &post.outcome {
        Outcome::Deny(d) => assert_eq!(d.allow.as_deref(), Some("GET")),
        other => panic!("{other:?}"),
    }
    // The presented secret's end under rotation is the view's to show.
    match run(&w, &req("GET", view, "rot-grace")).outcome {
        Outcome::KeyView { secret_expires } => {
            assert_eq!(secret_expires, Some(4_070_908_800_000));
        }
        other => panic!("{other:?}"),
    }
    match run(&w, &req("GET", view, "rot-new")).outcome {
        Outcome::KeyView { secret_expires } => assert_eq!(secret_expires, None),
        other => panic!("{other:?}"),
    }
}

/// Deciding again once the body is read ([`decide_read`], the proxy's
/// second decision) gives exactly what deciding from the start with the
/// body gives, for every request whose first decision asks for the body or
/// allows a counted request without it: data-plane verdicts resume at
/// step 7 without reading the key again.
#[test]
fn deciding_with_the_read_body_gives_what_a_full_decision_gives() {
    let json = Some("application/json");
    let form = Some("multipart/form-data; boundary=b");
    let part = |m: &str| {
        format!("--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{m}\r\n--b--\r\n")
    };
    let (mp_mini, mp_whisper, mp_other) = (part("gpt-4o-mini"), part("whisper-1"), part("o3"));
    let big = "x".repeat(5000);
    let bodies: Vec<(Option<&str>, Option<&str>)> = vec![
        (json, Some(r#"{"model":"gpt-4o-mini","messages":[]}"#)),
        (
            json,
            Some(r#"{"model":"gpt-4o","max_tokens":5,"n":2,"stream":true}"#),
        ),
        (json, Some(r#"{"model":"claude-3-haiku","max_tokens":5}"#)),
        (json, Some(r#"{"model":"o3"}"#)),
        (json, Some(r#"{"messages":[]}"#)),
        (json, Some(r#"{"model":"gpt-4o-mini","background":true}"#)),
        (json, Some("not json")),
        (json, Some("[1]")),
        (json, Some("")),
        (json, Some(&big)),
        (json, None), // larger than the read limit
        (form, Some(&mp_mini)),
        (form, Some(&mp_whisper)),
        (form, Some(&mp_other)),
        (form, Some("--b\r\nbroken")),
        (Some("text/plain"), Some("hello")),
        (None, Some("hello")),
    ];
    let paths = [
        "/v1/chat/completions",
        "/v1/chat/completions?model=gpt-4o-mini",
        "/v1/chat/completions?model=o3",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/audio/transcriptions",
        "/openai/deployments/d/chat/completions",
        "/x/plain",
        "/v1/files",
    ];
    let keys = [
        "mini",
        "tpm",
        "budget",
        "reqs",
        "in-models-ws",
        "cost",
        "cost-models",
        "in-costly-ws",
        "tokens",
    ];
    let (mut compared, mut resumed, mut refused_late) = (0, 0, 0);
    for w in [spending_world(), cost_world(false), cost_world(true)] {
        for key in keys {
            for path in paths {
                for (ct, body) in &bodies {
                    let (p, query) = match path.split_once('?') {
                        Some((p, q)) => (p, Some(q)),
                        None => (path, None),
                    };
                    let mut facts = RequestFacts {
                        method: &Method::POST,
                        path: p,
                        query,
                        key: Presented::Secret(key.as_bytes()),
                        content_type: ct.map(str::as_bytes),
                        content_type_repeated: false,
                        bad_content_length: false,
                        upgrade: Upgrade::None,
                        body: Body::Unread {
                            declared_len: body.map(|b| b.len() as u64),
                        },
                        now: NOW,
                        max_body: 1024,
                        max_data_body: 4096,
                        used_up: &nothing_used,
                    };
                    let first = decide(&w.table, &w.snap, &facts);
                    let counted_unread = first.outcome == Outcome::Allow
                        && first
                            .spend
                            .as_ref()
                            .is_some_and(|s| s.counted && !s.body_read);
                    if first.outcome != Outcome::ReadBody && !counted_unread {
                        continue;
                    }
                    facts.body = match body {
                        Some(b) if b.len() <= 4096 => Body::Read(b.as_bytes()),
                        _ => Body::TooLarge,
                    };
                    let full = decide_inner(&w.table, &w.snap, &facts, None);
                    if resumes(&w.table, &first) {
                        // The proxy does not read the key headers again.
                        facts.key = Presented::Missing;
                        resumed += 1;
                    }
                    let again = decide_read(&w.table, &w.snap, &facts, first);
                    assert_eq!(again, full, "{key} POST {path} {ct:?} {body:?}");
                    compared += 1;
                    if matches!(again.outcome, Outcome::Deny(_)) {
                        refused_late += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 300, "only {compared} second decisions compared");
    assert_eq!(
        resumed, compared,
        "every data-plane second decision resumes"
    );
    assert!(
        refused_late > 50,
        "only {refused_late} refused once the body was read"
    );
}

/// A control-plane write's body is read for the workspace it names: its
/// second decision starts over (as the key it identified), and gives what
/// a full decision gives.
#[test]
fn a_control_plane_body_is_decided_from_the_start() {
    let w = world();
    for body in [
        r#"{"workspace_id":"ws_prod"}"#,
        r#"{"workspace_id":"nope"}"#,
        "{",
        "{}",
    ] {
        let mut facts = RequestFacts {
            method: &Method::POST,
            path: "/v1/configs",
            query: None,
            key: Presented::Secret(b"admin"),
            content_type: Some(b"application/json"),
            content_type_repeated: false,
            bad_content_length: false,
            upgrade: Upgrade::None,
            body: Body::Unread {
                declared_len: Some(body.len() as u64),
            },
            now: NOW,
            max_body: 1024,
            max_data_body: 4096,
            used_up: &nothing_used,
        };
        let first = decide(&w.table, &w.snap, &facts);
        assert_eq!(first.outcome, Outcome::ReadBody, "{body}");
        assert!(!resumes(&w.table, &first));
        facts.body = Body::Read(body.as_bytes());
        let full = decide(&w.table, &w.snap, &facts);
        assert_eq!(
            decide_read(&w.table, &w.snap, &facts, first),
            full,
            "{body}"
        );
    }
}
