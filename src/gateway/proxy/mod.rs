//! The pingora layer: gather request facts, ask [`decide::decide`], then
//! either write the JSON refusal or forward with identity headers.
//!
//! Each hook does one thing: `request_filter` decides (and may answer),
//! `upstream_peer` picks the upstream of the route's plane,
//! `upstream_request_filter` rewrites headers, `response_filter` stamps the
//! request id and quota, `fail_to_proxy` turns upstream failures into
//! 502/504, and `logging` counts and writes the access log.

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::UpstreamConfig;
use crate::decision::decide::{self, Body, Outcome, RequestFacts, Verdict};
use crate::decision::errors::{self, Denial, ErrorCode, ErrorShape};
use crate::decision::request::{self, KeySource, Presented};
use crate::decision::routes::{Plane, RouteTable};
use crate::gateway::access_log::{self, Finished};
use crate::identity::keys::{Digest, KeyStore, Snapshot};
use crate::identity::token::{TokenCache, TokenOutcome};
use crate::limits::rate::{self, Quota};
use crate::ops::metrics::metrics;
use crate::ops::tokens::TokenKeys;
use crate::ops::traces::{Incoming, RequestSpan, Traces, UpstreamCall, UpstreamOutcome};

mod forward;
pub mod spend;

/// One upstream, resolved at start.
pub struct Upstream {
    /// `completions` or `admin` (the metrics label).
    pub name: &'static str,
    peer: HttpPeer,
    authority: HeaderValue,
    set_headers: Vec<(HeaderName, HeaderValue)>,
    /// The host and port as configured (the upstream call's span).
    host: String,
    port: u16,
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
            peer.options.ca = Some(crate::gateway::upstream::load_ca_file(ca)?);
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
            host: cfg.host.clone(),
            port: cfg.port,
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
    /// Upstream connections for requests whose body the proxy read (see
    /// `forward`): HTTP/1.1, the only protocol the upstream peers offer.
    connector: pingora::connectors::http::v1::Connector,
    /// The counter store and the settings of metering.
    spending: Spending,
    /// The JWK sets and the verified-token cache, when the server runs
    /// with identity tokens' background service.
    tokens: Option<Arc<TokenKeys>>,
    /// The trace pipeline; `None`: tracing is off.
    traces: Option<Traces>,
}

