//! The rules of admission and settlement over one request's subjects, on
//! plain in-memory state: GCRA for request limits (the formula of
//! `limits::rate::KeyLimiter`), GCRA over tokens for token limits, the
//! reservation rule of usage limits, concurrency slots. The local backend
//! runs them under its locks; the Redis backend's Lua scripts implement
//! the same rules (see `redis.rs`).

use std::sync::Arc;
use std::time::Duration;

use crate::limits::rate::{Quota, RateLimit};
use crate::limits::view::{RateReading, Reading, UsageReading};
use crate::limits::{TokenRate, UsageKind};

use super::{
    Admission, AdmitResult, Charge, Estimate, Origin, Part, Quotas, RateKind, SubjectLimits,
    TokenQuota, UsageNow,
};

/// Usage of one subject in one period: what [`UsageNow`] reports, plus
/// when the period ends and whether it is yet to be written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct PeriodUsage {
    /// The counters; `usage.period_key` names the period.
    pub usage: UsageNow,
    pub end_ms: Option<i64>,
    /// Changed since the last write to the database.
    pub dirty: bool,
}

impl PeriodUsage {
    pub fn new(key: Arc<str>, end_ms: Option<i64>) -> PeriodUsage {
        PeriodUsage {
            usage: UsageNow {
                period_key: key,
                ..UsageNow::default()
            },
            end_ms,
            dirty: false,
        }
    }

    pub fn now(&self) -> UsageNow {
        self.usage.clone()
    }

    fn reserved(&self) -> bool {
        self.usage.reserved_tokens > 0 || self.usage.reserved_cost > 0.0
    }
}

/// All live state of one subject.
#[derive(Debug, Default)]
pub(crate) struct SubjectState {
    /// Fingerprint of the rate limits the TATs belong to.
    pub fingerprint: u64,
    /// Theoretical arrival times ([`crate::limits::rate::monotonic_ns`]) per request limit.
    pub req_tat: Vec<u64>,
    /// Theoretical arrival times per token limit.
    pub tok_tat: Vec<u64>,
    /// Admissions holding a concurrency slot.
    pub in_flight: u32,
    /// Usage per period: the current one, and older ones still settling or
    /// not yet written.
    pub periods: Vec<PeriodUsage>,
}

impl SubjectState {
    /// Resets the rate state when the limits changed (a keys reload).
    fn align(&mut self, limits: &SubjectLimits, fingerprint: u64) {
        if self.fingerprint != fingerprint
            || self.req_tat.len() != limits.requests.len()
            || self.tok_tat.len() != limits.tokens.len()
        {
            self.fingerprint = fingerprint;
            self.req_tat = vec![0; limits.requests.len()];
            self.tok_tat = vec![0; limits.tokens.len()];
        }
    }

    pub fn period_mut(&mut self, key: &Arc<str>, end_ms: Option<i64>) -> &mut PeriodUsage {
        let i = match self.periods.iter().position(|p| p.usage.period_key == *key) {
            Some(i) => i,
            None => {
                self.periods.push(PeriodUsage::new(key.clone(), end_ms));
                self.periods.len() - 1
            }
        };
        &mut self.periods[i]
    }

    pub fn period(&self, key: &str) -> Option<&PeriodUsage> {
        self.periods.iter().find(|p| &*p.usage.period_key == key)
    }

    /// Forgets periods other than `current` that hold nothing pending.
    fn prune(&mut self, current: &str) {
        self.periods
            .retain(|p| &*p.usage.period_key == current || p.reserved() || p.dirty);
    }
}

fn emission_ns(l: &RateLimit) -> u64 {
    (l.period.as_nanos() / u128::from(l.value.max(1))) as u64
}

fn period_ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// The time `tokens` take from a token limit.
pub(crate) fn token_cost_ns(l: &TokenRate, tokens: u64) -> u64 {
    let ns = l.period.as_nanos() * u128::from(tokens) / u128::from(l.value.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX / 4)
}

