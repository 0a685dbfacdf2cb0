//! Usage accounting of SPEC 9, the request side: pure functions, no I/O and
//! nothing from pingora. What a request names, costs and reserves:
//!
//! - [`models`]: model patterns (`*` globs) and allowlists (SPEC 9.2);
//! - [`period`]: the UTC period a usage limit is counted in (SPEC 9, `periodic_reset`);
//! - [`price`]: `model_prices` look-up and cost in US dollars (SPEC 9.3);
//! - [`estimate`]: which routes are counted, need a model or hide it, and the
//!   reservation estimate of a request (SPEC 9.2, 9.3);
//! - [`body`]: readers of a request body and query — the JSON facts, the
//!   multipart `model` fields, `model` query parameters — and the
//!   `stream_options.include_usage` injection (SPEC 9.1, 9.2, 9.4);
//! - [`response`]: the response side — usage read from JSON bodies and SSE
//!   streams (any `Content-Encoding`), the injected usage chunk removed, and
//!   settlement (SPEC 9.3, 9.4).
//!
//! May import `crate::keys::limits`, `crate::request` and `crate::routes` (the
//! inference route list); nothing else of the crate.

pub mod body;
pub mod estimate;
pub mod models;
pub mod period;
pub mod price;
pub mod response;