/// The counter store and the metering settings of a [`Gateway`].
pub struct Spending {
    /// The counter store.
    pub counters: Arc<dyn crate::state::CounterStore>,
    /// `max_data_body_bytes`.
    pub max_data_body: usize,
    /// `inject_stream_usage`.
    pub inject_stream_usage: bool,
    /// `body_read_timeout_ms`.
    pub body_read_timeout_ms: u64,
    /// `default_output_reservation`: output tokens reserved when a counted
    /// request names no maximum.
    pub default_output_reservation: u64,
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
        spending: Spending,
    ) -> Gateway {
        Gateway {
            table,
            store,
            completions,
            admin,
            max_body,
            in_flight,
            connector: pingora::connectors::http::v1::Connector::new(None),
            spending,
            tokens: None,
            traces: None,
        }
    }

    /// Verifies identity tokens with `tokens` (docs/reference.md#identity-tokens);
    /// without it, token-shaped credentials of an organisation that
    /// accepts tokens answer 503 `identity_unavailable`.
    pub fn with_tokens(mut self, tokens: Arc<TokenKeys>) -> Gateway {
        self.tokens = Some(tokens);
        self
    }

    /// The credential, when it is an identity token and some organisation
    /// accepts tokens: its cache key, and its outcome when the cache knows
    /// it (else the token, to verify off this borrow of the session).
    fn presented_token(
        &self,
        session: &Session,
        snap: &Snapshot,
    ) -> Option<(Digest, Result<TokenOutcome, String>)> {
        if !snap.identity().any() {
            return None;
        }
        let (Presented::Secret(secret), _) = presented(session.req_header()) else {
            return None;
        };
        // Three base64url parts: one scan. A token seen before is found by
        // its digest; only a new one has its header decoded for the rule.
        let token = std::str::from_utf8(secret)
            .ok()
            .filter(|t| crate::identity::token::shape::split(t).is_some())?;
        let digest = TokenCache::key(token);
        let now = crate::identity::keys::now_millis();
        if let Some(hit) = self
            .tokens
            .as_ref()
            .and_then(|t| t.cached_digest(&digest, snap, now))
        {
            return Some((digest, Ok(hit)));
        }
        crate::identity::token::is_token(token).then(|| (digest, Err(token.to_string())))
    }

    /// The outcome of the identity token presented, if one was (cache
    /// first); its digest goes in `ctx` for the upstream stripping.
    async fn token_of(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        snap: &Snapshot,
    ) -> Option<TokenOutcome> {
        let (digest, found) = self.presented_token(session, snap)?;
        ctx.token_digest = Some(digest);
        Some(match found {
            Ok(hit) => hit,
            Err(token) => self.verify_token(&token, snap).await,
        })
    }

    /// Verifies a token the cache did not know.
    async fn verify_token(&self, token: &str, snap: &Snapshot) -> TokenOutcome {
        match &self.tokens {
            Some(t) => t.check(token, snap).await,
            None => crate::identity::token::verify(
                token,
                crate::identity::keys::now_millis(),
                snap,
                &std::collections::HashMap::new(),
            )
            .map(Arc::new),
        }
    }

    /// Records a span per request into `traces` (docs/reference.md#traces).
    pub fn with_traces(mut self, traces: Option<Traces>) -> Gateway {
        self.traces = traces;
        self
    }

    fn upstream(&self, plane: Plane) -> &Upstream {
        match plane {
            Plane::Data => &self.completions,
            Plane::Control => &self.admin,
        }
    }

    /// Reads the request's facts and decides, at `now`; `first`: the same
    /// request's decision before its body was read, at the same `now`
    /// (deciding again once the body is read, [`decide::decide_read`]: a
    /// data-plane request resumes at the body's step, and the key headers
    /// and `Content-Length`, which only the earlier steps read, are not
    /// read again; otherwise the secret is neither hashed nor looked up
    /// twice, and every check of the key gives what it gave).
    fn decide(
        &self,
        session: &Session,
        snap: &Snapshot,
        body: Option<Body<'_>>,
        token: Option<&TokenOutcome>,
        now: crate::identity::keys::UnixMillis,
        first: Option<Verdict>,
    ) -> (Verdict, KeySource) {
        let req = session.req_header();
        let resumed = first
            .as_ref()
            .is_some_and(|f| decide::resumes(&self.table, f));
        let (mut key, source) = if resumed {
            (Presented::Missing, KeySource::PortkeyHeader)
        } else {
            presented(req)
        };
        if let (Some(t), Presented::Secret(_)) = (token, key) {
            key = Presented::Token(t);
        }
        let body = body.unwrap_or_else(|| body_hint(req));
        let mut content_types = req.headers.get_all(http::header::CONTENT_TYPE).iter();
        let content_type = content_types.next().map(HeaderValue::as_bytes);
        let bad_content_length = !resumed
            && request::content_length(&header_values(req, &http::header::CONTENT_LENGTH))
                == request::ContentLength::Invalid;
        let facts = RequestFacts {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            key,
            content_type,
            content_type_repeated: content_types.next().is_some(),
            bad_content_length,
            upgrade: request::upgrade_of(
                &header_values(req, &http::header::UPGRADE),
                req.version == http::Version::HTTP_11,
            ),
            body,
            now,
            max_body: self.max_body,
            max_data_body: self.spending.max_data_body,
            used_up: &|scope, id, limit| {
                let p = crate::limits::period::period_of(
                    limit.reset,
                    crate::identity::keys::now_millis(),
                );
                let subject = crate::state::SubjectId {
                    scope,
                    id: id.into(),
                };
                self.spending
                    .counters
                    .usage(&subject, &p.key)
                    .exhausted(limit)
            },
        };
        let verdict = match first {
            Some(first) => decide::decide_read(&self.table, snap, &facts, first),
            None => decide::decide(&self.table, snap, &facts),
        };
        (verdict, source)
    }

    /// The request's id (the client's if valid) and its trace span.
    fn begin_request(&self, session: &Session, ctx: &mut Ctx) {
        let headers = &session.req_header().headers;
        if let Some(traces) = &self.traces {
            ctx.trace = traces.begin(&Incoming::from_headers(headers));
        }
        ctx.request_id = match headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => v.clone(),
            _ => crate::gateway::request_id::next_header(),
        };
    }

    /// The request header as it goes upstream (the reference on what goes upstream).
    fn prepare_upstream_request(&self, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let (Some(verdict), Some(snap)) = (&ctx.verdict, &ctx.snapshot) else {
            return Error::e_explain(ErrorType::InternalError, "request not decided");
        };
        strip_client_headers(req, ctx.key_source, snap, ctx.token_digest.as_ref());
        join_cookies(req)?;
        for (name, value) in crate::decision::headers::identity_headers(snap, verdict) {
            req.insert_header(name, value)?;
        }
        req.insert_header("x-request-id", ctx.request_id.clone())?;
        let plane = verdict.plane.unwrap_or(Plane::Data);
        let upstream = self.upstream(plane);
        for (name, value) in &upstream.set_headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        req.insert_header(http::header::HOST, upstream.authority.clone())?;
        // pingora's path began the call's span before connecting
        // (`upstream_peer`); the proxy's own forward begins it here.
        let traceparent = match ctx.traceparent.take() {
            Some(tp) => Some(tp),
            None => begin_upstream_call(&mut ctx.trace, req.method.as_str(), upstream),
        };
        trace_upstream(req, &ctx.trace, traceparent)
    }

    /// The upstream's response header as it goes to the client.
    fn stamp_response(&self, resp: &mut ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        ctx.upstream_status = Some(resp.status.as_u16());
        resp.insert_header("x-request-id", ctx.request_id.clone())?;
        if let Some(q) = &ctx.quota {
            add_quota_headers(resp, q)?;
        }
        if let Some(t) = &ctx.token_quota {
            add_token_quota_headers(resp, t)?;
        }
        if let (Some(m), Some(plane)) = (metrics(), ctx.verdict.as_ref().and_then(|v| v.plane)) {
            m.upstream_response(self.upstream(plane).name, resp.status.as_u16());
        }
        Ok(())
    }

    /// The counter store's checks (the reference on usage counting and limits shared by replicas): budgets, request and
    /// token rate limits, concurrency. Returns `true` when it answered.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        subjects: Vec<crate::state::SubjectLimits>,
    ) -> Result<bool> {
        use crate::state::AdmitRequest;
        let Some(verdict) = ctx.verdict.as_ref() else {
            return Ok(false);
        };
        let ws = match (&verdict.token, verdict.key) {
            (Some(id), _) => Some(id.workspace),
            (None, Some(k)) => snap.key(k).workspace,
            (None, None) => return Ok(false),
        };
        if subjects.is_empty() {
            return Ok(false);
        }
        let no_spend = decide::Spend::default();
        let facts = verdict.spend.as_ref().unwrap_or(&no_spend);
        let reservation = match verdict.plane {
            Some(Plane::Data) => spend::reservation(
                facts,
                &subjects,
                snap,
                self.spending.default_output_reservation,
            ),
            _ => None,
        };
        let request_model = facts.model.clone();
        let workspace = ws.map_or_else(|| Arc::from("none"), |w| snap.workspace(w).id.clone());
        let result = self
            .spending
            .counters
            .admit(&AdmitRequest {
                subjects: &subjects,
                estimate: reservation.map(|r| r.0),
            })
            .await;
        let refused = match result.into_admission() {
            Ok((admission, quotas)) => {
                ctx.quota = quotas.requests;
                ctx.token_quota = quotas.tokens;
                ctx.meter = Some(spend::Meter {
                    admission: Some(admission),
                    reserved_input: reservation.map_or(0, |r| r.1),
                    request_model,
                    workspace,
                    snap: snap.clone(),
                    counted: reservation.is_some(),
                    store: self.spending.counters.clone(),
                    subjects,
                });
                return Ok(false);
            }
            Err(refused) => refused,
        };
        ctx.note_refusal(&refused);
        let denial = Denial::of_refusal(refused.refusal);
        Box::pin(self.refuse(session, ctx, denial.code, &denial.message, None)).await?;
        Ok(true)
    }

    /// What [`Gateway::admit`] admits the request against: the limits of its
    /// key and workspace that the counter store enforces (none: nothing to
    /// admit, and no admission future is made).
    fn admission_subjects(ctx: &Ctx, snap: &Snapshot) -> Vec<crate::state::SubjectLimits> {
        let now = crate::identity::keys::now_millis();
        ctx.verdict
            .as_ref()
            .and_then(|v| caller_subjects(v, snap, now))
            .unwrap_or_default()
    }

    /// Forwards a request whose body was read: exactly those bytes, sent by
    /// the proxy itself (see `forward`).
    async fn forward_read_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        body: Bytes,
    ) -> Result<()> {
        let plane = ctx
            .verdict
            .as_ref()
            .and_then(|v| v.plane)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route decided"))?;
        let upstream = self.upstream(plane);
        // The reference on usage in streams: a counted stream that did not ask for usage gets it
        // upstream, and the usage chunk is taken out of what the client sees.
        let counted = ctx.meter.as_ref().is_some_and(|m| m.counted);
        let mut strip = false;
        let mut body = body;
        if let (true, Some(spend)) = (
            counted && self.spending.inject_stream_usage,
            ctx.verdict.as_ref().and_then(|v| v.spend.as_ref()),
        ) {
            if spend.stream
                && spend.include_usage != Some(true)
                && spend.usage.is_some_and(|a| a.injects_stream_usage())
            {
                if let Some(injected) = crate::limits::body::inject_include_usage(&body) {
                    body = Bytes::from(injected);
                    strip = true;
                }
            }
        }
        let req = self.read_body_request(session, ctx, body.len())?;
        let peer = &upstream.peer;
        let mut sent = forward::send(&self.connector, peer, req, &body, true).await;
        if let forward::Sent::Stale = sent {
            // The header went into the failed connection: built again, for
            // a new upstream call (its span ends the first one as retried,
            // docs/reference.md#spans).
            let method = session.req_header().method.as_str();
            ctx.traceparent = begin_upstream_call(&mut ctx.trace, method, upstream);
            let req = self.read_body_request(session, ctx, body.len())?;
            sent = forward::send(&self.connector, peer, req, &body, false).await;
        }
        let outcome = match sent {
            forward::Sent::Ready(up) => {
                let tap = ctx.meter.take().map(|m| spend::Tap::new(m, strip));
                let mut hooks = Stamp { gw: self, ctx, tap };
                forward::relay(&self.connector, peer, up, session, &mut hooks).await
            }
            forward::Sent::Failed(e) => forward::Exchange::Failed(e),
            forward::Sent::Stale => forward::Exchange::Failed(Error::explain(
                ErrorType::ConnectionClosed,
                "pooled upstream connection closed",
            )),
        };
        if let forward::Exchange::Answered = outcome {
            let status = ctx.upstream_status.unwrap_or(0);
            ctx.trace.end_upstream(UpstreamOutcome::Status(status));
        }
        if let forward::Exchange::Failed(e) = outcome {
            tracing::debug!(error = %e, "upstream exchange failed");
            ctx.upstream_error = Some(e.etype().as_str());
            let (code, kind) = classify(&e);
            ctx.trace.end_upstream(UpstreamOutcome::Failed(kind));
            if let Some(m) = metrics() {
                m.upstream_error(upstream.name, kind);
            }
            let message = errors::upstream_failure_message(code);
            session.set_keepalive(None);
            Box::pin(self.refuse(session, ctx, code, message, None)).await?;
        }
        Ok(())
    }

    /// The upstream request header of a request whose body was read (and
    /// is `len` bytes as sent): the client's, prepared as for pingora's
    /// path, as HTTP/1.1 with an origin-form target and its own
    /// `Content-Length`.
    fn read_body_request(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        len: usize,
    ) -> Result<RequestHeader> {
        let mut req = session.req_header().clone();
        // The upstream hop is HTTP/1.1 whatever the client spoke: an
        // HTTP/2 request's header carries version 2 and an absolute URI,
        // which an HTTP/1.1 upstream would refuse (pingora's own path does
        // the same conversion). `Host` is set by the preparation.
        req.set_version(http::Version::HTTP_11);
        if req.uri.authority().is_some() {
            let origin = req
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "request target", e))?;
            req.set_uri(origin);
        }
        self.prepare_upstream_request(&mut req, ctx)?;
        remove_hop_by_hop(&mut req);
        req.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from(len))?;
        Ok(req)
    }

    /// A key's own view (docs/reference.md#a-keys-own-view): its limits
    /// read from the counter store (nothing taken), answered here, never
    /// forwarded; 503 `limits_unavailable` when the shared store cannot be
    /// read.
    async fn key_view(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        snap: &Arc<Snapshot>,
        secret_expires: Option<crate::identity::keys::UnixMillis>,
    ) -> Result<()> {
        use crate::decision::key_view;
        ctx.answered = true;
        let token = ctx.verdict.as_ref().and_then(|v| v.token.clone());
        let key = ctx.verdict.as_ref().and_then(|v| v.key);
        let now = crate::identity::keys::now_millis();
        let Some(subjects) = ctx
            .verdict
            .as_ref()
            .and_then(|v| caller_subjects(v, snap, now))
        else {
            return Error::e_explain(ErrorType::InternalError, "key view without a key");
        };
        let Some(readings) = self.spending.counters.read(&subjects).await else {
            let message = "The shared limits store cannot be read now; try again shortly.";
            return self
                .refuse(session, ctx, ErrorCode::LimitsUnavailable, message, None)
                .await;
        };
        let readings: Vec<_> = subjects
            .iter()
            .map(|s| s.subject.scope)
            .zip(readings)
            .collect();
        let body = match (&token, key) {
            (Some(id), _) => key_view::render_token(&self.table, snap, id, &readings, now),
            (None, Some(k)) => {
                key_view::render(&self.table, snap, k, secret_expires, &readings, now)
            }
            (None, None) => String::new(),
        };
        self.answer(session, ctx, 200, body, None).await
    }

    /// A body that never ends must not hold the request (and a worker's
    /// attention) forever: per-read timeouts alone let a client trickle one
    /// byte a minute. Answers 408 and closes the connection.
    async fn refuse_slow_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        verdict: Verdict,
    ) -> Result<()> {
        ctx.shape = verdict.shape;
        ctx.verdict = Some(verdict);
        session.set_keepalive(None);
        let msg = format!(
            "The request body did not arrive within {} ms.",
            self.spending.body_read_timeout_ms
        );
        self.refuse(session, ctx, ErrorCode::RequestTimeout, &msg, None)
            .await
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
        self.answer(session, ctx, code.status(), body, allow).await
    }

    /// Writes an answer of the proxy's own: a JSON body, the request id,
    /// and the quota headers the request earned.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: impl Into<Bytes>,
        allow: Option<&str>,
    ) -> Result<()> {
        let code = ctx.code;
        let body: Bytes = body.into();
        let mut resp = ResponseHeader::build(status, Some(8))?;
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
        if let Some(t) = &ctx.token_quota {
            add_token_quota_headers(&mut resp, t)?;
        }
        if let Some(d) = ctx.retry_after {
            let secs = (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1);
            resp.insert_header(http::header::RETRY_AFTER, secs.to_string())?;
        }
        // An unread body would be taken for the next request: read and drop
        // a small one to keep the connection, close on anything else.
        if !session.as_mut().is_body_done() {
            // A client waiting for `100 Continue` will not send its body:
            // answer now and close.
            let small = !expects_continue(session.req_header())
                && code != Some(ErrorCode::RequestTimeout)
                && matches!(body_hint(session.req_header()), Body::Unread { declared_len: Some(n) } if n <= self.max_body as u64);
            if !(small && session.as_mut().drain_request_body().await.is_ok()) {
                session.set_keepalive(None);
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
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
    /// SHA-256 of the identity token presented, if one was: any other key
    /// header holding it is removed upstream too.
    token_digest: Option<Digest>,
    quota: Option<Quota>,
    token_quota: Option<crate::state::TokenQuota>,
    retry_after: Option<Duration>,
    meter: Option<spend::Meter>,
    in_flight_plane: Option<InFlightPlane>,
    body: Option<Bytes>,
    code: Option<ErrorCode>,
    upstream_status: Option<u16>,
    /// Why the proxy's own upstream exchange failed (`forward`): pingora
    /// hands its own failures to `logging`, these it never sees.
    upstream_error: Option<&'static str>,
    probe: bool,
    /// The proxy answered the request itself (the key's own view).
    answered: bool,
    /// The request's trace spans (off when tracing is).
    trace: RequestSpan,
    /// The `traceparent` of the upstream call begun in `upstream_peer`.
    traceparent: Option<HeaderValue>,
    /// What a counted request was charged, once its answer ended.
    settled: Option<spend::Settled>,
    /// When the first piece of the answer's body arrived.
    first_event: Option<Duration>,
    _in_flight: InFlight,
}

impl Ctx {
    /// Keeps what a refusal of the counter store puts in the response
    /// headers: the quotas, and when the request could pass (in the request
    /// quota when there is one, else as its own `Retry-After`).
    fn note_refusal(&mut self, refused: &crate::state::Refused) {
        use crate::limits::{RateKind, Refusal};
        let retry_after = match refused.refusal {
            Refusal::Budget { .. } | Refusal::Unavailable => return,
            Refusal::Concurrency => None,
            Refusal::Rate {
                kind, retry_after, ..
            } => Some((kind, retry_after)),
        };
        self.quota = refused.quotas.requests;
        self.token_quota = refused.quotas.tokens;
        match retry_after {
            Some((RateKind::Requests, after)) => {
                self.quota = self.quota.map(|mut q| {
                    q.retry_after = q.retry_after.or(Some(after));
                    q
                });
                if self.quota.is_none() {
                    self.retry_after = Some(after);
                }
            }
            Some((RateKind::Tokens, after)) => self.retry_after = Some(after),
            None => {}
        }
    }
}

/// Counts a request as in flight until its context is dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a forwarded request in `scopegate_in_flight_requests{plane}`
/// until its context is dropped.
struct InFlightPlane(Option<&'static prometheus::IntGauge>);

impl InFlightPlane {
    fn enter(plane: Plane) -> InFlightPlane {
        // The two series' handles, looked up once (a label lookup takes
        // a lock and hashes the label, twice a request otherwise).
        static GAUGES: std::sync::OnceLock<Option<[prometheus::IntGauge; 2]>> =
            std::sync::OnceLock::new();
        let gauges = GAUGES.get_or_init(|| {
            crate::ops::metrics::usage_metrics()
                .map(|m| ["data", "control"].map(|p| m.in_flight.with_label_values(&[p])))
        });
        let gauge = gauges.as_ref().map(|g| match plane {
            Plane::Data => &g[0],
            Plane::Control => &g[1],
        });
        if let Some(g) = gauge {
            g.inc();
        }
        InFlightPlane(gauge)
    }
}

impl Drop for InFlightPlane {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.dec();
        }
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

/// [`PROBE_HEADER`] as a header name, for lookups that parse no name.
static PROBE_HEADER_NAME: HeaderName = HeaderName::from_static(PROBE_HEADER);

/// Removes the hop-by-hop fields (and `Expect`, answered by the proxy)
/// that a forwarded request whose body was read does not carry upstream:
/// one pass over its names (a client rarely sends any) instead of a lookup
/// per field.
fn remove_hop_by_hop(req: &mut RequestHeader) {
    // By the name's text: a length and a few bytes compared, where a
    // `HeaderName` comparison per listed field costs more.
    let hop = |name: &HeaderName| {
        matches!(
            name.as_str(),
            "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "expect"
                | "upgrade"
                | "http2-settings"
                | "proxy-authorization"
        )
    };
    if !req.headers.keys().any(hop) {
        return;
    }
    let present: Vec<HeaderName> = req.headers.keys().filter(|n| hop(n)).cloned().collect();
    for name in &present {
        req.remove_header(name);
    }
}

/// `x-request-id`, as a header name.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// [`request::KEY_HEADERS`] as header names, in the same order.
static KEY_HEADER_NAMES: [HeaderName; 4] = [
    HeaderName::from_static(request::KEY_HEADERS[0]),
    HeaderName::from_static(request::KEY_HEADERS[1]),
    HeaderName::from_static(request::KEY_HEADERS[2]),
    HeaderName::from_static(request::KEY_HEADERS[3]),
];

/// A client's `x-request-id` is kept when it is 1–128 of `[A-Za-z0-9._-]`.
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The limits the counter store keeps for the verdict's caller: its
/// identity token's subject, or its key (with their workspace's); `None`
/// when no caller was identified.
fn caller_subjects(
    verdict: &Verdict,
    snap: &Snapshot,
    now: crate::identity::keys::UnixMillis,
) -> Option<Vec<crate::state::SubjectLimits>> {
    match (&verdict.token, verdict.key) {
        (Some(id), _) => Some(spend::token_subjects(snap, id, now)),
        (None, Some(k)) => Some(spend::subjects(snap, snap.key(k), now)),
        (None, None) => None,
    }
}

/// The readiness probe of this process (`x-scopegate-probe` with its token).
fn is_probe(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(&PROBE_HEADER_NAME)
        .is_some_and(|v| v.as_bytes() == probe_token().as_bytes())
}

/// Answers the readiness probe: 204, connection closed; neither logged nor
/// counted.
async fn answer_probe(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    ctx.probe = true;
    let mut resp = ResponseHeader::build(204, Some(1))?;
    resp.insert_header(http::header::CONNECTION, "close")?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), true).await
}

/// The credential of the key headers (the reference on credentials) and
/// the header that carried it.
fn presented(req: &RequestHeader) -> (Presented<'_>, KeySource) {
    let (portkey, authorization, x_api_key, api_key) = (
        header_values(req, &KEY_HEADER_NAMES[0]),
        header_values(req, &KEY_HEADER_NAMES[1]),
        header_values(req, &KEY_HEADER_NAMES[2]),
        header_values(req, &KEY_HEADER_NAMES[3]),
    );
    request::presented_key(&request::KeyHeaders {
        portkey: &portkey,
        authorization: &authorization,
        x_api_key: &x_api_key,
        api_key: &api_key,
    })
}

/// Every value of the header `name`, as bytes; by `HeaderName`, since a
/// name given as `&str` is parsed on every lookup.
fn header_values<'r>(req: &'r RequestHeader, name: &HeaderName) -> Vec<&'r [u8]> {
    req.headers
        .get_all(name)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect()
}

