//! The route table (the reference on the route table): methods + path pattern → plane + scopes.

use serde::Deserialize;

/// Which upstream a route goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    /// Completions upstream; workspace keys only.
    Data,
    /// Admin upstream.
    Control,
}

impl Plane {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Plane::Data => "data",
            Plane::Control => "control",
        }
    }
}

/// An extra route as written in the server config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// HTTP methods, upper case.
    pub methods: Vec<String>,
    /// Pattern; `{name}` matches one non-empty segment.
    pub path: String,
    /// `data` or `control`.
    pub plane: Plane,
    /// Any-of.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// All-of.
    #[serde(default)]
    pub scopes_all: Vec<String>,
    /// `websocket`: the route's `GET` may take `Upgrade: websocket`
    /// requests (then tunnelled, unchecked, after the upstream's `101`).
    /// Any other value is a config error; absent: no upgrades.
    #[serde(default)]
    pub upgrade: Option<String>,
    /// Data routes only: the route's `POST` is read, checked and counted
    /// exactly like the named built-in route (e.g. Azure's
    /// `/openai/deployments/{d}/chat/completions` as `chat`).
    #[serde(default)]
    pub meter: Option<UsageApi>,
}

/// Checks a route's `meter` against its plane, methods and `upgrade`.
///
/// # Errors
/// `meter` on a control-plane route, on a WebSocket route, or on a route
/// without `POST`.
pub(crate) fn check_meter(
    meter: Option<UsageApi>,
    plane: Plane,
    upgrade: Option<&str>,
    methods: &[String],
) -> Result<(), String> {
    let Some(api) = meter else { return Ok(()) };
    if plane == Plane::Control {
        return Err(format!(
            "`meter: {}` is for data-plane routes: control-plane answers carry no token usage",
            api.as_str()
        ));
    }
    if upgrade.is_some() {
        return Err(format!(
            "`meter: {}` cannot be combined with `upgrade`: the traffic of an upgraded \
             connection is never read, so it cannot be counted",
            api.as_str()
        ));
    }
    if !methods.iter().any(|m| m == "POST") {
        return Err(format!(
            "`meter: {}` counts POST requests, and this route has no POST",
            api.as_str()
        ));
    }
    Ok(())
}

/// The one `upgrade` value a route may name.
pub const UPGRADE_WEBSOCKET: &str = "websocket";

/// Checks a route's `upgrade` against its methods: `Ok(true)` when the
/// route's `GET` takes WebSocket upgrades.
///
/// # Errors
/// An unknown value, or a route without `GET`.
pub(crate) fn check_upgrade(upgrade: Option<&str>, methods: &[String]) -> Result<bool, String> {
    match upgrade {
        None => Ok(false),
        Some(UPGRADE_WEBSOCKET) if methods.iter().any(|m| m == "GET") => Ok(true),
        Some(UPGRADE_WEBSOCKET) => Err(
            "`upgrade: websocket` needs GET among the route's methods (a WebSocket handshake is a GET)"
                .to_string(),
        ),
        Some(other) => Err(format!(
            "`{}` is not an upgrade this proxy forwards: the only value is `websocket`",
            other.escape_debug()
        )),
    }
}

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::identity::scopes::{ScopeRegistry, ScopeSet};
use crate::limits::UsageApi;

/// Index of a route in [`RouteTable::routes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteIdx(pub u32);

/// What a route asks of a key's scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// At least one of these.
    AnyOf(ScopeSet),
    /// Every one of these.
    AllOf(ScopeSet),
}

impl Requirement {
    /// Whether `held` satisfies the requirement.
    pub fn is_met_by(&self, held: &ScopeSet) -> bool {
        match self {
            Requirement::AnyOf(s) => held.intersects(s),
            Requirement::AllOf(s) => held.contains_all(s),
        }
    }
}

/// One compiled route: a method on a pattern.
#[derive(Clone, Debug)]
pub struct Route {
    /// The pattern as written (the metrics `route` label).
    pub pattern: Arc<str>,
    /// The method.
    pub method: Method,
    /// Which upstream.
    pub plane: Plane,
    /// The scope check.
    pub requirement: Requirement,
    /// "scope `a`", "one of the scopes `a`, `b`", "all of the scopes ...":
    /// precomputed so a denial costs no formatting of the table.
    pub needs: Arc<str>,
    /// This (`GET`) route takes `Upgrade: websocket` requests (an extra
    /// route with `upgrade: websocket`); built-in routes never do.
    pub websocket: bool,
    /// The API whose token usage this route's answers report: the `POST`
    /// of a counted built-in pattern (whether served by the built-in route
    /// or an extra one on the same pattern), or of an extra route with
    /// `meter`. Such a request is read, checked and counted.
    pub usage: Option<UsageApi>,
    /// An inference route: the `POST` of the first two rows of the built-in
    /// data-plane table, or a metered route. A body read there must be JSON
    /// or multipart, and a key restricted by `models` must name a model.
    pub inference: bool,
    /// A route whose model and tokens the proxy cannot see (`POST
    /// /v1/batches`: the requests are in an uploaded file; `POST
    /// /v1/prompts/{id}/completions`: the stored prompt names them).
    pub opaque: bool,
}

