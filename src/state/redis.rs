//! The Redis counter store (the reference on limits shared by replicas): every replica pointed at one Redis
//! enforces one set of request, token, usage and concurrency limits.
//!
//! - **Admission** is one `EVALSHA` of [`ADMIT_LUA`], which runs the rules
//!   of `rules.rs` (usage limits with reservations, GCRA for request and
//!   token limits, concurrency) for all the request's subjects atomically,
//!   on Redis's clock (`TIME`, in microseconds).
//! - **In flight** entries (concurrency slots, reservations) are leases: a
//!   ZSET member per admission scored by its expiry (30 s), renewed every
//!   10 s by this replica while the request runs, so a dead replica's
//!   entries expire by themselves.
//! - **Settlement** ([`SETTLE_LUA`]) runs on a background task, never on
//!   the response path; when Redis is unreachable it is queued in memory
//!   and retried every second until it lands.
//! - **Usage** lives per subject and period in a hash that expires a week
//!   after the period ends, so a reset needs no job.
//! - **Reservations** count against a subject's budget whatever their
//!   period (at a reset, requests in flight from the old period still
//!   count for their few seconds); usage itself is strictly per period.
//! - **`usage()`** answers from what Redis last reported to this replica
//!   (each admission and settlement returns the subject's totals).
//! - **Failures**: each round trip waits at most `timeout_ms`; then
//!   `on_error: allow` falls back to this replica's own in-memory counters
//!   (limits still hold per replica; budgets add the usage last seen from
//!   Redis), `deny` answers `Unavailable`. While down, one request per
//!   500 ms tries Redis; the others do not wait. The switch is logged once
//!   each way; `ConnectionManager` reconnects. Usage of fallback admissions
//!   is summed per subject and period and sent when Redis is back.
//!   Settlements carry an id and apply at most once, so a retry after a
//!   timeout that did land never counts twice.
//!
//! Key layout (`P` = `key_prefix`, `T` = the hash tag: the workspace id for
//! workspaces and workspace keys, the key id for admin keys, so all state
//! of one request sits in one hash slot):
//!
//! ```text
//! P{T}:key:ID:rate:FP        hash r1.. (request TATs), t1.. (token TATs), µs; FP = limits fingerprint
//! P{T}:key:ID:lease          zset member → lease expiry (Unix ms)
//! P{T}:key:ID:res            hash member → "tokens cost" reserved
//! P{T}:key:ID:usage:PERIOD   hash in, out, cost, est, cin (cached input), cwr (cache writes)
//! P{T}:workspace:ID:...      the same for a workspace
//! P{T}:settled:MEMBER        "1" for a day: that settlement was applied
//! ```
//!
//! A request whose subjects have different tags (an admin key acting on a
//! workspace with limits) spans two slots: fine on one Redis server or a
//! replicated primary, not on Redis Cluster, which this backend does not
//! speak.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::mpsc;

use super::local::LocalStore;
use super::rules;
use super::{
    Admission, AdmitRequest, AdmitResult, Charge, CounterStore, Origin, Part, Quotas, RateKind,
    StateError, StateMetrics, SubjectId, SubjectLimits, TokenQuota, UsageNow, UsageRow,
};
use crate::limits::rate::Quota;
use crate::limits::view::Reading;
use crate::limits::UsageKind;

/// What to do when Redis is slow or down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Fall back to this replica's own counters.
    Allow,
    /// Refuse: 503 `limits_unavailable`.
    Deny,
}

/// `state.redis` of the server config.
#[derive(Clone, Debug, PartialEq)]
pub struct RedisConfig {
    /// `redis://…` (`${VAR}` already expanded).
    pub url: String,
    /// Per round trip.
    pub timeout: Duration,
    /// Slow or down.
    pub on_error: OnError,
    /// Prefix of every key, e.g. `scopegate:`.
    pub key_prefix: String,
    /// How long an in-flight entry lives without renewal (default 30 s).
    pub lease: Duration,
    /// How often this replica renews its leases (default 10 s).
    pub renew_every: Duration,
}

impl RedisConfig {
    /// The documented defaults: 50 ms, `allow`, `scopegate:`.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            timeout: Duration::from_millis(50),
            on_error: OnError::Allow,
            key_prefix: "scopegate:".into(),
            lease: Duration::from_secs(30),
            renew_every: Duration::from_secs(10),
        }
    }

    /// The URL without its password, for messages.
    pub fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                format!("{}://…@{}", &self.url[..s], &self.url[at + 1..])
            }
            _ => self.url.clone(),
        }
    }
}

/// Margin after a period's end before its usage hash expires.
const USAGE_MARGIN_MS: i64 = 7 * 86_400_000;
/// While Redis is down, at most one request per this interval tries it.
const PROBE_EVERY_MS: u64 = 500;
/// A settlement round trip may take longer than an admission's.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Admission: see the module doc. KEYS: 4 per subject (rate, lease, res,
/// usage). ARGV: member, lease_ms, has_est, est_tokens, est_cost, n; then
/// per subject: nreq, ntok, kind (0 none, 1 tokens, 2 cost), credit,
/// max_concurrent (-1 none), nreq × (value, period_us), ntok × (value, period_us).
/// Returns {status, subject index, which (1 requests, 2 tokens), wait_us,
/// larger, req limit, req remaining, req reset_us, tok limit, tok remaining,
/// tok reset_us, then per subject: in, out, cost, est, reserved tokens,
/// reserved cost, cin, cwr (0 for a subject without a usage limit: read
/// only where a limit needs them)}; status 0 admitted, 1 budget, 2 rate, 3 concurrency;
/// limit -1: no such limit.
pub const ADMIT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local member = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local has_est = ARGV[3] == '1'
local est_t = tonumber(ARGV[4])
local est_c = tonumber(ARGV[5])
local n = tonumber(ARGV[6])
local subs = {}
local a = 7
for i = 1, n do
  local s = {rate = KEYS[4*i-3], lease = KEYS[4*i-2], res = KEYS[4*i-1], usage = KEYS[4*i]}
  s.nreq = tonumber(ARGV[a]); s.ntok = tonumber(ARGV[a+1]); s.kind = tonumber(ARGV[a+2])
  s.credit = tonumber(ARGV[a+3]); s.maxc = tonumber(ARGV[a+4]); a = a + 5
  s.req = {}
  for j = 1, s.nreq do s.req[j] = {v = tonumber(ARGV[a]), p = tonumber(ARGV[a+1])}; a = a + 2 end
  s.tok = {}
  for j = 1, s.ntok do s.tok[j] = {v = tonumber(ARGV[a]), p = tonumber(ARGV[a+1])}; a = a + 2 end
  -- Leases and reservations matter only to a concurrency limit or a usage
  -- limit, and usage only to a usage limit: a subject with request limits
  -- alone costs no reads beyond its rate hash (each call costs the script).
  s.inflight = 0; s.rt = 0; s.rc = 0
  if s.maxc >= 0 or s.kind > 0 then
    local dead = redis.call('ZRANGEBYSCORE', s.lease, '-inf', now_ms)
    for _, m in ipairs(dead) do
      redis.call('ZREM', s.lease, m)
      redis.call('HDEL', s.res, m)
    end
    s.inflight = redis.call('ZCARD', s.lease)
    for _, v in ipairs(redis.call('HVALS', s.res)) do
      local sp = string.find(v, ' ', 1, true)
      if sp then
        s.rt = s.rt + (tonumber(string.sub(v, 1, sp - 1)) or 0)
        s.rc = s.rc + (tonumber(string.sub(v, sp + 1)) or 0)
      end
    end
  end
  s.uin = 0; s.uout = 0; s.ucost = 0; s.uest = 0; s.ucin = 0; s.ucwr = 0
  if s.kind > 0 then
    local u = redis.call('HMGET', s.usage, 'in', 'out', 'cost', 'est', 'cin', 'cwr')
    s.uin = tonumber(u[1]) or 0; s.uout = tonumber(u[2]) or 0
    s.ucost = tonumber(u[3]) or 0; s.uest = tonumber(u[4]) or 0
    s.ucin = tonumber(u[5]) or 0; s.ucwr = tonumber(u[6]) or 0
  end
  s.rtat = {}; s.ttat = {}
  for j = 1, s.nreq do s.rtat[j] = tonumber(redis.call('HGET', s.rate, 'r' .. j)) or 0 end
  for j = 1, s.ntok do s.ttat[j] = tonumber(redis.call('HGET', s.rate, 't' .. j)) or 0 end
  subs[i] = s
