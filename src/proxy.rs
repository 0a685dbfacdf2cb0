//! The pingora layer: gather request facts, ask [`policy::decide`], then
//! either write the JSON refusal or forward with identity headers.
//!
//! Each hook does one thing: `request_filter` decides (and may answer),
//! `upstream_peer` picks the upstream of the route's plane,
//! `upstream_request_filter` rewrites headers, `response_filter` stamps the
//! request id and quota, `fail_to_proxy` turns upstream failures into
//! 502/504, and `logging` counts and writes the access log.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log;
use crate::config::UpstreamConfig;
use crate::errors::{self, ErrorCode, ErrorShape};
use crate::keys::{KeyStore, Snapshot};
use crate::metrics::metrics;
use crate::policy::{self, Body, Outcome, RequestFacts, Verdict};
use crate::ratelimit::{self, Quota};
use crate::request::{self, KeySource};
use crate::routes::{Plane, RouteTable};

/// One upstream, resolved at start.
pub struct Upstream {
    /// `completions` or `admin` (the metrics label).
    pub name: &'static str,
    peer: HttpPeer,
    authority: HeaderValue,
    set_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Upstream {
    /// Resolves the upstream's address and prepares its peer options.
    ///
    /// # Errors
    /// When the host does not resolve, a header is invalid, or the CA file
    /// cannot be read.
    pub fn from_config(name: &'static str, cfg: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let addr = (
            cfg.host.trim_start_matches('[').trim_end_matches(']'),
            cfg.port,
        )
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("upstream {name}: cannot resolve {}: {e}", cfg.host))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("upstream {name}: {} resolves to nothing", cfg.host))?;
        let mut peer = HttpPeer::new(addr, cfg.tls, cfg.sni.clone());
        peer.options.connection_timeout = Some(Duration::from_millis(cfg.connect_timeout_ms));
        peer.options.total_connection_timeout = Some(Duration::from_millis(
            cfg.connect_timeout_ms.saturating_mul(2),
        ));
        peer.options.read_timeout = Some(Duration::from_millis(cfg.read_timeout_ms));
        peer.options.write_timeout = Some(Duration::from_millis(cfg.read_timeout_ms));
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(ca) = &cfg.ca_file {
            peer.options.ca = Some(crate::tls::load_ca_file(ca)?);
        }
        let set_headers = cfg
            .set_headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    HeaderName::from_bytes(k.as_bytes())?,
                    HeaderValue::from_str(v)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(|e| anyhow::anyhow!("upstream {name}: set_headers: {e}"))?;
        Ok(Upstream {
            name,
            peer,
            authority: HeaderValue::from_str(&cfg.authority)?,
            set_headers,
        })
    }
}

/// The proxy application.
pub struct Gateway {
    table: Arc<RouteTable>,
    store: KeyStore,
    completions: Upstream,
    admin: Upstream,
    max_body: usize,
    in_flight: Arc<AtomicUsize>,
    request_ids: RequestIds,
}

impl Gateway {
    /// A gateway over a route table, a key store and the two upstreams.
    pub fn new(
        table: Arc<RouteTable>,
        store: KeyStore,
        completions: Upstream,
        admin: Upstream,
        max_body: usize,
        in_flight: Arc<AtomicUsize>,
    ) -> Gateway {
        Gateway {
            table,
            store,
            completions,
            admin,
            max_body,
            in_flight,
            request_ids: RequestIds::new(),
        }
    }

    fn upstream(&self, plane: Plane) -> &Upstream {
        match plane {
            Plane::Data => &self.completions,
            Plane::Control => &self.admin,
        }
    }