/// Everything served on one path pattern.
#[derive(Clone, Debug)]
pub struct PathEntry {
    /// The pattern as written.
    pub pattern: Arc<str>,
    methods: Vec<(Method, RouteIdx)>,
    /// The `Allow` header value for 405s.
    pub allow: Arc<str>,
    /// Whether any route on this pattern is control-plane (then errors on
    /// this path use the Portkey shape).
    pub control: bool,
    /// The router's name of the `{workspace_id}` parameter, if the pattern has one.
    workspace_param: Option<Arc<str>>,
}

impl PathEntry {
    /// The route for a method, if any.
    pub fn route_for(&self, method: &Method) -> Option<RouteIdx> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, r)| *r)
    }
}

/// A path matched against the table.
#[derive(Clone, Copy, Debug)]
pub struct PathMatch<'t, 'p> {
    /// The matched pattern's entry.
    pub entry: &'t PathEntry,
    /// The value of the `{workspace_id}` parameter.
    pub workspace: Option<&'p str>,
}

/// A problem with the route table (extra routes from the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteProblem {
    /// Index in the config's `routes`, or `None` for the table as a whole.
    pub index: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The routes in force: built-in plus extra, compiled once at start.
#[derive(Clone, Debug)]
pub struct RouteTable {
    router: matchit::Router<usize>,
    entries: Vec<PathEntry>,
    routes: Vec<Route>,
    registry: ScopeRegistry,
}

/// A built-in route before compilation.
struct Builtin {
    methods: &'static [&'static str],
    path: String,
    plane: Plane,
    any: Vec<String>,
    all: Vec<String>,
}

fn data(methods: &'static [&'static str], path: &str, any: &[&str]) -> Builtin {
    Builtin {
        methods,
        path: path.to_string(),
        plane: Plane::Data,
        any: any.iter().map(|s| s.to_string()).collect(),
        all: Vec::new(),
    }
}

fn control(methods: &'static [&'static str], path: &str, any: &[&str]) -> Builtin {
    Builtin {
        plane: Plane::Control,
        ..data(methods, path, any)
    }
}

/// The inference routes: the `POST` routes of the first two rows of the
/// route table's data-plane part (completion, embedding, image and audio calls).
pub const INFERENCE_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/rerank",
    "/v1/moderations",
    "/v1/messages",
    "/v1/responses",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
];

/// Whether the proxy cannot see the model and tokens of a request on this
/// route (`POST /v1/batches`, `POST /v1/prompts/{id}/completions`, under
/// any parameter name).
pub fn is_opaque(method: &Method, pattern: &str) -> bool {
    if method != Method::POST {
        return false;
    }
    if pattern == "/v1/batches" {
        return true;
    }
    pattern
        .strip_prefix("/v1/prompts/{")
        .and_then(|rest| rest.strip_suffix("}/completions"))
        .is_some_and(|name| !name.is_empty() && !name.contains(['/', '{', '}']))
}