end

local function em(l) return math.max(1, math.floor(l.p / l.v)) end
local function tcost(l, x) return math.floor(x * l.p / l.v) end
local function quotas()
  local rq = {-1, 0, 0}
  local tq = {-1, 0, 0}
  for _, s in ipairs(subs) do
    for j, l in ipairs(s.req) do
      local used = math.max(s.rtat[j], now) - now
      local rem = math.min(l.v, math.floor(math.max(0, l.p - used) / em(l)))
      if rq[1] < 0 or rem < rq[2] or (rem == rq[2] and used > rq[3]) then rq = {l.v, rem, used} end
    end
    if has_est then
      for j, l in ipairs(s.tok) do
        local used = math.max(s.ttat[j], now) - now
        local rem = math.floor(math.max(0, l.p - used) * l.v / l.p)
        if tq[1] < 0 or rem < tq[2] or (rem == tq[2] and used > tq[3]) then tq = {l.v, rem, used} end
      end
    end
  end
  return rq, tq
end
local function answer(status, i, which, wait, larger)
  local rq, tq = quotas()
  local r = {status, i, which, wait, larger, rq[1], rq[2], rq[3], tq[1], tq[2], tq[3]}
  if status == 0 then
    for _, s in ipairs(subs) do
      r[#r+1] = s.uin; r[#r+1] = s.uout; r[#r+1] = tostring(s.ucost); r[#r+1] = s.uest
      r[#r+1] = s.rt; r[#r+1] = tostring(s.rc); r[#r+1] = s.ucin; r[#r+1] = s.ucwr
    end
  end
  return r
end

if has_est then
  for i, s in ipairs(subs) do
    if s.kind == 1 and s.uin + s.uout + s.rt + est_t > s.credit then return answer(1, i, 0, 0, 0) end
    if s.kind == 2 and s.ucost + s.rc + est_c > s.credit then return answer(1, i, 0, 0, 0) end
  end
end

local rw, ri, tw, ti, larger = 0, 0, 0, 0, 0
for i, s in ipairs(subs) do
  for j, l in ipairs(s.req) do
    local allow_at = math.max(s.rtat[j], now) + em(l) - l.p
    if allow_at > now and allow_at - now > rw then rw = allow_at - now; ri = i end
  end
  if has_est then
    for j, l in ipairs(s.tok) do
      if est_t > l.v then
        larger = 1
        if l.p > tw then tw = l.p; ti = i end
      else
        local allow_at = math.max(s.ttat[j], now) + tcost(l, est_t) - l.p
        if allow_at > now and allow_at - now > tw then tw = allow_at - now; ti = i end
      end
    end
  end
end
if rw > 0 then return answer(2, ri, 1, rw, 0) end
if tw > 0 then return answer(2, ti, 2, tw, larger) end

for i, s in ipairs(subs) do
  if s.maxc >= 0 and s.inflight >= s.maxc then return answer(3, i, 0, 0, 0) end
end

for _, s in ipairs(subs) do
  local maxt = now
  for j, l in ipairs(s.req) do
    s.rtat[j] = math.max(s.rtat[j], now) + em(l)
    redis.call('HSET', s.rate, 'r' .. j, string.format('%.0f', s.rtat[j]))
  end
  if has_est then
    for j, l in ipairs(s.tok) do
      s.ttat[j] = math.max(s.ttat[j], now) + tcost(l, est_t)
      redis.call('HSET', s.rate, 't' .. j, string.format('%.0f', s.ttat[j]))
    end
  end
  for j = 1, s.nreq do maxt = math.max(maxt, s.rtat[j]) end
  for j = 1, s.ntok do maxt = math.max(maxt, s.ttat[j]) end
  if s.nreq > 0 or (has_est and s.ntok > 0) then
    redis.call('PEXPIRE', s.rate, math.floor((maxt - now) / 1000) + 1000)
  end
  local reserve = has_est and s.kind > 0
  if s.maxc >= 0 or reserve then
    redis.call('ZADD', s.lease, now_ms + lease_ms, member)
    redis.call('PEXPIRE', s.lease, lease_ms * 2)
  end
  if reserve then
    redis.call('HSET', s.res, member, string.format('%.0f %.17g', est_t, est_c))
    redis.call('PEXPIRE', s.res, lease_ms * 2)
    s.rt = s.rt + est_t; s.rc = s.rc + est_c
  end
end
return answer(0, 0, 0, 0, 0)
"#;

/// Settlement, applied at most once (a timed-out attempt may still have
/// landed before it is retried). KEYS as for admission, plus a last key
/// marking this settlement done. ARGV: member, n, input, output, cost,
/// estimated tokens, charge (0/1), cached input, cache writes; then per
/// subject: token estimate (-1: no token limits were charged), usage expiry
/// (Unix ms, 0 none), ntok, ntok × (value, period_us). Returns per subject:
/// in, out, cost, est, cin, cwr.
pub const SETTLE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local member = ARGV[1]
local n = tonumber(ARGV[2])
local actual = tonumber(ARGV[3]) + tonumber(ARGV[4])
local charge = ARGV[7] == '1'
if not redis.call('SET', KEYS[4*n+1], '1', 'NX', 'PX', 86400000) then return {} end
local a = 10
local out = {}
for i = 1, n do
  local rate, lease, res, usage = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local test = tonumber(ARGV[a]); local uexp = tonumber(ARGV[a+1]); local ntok = tonumber(ARGV[a+2])
  a = a + 3
  redis.call('ZREM', lease, member)
  redis.call('HDEL', res, member)
  for j = 1, ntok do
    local v, p = tonumber(ARGV[a]), tonumber(ARGV[a+1])
    a = a + 2
    local tat = tonumber(redis.call('HGET', rate, 't' .. j))
    if test >= 0 and tat then
      if actual > test then
        tat = math.max(tat, now) + math.floor((actual - test) * p / v)
      else
        tat = math.max(tat - math.floor((test - actual) * p / v), math.min(now, tat))
      end
      redis.call('HSET', rate, 't' .. j, string.format('%.0f', tat))
      local need = math.floor((tat - now) / 1000) + 1000
      local ttl = redis.call('PTTL', rate)
      if ttl >= 0 and ttl < need then redis.call('PEXPIRE', rate, need) end
    end
  end
  if charge then
    redis.call('HINCRBY', usage, 'in', ARGV[3])
    redis.call('HINCRBY', usage, 'out', ARGV[4])
    redis.call('HINCRBYFLOAT', usage, 'cost', ARGV[5])
    if tonumber(ARGV[6]) > 0 then redis.call('HINCRBY', usage, 'est', ARGV[6]) end
    if tonumber(ARGV[8]) > 0 then redis.call('HINCRBY', usage, 'cin', ARGV[8]) end
    if tonumber(ARGV[9]) > 0 then redis.call('HINCRBY', usage, 'cwr', ARGV[9]) end
    if uexp > 0 then redis.call('PEXPIREAT', usage, uexp) end
  end
  local u = redis.call('HMGET', usage, 'in', 'out', 'cost', 'est', 'cin', 'cwr')
  out[#out+1] = tonumber(u[1]) or 0; out[#out+1] = tonumber(u[2]) or 0
  out[#out+1] = u[3] or '0'; out[#out+1] = tonumber(u[4]) or 0
  out[#out+1] = tonumber(u[5]) or 0; out[#out+1] = tonumber(u[6]) or 0
end
return out
"#;

/// Lease renewal. KEYS: pairs (lease, res); ARGV: lease_ms, then one member per pair.
pub const RENEW_LUA: &str = r#"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
for i = 1, #KEYS / 2 do
  redis.call('ZADD', KEYS[2*i-1], 'XX', now_ms + lease_ms, ARGV[i+1])
  redis.call('PEXPIRE', KEYS[2*i-1], lease_ms * 2)
  redis.call('PEXPIRE', KEYS[2*i], lease_ms * 2)
end
return #KEYS / 2
"#;

/// A key's own view: reads, changes nothing. KEYS as for admission; ARGV:
/// n, then per subject: nreq, ntok. Returns {now_us, then per subject: nreq
/// request TATs, ntok token TATs, live leases, reserved tokens, reserved
/// cost, in, out, cost}.
pub const VIEW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local n = tonumber(ARGV[1])
local out = {now}
for i = 1, n do
  local rate, lease, res, usage = KEYS[4*i-3], KEYS[4*i-2], KEYS[4*i-1], KEYS[4*i]
  local nreq, ntok = tonumber(ARGV[2*i]), tonumber(ARGV[2*i+1])
  for j = 1, nreq do out[#out+1] = tonumber(redis.call('HGET', rate, 'r' .. j)) or 0 end
  for j = 1, ntok do out[#out+1] = tonumber(redis.call('HGET', rate, 't' .. j)) or 0 end
  local live = redis.call('ZRANGEBYSCORE', lease, '(' .. now_ms, '+inf')
  local rt, rc = 0, 0
  for _, m in ipairs(live) do
    local v = redis.call('HGET', res, m)
    local sp = v and string.find(v, ' ', 1, true)
    if sp then
      rt = rt + (tonumber(string.sub(v, 1, sp - 1)) or 0)
      rc = rc + (tonumber(string.sub(v, sp + 1)) or 0)
    end
  end
  local u = redis.call('HMGET', usage, 'in', 'out', 'cost')
  out[#out+1] = #live; out[#out+1] = rt; out[#out+1] = tostring(rc)
  out[#out+1] = tonumber(u[1]) or 0; out[#out+1] = tonumber(u[2]) or 0; out[#out+1] = u[3] or '0'
end
return out
"#;

/// The four keys of one subject.
struct SubjectKeys {
    rate: String,
    lease: String,
    res: String,
    usage: String,
}

fn subject_base(prefix: &str, s: &SubjectLimits) -> String {
    format!(
        "{prefix}{{{}}}:{}:{}",
        s.hash_tag(),
        s.subject.scope.as_str(),
        s.subject.id
    )
}

fn subject_keys(prefix: &str, s: &SubjectLimits, fingerprint: u64) -> SubjectKeys {
    let base = subject_base(prefix, s);
    SubjectKeys {
        rate: format!("{base}:rate:{fingerprint:016x}"),
        lease: format!("{base}:lease"),
        res: format!("{base}:res"),
        usage: format!("{base}:usage:{}", s.period_key),
    }
}

/// A client for `cfg.url` whose TCP connections set `TCP_NODELAY` (the
/// `redis` crate leaves Nagle's algorithm on by default): several
/// admissions share one multiplexed connection, and with Nagle on, one
/// written while another awaits its reply would wait for that reply's ACK.
fn open_client(cfg: &RedisConfig) -> Result<redis::Client, StateError> {
    use redis::IntoConnectionInfo as _;
    let info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| redis_error(cfg, e))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    redis::Client::open(info).map_err(|e| redis_error(cfg, e))
}

fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

fn usage_expire_at(s: &SubjectLimits) -> i64 {
    s.period_end_ms.map_or(0, |end| end + USAGE_MARGIN_MS)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A settlement waiting to be sent.
struct SettleJob {
    keys: Vec<String>,
    args: Vec<String>,
    subjects: Vec<(SubjectId, Arc<str>)>,
    /// Reservations to take off the cached usage once it lands.
    reserved: Vec<(u64, f64)>,
}

/// Work for the background task.
enum Job {
    Settle(SettleJob),
}

/// A script's round trip, in flight.
type ScriptCall = Pin<Box<dyn Future<Output = redis::RedisResult<Vec<Value>>> + Send>>;

struct Inner {
    cfg: RedisConfig,
    conn: ConnectionManager,
    /// For the per-runtime admission connections (see `runtime_conn`).
    client: redis::Client,
    conn_cfg: ConnectionManagerConfig,
    /// Tells this store's connections from another store's in a thread.
    uid: u64,
    admit_script: Script,
    settle_script: Script,
    renew_script: Script,
    view_script: Script,
    fallback: LocalStore,
    metrics: Arc<dyn StateMetrics>,
    replica: String,
    next_id: AtomicU64,
    down: AtomicBool,
    next_probe_ms: AtomicU64,
    /// Last known usage per subject and period (for `usage()`).
    cache: DashMap<SubjectId, Vec<UsageNow>>,
    /// This replica's leases to renew: admission id → (lease, res, member).
    leases: DashMap<u64, (Vec<(String, String)>, String)>,
    /// Settlements that could not be sent yet.
    pending: Mutex<VecDeque<SettleJob>>,
    /// Usage of fallback admissions, not yet sent.
    owed: Mutex<HashMap<(SubjectId, Arc<str>), Owed>>,
    jobs: mpsc::UnboundedSender<Job>,
}

/// The Redis backend. Owns a small runtime of its own ("scopegate-redis")
/// for its connection and background work, so it can be called from any
/// runtime (pingora's included). It is not a pingora background service:
/// the store is opened before the server starts (a bad URL stops the start)
/// and serves `scopegate usage` too, and its connection must live on one
/// runtime whichever worker thread admits a request.
pub struct RedisStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.cfg.redacted_url())
            .finish()
    }
}

fn redis_error(cfg: &RedisConfig, reason: impl std::fmt::Display) -> StateError {
    StateError::Redis {
        url: cfg.redacted_url(),
        reason: reason.to_string(),
    }
}

impl RedisStore {
    /// Prepares the connection (made lazily: Redis need not be up yet) and
    /// starts the background task (settlements, retries, lease renewal).
    ///
    /// # Errors
    /// [`StateError::Redis`] when the URL is invalid or the runtime cannot start.
    pub fn open(
        cfg: RedisConfig,
        metrics: Arc<dyn StateMetrics>,
    ) -> Result<RedisStore, StateError> {
        let client = open_client(&cfg)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("scopegate-redis")
            .enable_all()
            .build()
            .map_err(|e| redis_error(&cfg, format!("cannot start its runtime: {e}")))?;
        // No response timeout of the crate's own (500 ms by default): every
        // call here is bounded by this store (`timeout_ms` for admissions,
        // SETTLE_TIMEOUT for settlements), and a second timer per command
        // would cut settlements short of theirs.
        let conn_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = {
            let _guard = runtime.enter();
            ConnectionManager::new_lazy_with_config(client.clone(), conn_cfg.clone())
                .map_err(|e| redis_error(&cfg, e))?
        };
        static STORES: AtomicU64 = AtomicU64::new(1);
        let mut replica = [0u8; 6];
        getrandom::fill(&mut replica).map_err(|e| redis_error(&cfg, e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            conn,
            client,
            conn_cfg,
            uid: STORES.fetch_add(1, Ordering::Relaxed),
            admit_script: Script::new(ADMIT_LUA),
            settle_script: Script::new(SETTLE_LUA),
            renew_script: Script::new(RENEW_LUA),
            view_script: Script::new(VIEW_LUA),
            fallback: LocalStore::in_memory(),
            metrics,
            replica: hex::encode(replica),
            next_id: AtomicU64::new(1),
            down: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            cache: DashMap::new(),
            leases: DashMap::new(),
            pending: Mutex::new(VecDeque::new()),
            owed: Mutex::new(HashMap::new()),
            jobs: tx,
            cfg,
        });
        runtime.spawn(background(inner.clone(), rx));
        Ok(RedisStore {
            inner,
            runtime: Some(runtime),
        })
    }

    fn spawn<F>(&self, fut: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.as_ref().map(|rt| rt.spawn(fut))
    }

    /// One invocation of a script, as a boxed future. On a single-threaded
    /// runtime (each of pingora's workers) it runs there, on a connection of
    /// that runtime's own: no hop to the store's runtime thread and back (two
    /// cross-thread wake-ups per request); elsewhere it runs on the store's
    /// runtime. Boxed either way, so that a call that outlives its timeout can
    /// be handed to a task and still be cleaned up after. `None`: the store
    /// has no runtime to run it on.
    fn script_call(
        &self,
        script: fn(&Inner) -> &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Option<ScriptCall> {
        let inner = self.inner.clone();
        let local = runtime_conn(&inner);
        let on_this_runtime = local.is_some();
        let call = async move {
            let mut conn = local.unwrap_or_else(|| inner.conn.clone());
            let mut inv = script(&inner).prepare_invoke();
            for k in &keys {
                inv.key(k);
            }
            for a in &args {
                inv.arg(a);
            }
            inv.invoke_async::<Vec<Value>>(&mut conn).await
        };
        if on_this_runtime {
            return Some(Box::pin(call));
        }
        let handle = self.spawn(call)?;
        Some(Box::pin(async move {
            match handle.await {
                Ok(r) => r,
                Err(e) => Err(std::io::Error::other(e.to_string()).into()),
            }
        }))
    }

    /// Settlements queued because Redis was unreachable.
    pub fn pending_settlements(&self) -> usize {
        self.inner.pending.lock().len() + self.inner.owed.lock().len()
    }

    async fn admit_redis(&self, req: &AdmitRequest<'_>) -> Result<AdmitResult, ()> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{id}", inner.replica);
        let est = req.estimate;
        let mut keys = Vec::with_capacity(req.subjects.len() * 4);
        let mut args: Vec<String> = vec![
            member.clone(),
            inner.cfg.lease.as_millis().to_string(),
            u8::from(est.is_some()).to_string(),
            est.map_or(0, |e| e.tokens).to_string(),
            format!("{:?}", est.map_or(0.0, |e| e.cost)),
            req.subjects.len().to_string(),
        ];
        let mut fps = Vec::with_capacity(req.subjects.len());
        for s in req.subjects {
            let fp = s.rate_fingerprint();
            fps.push(fp);
            let k = subject_keys(&inner.cfg.key_prefix, s, fp);
            keys.extend([k.rate, k.lease, k.res, k.usage]);
            let (kind, credit) = match &s.usage {
                None => (0, 0.0),
                Some(u) if u.kind == UsageKind::Tokens => (1, u.credit_limit),
                Some(u) => (2, u.credit_limit),
            };
            args.push(s.requests.len().to_string());
            args.push(s.tokens.len().to_string());
            args.push(kind.to_string());
            args.push(format!("{credit:?}"));
            args.push(s.max_concurrent.map_or(-1, i64::from).to_string());
            for r in &s.requests {
                args.push(r.value.to_string());
                args.push(micros(r.period).to_string());
            }
            for t in &s.tokens {
                args.push(t.value.to_string());
                args.push(micros(t.period).to_string());
            }
        }
        let Some(mut call) = self.script_call(|i| &i.admit_script, keys.clone(), args) else {
            return Err(());
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(inner.cfg.timeout, &mut call).await;
        inner
            .metrics
            .round_trip("admit", started.elapsed().as_secs_f64());
        let values = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.note_failure("admit", &e.to_string());
                return Err(());
            }
            Err(_) => {
                self.note_failure("admit", "timed out");
                // If the script still runs, give back what it takes.
                let cleanup_inner = inner.clone();
                let subjects = req.subjects.to_vec();
                self.spawn(async move {
                    if let Ok(values) = call.await {
                        if values.first().map(int) == Some(0) {
                            let parts = parts_of(&subjects, &fps, est.map(|e| (e.tokens, e.cost)));
                            let job = settle_job(&cleanup_inner, &member, &parts, None);
                            let _ = cleanup_inner.jobs.send(Job::Settle(job));
                        }
                    }
                });
                return Err(());
            }
        };
        self.note_success();
        Ok(self.read_admit(req, &values, id, member, &fps, &keys))
    }

    /// [`CounterStore::read`]: one round trip of [`VIEW_LUA`], at most
    /// `timeout_ms`.
    async fn read_redis(&self, subjects: &[SubjectLimits]) -> Option<Vec<Reading>> {
        let inner = &self.inner;
        let mut keys = Vec::with_capacity(subjects.len() * 4);
        let mut args = vec![subjects.len().to_string()];
        for s in subjects {
            let k = subject_keys(&inner.cfg.key_prefix, s, s.rate_fingerprint());
            keys.extend([k.rate, k.lease, k.res, k.usage]);
            args.push(s.requests.len().to_string());
            args.push(s.tokens.len().to_string());
        }
        let call = self.script_call(|i| &i.view_script, keys, args)?;
        let started = Instant::now();
        let outcome = tokio::time::timeout(inner.cfg.timeout, call).await;
        inner
            .metrics
            .round_trip("view", started.elapsed().as_secs_f64());
        let values = match outcome {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.note_failure("view", &e.to_string());
                return None;
            }
            Err(_) => {
                self.note_failure("view", "timed out");
                return None;
            }
        };
        self.note_success();
        Some(read_view(subjects, &values))
    }

    fn read_admit(
        &self,
        req: &AdmitRequest<'_>,
        v: &[Value],
        id: u64,
        member: String,
        fps: &[u64],
        keys: &[String],
    ) -> AdmitResult {
        let at = |i: usize| v.get(i).map_or(0, int);
        let status = at(0);
        let subject = |i: i64| {
            usize::try_from(i - 1)
                .ok()
                .and_then(|i| req.subjects.get(i))
                .map(|s| s.subject.clone())
                .unwrap_or_else(|| SubjectId::key(""))
        };
        let requests = (at(5) >= 0).then(|| Quota {
            limit: at(5) as u32,
            remaining: at(6).max(0) as u32,
            reset: Duration::from_micros(at(7).max(0) as u64),
            retry_after: None,
        });
        let tokens = (at(8) >= 0).then(|| TokenQuota {
            limit: at(8) as u64,
            remaining: at(9).max(0) as u64,
            reset: Duration::from_micros(at(10).max(0) as u64),
        });
        let mut quotas = Quotas { requests, tokens };
        match status {
            0 => {}
            1 => {
                return AdmitResult::BudgetExhausted {
                    subject: subject(at(1)),
                }
            }
            2 => {
                let which = if at(2) == 1 {
                    RateKind::Requests
                } else {
                    RateKind::Tokens
                };
                let wait = Duration::from_micros(at(3).max(0) as u64);
                if let (RateKind::Requests, Some(q)) = (which, quotas.requests.as_mut()) {
                    q.retry_after = Some(wait);
                }
                return AdmitResult::RateLimited {
                    which,
                    subject: subject(at(1)),
                    retry_after: wait,
                    larger_than_limit: at(4) == 1,
                    quotas,
                };
            }
            3 => {
                return AdmitResult::ConcurrencyLimited {
                    subject: subject(at(1)),
                    quotas,
                }
            }
            _ => return AdmitResult::Unavailable,
        }
        let est = req.estimate;
        for (i, s) in req.subjects.iter().enumerate() {
            if s.usage.is_none() {
                // The script reads usage only for a usage limit; nothing
                // reads the cache for a subject without one.
                continue;
            }
            let b = 11 + i * 8;
            let now = UsageNow {
                tokens_in: at(b).max(0) as u64,
                tokens_out: at(b + 1).max(0) as u64,
                cached_input: at(b + 6).max(0) as u64,
                cache_write: at(b + 7).max(0) as u64,
                cost: v.get(b + 2).map_or(0.0, float),
                estimated_tokens: at(b + 3).max(0) as u64,
                reserved_tokens: at(b + 4).max(0) as u64,
                reserved_cost: v.get(b + 5).map_or(0.0, float),
                period_key: s.period_key.clone(),
            };
            self.inner.cache_put(&s.subject, now);
        }
        let parts = parts_of(req.subjects, fps, est.map(|e| (e.tokens, e.cost)));
        let renew: Vec<(String, String)> = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.slot
                    || p.reserved_tokens > 0
                    || p.reserved_cost > 0.0
                    || (est.is_some() && p.limits.usage.is_some())
            })
            .map(|(i, _)| (keys[4 * i + 1].clone(), keys[4 * i + 2].clone()))
            .collect();
        if !renew.is_empty() {
            self.inner.leases.insert(id, (renew, member));
        }
        AdmitResult::Admitted {
            admission: Admission {
                id,
                origin: Origin::Redis,
                parts,
                has_estimate: est.is_some(),
            },
            quotas,
        }
    }

    fn note_failure(&self, op: &'static str, why: &str) {
        self.inner.metrics.error(op);
        self.inner
            .next_probe_ms
            .store(now_unix_ms() + PROBE_EVERY_MS, Ordering::Relaxed);
        if !self.inner.down.swap(true, Ordering::Relaxed) {
            let action = match self.inner.cfg.on_error {
                OnError::Allow => "falling back to this replica's own counters",
                OnError::Deny => "refusing limited requests (on_error: deny)",
            };
            tracing::warn!(url = %self.inner.cfg.redacted_url(), op, error = why, "redis state store unreachable; {action}");
        }
    }

    fn note_success(&self) {
        if self.inner.down.swap(false, Ordering::Relaxed) {
            tracing::info!(url = %self.inner.cfg.redacted_url(), "redis state store reachable again");
        }
    }

    /// While Redis is down, only one request per `PROBE_EVERY_MS` tries it.
    fn should_try(&self) -> bool {
        if !self.inner.down.load(Ordering::Relaxed) {
            return true;
        }
        let now = now_unix_ms();
        let next = self.inner.next_probe_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .inner
                .next_probe_ms
                .compare_exchange(
                    next,
                    now + PROBE_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn unavailable(&self, req: &AdmitRequest<'_>) -> AdmitResult {
        match self.inner.cfg.on_error {
            OnError::Deny => AdmitResult::Unavailable,
            OnError::Allow => {
                // The fallback counts only this outage; budgets also see the
                // usage Redis last reported here.
                if let Some(e) = req.estimate {
                    for s in req.subjects {
                        let Some(limit) = &s.usage else { continue };
                        let seen = self.usage(&s.subject, &s.period_key);
                        let mine = self.inner.fallback.usage(&s.subject, &s.period_key);
                        let (used, this) = match limit.kind {
                            UsageKind::Tokens => (
                                (seen.tokens_in
                                    + seen.tokens_out
                                    + mine.tokens_in
                                    + mine.tokens_out
                                    + mine.reserved_tokens) as f64,
                                e.tokens as f64,
                            ),
                            UsageKind::Cost => (seen.cost + mine.cost + mine.reserved_cost, e.cost),
                        };
                        if used + this > limit.credit_limit {
                            return AdmitResult::BudgetExhausted {
                                subject: s.subject.clone(),
                            };
                        }
                    }
                }
                self.inner.fallback.admit_now(req)
            }
        }
    }

    fn finish(&self, admission: Admission, charge: Option<Charge>) {
        let inner = &self.inner;
        if admission.parts.is_empty() {
            return;
        }
        match admission.origin {
            Origin::Local => {
                // Counted locally while Redis was away: free the local
                // state, and owe the usage to Redis (summed per subject and
                // period, so a long outage holds one entry each).
                if let (Some(c), true) = (charge, admission.has_estimate) {
                    let mut owed = inner.owed.lock();
                    for p in &admission.parts {
                        let e = owed
                            .entry((p.limits.subject.clone(), p.limits.period_key.clone()))
                            .or_insert_with(|| Owed {
                                limits: p.limits.clone(),
                                amount: Amount::default(),
                            });
                        e.amount.add(Amount::of(&c));
                    }
                }
                match charge {
                    Some(c) => inner.fallback.settle(admission, c),
                    None => inner.fallback.release(admission),
                }
            }
            Origin::Redis => {
                let member = inner.leases.remove(&admission.id).map_or_else(
                    || format!("{}:{}", inner.replica, admission.id),
                    |(_, (_, m))| m,
                );
                let c = charge.unwrap_or_default();
                let charged = charge.is_some()
                    && (admission.has_estimate || c.input + c.output > 0 || c.cost > 0.0);
                let holds = admission
                    .parts
                    .iter()
                    .any(|p| p.slot || p.token_estimate.is_some() || p.limits.usage.is_some());
                if !charged && !holds {
                    return;
                }
                let amount = charged.then(|| Amount::of(&c));
                // A release (no amount) gives back the whole token estimate.
                let job = settle_job(inner, &member, &admission.parts, amount);
                let _ = inner.jobs.send(Job::Settle(job));
            }
        }
    }
}

/// The readings in a [`VIEW_LUA`] answer (Redis's clock, microseconds).
fn read_view(subjects: &[SubjectLimits], v: &[Value]) -> Vec<Reading> {
    let at = |i: usize| v.get(i).map_or(0, int).max(0) as u64;
    let now = at(0).saturating_mul(1000);
    let mut i = 1;
    let mut out = Vec::with_capacity(subjects.len());
    for s in subjects {
        let mut r = Reading::default();
        for l in &s.requests {
            r.requests
                .push(rules::request_reading(l, at(i).saturating_mul(1000), now));
            i += 1;
        }
        for l in &s.tokens {
            r.tokens
                .push(rules::token_reading(l, at(i).saturating_mul(1000), now));
            i += 1;
        }
        let u = UsageNow {
            tokens_in: at(i + 3),
            tokens_out: at(i + 4),
            cost: v.get(i + 5).map_or(0.0, float),
            reserved_tokens: at(i + 1),
            reserved_cost: v.get(i + 2).map_or(0.0, float),
            ..UsageNow::default()
        };
        r.in_flight = u32::try_from(at(i)).unwrap_or(u32::MAX);
        r.usage = s.usage.map(|limit| rules::usage_reading(limit.kind, &u));
        i += 6;
        out.push(r);
    }
    out
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0, |f| f as i64),
        Value::Double(d) => *d as i64,
        _ => 0,
    }
}

fn float(v: &Value) -> f64 {
    match v {
        Value::Int(i) => *i as f64,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0),
        Value::Double(d) => *d,
        _ => 0.0,
    }
}

fn parts_of(subjects: &[SubjectLimits], fps: &[u64], est: Option<(u64, f64)>) -> Vec<Part> {
    subjects
        .iter()
        .zip(fps)
        .map(|(s, fp)| {
            let reserve = est.filter(|_| s.usage.is_some());
            Part {
                limits: s.clone(),
                fingerprint: *fp,
                token_estimate: est.filter(|_| !s.tokens.is_empty()).map(|e| e.0),
                reserved_tokens: reserve.map_or(0, |e| e.0),
                reserved_cost: reserve.map_or(0.0, |e| e.1),
                slot: s.max_concurrent.is_some(),
            }
        })
        .collect()
}

/// Usage to add to each subject of a settlement.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Amount {
    input: u64,
    output: u64,
    cost: f64,
    estimated: u64,
    cached_input: u64,
    cache_write: u64,
}

impl Amount {
    fn of(c: &Charge) -> Amount {
        Amount {
            input: c.input,
            output: c.output,
            cost: c.cost,
            estimated: if c.estimated { c.input + c.output } else { 0 },
            cached_input: c.cached_input,
            cache_write: c.cache_write,
        }
    }

    fn add(&mut self, a: Amount) {
        self.input += a.input;
        self.output += a.output;
        self.cost += a.cost;
        self.estimated += a.estimated;
        self.cached_input += a.cached_input;
        self.cache_write += a.cache_write;
    }
}

/// Usage counted while Redis was away, summed until it can be sent.
struct Owed {
    limits: SubjectLimits,
    amount: Amount,
}

thread_local! {
    /// Admission connections made on this thread's single-threaded runtime,
    /// by store.
    static RUNTIME_CONNS: std::cell::RefCell<Vec<(u64, ConnectionManager)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A connection of the current single-threaded runtime for this store,
/// made on first use (lazily: it connects when first used); `None` off such
/// a runtime.
fn runtime_conn(inner: &Inner) -> Option<ConnectionManager> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return None;
    }
    RUNTIME_CONNS.with(|conns| {
        let mut conns = conns.borrow_mut();
        if let Some((_, c)) = conns.iter().find(|(uid, _)| *uid == inner.uid) {
            return Some(c.clone());
        }
        let c =
            ConnectionManager::new_lazy_with_config(inner.client.clone(), inner.conn_cfg.clone())
                .ok()?;
        conns.push((inner.uid, c.clone()));
        Some(c)
    })
}

