//! The decision, pure: the route table, readers of request parts, the
//! decision itself ([`decide::decide`]) as its steps, and the error codes and
//! shapes (the one place a denial becomes a body). No I/O, nothing of
//! pingora; may import `identity`, `limits` and `diag`.

pub mod decide;
pub mod errors;
pub mod headers;
pub mod key_view;
pub mod request;
pub mod routes;
