//! The end of a request: one access-log line, the request metrics and the
//! request's trace span.
//!
//! The line and the span never hold a secret: the key appears only as its
//! id, the path without its query, and no header values at all.

use std::time::Duration;

use pingora::prelude::Session;
use pingora::Error;

use crate::decision::decide::Verdict;
use crate::decision::errors::ErrorCode;
use crate::identity::keys::Snapshot;
use crate::ops::metrics::{is_allowed, metrics, RequestOutcome};
use crate::ops::traces::{GenAiFacts, RequestSpan, ServerFacts};

/// What the access log and metrics need from a finished request.
pub struct Finished<'a> {
    /// Request id.
    pub request_id: &'a str,
    /// Decision and context.
    pub verdict: Option<&'a Verdict>,
    /// The snapshot the request was decided with.
    pub snapshot: Option<&'a Snapshot>,
    /// The code the proxy answered with (None: forwarded fine).
    pub code: Option<ErrorCode>,
    /// Status from the upstream, when forwarded.
    pub upstream_status: Option<u16>,
    /// Upstream name, when forwarded.
    pub upstream: Option<&'static str>,
    /// Elapsed time.
    pub elapsed: Duration,
    /// What failed upstream when the proxy forwarded the request itself
    /// (pingora's own failures come to the access log as its error).
    pub error: Option<&'static str>,
    /// The request's trace spans, finished here.
    pub span: RequestSpan,
    /// A counted request's GenAI facts, for its span.
    pub genai: Option<GenAiFacts<'a>>,
}

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
        _ => verdict
            .and_then(|v| v.token.as_ref())
            .map_or("-", |t| &*t.key_id),
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
    let trace_id = f.span.trace_id();
    if f.span.is_recording() {
        let key = match (verdict.and_then(|v| v.key), f.snapshot) {
            (Some(k), Some(s)) => Some((s.key(k), s)),
            _ => None,
        };
        let facts = ServerFacts {
            method: req.method.as_str(),
            path: req.uri.path(),
            route: pattern.map(|p| &**p),
            status,
            protocol_version: protocol_version(req.version),
            client_address: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            server_port: session
                .server_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.port()),
            request_id: f.request_id,
            plane: verdict.and_then(|v| v.plane).map(|p| p.as_str()),
            decision,
            code,
            key_id: key.map(|(k, _)| &*k.id),
            key_type: key.map(|(k, _)| k.key_type.as_str()),
            organisation_id: key.map(|(k, s)| &*s.organisation(k.organisation).id),
            workspace_id: workspace_id.map(|w| &**w),
        };
        f.span.finish(&facts, f.genai.as_ref());
    }
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
        trace_id,
        "request"
    );
}

/// `network.protocol.version`.
fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        http::Version::HTTP_09 => "0.9",
        _ => "1.1",
    }
}
