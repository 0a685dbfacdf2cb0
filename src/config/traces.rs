//! Where traces go: the server config's `tracing` block, or the standard
//! `OTEL_*` environment variables when the block is absent
//! (docs/reference.md#traces). `ops::traces` runs what these settings name.
//!
//! Both end in one [`TraceSettings`]: the full URL spans are sent to, the
//! protocol, extra headers, the sampling ratio and the service name. The
//! functions here are pure: the environment is a lookup closure, so tests
//! need no process environment.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Default `sample_ratio`.
pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
/// Default `service_name` (the resource attribute `service.name`).
pub const DEFAULT_SERVICE_NAME: &str = "scopegate";
/// The path OTLP/HTTP receivers take traces on.
pub const OTLP_HTTP_TRACES_PATH: &str = "/v1/traces";
/// How long one export may take before it is given up (the OTLP default).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `service_name`.
const MAX_SERVICE_NAME_LEN: usize = 255;

/// The `tracing` block of the server config, as written.
///
/// `headers` values may hold `${VAR}`: the config loader expands them
/// (through the hook [`TracingConfig::resolve`] takes), as it does for an
/// upstream's `set_headers`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector: for `http/protobuf` a base URL that spans are POSTed
    /// under (`/v1/traces` is appended), for `grpc` the server's URL.
    pub otlp_endpoint: String,
    /// `http/protobuf` (default) or `grpc`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Sent with every export (for example a tenant or an auth token).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Share of new traces that are recorded, 0.0 to 1.0. A client's
    /// `traceparent` decides for its own trace.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// The resource attribute `service.name`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

fn default_sample_ratio() -> f64 {
    DEFAULT_SAMPLE_RATIO
}

fn default_service_name() -> String {
    DEFAULT_SERVICE_NAME.to_string()
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC.
    #[serde(rename = "grpc")]
    Grpc,
}

impl Protocol {
    /// The name used in the config and in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::Grpc => "grpc",
        }
    }

    fn parse(value: &str) -> Option<Protocol> {
        match value {
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }
}

/// A problem with the settings: `at` is the dotted path of the field
/// (`tracing.sample_ratio`, `tracing.headers.x-tenant`) or the name of the
/// environment variable, for the config loader to turn into a position.
/// Messages never quote a header value: it may be a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: a config path or an environment variable's name.
    pub at: String,
    /// What is wrong, starting with `at`.
    pub message: String,
}

impl Problem {
    fn new(at: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            at: at.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How spans are batched on their way out. Not part of the config file:
/// the defaults are the OpenTelemetry SDK's; tests shorten the delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// A batch leaves at least this often.
    pub delay: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            queue_size: 2048,
            max_batch: 512,
            delay: Duration::from_secs(5),
        }
    }
}

/// Validated trace settings: what the exporter needs.
#[derive(Clone, PartialEq)]
pub struct TraceSettings {
    /// The URL exports go to: for `http/protobuf` the full URL including
    /// `/v1/traces`, for `grpc` `scheme://host:port`.
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Extra headers (gRPC metadata), names lower-case, values expanded.
    pub headers: Vec<(String, String)>,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// One export's time limit.
    pub export_timeout: Duration,
    /// Queue and batch sizes.
    pub batch: BatchOptions,
}

// The ratio is always finite (checked), so equality is an equivalence.
impl Eq for TraceSettings {}

/// The standard variable that sets the batch interval, in milliseconds.
pub const ENV_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";

/// `OTEL_BSP_SCHEDULE_DELAY`, when set: a batch interval shorter than the
/// default 5 s (1 to 5000 ms; a batch leaves at least every 5 s whatever it
/// says). An empty variable counts as unset.
///
/// # Errors
/// A value that is not a whole number of milliseconds from 1 to 5000.
pub fn batch_delay_from_env(
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Duration>, Problem> {
    let Some(value) = lookup(ENV_SCHEDULE_DELAY).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let max = BatchOptions::default().delay.as_millis() as u64;
    match value.trim().parse::<u64>() {
        Ok(ms) if (1..=max).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        _ => Err(Problem::new(
            ENV_SCHEDULE_DELAY,
            format!(
                "{ENV_SCHEDULE_DELAY}: `{}` is not a batch interval from 1 to {max} milliseconds",
                value.escape_debug()
            ),
        )),
    }
}

/// Header values may be secrets: debug output shows their names only.
fn redacted<'a>(names: impl Iterator<Item = &'a String>) -> Vec<String> {
    names.map(|n| format!("{n}: <redacted>")).collect()
}

