//! The limits a key carries and how a request and its answer are measured
//! against them, pure: no I/O, nothing of pingora. May import `diag`.
//!
//! - [`rate`]: request rate limits (`RateLimit`, `Quota`), the reference GCRA;
//! - [`types`]: the usage-limit and price types of the keys file (`Limits`,
//!   `UsageLimit`, `Price`, …) and [`Scope`], whose limit a counter is;
//! - [`models`]: model patterns (`*` globs) and allowlists;
//! - [`period`]: the UTC period a usage limit is counted in (`periodic_reset`);
//! - [`price`]: `model_prices` look-up and cost in US dollars;
//! - [`estimate`]: which routes are metered ([`UsageApi`]), need a model or
//!   hide it, and the reservation estimate of a request;
//! - [`body`]: readers of a request body and query — the JSON facts, the
//!   multipart `model` fields, `model` query parameters — and the
//!   `stream_options.include_usage` injection;
//! - [`percent`]: percent-decoding of query components;
//! - [`response`]: the response side — usage read from JSON bodies and SSE
//!   streams (any `Content-Encoding`), the injected usage chunk removed, and
//!   settlement;
//! - [`view`]: the state of a subject's limits as the store reads it, for a
//!   key's own view.

pub mod body;
pub mod estimate;
pub mod models;
pub mod percent;
pub mod period;
pub mod price;
pub mod rate;
pub mod response;
pub mod types;
pub mod view;

pub use estimate::UsageApi;
pub use types::{
    Limits, Price, PriceTable, RateKind, Refusal, Reset, Scope, TokenRate, UsageKind, UsageLimit,
};