    /// Reads the request's facts and decides.
    fn decide(
        &self,
        session: &Session,
        snap: &Snapshot,
        body: Option<Body<'_>>,
    ) -> (Verdict, KeySource) {
        let req = session.req_header();
        let portkey: Vec<&[u8]> = req
            .headers
            .get_all("x-portkey-api-key")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let authorization: Vec<&[u8]> = req
            .headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        let (key, source) = request::presented_key(&portkey, &authorization);
        let body = body.unwrap_or_else(|| body_hint(req));
        let facts = RequestFacts {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            key,
            content_type: req
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            body,
            now: crate::keys::now_millis(),
            max_body: self.max_body,
        };
        (policy::decide(&self.table, snap, &facts), source)
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: ErrorCode,
        message: &str,
        allow: Option<&str>,
    ) -> Result<()> {
        ctx.code = Some(code);
        let body = errors::render(code, message, ctx.shape);
        let mut resp = ResponseHeader::build(code.status(), Some(8))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(allow) = allow {
            resp.insert_header(http::header::ALLOW, allow)?;
        }
        if let Some(q) = &ctx.quota {
            add_quota_headers(&mut resp, q)?;
            if let Some(s) = q.retry_after_secs() {
                resp.insert_header(http::header::RETRY_AFTER, s.to_string())?;
            }
        }
        // An unread body would be taken for the next request: read and drop
        // a small one to keep the connection, close on anything else.
        if !session.as_mut().is_body_done() {
            let small = matches!(body_hint(session.req_header()), Body::Unread { declared_len: Some(n) } if n <= self.max_body as u64);
            if !(small && session.as_mut().drain_request_body().await.is_ok()) {
                session.set_keepalive(None);
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(())
    }
}

/// What the proxy learns about one request as it goes.
pub struct Ctx {
    start: Instant,
    request_id: HeaderValue,
    snapshot: Option<Arc<Snapshot>>,
    verdict: Option<Verdict>,
    shape: ErrorShape,
    key_source: KeySource,
    quota: Option<Quota>,
    body: Option<Bytes>,
    code: Option<ErrorCode>,
    upstream_status: Option<u16>,
    probe: bool,
    _in_flight: InFlight,
}

/// Counts a request as in flight until its context is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fast unique request ids: a random process prefix and a counter.
struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut seed = [0u8; 16];
        let _ = getrandom::fill(&mut seed);
        RequestIds {
            prefix: u64::from_le_bytes(seed[..8].try_into().unwrap_or_default()),
            next: AtomicU64::new(u64::from_le_bytes(seed[8..].try_into().unwrap_or_default())),
        }
    }

    fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let s = format!("{:016x}{:016x}", self.prefix, n);
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// A per-process secret the readiness probe sends, so that it knows the
/// listener that answered is this process's (a port taken by another
/// process would otherwise look ready).
pub fn probe_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let mut raw = [0u8; 16];
        let _ = getrandom::fill(&mut raw);
        hex::encode(raw)
    })
}

/// The header carrying [`probe_token`].
pub const PROBE_HEADER: &str = "x-scopegate-probe";

/// A client's `x-request-id` is kept when it is 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn body_hint(req: &RequestHeader) -> Body<'static> {
    if let Some(cl) = req.headers.get(http::header::CONTENT_LENGTH) {
        let n = std::str::from_utf8(cl.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        return match n {
            Some(0) => Body::Empty,
            n => Body::Unread { declared_len: n },
        };
    }
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Body::Unread { declared_len: None };
    }
    Body::Empty
}

/// HTTP/2 frames the body itself: a request may carry one with neither
/// `Content-Length` nor `Transfer-Encoding`, which [`body_hint`] would take
/// for no body (and the body would go upstream uninspected).
fn h2_body_hint(session: &mut Session) -> Option<Body<'static>> {
    let downstream = session.as_mut();
    let unframed = downstream.is_http2()
        && !downstream
            .req_header()
            .headers
            .contains_key(http::header::CONTENT_LENGTH)
        && !downstream.is_body_empty();
    unframed.then_some(Body::Unread { declared_len: None })
}

fn add_quota_headers(resp: &mut ResponseHeader, q: &Quota) -> Result<()> {
    resp.insert_header("x-ratelimit-limit-requests", q.limit.to_string())?;
    resp.insert_header("x-ratelimit-remaining-requests", q.remaining.to_string())?;
    resp.insert_header(
        "x-ratelimit-reset-requests",
        ratelimit::format_reset(q.reset),
    )?;
    Ok(())
}

