//! The counter store: request and token rate limits, usage budgets with
//! in-flight reservations, and concurrency, for keys and workspaces (the
//! reference on usage counting and on limits shared by replicas). May
//! import `limits`.
//!
//! One trait, [`CounterStore`], two backends: [`local`] (live
//! counters in memory, usage persisted to an embedded SQLite file) and
//! [`redis`] (one shared set of counters for every replica).
//!
//! Imports only the `limits` vocabulary; periods are computed by the caller
//! and passed in as plain data.

pub mod local;
pub mod redis;
mod rules;
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::limits::rate::{Quota, RateLimit};
use crate::limits::view::Reading;
use crate::limits::{RateKind, Refusal, Scope, TokenRate, UsageKind, UsageLimit};

pub use local::LocalStore;
pub use redis::{OnError, RedisConfig, RedisStore};

/// Who owns a set of counters: a key or a workspace, by id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectId {
    /// Key or workspace.
    pub scope: Scope,
    /// The key id or the canonical workspace id.
    pub id: Arc<str>,
}

impl SubjectId {
    /// A key's subject.
    pub fn key(id: impl Into<Arc<str>>) -> SubjectId {
        SubjectId {
            scope: Scope::Key,
            id: id.into(),
        }
    }

    /// A workspace's subject.
    pub fn workspace(id: impl Into<Arc<str>>) -> SubjectId {
        SubjectId {
            scope: Scope::Workspace,
            id: id.into(),
        }
    }
}

impl fmt::Display for SubjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scope.as_str(), self.id)
    }
}

/// The limits one subject brings to one request, and its current usage
/// period (computed by the caller from `usage_limits.periodic_reset`).
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectLimits {
    /// Whose counters.
    pub subject: SubjectId,
    /// For a workspace key: its workspace id. Redis keeps all state of a
    /// workspace and its keys in one hash slot named after it.
    pub workspace: Option<Arc<str>>,
    /// Request rate limits (GCRA, as `limits::rate::KeyLimiter`).
    pub requests: Vec<RateLimit>,
    /// Token rate limits.
    pub tokens: Vec<TokenRate>,
    /// The budget, if any.
    pub usage: Option<UsageLimit>,
    /// Keys only: requests in flight at once.
    pub max_concurrent: Option<u32>,
    /// The usage period this request counts in, e.g. `2026-11`, or `all`.
    pub period_key: Arc<str>,
    /// When that period ends (Unix ms); `None`: never.
    pub period_end_ms: Option<i64>,
}

impl SubjectLimits {
    /// A subject with no limits, counting in period `all`.
    pub fn new(subject: SubjectId) -> SubjectLimits {
        SubjectLimits {
            subject,
            workspace: None,
            requests: Vec::new(),
            tokens: Vec::new(),
            usage: None,
            max_concurrent: None,
            period_key: Arc::from("all"),
            period_end_ms: None,
        }
    }

    /// A fingerprint of the rate limits: rate state carries over a keys
    /// reload only while it is unchanged. Stable across processes and
    /// builds (replicas share it through Redis key names).
    pub fn rate_fingerprint(&self) -> u64 {
        // FNV-1a over the limits' numbers.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |v: u64| {
            for b in v.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.requests.len() as u64);
        for r in &self.requests {
            eat(u64::from(r.value));
            eat(r.period.as_nanos() as u64);
        }
        eat(self.tokens.len() as u64);
        for t in &self.tokens {
            eat(t.value);
            eat(t.period.as_nanos() as u64);
        }
        h
    }

    /// The Redis hash tag: the workspace for workspaces and their keys, the
    /// key's own id otherwise.
    pub(crate) fn hash_tag(&self) -> &str {
        match (self.subject.scope, &self.workspace) {
            (Scope::Key, Some(ws)) => ws,
            _ => &self.subject.id,
        }
    }
}

/// What a request is expected to use, reserved until it settles (9.3).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Input (body bytes ÷ 4) plus the requested maximum output.
    pub tokens: u64,
    /// The estimate priced by the model (US dollars); 0 when unpriced.
    pub cost: f64,
}

/// One request's checks.
#[derive(Clone, Debug)]
pub struct AdmitRequest<'a> {
    /// The key, then its workspace if any (order does not matter).
    pub subjects: &'a [SubjectLimits],
    /// `None` for a route that carries no token usage: usage limits and
    /// token rate limits are neither checked nor charged.
    pub estimate: Option<Estimate>,
}

/// The token quota reported in `x-ratelimit-*-tokens` (the tightest limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenQuota {
    /// `x-ratelimit-limit-tokens`.
    pub limit: u64,
    /// `x-ratelimit-remaining-tokens`.
    pub remaining: u64,
    /// `x-ratelimit-reset-tokens`: until the quota is whole again.
    pub reset: Duration,
}

