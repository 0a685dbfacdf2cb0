//! What a `usage` object reports, once the scanner has read its counts: the
//! vocabulary shared by the body reader and the stream reader.

use super::Reported;

/// One count of a `usage` object as the last occurrence of its key left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Count {
    /// The key is not there.
    #[default]
    Absent,
    /// `null`.
    Null,
    /// A non-negative integer that fits in 64 bits.
    Valid(u64),
    /// Anything else: a string, a fraction, a negative or too large number…
    Invalid,
}

impl Count {
    /// A count that must be present and a non-negative integer.
    fn required(self) -> Option<u64> {
        match self {
            Count::Valid(n) => Some(n),
            _ => None,
        }
    }

    /// A count that may be absent or null (0), else must be a non-negative
    /// integer.
    fn optional(self) -> Option<u64> {
        match self {
            Count::Absent | Count::Null => Some(0),
            Count::Valid(n) => Some(n),
            Count::Invalid => None,
        }
    }

    /// A detail that never spoils the usage it sits in: anything but a valid
    /// count is 0.
    fn lenient(self) -> u64 {
        match self {
            Count::Valid(n) => n,
            _ => 0,
        }
    }
}

/// The counts of a `usage` object the scanner keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Prompt,
    Completion,
    Input,
    Output,
    CacheCreation,
    CacheRead,
    /// `prompt_tokens_details.cached_tokens` (OpenAI chat, completions).
    PromptCached,
    /// `input_tokens_details.cached_tokens` (Responses API).
    InputCached,
}

/// The counts of one `usage` object, each as its last occurrence left it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct UsageCounts {
    prompt: Count,
    completion: Count,
    input: Count,
    output: Count,
    cache_creation: Count,
    cache_read: Count,
    prompt_cached: Count,
    input_cached: Count,
}

impl UsageCounts {
    pub(super) fn set(&mut self, field: Field, count: Count) {
        *self.slot(field) = count;
    }

    fn slot(&mut self, field: Field) -> &mut Count {
        match field {
            Field::Prompt => &mut self.prompt,
            Field::Completion => &mut self.completion,
            Field::Input => &mut self.input,
            Field::Output => &mut self.output,
            Field::CacheCreation => &mut self.cache_creation,
            Field::CacheRead => &mut self.cache_read,
            Field::PromptCached => &mut self.prompt_cached,
            Field::InputCached => &mut self.input_cached,
        }
    }

    /// The usage an OpenAI-style (`prompt_tokens`/`completion_tokens`) or
    /// Responses/Anthropic-style (`input_tokens`/`output_tokens`) object
    /// reports. `None` unless the input count is a non-negative integer and
    /// every other count present is one too (cached-token details are
    /// read leniently: a bad one counts as 0).
    pub(super) fn reported(&self) -> Option<Reported> {
        if self.prompt != Count::Absent {
            // Embeddings report no completion tokens: they generate none.
            let input = self.prompt.required()?;
            Some(Reported {
                input,
                output: self.completion.optional()?,
                cached_input: self.prompt_cached.lenient().min(input),
                cache_write: 0,
            })
        } else if self.input != Count::Absent {
            // Anthropic counts cache writes and reads apart from
            // `input_tokens`; the Responses API includes cached tokens in it
            // and reports them in `input_tokens_details`.
            let uncached = self.input.required()?;
            let written = self.cache_creation.optional()?;
            let read = self.cache_read.optional()?;
            let input = uncached.saturating_add(written).saturating_add(read);
            let cached = read.saturating_add(self.input_cached.lenient());
            Some(Reported {
                input,
                output: self.output.optional()?,
                cached_input: cached.min(input - written),
                cache_write: written,
            })
        } else {
            None
        }
    }
}

/// Anthropic splits a stream's usage: `message_start` carries the input,
/// `message_delta` the cumulative output (and, in newer versions, the input
/// again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct AnthropicUsage {
    input: Option<u64>,
    cache_creation: u64,
    cache_read: u64,
    output: Option<u64>,
}

impl AnthropicUsage {
    /// `message_start`'s `message.usage`: taken only when its input count
    /// and cache counts are all valid.
    pub(super) fn start(&mut self, usage: &UsageCounts) {
        if let (Some(input), Some(creation), Some(read)) = (
            usage.input.required(),
            usage.cache_creation.optional(),
            usage.cache_read.optional(),
        ) {
            self.input = Some(input);
            self.cache_creation = creation;
            self.cache_read = read;
        }
    }

    /// `message_delta`'s `usage`: each valid count replaces the one before.
    pub(super) fn delta(&mut self, usage: &UsageCounts) {
        if let Some(output) = usage.output.required() {
            self.output = Some(output);
        }
        if let Some(input) = usage.input.required() {
            self.input = Some(input);
        }
        if let Some(creation) = usage.cache_creation.required() {
            self.cache_creation = creation;
        }
        if let Some(read) = usage.cache_read.required() {
            self.cache_read = read;
        }
    }

