use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use super::*;
use crate::limits::rate::{KeyLimiter, RateLimit};
use crate::limits::{TokenRate, UsageKind, UsageLimit};
use crate::state::{Estimate, RateKind};

const SEC: u64 = 1_000_000_000;
const T0: u64 = 1_000 * SEC;

fn key(id: &str) -> SubjectLimits {
    SubjectLimits::new(SubjectId::key(id))
}

fn ws(id: &str) -> SubjectLimits {
    SubjectLimits::new(SubjectId::workspace(id))
}

use crate::state::SubjectLimits;

fn token_budget(limit: f64) -> Option<UsageLimit> {
    Some(UsageLimit {
        kind: UsageKind::Tokens,
        credit_limit: limit,
        alert_threshold: None,
        reset: None,
    })
}

fn tpm(n: u64) -> TokenRate {
    TokenRate {
        value: n,
        period: Duration::from_secs(60),
    }
}

fn est(tokens: u64) -> Option<Estimate> {
    Some(Estimate {
        tokens,
        cost: tokens as f64 / 1000.0,
    })
}

fn tokens(input: u64, output: u64) -> Charge {
    Charge {
        input,
        output,
        cost: 0.0,
        estimated: false,
        ..Charge::default()
    }
}

fn admit(s: &LocalStore, subjects: &[SubjectLimits], e: Option<Estimate>, now: u64) -> AdmitResult {
    s.admit_at(
        &AdmitRequest {
            subjects,
            estimate: e,
        },
        now,
    )
}

fn admitted(r: AdmitResult) -> (Admission, crate::state::Quotas) {
    match r {
        AdmitResult::Admitted { admission, quotas } => (admission, quotas),
        other => panic!("expected admission, got {other:?}"),
    }
}

