//! One request's spans: the SERVER span the proxy records for every request
//! (refused ones too), and the CLIENT span of its upstream call.
//!
//! The gateway holds a [`RequestSpan`] in its per-request context:
//! [`Traces::begin`] when the request arrives, [`RequestSpan::start_upstream`]
//! before the upstream call (it returns the `traceparent` to send),
//! [`RequestSpan::end_upstream`] at the response's last byte, and
//! [`RequestSpan::finish`] with the request's facts at the end. With tracing
//! off the span is [`RequestSpan::off`]: every call returns at
//! once. A request that is not sampled keeps only its ids (for the
//! `traceparent` sent upstream); attributes are built only for recorded
//! spans.
//!
//! Nothing secret goes in: no key, key header, token, body or query string.
//! The facts carry only ids, names, counts and the path without its query.

use std::net::IpAddr;

use opentelemetry::trace::Span as _;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, Span};

use super::context::{trace_id_hex, traceparent_value, Incoming};
use super::pipeline::Traces;

/// A request's spans, or nothing when tracing is off.
#[derive(Debug, Default)]
pub struct RequestSpan {
    state: State,
    /// The client's `tracestate`, passed on beside its valid `traceparent`.
    tracestate: Option<Box<str>>,
    /// The client sent `traceparent` or `tracestate` lines (valid or not).
    client_sent: bool,
}

#[derive(Debug, Default)]
enum State {
    /// Tracing is off.
    #[default]
    Off,
    /// A request known not to be recorded before any span was made: a
    /// client's `traceparent` with the sampled flag off, or a new trace at
    /// `sample_ratio: 0`. Only its ids are kept, for the `traceparent`
    /// sent upstream; the SDK is not asked (its parent-based sampler would
    /// drop it). As bytes: `TraceId` is a 16-byte-aligned `u128`, which
    /// would widen every request's context.
    Unsampled {
        trace_id: [u8; 16],
        span_id: [u8; 8],
    },
    /// The SDK's spans (recording, or not when the SDK's sampler dropped
    /// the request or the pipeline was shut down).
    Sdk(Box<Active>),
}

#[derive(Debug)]
struct Active {
    traces: Traces,
    server: Span,
    client: Option<Span>,
}

/// What the upstream call is.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamCall<'a> {
    /// The request's method (the client span is named after it).
    pub method: &'a str,
    /// `completions` or `admin`: `scopegate.upstream`.
    pub upstream: &'static str,
    /// The upstream's host: `server.address`.
    pub address: &'a str,
    /// The upstream's port: `server.port`.
    pub port: u16,
}

/// How the upstream call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// A response with this status; its last byte has arrived (or the
    /// transfer stopped).
    Status(u16),
    /// No response: `connect`, `timeout`, `reset` or `other` (the
    /// `kind` of `scopegate_upstream_errors_total`), as `error.type`.
    Failed(&'static str),
}

/// The request's facts, given once when it ends.
#[derive(Clone, Copy, Debug)]
pub struct ServerFacts<'a> {
    /// The method as received.
    pub method: &'a str,
    /// The path; anything from a `?` on is cut off here too.
    pub path: &'a str,
    /// The matched route's pattern, if one matched.
    pub route: Option<&'a str>,
    /// The status sent to the client.
    pub status: u16,
    /// `1.0`, `1.1` or `2`.
    pub protocol_version: &'static str,
    /// The client's IP address.
    pub client_address: Option<IpAddr>,
    /// The port the request arrived on.
    pub server_port: Option<u16>,
    /// The request id (`x-request-id`).
    pub request_id: &'a str,
    /// `data` or `control`.
    pub plane: Option<&'static str>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `ok` or the error code.
    pub code: &'a str,
    /// The key's id, when a key was recognised.
    pub key_id: Option<&'a str>,
    /// The key's type.
    pub key_type: Option<&'static str>,
    /// The key's organisation.
    pub organisation_id: Option<&'a str>,
    /// The canonical workspace id, when the request names one.
    pub workspace_id: Option<&'a str>,
}

/// Which counted API a request used, for the GenAI attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenAiApi {
    /// `/v1/chat/completions` (and routes metered like it).
    ChatCompletions,
    /// `/v1/completions`.
    Completions,
    /// `/v1/embeddings`.
    Embeddings,
    /// `/v1/responses`.
    Responses,
    /// Anthropic's `/v1/messages`.
    Messages,
}

