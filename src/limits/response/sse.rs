//! The `text/event-stream` reader: reads a streamed response on the side of
//! forwarding it and records the usage, model and generated text it carries;
//! in strip mode it also removes what `stream_options.include_usage` added,
//! for a client that did not ask for it.
//!
//! Framing follows the HTML event-stream rules: lines end in `\n`, `\r\n` or
//! `\r`; an empty line ends an event; `data:` lines are joined with `\n`;
//! lines starting with `:` are comments; one space after the colon is dropped.
//!
//! Nothing is held to be read: each `data` line is fed to a push JSON
//! scanner as its bytes arrive, so an event of any size or nesting is read
//! in constant memory. Only strip mode holds bytes, and only while an event
//! is small enough to be the usage-only chunk it may have to drop
//! ([`HOLD_CAP`]); a larger event is forwarded as it arrives.

use memchr::{memchr, memchr2};

use super::extract::AnthropicUsage;
use super::scan::{
    Kind, Scanner, Shape, CHOICES, DELTA_OBJECT, DELTA_TEXT, KIND_CAP, MESSAGE, RESPONSE, TOP,
};
use super::{Observed, Reported};

/// Strip mode holds an event's bytes until its end only while it is at most
/// this long: enough for any usage-only chunk (a few hundred bytes) and any
/// ordinary chunk whose `"usage":null` is cut. A longer event is forwarded
/// as it arrives, unedited (and still read).
pub const HOLD_CAP: usize = 64 * 1024;

/// Field names longer than this are none the reader knows.
const NAME_CAP: usize = 8;

/// Reads one event stream fed in arbitrary pieces.
///
/// Without stripping, [`feed`](SseTap::feed) copies each piece to `out` at
/// once and reads on the side. With stripping, each event up to
/// [`HOLD_CAP`] is held until the empty line that ends it and then
/// forwarded, edited or dropped; so a piece that ends on an event boundary
/// is forwarded whole at once.
#[derive(Debug, Clone)]
pub struct SseTap {
    strip: bool,
    /// Where the current line is.
    line: Line,
    /// The current line's field name, while it is read.
    name: [u8; NAME_CAP],
    name_len: usize,
    name_over: bool,
    /// The field whose value is being read.
    field: FieldName,
    /// The last piece ended in `\r`: a `\n` starting the next one is part of
    /// the same line ending.
    after_cr: bool,
    /// That `\r` ended an event: the `\n` goes where the event went.
    cr_ended_event: Option<Fate>,
    /// The event being read: its `data` lines so far (fed to `json`), and
    /// its `event` name (up to [`KIND_CAP`] bytes).
    data_lines: usize,
    json: Scanner,
    event: Vec<u8>,
    event_over: bool,
    /// Strip mode: the raw bytes of the event being held.
    held: Vec<u8>,
    /// Strip mode: the event outgrew [`HOLD_CAP`]; its bytes go straight out.
    held_over_cap: bool,
    seen: Seen,
}

/// Where the reader is in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Nothing of the line yet.
    Start,
    /// Reading the field name.
    Name,
    /// Just after the colon (one space is dropped).
    ValueStart,
    /// Reading the value.
    Value,
}

/// The fields the reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldName {
    Data,
    Event,
    Other,
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
#[derive(Debug, Clone, Default)]
struct Seen {
    /// OpenAI chunk usage or Responses API `response.completed` usage; last wins.
    reported: Option<Reported>,
    anthropic: AnthropicUsage,
    model: Option<String>,
    generated: u64,
}