/// The built-in route table of the reference.
fn builtin_routes() -> Vec<Builtin> {
    const POST: &[&str] = &["POST"];
    const GET: &[&str] = &["GET"];
    const PUT: &[&str] = &["PUT"];
    const DELETE: &[&str] = &["DELETE"];
    const GET_POST: &[&str] = &["GET", "POST"];
    const GET_DELETE: &[&str] = &["GET", "DELETE"];
    const CW: &[&str] = &["completions.write"];
    let mut r = Vec::new();
    for p in INFERENCE_ROUTES
        .iter()
        .copied()
        .chain(["/v1/prompts/{id}/completions"])
    {
        r.push(data(POST, p, CW));
    }
    for p in ["/v1/files", "/v1/batches", "/v1/fine_tuning/jobs"] {
        r.push(data(GET_POST, p, CW));
    }
    for p in ["/v1/files/{id}", "/v1/responses/{id}"] {
        r.push(data(GET_DELETE, p, CW));
    }
    for p in [
        "/v1/files/{id}/content",
        "/v1/batches/{id}",
        "/v1/fine_tuning/jobs/{id}",
        "/v1/fine_tuning/jobs/{id}/events",
        "/v1/responses/{id}/input_items",
    ] {
        r.push(data(GET, p, CW));
    }
    for p in [
        "/v1/batches/{id}/cancel",
        "/v1/fine_tuning/jobs/{id}/cancel",
    ] {
        r.push(data(POST, p, CW));
    }
    r.push(data(POST, "/v1/prompts/{id}/render", &["prompts.render"]));
    r.push(data(
        GET,
        "/v1/models",
        &["completions.write", "virtual_keys.list"],
    ));
    r.push(Builtin {
        all: vec!["completions.write".into(), "logs.write".into()],
        ..data(POST, "/v1/logs", &[])
    });
    r.push(data(
        GET,
        "/v1/logs/{id}",
        &["logs.view", "completions.write", "logs.write"],
    ));
    r.push(data(POST, "/v1/feedback", &["logs.write"]));
    r.push(data(PUT, "/v1/feedback/{id}", &["logs.write"]));

    // Control plane: resource CRUD.
    let crud: &[(&str, &str, &str)] = &[
        ("/v1/admin/workspaces", "{workspace_id}", "workspaces"),
        (
            "/v1/admin/workspaces/{workspace_id}/users",
            "{user_id}",
            "workspace_users",
        ),
        ("/v1/admin/users", "{id}", "organisation_users"),
        ("/v1/configs", "{id}", "configs"),
        ("/v1/virtual-keys", "{id}", "virtual_keys"),
        ("/v1/providers", "{id}", "providers"),
        ("/v1/guardrails", "{id}", "guardrails"),
        ("/v1/prompts", "{id}", "prompts"),
        ("/v1/integrations", "{id}", "workspace_integrations"),
        ("/v1/mcp-servers", "{id}", "mcp_servers"),
        ("/v1/policies/usage-limits", "{id}", "policies"),
        ("/v1/policies/rate-limits", "{id}", "policies"),
    ];
    for (base, item, res) in crud {
        let item_path = format!("{base}/{item}");
        r.push(control(GET, base, &[&format!("{res}.list")]));
        r.push(control(POST, base, &[&format!("{res}.create")]));
        r.push(control(GET, &item_path, &[&format!("{res}.read")]));
        r.push(control(PUT, &item_path, &[&format!("{res}.update")]));
        r.push(control(DELETE, &item_path, &[&format!("{res}.delete")]));
    }
    const KEY_KINDS: [&str; 3] = [
        "organisation_service_api_keys",
        "workspace_service_api_keys",
        "workspace_user_api_keys",
    ];
    let any_key = |action: &str| -> Vec<String> {
        KEY_KINDS.iter().map(|k| format!("{k}.{action}")).collect()
    };
    r.push(control(
        POST,
        "/v1/admin/users/invites",
        &["organisation_users.create"],
    ));
    r.push(control(
        POST,
        "/v1/api-keys/organisation/service",
        &["organisation_service_api_keys.create"],
    ));
    r.push(control(
        POST,
        "/v1/api-keys/workspace/service",
        &["workspace_service_api_keys.create"],
    ));
    r.push(control(
        POST,
        "/v1/api-keys/workspace/user",
        &["workspace_user_api_keys.create"],
    ));
    for (methods, path, action) in [
        (GET, "/v1/api-keys", "list"),
        (GET, "/v1/api-keys/{id}", "read"),
        (PUT, "/v1/api-keys/{id}", "update"),
        (DELETE, "/v1/api-keys/{id}", "delete"),
        (POST, "/v1/api-keys/{id}/rotate", "rotate"),
    ] {
        r.push(Builtin {
            any: any_key(action),
            ..control(methods, path, &[])
        });
    }
    r.push(control(
        PUT,
        "/v1/prompts/{id}/makeDefault",
        &["prompts.publish"],
    ));
    r.push(control(GET, "/v1/analytics/{a}", &["analytics.view"]));
    r.push(control(GET, "/v1/analytics/{a}/{b}", &["analytics.view"]));
    r.push(control(GET, "/v1/logs/exports", &["logs.list"]));
    r.push(control(GET, "/v1/logs/exports/{id}", &["logs.view"]));
    for p in [
        "/v1/logs/exports",
        "/v1/logs/exports/{id}/start",
        "/v1/logs/exports/{id}/cancel",
    ] {
        r.push(control(POST, p, &["logs.export"]));
    }
    r.push(control(
        GET,
        "/v1/logs/exports/{id}/download",
        &["logs.export"],
    ));
    r.push(control(GET, "/v1/audit-logs", &["audit_logs.list"]));
    r
}

/// A pattern split into what the router needs.
struct Parsed {
    /// Parameters renamed by position (`{p2}`), so that patterns that differ
    /// only in parameter names are the same pattern.
    normalized: String,
    /// Router name of the `{workspace_id}` parameter.
    workspace_param: Option<String>,
}

