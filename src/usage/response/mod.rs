//! The response side of usage accounting (SPEC 9.3, 9.4): what an upstream
//! response reveals about the tokens it spent, read without I/O.
//!
//! [`json::JsonTap`] reads a JSON body, [`sse::SseTap`] reads (and in strip
//! mode edits) a `text/event-stream`, [`decode::Decoder`] undoes a
//! `Content-Encoding` first, and [`settle::settle`] turns what was observed
//! into the charge that replaces the reservation. Nothing here imports pingora.

pub mod decode;
mod extract;
pub mod json;
pub mod settle;
pub mod sse;

pub use decode::{DecodeError, Decoder};
pub use json::JsonTap;
pub use settle::{settle, Charge};
pub use sse::SseTap;

/// Token counts the upstream reported for one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    /// Prompt tokens (Anthropic: including cache creation and cache reads).
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
}

/// What one response revealed: reported usage if any, the model it names, and
/// the bytes of generated text, for the estimate when no usage was reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The usage the upstream reported; `None` when it reported none, or
    /// none that could be read (malformed, truncated, too large).
    pub reported: Option<Reported>,
    /// The top-level `model` the response names (for pricing).
    pub model: Option<String>,
    /// Bytes (UTF-8) of generated text seen: message content, completion
    /// text, tool-call arguments.
    pub generated_bytes: u64,
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