#[test]
fn reservation_rule_never_over_admits_under_many_threads() {
    let store = Arc::new(LocalStore::in_memory());
    let mut k = key("key_bot");
    k.usage = token_budget(1000.0);
    let mut w = ws("ws_research");
    w.usage = token_budget(1_000_000.0);
    let subjects = [k, w];
    // Half the threads name the subjects the other way round: the store
    // locks them in one global order, so this cannot deadlock.
    let reversed = [subjects[1].clone(), subjects[0].clone()];
    let passed = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for t in 0..8 {
            let subjects = if t % 2 == 0 { &subjects } else { &reversed };
            let (store, passed, held) = (&store, &passed, &held);
            scope.spawn(move || {
                for i in 0..100 {
                    if let AdmitResult::Admitted { admission, .. } =
                        store.admit_now(&AdmitRequest {
                            subjects,
                            estimate: est(10),
                        })
                    {
                        passed.fetch_add(1, Ordering::Relaxed);
                        // Half settle at once (using what they reserved), half stay in flight.
                        if (t + i) % 2 == 0 {
                            store.settle(admission, tokens(4, 6));
                        } else {
                            held.lock().push(admission);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(passed.load(Ordering::Relaxed), 100);
    let u = store.usage(&SubjectId::key("key_bot"), "all");
    assert_eq!(u.tokens_in + u.tokens_out + u.reserved_tokens, 1000);
    for a in held.lock().drain(..) {
        store.release(a);
    }
    let u = store.usage(&SubjectId::key("key_bot"), "all");
    assert_eq!((u.reserved_tokens, u.reserved_cost), (0, 0.0));
}

#[test]
fn request_limits_behave_exactly_as_ratelimit_rs() {
    let limits = [
        RateLimit {
            value: 5,
            period: Duration::from_secs(1),
        },
        RateLimit {
            value: 40,
            period: Duration::from_secs(60),
        },
    ];
    let reference = KeyLimiter::new(&limits).expect("limited");
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.requests = limits.to_vec();
    let subjects = [k];
    let mut now = T0;
    let mut seed: u64 = 42;
    for _ in 0..2000 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        now += (seed >> 33) % (SEC / 3);
        let want = reference.check(now);
        let got = match admit(&store, &subjects, None, now) {
            AdmitResult::Admitted { admission, quotas } => {
                store.release(admission);
                quotas.requests.expect("request quota")
            }
            AdmitResult::RateLimited {
                which: RateKind::Requests,
                quotas,
                ..
            } => quotas.requests.expect("request quota"),
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(got, want, "at {now}");
    }
}

#[test]
fn token_limit_admits_while_the_estimate_is_left_and_says_when_it_never_fits() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.tokens = vec![tpm(100)];
    let subjects = [k];
    let (a, q) = admitted(admit(&store, &subjects, est(60), T0));
    let tq = q.tokens.expect("token quota");
    assert_eq!((tq.limit, tq.remaining), (100, 40));
    assert_eq!(tq.reset, Duration::from_secs(36));
    match admit(&store, &subjects, est(60), T0) {
        AdmitResult::RateLimited {
            which: RateKind::Tokens,
            retry_after,
            larger_than_limit: false,
            quotas,
            ..
        } => {
            assert_eq!(retry_after, Duration::from_secs(12));
            assert_eq!(quotas.tokens.map(|t| t.remaining), Some(40));
        }
        other => panic!("unexpected {other:?}"),
    }
    match admit(&store, &subjects, est(101), T0 + 3600 * SEC) {
        AdmitResult::RateLimited {
            which: RateKind::Tokens,
            larger_than_limit: true,
            ..
        } => {}
        other => panic!("unexpected {other:?}"),
    }
    // A route that carries no usage is not held by token limits.
    let (b, q) = admitted(admit(&store, &subjects, None, T0));
    assert_eq!(q.tokens, None);
    store.finish_at(b, None, T0);
    store.finish_at(a, Some(&tokens(5, 5)), T0);
}

#[test]
fn settlement_refunds_or_charges_the_difference_to_token_limits() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.tokens = vec![tpm(100)];
    k.usage = token_budget(1e9);
    let subjects = [k];
    let (a, _) = admitted(admit(&store, &subjects, est(60), T0));
    store.finish_at(a, Some(&tokens(5, 5)), T0);
    let (a, q) = admitted(admit(&store, &subjects, est(0), T0));
    assert_eq!(q.tokens.map(|t| t.remaining), Some(90));
    store.finish_at(a, Some(&tokens(100, 50)), T0);
    // 10 + 150 used: in debt, nothing passes until it is paid back.
    assert!(matches!(
        admit(&store, &subjects, est(0), T0),
        AdmitResult::RateLimited {
            which: RateKind::Tokens,
            ..
        }
    ));
    let (_a, q) = admitted(admit(&store, &subjects, est(0), T0 + 36 * SEC));
    assert_eq!(q.tokens.map(|t| t.remaining), Some(0));
    let u = store.usage(&SubjectId::key("k"), "all");
    assert_eq!((u.tokens_in, u.tokens_out, u.reserved_tokens), (105, 55, 0));
}

#[test]
fn concurrency_limit_holds_and_a_refusal_commits_nothing() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.max_concurrent = Some(2);
    k.requests = vec![RateLimit {
        value: 10,
        period: Duration::from_secs(60),
    }];
    k.usage = token_budget(1000.0);
    let subjects = [k];
    let (a, _) = admitted(admit(&store, &subjects, est(10), T0));
    let (b, q) = admitted(admit(&store, &subjects, est(10), T0));
    assert_eq!(q.requests.map(|q| q.remaining), Some(8));
    match admit(&store, &subjects, est(10), T0) {
        AdmitResult::ConcurrencyLimited { quotas, .. } => {
            assert_eq!(quotas.requests.map(|q| q.remaining), Some(8));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.usage(&SubjectId::key("k"), "all").reserved_tokens, 20);
    store.finish_at(a, None, T0);
    let (c, q) = admitted(admit(&store, &subjects, est(10), T0));
    assert_eq!(q.requests.map(|q| q.remaining), Some(7));
    store.finish_at(b, None, T0);
    store.finish_at(c, None, T0);
}

#[test]
fn a_workspace_budget_refusal_takes_nothing_from_the_key() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.requests = vec![RateLimit {
        value: 10,
        period: Duration::from_secs(60),
    }];
    k.usage = token_budget(1000.0);
    let mut w = ws("w");
    w.usage = Some(UsageLimit {
        kind: UsageKind::Cost,
        credit_limit: 0.05,
        alert_threshold: None,
        reset: None,
    });
    let subjects = [k, w];
    // est(40) costs 0.04: the first passes, the second would pass 0.05.
    let (a, _) = admitted(admit(&store, &subjects, est(40), T0));
    match admit(&store, &subjects, est(40), T0) {
        AdmitResult::BudgetExhausted { subject } => assert_eq!(subject, SubjectId::workspace("w")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.usage(&SubjectId::key("k"), "all").reserved_tokens, 40);
    let (_b, q) = admitted(admit(&store, &subjects, None, T0));
    assert_eq!(q.requests.map(|q| q.remaining), Some(8));
    store.finish_at(
        a,
        Some(&Charge {
            input: 10,
            output: 0,
            cost: 0.01,
            estimated: true,
            cached_input: 4,
            cache_write: 3,
        }),
        T0,
    );
    let u = store.usage(&SubjectId::workspace("w"), "all");
    assert_eq!((u.tokens_in, u.estimated_tokens, u.cost), (10, 10, 0.01));
    assert_eq!((u.cached_input, u.cache_write), (4, 3));
    assert!(!u.exhausted(&subjects[1].usage.expect("limit")));
}

#[test]
fn periods_are_counted_apart() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.usage = token_budget(100.0);
    k.period_key = Arc::from("2026-11");
    let (a, _) = admitted(admit(&store, std::slice::from_ref(&k), est(100), T0));
    store.finish_at(a, Some(&tokens(60, 40)), T0);
    assert!(matches!(
        admit(&store, std::slice::from_ref(&k), est(1), T0),
        AdmitResult::BudgetExhausted { .. }
    ));
    k.period_key = Arc::from("2026-12");
    let (a, _) = admitted(admit(&store, std::slice::from_ref(&k), est(100), T0));
    store.finish_at(a, Some(&tokens(1, 1)), T0);
    let id = SubjectId::key("k");
    assert_eq!(store.usage(&id, "2026-11").tokens_in, 60);
    assert_eq!(store.usage(&id, "2026-12").tokens_in, 1);
    assert_eq!(&*store.usage(&id, "2027-01").period_key, "2027-01");
}

#[test]
fn rate_state_survives_a_reload_only_while_the_limits_are_unchanged() {
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.requests = vec![RateLimit {
        value: 2,
        period: Duration::from_secs(60),
    }];
    k.usage = token_budget(1000.0);
    let (a, _) = admitted(admit(&store, std::slice::from_ref(&k), est(10), T0));
    store.finish_at(a, Some(&tokens(10, 0)), T0);
    // The "reloaded" key: equal limits, a new value.
    let same = k.clone();
    let (_b, q) = admitted(admit(&store, std::slice::from_ref(&same), None, T0));
    assert_eq!(q.requests.map(|q| q.remaining), Some(0));
    let mut changed = k.clone();
    changed.requests[0].value = 3;
    changed.usage = token_budget(20.0);
    let (_c, q) = admitted(admit(&store, std::slice::from_ref(&changed), None, T0));
    assert_eq!(q.requests.map(|q| q.remaining), Some(2));
    // Usage does not depend on the limits.
    assert!(matches!(
        admit(&store, std::slice::from_ref(&changed), est(11), T0),
        AdmitResult::BudgetExhausted { .. }
    ));
}

#[test]
fn usage_survives_a_reopen_and_reservations_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let mut k = key("key_bot");
    k.usage = token_budget(1000.0);
    k.period_key = Arc::from("2026-11");
    k.period_end_ms = Some(1_798_761_600_000);
    {
        let store = LocalStore::open(&path).expect("open");
        let (a, _) = admitted(store.admit_now(&AdmitRequest {
            subjects: std::slice::from_ref(&k),
            estimate: est(50),
        }));
        store.settle(a, tokens(30, 12));
        let (_held, _) = admitted(store.admit_now(&AdmitRequest {
            subjects: std::slice::from_ref(&k),
            estimate: est(50),
        }));
        store.flush_now().expect("flush");
        let rows = read_usage_report(&path).expect("read");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].usage.reserved_tokens, 50);
        assert_eq!(rows[0].period_end_ms, Some(1_798_761_600_000));
    }
    let store = LocalStore::open(&path).expect("reopen");
    let u = store.usage(&SubjectId::key("key_bot"), "2026-11");
    assert_eq!((u.tokens_in, u.tokens_out, u.reserved_tokens), (30, 12, 0));
    let report = store.report();
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].subject, SubjectId::key("key_bot"));
}