    /// The input as reported so far, with an output of 0: what a stream cut
    /// before `message_delta` still told.
    pub(super) fn input(&self) -> Option<Reported> {
        let input = self
            .input?
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read);
        Some(Reported {
            input,
            output: 0,
            cached_input: self.cache_read.min(input - self.cache_creation),
            cache_write: self.cache_creation,
        })
    }

    /// Usage only once both halves arrived.
    pub(super) fn reported(&self) -> Option<Reported> {
        let output = self.output?;
        self.input().map(|r| Reported { output, ..r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::response::JsonTap;

    /// The usage a body whose `usage` member is `usage` reports.
    fn reported(usage: &str) -> Option<Reported> {
        let mut tap = JsonTap::new();
        tap.feed(format!(r#"{{"usage":{usage}}}"#).as_bytes());
        tap.finish().reported
    }

    fn plain(input: u64, output: u64) -> Option<Reported> {
        Some(Reported {
            input,
            output,
            cached_input: 0,
            cache_write: 0,
        })
    }

    #[test]
    fn openai_usage_reads_prompt_and_completion_tokens() {
        let usage = r#"{"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}"#;
        assert_eq!(reported(usage), plain(12, 5));
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        assert_eq!(
            reported(r#"{"prompt_tokens": 8, "total_tokens": 8}"#),
            plain(8, 0)
        );
    }

    #[test]
    fn anthropic_cache_tokens_add_to_input_and_are_told_apart() {
        let usage = r#"{"input_tokens": 10, "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000, "output_tokens": 7}"#;
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 1110,
                output: 7,
                cached_input: 1000,
                cache_write: 100
            })
        );
    }

    #[test]
    fn openai_cached_tokens_are_part_of_the_input() {
        let usage = r#"{"prompt_tokens": 100, "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0}}"#;
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 100,
                output: 5,
                cached_input: 64,
                cache_write: 0
            })
        );
        let usage = r#"{"input_tokens": 36, "input_tokens_details": {"cached_tokens": 32},
            "output_tokens": 87}"#;
        assert_eq!(reported(usage).map(|r| r.cached_input), Some(32));
    }

    #[test]
    fn a_bad_cached_detail_counts_as_none_and_never_exceeds_the_input() {
        for details in [
            r#"{"cached_tokens": "64"}"#,
            r#"{"cached_tokens": -1}"#,
            r#"null"#,
            r#"[64]"#,
        ] {
            let usage = format!(
                r#"{{"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {details}}}"#
            );
            assert_eq!(reported(&usage), plain(10, 1), "{details}");
        }
        let usage = r#"{"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 99}}"#;
        assert_eq!(reported(usage).map(|r| r.cached_input), Some(10));
    }

    #[test]
    fn null_cache_tokens_count_as_zero() {
        let usage =
            r#"{"input_tokens": 10, "cache_creation_input_tokens": null, "output_tokens": 7}"#;
        assert_eq!(reported(usage), plain(10, 7));
    }

    #[test]
    fn non_integer_counts_report_nothing() {
        for usage in [
            r#"{"prompt_tokens": "12", "completion_tokens": 5}"#,
            r#"{"prompt_tokens": 12, "completion_tokens": 5.5}"#,
            r#"{"prompt_tokens": 12, "completion_tokens": 5e0}"#,
            r#"{"prompt_tokens": -1, "completion_tokens": 5}"#,
            r#"{"prompt_tokens": -0, "completion_tokens": 5}"#,
            r#"{"prompt_tokens": 18446744073709551616, "completion_tokens": 5}"#,
            r#"{"prompt_tokens": null, "completion_tokens": 5}"#,
            r#"{"prompt_tokens": {}, "completion_tokens": 5}"#,
            r#"{"input_tokens": 1, "output_tokens": [1]}"#,
            r#"{"input_tokens": 1, "cache_read_input_tokens": "x", "output_tokens": 1}"#,
            r#"{"total_tokens": 3}"#,
            r#"null"#,
            r#"[1, 2]"#,
        ] {
            assert_eq!(reported(usage), None, "{usage}");
        }
    }

    #[test]
    fn the_last_occurrence_of_a_count_wins() {
        let usage = r#"{"prompt_tokens": "x", "prompt_tokens": 3, "completion_tokens": 1}"#;
        assert_eq!(reported(usage), plain(3, 1));
        let usage = r#"{"prompt_tokens": 3, "prompt_tokens": "x", "completion_tokens": 1}"#;
        assert_eq!(reported(usage), None);
    }

    #[test]
    fn the_largest_count_is_read_and_sums_saturate() {
        let usage = r#"{"input_tokens": 18446744073709551615, "cache_read_input_tokens": 5, "output_tokens": 1}"#;
        assert_eq!(reported(usage).map(|r| r.input), Some(u64::MAX));
    }
}
