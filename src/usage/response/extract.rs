//! Reading usage, model and generated text out of parsed response JSON: the
//! vocabulary shared by the body reader and the stream reader.

use serde_json::{Map, Value};

use super::Reported;

/// The usage an OpenAI-style (`prompt_tokens`/`completion_tokens`) or
/// Responses/Anthropic-style (`input_tokens`/`output_tokens`) `usage` object
/// reports. `None` unless the input count is a non-negative integer and every
/// other count present is one too.
pub(super) fn reported_from_usage(usage: &Value) -> Option<Reported> {
    let usage = usage.as_object()?;
    if usage.contains_key("prompt_tokens") {
        // Embeddings report no completion tokens: they generate none.
        Some(Reported {
            input: required(usage, "prompt_tokens")?,
            output: optional(usage, "completion_tokens")?,
        })
    } else if usage.contains_key("input_tokens") {
        // Anthropic counts cache writes and reads apart from `input_tokens`;
        // the Responses API includes cached tokens in it and has neither key.
        let input = required(usage, "input_tokens")?
            .saturating_add(optional(usage, "cache_creation_input_tokens")?)
            .saturating_add(optional(usage, "cache_read_input_tokens")?);
        Some(Reported {
            input,
            output: optional(usage, "output_tokens")?,
        })
    } else {
        None
    }
}

/// A count that must be present and a non-negative integer.
pub(super) fn required(object: &Map<String, Value>, key: &str) -> Option<u64> {
    object.get(key).and_then(Value::as_u64)
}

/// A count that may be absent or null (0), else must be a non-negative integer.
pub(super) fn optional(object: &Map<String, Value>, key: &str) -> Option<u64> {
    match object.get(key) {
        None | Some(Value::Null) => Some(0),
        Some(value) => value.as_u64(),
    }
}

/// A non-empty string `model`.
pub(super) fn model_of(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(model)) if !model.is_empty() => Some(model.clone()),
        _ => None,
    }
}

/// Bytes of a string value; 0 for anything else.
pub(super) fn text_len(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(text)) => text.len() as u64,
        _ => 0,
    }
}

/// The elements of an array value; none for anything else.
pub(super) fn elements(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

/// Generated text in `choices` of a chat or completions body or chunk:
/// `message` (body) or `delta` (chunk) content and tool-call arguments, and
/// completions' `text`.
pub(super) fn generated_in_choices(choices: Option<&Value>) -> u64 {
    let mut bytes = 0u64;
    for choice in elements(choices) {
        bytes = bytes.saturating_add(text_len(choice.get("text")));
        for message in [choice.get("message"), choice.get("delta")]
            .into_iter()
            .flatten()
        {
            bytes = bytes.saturating_add(text_len(message.get("content")));
            for call in elements(message.get("tool_calls")) {
                let arguments = call.get("function").and_then(|f| f.get("arguments"));
                bytes = bytes.saturating_add(text_len(arguments));
            }
            // The legacy single function call.
            let arguments = message
                .get("function_call")
                .and_then(|f| f.get("arguments"));
            bytes = bytes.saturating_add(text_len(arguments));
        }
    }
    bytes
}

/// Generated text in a Responses API body's `output`: `content[].text` of
/// messages and `arguments` of function calls.
pub(super) fn generated_in_output(output: Option<&Value>) -> u64 {
    let mut bytes = 0u64;
    for item in elements(output) {
        bytes = bytes.saturating_add(text_len(item.get("arguments")));
        for part in elements(item.get("content")) {
            bytes = bytes.saturating_add(text_len(part.get("text")));
        }
    }
    bytes
}

/// Generated text in an Anthropic message's `content[].text`.
pub(super) fn generated_in_content(content: Option<&Value>) -> u64 {
    elements(content).iter().fold(0u64, |bytes, block| {
        bytes.saturating_add(text_len(block.get("text")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reported(usage: Value) -> Option<Reported> {
        reported_from_usage(&usage)
    }

    #[test]
    fn openai_usage_reads_prompt_and_completion_tokens() {
        let usage = json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17});
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 12,
                output: 5
            })
        );
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        let usage = json!({"prompt_tokens": 8, "total_tokens": 8});
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 8,
                output: 0
            })
        );
    }

    #[test]
    fn anthropic_cache_tokens_add_to_input() {
        let usage = json!({"input_tokens": 10, "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 1000, "output_tokens": 7});
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 1110,
                output: 7
            })
        );
    }

    #[test]
    fn null_cache_tokens_count_as_zero() {
        let usage =
            json!({"input_tokens": 10, "cache_creation_input_tokens": null, "output_tokens": 7});
        assert_eq!(
            reported(usage),
            Some(Reported {
                input: 10,
                output: 7
            })
        );
    }

    #[test]
    fn non_integer_counts_report_nothing() {
        for usage in [
            json!({"prompt_tokens": "12", "completion_tokens": 5}),
            json!({"prompt_tokens": 12, "completion_tokens": 5.5}),
            json!({"prompt_tokens": -1, "completion_tokens": 5}),
            json!({"prompt_tokens": null, "completion_tokens": 5}),
            json!({"input_tokens": 1, "output_tokens": [1]}),
            json!({"input_tokens": 1, "cache_read_input_tokens": "x", "output_tokens": 1}),
            json!({"total_tokens": 3}),
            json!(null),
            json!([1, 2]),
        ] {
            assert_eq!(reported(usage.clone()), None, "{usage}");
        }
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let usage =
            json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 5, "output_tokens": 1});
        assert_eq!(reported(usage).map(|r| r.input), Some(u64::MAX));
    }
}
