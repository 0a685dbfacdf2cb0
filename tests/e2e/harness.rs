//! Runs the real `scopegate` binary against recording upstreams.
//!
//! [`Proxy`] writes a config and a keys file into a temp dir, spawns
//! `scopegate serve`, captures its stdout and stderr, and waits until
//! `/readyz` answers 200 and the proxy port accepts connections. It kills the
//! process on Drop and prints the captured logs when the test failed.
//!
//! Ports: a free port is found by binding `127.0.0.1:0` and closing it again,
//! then handed to the proxy. Another process may grab it in between; when the
//! proxy exits early saying the address is in use, the start is retried once
//! with fresh ports.
//!
//! [`RedisServer`] runs a `redis-server` of the test's own (for the reference on limits shared by replicas),
//! which a test can kill, freeze and restart on the same port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::certs::Ca;
use super::client::{raw_request, Proto, Req, Response, TlsTarget};
use super::fixtures;
use super::upstream::Upstream;

/// How often readiness and exit are polled.
const POLL: Duration = Duration::from_millis(20);
/// Upper bound for a proxy to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub fn scopegate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_scopegate")
}

/// Two free TCP ports on 127.0.0.1 (see the module docs for the race),
/// never the same one: both are held while the second is picked (two probes
/// made one after the other can return one port twice).
pub fn free_port_pair() -> (u16, u16) {
    let [a, b] = free_ports();
    (a, b)
}

/// `N` distinct free TCP ports on 127.0.0.1 (all held while picked).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port probe"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

/// The completions and admin upstreams of one proxy.
pub struct Upstreams {
    pub completions: Upstream,
    pub admin: Upstream,
}

impl Upstreams {
    pub fn start() -> Upstreams {
        Upstreams {
            completions: Upstream::start(),
            admin: Upstream::start(),
        }
    }

    /// Asserts that neither upstream received any request.
    #[track_caller]
    pub fn assert_untouched(&self) {
        assert_eq!(
            (self.completions.count(), self.admin.count()),
            (0, 0),
            "a denied request reached an upstream: completions {:#?}, admin {:#?}",
            self.completions.requests(),
            self.admin.requests()
        );
    }
}

/// What to write into the proxy's config and keys file.
#[derive(Clone)]
pub struct ProxyBuilder {
    completions_url: String,
    admin_url: String,
    completions_yaml: String,
    admin_yaml: String,
    config_yaml: String,
    listen_yaml: String,
    keys_yaml: String,
    env: Vec<(String, String)>,
    grace_seconds: u64,
    metrics: bool,
    readyz_only: bool,
    https: bool,
}

impl ProxyBuilder {
    /// A config pointing at the given upstream URLs, with the shared keys.
    pub fn new(completions_url: &str, admin_url: &str) -> ProxyBuilder {
        ProxyBuilder {
            completions_url: completions_url.to_string(),
            admin_url: admin_url.to_string(),
            completions_yaml: String::new(),
            admin_yaml: String::new(),
            config_yaml: String::new(),
            listen_yaml: String::new(),
            keys_yaml: fixtures::keys_yaml(),
            env: Vec::new(),
            grace_seconds: 5,
            metrics: true,
            readyz_only: false,
            https: false,
        }
    }

    /// Adds an HTTPS listener (TLS 1.2/1.3, ALPN `h2` and `http/1.1`) beside
    /// the plain one, with a certificate for `localhost` signed by a test CA
    /// of its own: requests sent [`Req::over`] [`Proto::H2`] go there. The
    /// protocol column of the e2e tables.
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Replaces the keys file.
    pub fn keys(mut self, yaml: &str) -> Self {
        self.keys_yaml = yaml.to_string();
        self
    }

    /// Extra top-level config lines (e.g. `max_inspect_body_bytes: 1024`).
    pub fn config(mut self, yaml: &str) -> Self {
        self.config_yaml.push_str(yaml);
        self.config_yaml.push('\n');
        self
    }

    /// Writes the proxy's listener as a mapping with these extra lines
    /// beside its `address` (e.g. `tls: {...}`, `http2: false`).
    pub fn listen_entry(mut self, yaml: &str) -> Self {
        self.listen_yaml.push_str(yaml);
        self.listen_yaml.push('\n');
        self
    }

    pub fn completions_url(mut self, url: &str) -> Self {
        self.completions_url = url.to_string();
        self
    }