impl GenAiApi {
    /// From a route's `meter` name: `chat`, `completions`, `embeddings`,
    /// `responses` or `messages`.
    pub fn from_meter(meter: &str) -> Option<GenAiApi> {
        match meter {
            "chat" => Some(GenAiApi::ChatCompletions),
            "completions" => Some(GenAiApi::Completions),
            "embeddings" => Some(GenAiApi::Embeddings),
            "responses" => Some(GenAiApi::Responses),
            "messages" => Some(GenAiApi::Messages),
            _ => None,
        }
    }

    /// `gen_ai.operation.name`.
    pub fn operation_name(self) -> &'static str {
        match self {
            GenAiApi::ChatCompletions | GenAiApi::Responses | GenAiApi::Messages => "chat",
            GenAiApi::Completions => "text_completion",
            GenAiApi::Embeddings => "embeddings",
        }
    }

    /// `gen_ai.provider.name`.
    pub fn provider_name(self) -> &'static str {
        match self {
            GenAiApi::Messages => "anthropic",
            _ => "openai",
        }
    }
}

/// Where the usage of a counted request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream reported it.
    Reported,
    /// The proxy estimated it.
    Estimated,
}

impl UsageSource {
    fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// A counted request's model and usage, set on its server span at the end.
#[derive(Clone, Copy, Debug)]
pub struct GenAiFacts<'a> {
    /// The API.
    pub api: GenAiApi,
    /// The model the request named.
    pub request_model: Option<&'a str>,
    /// The model the response named.
    pub response_model: Option<&'a str>,
    /// The requested maximum output tokens.
    pub max_tokens: Option<u64>,
    /// Input tokens counted.
    pub input_tokens: Option<u64>,
    /// Output tokens counted.
    pub output_tokens: Option<u64>,
    /// Reported or estimated.
    pub usage_source: Option<UsageSource>,
    /// The cost in USD, when the model is priced.
    pub cost_usd: Option<f64>,
    /// For a stream: milliseconds from the request to its first event.
    pub first_event_ms: Option<u64>,
}

/// The HTTP methods kept as they are; any other is `_OTHER`, as the HTTP
/// semantic conventions say (a client's invented method must not name
/// spans).
fn known_method(method: &str) -> Option<&'static str> {
    Some(match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        "QUERY" => "QUERY",
        _ => return None,
    })
}

/// Most attributes a server span gets (HTTP, scopegate and GenAI ones).
const SERVER_ATTRIBUTES: usize = 28;
/// Most attributes a client span gets.
const CLIENT_ATTRIBUTES: usize = 5;