/// `amount`: `None` adds no usage (a release); its tokens also adjust the
/// token limits of parts that were charged an estimate.
fn settle_job(inner: &Inner, member: &str, parts: &[Part], amount: Option<Amount>) -> SettleJob {
    let c = amount.unwrap_or_default();
    let mut keys = Vec::with_capacity(parts.len() * 4 + 1);
    let mut args = vec![
        member.to_string(),
        parts.len().to_string(),
        c.input.to_string(),
        c.output.to_string(),
        format!("{:?}", c.cost),
        c.estimated.to_string(),
        u8::from(amount.is_some()).to_string(),
        c.cached_input.to_string(),
        c.cache_write.to_string(),
    ];
    for p in parts {
        let k = subject_keys(&inner.cfg.key_prefix, &p.limits, p.fingerprint);
        keys.extend([k.rate, k.lease, k.res, k.usage]);
        args.push(p.token_estimate.map_or(-1, |e| e as i64).to_string());
        args.push(usage_expire_at(&p.limits).to_string());
        args.push(p.limits.tokens.len().to_string());
        for t in &p.limits.tokens {
            args.push(t.value.to_string());
            args.push(micros(t.period).to_string());
        }
    }
    if let Some(first) = parts.first() {
        keys.push(format!(
            "{}{{{}}}:settled:{member}",
            inner.cfg.key_prefix,
            first.limits.hash_tag()
        ));
    }
    SettleJob {
        keys,
        args,
        subjects: parts
            .iter()
            .map(|p| (p.limits.subject.clone(), p.limits.period_key.clone()))
            .collect(),
        reserved: parts
            .iter()
            .map(|p| (p.reserved_tokens, p.reserved_cost))
            .collect(),
    }
}