    pub fn admin_url(mut self, url: &str) -> Self {
        self.admin_url = url.to_string();
        self
    }

    /// Extra lines under `upstreams.completions` (e.g. `read_timeout_ms: 200`).
    pub fn completions_yaml(mut self, yaml: &str) -> Self {
        self.completions_yaml.push_str(yaml);
        self.completions_yaml.push('\n');
        self
    }

    /// Extra lines under `upstreams.admin`.
    pub fn admin_yaml(mut self, yaml: &str) -> Self {
        self.admin_yaml.push_str(yaml);
        self.admin_yaml.push('\n');
        self
    }

    /// An environment variable for the proxy process.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn grace_seconds(mut self, seconds: u64) -> Self {
        self.grace_seconds = seconds;
        self
    }

    /// No `metrics_listen`: readiness is then the proxy port accepting.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Treat the proxy as started as soon as `/readyz` says 200, without
    /// also waiting for the proxy port (to test what readiness promises).
    pub fn ready_on_readyz_alone(mut self) -> Self {
        self.readyz_only = true;
        self
    }

    /// The config file text for these ports.
    pub fn config_text(&self, port: u16, metrics_port: u16) -> String {
        self.config_text_with(port, metrics_port, None)
    }

    /// The config file text, with an HTTPS listener on `tls.0` serving the
    /// certificate and key files `tls.1`, `tls.2` when given.
    fn config_text_with(
        &self,
        port: u16,
        metrics_port: u16,
        tls: Option<(u16, &Path, &Path)>,
    ) -> String {
        let mut out = if self.listen_yaml.is_empty() {
            format!("listen:\n  - \"127.0.0.1:{port}\"\n")
        } else {
            format!(
                "listen:\n  - address: \"127.0.0.1:{port}\"\n{}",
                indent(&self.listen_yaml, 4)
            )
        };
        if let Some((tls_port, cert, key)) = tls {
            out.push_str(&format!(
                "  - address: \"127.0.0.1:{tls_port}\"\n    tls:\n      cert_file: \"{}\"\n      \
                 key_file: \"{}\"\n",
                cert.display(),
                key.display()
            ));
        }
        if self.metrics {
            out.push_str(&format!("metrics_listen: \"127.0.0.1:{metrics_port}\"\n"));
        }
        out.push_str(&format!(
            "threads: 1\n\
             keys_file: keys.yaml\n\
             log_format: json\n\
             shutdown_grace_period_seconds: {grace}\n\
             upstreams:\n  \
             completions:\n    \
             url: \"{completions}\"\n{completions_extra}  \
             admin:\n    \
             url: \"{admin}\"\n{admin_extra}{extra}",
            grace = self.grace_seconds,
            completions = self.completions_url,
            completions_extra = indent(&self.completions_yaml, 4),
            admin = self.admin_url,
            admin_extra = indent(&self.admin_yaml, 4),
            extra = self.config_yaml,
        ));
        out
    }

    /// Writes `scopegate.yaml` and `keys.yaml` into `dir`; returns the
    /// config path.
    pub fn write_files(&self, dir: &Path, (port, metrics_port): (u16, u16)) -> PathBuf {
        let config = dir.join("scopegate.yaml");
        std::fs::write(&config, self.config_text(port, metrics_port)).unwrap();
        std::fs::write(dir.join("keys.yaml"), &self.keys_yaml).unwrap();
        config
    }

    /// Spawns the proxy and waits until it is ready.
    pub fn start(self) -> Proxy {
        match self.try_start() {
            Ok(proxy) => proxy,
            Err(failed) if failed.logs.to_ascii_lowercase().contains("in use") => {
                // Someone took a port between our probe and the proxy's bind.
                self.try_start()
                    .unwrap_or_else(|failed| panic!("proxy did not start twice:\n{failed}"))
            }
            Err(failed) => panic!("proxy did not start:\n{failed}"),
        }
    }

    fn try_start(&self) -> Result<Proxy, StartFailure> {
        let dir = tempfile::tempdir().expect("tempdir");
        let [port, metrics_port, tls_port] = free_ports();
        let tls = self.https.then(|| {
            let ca = Ca::new("harness CA");
            let pair = ca.server("scopegate", 30);
            let cert = dir.path().join("tls-cert.pem");
            let key = dir.path().join("tls-key.pem");
            std::fs::write(&cert, &pair.cert).expect("write cert");
            std::fs::write(&key, &pair.key).expect("write key");
            (ca, cert, key)
        });
        let text = self.config_text_with(
            port,
            metrics_port,
            tls.as_ref()
                .map(|(_, cert, key)| (tls_port, cert.as_path(), key.as_path())),
        );
        let config = dir.path().join("scopegate.yaml");
        std::fs::write(&config, &text).unwrap();
        std::fs::write(dir.path().join("keys.yaml"), &self.keys_yaml).unwrap();
        let mut command = Command::new(scopegate_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut proxy = Proxy::spawn(command, dir);
        proxy.addr = SocketAddr::from(([127, 0, 0, 1], port));
        proxy.tls = tls.map(|(ca, _, _)| TlsTarget {
            addr: SocketAddr::from(([127, 0, 0, 1], tls_port)),
            ca_pem: Arc::from(ca.pem()),
        });
        proxy.metrics_addr = self
            .metrics
            .then(|| SocketAddr::from(([127, 0, 0, 1], metrics_port)));
        match proxy.wait_ready(self.readyz_only) {
            Ok(()) => Ok(proxy),
            Err(reason) => {
                let _ = proxy.child.kill();
                let _ = proxy.child.wait();
                proxy.join_log_readers();
                let logs = proxy.logs();
                // Disarm Drop's log dump: the caller reports (or retries).
                proxy.quiet = true;
                Err(StartFailure {
                    reason,
                    config: text,
                    logs,
                })
            }
        }
    }
}

