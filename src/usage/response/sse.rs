//! The `text/event-stream` reader: parses a streamed response on the side of
//! forwarding it and records the usage, model and generated text it carries
//! (SPEC 9.3); in strip mode it also removes what `stream_options.include_usage`
//! added, for a client that did not ask for it (SPEC 9.4).
//!
//! Framing follows the HTML event-stream rules: lines end in `\n`, `\r\n` or
//! `\r`; an empty line ends an event; `data:` lines are joined with `\n`;
//! lines starting with `:` are comments; one space after the colon is dropped.

use serde_json::Value;

use super::extract::{
    generated_in_choices, model_of, optional, reported_from_usage, required, text_len,
};
use super::{Observed, Reported};

/// The most held or parsed for one event (and one line); a larger event
/// is forwarded untouched and not parsed.
pub const EVENT_CAP: usize = 1 << 20;

/// Reads one event stream fed in arbitrary pieces.
///
/// Without stripping, [`feed`](SseTap::feed) copies each piece to `out` at
/// once and parses on the side. With stripping, each event is held until the
/// empty line that ends it and then forwarded, edited or dropped; so a piece
/// that ends on an event boundary is forwarded whole at once.
#[derive(Debug)]
pub struct SseTap {
    strip: bool,
    /// The current line, when it spans pieces (capped at [`EVENT_CAP`]).
    line: Vec<u8>,
    line_over_cap: bool,
    /// The last piece ended in `\r`: a `\n` starting the next one is part of
    /// the same line ending.
    after_cr: bool,
    /// That `\r` ended an event: the `\n` goes where the event went.
    cr_ended_event: Option<Fate>,
    /// The event being parsed: its `data` (joined, each line followed by
    /// `\n`), number of `data` lines, and `event` name.
    data: Vec<u8>,
    data_lines: usize,
    event: Vec<u8>,
    /// The event is too big to parse: ignore it.
    event_over_cap: bool,
    /// Strip mode: the raw bytes of the event being held.
    held: Vec<u8>,
    /// Strip mode: the event outgrew [`EVENT_CAP`]; its bytes go straight out.
    held_over_cap: bool,
    seen: Seen,
}

/// What becomes of a held event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Forwarded as it came.
    Keep,
    /// Forwarded without its top-level `"usage":null` member.
    StripNullUsage,
    /// Not forwarded: the usage-only chunk the client did not ask for.
    Drop,
}

/// What the stream has revealed so far.
#[derive(Debug, Default)]
struct Seen {
    /// OpenAI chunk usage or Responses API `response.completed` usage; last wins.
    reported: Option<Reported>,
    anthropic: AnthropicUsage,
    model: Option<String>,
    generated: u64,
}

/// Anthropic splits usage: `message_start` carries the input, `message_delta`
/// the cumulative output (and, in newer versions, the input again).
#[derive(Debug, Default)]
struct AnthropicUsage {
    input: Option<u64>,
    cache_creation: u64,
    cache_read: u64,
    output: Option<u64>,
}

impl AnthropicUsage {
    fn start(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage.and_then(Value::as_object) else {
            return;
        };
        if let (Some(input), Some(creation), Some(read)) = (
            required(usage, "input_tokens"),
            optional(usage, "cache_creation_input_tokens"),
            optional(usage, "cache_read_input_tokens"),
        ) {
            self.input = Some(input);
            self.cache_creation = creation;
            self.cache_read = read;
        }
    }

    fn delta(&mut self, usage: Option<&Value>) {
        let Some(usage) = usage.and_then(Value::as_object) else {
            return;
        };
        if let Some(output) = required(usage, "output_tokens") {
            self.output = Some(output);
        }
        // Counts a delta repeats replace those of `message_start`.
        if let Some(input) = required(usage, "input_tokens") {
            self.input = Some(input);
        }
        if let Some(creation) = required(usage, "cache_creation_input_tokens") {
            self.cache_creation = creation;
        }
        if let Some(read) = required(usage, "cache_read_input_tokens") {
            self.cache_read = read;
        }
    }