#[test]
fn the_cache_split_persists_and_an_older_file_gains_its_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        // A state file as an older scopegate wrote it: no cache columns.
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(
            "CREATE TABLE usage (scope TEXT NOT NULL, id TEXT NOT NULL, period TEXT NOT NULL,
                period_end_ms INTEGER, input_tokens INTEGER NOT NULL DEFAULT 0,
                output_tokens INTEGER NOT NULL DEFAULT 0, cost_usd REAL NOT NULL DEFAULT 0,
                estimated_tokens INTEGER NOT NULL DEFAULT 0,
                reserved_tokens INTEGER NOT NULL DEFAULT 0,
                reserved_cost REAL NOT NULL DEFAULT 0,
                updated_at_ms INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (scope, id, period));
             INSERT INTO usage (scope, id, period, input_tokens) VALUES ('key', 'k', 'all', 7);",
        )
        .expect("old schema");
    }
    let rows = read_usage_report(&path).expect("an old file reads");
    assert_eq!(
        (rows[0].usage.tokens_in, rows[0].usage.cached_input),
        (7, 0)
    );
    let k = key("k");
    {
        let store = LocalStore::open(&path).expect("open upgrades");
        let (a, _) = admitted(store.admit_now(&AdmitRequest {
            subjects: std::slice::from_ref(&k),
            estimate: est(5),
        }));
        let mut c = tokens(100, 1);
        c.cached_input = 60;
        c.cache_write = 30;
        store.settle(a, c);
        store.flush_now().expect("flush");
    }
    let rows = read_usage_report(&path).expect("read");
    let u = &rows[0].usage;
    assert_eq!((u.tokens_in, u.cached_input, u.cache_write), (107, 60, 30));
    let store = LocalStore::open(&path).expect("reopen");
    let u = store.usage(&SubjectId::key("k"), "all");
    assert_eq!((u.cached_input, u.cache_write), (60, 30));
}