fn body_hint(req: &RequestHeader) -> Body<'static> {
    if req.headers.contains_key(http::header::CONTENT_LENGTH) {
        let values = header_values(req, &http::header::CONTENT_LENGTH);
        // An invalid one is refused by the decision (`invalid_request`).
        return match request::content_length(&values) {
            request::ContentLength::One(0) => Body::Empty,
            request::ContentLength::One(n) => Body::Unread {
                declared_len: Some(n),
            },
            _ => Body::Unread { declared_len: None },
        };
    }
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Body::Unread { declared_len: None };
    }
    Body::Empty
}

fn add_token_quota_headers(resp: &mut ResponseHeader, q: &crate::state::TokenQuota) -> Result<()> {
    // `HeaderValue::from(u64)`: the digits, with no String and no check.
    resp.insert_header("x-ratelimit-limit-tokens", HeaderValue::from(q.limit))?;
    resp.insert_header(
        "x-ratelimit-remaining-tokens",
        HeaderValue::from(q.remaining),
    )?;
    resp.insert_header("x-ratelimit-reset-tokens", rate::format_reset(q.reset))?;
    Ok(())
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
    resp.insert_header("x-ratelimit-limit-requests", HeaderValue::from(q.limit))?;
    resp.insert_header(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(q.remaining),
    )?;
    resp.insert_header("x-ratelimit-reset-requests", rate::format_reset(q.reset))?;
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

/// Removes what must not reach the upstream (the reference on what goes upstream): the
/// header that carried the key, any other key header holding a key of the
/// keys file, `x-portkey-api-key` always, every client header that reads as
/// `x-scopegate-*` or as a key header once `_` is taken for `-` (CGI/WSGI
/// servers map one to the other), and method-override headers (the decision
/// was made on the wire method).
fn strip_client_headers(
    req: &mut RequestHeader,
    source: KeySource,
    snap: &Snapshot,
    token: Option<&Digest>,
) {
    let carrying = match source {
        KeySource::PortkeyHeader => "x-portkey-api-key",
        KeySource::Authorization => "authorization",
        KeySource::XApiKey => "x-api-key",
        KeySource::ApiKey => "api-key",
    };
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let n = name.as_str();
        let remove = if n.contains('_') {
            let dashed = n.replace('_', "-");
            is_identity_or_override(&dashed) || request::KEY_HEADERS.contains(&dashed.as_str())
        } else if request::KEY_HEADERS.contains(&n) {
            // A key of the keys file in any form: bare, after `Bearer` or
            // after any other scheme.
            n == carrying
                || n == "x-portkey-api-key"
                || req.headers.get_all(name).iter().any(|v| {
                    request::key_candidates(v.as_bytes()).any(|s| {
                        let d = crate::identity::keys::digest(s);
                        snap.lookup(&d).is_some() || token == Some(&d)
                    })
                })
        } else {
            is_identity_or_override(n)
        };
        if remove {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        req.remove_header(&name);
    }
}

/// Several `cookie` fields (HTTP/2 sends each cookie as its own field)
/// become one, joined with `; ` (RFC 9113 8.2.3): the upstream hop is
/// HTTP/1.1, where a request carries one `Cookie` header.
fn join_cookies(req: &mut RequestHeader) -> Result<()> {
    let mut values = req.headers.get_all(http::header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return Ok(());
    };
    let joined: Vec<u8> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    let value = HeaderValue::from_bytes(&joined)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "cookie", e))?;
    req.insert_header(http::header::COOKIE, value)
}