impl std::fmt::Debug for TracingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracingConfig")
            .field("otlp_endpoint", &self.otlp_endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &redacted(self.headers.keys()))
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .finish()
    }
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceSettings")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &redacted(self.headers.iter().map(|(n, _)| n)))
            .field("sample_ratio", &self.sample_ratio)
            .field("service_name", &self.service_name)
            .field("export_timeout", &self.export_timeout)
            .field("batch", &self.batch)
            .finish()
    }
}

impl TracingConfig {
    /// Checks the block and turns it into settings. `expand(at, value)`
    /// expands `${VAR}` in a header value (the config loader's rules and
    /// messages); `at` is the field's path for its message. Returns every
    /// problem at once.
    ///
    /// # Errors
    /// One [`Problem`] per broken rule, each with the field's path.
    pub fn resolve(
        &self,
        expand: &mut dyn FnMut(&str, &str) -> Result<String, String>,
    ) -> Result<TraceSettings, Vec<Problem>> {
        let mut problems = Vec::new();
        let endpoint = match endpoint_url(&self.otlp_endpoint, self.protocol, true) {
            Ok(url) => url,
            Err(why) => {
                problems.push(Problem::new(
                    "tracing.otlp_endpoint",
                    format!("tracing.otlp_endpoint: {why}"),
                ));
                String::new()
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let at = format!("tracing.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if let Some(why) = header_name_problem(&lower) {
                problems.push(Problem::new(&at, format!("{at}: {why}")));
                continue;
            }
            if headers.iter().any(|(n, _)| *n == lower) {
                problems.push(Problem::new(&at, format!("{at}: `{lower}` is set twice")));
                continue;
            }
            let expanded = match expand(&at, value) {
                Ok(v) => v,
                Err(message) => {
                    problems.push(Problem::new(&at, message));
                    continue;
                }
            };
            if http::HeaderValue::from_str(&expanded).is_err() {
                problems.push(Problem::new(
                    &at,
                    format!(
                        "{at}: the value (after expanding variables) is not a valid header value: \
                         it has a line break, control character or non-ASCII character"
                    ),
                ));
                continue;
            }
            headers.push((lower, expanded));
        }
        if let Err(why) = check_ratio(self.sample_ratio) {
            problems.push(Problem::new(
                "tracing.sample_ratio",
                format!("tracing.sample_ratio: {why}"),
            ));
        }
        if let Err(why) = check_service_name(&self.service_name) {
            problems.push(Problem::new(
                "tracing.service_name",
                format!("tracing.service_name: {why}"),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(TraceSettings {
            endpoint,
            protocol: self.protocol,
            headers,
            sample_ratio: self.sample_ratio,
            service_name: self.service_name.clone(),
            export_timeout: EXPORT_TIMEOUT,
            batch: BatchOptions::default(),
        })
    }
}

/// The standard variables that turn tracing on without a `tracing` block.
pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces-only endpoint: a full URL, used as is.
pub const ENV_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `http/protobuf` or `grpc`, for every signal.
pub const ENV_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `http/protobuf` or `grpc`, for traces.
pub const ENV_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `service.name`.
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// The sampling ratio for new traces.
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

impl TraceSettings {
    /// Settings from the standard environment variables, for when the
    /// config has no `tracing` block; `Ok(None)` (tracing off) when neither
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set. An empty variable counts as unset, as the OpenTelemetry
    /// specification says.
    ///
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is the full URL; for
    /// `http/protobuf`, `OTEL_EXPORTER_OTLP_ENDPOINT` is a base that
    /// `/v1/traces` is appended to. The protocol comes from
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `http/protobuf`.
    ///
    /// # Errors
    /// One [`Problem`] per variable with an unusable value; `at` is its name.
    pub fn from_env(
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<TraceSettings>, Vec<Problem>> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let traces_endpoint = get(ENV_TRACES_ENDPOINT);
        let endpoint = get(ENV_ENDPOINT);
        if traces_endpoint.is_none() && endpoint.is_none() {
            return Ok(None);
        }
        let mut problems = Vec::new();
        let protocol = match [ENV_TRACES_PROTOCOL, ENV_PROTOCOL]
            .into_iter()
            .find_map(|name| get(name).map(|v| (name, v)))
        {
            None => Protocol::HttpProtobuf,
            Some((name, value)) => match Protocol::parse(value.trim()) {
                Some(p) => p,
                None => {
                    problems.push(Problem::new(
                        name,
                        format!(
                            "{name}: `{}` is not supported; use `http/protobuf` or `grpc`",
                            value.escape_debug()
                        ),
                    ));
                    Protocol::HttpProtobuf
                }
            },
        };
        let (name, value, is_base) = match (traces_endpoint, endpoint) {
            (Some(v), _) => (ENV_TRACES_ENDPOINT, v, false),
            (None, Some(v)) => (ENV_ENDPOINT, v, true),
            (None, None) => return Ok(None),
        };
        let endpoint = match endpoint_url(value.trim(), protocol, is_base) {
            Ok(url) => url,
            Err(why) => {
                problems.push(Problem::new(name, format!("{name}: {why}")));
                String::new()
            }
        };
        let sample_ratio = match get(ENV_SAMPLER_ARG) {
            None => DEFAULT_SAMPLE_RATIO,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if check_ratio(r).is_ok() => r,
                _ => {
                    problems.push(Problem::new(
                        ENV_SAMPLER_ARG,
                        format!(
                            "{ENV_SAMPLER_ARG}: `{}` is not a sampling ratio from 0.0 to 1.0",
                            v.escape_debug()
                        ),
                    ));
                    DEFAULT_SAMPLE_RATIO
                }
            },
        };
        let service_name = match get(ENV_SERVICE_NAME) {
            None => DEFAULT_SERVICE_NAME.to_string(),
            Some(v) => {
                if let Err(why) = check_service_name(&v) {
                    problems.push(Problem::new(
                        ENV_SERVICE_NAME,
                        format!("{ENV_SERVICE_NAME}: {why}"),
                    ));
                }
                v
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Some(TraceSettings {
            endpoint,
            protocol,
            headers: Vec::new(),
            sample_ratio,
            service_name,
            export_timeout: EXPORT_TIMEOUT,
            batch: BatchOptions::default(),
        }))
    }

    /// The process environment as a lookup for [`TraceSettings::from_env`].
    pub fn process_env(name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

fn check_ratio(ratio: f64) -> Result<(), String> {
    if ratio.is_finite() && (0.0..=1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(format!("{ratio} is not a ratio from 0.0 to 1.0"))
    }
}

fn check_service_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the service name is empty".to_string());
    }
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "the service name is longer than {MAX_SERVICE_NAME_LEN} bytes"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the service name has a control character".to_string());
    }
    Ok(())
}

/// Why a header may not be sent to the collector, if it may not.
fn header_name_problem(lower: &str) -> Option<String> {
    if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
        return Some(format!(
            "`{}` is not a valid HTTP header name",
            lower.escape_debug()
        ));
    }
    match lower {
        "connection" | "transfer-encoding" | "upgrade" | "te" | "keep-alive"
        | "proxy-connection" | "trailer" => Some(format!(
            "`{lower}` is a hop-by-hop header, managed per connection"
        )),
        "host" | "content-type" | "content-length" | "content-encoding" => Some(format!(
            "`{lower}` belongs to the exporter, which sets it per export"
        )),
        _ => None,
    }
}

/// The URL exports go to, or why `value` cannot be one. `is_base`: for
/// `http/protobuf`, `/v1/traces` is appended to the path (a path that
/// already ends in it is kept); for `grpc` the value is the server's URL.
fn endpoint_url(value: &str, protocol: Protocol, is_base: bool) -> Result<String, String> {
    let shown = value.escape_debug();
    let uri: http::Uri = value
        .parse()
        .map_err(|_| format!("`{shown}` is not a URL such as http://127.0.0.1:4318"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "`{shown}` must start with http:// or https:// (for example http://127.0.0.1:4318)"
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{shown}` names no host"));
    };
    if authority.as_str().contains('@') {
        return Err(
            "a user name or password in the URL is not supported: send credentials in `headers`"
                .to_string(),
        );
    }
    if authority.host().is_empty() {
        return Err(format!("`{shown}` names no host"));
    }
    if uri.query().is_some() || value.contains('#') {
        return Err(format!("`{shown}` must not have a query or fragment"));
    }
    let path = uri.path();
    let scheme_authority = format!("{}://{}", uri.scheme_str().unwrap_or("http"), authority);
    match protocol {
        Protocol::Grpc => {
            if !(path.is_empty() || path == "/") {
                return Err(format!(
                    "`{shown}`: a gRPC endpoint has no path (for example http://127.0.0.1:4317)"
                ));
            }
            Ok(scheme_authority)
        }
        Protocol::HttpProtobuf => {
            if !is_base || path.ends_with(OTLP_HTTP_TRACES_PATH) {
                return Ok(format!("{scheme_authority}{path}"));
            }
            let base = path.trim_end_matches('/');
            Ok(format!("{scheme_authority}{base}{OTLP_HTTP_TRACES_PATH}"))
        }
    }
}

#[cfg(test)]
mod tests;
