//! Benchmark (accounting): SSE first-event latency through scopegate with
//! accounting off and on, and many accounted streams held open at once.
//!
//! It runs an SSE upstream here (raw HTTP/1.1 over TCP, keep-alive): every
//! `POST /v1/chat/completions` is answered with the response header and the
//! first `data:` event in one write, at once; then (after a release signal
//! when the request carries `x-bench-hold: 1`) a second event, the
//! usage-only chunk when the request asked for `include_usage` (as OpenAI
//! does), and `data: [DONE]`. scopegate, started by `benches/load/run.sh`
//! (`SSE=1`), points its completions upstream at it.
//!
//! 1. Latency: `--streams` rounds, each sending one stream request straight to
//!    the upstream (`direct`), one through scopegate with the plain key
//!    (accounting off) and one with the limited key (token rate limit and
//!    usage budget: accounting on), in an order that rotates each round, each
//!    on its own kept-alive connection. Measured: from the request's write to
//!    the read that brings the first `data:` byte. Every response must be 200,
//!    end with `[DONE]`, and carry no `usage` (the client did not ask for it:
//!    scopegate injects `include_usage` upstream and removes the chunk).
//! 2. Held: `--hold` accounted streams opened at once (each its own
//!    connection); when every one has its first event, scopegate's VmRSS is
//!    read from /proc (`--proxy-pid`); then all are released and each must
//!    finish as above. `--hold-with plain` holds streams of the plain key
//!    instead (accounting off), to compare (run it against a fresh proxy).
//!
//! With `--traced-proxy HOST:PORT` (a second scopegate, the same config with
//! tracing on at `sample_ratio: 1.0`) and `--untraced-proxy HOST:PORT` (a
//! third, the same config without it), the latency rounds add two kinds,
//! `tracing_on` and `tracing_off`: the plain key through each, interleaved
//! with the others, so tracing on and off are compared within one run, each
//! in a process that serves the same share of the streams.
//!
//! usage: sse_first_event --proxy HOST:PORT --upstream HOST:PORT --plain-key K
//!        --limited-key K [--streams 2000 (0: no latency part)] [--hold 1000]
//!        [--hold-with limited|plain] [--proxy-pid PID] [--tsv PATH]
//!        [--traced-proxy HOST:PORT --untraced-proxy HOST:PORT]

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const BODY: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Say hello in five short words, please."}]}"#;
const FIRST: &str = "data: {\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"},\"finish_reason\":null}]}\n\n";
const SECOND: &str = "data: {\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there, nice to meet you!\"},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE: &str = "data: {\"id\":\"chatcmpl-sse\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":9,\"total_tokens\":28}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn chunk(s: &str) -> String {
    format!("{:x}\r\n{s}\r\n", s.len())
}

/// One upstream connection: requests one after another (keep-alive).
async fn upstream_conn(mut tcp: TcpStream, release: watch::Receiver<bool>) -> Res<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = tcp.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let hold = head.contains("x-bench-hold: 1");
        // the body: by content-length, or chunked (its raw chunks; the
        // bench only searches it for `include_usage`)
        let chunked = head.contains("transfer-encoding: chunked");
        let len: Option<usize> = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok());
        if !chunked && len.is_none() {
            return Err("upstream: request without content-length".into());
        }
        let len = loop {
            if let Some(l) = len.filter(|_| !chunked) {
                if buf.len() >= head_end + l {
                    break l;
                }
            } else if buf[head_end..].starts_with(b"0\r\n\r\n") {
                break 5;
            } else if let Some(e) = find(&buf[head_end..], b"\r\n0\r\n\r\n") {
                break e + 7;
            }
            let mut tmp = [0u8; 4096];
            let n = tcp.read(&mut tmp).await?;
            if n == 0 {
                return Err("upstream: body cut".into());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let include_usage = find(&body, b"\"include_usage\":true").is_some();
        let first = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n{}",
            chunk(FIRST)
        );
        tcp.write_all(first.as_bytes()).await?;
        if hold {
            let mut r = release.clone();
            r.wait_for(|go| *go).await?;
        }
        let mut rest = chunk(SECOND);
        if include_usage {
            rest.push_str(&chunk(USAGE));
        }
        rest.push_str(&chunk(DONE));
        rest.push_str("0\r\n\r\n");
        tcp.write_all(rest.as_bytes()).await?;
    }
}

