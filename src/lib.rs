//! scopegate: a pingora reverse proxy that enforces Portkey-style API-key
//! scopes in front of an LLM completions service and an admin service.
//!
//! The decision is a pure function ([`policy::decide`]) from request facts,
//! the route table and a keys [`keys::Snapshot`]; the pingora layer
//! ([`proxy`]) only gathers facts, asks, and answers or forwards.

pub mod access_log;
pub mod cli;
pub mod config;
pub mod conn_guard;
pub mod demo;
pub mod demo_cmd;
pub mod diag;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod keys;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod request;
pub mod request_id;
pub mod routes;
pub mod scopes;
pub mod server;
pub mod state;
pub mod tls;
pub mod tls_listen;
pub mod usage;
