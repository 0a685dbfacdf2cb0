//! `scopegate demo`: the example config, built-in demo upstreams on
//! localhost, and ready-to-paste curl commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::ServiceWithDependents;

use crate::identity::keys::KeyStore;

mod tokens;
pub mod upstreams;

const EXAMPLE_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/config/scopegate.yaml"
));
const EXAMPLE_KEYS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys.yaml"));

/// Demo secrets documented in `config/keys.yaml` (demo only).
const ADMIN: &str = "sgk-demo-admin";
const BOT: &str = "sgk-demo-research-bot";
const BUDGET: &str = "sgk-demo-budget";
const MINI: &str = "sgk-demo-mini";
const ALICE: &str = "sgk-demo-alice";

/// The demo's run: its own folder in the temporary directory, holding the
/// config it runs with and its state file, so that each run counts usage
/// afresh and `scopegate usage --config` can read what it counted.
struct DemoFiles {
    /// The config the demo runs with.
    config: PathBuf,
}

/// Writes the demo's config into a temporary folder: the shipped example
/// (or, from another directory, the copy built into the binary) with
/// `keys_file` pointing at the example keys file — edits to
/// `config/keys.yaml` still reload live — and `state` at a fresh SQLite
/// file beside it.
fn demo_files() -> std::io::Result<DemoFiles> {
    let dir = std::env::temp_dir().join(format!("scopegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let shipped = Path::new("config/scopegate.yaml");
    let (text, keys) = if shipped.is_file() && Path::new("config/keys.yaml").is_file() {
        (
            std::fs::read_to_string(shipped)?,
            std::fs::canonicalize("config/keys.yaml")?,
        )
    } else {
        std::fs::write(dir.join("keys.yaml"), EXAMPLE_KEYS)?;
        (EXAMPLE_CONFIG.to_string(), dir.join("keys.yaml"))
    };
    let quoted = |p: &Path| serde_json::to_string(&p.display().to_string()).unwrap_or_default();
    let state = dir.join("state.db");
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if line.starts_with("keys_file:") {
            out.push_str(&format!("keys_file: {}", quoted(&keys)));
        } else if line.starts_with("state:") {
            out.push_str(&format!(
                "state: {{ backend: local, path: {} }}",
                quoted(&state)
            ));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let config = dir.join("scopegate.yaml");
    std::fs::write(&config, out)?;
    Ok(DemoFiles { config })
}

fn upstream_addr(url: &str) -> Option<std::net::SocketAddr> {
    url.strip_prefix("http://")?
        .trim_end_matches('/')
        .parse()
        .ok()
}

/// Runs the demo until interrupted.
pub fn run() -> ExitCode {
    let files = match demo_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scopegate demo: cannot prepare the example config: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut config, table, _) = match crate::cli::load_all(&files.config) {
        Ok(x) => x,
        Err(problems) => {
            for p in problems {
                eprintln!("{p}");
            }
            return ExitCode::FAILURE;
        }
    };
    // Each demo run counts usage afresh (its state file is its own), so
    // the budget walkthrough shows its 412 after the same number of calls
    // every time.
    let (Some(completions), Some(admin)) = (
        upstream_addr(&config.upstreams.completions.url),
        upstream_addr(&config.upstreams.admin.url),
    ) else {
        eprintln!("scopegate demo: the example upstreams must be http://IP:PORT");
        return ExitCode::FAILURE;
    };
    let (c_listener, a_listener) = match (
        std::net::TcpListener::bind(completions),
        std::net::TcpListener::bind(admin),
    ) {
        (Ok(c), Ok(a)) => (c, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "scopegate demo: cannot bind the demo upstreams ({completions}, {admin}): {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    // The identity-token step: a provider of the demo's own, and the
    // example organisation accepting its tokens (in a copy of the keys file).
    let (idp, snap) = match identity_step(&mut config, &table) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("scopegate demo: identity tokens: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = config
        .listen
        .first()
        .map(|l| l.address.clone())
        .unwrap_or_default();
    print_walkthrough(
        &listen,
        config.metrics_listen.as_deref(),
        &files.config,
        &config.keys_file,
    );
    // A small max_tokens keeps the reservation within a subject's budget.
    idp.print_step(
        &format!("http://{listen}"),
        r#"{"model":"gpt-4o-mini","max_tokens":10,"messages":[{"role":"user","content":"Hello"}]}"#,
    );
    crate::gateway::server::init_logging(config.log_format);
    // The demo upstreams run as a background service of the server.
    let upstreams = background_service(
        "demo upstreams",
        DemoUpstreams(Mutex::new(Some((c_listener, a_listener)))),
    );
    let idp = background_service("demo identity provider", tokens::DemoIdpService(idp));
    let extra: Vec<Box<dyn ServiceWithDependents>> = vec![Box::new(upstreams), Box::new(idp)];
    match crate::gateway::server::serve_with(config, table, KeyStore::new(snap), extra) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scopegate demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the demo identity provider and points the config at a copy of
/// the keys file whose `org_acme` accepts its tokens; returns the provider
/// and the keys loaded from that copy.
fn identity_step(
    config: &mut crate::config::Config,
    table: &crate::decision::routes::RouteTable,
) -> Result<
    (
        std::sync::Arc<tokens::DemoIdp>,
        crate::identity::keys::Snapshot,
    ),
    String,
> {
    let idp = tokens::DemoIdp::start()?;
    let keys_file = idp.keys_file_with_tokens(&config.keys_file)?;
    let snap = crate::ops::reload::load_keys(&keys_file, table).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        lines.join("\n")
    })?;
    config.keys_file = keys_file;
    Ok((std::sync::Arc::new(idp), snap))
}

fn print_walkthrough(listen: &str, metrics: Option<&str>, config: &Path, keys: &Path) {
    let base = format!("http://{listen}");
    // `max_tokens` keeps each call's reservation small: without it a call
    // reserves `default_output_reservation` (4096) tokens, more than the
    // budget key's whole budget.
    let chat =
        r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"user","content":"Hello"}]}"#;
    let cached = r#"{"model":"gpt-4o-mini","max_tokens":20,"messages":[{"role":"system","content":"You are the research team's assistant. Answer briefly, cite the team wiki, and never guess a figure you cannot source."},{"role":"user","content":"Hello"}]}"#;
    let ws = "-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='";
    let stream =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello"}]}"#;
    println!(
        "scopegate demo: proxy on {base}, demo upstreams on localhost (keys: {}, a copy of \
         config/keys.yaml whose org_acme accepts the demo's identity tokens; edit it to see a \
         live reload)",
        keys.display()
    );
    println!();
    println!("# 1. Allowed: a workspace key calls chat completions (200)");
    println!("curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {BOT}' -H 'Content-Type: application/json' -d '{chat}'");
    println!();
    println!("# 2. Allowed, streamed: server-sent events arrive as they are produced");
    println!("curl -sN {base}/v1/chat/completions -H 'x-portkey-api-key: {BOT}' -H 'Content-Type: application/json' -d '{stream}'");
    println!();
    println!("# 3. Refused: an admin key on a completion route (403 admin_key_not_allowed)");
    println!("curl -s {base}/v1/chat/completions -H 'x-portkey-api-key: {ADMIN}' -H 'Content-Type: application/json' -d '{chat}'");
    println!();
    println!("# 4. Refused: a workspace key naming another workspace (403 workspace_mismatch)");
    println!("curl -s '{base}/v1/configs?workspace_id=ws_prod' -H 'x-portkey-api-key: {BOT}'");
    println!();
    println!("# 5. Allowed: the admin key lists workspaces on the control plane");
    println!("curl -s {base}/v1/admin/workspaces -H 'x-portkey-api-key: {ADMIN}'");
    println!();
    println!("# 6. Anthropic- and Azure-style clients: the key in x-api-key or api-key (200)");
    println!("curl -s {base}/v1/chat/completions -H 'x-api-key: {BOT}' -H 'Content-Type: application/json' -d '{chat}'");
    println!("curl -s {base}/v1/chat/completions -H 'api-key: {BOT}' -H 'Content-Type: application/json' -d '{chat}'");
    println!();
    println!("# 7. A small token budget: 100 tokens a month, ~24 used and ~41 reserved a call: 200, 200, 200, then 412 budget_exhausted");
    println!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' {base}/v1/chat/completions -H 'x-portkey-api-key: {BUDGET}' -H 'Content-Type: application/json' -d '{chat}'; done");
    println!(
        "#    What the key has left, without spending a request: its own view (never forwarded)"
    );
    println!("curl -s {base}/v1/scopegate/key -H 'x-portkey-api-key: {BUDGET}'");
    println!();
    println!("# 8. A key restricted to gpt-4o-mini asks for gpt-4o (403 model_not_allowed), in the body or ?model=");
    println!("curl -s {base}/v1/chat/completions -H 'x-portkey-api-key: {MINI}' -H 'Content-Type: application/json' -d '{{\"model\":\"gpt-4o\",\"messages\":[]}}'");
    println!("curl -s '{base}/v1/chat/completions?model=gpt-4o' -H 'x-portkey-api-key: {MINI}' -H 'Content-Type: application/json' -d '{chat}'");
    println!();
    println!("# 9. WebSocket on the opted-in route /v1/realtime: 101, then the mock's first frame (tunnelled bytes are not inspected; curl stops after 2 s)");
    println!("curl -si -N --max-time 2 {base}/v1/realtime -H 'Authorization: Bearer {ALICE}' {ws}");
    println!("#    A key whose limits count tokens gets no tunnel (400 upgrade_not_allowed)");
    println!(
        "curl -si -N --max-time 2 {base}/v1/realtime -H 'Authorization: Bearer {BUDGET}' {ws}"
    );
    println!();
    println!("# 10. Cached input priced apart: the mock reports the system prompt as read from its prompt cache;");
    println!("#     gpt-4o-mini's cached tokens cost half (config/keys.yaml `cached_input`) of the research workspace's cost budget");
    println!("curl -s {base}/v1/chat/completions -H 'x-portkey-api-key: {BOT}' -H 'Content-Type: application/json' -d '{cached}'");
    println!("#     A cost budget refuses models without a price (403 model_not_priced)");
    println!("curl -s {base}/v1/chat/completions -H 'x-portkey-api-key: {BOT}' -H 'Content-Type: application/json' -d '{{\"model\":\"o3-pro\",\"max_tokens\":20,\"messages\":[]}}'");
    println!();
    println!("# 11. Usage as stored (this demo's own state file; used, cached and written tokens, cost):");
    println!("scopegate usage --config '{}'", config.display());
    if let Some(m) = metrics {
        println!();
        println!("# Metrics (tokens, cost, budgets): curl -s http://{m}/metrics | grep scopegate_");
    }
    println!();
}

/// The two demo upstreams (completions mock, admin echo) on their bound
/// listeners.
struct DemoUpstreams(Mutex<Option<(std::net::TcpListener, std::net::TcpListener)>>);

#[async_trait]
impl BackgroundService for DemoUpstreams {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some((c_listener, a_listener)) = self.0.lock().take() else {
            return;
        };
        let _ = c_listener.set_nonblocking(true);
        let _ = a_listener.set_nonblocking(true);
        let (Ok(c), Ok(a)) = (
            tokio::net::TcpListener::from_std(c_listener),
            tokio::net::TcpListener::from_std(a_listener),
        ) else {
            return;
        };
        let _ = tokio::join!(
            upstreams::serve_completions_mock(c),
            upstreams::serve_admin_echo(a)
        );
    }
}
