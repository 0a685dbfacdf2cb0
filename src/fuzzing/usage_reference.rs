//! The reference the streaming usage readers are checked against: the
//! whole-answer readers scopegate used before, which parse a JSON body or
//! an event's data whole with serde_json, kept as they were except for
//! what was added since (cached input, the input a cut Anthropic stream
//! reported, the caps on a model's and an event type's length).
//!
//! Also the baseline of `benches/usage_reader.rs`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::limits::response::{Observed, Reported, KIND_CAP, MODEL_CAP};

/// What a whole JSON body reveals; `None` when serde_json cannot parse it
/// as an object (not JSON, too deep for its recursion limit, a repeated
/// top-level member).
pub fn reference_json(body: &[u8]) -> Option<Observed> {
    /// The members of a response body usage accounting reads.
    #[derive(Deserialize)]
    struct Body {
        model: Option<Value>,
        usage: Option<Value>,
        choices: Option<Value>,
        output: Option<Value>,
        content: Option<Value>,
    }
    // serde would also read a struct from an array, by position.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let body = serde_json::from_slice::<Body>(body).ok()?;
    let generated = generated_in_choices(body.choices.as_ref())
        .saturating_add(generated_in_output(body.output.as_ref()))
        .saturating_add(generated_in_content(body.content.as_ref()));
    Some(Observed {
        reported: body.usage.as_ref().and_then(reported_from_usage),
        reported_input: None,
        model: model_of(body.model.as_ref()),
        generated_bytes: generated,
    })
}

/// What a whole event stream reveals; `None` when the data of an event is
/// JSON to the streaming scanner but not to serde_json (too deep for its
/// recursion limit, a raw control character in a string…), where the two
/// may differ. Panics when serde_json reads an event's data the scanner
/// refuses.
pub fn reference_sse(stream: &[u8]) -> Option<Observed> {
    read_sse(stream, true)
}

/// [`reference_sse`] without the check against the scanner: the old
/// whole-parse reader alone, for the benchmark.
pub fn whole_parse_sse(stream: &[u8]) -> Observed {
    read_sse(stream, false).unwrap_or_default()
}

fn read_sse(stream: &[u8], check: bool) -> Option<Observed> {
    let mut seen = Seen::default();
    for (data, event, lines) in events(stream) {
        if data == b"[DONE]" {
            // The end of an OpenAI stream: not JSON, and nothing to read.
            continue;
        }
        let parsed = serde_json::from_slice::<Value>(&data);
        if check {
            let scanned = crate::limits::response::scans_as_json(&data);
            match (&parsed, scanned) {
                (Ok(_), false) => panic!(
                    "the scanner refuses event data serde_json reads: {:?}",
                    String::from_utf8_lossy(&data)
                ),
                (Err(_), true) => return None,
                _ => {}
            }
        }
        if let Ok(value) = parsed {
            observe_event(&mut seen, &value, &event, lines == 1);
        }
    }
    let reported = seen.reported.or_else(|| seen.anthropic.reported());
    Some(Observed {
        reported,
        reported_input: reported.is_none().then(|| seen.anthropic.input()).flatten(),
        model: seen.model,
        generated_bytes: seen.generated,
    })
}

/// The events of a whole stream: their joined `data`, `event` name and
/// number of `data` lines (events without data are left out, and so is an
/// event the stream cuts short).
fn events(stream: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, usize)> {
    let mut out = Vec::new();
    let (mut data, mut event, mut lines) = (Vec::new(), Vec::new(), 0usize);
    let mut rest = stream;
    while let Some(eol) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        let line = &rest[..eol];
        let skip = if rest[eol] == b'\r' && rest.get(eol + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[eol + skip..];
        if line.is_empty() {
            if lines > 0 {
                data.pop();
                out.push((std::mem::take(&mut data), event.clone(), lines));
            }
            data.clear();
            event.clear();
            lines = 0;
            continue;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
                lines += 1;
            }
            b"event" => event = value.to_vec(),
            _ => {}
        }
    }
    out
}

#[derive(Default)]
struct Seen {
    reported: Option<Reported>,
    anthropic: Anthropic,
    model: Option<String>,
    generated: u64,
}

#[derive(Default)]
struct Anthropic {
    input: Option<u64>,
    cache_creation: u64,
    cache_read: u64,
    output: Option<u64>,
}