#[test]
fn the_writer_persists_within_about_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let store = LocalStore::open(&path).expect("open");
    let k = ws("ws_a");
    let (a, _) = admitted(store.admit_now(&AdmitRequest {
        subjects: std::slice::from_ref(&k),
        estimate: est(5),
    }));
    store.settle(a, tokens(3, 4));
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    loop {
        let rows = read_usage_report(&path).expect("read");
        if rows.first().is_some_and(|r| r.usage.tokens_out == 4) {
            assert_eq!(rows[0].subject, SubjectId::workspace("ws_a"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written: {rows:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_opener_is_refused_while_a_reader_still_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let store = LocalStore::open(&path).expect("open");
    let k = key("key_bot");
    let a = admitted(store.admit_now(&AdmitRequest {
        subjects: std::slice::from_ref(&k),
        estimate: est(5),
    }))
    .0;
    store.settle(a, tokens(2, 3));
    store.flush_now().expect("flush");
    let err = LocalStore::open(&path).expect_err("second open");
    let msg = err.to_string();
    assert!(msg.contains("state.db") && msg.contains("in use"), "{msg}");
    let rows = read_usage_report(&path).expect("read");
    assert_eq!((rows.len(), rows[0].usage.tokens_out), (1, 3));
    // The operator's shell reads it too.
    if let Ok(out) = std::process::Command::new("sqlite3")
        .arg("-readonly")
        .arg(&path)
        .arg("SELECT scope, id, period, input_tokens, output_tokens FROM usage")
        .output()
    {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "key|key_bot|all|2|3\n"
        );
    }
    drop(store);
    LocalStore::open(&path).expect("open after the first closed");
}

#[test]
fn a_corrupt_file_or_a_missing_directory_is_named_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![b'x'; 4096]).expect("write");
    let msg = LocalStore::open(&path).expect_err("corrupt").to_string();
    assert!(
        msg.contains("state.db") && msg.contains("not a SQLite database"),
        "{msg}"
    );
    assert!(read_usage_report(&path).is_err());
    let missing = dir.path().join("nope").join("state.db");
    let msg = LocalStore::open(&missing)
        .expect_err("missing dir")
        .to_string();
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
}

#[test]
fn an_unwritable_directory_is_named_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let probe = ro.join("probe");
    if std::fs::write(&probe, b"x").is_ok() {
        eprintln!("running as a user who can write anywhere (root): skipped");
        return;
    }
    let msg = LocalStore::open(&ro.join("state.db"))
        .expect_err("unwritable")
        .to_string();
    assert!(
        msg.contains("state.db") && msg.contains("cannot be written"),
        "{msg}"
    );
}