/// The tightest request quota over all subjects (fewest left; on a tie,
/// the longest reset), as `KeyLimiter::check` reports it.
fn request_quota(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    now: u64,
) -> Option<Quota> {
    let mut best: Option<(u32, u32, u64)> = None;
    for (s, st) in subjects.iter().zip(states) {
        for (l, tat) in s.requests.iter().zip(&st.req_tat) {
            let used_ns = (*tat).max(now) - now;
            let free_ns = period_ns(l.period).saturating_sub(used_ns);
            let remaining = ((free_ns / emission_ns(l).max(1)) as u32).min(l.value);
            if best.is_none_or(|(r, _, reset)| remaining < r || (remaining == r && used_ns > reset))
            {
                best = Some((remaining, l.value, used_ns));
            }
        }
    }
    best.map(|(remaining, limit, reset)| Quota {
        limit,
        remaining,
        reset: Duration::from_nanos(reset),
        retry_after: None,
    })
}

fn token_quota(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    now: u64,
) -> Option<TokenQuota> {
    let mut best: Option<(u64, u64, u64)> = None;
    for (s, st) in subjects.iter().zip(states) {
        for (l, tat) in s.tokens.iter().zip(&st.tok_tat) {
            let used_ns = (*tat).max(now) - now;
            let p = period_ns(l.period).max(1);
            let free_ns = p.saturating_sub(used_ns);
            let remaining = (u128::from(free_ns) * u128::from(l.value) / u128::from(p)) as u64;
            if best.is_none_or(|(r, _, reset)| remaining < r || (remaining == r && used_ns > reset))
            {
                best = Some((remaining, l.value, used_ns));
            }
        }
    }
    best.map(|(remaining, limit, reset)| TokenQuota {
        limit,
        remaining,
        reset: Duration::from_nanos(reset),
    })
}

fn quotas(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    est: Option<Estimate>,
    now: u64,
) -> Quotas {
    Quotas {
        requests: request_quota(subjects, states, now),
        tokens: est.and_then(|_| token_quota(subjects, states, now)),
    }
}

/// Admits a request over `subjects` (each with its locked state, same
/// order), committing everything or nothing: usage limits, then request
/// and token rate limits, then concurrency; the first refusal answers.
pub(crate) fn admit(
    subjects: &[&SubjectLimits],
    states: &mut [&mut SubjectState],
    est: Option<Estimate>,
    now: u64,
    id: u64,
) -> AdmitResult {
    let fps: Vec<u64> = subjects.iter().map(|s| s.rate_fingerprint()).collect();
    for ((s, st), fp) in subjects.iter().zip(states.iter_mut()).zip(&fps) {
        st.align(s, *fp);
        st.prune(&s.period_key);
    }
    if let Some(refused) = over_budget(subjects, states, est)
        .or_else(|| rate_limited(subjects, states, est, now))
        .or_else(|| at_concurrency(subjects, states, est, now))
    {
        return refused;
    }
    let parts = commit(subjects, states, est, now, fps);
    AdmitResult::Admitted {
        quotas: quotas(subjects, states, est, now),
        admission: Admission {
            id,
            origin: Origin::Local,
            parts,
            has_estimate: est.is_some(),
        },
    }
}

/// (1) Usage limits: used + reserved + this estimate ≤ credit_limit.
fn over_budget(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    est: Option<Estimate>,
) -> Option<AdmitResult> {
    let e = est?;
    for (s, st) in subjects.iter().zip(states.iter()) {
        let Some(limit) = &s.usage else { continue };
        let p = st.period(&s.period_key);
        let (used, reserved, this) = match limit.kind {
            UsageKind::Tokens => (
                p.map_or(0.0, |p| (p.usage.tokens_in + p.usage.tokens_out) as f64),
                p.map_or(0.0, |p| p.usage.reserved_tokens as f64),
                e.tokens as f64,
            ),
            UsageKind::Cost => (
                p.map_or(0.0, |p| p.usage.cost),
                p.map_or(0.0, |p| p.usage.reserved_cost),
                e.cost,
            ),
        };
        if used + reserved + this > limit.credit_limit {
            return Some(AdmitResult::BudgetExhausted {
                subject: s.subject.clone(),
            });
        }
    }
    None
}