struct StartFailure {
    reason: String,
    config: String,
    logs: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- config ---\n{}\n--- output ---\n{}",
            self.reason, self.config, self.logs
        )
    }
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{l}\n"))
        .collect()
}

/// Captured stdout and stderr of a child, interleaved in arrival order.
type LogBuffer = Arc<Mutex<Vec<u8>>>;

fn capture(mut pipe: impl Read + Send + 'static, into: LogBuffer) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

/// A running `scopegate serve`.
pub struct Proxy {
    child: Child,
    addr: SocketAddr,
    /// The HTTPS listener of a [`ProxyBuilder::https`] proxy.
    tls: Option<TlsTarget>,
    metrics_addr: Option<SocketAddr>,
    logs: LogBuffer,
    readers: Vec<JoinHandle<()>>,
    quiet: bool,
    dir: TempDir,
}

impl Proxy {
    /// Starts a proxy in front of `up` with the shared keys file.
    pub fn start(up: &Upstreams) -> Proxy {
        Proxy::builder(up).start()
    }

    /// A builder pointing at `up`, to add config before starting.
    pub fn builder(up: &Upstreams) -> ProxyBuilder {
        ProxyBuilder::new(&up.completions.url(), &up.admin.url())
    }

    fn spawn(mut command: Command, dir: TempDir) -> Proxy {
        let mut child = command.spawn().expect("spawn scopegate");
        let logs = LogBuffer::default();
        let readers = vec![
            capture(child.stdout.take().unwrap(), logs.clone()),
            capture(child.stderr.take().unwrap(), logs.clone()),
        ];
        Proxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            metrics_addr: None,
            logs,
            readers,
            quiet: false,
            dir,
        }
    }

    fn wait_ready(&mut self, readyz_only: bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("scopegate exited before ready: {status}"));
            }
            let listening =
                || accepts(self.addr) && self.tls.as_ref().is_none_or(|t| accepts(t.addr));
            let ready = match self.metrics_addr {
                Some(metrics) => {
                    probe_status(metrics, "/readyz") == Some(200) && (readyz_only || listening())
                }
                None => listening(),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("scopegate not ready after {READY_TIMEOUT:?}"));
            }
            thread::sleep(POLL);
        }
    }

    /// The keys file the proxy reads (to rewrite it in reload tests).
    pub fn keys_path(&self) -> PathBuf {
        self.dir.path().join("keys.yaml")
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A full URL, for reporting or URL-based clients.
    #[allow(dead_code)]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("metrics are disabled")
    }

    #[allow(dead_code)]
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr())
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.logs.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits for the process to exit; panics (with the logs) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.join_log_readers();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "scopegate still running {timeout:?} after it was asked to exit"
            );
            thread::sleep(POLL);
        }
    }

    fn join_log_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// A request to the plain listener; [`Req::over`] [`Proto::H2`] sends it
    /// to the HTTPS one instead.
    pub fn request(&self, method: &str, target: &str) -> Req {
        Req::new(self.addr, method, target).with_tls(self.tls.clone())
    }

    /// The HTTPS listener of a [`ProxyBuilder::https`] proxy.
    #[allow(dead_code)]
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls.as_ref().expect("not an https() proxy").addr
    }

    pub fn get(&self, target: &str) -> Req {
        self.request("GET", target)
    }

    pub fn post(&self, target: &str) -> Req {
        self.request("POST", target)
    }

    /// `POST /v1/chat/completions` with [`fixtures::CHAT`] and the secret in
    /// `x-portkey-api-key`.
    pub fn chat(&self, secret: &str) -> Response {
        self.chat_over(Proto::H1, secret)
    }

    /// [`Proxy::chat`] over `proto`.
    pub fn chat_over(&self, proto: Proto, secret: &str) -> Response {
        self.post("/v1/chat/completions")
            .key(secret)
            .json(fixtures::CHAT)
            .over(proto)
            .send()
    }

    pub fn put(&self, target: &str) -> Req {
        self.request("PUT", target)
    }

    pub fn delete(&self, target: &str) -> Req {
        self.request("DELETE", target)
    }

    /// Writes exactly `bytes` on a new connection; reads one response.
    pub fn raw(&self, bytes: &[u8]) -> Response {
        raw_request(self.addr, bytes)
    }

    /// `GET path` on the metrics listener.
    pub fn metrics_get(&self, path: &str) -> Response {
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.metrics_addr()
        );
        raw_request(self.metrics_addr(), request.as_bytes())
    }
}

