//! The JSON body reader: reads a non-streamed response body as it passes,
//! in constant memory whatever its size or nesting, and at its end tells
//! the usage, model and generated text it carried.

use super::scan::{Kind, Scanner, Shape, CHOICES, CONTENT, OUTPUT, TOP};
use super::Observed;

/// Reads a JSON response body fed in chunks.
#[derive(Debug, Clone)]
pub struct JsonTap {
    scanner: Scanner,
}

impl Default for JsonTap {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonTap {
    /// A reader for one body.
    pub fn new() -> Self {
        JsonTap {
            scanner: Scanner::new(Shape::Body),
        }
    }

    /// Takes the next piece of the (decoded) body.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.scanner.feed(chunk);
    }

    /// What the body fed so far revealed, and forgets it. A body that is
    /// not one whole JSON value (malformed, truncated, trailing bytes)
    /// reveals nothing; a malformed or invalid `usage` reveals no usage.
    pub fn finish(&mut self) -> Observed {
        let whole = self.scanner.finish();
        self.scanner.reset();
        if !whole {
            return Observed::default();
        }
        let found = self.scanner.findings();
        let reported = match found.usage_kind[TOP] {
            Kind::Object => found.usage[TOP].reported(),
            _ => None,
        };
        Observed {
            reported,
            reported_input: None,
            model: found.models[TOP].model(),
            generated_bytes: found.text[CHOICES]
                .saturating_add(found.text[OUTPUT])
                .saturating_add(found.text[CONTENT]),
        }
    }
}

#[cfg(test)]
mod tests;