/// (2) Request, then token, rate limits: the longest wait of each kind.
fn rate_limited(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    est: Option<Estimate>,
    now: u64,
) -> Option<AdmitResult> {
    let mut req_wait: Option<(u64, usize)> = None;
    let mut tok_wait: Option<(u64, usize)> = None;
    let mut larger = false;
    for (i, (s, st)) in subjects.iter().zip(states.iter()).enumerate() {
        for (l, tat) in s.requests.iter().zip(&st.req_tat) {
            let allow_at = ((*tat).max(now) + emission_ns(l)).saturating_sub(period_ns(l.period));
            if allow_at > now && req_wait.is_none_or(|(w, _)| allow_at - now > w) {
                req_wait = Some((allow_at - now, i));
            }
        }
        let Some(e) = est else { continue };
        for (l, tat) in s.tokens.iter().zip(&st.tok_tat) {
            if e.tokens > l.value {
                larger = true;
                let wait = period_ns(l.period);
                if tok_wait.is_none_or(|(w, _)| wait > w) {
                    tok_wait = Some((wait, i));
                }
                continue;
            }
            let allow_at =
                ((*tat).max(now) + token_cost_ns(l, e.tokens)).saturating_sub(period_ns(l.period));
            if allow_at > now && tok_wait.is_none_or(|(w, _)| allow_at - now > w) {
                tok_wait = Some((allow_at - now, i));
            }
        }
    }
    let (which, wait, i, larger_than_limit) = match (req_wait, tok_wait) {
        (Some((w, i)), _) => (RateKind::Requests, w, i, false),
        (None, Some((w, i))) => (RateKind::Tokens, w, i, larger),
        (None, None) => return None,
    };
    let mut quotas = quotas(subjects, states, est, now);
    if let (RateKind::Requests, Some(q)) = (which, quotas.requests.as_mut()) {
        q.retry_after = Some(Duration::from_nanos(wait));
    }
    Some(AdmitResult::RateLimited {
        which,
        subject: subjects[i].subject.clone(),
        retry_after: Duration::from_nanos(wait),
        larger_than_limit,
        quotas,
    })
}

/// (3) Concurrency: a subject with `max_concurrent` requests in flight.
fn at_concurrency(
    subjects: &[&SubjectLimits],
    states: &[&mut SubjectState],
    est: Option<Estimate>,
    now: u64,
) -> Option<AdmitResult> {
    for (s, st) in subjects.iter().zip(states.iter()) {
        if let Some(max) = s.max_concurrent {
            if st.in_flight >= max {
                return Some(AdmitResult::ConcurrencyLimited {
                    subject: s.subject.clone(),
                    quotas: quotas(subjects, states, est, now),
                });
            }
        }
    }
    None
}

/// Takes what an admitted request takes: rate-limit times, the
/// reservation, a concurrency slot. Returns the parts to settle.
fn commit(
    subjects: &[&SubjectLimits],
    states: &mut [&mut SubjectState],
    est: Option<Estimate>,
    now: u64,
    fps: Vec<u64>,
) -> Vec<Part> {
    let mut parts = Vec::with_capacity(subjects.len());
    for ((s, st), fp) in subjects.iter().zip(states.iter_mut()).zip(fps) {
        for (l, tat) in s.requests.iter().zip(st.req_tat.iter_mut()) {
            *tat = (*tat).max(now) + emission_ns(l);
        }
        let mut part = Part {
            limits: (*s).clone(),
            fingerprint: fp,
            token_estimate: None,
            reserved_tokens: 0,
            reserved_cost: 0.0,
            slot: s.max_concurrent.is_some(),
        };
        if let Some(e) = est {
            for (l, tat) in s.tokens.iter().zip(st.tok_tat.iter_mut()) {
                *tat = (*tat).max(now) + token_cost_ns(l, e.tokens);
            }
            if !s.tokens.is_empty() {
                part.token_estimate = Some(e.tokens);
            }
            let p = st.period_mut(&s.period_key, s.period_end_ms);
            p.usage.reserved_tokens += e.tokens;
            p.usage.reserved_cost += e.cost;
            p.dirty = true;
            part.reserved_tokens = e.tokens;
            part.reserved_cost = e.cost;
        }
        if part.slot {
            st.in_flight += 1;
        }
        parts.push(part);
    }
    parts
}

/// A request rate limit's state at `now` whose theoretical arrival time
/// is `tat` (nanoseconds): what would pass now (one emission interval
/// each), and when the limit is whole again — the header quota's formula,
/// per limit.
pub(crate) fn request_reading(l: &RateLimit, tat: u64, now: u64) -> RateReading {
    let used_ns = tat.max(now) - now;
    let free_ns = period_ns(l.period).saturating_sub(used_ns);
    RateReading {
        remaining: (free_ns / emission_ns(l).max(1)).min(u64::from(l.value)),
        reset: Duration::from_nanos(used_ns),
    }
}