    /// Usage only once both halves arrived: a stream cut before
    /// `message_delta` reported no output.
    fn reported(&self) -> Option<Reported> {
        Some(Reported {
            input: self
                .input?
                .saturating_add(self.cache_creation)
                .saturating_add(self.cache_read),
            output: self.output?,
        })
    }
}

impl SseTap {
    /// A reader; `strip_injected_usage` when the proxy turned on
    /// `stream_options.include_usage` for a client that did not ask for it.
    pub fn new(strip_injected_usage: bool) -> Self {
        SseTap {
            strip: strip_injected_usage,
            line: Vec::new(),
            line_over_cap: false,
            after_cr: false,
            cr_ended_event: None,
            data: Vec::new(),
            data_lines: 0,
            event: Vec::new(),
            event_over_cap: false,
            held: Vec::new(),
            held_over_cap: false,
            seen: Seen::default(),
        }
    }

    /// Takes the next piece of the (decoded) stream and appends to `out` what
    /// the client should receive now.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if !self.strip {
            out.extend_from_slice(chunk);
        }
        self.scan(chunk, out);
    }

    /// Reads the next piece without forwarding anything: for a caller that
    /// forwards the bytes itself (still encoded, say). Meant for a tap that
    /// does not strip; on one that does, the edited output is discarded.
    pub fn observe(&mut self, chunk: &[u8]) {
        let mut discarded = Vec::new();
        self.scan(chunk, &mut discarded);
    }

    /// Parses a piece; in strip mode also holds and releases events to `out`.
    fn scan(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut at = 0;
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            let fate = self.cr_ended_event.take();
            if chunk[0] == b'\n' {
                at = 1;
                if self.strip {
                    match fate {
                        None => self.hold(b"\n", out),
                        Some(Fate::Drop) => {}
                        Some(_) => out.push(b'\n'),
                    }
                }
            }
        }
        while at < chunk.len() {
            let rest = &chunk[at..];
            let Some(eol) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.line_continues(rest);
                if self.strip {
                    self.hold(rest, out);
                }
                break;
            };
            let mut end = eol + 1;
            if rest[eol] == b'\r' {
                match rest.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let dispatched = self.line_ends(&rest[..eol]);
            if self.strip {
                self.hold(&rest[..end], out);
                if let Some(fate) = dispatched {
                    let fate = self.release(fate, out);
                    if self.after_cr {
                        self.cr_ended_event = Some(fate);
                    }
                }
            }
            at += end;
        }
    }

    /// Ends the stream: forwards whatever is still held (an event the stream
    /// cut short is forwarded as it came, and not parsed).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.held_over_cap = false;
        self.line = Vec::new();
        self.line_over_cap = false;
        self.after_cr = false;
        self.cr_ended_event = None;
        self.reset_event();
    }

    /// What the stream has revealed so far.
    pub fn observed(&self) -> Observed {
        Observed {
            reported: self
                .seen
                .reported
                .or_else(|| self.seen.anthropic.reported()),
            model: self.seen.model.clone(),
            generated_bytes: self.seen.generated,
        }
    }

    /// Strip mode: keeps `raw` with the event it belongs to.
    fn hold(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if self.held_over_cap {
            out.extend_from_slice(raw);
        } else if self.held.len() + raw.len() > EVENT_CAP {
            out.append(&mut self.held);
            out.extend_from_slice(raw);
            self.held = Vec::new();
            self.held_over_cap = true;
        } else {
            self.held.extend_from_slice(raw);
        }
    }

    /// Strip mode: an event ended; forwards it as `fate` says (unless it was
    /// too big to hold, and so is already out). Returns what was done.
    fn release(&mut self, fate: Fate, out: &mut Vec<u8>) -> Fate {
        if std::mem::take(&mut self.held_over_cap) {
            return Fate::Keep;
        }
        let held = std::mem::take(&mut self.held);
        let done = match fate {
            Fate::Keep => {
                out.extend_from_slice(&held);
                Fate::Keep
            }
            Fate::Drop => Fate::Drop,
            Fate::StripNullUsage => match null_usage_in_event(&held) {
                Some(cut) => {
                    out.extend_from_slice(&held[..cut.start]);
                    out.extend_from_slice(&held[cut.end..]);
                    Fate::StripNullUsage
                }
                None => {
                    out.extend_from_slice(&held);
                    Fate::Keep
                }
            },
        };
        // Keep a modest buffer for the next event; let a large one go.
        if held.capacity() <= 64 * 1024 {
            self.held = held;
            self.held.clear();
        }
        done
    }

    /// A line continues past the end of this piece.
    fn line_continues(&mut self, part: &[u8]) {
        if self.line_over_cap {
            return;
        }
        if self.line.len() + part.len() > EVENT_CAP {
            self.line_over_cap = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    /// A line ends with `tail`; returns the event's fate if it was the empty
    /// line that ends one.
    fn line_ends(&mut self, tail: &[u8]) -> Option<Fate> {
        if self.line_over_cap {
            // Too long to be read, and not empty: the event is skipped.
            self.line_over_cap = false;
            self.event_over_cap = true;
            return None;
        }
        if self.line.is_empty() {
            if tail.len() > EVENT_CAP {
                self.event_over_cap = true;
                return None;
            }
            return self.field(tail);
        }
        self.line_continues(tail);
        if std::mem::take(&mut self.line_over_cap) {
            self.event_over_cap = true;
            return None;
        }
        let line = std::mem::take(&mut self.line);
        self.field(&line)
    }

    /// One complete line of the stream.
    fn field(&mut self, line: &[u8]) -> Option<Fate> {
        if line.is_empty() {
            return Some(self.dispatch());
        }
        let (name, value) = split_field(line);
        match name {
            b"data" if !self.event_over_cap => {
                if self.data.len() + value.len() + 1 > EVENT_CAP {
                    self.event_over_cap = true;
                    self.data = Vec::new();
                } else {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                    self.data_lines += 1;
                }
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {}
        }
        None
    }

    /// An empty line ended an event: read it.
    fn dispatch(&mut self) -> Fate {
        let fate = if self.event_over_cap || self.data.is_empty() {
            Fate::Keep
        } else {
            self.data.pop();
            let single_line = self.data_lines == 1;
            observe_event(&mut self.seen, &self.data, &self.event, single_line)
        };
        self.reset_event();
        fate
    }

    fn reset_event(&mut self) {
        if self.data.capacity() > 64 * 1024 {
            self.data = Vec::new();
        }
        self.data.clear();
        self.data_lines = 0;
        self.event.clear();
        self.event_over_cap = false;
    }
}

/// Splits `name:value`, dropping one space after the colon; a line without
/// a colon is a name with an empty value.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b':') {
        Some(colon) => {
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

/// Records what one event's data reveals; returns its fate in strip mode.
fn observe_event(seen: &mut Seen, data: &[u8], event: &[u8], single_data_line: bool) -> Fate {
    if data == b"[DONE]" {
        return Fate::Keep;
    }
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return Fate::Keep;
    };
    let kind = match value.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        _ => std::str::from_utf8(event).unwrap_or(""),
    };
    match kind {
        // Anthropic messages.
        "message_start" => {
            let message = value.get("message");
            if let Some(model) = model_of(message.and_then(|m| m.get("model"))) {
                seen.model = Some(model);
            }
            seen.anthropic.start(message.and_then(|m| m.get("usage")));
        }
        "message_delta" => seen.anthropic.delta(value.get("usage")),
        "content_block_delta" => {
            let delta = value.get("delta");
            for key in ["text", "partial_json", "thinking"] {
                let bytes = text_len(delta.and_then(|d| d.get(key)));
                seen.generated = seen.generated.saturating_add(bytes);
            }
        }
        // Responses API.
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
        // OpenAI chat and completions chunks.
        _ => return observe_chunk(seen, &value, single_data_line),
    }
    Fate::Keep
}

fn observe_chunk(seen: &mut Seen, chunk: &Value, single_data_line: bool) -> Fate {
    if let Some(model) = model_of(chunk.get("model")) {
        seen.model = Some(model);
    }
    let choices = chunk.get("choices");
    seen.generated = seen.generated.saturating_add(generated_in_choices(choices));
    match chunk.get("usage") {
        Some(usage @ Value::Object(_)) => {
            if let Some(reported) = reported_from_usage(usage) {
                seen.reported = Some(reported);
            }
            let usage_only = matches!(choices, Some(Value::Array(c)) if c.is_empty());
            if usage_only {
                Fate::Drop
            } else {
                Fate::Keep
            }
        }
        // Only one data line is edited in place: OpenAI sends no other.
        Some(Value::Null) if single_data_line => Fate::StripNullUsage,
        _ => Fate::Keep,
    }
}

/// The bytes to cut from a held event so its top-level `"usage":null`
/// member disappears: the member and one adjacent comma (and the blanks
/// after that comma).
fn null_usage_in_event(event: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut at = 0;
    while at < event.len() {
        let rest = &event[at..];
        let eol = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len());
        let line = &rest[..eol];
        if let Some(value) = line.strip_prefix(b"data:") {
            let skip = 5 + usize::from(value.first() == Some(&b' '));
            let json = &line[skip..];
            let cut = json_scan::null_member(json, b"usage")?;
            let base = at + skip;
            return Some(base + cut.start..base + cut.end);
        }
        at += eol + 1;
    }
    None
}

