//! The pingora layer: the proxy hooks, the connection guard, TLS listeners,
//! upstream peers, the access log and the server wiring. Thin glue around
//! the decision; may import `ops`, `config`, `state`, `decision`,
//! `identity`, `limits` and `diag`.

pub mod access_log;
pub mod background;
pub mod conn_guard;
pub mod proxy;
pub mod request_id;
pub mod server;
pub mod tls_listen;
pub mod upstream;