impl Inner {
    fn cache_put(&self, subject: &SubjectId, now: UsageNow) {
        let mut e = self.cache.entry(subject.clone()).or_default();
        e.retain(|u| u.period_key != now.period_key);
        e.push(now);
        // Keep the newest two periods.
        if e.len() > 2 {
            e.remove(0);
        }
    }

    async fn run_settle(&self, job: &SettleJob) -> bool {
        let mut conn = self.conn.clone();
        let mut inv = self.settle_script.prepare_invoke();
        for k in &job.keys {
            inv.key(k);
        }
        for a in &job.args {
            inv.arg(a);
        }
        let started = Instant::now();
        let r =
            tokio::time::timeout(SETTLE_TIMEOUT, inv.invoke_async::<Vec<Value>>(&mut conn)).await;
        self.metrics
            .round_trip("settle", started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(v)) => {
                if v.len() != job.subjects.len() * 6 {
                    // Already applied by an attempt that timed out here.
                    return true;
                }
                for (i, (subject, period)) in job.subjects.iter().enumerate() {
                    let b = i * 6;
                    let at = |j: usize| v.get(j).map_or(0, int).max(0) as u64;
                    let (res_t, res_c) = job.reserved.get(i).copied().unwrap_or((0, 0.0));
                    let prev = self
                        .cache
                        .get(subject)
                        .and_then(|e| e.iter().find(|u| u.period_key == *period).cloned())
                        .unwrap_or_default();
                    self.cache_put(
                        subject,
                        UsageNow {
                            tokens_in: at(b),
                            tokens_out: at(b + 1),
                            cached_input: at(b + 4),
                            cache_write: at(b + 5),
                            cost: v.get(b + 2).map_or(0.0, float),
                            estimated_tokens: at(b + 3),
                            reserved_tokens: prev.reserved_tokens.saturating_sub(res_t),
                            reserved_cost: (prev.reserved_cost - res_c).max(0.0),
                            period_key: period.clone(),
                        },
                    );
                }
                true
            }
            Ok(Err(e)) => {
                self.metrics.error("settle");
                tracing::debug!(error = %e, "settlement not sent; queued");
                false
            }
            Err(_) => {
                self.metrics.error("settle");
                false
            }
        }
    }

    /// Sends queued settlements, then what fallback admissions owe.
    async fn drain_pending(&self) {
        loop {
            let next = self.pending.lock().pop_front();
            let job = match next {
                Some(job) => job,
                None => {
                    let owed: Vec<Owed> = self.owed.lock().drain().map(|(_, o)| o).collect();
                    if owed.is_empty() {
                        return;
                    }
                    let mut pending = self.pending.lock();
                    for o in owed {
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let member = format!("{}:owed{id}", self.replica);
                        let part = Part {
                            fingerprint: o.limits.rate_fingerprint(),
                            limits: o.limits,
                            token_estimate: None,
                            reserved_tokens: 0,
                            reserved_cost: 0.0,
                            slot: false,
                        };
                        pending.push_back(settle_job(self, &member, &[part], Some(o.amount)));
                    }
                    continue;
                }
            };
            if !self.run_settle(&job).await {
                self.pending.lock().push_front(job);
                return;
            }
        }
    }

    async fn renew(&self) {
        let mut keys = Vec::new();
        let mut members = Vec::new();
        for e in self.leases.iter() {
            let (pairs, member) = e.value();
            for (lease, res) in pairs {
                keys.push(lease.clone());
                keys.push(res.clone());
                members.push(member.clone());
            }
        }
        for (keys, members) in keys.chunks(1000).zip(members.chunks(500)) {
            let mut conn = self.conn.clone();
            let mut inv = self.renew_script.prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            inv.arg(self.cfg.lease.as_millis().to_string());
            for m in members {
                inv.arg(m);
            }
            let started = Instant::now();
            let r = tokio::time::timeout(SETTLE_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await;
            self.metrics
                .round_trip("renew", started.elapsed().as_secs_f64());
            if !matches!(r, Ok(Ok(_))) {
                self.metrics.error("renew");
            }
        }
    }
}

