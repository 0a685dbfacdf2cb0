//! Operations concerns, the parts an operator runs the proxy with beside
//! the request path itself: metrics, watchers, traces.

pub mod traces;