/// The quotas for the response headers; `None` where the subjects have no
/// such limit (or, for tokens, the request carries no usage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Request limits, as `limits::rate::KeyLimiter::check` reports them.
    pub requests: Option<Quota>,
    /// Token limits.
    pub tokens: Option<TokenQuota>,
}

/// The answer to [`CounterStore::admit`].
#[derive(Debug)]
pub enum AdmitResult {
    /// Admitted: settle or release the admission when the request ends.
    Admitted {
        /// The reservation, to hand back to `settle`/`release`.
        admission: Admission,
        /// For the response headers.
        quotas: Quotas,
    },
    /// 412 `budget_exhausted`: this reservation would pass `subject`'s usage limit.
    BudgetExhausted {
        /// Whose budget.
        subject: SubjectId,
    },
    /// 429 `rate_limited`.
    RateLimited {
        /// Requests or tokens.
        which: RateKind,
        /// Whose limit.
        subject: SubjectId,
        /// Until the request could pass (`Retry-After`).
        retry_after: Duration,
        /// The estimate is larger than a whole token limit: waiting will not help.
        larger_than_limit: bool,
        /// For the response headers (nothing was taken).
        quotas: Quotas,
    },
    /// 429 `concurrency_limited`: the key's `max_concurrent_requests` are in flight.
    ConcurrencyLimited {
        /// The key.
        subject: SubjectId,
        /// For the response headers (nothing was taken).
        quotas: Quotas,
    },
    /// 503 `limits_unavailable` (the caller applies `on_error: deny`).
    Unavailable,
}

/// A request the store refused: why, typed (the proxy turns it into a
/// denial through `decision::errors`), and the quotas for the response
/// headers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refused {
    /// Why.
    pub refusal: Refusal,
    /// For the response headers (nothing was taken); empty for a budget or
    /// an unavailable store.
    pub quotas: Quotas,
}

impl AdmitResult {
    /// The admission and its quotas, or the typed refusal.
    ///
    /// # Errors
    /// Every answer but `Admitted`, as a [`Refused`].
    pub fn into_admission(self) -> Result<(Admission, Quotas), Refused> {
        let (refusal, quotas) = match self {
            AdmitResult::Admitted { admission, quotas } => return Ok((admission, quotas)),
            AdmitResult::BudgetExhausted { subject } => (
                Refusal::Budget {
                    scope: subject.scope,
                },
                Quotas::default(),
            ),
            AdmitResult::RateLimited {
                which,
                subject,
                retry_after,
                larger_than_limit,
                quotas,
            } => (
                Refusal::Rate {
                    kind: which,
                    scope: subject.scope,
                    retry_after,
                    never: larger_than_limit,
                },
                quotas,
            ),
            AdmitResult::ConcurrencyLimited { quotas, .. } => (Refusal::Concurrency, quotas),
            AdmitResult::Unavailable => (Refusal::Unavailable, Quotas::default()),
        };
        Err(Refused { refusal, quotas })
    }
}

/// A request's usage as the upstream reported it (or as estimated).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Charge {
    /// Input tokens, all of them.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of `input`, tokens read from a cache.
    pub cached_input: u64,
    /// Of `input`, tokens written to a cache.
    pub cache_write: u64,
    /// US dollars.
    pub cost: f64,
    /// No usage was reported; these are the proxy's estimates.
    pub estimated: bool,
}

/// What one subject took at admission.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Part {
    pub limits: SubjectLimits,
    pub fingerprint: u64,
    /// Tokens charged to the token rate limits at admission.
    pub token_estimate: Option<u64>,
    /// Reserved against the usage of `limits.period_key`.
    pub reserved_tokens: u64,
    pub reserved_cost: f64,
    /// Holds a concurrency slot.
    pub slot: bool,
}

/// Where an admission was counted (Redis can fall back to local counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Redis,
}

/// An admitted request's reservations: hand it to [`CounterStore::settle`]
/// or [`CounterStore::release`] exactly once. Dropping it instead leaks the
/// reservation (local) or leaves it to expire (Redis, ~30 s).
#[must_use = "an admission must be settled or released"]
#[derive(Debug)]
pub struct Admission {
    pub(crate) id: u64,
    pub(crate) origin: Origin,
    pub(crate) parts: Vec<Part>,
    pub(crate) has_estimate: bool,
}

impl Admission {
    /// A process-unique id (logs, Redis lease members).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A subject's usage in one period, from memory.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageNow {
    /// Input tokens settled (all of them: cached and cache-written ones
    /// included).
    pub tokens_in: u64,
    /// Output tokens settled.
    pub tokens_out: u64,
    /// Of `tokens_in`, read from a cache.
    pub cached_input: u64,
    /// Of `tokens_in`, written to a cache.
    pub cache_write: u64,
    /// US dollars settled.
    pub cost: f64,
    /// Of `tokens_in + tokens_out`, how many were estimated.
    pub estimated_tokens: u64,
    /// Reserved by requests in flight.
    pub reserved_tokens: u64,
    /// Reserved by requests in flight, US dollars.
    pub reserved_cost: f64,
    /// The period these numbers belong to.
    pub period_key: Arc<str>,
}

