//! The end of a request: one access-log line and the request metrics.
//!
//! The line never holds a secret: the key appears only as its id, the path
//! without its query, and no header values at all.

use pingora::prelude::Session;
use pingora::Error;

use crate::metrics::metrics;
use crate::policy::Outcome;
use crate::proxy::Finished;

/// Logs and counts one finished request.
pub fn record(session: &Session, e: Option<&Error>, f: Finished<'_>) {
    let req = session.req_header();
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    let verdict = f.verdict;
    let allowed = verdict.is_some_and(|v| v.outcome == Outcome::Allow)
        && !matches!(f.code, Some(c) if c.status() == 429);
    let decision = if allowed { "allow" } else { "deny" };
    let code = f.code.map_or("ok", |c| c.as_str());
    let plane = verdict.and_then(|v| v.plane).map_or("none", |p| p.as_str());
    let route = verdict
        .and_then(|v| v.pattern.as_deref())
        .unwrap_or("unmatched");
    let key_id = match (verdict.and_then(|v| v.key), f.snapshot) {
        (Some(k), Some(s)) => &*s.key(k).id,
        _ => "-",
    };
    let workspace = match (verdict.and_then(|v| v.workspace), f.snapshot) {
        (Some(w), Some(s)) => &*s.workspace(w).id,
        _ => "none",
    };
    if let Some(m) = metrics() {
        m.requests
            .with_label_values(&[plane, route, decision, code])
            .inc();
        m.workspace_requests
            .with_label_values(&[workspace, decision])
            .inc();
        m.duration
            .with_label_values(&[plane])
            .observe(f.elapsed.as_secs_f64());
    }
    let error = e.map(|e| e.etype().as_str()).unwrap_or("");
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
    let _ = f.table;
}
