//! The response side of usage accounting: what an upstream response reveals
//! about the tokens it spent, read without I/O and in constant memory.
//!
//! [`scan`] is a push JSON scanner that finds the few members that matter in
//! a document of any size or nesting depth; [`json::JsonTap`] reads a JSON
//! body with it, [`sse::SseTap`] reads (and in strip mode edits) a
//! `text/event-stream`, [`decode::Decoder`] undoes a `Content-Encoding`
//! first, [`reader::BodyReader`] puts them together for one response, and
//! [`settle::settle`] turns what was observed into the charge that replaces
//! the reservation. Nothing here imports pingora.

pub mod decode;
mod extract;
pub mod json;
pub mod reader;
mod scan;
pub mod settle;
pub mod sse;

pub use decode::{DecodeError, Decoder};
pub use json::JsonTap;
pub use reader::BodyReader;
pub use settle::{settle, Charge};
pub use sse::SseTap;

/// The longest `model` a response may name and have it read (longer ones
/// are ignored: the request's model is priced).
pub const MODEL_CAP: usize = scan::MODEL_CAP;
/// The longest event type (`type` member or `event:` field) that can name a
/// known kind of event.
pub const KIND_CAP: usize = scan::KIND_CAP;

/// Token counts the upstream reported for one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// Prompt tokens, all of them: cached ones included (Anthropic: the sum
    /// of `input_tokens`, cache creation and cache reads).
    pub input: u64,
    /// Generated tokens.
    pub output: u64,
    /// Of `input`, the tokens read from a cache (OpenAI `cached_tokens`,
    /// Anthropic `cache_read_input_tokens`).
    pub cached_input: u64,
    /// Of `input`, the tokens written to a cache (Anthropic
    /// `cache_creation_input_tokens`; 0 for OpenAI).
    pub cache_write: u64,
}

/// What one response revealed: reported usage if any, the model it names, and
/// the bytes of generated text, for the estimate when no usage was reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The usage the upstream reported; `None` when it reported none, or
    /// none that could be read (malformed, truncated).
    pub reported: Option<Reported>,
    /// Without `reported`: the input the upstream reported before the
    /// answer was cut (an Anthropic stream's `message_start`), with an
    /// output of 0.
    pub reported_input: Option<Reported>,
    /// The top-level `model` the response names (for pricing).
    pub model: Option<String>,
    /// Bytes (UTF-8) of generated text seen: message content, completion
    /// text, tool-call arguments.
    pub generated_bytes: u64,
}

/// For the fuzz harness: whether the streaming scanner reads `data` as one
/// whole JSON value, the way an event's data is read.
#[doc(hidden)]
pub fn scans_as_json(data: &[u8]) -> bool {
    let mut scanner = scan::Scanner::new(scan::Shape::Event);
    scanner.feed(data);
    scanner.finish()
}

#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;
