//! The JSON body reader: collects a non-streamed response body (up to a cap)
//! and, at its end, reads the usage, model and generated text it carries.

use serde::Deserialize;
use serde_json::Value;

use super::extract::{
    generated_in_choices, generated_in_content, generated_in_output, model_of, reported_from_usage,
};
use super::Observed;

/// Bodies larger than this are not read: the response is then estimated.
/// Matches the default `max_data_body_bytes`.
pub const JSON_BODY_CAP: usize = 16 << 20;

/// Collects a JSON response body fed in chunks and reads it at the end.
///
/// Holds at most its cap; a longer body is dropped as soon as it passes the
/// cap and reports nothing.
#[derive(Debug)]
pub struct JsonTap {
    body: Vec<u8>,
    cap: usize,
    over_cap: bool,
}

impl Default for JsonTap {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonTap {
    /// A reader that holds at most [`JSON_BODY_CAP`] bytes.
    pub fn new() -> Self {
        Self::with_cap(JSON_BODY_CAP)
    }

    /// A reader that holds at most `cap` bytes.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            body: Vec::new(),
            cap,
            over_cap: false,
        }
    }

    /// Takes the next piece of the (decoded) body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.over_cap {
            return;
        }
        if self.body.len().saturating_add(chunk.len()) > self.cap {
            self.over_cap = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(chunk);
    }

    /// Reads the body fed so far and forgets it. Malformed JSON, a body over
    /// the cap, or unreadable usage give an [`Observed`] without usage.
    pub fn finish(&mut self) -> Observed {
        let body = std::mem::take(&mut self.body);
        if self.over_cap {
            return Observed::default();
        }
        read_body(&body)
    }
}

/// The members of a response body usage accounting reads; the rest (an
/// embeddings `data` array, say) is skipped without being built.
#[derive(Deserialize)]
struct Body {
    model: Option<Value>,
    usage: Option<Value>,
    /// Chat and completions.
    choices: Option<Value>,
    /// Responses API.
    output: Option<Value>,
    /// Anthropic messages.
    content: Option<Value>,
}

fn read_body(body: &[u8]) -> Observed {
    let Ok(body) = serde_json::from_slice::<Body>(body) else {
        return Observed::default();
    };
    let generated = generated_in_choices(body.choices.as_ref())
        .saturating_add(generated_in_output(body.output.as_ref()))
        .saturating_add(generated_in_content(body.content.as_ref()));
    Observed {
        reported: body.usage.as_ref().and_then(reported_from_usage),
        model: model_of(body.model.as_ref()),
        generated_bytes: generated,
    }
}

#[cfg(test)]
mod tests;