fn int(v: u64) -> Value {
    Value::I64(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Traces {
    /// Begins a request's server span: a child of the client's span when
    /// `incoming` has a valid `traceparent` (whose sampled flag decides),
    /// else a new trace sampled at the configured ratio. Its start time is
    /// now.
    pub fn begin(&self, incoming: &Incoming) -> RequestSpan {
        let state = match self.unsampled(incoming) {
            Some(ids) => ids,
            None => State::Sdk(Box::new(self.begin_sdk(incoming))),
        };
        RequestSpan {
            state,
            tracestate: incoming.tracestate.clone(),
            client_sent: incoming.present,
        }
    }

    /// The SDK's server span, as the SDK's sampler decides.
    fn begin_sdk(&self, incoming: &Incoming) -> Active {
        let tracer = &self.inner.tracer;
        // Room for every attribute `finish` sets, so a recorded span's list
        // never grows by copying.
        let builder = tracer
            .span_builder("HTTP")
            .with_kind(SpanKind::Server)
            .with_attributes(Vec::with_capacity(SERVER_ATTRIBUTES));
        let server = match incoming.parent {
            Some(p) => {
                let flags = if p.sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                let remote =
                    SpanContext::new(p.trace_id, p.parent_id, flags, true, TraceState::NONE);
                builder.start_with_context(tracer, &Context::new().with_remote_span_context(remote))
            }
            None => builder.start_with_context(tracer, &Context::new()),
        };
        Active {
            traces: self.clone(),
            server,
            client: None,
        }
    }

    /// The ids of a request the sampler is bound to drop (the SDK's
    /// parent-based sampler follows a client's unsampled flag, and a ratio
    /// of 0 samples no new trace), made without asking the SDK; `None`
    /// when the SDK decides (or the pipeline is shut down).
    fn unsampled(&self, incoming: &Incoming) -> Option<State> {
        let ids = RandomIdGenerator::default();
        let trace_id = match incoming.parent {
            Some(p) if !p.sampled => p.trace_id,
            None if self.inner.ratio <= 0.0 => ids.new_trace_id(),
            _ => return None,
        };
        if self.inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        Some(State::Unsampled {
            trace_id: trace_id.to_bytes(),
            span_id: ids.new_span_id().to_bytes(),
        })
    }
}

impl RequestSpan {
    /// Tracing is off: nothing is recorded and nothing is sent upstream
    /// (a client's `traceparent` passes like any header).
    pub fn off() -> RequestSpan {
        RequestSpan::default()
    }

    /// True when tracing is on for this request (recorded or not): the
    /// proxy then replaces the client's `traceparent` upstream.
    pub fn is_on(&self) -> bool {
        !matches!(self.state, State::Off)
    }

    /// True when the client sent `traceparent` or `tracestate` lines,
    /// which the proxy removes before sending its own.
    pub fn client_sent(&self) -> bool {
        self.client_sent
    }

    /// True when the request's spans are recorded and exported.
    pub fn is_recording(&self) -> bool {
        matches!(&self.state, State::Sdk(a) if a.server.is_recording())
    }

    /// The trace id as 32 hex digits, for the access log: only for a
    /// recorded request, whose trace a backend will have.
    pub fn trace_id(&self) -> Option<String> {
        let State::Sdk(a) = &self.state else {
            return None;
        };
        if !a.server.is_recording() {
            return None;
        }
        Some(trace_id_hex(a.server.span_context().trace_id()))
    }

    /// The client's `tracestate` to send upstream beside the new
    /// `traceparent` (only when the client's `traceparent` was valid).
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Begins the upstream call's CLIENT span and returns the `traceparent`
    /// to send upstream, naming it (for a request that is not recorded, it
    /// names the server span's ids with the sampled flag off, so the
    /// upstream follows the decision). `None` when tracing is off (or the
    /// pipeline was already shut down). A second
    /// call (a retried connection) ends the previous client span as failed.
    pub fn start_upstream(&mut self, call: &UpstreamCall<'_>) -> Option<http::HeaderValue> {
        let a = match &mut self.state {
            State::Off => return None,
            State::Unsampled { trace_id, span_id } => {
                return Some(traceparent_value(
                    TraceId::from_bytes(*trace_id),
                    SpanId::from_bytes(*span_id),
                    false,
                ))
            }
            State::Sdk(a) => a,
        };
        let server_cx = a.server.span_context().clone();
        if !server_cx.is_valid() {
            // Begun after shutdown: no ids to send.
            return None;
        }
        if !a.server.is_recording() {
            return Some(traceparent_value(
                server_cx.trace_id(),
                server_cx.span_id(),
                server_cx.is_sampled(),
            ));
        }
        if let Some(mut previous) = a.client.take() {
            previous.set_status(Status::error("other"));
            previous.set_attribute(KeyValue::new("error.type", "retried"));
            a.traces.inner.end(previous);
        }
        let tracer = &a.traces.inner.tracer;
        let name = known_method(call.method).unwrap_or("HTTP");
        // The server span is this span's local parent.
        let parent = SpanContext::new(
            server_cx.trace_id(),
            server_cx.span_id(),
            server_cx.trace_flags(),
            false,
            TraceState::NONE,
        );
        let mut attributes = Vec::with_capacity(CLIENT_ATTRIBUTES);
        attributes.extend([
            KeyValue::new("server.address", call.address.to_string()),
            KeyValue::new("server.port", i64::from(call.port)),
            KeyValue::new("scopegate.upstream", call.upstream),
        ]);
        let mut client = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &Context::new().with_remote_span_context(parent));
        let cx = client.span_context().clone();
        if !client.is_recording() {
            client.end();
            return Some(traceparent_value(
                server_cx.trace_id(),
                server_cx.span_id(),
                server_cx.is_sampled(),
            ));
        }
        a.client = Some(client);
        Some(traceparent_value(
            cx.trace_id(),
            cx.span_id(),
            cx.is_sampled(),
        ))
    }

    /// Ends the upstream call's span: its status, or why there was none.
    /// Status is Error for a 4xx or 5xx answer and for no answer.
    pub fn end_upstream(&mut self, outcome: UpstreamOutcome) {
        let State::Sdk(a) = &mut self.state else {
            return;
        };
        let Some(mut client) = a.client.take() else {
            return;
        };
        match outcome {
            UpstreamOutcome::Status(status) => {
                client.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 400 {
                    client.set_attribute(KeyValue::new("error.type", status_text(status)));
                    client.set_status(Status::error(""));
                }
            }
            UpstreamOutcome::Failed(kind) => {
                client.set_attribute(KeyValue::new("error.type", kind));
                client.set_status(Status::error(kind));
            }
        }
        a.traces.inner.end(client);
    }

    /// Ends the request: sets the server span's name and attributes (and
    /// the GenAI ones for a counted request) and hands it to the export
    /// queue. An upstream span still open ends now, as failed if no status
    /// was seen. Cheap and non-blocking; a no-op when tracing is off or the
    /// request is not recorded.
    pub fn finish(self, facts: &ServerFacts<'_>, genai: Option<&GenAiFacts<'_>>) {
        let State::Sdk(mut a) = self.state else {
            return;
        };
        if let Some(mut client) = a.client.take() {
            client.set_attribute(KeyValue::new("error.type", "other"));
            client.set_status(Status::error("other"));
            a.traces.inner.end(client);
        }
        if !a.server.is_recording() {
            return;
        }
        let method = known_method(facts.method);
        let name = match (method, facts.route) {
            (Some(m), Some(r)) => format!("{m} {r}"),
            (Some(m), None) => m.to_string(),
            (None, Some(r)) => format!("HTTP {r}"),
            (None, None) => "HTTP".to_string(),
        };
        a.server.update_name(name);
        let path = match facts.path.find('?') {
            Some(q) => &facts.path[..q],
            None => facts.path,
        };
        let mut attrs: Vec<KeyValue> = Vec::with_capacity(SERVER_ATTRIBUTES);
        match method {
            Some(m) => attrs.push(KeyValue::new("http.request.method", m)),
            None => {
                attrs.push(KeyValue::new("http.request.method", "_OTHER"));
                attrs.push(KeyValue::new(
                    "http.request.method_original",
                    facts.method.to_string(),
                ));
            }
        }
        attrs.push(KeyValue::new("url.path", path.to_string()));
        if let Some(route) = facts.route {
            attrs.push(KeyValue::new("http.route", route.to_string()));
        }
        attrs.push(KeyValue::new(
            "http.response.status_code",
            i64::from(facts.status),
        ));
        attrs.push(KeyValue::new(
            "network.protocol.version",
            facts.protocol_version,
        ));
        if let Some(ip) = facts.client_address {
            attrs.push(KeyValue::new("client.address", ip.to_string()));
        }
        if let Some(port) = facts.server_port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        attrs.push(KeyValue::new(
            "scopegate.request_id",
            facts.request_id.to_string(),
        ));
        if let Some(plane) = facts.plane {
            attrs.push(KeyValue::new("scopegate.plane", plane));
        }
        attrs.push(KeyValue::new("scopegate.decision", facts.decision));
        attrs.push(KeyValue::new("scopegate.code", facts.code.to_string()));
        let optional = [
            ("scopegate.key.id", facts.key_id),
            ("scopegate.organisation.id", facts.organisation_id),
            ("scopegate.workspace.id", facts.workspace_id),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                attrs.push(KeyValue::new(key, v.to_string()));
            }
        }
        if let Some(t) = facts.key_type {
            attrs.push(KeyValue::new("scopegate.key.type", t));
        }
        if let Some(g) = genai {
            genai_attributes(g, &mut attrs);
        }
        a.server.set_attributes(attrs);
        if facts.status >= 500 {
            a.server.set_status(Status::error(facts.code.to_string()));
        }
        a.traces.inner.end(a.server);
    }
}

