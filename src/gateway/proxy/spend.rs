//! The pingora side of spending (the reference on models, tokens and budgets and on limits shared by replicas): the subjects and estimate a request
//! brings to the counter store, and the response tap that reads the
//! upstream's usage and settles the reservation when the response ends.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;

use crate::decision::decide::Spend;
use crate::identity::keys::{Key, Snapshot, WsIdx};
use crate::identity::token::VerifiedIdentity;
use crate::limits::rate::RateLimit;
use crate::limits::response::{settle, BodyReader, Observed};
use crate::limits::Limits;
use crate::limits::Scope;
use crate::limits::{estimate, period, price};
use crate::ops::metrics::usage_metrics;
use crate::state::{Admission, Charge, CounterStore, Estimate, SubjectId, SubjectLimits};

/// The key's and its workspace's limits as the store takes them; empty when
/// neither has any limit the store enforces.
pub fn subjects(snap: &Snapshot, key: &Key, now_ms: i64) -> Vec<SubjectLimits> {
    subjects_of(
        snap,
        (
            SubjectId::key(key.id.clone()),
            &key.rate_limits,
            &key.limits,
        ),
        key.workspace,
        now_ms,
    )
}

/// An identity token's: its subject's counters (per subject of its
/// organisation, with the limits of `identity_tokens`) and its workspace's,
/// which bind tokens and keys together.
pub fn token_subjects(snap: &Snapshot, id: &VerifiedIdentity, now_ms: i64) -> Vec<SubjectLimits> {
    let subject = SubjectId {
        scope: Scope::Token,
        id: id.counter_id.clone(),
    };
    subjects_of(
        snap,
        (subject, id.rate_limits(), id.limits()),
        Some(id.workspace),
        now_ms,
    )
}

fn subjects_of(
    snap: &Snapshot,
    own: (SubjectId, &[RateLimit], &Limits),
    workspace: Option<WsIdx>,
    now_ms: i64,
) -> Vec<SubjectLimits> {
    // At most the key's (or token subject's) and its workspace's.
    let mut out = Vec::with_capacity(2);
    let ws = workspace.map(|w| snap.workspace(w));
    let ws_id: Option<Arc<str>> = ws.map(|w| w.id.clone());
    let mk = |subject: SubjectId, requests: &[RateLimit], limits: &Limits| {
        let mut s = SubjectLimits::new(subject);
        s.workspace = ws_id.clone();
        s.requests = requests.to_vec();
        s.tokens = limits.token_rates.clone();
        s.usage = limits.usage;
        s.max_concurrent = limits.max_concurrent;
        if let Some(u) = &limits.usage {
            let p = period::period_of(u.reset, now_ms);
            s.period_key = p.key;
            s.period_end_ms = p.end_ms;
        }
        s
    };
    let has = |requests: &[RateLimit], l: &Limits| {
        !requests.is_empty() || l.counts_tokens() || l.max_concurrent.is_some()
    };
    let (subject, requests, limits) = own;
    if has(requests, limits) {
        out.push(mk(subject, requests, limits));
    }
    if let Some(w) = ws {
        if has(&w.rate_limits, &w.limits) {
            out.push(mk(
                SubjectId::workspace(w.id.clone()),
                &w.rate_limits,
                &w.limits,
            ));
        }
    }
    out
}

/// The reservation of a counted request (the reference on usage counting), or `None` when the
/// route carries no token usage or no subject counts tokens.
/// `default_output` is `default_output_reservation`.
pub fn reservation(
    spend: &Spend,
    subjects: &[SubjectLimits],
    snap: &Snapshot,
    default_output: u64,
) -> Option<(Estimate, u64)> {
    let counts = subjects
        .iter()
        .any(|s| s.usage.is_some() || !s.tokens.is_empty());
    let api = spend.usage.filter(|_| counts)?;
    let asked = estimate::Asked {
        body_len: spend.body_len,
        max_output: spend.max_output,
        n: spend.n,
    };
    let e = estimate::reservation(api, asked, default_output);
    let cost = spend
        .model
        .as_deref()
        .and_then(|m| price::price_for(snap.model_prices(), m))
        .map_or(0.0, |p| price::cost_usd(e.input, e.output, p));
    Some((
        Estimate {
            tokens: e.total(),
            cost,
        },
        e.input,
    ))
}

/// What a counted request settles when it ends.
pub struct Meter {
    /// The store's admission, settled exactly once.
    pub admission: Option<Admission>,
    /// Reserved input tokens (the estimate's input half).
    pub reserved_input: u64,
    /// The request's model.
    pub request_model: Option<String>,
    /// Metrics label: the canonical workspace id.
    pub workspace: Arc<str>,
    /// The price table of the snapshot the request was decided with.
    pub snap: Arc<Snapshot>,
    /// Whether the request is counted (a reservation was made).
    pub counted: bool,
    /// The store.
    pub store: Arc<dyn CounterStore>,
    /// Usage limits to refresh the ratio gauge for.
    pub subjects: Vec<SubjectLimits>,
}

/// What a counted request was charged, for its trace span
/// (docs/reference.md#spans).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settled {
    /// Input tokens charged.
    pub input: u64,
    /// Output tokens charged.
    pub output: u64,
    /// The usage was estimated, not reported.
    pub estimated: bool,
    /// The cost in USD, when the model is priced.
    pub cost: Option<f64>,
    /// The model the response named.
    pub response_model: Option<String>,
}

