//! The server config (the reference on the server config): read once at
//! start, validated whole, with positions. May import `decision` (routes),
//! `identity` and `diag`.
//!
//! This module owns the file's format and every check that needs only the
//! file itself: addresses, upstream URLs, headers added upstream (with
//! `${VAR}` expanded from the environment), limits, and the shape of extra
//! routes. It reports every problem at once, each as `FILE:LINE:COL:`.
//! Whether an extra route's scopes exist needs the keys file's
//! `custom_scopes`, so that check belongs to whoever has both
//! ([`Config::extra_route_scopes`] lists them).
//!
//! Parsing is two stages: serde reads raw settings (unknown fields are
//! errors, so a typo cannot pass silently), then validation turns them into
//! the [`Config`] the server uses, with defaults filled in and paths resolved.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::decision::routes::{RouteSpec, RouteTable};
use crate::diag::position::PositionIndex;
use crate::diag::read_text_file;
use crate::diag::Diagnostic;
use crate::identity::keys::build::is_scope_shaped;
use crate::identity::keys::load::document_error;

pub mod traces;

use traces::{TraceSettings, TracingConfig};

/// Largest config file read.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// Default `reload_poll_interval_ms`.
pub const DEFAULT_RELOAD_POLL_INTERVAL_MS: u64 = 1000;
/// Smallest `reload_poll_interval_ms`: polling faster only burns CPU.
pub const MIN_RELOAD_POLL_INTERVAL_MS: u64 = 50;
/// Default `max_inspect_body_bytes`.
pub const DEFAULT_MAX_INSPECT_BODY_BYTES: usize = 64 * 1024;
/// Largest `max_inspect_body_bytes`: inspected bodies are held in memory.
pub const MAX_INSPECT_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
/// Default `max_data_body_bytes` (the reference on which data-plane bodies are read).
pub const DEFAULT_MAX_DATA_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default `default_output_reservation` (the reference on usage counting).
pub const DEFAULT_OUTPUT_RESERVATION: u64 = 4096;
/// Largest `default_output_reservation`: more than any model generates for
/// one request.
pub const MAX_OUTPUT_RESERVATION: u64 = 100_000_000;
/// Default `shutdown_grace_period_seconds`.
pub const DEFAULT_SHUTDOWN_GRACE_PERIOD_SECONDS: u64 = 30;
/// Default upstream `connect_timeout_ms`.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 2000;
/// Default upstream `read_timeout_ms`: LLM streams are long.
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 600_000;
/// Default `header_read_timeout_ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Largest `header_read_timeout_ms`: pingora already ends a connection
/// whose single read waits 60 s (its keep-alive timeout).
pub const MAX_HEADER_READ_TIMEOUT_MS: u64 = 60_000;
/// Default `idle_timeout_ms`.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;
/// Largest `idle_timeout_ms` (an hour).
pub const MAX_IDLE_TIMEOUT_MS: u64 = 3_600_000;
/// Default `max_client_connections`.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 10_000;
/// Largest `max_client_connections`.
pub const MAX_CLIENT_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Where the config is read from when no `--config` is given:
/// `$SCOPEGATE_CONFIG` when set and non-empty, else `config/scopegate.yaml`.
pub fn default_config_path() -> PathBuf {
    match std::env::var_os("SCOPEGATE_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("config/scopegate.yaml"),
    }
}

/// The validated server config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Proxy listeners: plain HTTP/1.1 or HTTPS (the reference on HTTPS listeners); addresses are
    /// valid `IP:PORT` (a [`SocketAddr`]) and distinct.
    pub listen: Vec<Listener>,
    /// `/metrics`, `/healthz`, `/readyz`; `None` disables them.
    pub metrics_listen: Option<String>,
    /// Proxy worker threads; `None`: the CPU count.
    pub threads: Option<usize>,
    /// The keys file, resolved against the config file's folder.
    pub keys_file: PathBuf,
    /// Fallback poll of the keys file, at least
    /// [`MIN_RELOAD_POLL_INTERVAL_MS`].
    pub reload_poll_interval_ms: u64,
    /// Largest control-plane body inspected for `workspace_id` (the reference on what goes upstream).
    pub max_inspect_body_bytes: usize,
    /// Largest data-plane body read for models and usage (the reference on which data-plane bodies are read).
    pub max_data_body_bytes: usize,
    /// How long the proxy waits, in all, for a body it reads before
    /// forwarding (inspection or the reference on which data-plane bodies are read); then 408 `request_timeout`.
    pub body_read_timeout_ms: u64,
    /// How long an HTTP/1 request header may take to arrive, in all: from
    /// the connection's hand-over (first request) or the first byte of the
    /// request (later keep-alive requests); then 408 and the connection
    /// closes (`conn_guard`). 1 to [`MAX_HEADER_READ_TIMEOUT_MS`].
    pub header_read_timeout_ms: u64,
    /// How long a client connection may sit idle before it is closed: an
    /// HTTP/1.1 connection between requests, an HTTP/2 connection with no
    /// open stream (`conn_guard`). 1 to [`MAX_IDLE_TIMEOUT_MS`].
    pub idle_timeout_ms: u64,
    /// Open client connections at most, across every listener; beyond it
    /// a new connection is closed at once (`conn_guard`). 1 to
    /// [`MAX_CLIENT_CONNECTIONS_LIMIT`].
    pub max_client_connections: usize,
    /// The reference on usage in streams: set `stream_options.include_usage` on streams that need counting.
    pub inject_stream_usage: bool,
    /// Output tokens a counted request that names no maximum output
    /// (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) reserves
    /// per choice, on routes that generate text (the reference on usage counting); 0 reserves none.
    pub default_output_reservation: u64,
    /// Where counters and usage live (the reference on limits shared by replicas).
    pub state: StateConfig,
    /// Log line format.
    pub log_format: LogFormat,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace_period_seconds: u64,
    /// Where requests go.
    pub upstreams: Upstreams,
    /// Extra routes (the reference on the route table), shape-checked.
    pub routes: Vec<RouteSpec>,
    /// Whether the built-in route table is served too.
    pub builtin_routes: bool,
    /// Where traces go: the `tracing` block, else the standard `OTEL_*`
    /// variables; `None`: tracing is off (docs/reference.md#traces).
    pub tracing: Option<TraceSettings>,
}

