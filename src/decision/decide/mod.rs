//! The decision (the reference on deciding a request): a pure function from request facts, the
//! route table and a keys snapshot to a verdict. No I/O, no clock, no
//! locks: the proxy, `explain`, tests and benches all call the same code.

use http::Method;

use crate::decision::errors::{Denial, ErrorCode, ErrorShape};
use crate::decision::key_view;
use crate::decision::request::{self, BodyWorkspace, Media, Presented, Upgrade};
use crate::decision::routes::{PathMatch, Plane, Route, RouteIdx, RouteTable};
use crate::identity::keys::{KeyIdx, KeyStatus, OrgIdx, Snapshot, UnixMillis, WsIdx};
use crate::identity::scopes::{KeyType, ScopeSet};
use crate::identity::token::{Failure, TokenError, VerifiedIdentity};
use crate::limits::UsageApi;
use crate::limits::{Limits, PriceTable, Scope, UsageKind, UsageLimit};

/// What the decision knows about a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// The request has no body (no `Content-Length` above 0, not chunked).
    Empty,
    /// A body may follow and has not been read; `Content-Length` if given.
    Unread {
        /// The declared length, if any.
        declared_len: Option<u64>,
    },
    /// The whole body, read.
    Read(&'a [u8]),
    /// The body turned out larger than the inspection limit.
    TooLarge,
}

/// Everything the decision looks at.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The raw path, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The API key as presented.
    pub key: Presented<'a>,
    /// The `Content-Type` header (the first, when repeated).
    pub content_type: Option<&'a [u8]>,
    /// `Content-Type` was sent more than once: a body that must be
    /// inspected is then refused (415), since upstream frameworks differ on
    /// which one they read.
    pub content_type_repeated: bool,
    /// `Content-Length` is repeated, a list or not a number
    /// ([`request::content_length`]): 400 `invalid_request`, right after
    /// the path check.
    pub bad_content_length: bool,
    /// What the `Upgrade` header asks for ([`request::upgrade_of`]): the
    /// tunnel after a `101` carries unchecked traffic, so only a WebSocket
    /// upgrade on a route that opts in passes.
    pub upgrade: Upgrade,
    /// The body, as far as known.
    pub body: Body<'a>,
    /// Wall-clock time, for expiry.
    pub now: UnixMillis,
    /// `max_inspect_body_bytes`.
    pub max_body: usize,
    /// `max_data_body_bytes` (the reference on which data-plane bodies are read).
    pub max_data_body: usize,
    /// Whether a usage limit is used up already (counters read beforehand,
    /// in memory): `(scope, id, limit)`.
    pub used_up: &'a (dyn Fn(Scope, &str, &UsageLimit) -> bool + Sync),
}

/// A `used_up` that never says yes (tests, `explain` without a store).
pub fn nothing_used(_: Scope, _: &str, _: &UsageLimit) -> bool {
    false
}

/// What an allowed data-plane request needs for accounting (the reference on usage counting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    /// The body was read and must be forwarded by the proxy.
    pub body_read: bool,
    /// Body length (read, or declared).
    pub body_len: u64,
    /// The API whose usage the route's answers report (`Route::usage`).
    pub usage: Option<UsageApi>,
    /// The request is counted: `usage` is set and the key or its workspace
    /// has token rate limits or a usage limit. Its body was read (or it has
    /// none), and the proxy forwards it itself so its answer is metered.
    pub counted: bool,
    /// The top-level `model` of a JSON body, or the first multipart one.
    pub model: Option<String>,
    /// The requested maximum output, if any.
    pub max_output: Option<u64>,
    /// `n` of a JSON body, if given.
    pub n: Option<u64>,
    /// `"stream": true` in a JSON body.
    pub stream: bool,
    /// `stream_options.include_usage` as the client set it.
    pub include_usage: Option<bool>,
}

/// The result for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it (subject to the key's rate limit).
    Allow,
    /// Read the body (at most `max_body` bytes) and decide again.
    ReadBody,
    /// Refuse it.
    Deny(Denial),
    /// `GET /v1/scopegate/key` by a valid key: the proxy answers with the
    /// key's own view (`decision::key_view`), never forwarded, counted in
    /// no limit.
    KeyView {
        /// When the presented secret stops working (a secret under
        /// rotation), if it does.
        secret_expires: Option<UnixMillis>,
    },
}