impl Meter {
    /// Settles with what the response revealed (or gives back a request
    /// that was never counted). Returns what a counted request was charged.
    pub fn settle(&mut self, status: u16, observed: &Observed) -> Option<Settled> {
        let admission = self.admission.take()?;
        if !self.counted {
            self.store.settle(admission, Charge::default());
            return None;
        }
        let c = settle::settle(
            self.reserved_input,
            status,
            observed,
            self.request_model.as_deref(),
        );
        let priced = price::settlement_price(
            self.snap.model_prices(),
            observed.model.as_deref(),
            self.request_model.as_deref(),
        );
        let tokens = price::Tokens {
            input: c.input,
            cached_input: c.cached_input,
            cache_write: c.cache_write,
            output: c.output,
        };
        let cost = priced.map_or(0.0, |p| price::cost_of(tokens, p));
        if let Some(m) = usage_metrics() {
            m.settled(
                &self.workspace,
                &crate::ops::metrics::SettledCounts {
                    input: c.input,
                    output: c.output,
                    cached_input: c.cached_input,
                    cache_write: c.cache_write,
                    estimated: c.estimated,
                    cost,
                    unpriced: priced.is_none(),
                },
            );
        }
        self.store.settle(
            admission,
            Charge {
                input: c.input,
                output: c.output,
                cached_input: c.cached_input,
                cache_write: c.cache_write,
                cost,
                estimated: c.estimated,
            },
        );
        self.after_settle();
        Some(Settled {
            input: c.input,
            output: c.output,
            estimated: c.estimated,
            cost: priced.map(|_| cost),
            response_model: observed.model.clone(),
        })
    }

    /// Refreshes the usage-limit gauges and logs a crossed alert threshold.
    fn after_settle(&self) {
        for s in &self.subjects {
            let Some(limit) = &s.usage else { continue };
            let now = self.store.usage(&s.subject, &s.period_key);
            let used = now.used(limit.kind);
            // No metric label holds a token's subject.
            if let (Some(m), false) = (usage_metrics(), s.subject.scope == Scope::Token) {
                m.limit_ratio
                    .with_label_values(&[s.subject.scope.as_str(), &s.subject.id])
                    .set(used / limit.credit_limit);
            }
            if let Some(t) = limit.alert_threshold {
                crate::gateway::proxy::spend::alert_once(&s.subject, &s.period_key, used, t);
            }
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        // A request that ended without a settlement (an error path) gives
        // back what it reserved; nothing reached the client to count.
        if let Some(a) = self.admission.take() {
            self.store.release(a);
        }
    }
}

/// Logs one line the first time a subject's usage crosses its alert
/// threshold in a period.
pub fn alert_once(subject: &SubjectId, period_key: &str, used: f64, threshold: f64) {
    use std::sync::OnceLock;
    static SEEN: OnceLock<dashmap::DashSet<(SubjectId, Arc<str>)>> = OnceLock::new();
    if used < threshold {
        return;
    }
    let seen = SEEN.get_or_init(dashmap::DashSet::new);
    if seen.insert((subject.clone(), Arc::from(period_key))) {
        tracing::warn!(
            scope = subject.scope.as_str(),
            id = &*subject.id,
            period = period_key,
            used,
            alert_threshold = threshold,
            "usage crossed its alert threshold"
        );
    }
}

/// The response side of a counted request: reads usage as the body passes,
/// strips the injected usage chunk, settles at the end.
pub struct Tap {
    meter: Meter,
    /// The proxy set `stream_options.include_usage` for this request.
    strip: bool,
    reader: Option<BodyReader>,
    status: u16,
    settled: Option<Settled>,
}

impl Tap {
    /// A tap for a request metered by `meter`; an answer of any size is
    /// read in constant memory.
    pub fn new(meter: Meter, strip: bool) -> Tap {
        Tap {
            meter,
            strip,
            reader: None,
            status: 0,
            settled: None,
        }
    }

    /// Looks at the response header: picks the reader and decoder, and
    /// when stripping a compressed stream, forwards it decoded.
    pub fn header(&mut self, resp: &mut ResponseHeader) {
        self.status = resp.status.as_u16();
        if !self.meter.counted {
            return;
        }
        let content_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let encoding = resp
            .headers
            .get(http::header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("unreadable"));
        // Unknown encoding or content type: the response passes untouched
        // and is estimated.
        let Some((reader, change)) = BodyReader::for_response(content_type, encoding, self.strip)
        else {
            return;
        };
        if change.remove_content_encoding {
            resp.remove_header(&http::header::CONTENT_ENCODING);
        }
        if change.remove_content_length {
            resp.remove_header(&http::header::CONTENT_LENGTH);
        }
        self.reader = Some(reader);
    }

    /// One chunk from the upstream; returns what the client gets.
    pub fn chunk(&mut self, chunk: Bytes) -> Bytes {
        match &mut self.reader {
            Some(reader) => reader.chunk(chunk),
            None => chunk,
        }
    }

    /// The end of the response: flush held bytes and settle.
    pub fn end(&mut self, _complete: bool) -> Bytes {
        let (tail, observed) = match &mut self.reader {
            Some(reader) => reader.end(),
            None => (Bytes::new(), Observed::default()),
        };
        self.settled = self.meter.settle(self.status, &observed);
        tail
    }

    /// What the request was charged, once [`Tap::end`] settled it.
    pub fn take_settled(&mut self) -> Option<Settled> {
        self.settled.take()
    }
}
