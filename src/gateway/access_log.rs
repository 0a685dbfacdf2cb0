//! The end of a request: one access-log line and the request metrics.
//!
//! The line never holds a secret: the key appears only as its id, the path
//! without its query, and no header values at all.

use pingora::prelude::Session;
use pingora::Error;

use crate::gateway::proxy::Finished;
use crate::ops::metrics::{is_allowed, metrics, RequestOutcome};

/// Logs and counts one finished request.
pub fn record(session: &Session, e: Option<&Error>, f: Finished<'_>) {
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let verdict = f.verdict;
    let decision = if is_allowed(f.code) && verdict.is_some() {
        "allow"
    } else {
        "deny"
    };
    let code = f.code.map_or("ok", |c| c.as_str());
    let plane = verdict.and_then(|v| v.plane).map_or("none", |p| p.as_str());
    let pattern = verdict.and_then(|v| v.pattern.as_ref());
    let route = pattern.map_or("unmatched", |p| &**p);
    let key_id = match (verdict.and_then(|v| v.key), f.snapshot) {
        (Some(k), Some(s)) => &*s.key(k).id,
        _ => "-",
    };
    let workspace_id = match (verdict.and_then(|v| v.workspace), f.snapshot) {
        (Some(w), Some(s)) => Some(&s.workspace(w).id),
        _ => None,
    };
    let workspace = workspace_id.map_or("none", |w| &**w);
    if let Some(m) = metrics() {
        m.record_request(&RequestOutcome {
            plane,
            route: pattern,
            code: f.code,
            workspace: workspace_id,
            elapsed_seconds: f.elapsed.as_secs_f64(),
        });
    }
    let error = e.map(|e| e.etype().as_str()).or(f.error).unwrap_or("");
    tracing::info!(
        target: "scopegate::access",
        request_id = f.request_id,
        method = req.method.as_str(),
        path = req.uri.path(),
        route,
        key_id,
        workspace,
        decision,
        code,
        status,
        upstream = f.upstream.unwrap_or("-"),
        upstream_status = f.upstream_status.unwrap_or(0),
        duration_ms = f.elapsed.as_secs_f64() * 1000.0,
        error,
        "request"
    );
}
