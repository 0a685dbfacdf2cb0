//! Against a real `redis-server` started per test on a free port; skipped
//! (with a message) when the binary is missing.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::limits::rate::RateLimit;
use crate::limits::{TokenRate, UsageLimit};
use crate::state::{Estimate, NoMetrics};

const REDIS: &str = "/usr/bin/redis-server";

struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Option<Server> {
        if !Path::new(REDIS).exists() {
            // `.ci/run` installs it: under CI a missing server is a failure.
            assert!(
                std::env::var_os("CI").is_none(),
                "{REDIS} is not installed, and CI must run the Redis tests"
            );
            eprintln!("{REDIS} not installed: redis test skipped");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(port, dir.path());
        let s = Server { child, port, dir };
        s.wait_ready();
        Some(s)
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new(REDIS)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let client = redis::Client::open(self.url()).expect("client");
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.dir.path());
        self.wait_ready();
    }

    fn keys(&self) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("client");
        let mut c = client.get_connection().expect("connection");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("keys");
        keys.sort();
        keys
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(server: &Server) -> RedisConfig {
    let mut c = RedisConfig::new(server.url());
    c.timeout = Duration::from_millis(200);
    c
}

fn store(cfg: &RedisConfig) -> RedisStore {
    RedisStore::open(cfg.clone(), Arc::new(NoMetrics)).expect("open")
}

fn bot() -> SubjectLimits {
    let mut k = SubjectLimits::new(SubjectId::key("key_bot"));
    k.workspace = Some(Arc::from("ws_research"));
    k
}

fn research() -> SubjectLimits {
    SubjectLimits::new(SubjectId::workspace("ws_research"))
}

fn est(tokens: u64) -> Option<Estimate> {
    Some(Estimate {
        tokens,
        cost: tokens as f64 / 1000.0,
    })
}

async fn admit(s: &RedisStore, subjects: &[SubjectLimits], e: Option<Estimate>) -> AdmitResult {
    s.admit(&AdmitRequest {
        subjects,
        estimate: e,
    })
    .await
}

fn is_admitted(r: &AdmitResult) -> bool {
    matches!(r, AdmitResult::Admitted { .. })
}

fn admission(r: AdmitResult) -> Admission {
    match r {
        AdmitResult::Admitted { admission, .. } => admission,
        other => panic!("expected admission, got {other:?}"),
    }
}

async fn wait_until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(4);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn one_request_keeps_its_state_in_one_hash_slot_under_the_prefix() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = store(&config(&server));
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 10,
        period: Duration::from_secs(60),
    }];
    k.tokens = vec![TokenRate {
        value: 1000,
        period: Duration::from_secs(60),
    }];
    k.max_concurrent = Some(4);
    let mut w = research();
    w.usage = Some(UsageLimit {
        kind: UsageKind::Tokens,
        credit_limit: 1000.0,
        alert_threshold: None,
        reset: None,
    });
    w.period_key = Arc::from("2026-11");
    let subjects = [k.clone(), w];
    let a = admission(admit(&s, &subjects, est(10)).await);
    let fp = format!("{:016x}", k.rate_fingerprint());
    assert_eq!(
        server.keys(),
        vec![
            format!("scopegate:{{ws_research}}:key:key_bot:lease"),
            format!("scopegate:{{ws_research}}:key:key_bot:rate:{fp}"),
            "scopegate:{ws_research}:workspace:ws_research:lease".to_string(),
            "scopegate:{ws_research}:workspace:ws_research:res".to_string(),
        ]
    );
    s.settle(
        a,
        Charge {
            input: 3,
            output: 4,
            cost: 0.5,
            estimated: false,
            cached_input: 2,
            cache_write: 1,
        },
    );
    let ws = SubjectId::workspace("ws_research");
    wait_until("settlement", async || {
        s.usage(&ws, "2026-11").tokens_out == 4
    })
    .await;
    assert!(server
        .keys()
        .contains(&"scopegate:{ws_research}:workspace:ws_research:usage:2026-11".to_string()));
    let report = read_usage_report(&config(&server), &subjects)
        .await
        .expect("report");
    assert_eq!(report[1].usage.tokens_in, 3);
    assert_eq!(
        (report[1].usage.cached_input, report[1].usage.cache_write),
        (2, 1),
        "the cache split is stored beside the input"
    );
    assert_eq!(s.usage(&ws, "2026-11").cached_input, 2);
    assert_eq!(report[1].usage.cost, 0.5);
    assert_eq!(report[1].usage.reserved_tokens, 0);
}

