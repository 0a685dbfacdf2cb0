//! OpenTelemetry traces: one SERVER span per request and one CLIENT span
//! per upstream call, exported over OTLP (HTTP/protobuf or gRPC) in
//! batches, off the request path.
//!
//! - [`config`]: the server config's `tracing` block and the standard
//!   `OTEL_*` variables, turned into [`TraceSettings`] (it lives in the
//!   config room, `crate::config::traces`, which the server config reads).
//! - [`pipeline`]: [`Traces`], the running exporter: a bounded queue, a
//!   batch every 5 s at least, its own threads, drops and exports counted
//!   in [`TraceCounters`], a shutdown flush of at most 2 s.
//! - [`span`]: [`RequestSpan`], what the gateway calls per request.
//! - [`context`]: W3C `traceparent` / `tracestate`.
//!
//! Tracing off costs nothing per request ([`RequestSpan::off`]); a request
//! that is not sampled costs its ids and the `traceparent` sent upstream.

pub use crate::config::traces as config;
pub mod context;
pub mod pipeline;
pub mod span;

pub use config::{BatchOptions, Problem, Protocol, TraceSettings, TracingConfig};
pub use context::{format_traceparent, parse_traceparent, Incoming, TraceParent};
pub use pipeline::{register_counters, StartError, TraceCounters, Traces};
pub use span::{
    GenAiApi, GenAiFacts, RequestSpan, ServerFacts, UpstreamCall, UpstreamOutcome, UsageSource,
};
