//! Usage accounting (SPEC 9).

pub mod response;