impl UsageNow {
    /// Used so far in the limit's unit (tokens, or dollars), reservations excluded.
    pub fn used(&self, kind: UsageKind) -> f64 {
        match kind {
            UsageKind::Tokens => (self.tokens_in + self.tokens_out) as f64,
            UsageKind::Cost => self.cost,
        }
    }

    /// Whether `limit` is used up already (the decision's early 412).
    pub fn exhausted(&self, limit: &UsageLimit) -> bool {
        self.used(limit.kind) >= limit.credit_limit
    }
}

/// One row of `scopegate usage`: a subject's usage in one period.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// Whose.
    pub subject: SubjectId,
    /// The numbers (`period_key` inside).
    pub usage: UsageNow,
    /// When the period ends (Unix ms), if it does.
    pub period_end_ms: Option<i64>,
    /// Last write (Unix ms); 0 when unknown.
    pub updated_at_ms: i64,
}

/// Errors of opening or reading a store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The SQLite file cannot be used.
    #[error("state file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why, in words.
        reason: String,
    },
    /// Redis cannot be used.
    #[error("redis state store {url}: {reason}")]
    Redis {
        /// The URL without its password.
        url: String,
        /// Why, in words.
        reason: String,
    },
}

/// Where the lead wires `scopegate_state_errors_total{op}` and
/// `scopegate_state_duration_seconds{op}`. `op` is `admit`, `settle` or `renew`.
pub trait StateMetrics: Send + Sync {
    /// A failed or timed-out round trip.
    fn error(&self, op: &'static str);
    /// A round trip's duration (successful or not).
    fn round_trip(&self, op: &'static str, seconds: f64);
}

/// A [`StateMetrics`] that counts nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMetrics;

impl StateMetrics for NoMetrics {
    fn error(&self, _op: &'static str) {}
    fn round_trip(&self, _op: &'static str, _seconds: f64) {}
}

/// The counter store. `admit` is the only call that may wait (Redis: one
/// round trip, at most `timeout_ms`); the others never block on I/O.
#[async_trait]
pub trait CounterStore: Send + Sync {
    /// One request's checks over its subjects, all-or-nothing, in the
    /// reference's order: usage limits, then request and token rate limits, then
    /// concurrency. A refused request commits nothing.
    async fn admit(&self, req: &AdmitRequest<'_>) -> AdmitResult;

    /// The request ended: its reservations become `charge` (added to each
    /// subject's usage for the admission's period), token rate limiters are
    /// adjusted by actual − estimated tokens, and the concurrency slot is
    /// freed. Never blocks.
    fn settle(&self, admission: Admission, charge: Charge);

    /// The request never reached the upstream: everything it took is given
    /// back (request rate quota excepted, as ratelimit.rs does). Never blocks.
    fn release(&self, admission: Admission);

    /// A subject's usage in `period_key`, from memory (no I/O).
    fn usage(&self, subject: &SubjectId, period_key: &str) -> UsageNow;

    /// The state of each subject's limits (a key's own view), from the
    /// counters the checks use: local memory, or Redis in one round trip
    /// (at most `timeout_ms`). Takes nothing. `None` when the shared store
    /// cannot be read.
    async fn read(&self, subjects: &[SubjectLimits]) -> Option<Vec<Reading>>;

    /// Writes what is pending (SQLite rows, queued Redis settlements); called
    /// at SIGTERM. Waits at most a few seconds.
    async fn flush(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_serve_as_one_shared_trait_object() {
        fn shared<T: CounterStore + 'static>() -> Option<Arc<dyn CounterStore>> {
            None::<Arc<T>>.map(|s| s as Arc<dyn CounterStore>)
        }
        assert!(shared::<LocalStore>().is_none());
        assert!(shared::<RedisStore>().is_none());
    }

    #[test]
    fn the_fingerprint_follows_rate_limits_only() {
        let mut a = SubjectLimits::new(SubjectId::key("k"));
        a.requests = vec![RateLimit {
            value: 10,
            period: Duration::from_secs(60),
        }];
        let mut b = a.clone();
        b.period_key = Arc::from("2026-11");
        b.max_concurrent = Some(3);
        assert_eq!(a.rate_fingerprint(), b.rate_fingerprint());
        b.tokens = vec![TokenRate {
            value: 10,
            period: Duration::from_secs(60),
        }];
        assert_ne!(a.rate_fingerprint(), b.rate_fingerprint());
        // Stable across builds: Redis key names of all replicas depend on it.
        assert_eq!(a.rate_fingerprint(), 0xbf02_9936_f298_e00c);
    }
}
