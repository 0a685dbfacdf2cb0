//! Operations, the parts an operator runs the proxy with beside the request
//! path itself: metrics and the `/metrics` listener, the file watcher, the
//! keys reloader, traces. May import `config`, `state`, `decision`,
//! `identity`, `limits` and `diag`.

pub mod idle;
pub mod metrics;
pub mod reload;
pub mod signals;
pub mod tokens;
pub mod traces;
pub mod watch;