impl SseTap {
    /// A reader; `strip_injected_usage` when the proxy turned on
    /// `stream_options.include_usage` for a client that did not ask for it.
    pub fn new(strip_injected_usage: bool) -> Self {
        SseTap {
            strip: strip_injected_usage,
            line: Line::Start,
            name: [0; NAME_CAP],
            name_len: 0,
            name_over: false,
            field: FieldName::Other,
            after_cr: false,
            cr_ended_event: None,
            data_lines: 0,
            json: Scanner::new(Shape::Event),
            event: Vec::new(),
            event_over: false,
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

    /// Reads a piece; in strip mode also holds and releases events to `out`.
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
            let Some(eol) = memchr2(b'\n', b'\r', rest) else {
                self.line_bytes(rest);
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
            self.line_bytes(&rest[..eol]);
            let dispatched = self.line_ends();
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
    /// cut short is forwarded as it came, and not read).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.held_over_cap = false;
        self.line = Line::Start;
        self.after_cr = false;
        self.cr_ended_event = None;
        self.reset_event();
    }

    /// What the stream has revealed so far.
    pub fn observed(&self) -> Observed {
        let reported = self
            .seen
            .reported
            .or_else(|| self.seen.anthropic.reported());
        Observed {
            reported,
            reported_input: match reported {
                Some(_) => None,
                None => self.seen.anthropic.input(),
            },
            model: self.seen.model.clone(),
            generated_bytes: self.seen.generated,
        }
    }

    /// Strip mode: keeps `raw` with the event it belongs to.
    fn hold(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if self.held_over_cap {
            out.extend_from_slice(raw);
        } else if self.held.len() + raw.len() > HOLD_CAP {
            out.append(&mut self.held);
            out.extend_from_slice(raw);
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
        let done = match fate {
            Fate::Keep => {
                out.extend_from_slice(&self.held);
                Fate::Keep
            }
            Fate::Drop => Fate::Drop,
            Fate::StripNullUsage => match null_usage_in_event(&self.held) {
                Some(cut) => {
                    out.extend_from_slice(&self.held[..cut.start]);
                    out.extend_from_slice(&self.held[cut.end..]);
                    Fate::StripNullUsage
                }
                None => {
                    out.extend_from_slice(&self.held);
                    Fate::Keep
                }
            },
        };
        self.held.clear();
        done
    }

    /// Bytes of the current line (no line ending among them).
    fn line_bytes(&mut self, mut part: &[u8]) {
        while !part.is_empty() {
            match self.line {
                Line::Start => {
                    self.line = Line::Name;
                    self.name_len = 0;
                    self.name_over = false;
                }
                Line::Name => match memchr(b':', part) {
                    None => {
                        self.name_bytes(part);
                        return;
                    }
                    Some(colon) => {
                        self.name_bytes(&part[..colon]);
                        self.line = Line::ValueStart;
                        part = &part[colon + 1..];
                    }
                },
                Line::ValueStart => {
                    if part[0] == b' ' {
                        part = &part[1..];
                    }
                    self.value_starts();
                }
                Line::Value => {
                    match self.field {
                        FieldName::Data => self.json.feed(part),
                        FieldName::Event => self.event_bytes(part),
                        FieldName::Other => {}
                    }
                    return;
                }
            }
        }
    }

    fn name_bytes(&mut self, bytes: &[u8]) {
        let end = self.name_len + bytes.len();
        if self.name_over || end > NAME_CAP {
            self.name_over = true;
        } else {
            self.name[self.name_len..end].copy_from_slice(bytes);
            self.name_len = end;
        }
    }

    fn event_bytes(&mut self, bytes: &[u8]) {
        if self.event_over || self.event.len() + bytes.len() > KIND_CAP {
            self.event_over = true;
        } else {
            self.event.extend_from_slice(bytes);
        }
    }

    /// The value of the current line's field starts.
    fn value_starts(&mut self) {
        self.field = match &self.name[..self.name_len] {
            _ if self.name_over => FieldName::Other,
            b"data" => FieldName::Data,
            b"event" => FieldName::Event,
            _ => FieldName::Other,
        };
        match self.field {
            FieldName::Data => {
                if self.data_lines > 0 {
                    self.json.feed(b"\n");
                }
                self.data_lines += 1;
            }
            FieldName::Event => {
                self.event.clear();
                self.event_over = false;
            }
            FieldName::Other => {}
        }
        self.line = Line::Value;
    }

    /// The current line ended; returns the event's fate if it was the empty
    /// line that ends one.
    fn line_ends(&mut self) -> Option<Fate> {
        let fate = match self.line {
            Line::Start => Some(self.dispatch()),
            // A line without a colon is a field with an empty value.
            Line::Name | Line::ValueStart => {
                self.value_starts();
                None
            }
            Line::Value => None,
        };
        self.line = Line::Start;
        fate
    }

    /// An empty line ended an event: read it.
    fn dispatch(&mut self) -> Fate {
        let fate = if self.data_lines > 0 && self.json.finish() {
            self.observe_event()
        } else {
            Fate::Keep
        };
        self.reset_event();
        fate
    }

    fn reset_event(&mut self) {
        self.json.reset();
        self.data_lines = 0;
        self.event.clear();
        self.event_over = false;
    }

    /// Records what the event just read reveals; returns its fate in strip mode.
    fn observe_event(&mut self) -> Fate {
        let found = self.json.findings();
        let seen = &mut self.seen;
        let kind: &[u8] = if found.kind.is_string() {
            found.kind.text().map_or(b"", str::as_bytes)
        } else if self.event_over || std::str::from_utf8(&self.event).is_err() {
            b""
        } else {
            &self.event
        };
        match kind {
            // Anthropic messages.
            b"message_start" => {
                if let Some(model) = found.models[MESSAGE].model() {
                    seen.model = Some(model);
                }
                if found.usage_kind[MESSAGE] == Kind::Object {
                    seen.anthropic.start(&found.usage[MESSAGE]);
                }
            }
            b"message_delta" => {
                if found.usage_kind[TOP] == Kind::Object {
                    seen.anthropic.delta(&found.usage[TOP]);
                }
            }
            b"content_block_delta" => {
                seen.generated = seen.generated.saturating_add(found.text[DELTA_OBJECT]);
            }
            // Responses API.
            b"response.output_text.delta" | b"response.function_call_arguments.delta" => {
                seen.generated = seen.generated.saturating_add(found.text[DELTA_TEXT]);
            }
            kind if kind.starts_with(b"response.") => {
                if let Some(model) = found.models[RESPONSE].model() {
                    seen.model = Some(model);
                }
                let done = matches!(
                    kind,
                    b"response.completed" | b"response.incomplete" | b"response.failed"
                );
                if done && found.usage_kind[RESPONSE] == Kind::Object {
                    if let Some(reported) = found.usage[RESPONSE].reported() {
                        seen.reported = Some(reported);
                    }
                }
            }
            // OpenAI chat and completions chunks.
            _ => {
                if let Some(model) = found.models[TOP].model() {
                    seen.model = Some(model);
                }
                seen.generated = seen.generated.saturating_add(found.text[CHOICES]);
                match found.usage_kind[TOP] {
                    Kind::Object => {
                        if let Some(reported) = found.usage[TOP].reported() {
                            seen.reported = Some(reported);
                        }
                        let usage_only = found.choices == Kind::Array && found.choices_empty;
                        if usage_only {
                            return Fate::Drop;
                        }
                    }
                    // Only one data line is edited in place: OpenAI sends no other.
                    Kind::Null if self.data_lines == 1 => return Fate::StripNullUsage,
                    _ => {}
                }
            }
        }
        Fate::Keep
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