fn genai_attributes(g: &GenAiFacts<'_>, attrs: &mut Vec<KeyValue>) {
    attrs.push(KeyValue::new(
        "gen_ai.operation.name",
        g.api.operation_name(),
    ));
    attrs.push(KeyValue::new("gen_ai.provider.name", g.api.provider_name()));
    if let Some(m) = g.request_model {
        attrs.push(KeyValue::new("gen_ai.request.model", m.to_string()));
    }
    if let Some(m) = g.response_model {
        attrs.push(KeyValue::new("gen_ai.response.model", m.to_string()));
    }
    let counts = [
        ("gen_ai.request.max_tokens", g.max_tokens),
        ("gen_ai.usage.input_tokens", g.input_tokens),
        ("gen_ai.usage.output_tokens", g.output_tokens),
        ("scopegate.stream.first_event_ms", g.first_event_ms),
    ];
    for (key, value) in counts {
        if let Some(v) = value {
            attrs.push(KeyValue::new(key, int(v)));
        }
    }
    if let Some(s) = g.usage_source {
        attrs.push(KeyValue::new("scopegate.usage.source", s.as_str()));
    }
    if let Some(c) = g.cost_usd.filter(|c| c.is_finite()) {
        attrs.push(KeyValue::new("scopegate.cost_usd", c));
    }
}

/// `error.type` for an HTTP status: the status code itself, as the HTTP
/// semantic conventions say.
fn status_text(status: u16) -> String {
    status.to_string()
}

#[cfg(test)]
mod tests;