/// The verdict with what was learnt on the way (for headers, logs, metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, read the body, or deny.
    pub outcome: Outcome,
    /// The error body shape for this path.
    pub shape: ErrorShape,
    /// The matched route, once known.
    pub route: Option<RouteIdx>,
    /// The plane of the path, once known (for metrics when the method is unknown).
    pub plane: Option<Plane>,
    /// The matched path pattern (the metrics `route` label), even on a 405.
    pub pattern: Option<std::sync::Arc<str>>,
    /// The key, once identified.
    pub key: Option<KeyIdx>,
    /// The identity token, once verified: the caller when `key` is `None`
    /// (docs/reference.md#identity-tokens).
    pub token: Option<std::sync::Arc<VerifiedIdentity>>,
    /// The workspace the request acts in (canonical), once known; `None`
    /// for organisation-wide admin requests.
    pub workspace: Option<WsIdx>,
    /// Allowed data-plane requests: what accounting needs.
    pub spend: Option<Spend>,
}

/// Why the decision stopped before its last step.
enum Stop {
    /// A step refused the request.
    Deny(Denial),
    /// A step needs the body: read it and decide again.
    ReadBody,
    /// The proxy answers with the key's own view.
    KeyView(Option<UnixMillis>),
}

/// What a step gives the next one, or why the decision stops.
type Step<T> = Result<T, Stop>;

/// A refusal with its code and words.
fn deny(code: ErrorCode, message: impl Into<String>) -> Stop {
    Stop::Deny(Denial::new(code, message))
}

/// Decides a request. See docs/reference.md#the-decision for the order; the
/// first failing step answers.
pub fn decide(table: &RouteTable, snap: &Snapshot, facts: &RequestFacts<'_>) -> Verdict {
    decide_inner(table, snap, facts, None)
}

/// Decides a request as if `key` had presented a valid secret (for
/// `scopegate explain`, which knows key ids, never secrets). Key expiry and
/// status still apply; per-secret rotation windows do not.
pub fn decide_as(
    table: &RouteTable,
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    key: KeyIdx,
) -> Verdict {
    decide_inner(table, snap, facts, Some(key))
}

/// Decides again once the body is read (`facts.body` is [`Body::Read`] or
/// [`Body::TooLarge`]), given `first`, the same request's decision on the
/// same facts before its body (it asked for the body, or allowed a counted
/// request whose body the proxy reads to forward it).
///
/// A data-plane request that got as far as step 7 resumes there: steps 1
/// to 6 read no data-plane body, so they give what they gave (the key and
/// its secret are not looked up again, and `facts.key` is not read). Any
/// other decides from the start, as `first.key` when a key was identified.
pub fn decide_read(
    table: &RouteTable,
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    mut first: Verdict,
) -> Verdict {
    let Some(step) = resume(table, snap, facts, &first) else {
        return decide_inner(table, snap, facts, first.key);
    };
    first.outcome = Outcome::Allow;
    first.spend = None;
    match step {
        Ok(spend) => first.spend = Some(spend),
        Err(stop) => first.outcome = stop.into_outcome(),
    }
    first
}

/// Whether [`decide_read`] resumes `first` at step 7 (and reads no
/// `facts.key`).
pub fn resumes(table: &RouteTable, first: &Verdict) -> bool {
    matches!(first.outcome, Outcome::ReadBody | Outcome::Allow)
        && first.plane == Some(Plane::Data)
        && first
            .route
            .is_some_and(|r| table.route(r).plane == Plane::Data)
        && (first.token.is_some() || first.key.is_some())
}

/// Step 7 again, with the body, for a verdict [`resumes`] takes.
fn resume(
    table: &RouteTable,
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    first: &Verdict,
) -> Option<Step<Spend>> {
    if !resumes(table, first) {
        return None;
    }
    let route = table.route(first.route?);
    let caller = match (&first.token, first.key) {
        (Some(id), _) => Caller::of_token(id),
        (None, Some(k)) => Caller::of_key(snap, k),
        (None, None) => return None,
    };
    let ws_limits = caller.workspace.map(|w| &snap.workspace(w).limits);
    let prices = snap.model_prices();
    Some(data_plane(facts, route, (caller.limits, ws_limits), prices))
}

impl Stop {
    fn into_outcome(self) -> Outcome {
        match self {
            Stop::Deny(d) => Outcome::Deny(d),
            Stop::ReadBody => Outcome::ReadBody,
            Stop::KeyView(secret_expires) => Outcome::KeyView { secret_expires },
        }
    }
}

