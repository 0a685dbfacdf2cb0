//! Benchmark (HTTPS for clients): many SSE streams multiplexed on one HTTP/2
//! connection through scopegate's TLS listener, against the same streams
//! over HTTP/1.1 (one connection each) on its plain listener.
//!
//! It starts an SSE upstream here (each stream: one event at once, then one
//! every `INTERVAL_MS`, then `[DONE]`), writes a self-signed certificate, a
//! one-key keys file and a config into a temp dir, runs the given
//! `scopegate` binary, then opens all streams at once and reports, per
//! protocol, the time from sending each request to its first event
//! (min/p50/p99/max over the streams), the largest gap between two events of
//! one stream (a head-of-line stall shows up there), and how many TCP
//! connections the client used.
//!
//! usage: cargo run --example h2_sse_streams -- target/release/scopegate [STREAMS] [EVENTS] [INTERVAL_MS]

use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;

const KEY: &str = "sgk-bench-h2-sse";

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The SSE upstream; returns its address and a count of connections.
async fn start_upstream(events: u64, interval: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    let body = futures_util::stream::unfold(0u64, move |i| async move {
                        if i > events {
                            return None;
                        }
                        if i > 0 {
                            tokio::time::sleep(interval).await;
                        }
                        let text = if i == events {
                            "data: [DONE]\n\n".to_string()
                        } else {
                            format!("data: {{\"event\":{i}}}\n\n")
                        };
                        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), i + 1))
                    });
                    let resp = hyper::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(StreamBody::new(body))
                        .expect("response");
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, connections)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn ready(metrics: SocketAddr) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(metrics) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

/// Per-stream results: first event after, largest gap between events.
struct StreamTimes {
    first: Duration,
    max_gap: Duration,
}

async fn one_stream(client: reqwest::Client, url: String) -> StreamTimes {
    let start = Instant::now();
    let mut resp = client
        .post(url)
        .header("x-portkey-api-key", KEY)
        .header("content-type", "application/json")
        .body(r#"{"model":"m","stream":true,"messages":[]}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200, "stream refused");
    let mut first = None;
    let mut last = Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut seen = String::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        let now = Instant::now();
        if first.is_none() {
            first = Some(now - start);
        } else {
            max_gap = max_gap.max(now - last);
        }
        last = now;
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("[DONE]"), "stream cut short: {seen:?}");
    StreamTimes {
        first: first.unwrap_or_default(),
        max_gap,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Established TCP connections to `port` (from `ss`), or None.
fn established_to(port: u16) -> Option<usize> {
    let out = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( dport = :{port} )"),
        ])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().count())
}

fn main() {
    let bin = std::env::args()
        .nth(1)
        .expect("usage: h2_sse_streams SCOPEGATE_BIN [STREAMS] [EVENTS] [INTERVAL_MS]");
    let streams = arg(2, 100) as usize;
    let events = arg(3, 10);
    let interval = Duration::from_millis(arg(4, 50));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (up, up_connections) = rt.block_on(start_upstream(events, interval));

    let dir = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(dir.path().join("server.pem"), cert.cert.pem()).expect("write");
    std::fs::write(
        dir.path().join("server-key.pem"),
        cert.signing_key.serialize_pem(),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("keys.yaml"),
        format!(
            "organisations:\n  - id: org_bench\n    workspaces:\n      - id: ws_bench\nkeys:\n  - id: key_bench\n    type: workspace-service\n    workspace_id: ws_bench\n    sha256: \"{}\"\n    scopes: [\"completions.write\"]\n",
            scopegate::identity::keys::digest_hex(KEY.as_bytes())
        ),
    )
    .expect("write");
    let (tls_port, plain_port, metrics_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("scopegate.yaml"),
        format!(
            "listen:\n  - \"127.0.0.1:{plain_port}\"\n  - address: \"127.0.0.1:{tls_port}\"\n    tls: {{ cert_file: server.pem, key_file: server-key.pem }}\nmetrics_listen: \"127.0.0.1:{metrics_port}\"\nthreads: 1\nkeys_file: keys.yaml\nlog_format: json\nupstreams:\n  completions: {{ url: \"http://{up}\" }}\n  admin: {{ url: \"http://{up}\" }}\n"
        ),
    )
    .expect("write");
    let mut child = Command::new(&bin)
        .args(["serve", "--config"])
        .arg(dir.path().join("scopegate.yaml"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn scopegate");
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics_port));
    let start = Instant::now();
    while !ready(metrics) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "scopegate not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    println!(
        "| protocol | streams | client TCP connections | first event p50 ms | p99 ms | min ms | max ms | largest gap between events ms (interval {} ms) | all done ms |",
        interval.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, port, h2) in [
        ("HTTP/2 over TLS, one connection", tls_port, true),
        (
            "HTTP/1.1 plain, one connection per stream",
            plain_port,
            false,
        ),
    ] {
        let root = reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root");
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
            .pool_max_idle_per_host(streams);
        b = if h2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        let client = b.build().expect("client");
        let scheme = if h2 { "https" } else { "http" };
        let url = format!("{scheme}://localhost:{port}/v1/chat/completions");
        let (times, conns, all) = rt.block_on(async {
            // One request first, so the HTTP/2 connection exists before the
            // burst (the burst must not race to open several).
            if h2 {
                one_stream(client.clone(), url.clone()).await;
            }
            let all_start = Instant::now();
            let tasks: Vec<_> = (0..streams)
                .map(|_| tokio::spawn(one_stream(client.clone(), url.clone())))
                .collect();
            // Count while the streams are open.
            tokio::time::sleep(interval * (events as u32) / 2).await;
            let conns = established_to(port);
            let mut times = Vec::new();
            for t in tasks {
                times.push(t.await.expect("stream task"));
            }
            (times, conns, all_start.elapsed())
        });
        let mut firsts: Vec<Duration> = times.iter().map(|t| t.first).collect();
        firsts.sort();
        let max_gap = times.iter().map(|t| t.max_gap).max().unwrap_or_default();
        println!(
            "| {name} | {streams} | {} | {} | {} | {} | {} | {} | {} |",
            conns.map_or("?".to_string(), |c| c.to_string()),
            ms(percentile(&firsts, 0.5)),
            ms(percentile(&firsts, 0.99)),
            ms(firsts[0]),
            ms(firsts[firsts.len() - 1]),
            ms(max_gap),
            ms(all),
        );
    }
    println!(
        "\nupstream TCP connections opened by scopegate: {}",
        up_connections.load(Ordering::Relaxed)
    );
    let _ = child.kill();
    let _ = child.wait();
}