impl Config {
    /// Every scope the extra routes name (any-of and all-of), for the check
    /// against the vocabulary and the keys file's `custom_scopes`.
    pub fn extra_route_scopes(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .flat_map(|r| r.scopes.iter().chain(&r.scopes_all))
            .map(String::as_str)
    }
}

/// `state` (the reference on limits shared by replicas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    /// The embedded database for usage (local backend), resolved against
    /// the config file's folder.
    pub path: PathBuf,
    /// `Some` with `backend: redis`.
    pub redis: Option<RedisSettings>,
}

/// `state.redis`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://`, `${VAR}` expanded.
    pub url: String,
    /// Per round trip.
    pub timeout_ms: u64,
    /// `true`: `on_error: deny`.
    pub deny_on_error: bool,
    /// Prefix of every key.
    pub key_prefix: String,
}

/// One proxy listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `IP:PORT`.
    pub address: String,
    /// HTTPS settings; `None`: plain HTTP/1.1.
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// A plain HTTP/1.1 listener.
    pub fn plain(address: impl Into<String>) -> Listener {
        Listener {
            address: address.into(),
            tls: None,
        }
    }
}

/// The TLS part of an HTTPS listener (the reference on HTTPS listeners). Paths are resolved against
/// the config file's folder and were regular files when the config was read;
/// whether they hold a usable pair is checked by [`crate::gateway::tls_listen`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    pub client_ca_file: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN beside HTTP/1.1 (default true).
    pub http2: bool,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people.
    #[default]
    Pretty,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The two upstreams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstreams {
    /// Data plane: the LLM completions service.
    pub completions: UpstreamConfig,
    /// Control plane: the admin service.
    pub admin: UpstreamConfig,
}

/// One validated upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `http[s]://host[:port]` as written, less a trailing `/`.
    pub url: String,
    /// `https`.
    pub tls: bool,
    /// Host as in the URL, lower-cased; an IPv6 address keeps its brackets
    /// (`[::1]`).
    pub host: String,
    /// Port; the scheme's default when the URL has none.
    pub port: u16,
    /// The `Host` header sent upstream: `host`, plus `:port` when the port
    /// is not the scheme's default.
    pub authority: String,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Longest wait between two reads (and writes).
    pub read_timeout_ms: u64,
    /// Headers added to or overwritten on every upstream request: names
    /// lower-case and valid, values valid with `${VAR}` already expanded.
    /// Values may hold secrets (a provider key): never log them.
    pub set_headers: Vec<(String, String)>,
    /// A PEM CA bundle trusted for this upstream (private CAs), resolved
    /// against the config file's folder; it exists. Only for `https`.
    pub ca_file: Option<PathBuf>,
    /// TLS server name: the host, without brackets.
    pub sni: String,
}

/// Reads and validates the server config.
///
/// # Errors
/// The file cannot be read (missing, not a regular file, over
/// [`MAX_CONFIG_FILE_BYTES`], not UTF-8), is not valid YAML, has an unknown
/// field, or breaks a rule; every rule broken is listed, with its position.
pub fn load_config(path: &Path) -> Result<Config, Vec<Diagnostic>> {
    let text = read_text_file(path, MAX_CONFIG_FILE_BYTES, "config file").map_err(|d| vec![d])?;
    parse_config_str(&text, path)
}