/// Checks a pattern: absolute, no empty segments, `{name}` only as a whole
/// segment, no duplicate names.
fn parse_pattern(path: &str) -> Result<Parsed, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with `/`"));
    };
    let mut normalized = String::with_capacity(path.len());
    let mut names: Vec<&str> = Vec::new();
    let mut workspace_param = None;
    for (i, seg) in rest.split('/').enumerate() {
        normalized.push('/');
        if seg.is_empty() {
            return Err(format!("path `{path}` has an empty segment"));
        }
        if seg == "." || seg == ".." {
            return Err(format!("path `{path}` has a `{seg}` segment"));
        }
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if !is_identifier(name) {
                return Err(format!(
                    "path `{path}`: parameter `{{{name}}}` must be a name of letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!(
                    "path `{path}`: parameter `{{{name}}}` appears twice"
                ));
            }
            names.push(name);
            let router_name = format!("p{i}");
            if name == "workspace_id" {
                workspace_param = Some(router_name.clone());
            }
            normalized.push('{');
            normalized.push_str(&router_name);
            normalized.push('}');
        } else {
            if seg.contains(['{', '}', '*', '\\', '?', '#', '%'])
                || seg.chars().any(|c| c.is_control() || c == ' ')
            {
                return Err(format!(
                    "path `{path}`: segment `{seg}` may not contain `{{`, `}}`, `*`, `%`, `?`, `#`, `\\`, spaces or control characters; parameters are whole segments like `{{id}}`"
                ));
            }
            normalized.push_str(seg);
        }
    }
    Ok(Parsed {
        normalized,
        workspace_param,
    })
}