/// A token rate limit's state at `now` (as [`request_reading`]).
pub(crate) fn token_reading(l: &TokenRate, tat: u64, now: u64) -> RateReading {
    let used_ns = tat.max(now) - now;
    let p = period_ns(l.period).max(1);
    let free_ns = p.saturating_sub(used_ns);
    RateReading {
        remaining: ((u128::from(free_ns) * u128::from(l.value) / u128::from(p)) as u64)
            .min(l.value),
        reset: Duration::from_nanos(used_ns),
    }
}

/// A usage limit's state from the subject's usage in its period.
pub(crate) fn usage_reading(kind: UsageKind, u: &UsageNow) -> UsageReading {
    UsageReading {
        used: u.used(kind),
        reserved: match kind {
            UsageKind::Tokens => u.reserved_tokens as f64,
            UsageKind::Cost => u.reserved_cost,
        },
    }
}

/// One subject's limits read from its state at `now` (a key's own view),
/// without changing anything. Rate state of other limits (a reload changed
/// them) reads as unused, as admission would reset it.
pub(crate) fn read(s: &SubjectLimits, st: Option<&SubjectState>, now: u64) -> Reading {
    let aligned = st.filter(|st| {
        st.fingerprint == s.rate_fingerprint()
            && st.req_tat.len() == s.requests.len()
            && st.tok_tat.len() == s.tokens.len()
    });
    let tat = |list: fn(&SubjectState) -> &Vec<u64>, i: usize| {
        aligned.and_then(|st| list(st).get(i).copied()).unwrap_or(0)
    };
    let requests = s
        .requests
        .iter()
        .enumerate()
        .map(|(i, l)| request_reading(l, tat(|st| &st.req_tat, i), now))
        .collect();
    let tokens = s
        .tokens
        .iter()
        .enumerate()
        .map(|(i, l)| token_reading(l, tat(|st| &st.tok_tat, i), now))
        .collect();
    let usage = s.usage.map(|limit| {
        let u = st
            .and_then(|st| st.period(&s.period_key))
            .map(PeriodUsage::now)
            .unwrap_or_default();
        usage_reading(limit.kind, &u)
    });
    Reading {
        requests,
        tokens,
        usage,
        in_flight: st.map_or(0, |st| st.in_flight),
    }
}

/// Settles one part of an admission on its subject's locked state.
/// `charge: None` releases (nothing used).
pub(crate) fn settle_part(
    part: &Part,
    st: &mut SubjectState,
    charge: Option<&Charge>,
    has_estimate: bool,
    now: u64,
) {
    let actual = charge.map_or(0, |c| c.input + c.output);
    if let Some(est) = part.token_estimate {
        if st.fingerprint == part.fingerprint {
            for (l, tat) in part.limits.tokens.iter().zip(st.tok_tat.iter_mut()) {
                if actual > est {
                    *tat = (*tat).max(now) + token_cost_ns(l, actual - est);
                } else {
                    *tat = tat
                        .saturating_sub(token_cost_ns(l, est - actual))
                        .max(now.min(*tat));
                }
            }
        }
    }
    if has_estimate || charge.is_some_and(|c| c.input + c.output > 0 || c.cost > 0.0) {
        let p = st.period_mut(&part.limits.period_key, part.limits.period_end_ms);
        let u = &mut p.usage;
        u.reserved_tokens = u.reserved_tokens.saturating_sub(part.reserved_tokens);
        u.reserved_cost = (u.reserved_cost - part.reserved_cost).max(0.0);
        if u.reserved_tokens == 0 {
            // Float sums of reservations need not come back to exactly 0.
            u.reserved_cost = 0.0;
        }
        if let Some(c) = charge {
            u.tokens_in += c.input;
            u.tokens_out += c.output;
            u.cached_input += c.cached_input;
            u.cache_write += c.cache_write;
            u.cost += c.cost;
            if c.estimated {
                u.estimated_tokens += c.input + c.output;
            }
        }
        p.dirty = true;
    }
    if part.slot {
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}