/// Validates config text; `path` names the file in diagnostics and is the
/// base for relative paths in it.
///
/// `${NAME}` in a `set_headers` value is replaced by the environment
/// variable `NAME` (letters, digits, `_`; not starting with a digit). `$${`
/// stands for a literal `${`; any other `$` is kept as is. A variable that is
/// not set, or is set but empty, is an error: a provider key that silently
/// expands to nothing would only show up as upstream 401s.
///
/// # Errors
/// As [`load_config`], less the file-system checks.
pub fn parse_config_str(text: &str, path: &Path) -> Result<Config, Vec<Diagnostic>> {
    parse_with_env(text, path, &|name| {
        std::env::var(name).map_err(|e| e.into())
    })
}

/// Looks a variable up: `Ok(value)`, or why not.
type Env<'a> = &'a dyn Fn(&str) -> Result<String, EnvError>;

/// Why an environment variable has no usable value.
#[derive(Debug)]
enum EnvError {
    NotSet,
    NotUnicode,
}

impl From<std::env::VarError> for EnvError {
    fn from(e: std::env::VarError) -> EnvError {
        match e {
            std::env::VarError::NotPresent => EnvError::NotSet,
            std::env::VarError::NotUnicode(_) => EnvError::NotUnicode,
        }
    }
}

fn parse_with_env(text: &str, path: &Path, env: Env<'_>) -> Result<Config, Vec<Diagnostic>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(vec![Diagnostic::file(path, "config file is empty")]);
    }
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => return Err(vec![raw_error(path, text, &e)]),
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut v = Validator {
        problems: Vec::new(),
        env,
        base,
    };
    let config = v.config(raw, path);
    if v.problems.is_empty() {
        return Ok(config);
    }
    let index = PositionIndex::new(text);
    let mut out: Vec<Diagnostic> = v
        .problems
        .into_iter()
        .map(|(at, message)| Diagnostic {
            file: path.to_path_buf(),
            // An environment variable has no place in the file.
            position: match at.as_str() {
                ENV_PROBLEM => None,
                _ => index.as_ref().and_then(|ix| ix.locate(&at)),
            },
            message,
        })
        .collect();
    out.sort_by_key(|d| d.position.unwrap_or((usize::MAX, usize::MAX)));
    Err(out)
}

/// A serde error reading the raw config; a document that is not a mapping
/// gets words instead of "expected struct RawConfig".
fn raw_error(path: &Path, text: &str, e: &serde_yaml::Error) -> Diagnostic {
    let kind = match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(serde_yaml::Value::Mapping(_)) | Err(_) => return document_error(path, text, e),
        Ok(serde_yaml::Value::Null) => {
            return Diagnostic::file(
                path,
                "config file is empty: it has comments but no settings",
            )
        }
        Ok(serde_yaml::Value::Sequence(_)) => "a list",
        Ok(_) => "a single value",
    };
    let message = format!("config file must be a mapping of settings (docs/reference.md#server-config), but it is {kind}");
    let (line, col) = PositionIndex::new(text)
        .and_then(|ix| ix.locate(""))
        .unwrap_or((1, 1));
    Diagnostic::at(path, line, col, message)
}

// ---------------------------------------------------------------------------
// Raw settings, as serde reads them.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Listen,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    threads: Option<usize>,
    keys_file: String,
    #[serde(default = "default_poll")]
    reload_poll_interval_ms: u64,
    #[serde(default = "default_inspect")]
    max_inspect_body_bytes: u64,
    #[serde(default = "default_data_body")]
    max_data_body_bytes: u64,
    #[serde(default = "default_body_read_timeout")]
    body_read_timeout_ms: u64,
    #[serde(default = "default_header_read_timeout")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_idle_timeout")]
    idle_timeout_ms: u64,
    #[serde(default = "default_max_client_connections")]
    max_client_connections: u64,
    #[serde(default = "yes")]
    inject_stream_usage: bool,
    #[serde(default = "default_output_reservation")]
    default_output_reservation: u64,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default = "default_grace")]
    shutdown_grace_period_seconds: u64,
    upstreams: RawUpstreams,
    #[serde(default)]
    routes: Vec<RouteSpec>,
    #[serde(default = "yes")]
    builtin_routes: bool,
    #[serde(default)]
    tracing: Option<TracingConfig>,
}

fn default_poll() -> u64 {
    DEFAULT_RELOAD_POLL_INTERVAL_MS
}
fn default_inspect() -> u64 {
    DEFAULT_MAX_INSPECT_BODY_BYTES as u64
}
fn default_body_read_timeout() -> u64 {
    30_000
}
fn default_header_read_timeout() -> u64 {
    DEFAULT_HEADER_READ_TIMEOUT_MS
}
fn default_idle_timeout() -> u64 {
    DEFAULT_IDLE_TIMEOUT_MS
}
fn default_max_client_connections() -> u64 {
    DEFAULT_MAX_CLIENT_CONNECTIONS as u64
}

fn default_output_reservation() -> u64 {
    DEFAULT_OUTPUT_RESERVATION
}