/// A name of ASCII letters, digits and `_` that does not start with a digit:
/// route parameters and `${NAME}` in the server config.
pub(crate) fn is_identifier(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a pattern and returns it with parameters renamed by position, so
/// that `/x/{a}` and `/x/{b}` compare equal (the config uses it to find
/// duplicate extra routes).
///
/// # Errors
/// What is wrong with the pattern.
pub(crate) fn normalize_pattern(path: &str) -> Result<String, String> {
    parse_pattern(path).map(|p| p.normalized)
}

fn parse_method(m: &str) -> Result<Method, String> {
    let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
    if !valid {
        return Err(format!(
            "method `{m}` must be an upper-case HTTP method such as GET or POST"
        ));
    }
    Method::from_bytes(m.as_bytes()).map_err(|_| format!("method `{m}` is not a valid HTTP method"))
}

fn describe_needs(any: &[String], all: &[String]) -> String {
    let quote = |v: &[String]| {
        v.iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !all.is_empty() {
        if all.len() == 1 {
            format!("scope {}", quote(all))
        } else {
            format!("all of the scopes {}", quote(all))
        }
    } else if any.len() == 1 {
        format!("scope {}", quote(any))
    } else {
        format!("one of the scopes {}", quote(any))
    }
}

/// A route before compilation into the router.
struct Pending {
    methods: Vec<Method>,
    pattern: String,
    parsed: Parsed,
    plane: Plane,
    any: Vec<String>,
    all: Vec<String>,
    websocket: bool,
    meter: Option<UsageApi>,
}

/// The built-in routes, parsed.
fn builtin_pending(problems: &mut Vec<RouteProblem>) -> Vec<Pending> {
    let mut pending = Vec::new();
    for b in builtin_routes() {
        match parse_pattern(&b.path) {
            Ok(parsed) => pending.push(Pending {
                methods: b
                    .methods
                    .iter()
                    .filter_map(|m| parse_method(m).ok())
                    .collect(),
                pattern: b.path,
                parsed,
                plane: b.plane,
                any: b.any,
                all: b.all,
                websocket: false,
                meter: None,
            }),
            Err(message) => problems.push(RouteProblem {
                index: None,
                message,
            }),
        }
    }
    pending
}

/// One extra route of the config, checked: every problem goes to `bad`;
/// `None` when its pattern cannot be parsed.
fn extra_pending(spec: &RouteSpec, bad: &mut dyn FnMut(String)) -> Option<Pending> {
    let parsed = match parse_pattern(&spec.path) {
        Ok(p) => Some(p),
        Err(m) => {
            bad(m);
            None
        }
    };
    let mut methods = Vec::new();
    if spec.methods.is_empty() {
        bad("a route needs at least one method".to_string());
    }
    for m in &spec.methods {
        match parse_method(m) {
            Ok(m) => methods.push(m),
            Err(e) => bad(e),
        }
    }
    match (spec.scopes.is_empty(), spec.scopes_all.is_empty()) {
        (true, true) => bad("a route needs `scopes` (any of) or `scopes_all` (all of)".to_string()),
        (false, false) => {
            bad("give either `scopes` (any of) or `scopes_all` (all of), not both".to_string())
        }
        _ => {}
    }
    for s in spec.scopes.iter().chain(&spec.scopes_all) {
        if s.is_empty() || s.contains('*') {
            bad(format!(
                "route scope `{s}` must be a plain scope name (no wildcards)"
            ));
        }
    }
    let websocket = check_upgrade(spec.upgrade.as_deref(), &spec.methods).unwrap_or_else(|m| {
        bad(m);
        false
    });
    if let Err(m) = check_meter(
        spec.meter,
        spec.plane,
        spec.upgrade.as_deref(),
        &spec.methods,
    ) {
        bad(m);
    }
    Some(Pending {
        methods,
        pattern: spec.path.clone(),
        parsed: parsed?,
        plane: spec.plane,
        any: spec.scopes.clone(),
        all: spec.scopes_all.clone(),
        websocket,
        meter: spec.meter,
    })
}

/// The scope registry: the vocabulary, plus the scopes extra routes name
/// that are not in it (custom scopes).
fn registry_with(extra: &[Pending]) -> Result<ScopeRegistry, Vec<RouteProblem>> {
    let builtin = ScopeRegistry::builtin();
    let custom: Vec<&str> = extra
        .iter()
        .flat_map(|p| p.any.iter().chain(&p.all))
        .map(String::as_str)
        .filter(|s| builtin.id(s).is_none())
        .collect();
    ScopeRegistry::with_custom(custom).map_err(|message| {
        vec![RouteProblem {
            index: None,
            message,
        }]
    })
}

impl RouteTable {
    /// Builds the table from the built-in routes (when `builtin`) and the
    /// config's extra routes, which win over a built-in route with the same
    /// method and pattern.
    ///
    /// Scopes named by extra routes that are not in the vocabulary become
    /// custom scopes of the returned table's registry.
    ///
    /// # Errors
    /// Every malformed extra route, with its index.
    pub fn build(extra: &[RouteSpec], builtin: bool) -> Result<RouteTable, Vec<RouteProblem>> {
        let mut problems = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        if builtin {
            pending.extend(builtin_pending(&mut problems));
        }
        let builtin_count = pending.len();
        for (i, spec) in extra.iter().enumerate() {
            let mut bad = |message: String| {
                problems.push(RouteProblem {
                    index: Some(i),
                    message,
                })
            };
            pending.extend(extra_pending(spec, &mut bad));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut table = RouteTable {
            router: matchit::Router::new(),
            entries: Vec::new(),
            routes: Vec::new(),
            registry: registry_with(&pending[builtin_count..])?,
        };
        let mut by_normalized: HashMap<String, usize> = HashMap::new();
        for p in pending {
            table.add(p, &mut by_normalized)?;
        }
        for entry in &mut table.entries {
            entry.control = entry
                .methods
                .iter()
                .any(|(_, r)| table.routes[r.0 as usize].plane == Plane::Control);
            let mut names: Vec<&str> = entry.methods.iter().map(|(m, _)| m.as_str()).collect();
            names.sort_by_key(|m| method_order(m));
            entry.allow = names.join(", ").into();
        }
        Ok(table)
    }

    /// Adds one route's methods, under the entry of its (normalized) pattern.
    fn add(
        &mut self,
        p: Pending,
        by_normalized: &mut HashMap<String, usize>,
    ) -> Result<(), Vec<RouteProblem>> {
        let mut set = ScopeSet::EMPTY;
        for s in p.any.iter().chain(&p.all) {
            if let Some(id) = self.registry.id(s) {
                set.insert(id);
            }
        }
        let requirement = if p.all.is_empty() {
            Requirement::AnyOf(set)
        } else {
            Requirement::AllOf(set)
        };
        let needs: Arc<str> = describe_needs(&p.any, &p.all).into();
        let entry_idx = match by_normalized.get(&p.parsed.normalized) {
            Some(i) => *i,
            None => {
                let idx = self.entries.len();
                self.router
                    .insert(p.parsed.normalized.clone(), idx)
                    .map_err(|e| {
                        vec![RouteProblem {
                            index: None,
                            message: format!("route `{}` conflicts: {e}", p.pattern),
                        }]
                    })?;
                self.entries.push(PathEntry {
                    pattern: p.pattern.as_str().into(),
                    methods: Vec::new(),
                    allow: "".into(),
                    control: false,
                    workspace_param: p.parsed.workspace_param.as_deref().map(Into::into),
                });
                by_normalized.insert(p.parsed.normalized.clone(), idx);
                idx
            }
        };
        let pattern: Arc<str> = p.pattern.as_str().into();
        for method in p.methods {
            let route_idx = RouteIdx(self.routes.len() as u32);
            let post_data = method == Method::POST && p.plane == Plane::Data;
            let usage = post_data
                .then(|| p.meter.or_else(|| UsageApi::of_builtin(&p.pattern)))
                .flatten();
            self.routes.push(Route {
                pattern: pattern.clone(),
                method: method.clone(),
                plane: p.plane,
                requirement,
                needs: needs.clone(),
                websocket: p.websocket && method == Method::GET,
                usage,
                inference: post_data
                    && (usage.is_some() || INFERENCE_ROUTES.contains(&p.pattern.as_str())),
                opaque: p.plane == Plane::Data && is_opaque(&method, &p.pattern),
            });
            let entry = &mut self.entries[entry_idx];
            // Later routes (extra) replace earlier ones (built-in).
            if let Some(slot) = entry.methods.iter_mut().find(|(m, _)| *m == method) {
                slot.1 = route_idx;
            } else {
                entry.methods.push((method, route_idx));
            }
        }
        Ok(())
    }

    /// Matches a (canonical) path to its pattern.
    pub fn match_path<'t, 'p>(&'t self, path: &'p str) -> Option<PathMatch<'t, 'p>> {
        let m = self.router.at(path).ok()?;
        let entry = &self.entries[*m.value];
        let workspace = entry
            .workspace_param
            .as_deref()
            .and_then(|name| m.params.get(name));
        Some(PathMatch { entry, workspace })
    }

    /// A route by index.
    pub fn route(&self, idx: RouteIdx) -> &Route {
        &self.routes[idx.0 as usize]
    }

    /// Every route, for documentation and `explain`.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The scope registry routes were compiled against (vocabulary plus the
    /// custom scopes extra routes name). Keys snapshots must be built with it.
    pub fn registry(&self) -> &ScopeRegistry {
        &self.registry
    }

    /// Custom scopes named by extra routes (not in the vocabulary).
    pub fn custom_scopes(&self) -> impl Iterator<Item = &str> {
        self.registry
            .ids()
            .map(|id| self.registry.name(id))
            .filter(|n| !self.registry.is_builtin(n))
    }
}

fn method_order(m: &str) -> usize {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .iter()
        .position(|x| *x == m)
        .unwrap_or(99)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::build(&[], true).expect("builtin table builds")
    }

    fn route_of(t: &RouteTable, method: &str, path: &str) -> Option<Arc<str>> {
        let m = t.match_path(path)?;
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        m.entry
            .route_for(&method)
            .map(|r| t.route(r).pattern.clone())
    }

    #[test]
    fn literal_beats_parameter() {
        let t = table();
        assert_eq!(
            route_of(&t, "GET", "/v1/logs/exports").as_deref(),
            Some("/v1/logs/exports")
        );
        assert_eq!(
            route_of(&t, "GET", "/v1/logs/abc").as_deref(),
            Some("/v1/logs/{id}")
        );
    }

    #[test]
    fn literal_match_with_wrong_method_does_not_fall_back() {
        let t = table();
        let m = t.match_path("/v1/admin/users/invites").expect("matches");
        assert_eq!(&*m.entry.pattern, "/v1/admin/users/invites");
        assert!(m.entry.route_for(&Method::GET).is_none());
        assert_eq!(&*m.entry.allow, "POST");
    }

    #[test]
    fn parameter_is_one_non_empty_segment() {
        let t = table();
        assert!(t.match_path("/v1/files/").is_none());
        assert!(t.match_path("/v1/files/a/b").is_none());
        assert!(t.match_path("/v1/files/a").is_some());
        assert!(t.match_path("/v1/chat/completions/").is_none());
    }

    #[test]
    fn workspace_parameter_is_extracted() {
        let t = table();
        let m = t
            .match_path("/v1/admin/workspaces/ws_1/users/u1")
            .expect("matches");
        assert_eq!(m.workspace, Some("ws_1"));
        assert_eq!(&*m.entry.allow, "GET, PUT, DELETE");
        let m = t.match_path("/v1/admin/workspaces").expect("matches");
        assert_eq!(m.workspace, None);
        assert!(m.entry.control);
    }

    #[test]
    fn extra_route_wins_over_builtin_and_adds_custom_scope() {
        let extra = vec![
            RouteSpec {
                methods: vec!["GET".into()],
                path: "/v1/files/{file}".into(),
                plane: Plane::Data,
                scopes: vec!["files.read".into()],
                scopes_all: vec![],
                upgrade: None,
                meter: None,
            },
            RouteSpec {
                methods: vec!["GET".into()],
                path: "/v1/x/{workspace_id}".into(),
                plane: Plane::Control,
                scopes: vec![],
                scopes_all: vec!["x.read".into(), "configs.read".into()],
                upgrade: None,
                meter: None,
            },
        ];
        let t = RouteTable::build(&extra, true).expect("builds");
        let m = t.match_path("/v1/files/abc").expect("matches");
        let r = t.route(m.entry.route_for(&Method::GET).expect("get"));
        assert_eq!(&*r.pattern, "/v1/files/{file}");
        assert!(t.registry().id("files.read").is_some());
        assert_eq!(&*m.entry.allow, "GET, DELETE");
        assert_eq!(t.match_path("/v1/x/ws").expect("m").workspace, Some("ws"));
        assert_eq!(
            t.custom_scopes().collect::<Vec<_>>(),
            vec!["files.read", "x.read"]
        );
    }

    #[test]
    fn builtin_off_serves_only_extra_routes() {
        let extra = vec![RouteSpec {
            methods: vec!["POST".into()],
            path: "/v1/chat/completions".into(),
            plane: Plane::Data,
            scopes: vec!["completions.write".into()],
            scopes_all: vec![],
            upgrade: None,
            meter: None,
        }];
        let t = RouteTable::build(&extra, false).expect("builds");
        assert!(t.match_path("/v1/chat/completions").is_some());
        assert!(t.match_path("/v1/models").is_none());
    }

    #[test]
    fn bad_extra_routes_are_all_reported() {
        let extra = vec![
            RouteSpec {
                methods: vec!["get".into()],
                path: "v1/x".into(),
                plane: Plane::Data,
                scopes: vec![],
                scopes_all: vec![],
                upgrade: None,
                meter: None,
            },
            RouteSpec {
                methods: vec!["GET".into()],
                path: "/v1//y/{a}/{a}".into(),
                plane: Plane::Data,
                scopes: vec!["a.b".into()],
                scopes_all: vec!["c.d".into()],
                upgrade: None,
                meter: None,
            },
        ];
        let problems = RouteTable::build(&extra, true).expect_err("invalid");
        assert!(problems.len() >= 4, "{problems:?}");
        assert!(problems.iter().all(|p| p.index.is_some()));
    }

    #[test]
    fn upgrade_websocket_marks_only_the_get_route_of_its_spec() {
        let spec = |methods: &[&str], upgrade: Option<&str>| RouteSpec {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: "/v1/rt".into(),
            plane: Plane::Data,
            scopes: vec!["completions.write".into()],
            scopes_all: vec![],
            upgrade: upgrade.map(str::to_string),
            meter: None,
        };
        let t =
            RouteTable::build(&[spec(&["GET", "POST"], Some("websocket"))], true).expect("builds");
        let m = t.match_path("/v1/rt").expect("matches");
        let get = t.route(m.entry.route_for(&Method::GET).expect("get"));
        let post = t.route(m.entry.route_for(&Method::POST).expect("post"));
        assert!(get.websocket);
        assert!(!post.websocket);
        assert!(table().routes().iter().all(|r| !r.websocket));
        for bad in [
            spec(&["GET"], Some("h2c")),
            spec(&["GET"], Some("WebSocket")),
            spec(&["POST"], Some("websocket")),
        ] {
            let problems = RouteTable::build(&[bad], true).expect_err("invalid");
            assert_eq!(problems.len(), 1, "{problems:?}");
        }
    }

    fn post_route<'t>(t: &'t RouteTable, path: &str) -> &'t Route {
        let m = t.match_path(path).expect("matches");
        t.route(m.entry.route_for(&Method::POST).expect("post"))
    }

    #[test]
    fn only_posts_to_the_five_usage_apis_are_counted() {
        let t = table();
        for api in UsageApi::ALL {
            let r = post_route(&t, api.builtin_path());
            assert_eq!(r.usage, Some(api), "{}", api.builtin_path());
            assert!(r.inference);
            assert_eq!(UsageApi::of_builtin(api.builtin_path()), Some(api));
        }
        for p in [
            "/v1/rerank",
            "/v1/moderations",
            "/v1/images/generations",
            "/v1/audio/speech",
            "/v1/batches",
            "/v1/prompts/p/completions",
            "/v1/files",
        ] {
            assert_eq!(post_route(&t, p).usage, None, "{p}");
        }
        assert!(t
            .routes()
            .iter()
            .all(|r| r.method == Method::POST || r.usage.is_none()));
    }

    #[test]
    fn inference_routes_are_the_posts_of_the_first_two_rows() {
        let t = table();
        assert_eq!(INFERENCE_ROUTES.len(), 13);
        let inference: Vec<&str> = t
            .routes()
            .iter()
            .filter(|r| r.inference)
            .map(|r| &*r.pattern)
            .collect();
        assert_eq!(inference, INFERENCE_ROUTES);
    }

    #[test]
    fn batches_and_prompt_completions_are_opaque() {
        let t = table();
        let opaque: Vec<(&Method, &str)> = t
            .routes()
            .iter()
            .filter(|r| r.opaque)
            .map(|r| (&r.method, &*r.pattern))
            .collect();
        assert_eq!(
            opaque,
            [
                (&Method::POST, "/v1/prompts/{id}/completions"),
                (&Method::POST, "/v1/batches"),
            ]
        );
        assert!(is_opaque(
            &Method::POST,
            "/v1/prompts/{prompt_id}/completions"
        ));
        assert!(!is_opaque(&Method::GET, "/v1/batches"));
        assert!(!is_opaque(&Method::POST, "/v1/batches/{id}/cancel"));
        assert!(!is_opaque(&Method::POST, "/v1/prompts/{id}/render"));
        assert!(!is_opaque(&Method::POST, "/v1/prompts/x/completions"));
        assert!(!is_opaque(&Method::POST, "/v1/prompts/{}/completions"));
        assert!(!is_opaque(
            &Method::POST,
            "/v1/prompts/{a}/b/{c}/completions"
        ));
    }

    fn spec(methods: &[&str], path: &str, plane: Plane, meter: Option<UsageApi>) -> RouteSpec {
        RouteSpec {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.into(),
            plane,
            scopes: vec!["completions.write".into()],
            scopes_all: vec![],
            upgrade: None,
            meter,
        }
    }

    #[test]
    fn a_metered_extra_route_is_counted_and_an_inference_route() {
        let azure = "/openai/deployments/{d}/chat/completions";
        let extra = [
            spec(&["GET", "POST"], azure, Plane::Data, Some(UsageApi::Chat)),
            spec(
                &["POST"],
                "/x/embed",
                Plane::Data,
                Some(UsageApi::Embeddings),
            ),
            spec(&["POST"], "/x/plain", Plane::Data, None),
            // Same pattern as a counted built-in route: counted like it.
            spec(&["POST"], "/v1/messages", Plane::Data, None),
            spec(&["POST"], "/v1/batches", Plane::Data, None),
        ];
        let t = RouteTable::build(&extra, true).expect("builds");
        let post = post_route(&t, "/openai/deployments/gpt/chat/completions");
        assert_eq!((post.usage, post.inference), (Some(UsageApi::Chat), true));
        let m = t
            .match_path("/openai/deployments/gpt/chat/completions")
            .expect("m");
        let get = t.route(m.entry.route_for(&Method::GET).expect("get"));
        assert_eq!((get.usage, get.inference), (None, false));
        assert_eq!(post_route(&t, "/x/embed").usage, Some(UsageApi::Embeddings));
        let plain = post_route(&t, "/x/plain");
        assert_eq!(
            (plain.usage, plain.inference, plain.opaque),
            (None, false, false)
        );
        assert_eq!(
            post_route(&t, "/v1/messages").usage,
            Some(UsageApi::Messages)
        );
        assert!(post_route(&t, "/v1/batches").opaque);
    }

    #[test]
    fn meter_is_refused_on_control_upgrade_and_post_less_routes() {
        let mut ws = spec(&["GET", "POST"], "/rt", Plane::Data, Some(UsageApi::Chat));
        ws.upgrade = Some("websocket".into());
        for (bad, says) in [
            (
                spec(&["POST"], "/c", Plane::Control, Some(UsageApi::Chat)),
                "data-plane routes",
            ),
            (ws, "cannot be combined with `upgrade`"),
            (
                spec(&["GET"], "/g", Plane::Data, Some(UsageApi::Responses)),
                "has no POST",
            ),
        ] {
            let problems = RouteTable::build(&[bad], true).expect_err("invalid");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].message.contains(says), "{problems:?}");
        }
    }

    #[test]
    fn usage_apis_read_from_yaml_and_say_what_they_generate() {
        let spec: RouteSpec = serde_yaml::from_str(
            "{methods: [POST], path: /a, plane: data, scopes: [x.y], meter: responses}",
        )
        .expect("yaml");
        assert_eq!(spec.meter, Some(UsageApi::Responses));
        assert!(serde_yaml::from_str::<RouteSpec>(
            "{methods: [POST], path: /a, plane: data, scopes: [x.y], meter: Chat}"
        )
        .is_err());
        assert!(!UsageApi::Embeddings.generates_text());
        assert!(UsageApi::ALL
            .iter()
            .filter(|a| **a != UsageApi::Embeddings)
            .all(|a| a.generates_text()));
        let injecting: Vec<_> = UsageApi::ALL
            .into_iter()
            .filter(|a| a.injects_stream_usage())
            .collect();
        assert_eq!(injecting, [UsageApi::Chat, UsageApi::Completions]);
    }

    #[test]
    fn api_key_routes_resolve_literal_then_parameter() {
        let t = table();
        assert_eq!(
            route_of(&t, "POST", "/v1/api-keys/organisation/service").as_deref(),
            Some("/v1/api-keys/organisation/service")
        );
        assert_eq!(
            route_of(&t, "POST", "/v1/api-keys/key_1/rotate").as_deref(),
            Some("/v1/api-keys/{id}/rotate")
        );
        assert_eq!(
            route_of(&t, "GET", "/v1/api-keys/organisation").as_deref(),
            Some("/v1/api-keys/{id}")
        );
    }
}