fn decide_inner(
    table: &RouteTable,
    snap: &Snapshot,
    facts: &RequestFacts<'_>,
    known: Option<KeyIdx>,
) -> Verdict {
    let mut v = Verdict {
        outcome: Outcome::Allow,
        shape: ErrorShape::OpenAi,
        route: None,
        plane: None,
        pattern: None,
        key: None,
        token: None,
        workspace: None,
        spend: None,
    };
    if let Err(stop) = steps(table, snap, facts, known, &mut v) {
        v.outcome = stop.into_outcome();
    }
    v
}

/// The decision table, a step a line: each refuses by returning early, and
/// records in `v` what it learnt (shape, route, key, workspace) so that a
/// refusal further down is answered in the right shape and logged with it.
fn steps<'c>(
    table: &RouteTable,
    snap: &'c Snapshot,
    facts: &RequestFacts<'c>,
    known: Option<KeyIdx>,
    v: &mut Verdict,
) -> Step<()> {
    // 1. A canonical path and query, one Content-Length (400).
    let path_match = canonical(table, facts, v)?;
    // 2. A known key (or a verified token), not expired, not revoked (401,
    // 503 for a token whose keys are not loaded yet).
    let caller = identify(snap, facts, known, v)?;
    // The key's own view: valid credentials are all it needs.
    if facts.path == key_view::PATH {
        // A key's secret may expire before the key; a token at its `exp`.
        let expires = match (&v.token, v.key) {
            (Some(id), _) => Some(id.expires_at),
            (None, Some(key_idx)) => secret_expiry(snap, facts, key_idx),
            (None, None) => None,
        };
        return Err(own_view(facts, expires));
    }
    // 3. A route for the path and the method, upgrades where allowed (404, 405, 400).
    let (m, route) = route_and_method(table, path_match, facts, v)?;
    // 4. The key may call it: key type, budget, scopes, tunnels (403, 412).
    let (key_limits, ws_limits) = key_may_call(snap, &caller, route, facts)?;
    // 5. A control-plane write's body: JSON, inspected (415, 413, 400).
    let body_ws = control_body(route, facts)?;
    // 6. One workspace, one the key may act in (409, 403, 404).
    v.workspace = workspace(snap, &caller, &m, body_ws, facts)?;
    // 7. Data plane: the body where limits need it, models, metering.
    if route.plane == Plane::Data {
        let prices = snap.model_prices();
        v.spend = Some(data_plane(facts, route, (key_limits, ws_limits), prices)?);
    }
    Ok(())
}

/// Step 1: the path is canonical, the query is ASCII without controls, and
/// `Content-Length` is one number. Returns the path's match, if any, and
/// sets the shape, plane and pattern it implies.
fn canonical<'t, 'p>(
    table: &'t RouteTable,
    facts: &RequestFacts<'p>,
    v: &mut Verdict,
) -> Step<Option<PathMatch<'t, 'p>>> {
    if let Some(reason) = request::non_canonical_reason(facts.path)
        .or_else(|| facts.query.and_then(request::invalid_query_reason))
    {
        return Err(deny(
            ErrorCode::InvalidPath,
            format!("Invalid path: {reason}."),
        ));
    }
    if facts.path == key_view::PATH {
        // Answered by the proxy whatever the route table holds.
        v.plane = Some(Plane::Data);
        v.pattern = Some(std::sync::Arc::from(key_view::PATH));
    }
    let path_match = if facts.path == key_view::PATH {
        None
    } else {
        table.match_path(facts.path)
    };
    if let Some(m) = &path_match {
        if m.entry.control {
            v.shape = ErrorShape::Portkey;
        }
        v.plane = Some(if m.entry.control {
            Plane::Control
        } else {
            Plane::Data
        });
        v.pattern = Some(m.entry.pattern.clone());
    }
    // An HTTP/1.1 upstream could frame the body otherwise than the proxy
    // (and pingora reconciles equal duplicates, which upstreams need not).
    if facts.bad_content_length {
        return Err(deny(
            ErrorCode::InvalidRequest,
            "Content-Length must be sent once, as one decimal number.",
        ));
    }
    Ok(path_match)
}

/// Who is calling, as the steps after [`identify`] see it: a key of the
/// snapshot, or a verified identity token acting as a workspace key of its
/// organisation's `key_type` (docs/reference.md#identity-tokens).
struct Caller<'c> {
    key_type: KeyType,
    organisation: OrgIdx,
    workspace: Option<WsIdx>,
    scopes: &'c ScopeSet,
    status: KeyStatus,
    /// Its own limits (a token's apply per subject).
    limits: &'c Limits,
    /// Whose counters its own limits use.
    counter: (Scope, &'c str),
}

