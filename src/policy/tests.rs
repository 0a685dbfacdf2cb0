//! Table tests of the decision: one per row of SPEC 5.1 and per rule of 5.3.

use super::*;
use crate::keys::{build_snapshot, digest_hex, KeysDocument};
use crate::routes::{RouteSpec, RouteTable};

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
        upgrade: Upgrade::None,
        body: r.body,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::policy::nothing_used,
    };
    decide(&w.table, &w.snap, &facts)
}

fn code(v: &Verdict) -> &'static str {
    match &v.outcome {
        Outcome::Allow => "allow",
        Outcome::ReadBody => "read_body",
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
        upgrade: Upgrade::None,
        body: Body::Empty,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::policy::nothing_used,
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
        upgrade,
        body: Body::Empty,
        now: NOW,
        max_body: 1024,
        max_data_body: 16 * 1024 * 1024,
        used_up: &crate::policy::nothing_used,
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