impl Anthropic {
    fn input(&self) -> Option<Reported> {
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

    fn reported(&self) -> Option<Reported> {
        let output = self.output?;
        self.input().map(|r| Reported { output, ..r })
    }
}

fn observe_event(seen: &mut Seen, value: &Value, event: &[u8], single_data_line: bool) {
    let kind = match value.get("type") {
        Some(Value::String(kind)) if kind.len() > KIND_CAP => "",
        Some(Value::String(kind)) => kind.as_str(),
        _ if event.len() > KIND_CAP => "",
        _ => std::str::from_utf8(event).unwrap_or(""),
    };
    match kind {
        "message_start" => {
            let message = value.get("message");
            if let Some(model) = model_of(message.and_then(|m| m.get("model"))) {
                seen.model = Some(model);
            }
            if let Some(usage) = message
                .and_then(|m| m.get("usage"))
                .and_then(Value::as_object)
            {
                if let (Some(input), Some(creation), Some(read)) = (
                    required(usage, "input_tokens"),
                    optional(usage, "cache_creation_input_tokens"),
                    optional(usage, "cache_read_input_tokens"),
                ) {
                    seen.anthropic.input = Some(input);
                    seen.anthropic.cache_creation = creation;
                    seen.anthropic.cache_read = read;
                }
            }
        }
        "message_delta" => {
            if let Some(usage) = value.get("usage").and_then(Value::as_object) {
                let a = &mut seen.anthropic;
                if let Some(output) = required(usage, "output_tokens") {
                    a.output = Some(output);
                }
                if let Some(input) = required(usage, "input_tokens") {
                    a.input = Some(input);
                }
                if let Some(creation) = required(usage, "cache_creation_input_tokens") {
                    a.cache_creation = creation;
                }
                if let Some(read) = required(usage, "cache_read_input_tokens") {
                    a.cache_read = read;
                }
            }
        }
        "content_block_delta" => {
            let delta = value.get("delta");
            for key in ["text", "partial_json", "thinking"] {
                let bytes = text_len(delta.and_then(|d| d.get(key)));
                seen.generated = seen.generated.saturating_add(bytes);
            }
        }
        "response.output_text.delta" | "response.function_call_arguments.delta" => {
            seen.generated = seen.generated.saturating_add(text_len(value.get("delta")));
        }
        kind if kind.starts_with("response.") => {
            let response = value.get("response");
            if let Some(model) = model_of(response.and_then(|r| r.get("model"))) {
                seen.model = Some(model);
            }
            if matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ) {
                if let Some(reported) = response
                    .and_then(|r| r.get("usage"))
                    .and_then(reported_from_usage)
                {
                    seen.reported = Some(reported);
                }
            }
        }
        _ => {
            if let Some(model) = model_of(value.get("model")) {
                seen.model = Some(model);
            }
            let choices = value.get("choices");
            seen.generated = seen.generated.saturating_add(generated_in_choices(choices));
            if let Some(usage @ Value::Object(_)) = value.get("usage") {
                if let Some(reported) = reported_from_usage(usage) {
                    seen.reported = Some(reported);
                }
            }
            let _ = single_data_line;
        }
    }
}

fn reported_from_usage(usage: &Value) -> Option<Reported> {
    let usage = usage.as_object()?;
    let details = |name: &str| {
        usage
            .get(name)
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    if usage.contains_key("prompt_tokens") {
        let input = required(usage, "prompt_tokens")?;
        Some(Reported {
            input,
            output: optional(usage, "completion_tokens")?,
            cached_input: details("prompt_tokens_details").min(input),
            cache_write: 0,
        })
    } else if usage.contains_key("input_tokens") {
        let written = optional(usage, "cache_creation_input_tokens")?;
        let read = optional(usage, "cache_read_input_tokens")?;
        let input = required(usage, "input_tokens")?
            .saturating_add(written)
            .saturating_add(read);
        Some(Reported {
            input,
            output: optional(usage, "output_tokens")?,
            cached_input: read
                .saturating_add(details("input_tokens_details"))
                .min(input - written),
            cache_write: written,
        })
    } else {
        None
    }
}

fn required(object: &Map<String, Value>, key: &str) -> Option<u64> {
    object.get(key).and_then(Value::as_u64)
}

fn optional(object: &Map<String, Value>, key: &str) -> Option<u64> {
    match object.get(key) {
        None | Some(Value::Null) => Some(0),
        Some(value) => value.as_u64(),
    }
}

fn model_of(value: Option<&Value>) -> Option<String> {
    match value {
        Some(Value::String(model)) if !model.is_empty() && model.len() <= MODEL_CAP => {
            Some(model.clone())
        }
        _ => None,
    }
}

fn text_len(value: Option<&Value>) -> u64 {
    match value {
        Some(Value::String(text)) => text.len() as u64,
        _ => 0,
    }
}

fn elements(value: Option<&Value>) -> &[Value] {
    match value {
        Some(Value::Array(items)) => items,
        _ => &[],
    }
}

fn generated_in_choices(choices: Option<&Value>) -> u64 {
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
            let arguments = message
                .get("function_call")
                .and_then(|f| f.get("arguments"));
            bytes = bytes.saturating_add(text_len(arguments));
        }
    }
    bytes
}

fn generated_in_output(output: Option<&Value>) -> u64 {
    let mut bytes = 0u64;
    for item in elements(output) {
        bytes = bytes.saturating_add(text_len(item.get("arguments")));
        for part in elements(item.get("content")) {
            bytes = bytes.saturating_add(text_len(part.get("text")));
        }
    }
    bytes
}

fn generated_in_content(content: Option<&Value>) -> u64 {
    elements(content).iter().fold(0u64, |bytes, block| {
        bytes.saturating_add(text_len(block.get("text")))
    })
}