impl<'c> Caller<'c> {
    fn of_key(snap: &'c Snapshot, k: KeyIdx) -> Caller<'c> {
        let key = snap.key(k);
        Caller {
            key_type: key.key_type,
            organisation: key.organisation,
            workspace: key.workspace,
            scopes: &key.scopes,
            status: key.status,
            limits: &key.limits,
            counter: (Scope::Key, &key.id),
        }
    }

    fn of_token(id: &'c VerifiedIdentity) -> Caller<'c> {
        Caller {
            key_type: id.key_type,
            organisation: id.organisation,
            workspace: Some(id.workspace),
            scopes: &id.scopes,
            status: KeyStatus::Active,
            limits: id.limits(),
            counter: (Scope::Token, &id.counter_id),
        }
    }
}

/// The answer to a refused token: its code, and a message naming the
/// check that failed (never the token).
fn token_refused(e: &TokenError) -> Stop {
    let code = match e.failure {
        Failure::Invalid => ErrorCode::InvalidApiKey,
        Failure::Expired => ErrorCode::ExpiredApiKey,
        Failure::Revoked => ErrorCode::RevokedApiKey,
        Failure::Unavailable => ErrorCode::IdentityUnavailable,
    };
    deny(
        code,
        format!("Identity token refused ({}): {}.", e.check, e.message),
    )
}

/// Step 2: the key, by the digest of its secret (or as `explain` names it),
/// then the expiry of the key and of that secret, then its status. A token
/// comes verified (or refused) by the caller of the decision.
fn identify<'c>(
    snap: &'c Snapshot,
    facts: &RequestFacts<'c>,
    known: Option<KeyIdx>,
    v: &mut Verdict,
) -> Step<Caller<'c>> {
    let (key_idx, secret_expires) = match (known, facts.key) {
        (Some(k), _) => (k, None),
        (None, Presented::Missing) => return Err(deny(
            ErrorCode::MissingApiKey,
            "Missing API key: send it in the x-portkey-api-key header, as Authorization: Bearer, or in x-api-key or api-key.",
        )),
        (None, Presented::Repeated) => {
            return Err(deny(
                ErrorCode::InvalidApiKey,
                "Invalid API key: the key header was sent more than once.",
            ))
        }
        (None, Presented::Token(outcome)) => {
            let id = outcome.as_ref().map_err(token_refused)?;
            v.token = Some(id.clone());
            v.workspace = Some(id.workspace);
            return Ok(Caller::of_token(id));
        }
        (None, Presented::Secret(secret)) => {
            let digest = crate::identity::keys::digest(secret);
            match snap.lookup(&digest) {
                Some((k, entry)) => (k, entry.expires_at),
                None => return Err(deny(ErrorCode::InvalidApiKey, "Invalid API key.")),
            }
        }
    };
    v.key = Some(key_idx);
    let key = snap.key(key_idx);
    v.workspace = key.workspace;
    if key.expires_at.is_some_and(|t| facts.now >= t) {
        return Err(deny(ErrorCode::ExpiredApiKey, "This API key has expired."));
    }
    if secret_expires.is_some_and(|t| facts.now >= t) {
        return Err(deny(
            ErrorCode::ExpiredApiKey,
            "This API key secret has expired after rotation; use the new secret.",
        ));
    }
    if key.status == KeyStatus::Revoked {
        return Err(deny(
            ErrorCode::RevokedApiKey,
            "This API key has been revoked.",
        ));
    }
    Ok(Caller::of_key(snap, key_idx))
}

/// The key's own view, once the credentials passed: `GET` only (405 with
/// `Allow` otherwise, and no upgrade); no scope is needed.
fn own_view(facts: &RequestFacts<'_>, expires: Option<UnixMillis>) -> Stop {
    if *facts.method != Method::GET || facts.upgrade != Upgrade::None {
        if *facts.method == Method::GET {
            return deny(
                ErrorCode::UpgradeNotAllowed,
                "Protocol upgrades are not taken on this route.",
            );
        }
        let mut d = Denial::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "Method {} is not allowed on {}; allowed: GET.",
                facts.method,
                key_view::PATH
            ),
        );
        d.allow = Some(std::sync::Arc::from("GET"));
        return Stop::Deny(d);
    }
    Stop::KeyView(expires)
}

/// When the presented secret stops working, if it does (`None` for a key
/// `explain` names by id).
fn secret_expiry(snap: &Snapshot, facts: &RequestFacts<'_>, key_idx: KeyIdx) -> Option<UnixMillis> {
    match facts.key {
        Presented::Secret(secret) => snap
            .lookup(&crate::identity::keys::digest(secret))
            .filter(|(k, _)| *k == key_idx)
            .and_then(|(_, entry)| entry.expires_at),
        _ => None,
    }
}