/// `x-scopegate-*` or a method-override header (lower-case, dashed name).
fn is_identity_or_override(n: &str) -> bool {
    n.starts_with("x-scopegate-")
        || matches!(
            n,
            "x-http-method-override" | "x-http-method" | "x-method-override"
        )
}

/// The response hooks of a forward: stamp the header; a metered request's
/// body also passes its usage tap.
struct Stamp<'a> {
    gw: &'a Gateway,
    ctx: &'a mut Ctx,
    tap: Option<spend::Tap>,
}

impl forward::ResponseHooks for Stamp<'_> {
    fn header(&mut self, resp: &mut ResponseHeader) -> Result<()> {
        if let Some(t) = &mut self.tap {
            t.header(resp);
        }
        self.gw.stamp_response(resp, self.ctx)
    }

    fn chunk(&mut self, chunk: Bytes) -> Bytes {
        if self.ctx.first_event.is_none() && !chunk.is_empty() {
            self.ctx.first_event = Some(self.ctx.start.elapsed());
        }
        match &mut self.tap {
            Some(t) => t.chunk(chunk),
            None => chunk,
        }
    }

    fn end(&mut self, complete: bool) -> Bytes {
        match &mut self.tap {
            Some(t) => {
                let tail = t.end(complete);
                self.ctx.settled = t.take_settled();
                tail
            }
            None => Bytes::new(),
        }
    }
}