fn default_data_body() -> u64 {
    DEFAULT_MAX_DATA_BODY_BYTES as u64
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    backend: Backend,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    redis: Option<RawRedis>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Backend {
    #[default]
    Local,
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: String,
    #[serde(default = "default_redis_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    on_error: OnErrorSetting,
    #[serde(default = "default_prefix")]
    key_prefix: String,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum OnErrorSetting {
    #[default]
    Allow,
    Deny,
}

fn default_redis_timeout() -> u64 {
    50
}
fn default_prefix() -> String {
    "scopegate:".to_string()
}

fn default_grace() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_PERIOD_SECONDS
}
fn default_connect() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}
fn default_read() -> u64 {
    DEFAULT_READ_TIMEOUT_MS
}
fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreams {
    completions: RawUpstream,
    admin: RawUpstream,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    #[serde(default = "default_connect")]
    connect_timeout_ms: u64,
    #[serde(default = "default_read")]
    read_timeout_ms: u64,
    #[serde(default)]
    set_headers: HeaderList,
    #[serde(default)]
    ca_file: Option<String>,
}

/// `listen`: one entry or a list.
struct Listen(Vec<RawListenEntry>);

/// One `listen` entry: an address (plain HTTP/1.1) or a mapping.
enum RawListenEntry {
    Plain(String),
    Full(RawListener),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    address: String,
    #[serde(default)]
    tls: Option<RawListenerTls>,
    #[serde(default)]
    http2: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    cert_file: String,
    key_file: String,
    #[serde(default)]
    client_ca_file: Option<String>,
}

const LISTEN_EXPECTED: &str = "an address such as \"127.0.0.1:8080\", a mapping with `address` \
                               and `tls`, or a list of them";

