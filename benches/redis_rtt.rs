//! Paced round trips to Redis through the same client path as scopegate's
//! admissions: the `redis` crate's `ConnectionManager` on a single-threaded
//! tokio runtime (what each pingora worker is), one command started every
//! 1/RATE seconds whether or not the previous one has answered (an open
//! loop, like requests arriving at the proxy), each timed from the call to
//! its reply.
//!
//! `benches/load/redis.sh` runs it pinned to scopegate's CPU while the same
//! paced HTTP load runs against scopegate in local mode, so "one loopback
//! round trip" is measured under the conditions the admissions meet — not
//! only by `redis-benchmark`'s closed loop on an otherwise idle core.
//!
//! `store` goes through scopegate's own `RedisStore::admit` instead (a key
//! with one request limit, as benches/load/redis.sh's `rate` key), so the
//! store's admission can be set against the bare round trip.
//!
//! usage: redis_rtt URL RATE SECONDS ping
//!        redis_rtt URL RATE SECONDS evalsha SHA NUMKEYS KEY... ARG...
//!        redis_rtt URL RATE SECONDS store
//! prints: RTTRESULT n=.. p50_us=.. p90_us=.. p99_us=.. max_us=.. errors=..

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use scopegate::limits::rate::RateLimit;
use scopegate::state::{
    AdmitRequest, AdmitResult, CounterStore, NoMetrics, RedisConfig, RedisStore, SubjectId,
    SubjectLimits,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; anything shorter than the usage is a
    // run from `cargo bench` without arguments: nothing to measure.
    let args: Vec<String> = args.into_iter().filter(|a| a != "--bench").collect();
    if args.len() < 4 {
        eprintln!("usage: redis_rtt URL RATE SECONDS ping|store|evalsha SHA NUMKEYS KEY... ARG...");
        return;
    }
    let url = args[0].clone();
    let rate: f64 = args[1].parse().unwrap_or(2000.0);
    let seconds: f64 = args[2].parse().unwrap_or(10.0);
    let command: Vec<String> = args[3..].to_vec();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis_rtt: runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(run(url, rate, seconds, command));
}

fn build(command: &[String]) -> redis::Cmd {
    match command[0].as_str() {
        "ping" => redis::cmd("PING"),
        other => {
            let mut c = redis::cmd(&other.to_ascii_uppercase());
            for a in &command[1..] {
                c.arg(a);
            }
            c
        }
    }
}

async fn run(url: String, rate: f64, seconds: f64, command: Vec<String>) {
    // As scopegate's `state::redis` opens it: TCP_NODELAY on.
    let info = match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
        Ok(i) => i.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)),
        Err(e) => {
            eprintln!("redis_rtt: {e}");
            std::process::exit(1);
        }
    };
    let client = match redis::Client::open(info) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis_rtt: {e}");
            std::process::exit(1);
        }
    };
    let conn = match ConnectionManager::new(client).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("redis_rtt: connect: {e}");
            std::process::exit(1);
        }
    };
    let cmd = build(&command);
    let store = match command[0].as_str() {
        "store" => match RedisStore::open(RedisConfig::new(url.as_str()), Arc::new(NoMetrics)) {
            Ok(s) => Some(Arc::new(s)),
            Err(e) => {
                eprintln!("redis_rtt: store: {e}");
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let mut subject = SubjectLimits::new(SubjectId::key("key_rtt_rate"));
    subject.workspace = Some(Arc::from("ws_rtt"));
    subject.requests = vec![RateLimit {
        value: 1_000_000,
        period: Duration::from_secs(60),
    }];
    let subjects = Arc::new([subject]);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut next = start;
    let mut sent = 0u64;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let mut c = conn.clone();
        let cmd = cmd.clone();
        let tx = tx.clone();
        let store = store.clone();
        let subjects = subjects.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let ok = match store {
                Some(store) => {
                    let req = AdmitRequest {
                        subjects: &subjects[..],
                        estimate: None,
                    };
                    match store.admit(&req).await {
                        AdmitResult::Admitted { admission, .. } => {
                            store.release(admission);
                            true
                        }
                        _ => false,
                    }
                }
                None => {
                    let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut c).await;
                    r.is_ok()
                }
            };
            let us = t0.elapsed().as_micros() as u64;
            let _ = tx.send(ok.then_some(us));
        });
        sent += 1;
        next += interval;
    }
    drop(tx);
    let mut times = Vec::with_capacity(sent as usize);
    let mut errors = 0u64;
    while let Some(r) = rx.recv().await {
        match r {
            Some(us) => times.push(us),
            None => errors += 1,
        }
    }
    times.sort_unstable();
    let pct = |p: f64| -> u64 {
        if times.is_empty() {
            return 0;
        }
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i.min(times.len() - 1)]
    };
    println!(
        "RTTRESULT n={} p50_us={} p90_us={} p99_us={} max_us={} errors={} achieved_rate={:.0}",
        times.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        times.last().copied().unwrap_or(0),
        errors,
        sent as f64 / start.elapsed().as_secs_f64(),
    );
}