/// Whether the client waits for `100 Continue` before sending its body.
fn expects_continue(req: &RequestHeader) -> bool {
    req.headers
        .get_all(http::header::EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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
    // Boxed: the context (~760 bytes) would otherwise sit inline in
    // pingora's per-request futures, which are moved into boxes whole on
    // every request (a pointer there costs one allocation instead).
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Box::new(Ctx {
            start: Instant::now(),
            request_id: HeaderValue::from_static(""),
            snapshot: None,
            verdict: None,
            shape: ErrorShape::OpenAi,
            key_source: KeySource::PortkeyHeader,
            token_digest: None,
            quota: None,
            token_quota: None,
            retry_after: None,
            meter: None,
            in_flight_plane: None,
            body: None,
            code: None,
            upstream_status: None,
            upstream_error: None,
            probe: false,
            answered: false,
            trace: RequestSpan::off(),
            traceparent: None,
            settled: None,
            first_event: None,
            _in_flight: InFlight(self.in_flight.clone()),
        })
    }

    /// The request header is whole: its deadline (`conn_guard`) is met.
    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Box<Ctx>) -> Result<()> {
        crate::gateway::conn_guard::mark_header_done(session.as_downstream());
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Box<Ctx>) -> Result<bool> {
        if is_probe(session) {
            Box::pin(answer_probe(session, ctx)).await?;
            return Ok(true);
        }
        self.begin_request(session, ctx);
        let snap = self.store.load();
        let hint = h2_body_hint(session);
        let now = crate::identity::keys::now_millis();
        // Boxed: a token's first verification may wait for its JWK set; a
        // request without a token keeps the small future.
        let token = if snap.identity().any() {
            Box::pin(self.token_of(session, ctx, &snap)).await
        } else {
            None
        };
        let (mut verdict, source) = self.decide(session, &snap, hint, token.as_ref(), now, None);
        // A counted request is always sent by the proxy itself, so that its
        // answer passes the usage tap: one with no body to check (the
        // decision reads every other) is read too, which costs nothing.
        let counted_unread = verdict.outcome == Outcome::Allow
            && verdict
                .spend
                .as_ref()
                .is_some_and(|s| s.counted && !s.body_read);
        if verdict.outcome == Outcome::ReadBody || counted_unread {
            // The body is read here, checked, and then sent by the proxy
            // itself (`forward`): pingora would replay only 64 KiB of it.
            // A client waiting for `100 Continue` gets it first.
            if expects_continue(session.req_header()) {
                Box::pin(session.as_mut().write_continue_response()).await?;
            }
            let cap = match verdict.plane {
                Some(Plane::Data) => self.spending.max_data_body,
                _ => self.max_body,
            };
            let deadline = Duration::from_millis(self.spending.body_read_timeout_ms);
            let read = tokio::time::timeout(deadline, read_body_capped(session, cap));
            let Ok(body) = Box::pin(read).await else {
                ctx.snapshot = Some(snap.clone());
                Box::pin(self.refuse_slow_body(session, ctx, verdict)).await?;
                return Ok(true);
            };
            let body = body?;
            let facts_body = match &body {
                Some(b) => Body::Read(b),
                None => Body::TooLarge,
            };
            verdict = self
                .decide(
                    session,
                    &snap,
                    Some(facts_body),
                    token.as_ref(),
                    now,
                    Some(verdict),
                )
                .0;
            ctx.body = body;
        }
        ctx.key_source = source;
        ctx.shape = verdict.shape;
        let outcome = verdict.outcome.clone();
        ctx.verdict = Some(verdict);
        ctx.snapshot = Some(snap.clone());
        match outcome {
            Outcome::Deny(d) => {
                let allow = d.allow.as_deref();
                Box::pin(self.refuse(session, ctx, d.code, &d.message, allow)).await?;
                Ok(true)
            }
            Outcome::KeyView { secret_expires } => {
                Box::pin(self.key_view(session, ctx, &snap, secret_expires)).await?;
                Ok(true)
            }
            Outcome::ReadBody => {
                // Unreachable after a read; refuse rather than forward unchecked.
                let msg = "The body could not be read.";
                Box::pin(self.refuse(session, ctx, ErrorCode::InvalidJson, msg, None)).await?;
                Ok(true)
            }
            Outcome::Allow => {
                // The admission is a future of its own, made only for a key
                // with limits the store enforces (see `admission_subjects`).
                let subjects = Self::admission_subjects(ctx, &snap);
                if !subjects.is_empty()
                    && Box::pin(self.admit(session, ctx, &snap, subjects)).await?
                {
                    return Ok(true);
                }
                if let Some(plane) = ctx.verdict.as_ref().and_then(|v| v.plane) {
                    ctx.in_flight_plane = Some(InFlightPlane::enter(plane));
                }
                if let Some(body) = ctx.body.clone() {
                    Box::pin(self.forward_read_body(session, ctx, body)).await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> Result<Box<HttpPeer>> {
        let plane = ctx
            .verdict
            .as_ref()
            .and_then(|v| v.plane)
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route decided"))?;
        let upstream = self.upstream(plane);
        // The upstream call begins with its connection, which may fail.
        ctx.traceparent = begin_upstream_call(
            &mut ctx.trace,
            session.req_header().method.as_str(),
            upstream,
        );
        Ok(Box::new(upstream.peer.clone()))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        self.prepare_upstream_request(req, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> Result<()> {
        self.stamp_response(resp, ctx)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
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
        let message = errors::upstream_failure_message(code);
        // pingora closes the client connection after a failed proxy attempt;
        // say so in the response rather than advertise keep-alive.
        session.set_keepalive(None);
        let _ = Box::pin(self.refuse(session, ctx, code, message, None)).await;
        FailToProxy {
            error_code: code.status(),
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away mid-request is routine (load balancers,
    /// cancelled streams); the access log records it, so pingora need not
    /// log an ERROR line for each one.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Box<Ctx>, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// pingora's error lines print this; the default holds the whole URI,
    /// and a query string may carry something secret.
    fn request_summary(&self, session: &Session, ctx: &Box<Ctx>) -> String {
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id.to_str().unwrap_or_default()
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        crate::gateway::conn_guard::mark_request_done(session.as_downstream_mut());
        if ctx.probe {
            return;
        }
        if let (Some(mut meter), Some(status)) = (ctx.meter.take(), ctx.upstream_status) {
            // Forwarded by pingora: a request that is not counted (counted
            // ones are sent by the proxy itself, through the usage tap), so
            // this gives its admission back (request limits, concurrency).
            // Were a counted one ever to come here, its reserved input
            // would be charged as an estimate.
            meter.settle(status, &crate::limits::response::Observed::default());
        }
        // pingora's own upstream call ends with the request.
        let outcome = match (ctx.upstream_status, e) {
            (Some(status), _) => Some(UpstreamOutcome::Status(status)),
            (None, Some(e)) => Some(UpstreamOutcome::Failed(classify(e).1)),
            (None, None) => None,
        };
        if let Some(outcome) = outcome {
            ctx.trace.end_upstream(outcome);
        }
        let span = std::mem::take(&mut ctx.trace);
        access_log::record(session, e, ctx_view(ctx, self, span));
    }
}

/// Begins the upstream call's span; returns the `traceparent` naming it
/// (`None` with tracing off).
fn begin_upstream_call(span: &mut RequestSpan, method: &str, up: &Upstream) -> Option<HeaderValue> {
    span.start_upstream(&UpstreamCall {
        method,
        upstream: up.name,
        address: &up.host,
        port: up.port,
    })
}

/// Sets the `traceparent` naming the upstream call (and the client's
/// `tracestate`) in place of any the client sent, when tracing is on
/// (docs/reference.md#sampling-and-propagation); with tracing off the
/// client's pass untouched.
fn trace_upstream(
    req: &mut RequestHeader,
    span: &RequestSpan,
    traceparent: Option<HeaderValue>,
) -> Result<()> {
    use crate::ops::traces::context::{TRACEPARENT, TRACEPARENT_NAME, TRACESTATE, TRACESTATE_NAME};
    if !span.is_on() {
        return Ok(());
    }
    if span.client_sent() {
        req.remove_header(&TRACEPARENT_NAME);
        req.remove_header(&TRACESTATE_NAME);
    }
    if let Some(traceparent) = traceparent {
        req.insert_header(TRACEPARENT, traceparent)?;
        if let Some(state) = span.tracestate() {
            req.insert_header(TRACESTATE, state.to_string())?;
        }
    }
    Ok(())
}

/// The GenAI facts of a counted request (docs/reference.md#spans): the
/// API, the models, the requested maximum and what was charged.
fn genai_facts(ctx: &Ctx) -> Option<crate::ops::traces::GenAiFacts<'_>> {
    use crate::ops::traces::{GenAiApi, GenAiFacts, UsageSource};
    let spend = ctx.verdict.as_ref()?.spend.as_ref().filter(|s| s.counted)?;
    let api = GenAiApi::from_meter(spend.usage?.as_str())?;
    let settled = ctx.settled.as_ref();
    Some(GenAiFacts {
        api,
        request_model: spend.model.as_deref(),
        response_model: settled.and_then(|s| s.response_model.as_deref()),
        max_tokens: spend.max_output,
        input_tokens: settled.map(|s| s.input),
        output_tokens: settled.map(|s| s.output),
        usage_source: settled.map(|s| {
            if s.estimated {
                UsageSource::Estimated
            } else {
                UsageSource::Reported
            }
        }),
        cost_usd: settled.and_then(|s| s.cost),
        first_event_ms: ctx
            .first_event
            .filter(|_| spend.stream)
            .map(|d| d.as_millis() as u64),
    })
}

fn ctx_view<'a>(ctx: &'a Ctx, gw: &'a Gateway, span: RequestSpan) -> Finished<'a> {
    let forwarded = !ctx.answered && ctx.code.is_none()
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
        error: ctx.upstream_error,
        span,
        genai: genai_facts(ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields [`remove_hop_by_hop`] removes, as header names.
    static HOP_BY_HOP: [HeaderName; 10] = [
        http::header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        http::header::TE,
        http::header::TRAILER,
        http::header::TRANSFER_ENCODING,
        http::header::EXPECT,
        http::header::UPGRADE,
        HeaderName::from_static("http2-settings"),
        http::header::PROXY_AUTHORIZATION,
    ];

    #[test]
    fn every_hop_by_hop_field_and_only_those_are_removed() {
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for name in [
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Expect",
            "Upgrade",
            "HTTP2-Settings",
            "Proxy-Authorization",
        ] {
            req.append_header(name.to_string(), "x").unwrap();
        }
        req.append_header("Connection".to_string(), "y").unwrap();
        req.append_header("X-Kept".to_string(), "1").unwrap();
        req.append_header("content-type".to_string(), "application/json")
            .unwrap();
        remove_hop_by_hop(&mut req);
        for hop in &HOP_BY_HOP {
            assert!(!req.headers.contains_key(hop), "{hop} stayed");
        }
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        let text = String::from_utf8(wire).unwrap();
        let mut lines: Vec<&str> = text.split_terminator("\r\n").collect();
        lines.sort_unstable();
        // The names keep their case.
        assert_eq!(lines, ["X-Kept: 1", "content-type: application/json"]);
        // The list by text is the list of names.
        let mut listed = RequestHeader::build("GET", b"/", None).unwrap();
        for hop in &HOP_BY_HOP {
            listed.append_header(hop.clone(), "x").unwrap();
        }
        remove_hop_by_hop(&mut listed);
        assert!(listed.headers.is_empty());
        // Nothing to remove: nothing changes.
        remove_hop_by_hop(&mut req);
        assert_eq!(req.headers.len(), 2);
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.append_header("cookie", "a=1").expect("cookie");
        req.append_header("cookie", "b=2; c=3").expect("cookie");
        join_cookies(&mut req).expect("joined");
        let all: Vec<&[u8]> = req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(all, [&b"a=1; b=2; c=3"[..]]);
        let mut one = RequestHeader::build("GET", b"/", None).expect("request");
        one.append_header("cookie", "a=1").expect("cookie");
        join_cookies(&mut one).expect("untouched");
        assert_eq!(
            one.headers.get(http::header::COOKIE).map(|v| v.as_bytes()),
            Some(&b"a=1"[..])
        );
    }

    #[test]
    fn body_hint_reads_one_content_length_and_distrusts_the_rest() {
        let hint = |lengths: &[&str], chunked: bool| {
            let mut req = RequestHeader::build("POST", b"/", None).expect("request");
            for l in lengths {
                req.append_header("content-length", *l).expect("length");
            }
            if chunked {
                req.append_header("transfer-encoding", "chunked")
                    .expect("te");
            }
            body_hint(&req)
        };
        assert_eq!(hint(&[], false), Body::Empty);
        assert_eq!(hint(&["0"], false), Body::Empty);
        assert_eq!(
            hint(&["12"], false),
            Body::Unread {
                declared_len: Some(12)
            }
        );
        assert_eq!(hint(&["5, 5"], false), Body::Unread { declared_len: None });
        assert_eq!(
            hint(&["5", "5"], false),
            Body::Unread { declared_len: None }
        );
        assert_eq!(hint(&[], true), Body::Unread { declared_len: None });
    }

    /// A gateway over no keys, its upstreams on a closed local port.
    fn test_gateway() -> Gateway {
        let up = UpstreamConfig {
            url: "http://127.0.0.1:9".into(),
            tls: false,
            host: "127.0.0.1".into(),
            port: 9,
            authority: "127.0.0.1:9".into(),
            connect_timeout_ms: 100,
            read_timeout_ms: 100,
            set_headers: Vec::new(),
            ca_file: None,
            sni: String::new(),
        };
        let snap = crate::identity::keys::load::parse_keys_str(
            "organisations: [{ id: org_a }]\nkeys: []\n",
            std::path::Path::new("keys.yaml"),
            &crate::identity::scopes::ScopeRegistry::builtin(),
        )
        .expect("keys");
        Gateway::new(
            Arc::new(RouteTable::build(&[], true).expect("routes")),
            KeyStore::new(snap),
            Upstream::from_config("completions", &up).expect("upstream"),
            Upstream::from_config("admin", &up).expect("upstream"),
            1024,
            Arc::new(AtomicUsize::new(0)),
            Spending {
                counters: Arc::new(crate::state::local::LocalStore::in_memory()),
                max_data_body: 1024,
                inject_stream_usage: true,
                body_read_timeout_ms: 100,
                default_output_reservation: 16,
            },
        )
    }

    /// `async_trait` boxes the request filter's future for every request,
    /// copying it whole: its rare, deep awaits (the body read, the
    /// admission, the proxy's own forward, refusals) are boxed on their
    /// own so that it stays small.
    #[test]
    fn the_request_filter_future_stays_small() {
        let gw = test_gateway();
        let (io, _peer) = tokio::io::duplex(64);
        let mut session = Session::new_h1(Box::new(io));
        let mut ctx = gw.new_ctx();
        let fut = gw.request_filter(&mut session, &mut ctx);
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 1024, "request_filter's future is {size} bytes");
    }

    /// The forward of a read body is boxed on its own and copied whole: a
    /// new upstream connection's (large) future is boxed apart from it.
    #[test]
    fn the_forward_future_leaves_connecting_out() {
        let gw = test_gateway();
        let (io, _peer) = tokio::io::duplex(64);
        let mut session = Session::new_h1(Box::new(io));
        let mut ctx = gw.new_ctx();
        let fut = gw.forward_read_body(&mut session, &mut ctx, Bytes::new());
        let size = std::mem::size_of_val(&fut);
        assert!(
            size <= 6 * 1024,
            "forward_read_body's future is {size} bytes"
        );
        let connect = gw.connector.get_http_session(&gw.completions.peer);
        assert!(
            std::mem::size_of_val(&connect) > size,
            "connecting is the large part"
        );
    }

    #[test]
    fn key_header_names_are_the_key_headers() {
        for (name, text) in KEY_HEADER_NAMES.iter().zip(request::KEY_HEADERS) {
            assert_eq!(name.as_str(), text);
        }
        assert_eq!(PROBE_HEADER_NAME.as_str(), PROBE_HEADER);
    }

    #[test]
    fn request_id_rule() {
        assert!(valid_request_id(b"abc-123_x.y"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
    }
}