async fn upstream(listener: TcpListener, release: watch::Receiver<bool>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let r = release.clone();
        tokio::spawn(async move {
            if let Err(e) = upstream_conn(tcp, r).await {
                eprintln!("upstream connection: {e}");
            }
        });
    }
}

/// A client connection that sends stream requests one after another.
struct Client {
    tcp: TcpStream,
    request: Vec<u8>,
}

impl Client {
    async fn connect(addr: &str, key: Option<&str>, hold: bool) -> Res<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\n",
            BODY.len()
        );
        if let Some(k) = key {
            req.push_str(&format!("authorization: Bearer {k}\r\n"));
        }
        if hold {
            req.push_str("x-bench-hold: 1\r\n");
        }
        req.push_str("\r\n");
        req.push_str(BODY);
        Ok(Client {
            tcp,
            request: req.into_bytes(),
        })
    }

    /// Sends the request; returns when the first `data:` byte has arrived
    /// (the elapsed time) with what was read so far.
    async fn first_event(&mut self) -> Res<(Duration, Vec<u8>)> {
        let start = Instant::now();
        self.tcp.write_all(&self.request).await?;
        let mut got = Vec::with_capacity(2048);
        let mut tmp = [0u8; 4096];
        loop {
            let n = self.tcp.read(&mut tmp).await?;
            if n == 0 {
                return Err(format!(
                    "closed before the first event: {:?}",
                    String::from_utf8_lossy(&got)
                )
                .into());
            }
            got.extend_from_slice(&tmp[..n]);
            if let Some(h) = find(&got, b"\r\n\r\n") {
                if find(&got[h..], b"data:").is_some() {
                    return Ok((start.elapsed(), got));
                }
            }
        }
    }

    /// Reads the rest of the response and checks it (see the module doc).
    async fn finish(&mut self, mut got: Vec<u8>) -> Res<()> {
        let mut tmp = [0u8; 4096];
        while !got.ends_with(b"\r\n0\r\n\r\n") {
            let n = self.tcp.read(&mut tmp).await?;
            if n == 0 {
                return Err("stream cut before its end".into());
            }
            got.extend_from_slice(&tmp[..n]);
        }
        if !got.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "not 200: {}",
                String::from_utf8_lossy(&got[..got.len().min(200)])
            )
            .into());
        }
        if find(&got, b"data: [DONE]").is_none() {
            return Err("no [DONE]".into());
        }
        if find(&got, b"\"usage\"").is_some() {
            return Err("the client got a usage chunk it did not ask for".into());
        }
        Ok(())
    }
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Part 1: sequential first-event latency, three kinds interleaved.
async fn latency(
    proxy: &str,
    traced: Option<(&str, &str)>,
    upstream_addr: &str,
    plain: &str,
    limited: &str,
    streams: usize,
    out: &mut String,
) -> Res<()> {
    let mut kinds = vec!["direct", "accounting_off", "accounting_on"];
    let mut clients = vec![
        Client::connect(upstream_addr, None, false).await?,
        Client::connect(proxy, Some(plain), false).await?,
        Client::connect(proxy, Some(limited), false).await?,
    ];
    if let Some((on, off)) = traced {
        kinds.extend(["tracing_on", "tracing_off"]);
        clients.push(Client::connect(on, Some(plain), false).await?);
        clients.push(Client::connect(off, Some(plain), false).await?);
    }
    let n = kinds.len();
    let warmup = 200;
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    for round in 0..warmup + streams {
        for j in 0..n {
            let k = (round + j) % n;
            let c = &mut clients[k];
            let (t, got) = c
                .first_event()
                .await
                .map_err(|e| format!("{}: {e}", kinds[k]))?;
            c.finish(got)
                .await
                .map_err(|e| format!("{}: {e}", kinds[k]))?;
            if round >= warmup {
                lat[k].push(t.as_secs_f64() * 1e6);
            }
        }
    }
    println!("first-event latency, µs ({streams} streams per kind after {warmup} warm-up, sequential, kept-alive):");
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "kind", "min", "p50", "p90", "p99", "max", "mean"
    );
    let mut med = vec![0.0; n];
    for k in 0..n {
        let v = &mut lat[k];
        v.sort_by(|a, b| a.total_cmp(b));
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        med[k] = pct(v, 0.5);
        println!(
            "{:<16} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            kinds[k],
            v[0],
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            v[v.len() - 1],
            mean
        );
        out.push_str(&format!(
            "{}\t{}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\n",
            kinds[k],
            v.len(),
            v[0],
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            v[v.len() - 1],
            mean
        ));
    }
    println!("accounting on − off, p50: {:+.1} µs", med[2] - med[1]);
    if n > 4 {
        println!("tracing on − off, p50: {:+.1} µs", med[3] - med[4]);
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let mut args: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        args.insert(k.trim_start_matches("--").to_string(), v);
    }
    let get = |k: &str| args.get(k).cloned().ok_or(format!("--{k} is required"));
    let proxy = get("proxy")?;
    let upstream_addr = get("upstream")?;
    let plain = get("plain-key")?;
    let limited = get("limited-key")?;
    let streams: usize = args.get("streams").map_or(Ok(2000), |v| v.parse())?;
    let hold: usize = args.get("hold").map_or(Ok(1000), |v| v.parse())?;
    let pid: Option<u32> = args.get("proxy-pid").and_then(|v| v.parse().ok());
    let tsv = args.get("tsv").cloned();
    let traced = match (args.get("traced-proxy"), args.get("untraced-proxy")) {
        (Some(on), Some(off)) => Some((on.clone(), off.clone())),
        (None, None) => None,
        _ => return Err("--traced-proxy and --untraced-proxy go together".into()),
    };
    let hold_plain = args.get("hold-with").is_some_and(|v| v == "plain");
    let (hold_key, hold_tag) = if hold_plain {
        (plain.clone(), "held_accounting_off")
    } else {
        (limited.clone(), "held_accounting_on")
    };

    let (release_tx, release_rx) = watch::channel(false);
    let listener = TcpListener::bind(&upstream_addr).await?;
    tokio::spawn(upstream(listener, release_rx));

    let mut out = String::from("kind\tstreams\tmin_us\tp50_us\tp90_us\tp99_us\tmax_us\tmean_us\n");
    if streams > 0 {
        latency(
            &proxy,
            traced.as_ref().map(|(on, off)| (on.as_str(), off.as_str())),
            &upstream_addr,
            &plain,
            &limited,
            streams,
            &mut out,
        )
        .await?;
    }

    // 2. held streams
    let rss_before = rss_kib(pid);
    let firsts = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(hold);
    for _ in 0..hold {
        let (proxy, key, firsts) = (proxy.clone(), hold_key.clone(), firsts.clone());
        let mut go = release_tx.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&proxy, Some(&key), true).await?;
            let (_, got) = c.first_event().await?;
            firsts.fetch_add(1, Ordering::Relaxed);
            go.wait_for(|g| *g).await?;
            c.finish(got).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while firsts.load(Ordering::Relaxed) < hold && Instant::now() < deadline {
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened = firsts.load(Ordering::Relaxed);
    let open_ms = started.elapsed().as_millis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_held = rss_kib(pid);
    release_tx.send(true)?;
    let mut ok = 0usize;
    let mut errors: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        match t.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => *errors.entry(e.to_string()).or_default() += 1,
            Err(e) => *errors.entry(e.to_string()).or_default() += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    let mib = |k: Option<u64>| k.map_or("NA".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!(
        "held streams ({hold_tag}): {hold} opened at once, {opened} had their first event after {open_ms} ms, {ok} finished cleanly, {} errors",
        hold - ok
    );
    for (e, n) in &errors {
        println!("  error ×{n}: {e}");
    }
    println!(
        "scopegate VmRSS MiB: before {}, with {opened} streams held {}, after they finished {}",
        mib(rss_before),
        mib(rss_held),
        mib(rss_after)
    );
    out.push_str(&format!(
        "{hold_tag}\t{hold}\topened={opened}\tok={ok}\terrors={}\trss_before_mib={}\trss_held_mib={}\trss_after_mib={}\n",
        hold - ok,
        mib(rss_before),
        mib(rss_held),
        mib(rss_after)
    ));
    if let Some(p) = tsv {
        std::fs::File::create(p)?.write_all(out.as_bytes())?;
    }
    if ok != hold {
        return Err(format!("{} of {hold} held streams failed", hold - ok).into());
    }
    Ok(())
}