/// Step 3: a route for the path (404) and the method (405, with `Allow`),
/// and an `Upgrade` only where the route takes WebSockets.
fn route_and_method<'t, 'p>(
    table: &'t RouteTable,
    path_match: Option<PathMatch<'t, 'p>>,
    facts: &RequestFacts<'_>,
    v: &mut Verdict,
) -> Step<(PathMatch<'t, 'p>, &'t Route)> {
    let Some(m) = path_match else {
        return Err(deny(
            ErrorCode::RouteNotFound,
            format!("No route for {} {}.", facts.method, facts.path),
        ));
    };
    let Some(route_idx) = m.entry.route_for(facts.method) else {
        let mut d = Denial::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "Method {} is not allowed on {}; allowed: {}.",
                facts.method, m.entry.pattern, m.entry.allow
            ),
        );
        d.allow = Some(m.entry.allow.clone());
        return Err(Stop::Deny(d));
    };
    let route = table.route(route_idx);
    v.route = Some(route_idx);
    v.plane = Some(route.plane);
    v.shape = match route.plane {
        Plane::Control => ErrorShape::Portkey,
        Plane::Data if m.entry.control => ErrorShape::Portkey,
        Plane::Data => ErrorShape::OpenAi,
    };
    match facts.upgrade {
        Upgrade::None => {}
        Upgrade::WebSocket if route.websocket => {}
        Upgrade::WebSocket => {
            return Err(deny(
                ErrorCode::UpgradeNotAllowed,
                "Protocol upgrades (WebSocket) are not forwarded on this route.",
            ))
        }
        Upgrade::Other => {
            return Err(deny(
                ErrorCode::UpgradeNotAllowed,
                "Only WebSocket upgrades (one `Upgrade: websocket` on an HTTP/1.1 GET) are \
                 forwarded, and only on routes that allow them.",
            ))
        }
    }
    Ok((m, route))
}

/// Step 4: the key may call the route: no admin key and no exhausted key on
/// the data plane, no usage limit used up, the scopes the route needs, and
/// no tunnel for a key whose tokens are counted. Returns the limits of the
/// key and of its workspace.
fn key_may_call<'c>(
    snap: &'c Snapshot,
    key: &Caller<'c>,
    route: &Route,
    facts: &RequestFacts<'_>,
) -> Step<(&'c Limits, Option<&'c Limits>)> {
    if route.plane == Plane::Data && key.key_type.is_admin() {
        return Err(deny(
            ErrorCode::AdminKeyNotAllowed,
            "Admin (organisation) keys cannot call completion routes; use a workspace key.",
        ));
    }
    if route.plane == Plane::Data && key.status == KeyStatus::Exhausted {
        return Err(deny(
            ErrorCode::BudgetExhausted,
            "This API key has exhausted its budget.",
        ));
    }
    let (key_limits, ws_limits) = (key.limits, key.workspace.map(|w| &snap.workspace(w).limits));
    if route.plane == Plane::Data {
        budgets_left(snap, key, facts, key_limits, ws_limits)?;
    }
    if !route.requirement.is_met_by(key.scopes) {
        return Err(deny(
            ErrorCode::MissingScope,
            format!(
                "This API key lacks the permission for {} {}: it needs {}.",
                facts.method, route.pattern, route.needs
            ),
        ));
    }
    // What passes a tunnel is never read, so its tokens cannot be counted:
    // a key whose limits (or whose workspace's) count tokens gets no tunnel.
    if facts.upgrade == Upgrade::WebSocket
        && (key_limits.counts_tokens() || ws_limits.is_some_and(Limits::counts_tokens))
    {
        return Err(deny(
            ErrorCode::UpgradeNotAllowed,
            "This API key or its workspace has token rate limits or a token or cost usage \
             limit, and the traffic of an upgraded (WebSocket) connection cannot be counted: \
             upgrades are refused for it.",
        ));
    }
    Ok((key_limits, ws_limits))
}

