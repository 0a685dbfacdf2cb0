//! Criterion benches of the pure core: the decision (hash + lookup + route +
//! scopes + workspace) at 10, 10,000 and 1,000,000 keys, route matching
//! alone, keys-file load at 100,000 keys, the rate-limit check under
//! contention from two threads, and which header carries the key:
//! the lookup order over the four key headers, the whole decision for a key
//! sent in each of them, and the upstream-stripping check that hashes another
//! key header's value to tell a keys-file key from a provider key.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::Method;

use scopegate::decision::decide::{decide, Body, Outcome, RequestFacts};
use scopegate::decision::request::{presented_key, secret_in, KeyHeaders, Presented};
use scopegate::decision::routes::RouteTable;
use scopegate::identity::keys::{
    build_snapshot, digest_hex, parse_keys_str, KeysDocument, Snapshot,
};
use scopegate::limits::rate::{monotonic_ns, KeyLimiter, RateLimit};

const NOW: i64 = 1_800_000_000_000;

/// A keys file with `n` keys: one admin key per 100, the rest workspace
/// keys spread over 100 workspaces. Key `i`'s secret is `sgk-bench-{i}`.
fn keys_yaml(n: usize) -> String {
    let mut s = String::with_capacity(n * 200);
    s.push_str("organisations:\n  - id: org_bench\n    workspaces:\n");
    for w in 0..100 {
        s.push_str(&format!("      - id: ws_{w}\n        slug: slug-{w}\n"));
    }
    s.push_str("keys:\n");
    for i in 0..n {
        let secret = format!("sgk-bench-{i}");
        if i % 100 == 1 {
            s.push_str(&format!(
                "  - id: key_{i}\n    type: organisation-service\n    sha256: \"{}\"\n    scopes: [\"workspaces.*\", \"configs.*\"]\n",
                digest_hex(secret.as_bytes())
            ));
        } else {
            s.push_str(&format!(
                "  - id: key_{i}\n    type: workspace-service\n    workspace_id: ws_{}\n    sha256: \"{}\"\n    scopes: [\"completions.write\", \"configs.read\", \"configs.list\"]\n",
                i % 100,
                digest_hex(secret.as_bytes())
            ));
        }
    }
    s
}

fn snapshot(table: &RouteTable, n: usize) -> Snapshot {
    let doc: KeysDocument = serde_yaml::from_str(&keys_yaml(n)).expect("bench keys parse");
    build_snapshot(&doc, table.registry()).expect("bench keys valid")
}

fn facts<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&'a str>,
    key: &'a [u8],
) -> RequestFacts<'a> {
    RequestFacts {
        method,
        path,
        query,
        key: Presented::Secret(key),
        content_type: None,
        content_type_repeated: false,
        bad_content_length: false,
        upgrade: scopegate::decision::request::Upgrade::None,
        body: Body::Empty,
        now: NOW,
        max_body: 65536,
        max_data_body: 16 * 1024 * 1024,
        used_up: &scopegate::decision::decide::nothing_used,
    }
}

fn bench_decision(c: &mut Criterion) {
    let table = RouteTable::build(&[], true).expect("routes");
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    for n in [10usize, 10_000, 1_000_000] {
        let snap = snapshot(&table, n);
        // A key in the middle of the file: workspace key 2 lives in ws_2.
        let ws_secret = format!("sgk-bench-{}", (n / 2) / 100 * 100 + 2);
        let ws_of = format!("ws_{}", 2);
        let admin_secret = "sgk-bench-1".to_string();
        let post = Method::POST;
        let get = Method::GET;

        let f = facts(&post, "/v1/chat/completions", None, ws_secret.as_bytes());
        assert_eq!(decide(&table, &snap, &f).outcome, Outcome::Allow);
        group.bench_with_input(BenchmarkId::new("allowed_completion", n), &f, |b, f| {
            b.iter(|| decide(&table, &snap, black_box(f)))
        });

        let f = facts(&post, "/v1/chat/completions", None, admin_secret.as_bytes());
        assert!(matches!(
            decide(&table, &snap, &f).outcome,
            Outcome::Deny(_)
        ));
        group.bench_with_input(BenchmarkId::new("denied_admin_key", n), &f, |b, f| {
            b.iter(|| decide(&table, &snap, black_box(f)))
        });

        let q = format!("workspace_id={ws_of}");
        let f = facts(&get, "/v1/configs", Some(&q), ws_secret.as_bytes());
        assert_eq!(decide(&table, &snap, &f).outcome, Outcome::Allow);
        group.bench_with_input(
            BenchmarkId::new("control_with_workspace_query", n),
            &f,
            |b, f| b.iter(|| decide(&table, &snap, black_box(f))),
        );
    }
    group.finish();
}

fn bench_routes(c: &mut Criterion) {
    let table = RouteTable::build(&[], true).expect("routes");
    let mut group = c.benchmark_group("route_match");
    for path in [
        "/v1/chat/completions",
        "/v1/admin/workspaces/ws_1/users/u_1",
        "/v1/logs/exports",
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(path), path, |b, p| {
            b.iter(|| table.match_path(black_box(p)).map(|m| m.entry.allow.len()))
        });
    }
    group.finish();
}