/// Just enough of a JSON scanner to find a top-level member by its raw key,
/// without building anything.
mod json_scan {
    use std::ops::Range;

    /// The range to delete so the top-level member `"key": null` of the
    /// object `json` disappears with exactly one adjacent comma: the member,
    /// the comma after it and the blanks after that; or, for the last
    /// member, the blanks and comma before it.
    pub(super) fn null_member(json: &[u8], key: &[u8]) -> Option<Range<usize>> {
        let mut at = blanks(json, 0);
        if json.get(at) != Some(&b'{') {
            return None;
        }
        at += 1;
        // Where the previous member's value ended.
        let mut previous_end: Option<usize> = None;
        loop {
            let start = blanks(json, at);
            if json.get(start) != Some(&b'"') {
                return None;
            }
            let key_end = string_end(json, start)?;
            let colon = blanks(json, key_end);
            if json.get(colon) != Some(&b':') {
                return None;
            }
            let value_start = blanks(json, colon + 1);
            let value_end = value_end(json, value_start)?;
            let target =
                &json[start + 1..key_end - 1] == key && &json[value_start..value_end] == b"null";
            let after = blanks(json, value_end);
            match json.get(after) {
                Some(b',') if target => return Some(start..blanks(json, after + 1)),
                Some(b',') => {
                    previous_end = Some(value_end);
                    at = after + 1;
                }
                Some(b'}') if target => {
                    return Some(previous_end.unwrap_or(start)..value_end);
                }
                _ => return None,
            }
        }
    }

    fn blanks(json: &[u8], mut at: usize) -> usize {
        while matches!(json.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            at += 1;
        }
        at
    }

    /// The index after the string starting at `start` (a `"`).
    fn string_end(json: &[u8], start: usize) -> Option<usize> {
        let mut at = start + 1;
        loop {
            match json.get(at)? {
                b'\\' => at += 2,
                b'"' => return Some(at + 1),
                _ => at += 1,
            }
        }
    }

    /// The index after the value starting at `start`.
    fn value_end(json: &[u8], start: usize) -> Option<usize> {
        match json.get(start)? {
            b'"' => string_end(json, start),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut at = start;
                loop {
                    match json.get(at)? {
                        b'"' => {
                            at = string_end(json, at)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(at + 1);
                            }
                        }
                        _ => {}
                    }
                    at += 1;
                }
            }
            _ => {
                let len = json[start..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .unwrap_or(json.len() - start);
                (len > 0).then_some(start + len)
            }
        }
    }
}

#[cfg(test)]
mod tests;