/// Part of step 4: neither the key's usage limit nor its workspace's is
/// used up (412), by the counters read before the decision.
fn budgets_left(
    snap: &Snapshot,
    key: &Caller<'_>,
    facts: &RequestFacts<'_>,
    key_limits: &Limits,
    ws_limits: Option<&Limits>,
) -> Step<()> {
    if let Some(u) = &key_limits.usage {
        let (scope, id) = key.counter;
        if (facts.used_up)(scope, id, u) {
            let whose = match scope {
                Scope::Token => "This token's subject has",
                _ => "This API key has",
            };
            return Err(deny(
                ErrorCode::BudgetExhausted,
                format!(
                    "{whose} used up its {} budget for this period.",
                    u.kind.as_str()
                ),
            ));
        }
    }
    if let (Some(u), Some(ws)) = (ws_limits.and_then(|l| l.usage.as_ref()), key.workspace) {
        if (facts.used_up)(Scope::Workspace, &snap.workspace(ws).id, u) {
            return Err(deny(
                ErrorCode::BudgetExhausted,
                format!(
                    "This API key's workspace has used up its {} budget for this period.",
                    u.kind.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether a body is there or may follow.
fn may_have_body(body: Body<'_>) -> bool {
    match body {
        Body::Empty => false,
        Body::Unread { declared_len } => declared_len != Some(0),
        Body::Read(b) => !b.is_empty(),
        Body::TooLarge => true,
    }
}

/// Step 5: the body of a control-plane `POST`/`PUT`/`PATCH` is JSON (415)
/// within `max_inspect_body_bytes` (413), read before going on; returns the
/// workspace its top level names.
fn control_body(route: &Route, facts: &RequestFacts<'_>) -> Step<Option<String>> {
    let inspects_body = route.plane == Plane::Control
        && matches!(*facts.method, Method::POST | Method::PUT | Method::PATCH);
    if !inspects_body {
        return Ok(None);
    }
    let non_empty = may_have_body(facts.body);
    // A chunked body of unknown length is read first: it may be empty.
    let known_non_empty = match facts.body {
        Body::Unread { declared_len: None } => false,
        _ => non_empty,
    };
    if known_non_empty
        && (facts.content_type_repeated || !request::is_json_content_type(facts.content_type))
    {
        return Err(deny(
            ErrorCode::UnsupportedMediaType,
            "Control-plane request bodies must be sent as Content-Type: application/json.",
        ));
    }
    match facts.body {
        Body::Unread { declared_len } if non_empty => {
            if declared_len.is_some_and(|n| n > facts.max_body as u64) {
                return Err(too_large(facts.max_body));
            }
            Err(Stop::ReadBody)
        }
        Body::TooLarge => Err(too_large(facts.max_body)),
        Body::Read(b) if !b.is_empty() => match request::body_workspace(b) {
            Ok(BodyWorkspace::Named(w)) => Ok(Some(w)),
            Ok(BodyWorkspace::Absent) => Ok(None),
            Err(e) => Err(deny(ErrorCode::InvalidJson, e.0)),
        },
        _ => Ok(None),
    }
}

/// Step 6: every source present (path parameter, query, body) names the
/// same workspace (409); a workspace key acts only in its own (403), an
/// admin key only in its organisation's (404). Returns the workspace the
/// request acts in.
fn workspace(
    snap: &Snapshot,
    key: &Caller<'_>,
    m: &PathMatch<'_, '_>,
    body_ws: Option<String>,
    facts: &RequestFacts<'_>,
) -> Step<Option<WsIdx>> {
    match (key.workspace, named_workspace(snap, m, body_ws, facts)?) {
        (Some(own), Some(n)) if n != Some(own) => Err(deny(
            ErrorCode::WorkspaceMismatch,
            "This workspace key cannot act in the workspace the request names.",
        )),
        (Some(own), _) => Ok(Some(own)),
        (None, Some(Some(ws))) if snap.workspace(ws).organisation == key.organisation => {
            Ok(Some(ws))
        }
        (None, Some(_)) => Err(deny(
            ErrorCode::WorkspaceNotFound,
            "The workspace the request names does not exist in this key's organisation.",
        )),
        (None, None) => Ok(None),
    }
}

/// The one workspace the request names, if it names any: `Some(None)` for
/// a name that resolves to no workspace. Sources that disagree are refused.
fn named_workspace(
    snap: &Snapshot,
    m: &PathMatch<'_, '_>,
    body_ws: Option<String>,
    facts: &RequestFacts<'_>,
) -> Step<Option<Option<WsIdx>>> {
    let query_values = request::query_workspace_ids(facts.query);
    let mut named: Option<(std::borrow::Cow<'_, str>, Option<WsIdx>)> = None;
    let sources = m
        .workspace
        .map(std::borrow::Cow::Borrowed)
        .into_iter()
        .chain(query_values)
        .chain(body_ws.map(std::borrow::Cow::Owned));
    for raw in sources {
        let resolved = snap.workspace_by_name(&raw);
        match &named {
            None => named = Some((raw, resolved)),
            Some((first_raw, first)) => {
                let same = match (first, resolved) {
                    (Some(a), Some(b)) => *a == b,
                    _ => *first_raw == raw,
                };
                if !same {
                    return Err(deny(
                        ErrorCode::ConflictingWorkspace,
                        "The request names more than one workspace (path, query and body must agree).",
                    ));
                }
            }
        }
    }
    Ok(named.map(|(_, resolved)| resolved))
}

/// Step 7, the data plane: read the body where limits need it (415 for a
/// type the proxy cannot read on an inference route, 413, 400
/// `invalid_json`), then the model allowlists (400 `missing_model`, 403
/// `model_not_allowed`), then tokens the proxy cannot see (403
/// `usage_not_metered`), then, for a cost budget, models without a price
/// (403 `model_not_priced`). Returns what accounting needs.
fn data_plane(
    facts: &RequestFacts<'_>,
    route: &Route,
    (key_limits, ws_limits): (&Limits, Option<&Limits>),
    prices: &PriceTable,
) -> Step<Spend> {
    // The key's and its workspace's allowlists, at most two: no `Vec`.
    let mut held: [&[std::sync::Arc<str>]; 2] = [&[], &[]];
    let mut count = 0;
    let listed = [Some(key_limits), ws_limits]
        .into_iter()
        .flatten()
        .filter_map(|l| l.models.as_deref());
    for (slot, list) in held.iter_mut().zip(listed) {
        *slot = list;
        count += 1;
    }
    let lists = &held[..count];
    let needs_body = key_limits.needs_body() || ws_limits.is_some_and(Limits::needs_body);
    let counts = key_limits.counts_tokens() || ws_limits.is_some_and(Limits::counts_tokens);
    let media = readable_media(facts, route, needs_body, !lists.is_empty())?;
    let mut spend = Spend {
        usage: route.usage,
        ..Spend::default()
    };
    let mut named: Vec<String> = crate::limits::body::query_models(facts.query)
        .into_iter()
        .map(|m| m.into_owned())
        .collect();
    let background = read_data_body(facts, media, &mut spend, &mut named)?;
    // A model named only by the query is the request's model too: it
    // prices the reservation, and settlement when the answer names none.
    if spend.model.is_none() {
        spend.model = named.first().cloned();
    }
    // A cost budget counts only priced models: on a counted route the
    // request names its model, and every model it names has a price.
    let cost_limited = [Some(key_limits), ws_limits]
        .into_iter()
        .flatten()
        .any(|l| l.usage.is_some_and(|u| u.kind == UsageKind::Cost))
        && route.usage.is_some();
    if cost_limited && named.is_empty() && lists.is_empty() {
        return Err(deny(
            ErrorCode::MissingModel,
            "This API key or its workspace has a cost budget: the request must name its `model`.",
        ));
    }
    if !lists.is_empty() {
        models_allowed(facts, route, lists, &named)?;
    }
    if counts && (route.opaque || (route.usage == Some(UsageApi::Responses) && background)) {
        let what = if route.opaque {
            format!("{} {}", facts.method, route.pattern)
        } else {
            "A background response (`\"background\": true`)".to_string()
        };
        return Err(deny(
            ErrorCode::UsageNotMetered,
            format!(
                "{what} uses tokens this proxy cannot count, and this API key or its workspace \
                 has token rate limits or a usage limit."
            ),
        ));
    }
    if cost_limited {
        if let Some(m) = named
            .iter()
            .find(|m| crate::limits::price::price_for(prices, m).is_none())
        {
            return Err(deny(
                ErrorCode::ModelNotPriced,
                format!(
                    "The model `{}` has no price, and this API key or its workspace has a cost \
                     budget: only priced models may be used.",
                    crate::identity::keys::build::shown(m)
                ),
            ));
        }
    }
    spend.counted = counts && route.usage.is_some();
    Ok(spend)
}

/// Part of step 7: the body's media type when the limits need the body
/// read (`None`: it is not read), refusing a body the proxy would not read
/// on an inference route (415).
fn readable_media(
    facts: &RequestFacts<'_>,
    route: &Route,
    needs_body: bool,
    models_restricted: bool,
) -> Step<Option<Media>> {
    // A repeated Content-Type is no type at all: frameworks differ on which
    // one they read.
    let media = if facts.content_type_repeated {
        Media::Other
    } else {
        request::media_type(facts.content_type)
    };
    // Which bodies are read: JSON always; multipart on inference routes,
    // and elsewhere when models are restricted (for its `model` parts).
    let readable = match media {
        Media::Json => true,
        Media::Multipart => route.inference || models_restricted,
        Media::Missing | Media::Other => false,
    };
    // Upstreams parse JSON whatever the header says: on an inference route
    // a body the proxy would not read is one it would not check.
    if needs_body
        && may_have_body(facts.body)
        && !readable
        && (route.inference || facts.content_type_repeated)
    {
        let message = if facts.content_type_repeated {
            "Content-Type was sent more than once; send one.".to_string()
        } else {
            format!(
                "{} {} takes a body of Content-Type application/json (or another +json type) \
                 or multipart/form-data for this API key.",
                facts.method, route.pattern
            )
        };
        return Err(deny(ErrorCode::UnsupportedMediaType, message));
    }
    Ok((needs_body && readable).then_some(media))
}

/// Part of step 7: reads the body when `media` says so (or asks for it,
/// within `max_data_body_bytes`), filling `spend` and the models the
/// request names. Returns whether it asks for a background response.
fn read_data_body(
    facts: &RequestFacts<'_>,
    media: Option<Media>,
    spend: &mut Spend,
    named: &mut Vec<String>,
) -> Step<bool> {
    let reads = media.is_some();
    match facts.body {
        Body::Unread { declared_len } if reads && declared_len != Some(0) => {
            if declared_len.is_some_and(|n| n > facts.max_data_body as u64) {
                return Err(data_too_large(facts.max_data_body));
            }
            Err(Stop::ReadBody)
        }
        Body::Unread { declared_len } => {
            spend.body_len = declared_len.unwrap_or(0);
            Ok(false)
        }
        Body::TooLarge if reads => Err(data_too_large(facts.max_data_body)),
        Body::Read(b) if reads && !b.is_empty() => {
            spend.body_read = true;
            spend.body_len = b.len() as u64;
            if media == Some(Media::Json) {
                let j = crate::limits::body::read_json_body(b)
                    .map_err(|e| deny(ErrorCode::InvalidJson, e.0))?;
                if let Some(m) = &j.model {
                    named.push(m.clone());
                }
                spend.model = j.model;
                spend.max_output = j.max_output;
                spend.n = j.n;
                spend.stream = j.stream;
                spend.include_usage = j.include_usage;
                Ok(j.background)
            } else {
                let ct = facts.content_type.unwrap_or_default();
                let models = crate::limits::body::multipart_models(ct, b)
                    .map_err(|e| deny(ErrorCode::InvalidJson, e.0))?;
                spend.model = models.first().cloned();
                named.extend(models);
                Ok(false)
            }
        }
        Body::Read(b) => {
            spend.body_read = true;
            spend.body_len = b.len() as u64;
            Ok(false)
        }
        _ => Ok(false),
    }
}

/// Part of step 7, for a key (or workspace) restricted to certain models:
/// the route shows its model (403), the request names one where it must
/// (400 `missing_model`), and every model named is allowed by every list.
fn models_allowed(
    facts: &RequestFacts<'_>,
    route: &Route,
    lists: &[&[std::sync::Arc<str>]],
    named: &[String],
) -> Step<()> {
    if route.opaque {
        return Err(deny(
            ErrorCode::ModelNotAllowed,
            format!(
                "{} {} carries its model where this proxy cannot check it, \
                 and this API key may only use certain models.",
                facts.method, route.pattern
            ),
        ));
    }
    if named.is_empty() && (route.inference || facts.upgrade == Upgrade::WebSocket) {
        let message = if facts.upgrade == Upgrade::WebSocket {
            "This API key may only use certain models: the WebSocket handshake must name \
             its `model` query parameter."
        } else {
            "This API key may only use certain models: the request must name its `model`."
        };
        return Err(deny(ErrorCode::MissingModel, message));
    }
    if let Some(m) = named
        .iter()
        .find(|m| !crate::limits::models::allowed_by_all(lists, m))
    {
        return Err(deny(
            ErrorCode::ModelNotAllowed,
            format!(
                "This API key may not use the model `{}`.",
                crate::identity::keys::build::shown(m)
            ),
        ));
    }
    Ok(())
}

fn data_too_large(max: usize) -> Stop {
    deny(
        ErrorCode::BodyTooLarge,
        format!("The request body is larger than the {max} bytes this proxy reads."),
    )
}

fn too_large(max: usize) -> Stop {
    deny(
        ErrorCode::BodyTooLarge,
        format!("The request body is larger than the {max} bytes this proxy inspects."),
    )
}

#[cfg(test)]
mod tests;