#[test]
fn a_read_shows_what_the_checks_see_and_takes_nothing() {
    use crate::limits::rate::RateLimit;
    let store = LocalStore::in_memory();
    let mut k = key("k");
    k.requests = vec![RateLimit {
        value: 60,
        period: Duration::from_secs(60),
    }];
    k.tokens = vec![tpm(1000)];
    k.usage = token_budget(500.0);
    k.max_concurrent = Some(3);
    let subjects = [k.clone(), ws("w")];
    // Nothing yet: every limit whole.
    let fresh = store.read_at(&subjects, T0);
    assert_eq!(fresh[0].requests[0].remaining, 60);
    assert_eq!(fresh[0].tokens[0].remaining, 1000);
    assert_eq!(fresh[0].in_flight, 0);
    assert_eq!(fresh[1], crate::limits::view::Reading::default());
    let (done, _) = admitted(admit(&store, &subjects, est(100), T0));
    store.finish_at(done, Some(&tokens(30, 10)), T0);
    let (_held, _) = admitted(admit(&store, &subjects, est(100), T0));
    let r = store.read_at(&subjects, T0);
    assert_eq!(r[0].requests[0].remaining, 58, "two requests");
    assert_eq!(r[0].requests[0].reset, Duration::from_secs(2));
    assert_eq!(r[0].tokens[0].remaining, 1000 - 40 - 100);
    let u = r[0].usage.expect("usage");
    assert_eq!((u.used, u.reserved), (40.0, 100.0));
    assert_eq!(r[0].in_flight, 1, "the held request's slot");
    // Reading took nothing: a second read is the same.
    assert_eq!(store.read_at(&subjects, T0), r);
    // Time gives the rate limits back.
    let later = store.read_at(&subjects, T0 + 60 * SEC);
    assert_eq!(later[0].requests[0].remaining, 60);
    assert_eq!(later[0].tokens[0].remaining, 1000);
}
