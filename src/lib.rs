//! scopegate: a pingora reverse proxy that enforces Portkey-style API-key
//! scopes in front of an LLM completions service and an admin service.
//!
//! The crate is a house of rooms, each a folder, layered: a room imports only
//! rooms below it (docs/architecture.md draws the map).
//!
//! - [`cli`]: the command line;
//! - [`gateway`]: the pingora layer, thin glue around the decision;
//! - [`ops`]: metrics, the file watcher, the keys reloader, traces;
//! - [`config`]: the server config;
//! - [`state`]: the counter store (local or Redis);
//! - [`decision`]: the pure decision ([`decision::decide::decide`]) from
//!   request facts, the route table and a keys snapshot;
//! - [`identity`]: who is calling (scopes, API keys, identity tokens);
//! - [`limits`]: rate limits, usage limits, prices, usage readers (pure);
//! - [`diag`]: `FILE:LINE:COL` diagnostics for the files operators write.

pub mod cli;
pub mod config;
pub mod decision;
pub mod diag;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod limits;
pub mod ops;
pub mod state;
