//! TEMPORARY STUB of the server config (replaced by the keys/config helper).
use crate::diag::Diagnostic;
use crate::routes::RouteSpec;
use std::path::{Path, PathBuf};

/// Log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Pretty.
    Pretty,
    /// Json.
    Json,
}

/// Config.
#[derive(Clone, Debug)]
pub struct Config {
    /// x
    pub path: PathBuf,
    /// x
    pub listen: Vec<String>,
    /// x
    pub metrics_listen: Option<String>,
    /// x
    pub threads: Option<usize>,
    /// x
    pub keys_file: PathBuf,
    /// x
    pub reload_poll_interval_ms: u64,
    /// x
    pub max_inspect_body_bytes: usize,
    /// x
    pub log_format: LogFormat,
    /// x
    pub shutdown_grace_period_seconds: u64,
    /// x
    pub upstreams: Upstreams,
    /// x
    pub routes: Vec<RouteSpec>,
    /// x
    pub builtin_routes: bool,
}
/// x
#[derive(Clone, Debug)]
pub struct Upstreams {
    /// x
    pub completions: UpstreamConfig,
    /// x
    pub admin: UpstreamConfig,
}
/// x
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// x
    pub url: String,
    /// x
    pub tls: bool,
    /// x
    pub host: String,
    /// x
    pub port: u16,
    /// x
    pub authority: String,
    /// x
    pub connect_timeout_ms: u64,
    /// x
    pub read_timeout_ms: u64,
    /// x
    pub set_headers: Vec<(String, String)>,
    /// x
    pub ca_file: Option<PathBuf>,
    /// x
    pub sni: String,
}

#[derive(serde::Deserialize)]
struct RawUp {
    url: String,
    #[serde(default)]
    set_headers: std::collections::BTreeMap<String, String>,
    connect_timeout_ms: Option<u64>,
    read_timeout_ms: Option<u64>,
}
#[derive(serde::Deserialize)]
struct RawUps {
    completions: RawUp,
    admin: RawUp,
}
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}
#[derive(serde::Deserialize)]
struct Raw {
    listen: OneOrMany,
    metrics_listen: Option<String>,
    threads: Option<usize>,
    keys_file: String,
    reload_poll_interval_ms: Option<u64>,
    max_inspect_body_bytes: Option<usize>,
    log_format: Option<String>,
    shutdown_grace_period_seconds: Option<u64>,
    upstreams: RawUps,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    builtin_routes: Option<bool>,
}

fn up(r: RawUp) -> UpstreamConfig {
    let tls = r.url.starts_with("https://");
    let rest = r
        .url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(80)),
        None => (rest.to_string(), if tls { 443 } else { 80 }),
    };
    let set_headers = r
        .set_headers
        .into_iter()
        .map(|(k, v)| {
            let mut out = v.clone();
            while let Some(s) = out.find("${") {
                let e = out[s..].find('}').map(|e| e + s).unwrap_or(out.len() - 1);
                let var = &out[s + 2..e];
                let val = std::env::var(var).unwrap_or_default();
                out = format!("{}{}{}", &out[..s], val, &out[e + 1..]);
            }
            (k.to_lowercase(), out)
        })
        .collect();
    UpstreamConfig {
        url: r.url.clone(),
        tls,
        authority: rest.to_string(),
        sni: host.clone(),
        host,
        port,
        connect_timeout_ms: r.connect_timeout_ms.unwrap_or(2000),
        read_timeout_ms: r.read_timeout_ms.unwrap_or(600000),
        set_headers,
        ca_file: None,
    }
}

/// Stub loader.
pub fn load_config(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![Diagnostic::file(path, e.to_string())])?;
    let raw: Raw =
        serde_yaml::from_str(&text).map_err(|e| vec![Diagnostic::file(path, e.to_string())])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(Config {
        path: path.to_path_buf(),
        listen: match raw.listen {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        },
        metrics_listen: raw.metrics_listen,
        threads: raw.threads,
        keys_file: dir.join(raw.keys_file),
        reload_poll_interval_ms: raw.reload_poll_interval_ms.unwrap_or(1000),
        max_inspect_body_bytes: raw.max_inspect_body_bytes.unwrap_or(65536),
        log_format: if raw.log_format.as_deref() == Some("json") {
            LogFormat::Json
        } else {
            LogFormat::Pretty
        },
        shutdown_grace_period_seconds: raw.shutdown_grace_period_seconds.unwrap_or(30),
        upstreams: Upstreams {
            completions: up(raw.upstreams.completions),
            admin: up(raw.upstreams.admin),
        },
        routes: raw.routes,
        builtin_routes: raw.builtin_routes.unwrap_or(true),
    })
}

/// Default path.
pub fn default_config_path() -> PathBuf {
    std::env::var_os("SCOPEGATE_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("config/scopegate.yaml"))
}