impl<'de> Deserialize<'de> for RawListenEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RawListenEntry, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawListenEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an address such as \"127.0.0.1:8080\", or a mapping with `address` and `tls`",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawListenEntry, E> {
                Ok(RawListenEntry::Plain(s.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawListenEntry, A::Error> {
                RawListener::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawListenEntry::Full)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(LISTEN_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Listen, E> {
                Ok(Listen(vec![RawListenEntry::Plain(s.to_string())]))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listen, A::Error> {
                RawListener::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| Listen(vec![RawListenEntry::Full(l)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = seq.next_element::<RawListenEntry>()? {
                    out.push(entry);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `set_headers`: a mapping of name to value, order kept.
#[derive(Default)]
struct HeaderList(Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HeaderList, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of header name to value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<HeaderList, E> {
                Ok(HeaderList::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, String>()? {
                    out.push(entry);
                }
                Ok(HeaderList(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Validation: raw settings to a Config, collecting every problem.

/// The path of a problem with an environment variable (no position).
const ENV_PROBLEM: &str = "$env";

struct Validator<'a> {
    /// (path to locate, message).
    problems: Vec<(String, String)>,
    env: Env<'a>,
    /// The config file's folder.
    base: &'a Path,
}

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push((path.into(), message.into()));
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let listen = self.listen(raw.listen.0);
        let metrics_listen = self.metrics_listen(raw.metrics_listen, &listen);
        if raw.threads == Some(0) {
            self.problem(
                "threads",
                "threads: must be at least 1 (omit it for one per CPU)",
            );
        }
        let keys_file = if raw.keys_file.trim().is_empty() {
            self.problem("keys_file", "keys_file: must name the keys file");
            PathBuf::new()
        } else {
            self.base.join(&raw.keys_file)
        };
        if raw.reload_poll_interval_ms < MIN_RELOAD_POLL_INTERVAL_MS {
            self.problem(
                "reload_poll_interval_ms",
                format!(
                    "reload_poll_interval_ms: must be at least {MIN_RELOAD_POLL_INTERVAL_MS} \
                     (filesystem events and SIGHUP reload at once; the poll is a fallback)"
                ),
            );
        }
        let (max_inspect_body_bytes, max_data_body_bytes) =
            self.body_sizes(raw.max_inspect_body_bytes, raw.max_data_body_bytes);
        let max_client_connections = self.connections(
            raw.header_read_timeout_ms,
            raw.idle_timeout_ms,
            raw.max_client_connections,
        );
        if raw.body_read_timeout_ms == 0 {
            self.problem(
                "body_read_timeout_ms",
                "body_read_timeout_ms: must be at least 1 (milliseconds a read body may take \
                 to arrive whole)",
            );
        }
        if raw.default_output_reservation > MAX_OUTPUT_RESERVATION {
            self.problem(
                "default_output_reservation",
                format!(
                    "default_output_reservation: must be at most {MAX_OUTPUT_RESERVATION} \
                     tokens (0 reserves no output for requests that name no maximum)"
                ),
            );
        }
        let state = self.state(raw.state);
        let upstreams = Upstreams {
            completions: self.upstream(raw.upstreams.completions, "upstreams.completions"),
            admin: self.upstream(raw.upstreams.admin, "upstreams.admin"),
        };
        self.routes(&raw.routes);
        if !raw.builtin_routes && raw.routes.is_empty() {
            self.problem(
                "builtin_routes",
                "builtin_routes: is false and `routes` is empty, so every request would be \
                 answered 404",
            );
        }
        let tracing = self.tracing(raw.tracing);
        Config {
            path: path.to_path_buf(),
            listen,
            metrics_listen,
            threads: raw.threads,
            keys_file,
            reload_poll_interval_ms: raw.reload_poll_interval_ms,
            max_inspect_body_bytes,
            max_data_body_bytes,
            body_read_timeout_ms: raw.body_read_timeout_ms,
            header_read_timeout_ms: raw.header_read_timeout_ms,
            idle_timeout_ms: raw.idle_timeout_ms,
            max_client_connections,
            inject_stream_usage: raw.inject_stream_usage,
            default_output_reservation: raw.default_output_reservation,
            state,
            log_format: raw.log_format,
            shutdown_grace_period_seconds: raw.shutdown_grace_period_seconds,
            upstreams,
            routes: raw.routes,
            builtin_routes: raw.builtin_routes,
            tracing,
        }
    }

    /// The `tracing` block, or without it the standard `OTEL_*` variables
    /// (docs/reference.md#traces); `${VAR}` in its headers expands as in
    /// `set_headers`. `OTEL_BSP_SCHEDULE_DELAY` may shorten the batch
    /// interval in either case.
    fn tracing(&mut self, raw: Option<TracingConfig>) -> Option<TraceSettings> {
        let env = self.env;
        let resolved = match raw {
            Some(block) => block
                .resolve(&mut |at, value| expand_vars(value, env).map_err(|e| e.message(at)))
                .map(Some),
            None => TraceSettings::from_env(&|name| env(name).ok()),
        };
        let mut settings = match resolved {
            Ok(s) => s?,
            Err(problems) => {
                for p in problems {
                    let at = if p.at.starts_with("tracing") {
                        p.at
                    } else {
                        ENV_PROBLEM.into()
                    };
                    self.problem(at, p.message);
                }
                return None;
            }
        };
        match traces::batch_delay_from_env(&|name| env(name).ok()) {
            Ok(Some(delay)) => settings.batch.delay = delay,
            Ok(None) => {}
            Err(p) => self.problem(ENV_PROBLEM, p.message),
        }
        Some(settings)
    }

    /// `metrics_listen`: an address, not one of the proxy's.
    fn metrics_listen(&mut self, m: Option<String>, listen: &[Listener]) -> Option<String> {
        m.inspect(|m| {
            if m.parse::<SocketAddr>().is_err() {
                self.problem(
                    "metrics_listen",
                    format!("metrics_listen: `{}` {ADDR_RULE}", m.escape_debug()),
                );
            } else if listen.iter().any(|l| l.address == *m) {
                self.problem(
                    "metrics_listen",
                    format!("metrics_listen: `{m}` is also a proxy listen address"),
                );
            }
        })
    }

    /// `max_inspect_body_bytes` and `max_data_body_bytes`, within what is
    /// held in memory.
    fn body_sizes(&mut self, inspect: u64, data: u64) -> (usize, usize) {
        let max_inspect_body_bytes = match usize::try_from(inspect) {
            Ok(0) => {
                self.problem(
                    "max_inspect_body_bytes",
                    "max_inspect_body_bytes: must be at least 1",
                );
                0
            }
            Ok(n) if n <= MAX_INSPECT_BODY_BYTES_LIMIT => n,
            _ => {
                self.problem(
                    "max_inspect_body_bytes",
                    format!(
                        "max_inspect_body_bytes: must be at most {MAX_INSPECT_BODY_BYTES_LIMIT} \
                         (64 MiB): inspected bodies are held in memory"
                    ),
                );
                0
            }
        };
        let max_data_body_bytes = match usize::try_from(data) {
            Ok(n) if (1..=1024 * 1024 * 1024).contains(&n) => n,
            _ => {
                self.problem(
                    "max_data_body_bytes",
                    "max_data_body_bytes: must be between 1 and 1073741824 (1 GiB): bodies read \
                     for models and usage are held in memory",
                );
                0
            }
        };
        (max_inspect_body_bytes, max_data_body_bytes)
    }

    /// The client-connection settings: the header and idle deadlines (never
    /// off) and `max_client_connections` (returned).
    fn connections(&mut self, header_read_ms: u64, idle_ms: u64, max: u64) -> usize {
        if !(1..=MAX_HEADER_READ_TIMEOUT_MS).contains(&header_read_ms) {
            self.problem(
                "header_read_timeout_ms",
                format!(
                    "header_read_timeout_ms: must be between 1 and {MAX_HEADER_READ_TIMEOUT_MS} \
                     (60 s): the header deadline cannot be turned off, and pingora already ends \
                     a connection whose single read waits 60 s"
                ),
            );
        }
        if !(1..=MAX_IDLE_TIMEOUT_MS).contains(&idle_ms) {
            self.problem(
                "idle_timeout_ms",
                format!(
                    "idle_timeout_ms: must be between 1 and {MAX_IDLE_TIMEOUT_MS} (1 hour): an \
                     idle client connection cannot be kept for ever"
                ),
            );
        }
        match usize::try_from(max) {
            Ok(n) if (1..=MAX_CLIENT_CONNECTIONS_LIMIT).contains(&n) => n,
            _ => {
                self.problem(
                    "max_client_connections",
                    format!(
                        "max_client_connections: must be between 1 and \
                         {MAX_CLIENT_CONNECTIONS_LIMIT}: the bound on open client connections \
                         cannot be turned off"
                    ),
                );
                0
            }
        }
    }

    fn listen(&mut self, entries: Vec<RawListenEntry>) -> Vec<Listener> {
        if entries.is_empty() {
            self.problem(
                "listen",
                "listen: needs at least one address, such as 127.0.0.1:8080",
            );
        }
        let mut out: Vec<Listener> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let (listener, at) = match entry {
                RawListenEntry::Plain(address) => {
                    (Listener::plain(address), format!("listen[{i}]"))
                }
                RawListenEntry::Full(raw) => {
                    let tls = self.listener_tls(&raw, i);
                    (
                        Listener {
                            address: raw.address,
                            tls,
                        },
                        format!("listen[{i}].address"),
                    )
                }
            };
            let a = &listener.address;
            if a.parse::<SocketAddr>().is_err() {
                self.problem(at, format!("listen: `{}` {ADDR_RULE}", a.escape_debug()));
            } else if out.iter().any(|l| l.address == *a) {
                self.problem(at, format!("listen: `{a}` is listed twice"));
            }
            out.push(listener);
        }
        out
    }

    /// The `tls` and `http2` of the mapping form of `listen[i]`.
    fn listener_tls(&mut self, raw: &RawListener, i: usize) -> Option<ListenerTls> {
        let Some(tls) = &raw.tls else {
            if raw.http2 == Some(true) {
                self.problem(
                    format!("listen[{i}].http2"),
                    format!(
                        "listen[{i}].http2: HTTP/2 is offered by ALPN on TLS listeners only; add \
                         `tls` (a plain listener serves HTTP/1.1)"
                    ),
                );
            }
            return None;
        };
        let mut file = |field: &str, name: &str| -> PathBuf {
            let here = format!("listen[{i}].tls.{field}");
            if name.trim().is_empty() {
                self.problem(&here, format!("{here}: must name a file"));
                return PathBuf::new();
            }
            let resolved = self.base.join(name);
            self.regular_file(&here, &resolved);
            resolved
        };
        let cert_file = file("cert_file", &tls.cert_file);
        let key_file = file("key_file", &tls.key_file);
        let client_ca_file = tls
            .client_ca_file
            .as_deref()
            .map(|ca| file("client_ca_file", ca));
        Some(ListenerTls {
            cert_file,
            key_file,
            client_ca_file,
            http2: raw.http2.unwrap_or(true),
        })
    }

    /// Reports `path` unless it is a regular file (through symlinks).
    fn regular_file(&mut self, here: &str, path: &Path) {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.problem(
                here,
                format!("{here}: `{}` is not a regular file", path.display()),
            ),
            Err(e) => self.problem(
                here,
                format!("{here}: cannot read `{}`: {e}", path.display()),
            ),
        }
    }

    fn upstream(&mut self, raw: RawUpstream, at: &str) -> UpstreamConfig {
        let url = raw.url.strip_suffix('/').unwrap_or(&raw.url).to_string();
        let parsed = parse_url(&raw.url).unwrap_or_else(|m| {
            self.problem(format!("{at}.url"), format!("{at}.url: {m}"));
            ParsedUrl::default()
        });
        for (field, value) in [
            ("connect_timeout_ms", raw.connect_timeout_ms),
            ("read_timeout_ms", raw.read_timeout_ms),
        ] {
            if value == 0 {
                self.problem(
                    format!("{at}.{field}"),
                    format!("{at}.{field}: must be at least 1"),
                );
            }
        }
        let set_headers = self.set_headers(raw.set_headers.0, at);
        let ca_file = raw.ca_file.map(|ca| {
            let resolved = self.base.join(&ca);
            let here = format!("{at}.ca_file");
            if !raw
                .url
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            {
                self.problem(&here, format!("{here}: is only used with an https:// url"));
            }
            self.regular_file(&here, &resolved);
            resolved
        });
        let authority = match (parsed.tls, parsed.port) {
            (true, 443) | (false, 80) => parsed.host.clone(),
            (_, port) => format!("{}:{port}", parsed.host),
        };
        UpstreamConfig {
            url,
            tls: parsed.tls,
            sni: parsed
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            host: parsed.host,
            port: parsed.port,
            authority,
            connect_timeout_ms: raw.connect_timeout_ms,
            read_timeout_ms: raw.read_timeout_ms,
            set_headers,
            ca_file,
        }
    }

    fn state(&mut self, raw: RawState) -> StateConfig {
        let path = self.base.join(raw.path.as_deref().unwrap_or("state.db"));
        let redis = match (raw.backend, raw.redis) {
            (Backend::Local, None) => None,
            (Backend::Local, Some(_)) => {
                self.problem(
                    "state.redis",
                    "state.redis: is set but state.backend is `local`; set `backend: redis`",
                );
                None
            }
            (Backend::Redis, None) => {
                self.problem(
                    "state.backend",
                    "state.backend: `redis` needs state.redis.url",
                );
                None
            }
            (Backend::Redis, Some(r)) => {
                let url = match expand_vars(&r.url, self.env) {
                    Ok(u) => u,
                    Err(e) => {
                        let msg = e.message("state.redis.url");
                        self.problem("state.redis.url", msg);
                        String::new()
                    }
                };
                if !(url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://"))
                {
                    self.problem(
                        "state.redis.url",
                        "state.redis.url: must start with redis:// or rediss://",
                    );
                }
                if r.timeout_ms == 0 || r.timeout_ms > 60_000 {
                    self.problem(
                        "state.redis.timeout_ms",
                        "state.redis.timeout_ms: must be between 1 and 60000",
                    );
                }
                Some(RedisSettings {
                    url,
                    timeout_ms: r.timeout_ms,
                    deny_on_error: r.on_error == OnErrorSetting::Deny,
                    key_prefix: r.key_prefix,
                })
            }
        };
        StateConfig { path, redis }
    }

    fn set_headers(&mut self, raw: Vec<(String, String)>, at: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
        let mut seen: HashSet<String> = HashSet::new();
        for (name, value) in raw {
            let lower = name.to_ascii_lowercase();
            let here = format!("{at}.set_headers.{name}");
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                self.problem(
                    &here,
                    format!(
                        "{here}: `{}` is not a valid HTTP header name",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            if let Some(why) = forbidden_header(&lower) {
                self.problem(
                    &here,
                    format!("{here}: `{lower}` cannot be set here: {why}"),
                );
                continue;
            }
            if !seen.insert(lower.clone()) {
                self.problem(&here, format!("{here}: `{lower}` is set twice"));
                continue;
            }
            let expanded = match expand_vars(&value, self.env) {
                Ok(v) => v,
                Err(e) => {
                    self.problem(&here, e.message(&here));
                    continue;
                }
            };
            // The message never quotes the value: it may be a secret.
            if http::HeaderValue::from_str(&expanded).is_err() {
                self.problem(
                    &here,
                    format!(
                        "{here}: the value (after expanding variables) is not a valid header \
                         value: it has a line break, control character or non-ASCII character"
                    ),
                );
                continue;
            }
            out.push((lower, expanded));
        }
        out
    }

    fn routes(&mut self, routes: &[RouteSpec]) {
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        for (i, r) in routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let normalized = match crate::decision::routes::normalize_pattern(&r.path) {
                Ok(n) => Some(n),
                Err(m) => {
                    self.problem(format!("{at}.path"), format!("{at}.path: {m}"));
                    None
                }
            };
            if r.methods.is_empty() {
                self.problem(
                    format!("{at}.methods"),
                    format!("{at}.methods: a route needs at least one method"),
                );
            }
            for (j, m) in r.methods.iter().enumerate() {
                let here = format!("{at}.methods[{j}]");
                let valid =
                    !m.is_empty() && m.len() <= 20 && m.bytes().all(|b| b.is_ascii_uppercase());
                if !valid {
                    self.problem(
                        &here,
                        format!(
                            "{here}: `{}` is not an upper-case HTTP method such as GET, POST, \
                             PUT, PATCH or DELETE",
                            m.escape_debug()
                        ),
                    );
                } else if r.methods[..j].contains(m) {
                    self.problem(&here, format!("{here}: `{m}` is listed twice"));
                } else if let Some(n) = &normalized {
                    if let Some(first) = seen.insert((m.clone(), n.clone()), i) {
                        self.problem(
                            &here,
                            format!(
                                "{here}: {m} {} is already routed by routes[{first}]",
                                r.path
                            ),
                        );
                    }
                }
            }
            match (r.scopes.is_empty(), r.scopes_all.is_empty()) {
                (true, true) => self.problem(
                    &at,
                    format!("{at}: needs `scopes` (any of) or `scopes_all` (all of)"),
                ),
                (false, false) => self.problem(
                    format!("{at}.scopes_all"),
                    format!(
                        "{at}: give either `scopes` (any of) or `scopes_all` (all of), not both"
                    ),
                ),
                _ => {}
            }
            if let Err(m) = crate::decision::routes::check_upgrade(r.upgrade.as_deref(), &r.methods)
            {
                self.problem(format!("{at}.upgrade"), format!("{at}.upgrade: {m}"));
            }
            if let Err(m) = crate::decision::routes::check_meter(
                r.meter,
                r.plane,
                r.upgrade.as_deref(),
                &r.methods,
            ) {
                self.problem(format!("{at}.meter"), format!("{at}.meter: {m}"));
            }
            for (field, list) in [("scopes", &r.scopes), ("scopes_all", &r.scopes_all)] {
                for (j, s) in list.iter().enumerate() {
                    if !is_scope_shaped(s) {
                        let here = format!("{at}.{field}[{j}]");
                        self.problem(
                            &here,
                            format!(
                                "{here}: `{}` is not a scope name: routes name plain scopes like \
                                 `reports.read` (no wildcards)",
                                s.escape_debug()
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// What an address must look like, for messages.
const ADDR_RULE: &str = "is not an IP:PORT address such as 127.0.0.1:8080 or [::]:8080 \
                         (host names are not resolved here)";

/// Why a header may not be set by config, if it may not.
fn forbidden_header(name: &str) -> Option<&'static str> {
    match name {
        "connection" | "transfer-encoding" | "upgrade" | "te" | "keep-alive"
        | "proxy-connection" | "trailer" => {
            Some("it is a hop-by-hop header, managed per connection")
        }
        "host" => Some("the Host header is the upstream url's authority"),
        "content-length" => Some("the body's length is the proxy's to set"),
        "x-request-id" => Some("the proxy sets a request id per request"),
        n if n.starts_with("x-scopegate-") => Some(
            "x-scopegate-* headers carry the proxy's verdict about the caller's key, which the \
             upstream trusts",
        ),
        _ => None,
    }
}

/// Why `${...}` could not be expanded.
#[derive(Debug, PartialEq, Eq)]
enum ExpandError {
    NotSet(String),
    Empty(String),
    NotUnicode(String),
    BadName(String),
    Unterminated,
}

impl ExpandError {
    fn message(&self, here: &str) -> String {
        match self {
            ExpandError::NotSet(n) => {
                format!("environment variable {n} is not set (used in {here})")
            }
            ExpandError::Empty(n) => format!("environment variable {n} is empty (used in {here})"),
            ExpandError::NotUnicode(n) => {
                format!("environment variable {n} is not valid UTF-8 (used in {here})")
            }
            ExpandError::BadName(n) => format!(
                "{here}: `${{{}}}` is not a variable name (letters, digits and `_`); write `$${{` \
                 for a literal `${{`",
                n.escape_debug()
            ),
            ExpandError::Unterminated => {
                format!("{here}: `${{` without a closing `}}`; write `$${{` for a literal `${{`")
            }
        }
    }
}

/// Expands `${NAME}`; `$${` is a literal `${`.
fn expand_vars(value: &str, env: Env<'_>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or(ExpandError::Unterminated)?;
            let name = &after[..end];
            if !crate::decision::routes::is_identifier(name) {
                return Err(ExpandError::BadName(name.to_string()));
            }
            match env(name) {
                Ok(v) if v.is_empty() => return Err(ExpandError::Empty(name.to_string())),
                Ok(v) => out.push_str(&v),
                Err(EnvError::NotSet) => return Err(ExpandError::NotSet(name.to_string())),
                Err(EnvError::NotUnicode) => return Err(ExpandError::NotUnicode(name.to_string())),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The parts of an upstream URL.
#[derive(Debug, Default, PartialEq, Eq)]
struct ParsedUrl {
    tls: bool,
    host: String,
    port: u16,
}

/// Parses `http[s]://host[:port]` with an optional trailing `/`.
fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let shown = url.escape_debug();
    let scheme_end = url
        .find("://")
        .ok_or_else(|| format!("`{shown}` must start with http:// or https://"))?;
    let tls = match url[..scheme_end].to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(format!("`{shown}` must start with http:// or https://")),
    };
    let rest = &url[scheme_end + 3..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err(format!(
            "`{shown}` must be scheme, host and port only, with no path, query or fragment: \
             request paths go upstream unchanged"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "`{shown}` must not carry credentials (`user@`); use set_headers for upstream \
             authentication"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or_else(|| format!("`{shown}`: `[` without `]`"))?;
        if v6[..end].parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "`{shown}`: `{}` is not an IPv6 address",
                &v6[..end]
            ));
        }
        let after = &v6[end + 1..];
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("`{shown}`: only `:port` may follow an IPv6 address"))?,
            ),
        };
        (rest[..end + 2].to_ascii_lowercase(), port)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        };
        if host.parse::<Ipv4Addr>().is_err() && !is_host_name(host) {
            return Err(format!(
                "`{shown}`: `{}` is not a host name, IPv4 address or [IPv6] address",
                host.escape_debug()
            ));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => {
            if tls {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "`{shown}`: `{}` is not a port (1 to 65535)",
                    p.escape_debug()
                ))
            }
        },
    };
    Ok(ParsedUrl { tls, host, port })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, not
/// starting or ending with `-`.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Builds the route table from the config.
///
/// # Errors
/// Every malformed extra route.
pub fn route_table(config: &Config) -> Result<RouteTable, Vec<Diagnostic>> {
    RouteTable::build(&config.routes, config.builtin_routes).map_err(|problems| {
        problems
            .into_iter()
            .map(|p| {
                let message = match p.index {
                    Some(i) => format!("routes[{i}]: {}", p.message),
                    None => p.message,
                };
                Diagnostic::file(&config.path, message)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests;