impl Proxy {
    /// The sum of every sample of metric `name` whose labels include all of
    /// `labels` (0 when there is none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_get("/metrics").text();
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                let series = line.rsplit_once(' ').map_or("", |(series, _)| series);
                let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
                metric == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() && !self.quiet {
            self.join_log_readers();
            eprintln!(
                "----- scopegate output (pid {}) -----\n{}\n----- end of scopegate output -----",
                self.child.id(),
                self.logs()
            );
        }
    }
}

/// Polls `condition` every 20 ms until it holds; false after `timeout`.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// True when a TCP connection to `addr` succeeds.
pub fn accepts(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The status of `GET path`, or None on any network error.
fn probe_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Whether `id` is a request id the proxy may keep: 1–128 of `[A-Za-z0-9._-]`.
pub fn is_valid_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// OpenAI's error `type` for a status (the reference on the responses the proxy writes).
fn openai_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        400 | 404 | 405 | 408 | 413 | 415 => "invalid_request_error",
        412 => "insufficient_quota",
        429 => "rate_limit_error",
        502..=504 => "api_error",
        other => panic!("no OpenAI error type for status {other}"),
    }
}

/// Portkey's `errorCode` for a status (the reference on the responses the proxy writes).
fn portkey_error_code(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 413 | 415 => "AB01",
        401 => "AB05",
        403 => "AB03",
        404 => "AB08",
        429 => "AB06",
        502..=504 => "AB04",
        other => panic!("no Portkey errorCode for status {other}"),
    }
}

/// Checks what every error the proxy writes carries: the status, a JSON
/// content type and a valid `x-request-id`.
#[track_caller]
fn expect_error_envelope(resp: &Response, status: u16) -> Value {
    assert_eq!(
        resp.status,
        status,
        "unexpected status; headers {:?}, body {}",
        resp.headers,
        resp.text()
    );
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "error content-type is {content_type:?}"
    );
    assert!(
        is_valid_request_id(resp.request_id()),
        "x-request-id {:?} is not valid",
        resp.request_id()
    );
    resp.json()
}