fn bench_keys_load(c: &mut Criterion) {
    let table = RouteTable::build(&[], true).expect("routes");
    let text = keys_yaml(100_000);
    let mut group = c.benchmark_group("keys_load");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("parse_validate_index_100k", |b| {
        b.iter(|| {
            parse_keys_str(black_box(&text), Path::new("bench.yaml"), table.registry())
                .map(|s| s.keys().len())
                .unwrap_or(0)
        })
    });
    group.finish();
}

fn bench_ratelimit(c: &mut Criterion) {
    let limits = [RateLimit {
        value: u32::MAX,
        period: Duration::from_secs(1),
    }];
    let mut group = c.benchmark_group("ratelimit");
    group.bench_function("check_uncontended", |b| {
        let l = KeyLimiter::new(&limits).expect("limited");
        b.iter(|| l.check(monotonic_ns()))
    });
    group.bench_function("check_same_key_2_threads", |b| {
        let l = Arc::new(KeyLimiter::new(&limits).expect("limited"));
        b.iter_custom(|iters| {
            let other = {
                let l = l.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        black_box(l.check(monotonic_ns()));
                    }
                })
            };
            let start = Instant::now();
            for _ in 0..iters {
                black_box(l.check(monotonic_ns()));
            }
            let elapsed = start.elapsed();
            let _ = other.join();
            elapsed
        })
    });
    group.finish();
}

/// The key headers of one request with `value` in header `which` (an index
/// into `scopegate::decision::request::KEY_HEADERS`).
fn headers_with<'h, 'a>(which: usize, one: &'h [&'a [u8]]) -> KeyHeaders<'h, 'a> {
    let mut h = KeyHeaders::default();
    match which {
        0 => h.portkey = one,
        1 => h.authorization = one,
        2 => h.x_api_key = one,
        _ => h.api_key = one,
    }
    h
}

/// The key presented in each of the four headers. `key_lookup_order`
/// is `presented_key` alone (which header wins, the reference on the decision order); `decision_by_header`
/// is `presented_key` + `decide` for an allowed completion at 10,000 keys.
fn bench_key_headers(c: &mut Criterion) {
    let table = RouteTable::build(&[], true).expect("routes");
    let snap = snapshot(&table, 10_000);
    let secret = format!("sgk-bench-{}", 5_002);
    let bearer = format!("Bearer {secret}");
    let post = Method::POST;
    let cases: [(&str, usize, &[u8]); 4] = [
        ("x-portkey-api-key", 0, secret.as_bytes()),
        ("authorization_bearer", 1, bearer.as_bytes()),
        ("x-api-key", 2, secret.as_bytes()),
        ("api-key", 3, secret.as_bytes()),
    ];

    let mut group = c.benchmark_group("key_lookup_order");
    for (name, which, value) in cases {
        let one = [value];
        let h = headers_with(which, &one);
        assert!(matches!(presented_key(&h).0, Presented::Secret(_)));
        group.bench_with_input(BenchmarkId::from_parameter(name), &h, |b, h| {
            b.iter(|| presented_key(black_box(h)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("decision_by_header");
    for (name, which, value) in cases {
        let one = [value];
        let h = headers_with(which, &one);
        let run = |h: &KeyHeaders<'_, '_>| {
            let (key, _source) = presented_key(h);
            let mut f = facts(&post, "/v1/chat/completions", None, b"");
            f.key = key;
            decide(&table, &snap, &f).outcome
        };
        assert_eq!(run(&h), Outcome::Allow);
        group.bench_with_input(BenchmarkId::new(name, 10_000), &h, |b, h| {
            b.iter(|| run(black_box(h)))
        });
    }
    group.finish();

    // The check `strip_client_headers` (src/proxy.rs, private) makes for a key
    // header that did not carry the key: its secret, hashed, looked up. The
    // same three calls here, once for a 40-byte provider key that is not in
    // the file (the lookup misses) and once for a keys-file key (a hit; its
    // secret is 14 bytes, but SHA-256 hashes anything up to 55 bytes as one
    // 64-byte block, so the hash costs the same).
    let in_file = "sgk-bench-5003".to_string();
    let provider = "sk-ant-api03-0123456789abcdefghijklmnopq".to_string();
    assert_eq!(provider.len(), 40);
    assert!(snap
        .lookup(&scopegate::identity::keys::digest(in_file.as_bytes()))
        .is_some());
    let mut group = c.benchmark_group("strip_check_other_header");
    group.bench_function("digest_40_bytes", |b| {
        b.iter(|| scopegate::identity::keys::digest(black_box(provider.as_bytes())))
    });
    for (name, value) in [("provider_key", &provider), ("keys_file_key", &in_file)] {
        group.bench_with_input(BenchmarkId::new("x-api-key", name), value, |b, v| {
            b.iter(|| {
                secret_in("x-api-key", black_box(v.as_bytes()))
                    .is_some_and(|s| snap.lookup(&scopegate::identity::keys::digest(s)).is_some())
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_decision,
    bench_key_headers,
    bench_routes,
    bench_keys_load,
    bench_ratelimit
);
criterion_main!(benches);