/// Settlements, retries, lease renewal.
async fn background(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut renew = tokio::time::interval(inner.cfg.renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(Job::Settle(job)) => {
                    let queued = !inner.pending.lock().is_empty();
                    if queued || !inner.run_settle(&job).await {
                        inner.pending.lock().push_back(job);
                    }
                }
                None => return,
            },
            _ = tick.tick() => inner.drain_pending().await,
            _ = renew.tick() => inner.renew().await,
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[async_trait]
impl CounterStore for RedisStore {
    async fn admit(&self, req: &AdmitRequest<'_>) -> AdmitResult {
        let nothing_to_check = req.estimate.is_none()
            && req
                .subjects
                .iter()
                .all(|s| s.requests.is_empty() && s.max_concurrent.is_none());
        if nothing_to_check {
            // No round trip for what holds no limit.
            return AdmitResult::Admitted {
                admission: Admission {
                    id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
                    origin: Origin::Redis,
                    parts: Vec::new(),
                    has_estimate: false,
                },
                quotas: Quotas::default(),
            };
        }
        if !self.should_try() {
            return self.unavailable(req);
        }
        match self.admit_redis(req).await {
            Ok(r) => r,
            Err(()) => self.unavailable(req),
        }
    }

    fn settle(&self, admission: Admission, charge: Charge) {
        self.finish(admission, Some(charge));
    }

    fn release(&self, admission: Admission) {
        self.finish(admission, None);
    }

    fn usage(&self, subject: &SubjectId, period_key: &str) -> UsageNow {
        self.inner
            .cache
            .get(subject)
            .and_then(|e| e.iter().find(|u| &*u.period_key == period_key).cloned())
            .unwrap_or_else(|| UsageNow {
                period_key: Arc::from(period_key),
                ..UsageNow::default()
            })
    }

    async fn read(&self, subjects: &[SubjectLimits]) -> Option<Vec<Reading>> {
        if subjects.is_empty() {
            return Some(Vec::new());
        }
        // While Redis is down, one caller per probe interval tries it.
        if !self.should_try() {
            return None;
        }
        self.read_redis(subjects).await
    }

    async fn flush(&self) {
        let inner = self.inner.clone();
        let Some(handle) = self.spawn(async move {
            // Let the background task take what is in the channel first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            inner.drain_pending().await;
            inner.pending.lock().len()
        }) else {
            return;
        };
        match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::error!(n, "redis unreachable at shutdown: settlements lost"),
            _ => tracing::error!("redis flush at shutdown timed out"),
        }
    }
}