/// Asserts an OpenAI-shaped error `{"error":{"message","type","code"}}`;
/// returns the message.
#[track_caller]
pub fn expect_openai_error(resp: &Response, status: u16, code: &str) -> String {
    let body = expect_error_envelope(resp, status);
    let error = &body["error"];
    assert!(error.is_object(), "not OpenAI shape: {body}");
    assert_eq!(error["code"], code, "code in {body}");
    assert_eq!(error["type"], openai_type(status), "type in {body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "empty message in {body}");
    message.to_string()
}

/// Asserts a Portkey-shaped error
/// `{"success":false,"data":{"message","errorCode","code"}}`; returns the
/// message.
#[track_caller]
pub fn expect_portkey_error(resp: &Response, status: u16, code: &str) -> String {
    let body = expect_error_envelope(resp, status);
    assert_eq!(body["success"], false, "not Portkey shape: {body}");
    let data = &body["data"];
    assert!(data.is_object(), "not Portkey shape: {body}");
    assert_eq!(data["code"], code, "code in {body}");
    assert_eq!(
        data["errorCode"],
        portkey_error_code(status),
        "errorCode in {body}"
    );
    let message = data["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "empty message in {body}");
    message.to_string()
}

/// Asserts a 200 that came from an upstream's default reply.
#[track_caller]
pub fn expect_forwarded(resp: &Response) {
    assert_eq!(
        resp.status,
        200,
        "expected the upstream's 200; headers {:?}, body {}",
        resp.headers,
        resp.text()
    );
    assert_eq!(resp.body, br#"{"ok":true}"#, "body is not the upstream's");
}

/// What a finished one-shot `scopegate` command printed; Debug shows all of
/// it, so an assertion message carrying it explains a failure.
pub struct CommandRun {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for CommandRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n$ {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `scopegate args…` in `dir` with an empty stdin and without
/// `SCOPEGATE_CONFIG`; kills it after 20 s (and then fails).
pub fn run_scopegate(dir: &Path, args: &[&str]) -> CommandRun {
    let mut child = Command::new(scopegate_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("SCOPEGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn scopegate");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let mut status = None;
    let exited = poll_until(Duration::from_secs(20), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        status = Some(child.wait().unwrap());
    }
    let run = CommandRun {
        command: format!("scopegate {}", args.join(" ")),
        status: status.unwrap(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(exited, "scopegate did not exit within 20 s: {run:?}");
    run
}

/// Debian's `redis-server`, which `.ci/run` installs.
const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A `redis-server` of the test's own: a temp dir, a free port on
/// 127.0.0.1, no persistence. Killed on Drop (after a SIGCONT, in case the
/// test stopped it).
pub struct RedisServer {
    child: Child,
    /// False once killed (and reaped): no signal may go to its old pid.
    running: bool,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers PING; `None` (with a printed
    /// message, so the test passes as skipped) when `redis-server` is not
    /// installed — except under CI (`CI` set), where `.ci/run` installs it
    /// and its absence fails the test.
    pub fn start() -> Option<RedisServer> {
        if !Path::new(REDIS_SERVER).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{REDIS_SERVER} is not installed, and CI must run the Redis tests"
            );
            eprintln!("{REDIS_SERVER} is not installed: test skipped");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind port probe")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Self::spawn(port, dir.path());
        let server = RedisServer {
            child,
            running: true,
            port,
            dir,
        };
        server.wait_ready();
        Some(server)
    }

    fn spawn(port: u16, dir: &Path) -> Child {
        Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    }

    #[track_caller]
    fn wait_ready(&self) {
        assert!(
            poll_until(Duration::from_secs(5), || self.ping()),
            "redis-server on port {} did not answer PING within 5 s",
            self.port
        );
    }

    /// True when the server answers PING within 200 ms.
    pub fn ping(&self) -> bool {
        self.command(&["PING"]).as_deref() == Some("+PONG\r\n")
    }

    /// Sends one command; returns the first reply read within 200 ms, raw
    /// (RESP), or None on any network error.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut buf = [0u8; 65536];
        let n = stream.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The `state:` config line pointing at this server.
    pub fn state_config(&self, on_error: &str, timeout_ms: u64) -> String {
        format!(
            "state: {{ backend: redis, redis: {{ url: \"{}\", timeout_ms: {timeout_ms}, \
             on_error: {on_error}, key_prefix: \"e2e:\" }} }}",
            self.url()
        )
    }

    fn signal(&self, signal: libc::c_int) {
        if !self.running {
            return;
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// SIGKILL, and waits until it is gone (connections are refused).
    pub fn kill(&mut self) {
        if self.running {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.running = false;
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`RedisServer::freeze`].
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills it (if running) and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.thaw();
        self.kill();
        self.child = Self::spawn(self.port, self.dir.path());
        self.running = true;
        self.wait_ready();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}