#[tokio::test]
async fn two_replicas_never_over_admit_requests_budget_or_concurrency() {
    let Some(server) = Server::start() else {
        return;
    };
    let cfg = config(&server);
    let (a, b) = (Arc::new(store(&cfg)), Arc::new(store(&cfg)));
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 10,
        period: Duration::from_secs(60),
    }];
    let mut w = research();
    w.usage = Some(UsageLimit {
        kind: UsageKind::Tokens,
        credit_limit: 100.0,
        alert_threshold: None,
        reset: None,
    });
    let mut c = SubjectLimits::new(SubjectId::key("key_conc"));
    c.max_concurrent = Some(3);

    let passed = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (k, w, c) = (k.clone(), w.clone(), c.clone());
        let (passed, held) = (passed.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            let r = match i % 3 {
                0 => admit(&s, &[k], None).await,
                1 => admit(&s, &[w], est(10)).await,
                _ => admit(&s, &[c], None).await,
            };
            if let AdmitResult::Admitted { admission, .. } = r {
                passed.fetch_add(1, Ordering::Relaxed);
                held.lock().push((s, admission));
            } else {
                assert!(!matches!(r, AdmitResult::Unavailable), "{r:?}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    // 10 requests + 10 reservations of 10 tokens + 3 slots.
    assert_eq!(passed.load(Ordering::Relaxed), 23);
    let mut counts = [0usize; 3];
    for (_, adm) in held.lock().iter() {
        match &*adm.parts[0].limits.subject.id {
            "key_bot" => counts[0] += 1,
            "ws_research" => counts[1] += 1,
            _ => counts[2] += 1,
        }
    }
    assert_eq!(counts, [10, 10, 3]);
    for (s, adm) in held.lock().drain(..) {
        s.release(adm);
    }
    let b2 = b.clone();
    let c2 = c.clone();
    wait_until("slots freed", async move || {
        match admit(&b2, std::slice::from_ref(&c2), None).await {
            AdmitResult::Admitted { admission, .. } => {
                b2.release(admission);
                true
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn a_dead_replicas_leases_expire_by_themselves() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut cfg = config(&server);
    cfg.lease = Duration::from_millis(300);
    cfg.renew_every = Duration::from_millis(100);
    let mut c = SubjectLimits::new(SubjectId::key("key_conc"));
    c.max_concurrent = Some(1);
    let subjects = [c];
    let live = store(&cfg);
    let held = admission(admit(&live, &subjects, None).await);
    // Renewed while its replica lives.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = store(&cfg);
    assert!(matches!(
        admit(&other, &subjects, None).await,
        AdmitResult::ConcurrencyLimited { .. }
    ));
    // The replica dies with the request in flight.
    std::mem::forget(held);
    drop(live);
    let started = Instant::now();
    wait_until("lease expiry", async || {
        match admit(&other, &subjects, None).await {
            AdmitResult::Admitted { admission, .. } => {
                other.release(admission);
                true
            }
            _ => false,
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn token_limits_and_settlement_refunds_hold_across_replicas() {
    let Some(server) = Server::start() else {
        return;
    };
    let cfg = config(&server);
    let (a, b) = (store(&cfg), store(&cfg));
    let mut k = bot();
    k.tokens = vec![TokenRate {
        value: 100,
        period: Duration::from_secs(60),
    }];
    let subjects = [k];
    let first = admit(&a, &subjects, est(60)).await;
    let AdmitResult::Admitted { admission, quotas } = first else {
        panic!("{first:?}")
    };
    let tq = quotas.tokens.expect("token quota");
    assert_eq!((tq.limit, tq.remaining), (100, 40));
    match admit(&b, &subjects, est(60)).await {
        AdmitResult::RateLimited {
            which: RateKind::Tokens,
            larger_than_limit: false,
            retry_after,
            ..
        } => {
            assert!(retry_after > Duration::from_secs(11) && retry_after <= Duration::from_secs(12))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        admit(&b, &subjects, est(101)).await,
        AdmitResult::RateLimited {
            larger_than_limit: true,
            ..
        }
    ));
    a.settle(
        admission,
        Charge {
            input: 5,
            output: 5,
            cost: 0.0,
            estimated: true,
            ..Charge::default()
        },
    );
    wait_until("refund", async || {
        match admit(&b, &subjects, est(80)).await {
            AdmitResult::Admitted { admission, .. } => {
                b.release(admission);
                true
            }
            _ => false,
        }
    })
    .await;
}

#[tokio::test]
async fn a_stopped_redis_is_answered_within_the_timeout_then_recovers() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut cfg = config(&server);
    cfg.timeout = Duration::from_millis(100);
    let metrics = Arc::new(Counting::default());
    let allow = RedisStore::open(cfg.clone(), metrics.clone()).expect("open");
    let deny = store(&RedisConfig {
        on_error: OnError::Deny,
        ..cfg.clone()
    });
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 2,
        period: Duration::from_secs(60),
    }];
    k.usage = Some(UsageLimit {
        kind: UsageKind::Tokens,
        credit_limit: 1e6,
        alert_threshold: None,
        reset: None,
    });
    let subjects = [k];
    let warm = admission(admit(&allow, &subjects, est(1)).await);
    allow.release(warm);
    assert!(is_admitted(&admit(&deny, &subjects, None).await));

    server.signal(libc::SIGSTOP);
    let t = Instant::now();
    let fallback = admit(&allow, &subjects, est(1)).await;
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let fallback = admission(fallback);
    let t = Instant::now();
    assert!(matches!(
        admit(&deny, &subjects, None).await,
        AdmitResult::Unavailable
    ));
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Limits still hold per replica: the fallback has its own 2 per minute.
    assert!(is_admitted(&admit(&allow, &subjects, None).await));
    assert!(matches!(
        admit(&allow, &subjects, None).await,
        AdmitResult::RateLimited { .. }
    ));
    // Usage settled during the outage is queued, not lost.
    allow.settle(
        fallback,
        Charge {
            input: 7,
            output: 0,
            cost: 0.0,
            estimated: false,
            ..Charge::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(allow.pending_settlements() >= 1, "owed while redis is away");
    assert!(metrics.errors.lock().contains(&"admit"));
    server.signal(libc::SIGCONT);
    let id = SubjectId::key("key_bot");
    wait_until("queued settlement lands", async || {
        let r = read_usage_report(&cfg, &subjects).await.expect("report");
        r[0].usage.tokens_in == 7
    })
    .await;
    wait_until("back on redis", async || {
        tokio::time::sleep(Duration::from_millis(100)).await;
        matches!(
            admit(&deny, &subjects, None).await,
            AdmitResult::RateLimited { .. }
        )
    })
    .await;
    let _ = allow.usage(&id, "all");
    assert!(metrics.trips.load(Ordering::Relaxed) >= 3);
}

#[derive(Default)]
struct Counting {
    errors: Mutex<Vec<&'static str>>,
    trips: AtomicUsize,
}

impl StateMetrics for Counting {
    fn error(&self, op: &'static str) {
        self.errors.lock().push(op);
    }
    fn round_trip(&self, _op: &'static str, _seconds: f64) {
        self.trips.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_restarted_redis_is_used_again() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let cfg = RedisConfig {
        on_error: OnError::Deny,
        ..config(&server)
    };
    let s = store(&cfg);
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 100,
        period: Duration::from_secs(60),
    }];
    let subjects = [k];
    assert!(is_admitted(&admit(&s, &subjects, None).await));
    server.restart();
    assert!(server.keys().is_empty());
    wait_until("reconnected", async || {
        match admit(&s, &subjects, None).await {
            AdmitResult::Admitted { admission, .. } => {
                s.release(admission);
                !server.keys().is_empty()
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                false
            }
        }
    })
    .await;
}

#[tokio::test]
async fn request_limits_report_quotas_like_ratelimit_rs() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = store(&config(&server));
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 5,
        period: Duration::from_secs(60),
    }];
    let subjects = [k];
    for want in (0..5).rev() {
        let AdmitResult::Admitted { admission, quotas } = admit(&s, &subjects, None).await else {
            panic!("refused early")
        };
        let q = quotas.requests.expect("request quota");
        assert_eq!((q.limit, q.remaining, q.retry_after), (5, want, None));
        let whole = Duration::from_secs(12 * u64::from(5 - want));
        assert!(
            q.reset <= whole && q.reset > whole - Duration::from_secs(1),
            "{q:?}"
        );
        s.release(admission);
    }
    match admit(&s, &subjects, None).await {
        AdmitResult::RateLimited {
            which: RateKind::Requests,
            retry_after,
            quotas,
            ..
        } => {
            let q = quotas.requests.expect("request quota");
            assert_eq!((q.remaining, q.retry_after), (0, Some(retry_after)));
            assert!(
                retry_after > Duration::from_secs(11) && retry_after <= Duration::from_secs(12)
            );
            assert_eq!(q.retry_after_secs(), Some(12));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn urls_open_lazily_tls_included_and_never_print_a_password() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let cfg = RedisConfig::new("rediss://:s3cret@redis.example:6380/0");
    assert_eq!(cfg.redacted_url(), "rediss://…@redis.example:6380/0");
    let s = RedisStore::open(cfg, Arc::new(NoMetrics)).expect("lazy open");
    assert!(!format!("{s:?}").contains("s3cret"));
    let err =
        RedisStore::open(RedisConfig::new("http://x"), Arc::new(NoMetrics)).expect_err("bad url");
    assert!(err.to_string().contains("http://x"), "{err}");
}

#[tokio::test]
async fn cost_budgets_are_per_period_expire_after_it_and_hold_in_the_fallback() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = store(&config(&server));
    let mut w = research();
    w.usage = Some(UsageLimit {
        kind: UsageKind::Cost,
        credit_limit: 1.0,
        alert_threshold: None,
        reset: None,
    });
    w.period_key = Arc::from("2026-11");
    let end_ms = now_unix_ms() as i64 + 3_600_000;
    w.period_end_ms = Some(end_ms);
    let one = |cost: f64| Some(Estimate { tokens: 10, cost });
    let a = admission(admit(&s, std::slice::from_ref(&w), one(0.5)).await);
    s.settle(
        a,
        Charge {
            input: 100,
            output: 100,
            cost: 0.9,
            estimated: false,
            ..Charge::default()
        },
    );
    let ws = SubjectId::workspace("ws_research");
    wait_until("settled", async || s.usage(&ws, "2026-11").cost == 0.9).await;
    assert!(matches!(
        admit(&s, std::slice::from_ref(&w), one(0.2)).await,
        AdmitResult::BudgetExhausted { .. }
    ));
    let client = redis::Client::open(server.url()).expect("client");
    let mut c = client.get_connection().expect("connection");
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg("scopegate:{ws_research}:workspace:ws_research:usage:2026-11")
        .query(&mut c)
        .expect("pexpiretime");
    assert_eq!(at, end_ms + USAGE_MARGIN_MS);
    // Another period starts from nothing.
    let mut next = w.clone();
    next.period_key = Arc::from("2026-12");
    let b = admission(admit(&s, std::slice::from_ref(&next), one(0.9)).await);
    s.release(b);
    // Redis away: the fallback still knows this period is nearly spent.
    server.signal(libc::SIGSTOP);
    assert!(matches!(
        admit(&s, std::slice::from_ref(&w), one(0.2)).await,
        AdmitResult::BudgetExhausted { .. }
    ));
    assert!(is_admitted(
        &admit(&s, std::slice::from_ref(&w), one(0.05)).await
    ));
    server.signal(libc::SIGCONT);
}

#[test]
fn connections_disable_nagle_and_keep_the_url() {
    for url in ["redis://127.0.0.1:6390/3", "rediss://cache.internal:6380/0"] {
        let client = open_client(&RedisConfig::new(url)).expect("valid url");
        let info = client.get_connection_info();
        assert!(info.tcp_settings().nodelay(), "{url}");
        assert_eq!(
            info.redis_settings().db(),
            if url.ends_with("/3") { 3 } else { 0 }
        );
    }
}

/// Redis' per-command counts of the calls `admit` makes (after one call
/// that loads the script, so only the counted call shows).
async fn commands_of_one_admission(
    s: &RedisStore,
    c: &mut redis::aio::MultiplexedConnection,
    subject: &SubjectLimits,
) -> String {
    assert!(is_admitted(
        &admit(s, std::slice::from_ref(subject), None).await
    ));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(c)
        .await
        .expect("resetstat");
    assert!(is_admitted(
        &admit(s, std::slice::from_ref(subject), None).await
    ));
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .expect("info")
}

#[tokio::test]
async fn a_subject_with_request_limits_alone_reads_only_its_rate_hash() {
    let Some(server) = Server::start() else {
        return;
    };
    let s = store(&config(&server));
    let mut k = bot();
    k.requests = vec![RateLimit {
        value: 100,
        period: Duration::from_secs(60),
    }];
    let client = redis::Client::open(server.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let stats = commands_of_one_admission(&s, &mut c, &k).await;
    assert!(stats.contains("cmdstat_hget:calls=1,"), "{stats}");
    for unneeded in ["zrangebyscore", "zcard", "hvals", "hmget", "zadd"] {
        assert!(
            !stats.contains(&format!("cmdstat_{unneeded}:")),
            "{unneeded} called for a subject with request limits alone: {stats}"
        );
    }

    // With a concurrency limit, its leases are read (and one taken).
    k.max_concurrent = Some(2);
    let stats = commands_of_one_admission(&s, &mut c, &k).await;
    for needed in ["zcard", "hvals", "zadd"] {
        assert!(
            stats.contains(&format!("cmdstat_{needed}:")),
            "{needed}: {stats}"
        );
    }
    assert!(
        !stats.contains("cmdstat_hmget:"),
        "usage read without a usage limit: {stats}"
    );
}