/// Reads the whole body, or `None` once it exceeds `max` bytes.
async fn read_body_capped(session: &mut Session, max: usize) -> Result<Option<Bytes>> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if buf.len() + chunk.len() > max {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

/// Maps an upstream failure to the answer and the metrics `kind`.
fn classify(e: &Error) -> (ErrorCode, &'static str) {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
            (ErrorCode::UpstreamTimeout, "timeout")
        }
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            (ErrorCode::UpstreamTimeout, "timeout")
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => (ErrorCode::UpstreamUnavailable, "connect"),
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
            (ErrorCode::UpstreamUnavailable, "reset")
        }
        _ => (ErrorCode::UpstreamUnavailable, "other"),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Ctx {
            start: Instant::now(),
            request_id: HeaderValue::from_static(""),
            snapshot: None,
            verdict: None,
            shape: ErrorShape::OpenAi,
            key_source: KeySource::PortkeyHeader,
            quota: None,
            body: None,
            code: None,
            upstream_status: None,
            probe: false,
            _in_flight: InFlight(self.in_flight.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session
            .req_header()
            .headers
            .get(PROBE_HEADER)
            .is_some_and(|v| v.as_bytes() == probe_token().as_bytes())
        {
            ctx.probe = true;
            let mut resp = ResponseHeader::build(204, Some(1))?;
            resp.insert_header(http::header::CONNECTION, "close")?;
            session.set_keepalive(None);
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(true);
        }
        ctx.request_id = match session.req_header().headers.get("x-request-id") {
            Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
            _ => self.request_ids.generate(),
        };
        let snap = self.store.load();
        let hint = h2_body_hint(session);
        let (mut verdict, source) = self.decide(session, &snap, hint);
        if verdict.outcome == Outcome::ReadBody {
            // Buffer what we read so pingora can send it upstream again;
            // `request_body_filter` substitutes the whole body.
            session.enable_retry_buffering();
            let body = read_body_capped(session, self.max_body).await?;
            let facts_body = match &body {
                Some(b) => Body::Read(b),
                None => Body::TooLarge,
            };
            verdict = self.decide(session, &snap, Some(facts_body)).0;
            ctx.body = body;
        }
        ctx.key_source = source;
        ctx.shape = verdict.shape;
        let outcome = verdict.outcome.clone();
        ctx.verdict = Some(verdict);
        ctx.snapshot = Some(snap.clone());
        match outcome {
            Outcome::Deny(d) => {
                self.refuse(session, ctx, d.code, &d.message, d.allow.as_deref())
                    .await?;
                Ok(true)
            }
            Outcome::ReadBody => {
                // Unreachable after a read; refuse rather than forward unchecked.
                self.refuse(
                    session,
                    ctx,
                    ErrorCode::InvalidJson,
                    "The body could not be read.",
                    None,
                )
                .await?;
                Ok(true)
            }
            Outcome::Allow => {
                let limiter = ctx
                    .verdict
                    .as_ref()
                    .and_then(|v| v.key)
                    .and_then(|k| snap.key(k).limiter.clone());
                if let Some(limiter) = limiter {
                    let q = limiter.check(ratelimit::monotonic_ns());
                    ctx.quota = Some(q);
                    if !q.allowed() {
                        let msg = format!(
                            "Rate limit exceeded for this API key: {} requests; retry after {} s.",
                            q.limit,
                            q.retry_after_secs().unwrap_or(1)
                        );
                        self.refuse(session, ctx, ErrorCode::RateLimited, &msg, None)
                            .await?;
                        return Ok(true);
                    }
                }
                Ok(false)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // The body was read for inspection; pingora replays at most 64 KiB
        // of it, so send the whole inspected body instead.
        if let (Some(full), Some(_)) = (&ctx.body, body.as_ref()) {
            *body = Some(full.clone());
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let plane = ctx
            .verdict
            .as_ref()
            .and_then(|v| v.plane)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route decided"))?;
        Ok(Box::new(self.upstream(plane).peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(verdict), Some(snap)) = (&ctx.verdict, &ctx.snapshot) else {
            return Error::e_explain(ErrorType::InternalError, "request not decided");
        };
        req.remove_header("x-portkey-api-key");
        if ctx.key_source == KeySource::Authorization {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        let spoofed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().starts_with("x-scopegate-"))
            .cloned()
            .collect();
        for name in spoofed {
            req.remove_header(&name);
        }
        if let Some(k) = verdict.key {
            let key = snap.key(k);
            req.insert_header("x-scopegate-key-id", &*key.id)?;
            req.insert_header("x-scopegate-key-type", key.key_type.as_str())?;
            req.insert_header(
                "x-scopegate-organisation-id",
                &*snap.organisation(key.organisation).id,
            )?;
            if let Some(ws) = verdict.workspace {
                req.insert_header("x-scopegate-workspace-id", &*snap.workspace(ws).id)?;
            }
            if let Some(user) = &key.user_id {
                req.insert_header("x-scopegate-user-id", &**user)?;
            }
        }
        req.insert_header("x-request-id", ctx.request_id.clone())?;
        let plane = verdict.plane.unwrap_or(Plane::Data);
        let upstream = self.upstream(plane);
        for (name, value) in &upstream.set_headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        req.insert_header(http::header::HOST, upstream.authority.clone())?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(q) = &ctx.quota {
            add_quota_headers(resp, q)?;
        }
        if let (Some(m), Some(plane)) = (metrics(), ctx.verdict.as_ref().and_then(|v| v.plane)) {
            m.upstream_response(self.upstream(plane).name, resp.status.as_u16());
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream_side = matches!(e.esource(), ErrorSource::Upstream)
            || matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ConnectError
            );
        if !upstream_side {
            // The client went away: nothing to write. It sent garbage: 400.
            let code = match (e.esource(), e.etype()) {
                (
                    ErrorSource::Downstream,
                    ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError,
                ) => 0,
                (ErrorSource::Downstream, _) => 400,
                _ => 500,
            };
            if code > 0 && session.response_written().is_none() {
                let _ = session.respond_error(code).await;
            }
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let (code, kind) = classify(e);
        if let (Some(m), Some(plane)) = (metrics(), ctx.verdict.as_ref().and_then(|v| v.plane)) {
            m.upstream_error(self.upstream(plane).name, kind);
        }
        if session.response_written().is_some() {
            // Mid-stream failure: the status is already on the wire.
            ctx.code = Some(code);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let message = match code {
            ErrorCode::UpstreamTimeout => "The upstream service timed out.",
            _ => "The upstream service is unavailable.",
        };
        // pingora closes the client connection after a failed proxy attempt;
        // say so in the response rather than advertise keep-alive.
        session.set_keepalive(None);
        let _ = self.refuse(session, ctx, code, message, None).await;
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away mid-request is routine (load balancers,
    /// cancelled streams); the access log records it, so pingora need not
    /// log an ERROR line for each one.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// pingora's error lines print this; the default holds the whole URI,
    /// and a query string may carry something secret.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id.to_str().unwrap_or_default()
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.probe {
            return;
        }
        access_log::record(session, e, ctx_view(ctx, self));
    }
}

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
}

fn ctx_view<'a>(ctx: &'a Ctx, gw: &'a Gateway) -> Finished<'a> {
    let forwarded = ctx.code.is_none()
        || matches!(
            ctx.code,
            Some(ErrorCode::UpstreamTimeout | ErrorCode::UpstreamUnavailable)
        );
    let upstream = ctx
        .verdict
        .as_ref()
        .filter(|_| forwarded)
        .and_then(|v| v.plane)
        .map(|p| gw.upstream(p).name);
    Finished {
        request_id: ctx.request_id.to_str().unwrap_or_default(),
        verdict: ctx.verdict.as_ref(),
        snapshot: ctx.snapshot.as_deref(),
        code: ctx.code,
        upstream_status: ctx.upstream_status,
        upstream,
        elapsed: ctx.start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rule() {
        assert!(valid_request_id(b"abc-123_x.y"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
    }
}