/// Usage fields, live lease members, reservations.
type ReportReply = (Vec<Option<String>>, Vec<String>, Vec<(String, String)>);

/// `scopegate usage` for `backend: redis`: the usage of each subject in
/// its current period (`period_key` of each [`SubjectLimits`]), with what
/// live leases reserve.
///
/// # Errors
/// [`StateError::Redis`] when Redis cannot be reached.
pub async fn read_usage_report(
    cfg: &RedisConfig,
    subjects: &[SubjectLimits],
) -> Result<Vec<UsageRow>, StateError> {
    let client = open_client(cfg)?;
    let wait = cfg.timeout.max(Duration::from_secs(2));
    let mut conn = tokio::time::timeout(wait, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| redis_error(cfg, "timed out"))?
        .map_err(|e| redis_error(cfg, e))?;
    let mut out = Vec::with_capacity(subjects.len());
    let now_ms = now_unix_ms();
    for s in subjects {
        let k = subject_keys(&cfg.key_prefix, s, 0);
        let (usage, live, res): ReportReply = tokio::time::timeout(
            wait,
            redis::pipe()
                .cmd("HMGET")
                .arg(&k.usage)
                .arg(&["in", "out", "cost", "est", "cin", "cwr"])
                .cmd("ZRANGEBYSCORE")
                .arg(&k.lease)
                .arg(now_ms)
                .arg("+inf")
                .cmd("HGETALL")
                .arg(&k.res)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| redis_error(cfg, "timed out"))?
        .map_err(|e| redis_error(cfg, e))?;
        let num = |i: usize| -> f64 {
            usage
                .get(i)
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let (mut rt, mut rc) = (0u64, 0.0f64);
        for (m, v) in &res {
            if !live.contains(m) {
                continue;
            }
            let mut it = v.split(' ');
            rt += it.next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            rc += it.next().and_then(|x| x.parse().ok()).unwrap_or(0.0);
        }
        out.push(UsageRow {
            subject: s.subject.clone(),
            usage: UsageNow {
                tokens_in: num(0) as u64,
                tokens_out: num(1) as u64,
                cached_input: num(4) as u64,
                cache_write: num(5) as u64,
                cost: num(2),
                estimated_tokens: num(3) as u64,
                reserved_tokens: rt,
                reserved_cost: rc,
                period_key: s.period_key.clone(),
            },
            period_end_ms: s.period_end_ms,
            updated_at_ms: 0,
        });
    }
    Ok(out)
}

/// The token subjects with a usage hash in Redis, and its period
/// (`scopegate usage` lists them): a `SCAN` for `P{*}:token:*:usage:*`.
///
/// # Errors
/// [`StateError::Redis`] when Redis cannot be reached.
pub async fn token_subjects(cfg: &RedisConfig) -> Result<Vec<(Arc<str>, Arc<str>)>, StateError> {
    let client = open_client(cfg)?;
    let wait = cfg.timeout.max(Duration::from_secs(2));
    let mut conn = tokio::time::timeout(wait, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| redis_error(cfg, "timed out"))?
        .map_err(|e| redis_error(cfg, e))?;
    let pattern = format!("{}{{*}}:token:*:usage:*", glob_escape(&cfg.key_prefix));
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
            wait,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn),
        )
        .await
        .map_err(|_| redis_error(cfg, "timed out"))?
        .map_err(|e| redis_error(cfg, e))?;
        for k in keys {
            // P{T}:token:ID:usage:PERIOD (the period holds no `:usage:`).
            let Some(rest) = k.strip_prefix(&cfg.key_prefix) else {
                continue;
            };
            let Some((_, rest)) = rest.split_once("}:token:") else {
                continue;
            };
            if let Some((id, period)) = rest.rsplit_once(":usage:") {
                out.push((Arc::from(id), Arc::from(period)));
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(out);
        }
    }
}

/// `s` with Redis glob metacharacters escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
