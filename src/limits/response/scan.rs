//! A push JSON scanner that reads the few members of an upstream answer
//! usage accounting needs — the `usage` counts, the `model`, the byte count
//! of generated text — in constant memory, fed in pieces of any size.
//!
//! It never holds the document: a string is measured (or, for a key, a
//! model or an event type, copied up to a small cap) as its bytes pass, and
//! nesting is followed by a fixed stack of [`MAX_FRAMES`] frames for the
//! paths that matter; any other container, at any depth, is skipped with a
//! bracket counter. The grammar is checked exactly on the tracked levels
//! (so a truncated or malformed answer reports nothing); inside a skipped
//! container only strings, bracket balance and the bytes allowed outside
//! strings are checked.
//!
//! Where a key repeats, its last occurrence wins, as in a parsed JSON map:
//! for counts, for the model, and for the generated text under it.

use memchr::memchr2;

use super::extract::{Count, Field, UsageCounts};

/// A `model` longer than this (decoded) is not read: the request's model is
/// priced instead.
pub(crate) const MODEL_CAP: usize = 256;
/// An event type (`type` member or `event:` field) longer than this names no
/// known kind.
pub(crate) const KIND_CAP: usize = 64;
/// Keys longer than this are none the scanner looks for.
const KEY_CAP: usize = 32;
/// The deepest path the scanner follows (a chat tool call's `arguments`).
const MAX_FRAMES: usize = 8;
/// A frame slot that takes no generated text.
const NO_SLOT: u8 = u8::MAX;

/// How a skipped container treats each byte outside strings: brackets and
/// quotes are followed; bytes that may appear in JSON numbers, literals,
/// separators and blanks pass; any other byte is not JSON.
const SKIP_CLASS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let tokens = b" \t\n\r,:0123456789-+.eEtruefalsn";
    let mut i = 0;
    while i < tokens.len() {
        table[tokens[i] as usize] = TOKEN;
        i += 1;
    }
    table[b'"' as usize] = QUOTE;
    table[b'{' as usize] = OPEN;
    table[b'[' as usize] = OPEN;
    table[b'}' as usize] = CLOSE;
    table[b']' as usize] = CLOSE;
    table
};
const INVALID: u8 = 0;
const TOKEN: u8 = 1;
const QUOTE: u8 = 2;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;

/// The first `"` or `\\` in `rest`. Most strings of an answer are short
/// (keys, roles, ids, models): their first bytes are tested eight at a
/// time in a word, which costs less than setting up a vector search; a
/// long string's rest goes to `memchr2`.
fn string_stop(rest: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    /// The bytes tested a word at a time before `memchr2` takes over.
    const SHORT: usize = 64;
    let mut words = rest.chunks_exact(8);
    for (i, word) in words.by_ref().take(SHORT / 8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        // A byte of `x` or `y` is zero where `w` holds a quote or a
        // backslash; the lowest flagged byte is always a true one.
        let (x, y) = (w ^ QUOTES, w ^ BACKSLASHES);
        let found = (x.wrapping_sub(ONES) & !x | y.wrapping_sub(ONES) & !y) & HIGHS;
        if found != 0 {
            return Some(i * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let tested = rest.len().min(SHORT) / 8 * 8;
    if tested == SHORT && rest.len() > SHORT {
        return memchr2(b'"', b'\\', &rest[SHORT..]).map(|i| i + SHORT);
    }
    rest[tested..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|i| i + tested)
}

/// Where the document sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// A whole JSON response body.
    Body,
    /// The `data` of one server-sent event.
    Event,
}

/// Which `usage` object: the top-level one, Anthropic `message_start`'s
/// `message.usage`, or a Responses event's `response.usage`.
pub(super) const TOP: usize = 0;
pub(super) const MESSAGE: usize = 1;
pub(super) const RESPONSE: usize = 2;

/// The top frame's generated-text slots.
pub(super) const CHOICES: usize = 0;
pub(super) const OUTPUT: usize = 1;
pub(super) const CONTENT: usize = 2;
pub(super) const DELTA_TEXT: usize = 3;
pub(super) const DELTA_OBJECT: usize = 4;
const SLOTS: usize = 5;

/// The kind of value found at a place, as far as its first byte tells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum Kind {
    #[default]
    Absent,
    Object,
    Array,
    String,
    Number,
    Null,
    /// `true` or `false`.
    Bool,
}

/// What a value means where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not needed: skipped.
    Ignore,
    /// The document.
    Top,
    /// A `model` to copy (top, message, response).
    Model(usize),
    /// An event's `type`.
    Type,
    /// A `usage` object (top, message, response).
    Usage(usize),
    /// One count of a `usage` object.
    Count(usize, Field),
    /// `prompt_tokens_details` / `input_tokens_details` of a `usage`.
    Details(usize, Field),
    /// A string whose decoded bytes are generated text.
    Text,
    Choices,
    Choice,
    /// A choice's `message` or `delta`.
    ChoiceMessage,
    ToolCalls,
    ToolCall,
    /// `function` of a tool call, or a legacy `function_call`.
    Function,
    Output,
    OutputItem,
    OutputContent,
    OutputPart,
    Content,
    ContentBlock,
    /// An event's `delta`: text (Responses) or an object (Anthropic).
    Delta,
    DeltaObject,
    Message,
    Response,
}

impl Role {
    /// The role an object at this place keeps, if objects are read here.
    fn object(self) -> Option<Role> {
        match self {
            Role::Top
            | Role::Usage(_)
            | Role::Details(..)
            | Role::Choice
            | Role::ChoiceMessage
            | Role::ToolCall
            | Role::Function
            | Role::OutputItem
            | Role::OutputPart
            | Role::ContentBlock
            | Role::Message
            | Role::Response => Some(self),
            Role::Delta => Some(Role::DeltaObject),
            _ => None,
        }
    }

    /// The role of an array's elements, if arrays are read here.
    fn elements(self) -> Option<Role> {
        match self {
            Role::Choices => Some(Role::Choice),
            Role::ToolCalls => Some(Role::ToolCall),
            Role::Output => Some(Role::OutputItem),
            Role::OutputContent => Some(Role::OutputPart),
            Role::Content => Some(Role::ContentBlock),
            _ => None,
        }
    }

    /// A string here is generated text.
    fn counts_text(self) -> bool {
        matches!(self, Role::Text | Role::Delta)
    }

    /// The role of member `key` of an object of this role, and the frame
    /// slot its generated text goes to.
    fn member(self, key: &[u8], shape: Shape) -> (Role, u8) {
        let none = |role| (role, NO_SLOT);
        match (self, key) {
            (Role::Top, b"model") => none(Role::Model(TOP)),
            (Role::Top, b"usage") => none(Role::Usage(TOP)),
            (Role::Top, b"choices") => (Role::Choices, CHOICES as u8),
            (Role::Top, b"output") if shape == Shape::Body => (Role::Output, OUTPUT as u8),
            (Role::Top, b"content") if shape == Shape::Body => (Role::Content, CONTENT as u8),
            (Role::Top, b"type") if shape == Shape::Event => none(Role::Type),
            (Role::Top, b"delta") if shape == Shape::Event => (Role::Delta, DELTA_TEXT as u8),
            (Role::Top, b"message") if shape == Shape::Event => none(Role::Message),
            (Role::Top, b"response") if shape == Shape::Event => none(Role::Response),
            (Role::Message, b"model") => none(Role::Model(MESSAGE)),
            (Role::Message, b"usage") => none(Role::Usage(MESSAGE)),
            (Role::Response, b"model") => none(Role::Model(RESPONSE)),
            (Role::Response, b"usage") => none(Role::Usage(RESPONSE)),
            (Role::Usage(s), key) => none(match key {
                b"prompt_tokens" => Role::Count(s, Field::Prompt),
                b"completion_tokens" => Role::Count(s, Field::Completion),
                b"input_tokens" => Role::Count(s, Field::Input),
                b"output_tokens" => Role::Count(s, Field::Output),
                b"cache_creation_input_tokens" => Role::Count(s, Field::CacheCreation),
                b"cache_read_input_tokens" => Role::Count(s, Field::CacheRead),
                b"prompt_tokens_details" => Role::Details(s, Field::PromptCached),
                b"input_tokens_details" => Role::Details(s, Field::InputCached),
                _ => Role::Ignore,
            }),
            (Role::Details(s, field), b"cached_tokens") => none(Role::Count(s, field)),
            (Role::Choice, b"text") => (Role::Text, 0),
            (Role::Choice, b"message") => (Role::ChoiceMessage, 1),
            (Role::Choice, b"delta") => (Role::ChoiceMessage, 2),
            (Role::ChoiceMessage, b"content") => (Role::Text, 0),
            (Role::ChoiceMessage, b"tool_calls") => (Role::ToolCalls, 1),
            (Role::ChoiceMessage, b"function_call") => (Role::Function, 2),
            (Role::ToolCall, b"function") => (Role::Function, 0),
            (Role::Function, b"arguments") => (Role::Text, 0),
            (Role::OutputItem, b"arguments") => (Role::Text, 0),
            (Role::OutputItem, b"content") => (Role::OutputContent, 1),
            (Role::OutputPart | Role::ContentBlock, b"text") => (Role::Text, 0),
            (Role::DeltaObject, b"text") => (Role::Text, 0),
            (Role::DeltaObject, b"partial_json") => (Role::Text, 1),
            (Role::DeltaObject, b"thinking") => (Role::Text, 2),
            _ => none(Role::Ignore),
        }
    }
}

/// A string value copied up to a cap (a model, an event type).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Capture {
    bytes: Vec<u8>,
    /// `Kind::String` once a string was copied whole; other kinds when the
    /// last value at the place was not a string.
    kind: Kind,
    /// Longer than its cap, or not valid text (a lone surrogate escape).
    spoiled: bool,
}

impl Capture {
    fn reset(&mut self, kind: Kind) {
        self.bytes.clear();
        self.kind = kind;
        self.spoiled = false;
    }

    fn push(&mut self, bytes: &[u8], cap: usize) {
        if self.spoiled {
            return;
        }
        if self.bytes.len() + bytes.len() > cap {
            self.spoiled = true;
            self.bytes.clear();
        } else {
            self.bytes.extend_from_slice(bytes);
        }
    }

    /// The copied text, if the last value here was a string that fit.
    pub(super) fn text(&self) -> Option<&str> {
        if self.kind != Kind::String || self.spoiled {
            return None;
        }
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The last value here was a string (whether or not it fit).
    pub(super) fn is_string(&self) -> bool {
        self.kind == Kind::String
    }

    /// A non-empty model that fit.
    pub(super) fn model(&self) -> Option<String> {
        self.text().filter(|m| !m.is_empty()).map(str::to_owned)
    }
}

/// What one document revealed; read it once [`Scanner::finish`] said the
/// document was whole and well-formed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Findings {
    /// `model`, `message.model`, `response.model`.
    pub models: [Capture; 3],
    /// An event's `type`.
    pub kind: Capture,
    /// The counts of `usage`, `message.usage`, `response.usage`.
    pub usage: [UsageCounts; 3],
    /// What each of those three `usage` members was.
    pub usage_kind: [Kind; 3],
    /// What the top-level `choices` was, and whether it had an element.
    pub choices: Kind,
    pub choices_empty: bool,
    /// Generated-text bytes under the top-level members, by slot
    /// ([`CHOICES`], [`OUTPUT`], [`CONTENT`], [`DELTA_TEXT`], [`DELTA_OBJECT`]).
    pub text: [u64; SLOTS],
}

impl Findings {
    fn clear(&mut self) {
        for capture in self
            .models
            .iter_mut()
            .chain(std::iter::once(&mut self.kind))
        {
            capture.reset(Kind::Absent);
        }
        self.usage = Default::default();
        self.usage_kind = Default::default();
        self.choices = Kind::Absent;
        self.choices_empty = false;
        self.text = [0; SLOTS];
    }
}

/// One object or array on a tracked path.
#[derive(Debug, Clone, Copy)]
struct Frame {
    object: bool,
    role: Role,
    /// Objects: the role and slot of the member being read.
    member: Role,
    slot: u8,
    /// Generated text under each member (the last occurrence of each);
    /// arrays sum their elements in slot 0.
    text: [u64; SLOTS],
}

impl Frame {
    const EMPTY: Frame = Frame {
        object: false,
        role: Role::Ignore,
        member: Role::Ignore,
        slot: NO_SLOT,
        text: [0; SLOTS],
    };
}

/// Where the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the document's value.
    Start,
    /// A value (of role `self.role`) must come.
    Value,
    /// Just after `[`: an element or `]`.
    ArrayFirst,
    /// Just after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,`, a closing bracket, or the end.
    After,
    /// Inside a string (a key when `self.in_key`).
    Str,
    /// Inside a number.
    Num(Num),
    /// Inside `true`, `false` or `null`: the bytes still expected.
    Lit(&'static [u8]),
    /// Inside a skipped container.
    Skip,
    /// The document's value is complete: only blanks may follow.
    End,
    /// Not JSON.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

/// Escape sequence state inside a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// After `\u` and this many hex digits.
    Hex(u8),
}

/// What is done with the bytes of the current string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrUse {
    Skip,
    Key,
    Measure,
    Model(usize),
    Type,
}

/// The push scanner. See the module documentation.
#[derive(Debug, Clone)]
pub(super) struct Scanner {
    shape: Shape,
    state: State,
    frames: [Frame; MAX_FRAMES],
    depth: usize,
    /// The role of the value being read or about to be.
    role: Role,
    // Strings.
    str_use: StrUse,
    escape: Escape,
    hex: u32,
    /// The last escape was a high surrogate (a low one may complete it).
    high_surrogate: Option<u32>,
    measured: u64,
    key: [u8; KEY_CAP],
    key_len: usize,
    key_over: bool,
    // Numbers.
    negative: bool,
    value: u64,
    overflow: bool,
    // Skipped containers.
    skip_depth: u64,
    skip_in_string: bool,
    skip_escape: bool,
    found: Findings,
}

impl Scanner {
    pub(super) fn new(shape: Shape) -> Scanner {
        Scanner {
            shape,
            state: State::Start,
            frames: [Frame::EMPTY; MAX_FRAMES],
            depth: 0,
            role: Role::Top,
            str_use: StrUse::Skip,
            escape: Escape::None,
            hex: 0,
            high_surrogate: None,
            measured: 0,
            key: [0; KEY_CAP],
            key_len: 0,
            key_over: false,
            negative: false,
            value: 0,
            overflow: false,
            skip_depth: 0,
            skip_in_string: false,
            skip_escape: false,
            found: Findings::default(),
        }
    }

    /// Forgets the document, to read another (keeps allocations).
    pub(super) fn reset(&mut self) {
        self.state = State::Start;
        self.depth = 0;
        self.role = Role::Top;
        self.escape = Escape::None;
        self.high_surrogate = None;
        self.skip_depth = 0;
        self.skip_in_string = false;
        self.skip_escape = false;
    }

    /// What the document revealed (meaningful once `finish` says it was whole).
    pub(super) fn findings(&self) -> &Findings {
        &self.found
    }

    /// Ends the document: `true` when it was one whole, well-formed JSON
    /// value (as far as the scanner checks, see the module documentation).
    pub(super) fn finish(&mut self) -> bool {
        if let State::Num(num) = self.state {
            if num.can_end() && self.depth == 0 {
                self.end_number();
            }
        }
        self.state == State::End
    }

    /// Takes the next piece of the document.
    pub(super) fn feed(&mut self, input: &[u8]) {
        let mut at = 0;
        while at < input.len() {
            at = match self.state {
                State::Str => self.string(input, at),
                State::Skip => self.skip(input, at),
                State::Num(Num::Int) => self.digits(input, at),
                State::Failed => return,
                _ => self.structural(input, at),
            };
        }
    }

    /// The integer part of a number: its digits in one run, then the byte
    /// after them as [`Scanner::number`] reads it.
    fn digits(&mut self, input: &[u8], mut at: usize) -> usize {
        while let Some(&byte) = input.get(at) {
            if !byte.is_ascii_digit() {
                return self.number(Num::Int, byte, at);
            }
            self.push_digit(byte);
            at += 1;
        }
        at
    }

    /// Appends one decimal digit to the integer read so far; past `u64`
    /// the number is marked as overflowed.
    #[inline]
    fn push_digit(&mut self, byte: u8) {
        match self
            .value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(byte - b'0')))
        {
            Some(v) => self.value = v,
            None => self.overflow = true,
        }
    }

    fn fail(&mut self) -> usize {
        self.state = State::Failed;
        usize::MAX
    }

    /// One byte outside strings and skipped containers; returns where to
    /// go on (the same byte again when a number ended on it).
    fn structural(&mut self, input: &[u8], at: usize) -> usize {
        let byte = input[at];
        let next = at + 1;
        match self.state {
            State::Num(num) => return self.number(num, byte, at),
            State::Lit(rest) => {
                // As much of the literal as this piece holds, at once.
                let n = rest.len().min(input.len() - at);
                if input[at..at + n] != rest[..n] {
                    return self.fail();
                }
                if n == rest.len() {
                    self.value_done(0, false);
                } else {
                    self.state = State::Lit(&rest[n..]);
                }
                return at + n;
            }
            _ => {}
        }
        if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            return next;
        }
        match self.state {
            State::Start => {
                self.role = Role::Top;
                self.begin_value(byte, next)
            }
            State::Value => self.begin_value(byte, next),
            State::ArrayFirst if byte == b']' => self.close(false, next),
            State::ArrayFirst => self.begin_element(byte, next),
            State::ObjectFirst if byte == b'}' => self.close(true, next),
            State::ObjectFirst | State::Key if byte == b'"' => {
                self.begin_string(StrUse::Key);
                next
            }
            State::Colon if byte == b':' => {
                let frame = &self.frames[self.depth - 1];
                self.role = frame.member;
                self.state = State::Value;
                next
            }
            State::After => {
                let frame = &self.frames[self.depth - 1];
                match byte {
                    b',' if frame.object => {
                        self.state = State::Key;
                        next
                    }
                    b',' => {
                        self.state = State::Value;
                        self.role = frame.role.elements().unwrap_or(Role::Ignore);
                        self.element_starts();
                        next
                    }
                    b'}' if frame.object => self.close(true, next),
                    b']' if !frame.object => self.close(false, next),
                    _ => self.fail(),
                }
            }
            _ => self.fail(),
        }
    }

    fn begin_element(&mut self, byte: u8, next: usize) -> usize {
        let frame = &self.frames[self.depth - 1];
        self.role = frame.role.elements().unwrap_or(Role::Ignore);
        self.element_starts();
        self.begin_value(byte, next)
    }

    /// An element of the current array starts.
    fn element_starts(&mut self) {
        if self.frames[self.depth - 1].role == Role::Choices {
            self.found.choices_empty = false;
        }
    }

    /// The first byte of a value of role `self.role`.
    fn begin_value(&mut self, byte: u8, next: usize) -> usize {
        let kind = match byte {
            b'{' => Kind::Object,
            b'[' => Kind::Array,
            b'"' => Kind::String,
            b'-' | b'0'..=b'9' => Kind::Number,
            b'n' => Kind::Null,
            b't' | b'f' => Kind::Bool,
            _ => return self.fail(),
        };
        self.value_starts(kind);
        match kind {
            Kind::Object | Kind::Array => {
                let object = kind == Kind::Object;
                let role = if object {
                    self.role.object()
                } else {
                    self.role.elements().map(|_| self.role)
                };
                match role {
                    Some(role) if self.depth < MAX_FRAMES => {
                        self.frames[self.depth] = Frame {
                            object,
                            role,
                            member: Role::Ignore,
                            slot: NO_SLOT,
                            text: [0; SLOTS],
                        };
                        self.depth += 1;
                        self.state = if object {
                            State::ObjectFirst
                        } else {
                            State::ArrayFirst
                        };
                    }
                    _ => {
                        self.skip_depth = 1;
                        self.skip_in_string = false;
                        self.skip_escape = false;
                        self.state = State::Skip;
                    }
                }
            }
            Kind::String => {
                let str_use = match self.role {
                    role if role.counts_text() => StrUse::Measure,
                    Role::Model(slot) => StrUse::Model(slot),
                    Role::Type => StrUse::Type,
                    _ => StrUse::Skip,
                };
                self.begin_string(str_use);
            }
            Kind::Number => {
                self.negative = byte == b'-';
                self.value = 0;
                self.overflow = false;
                self.state = State::Num(match byte {
                    b'-' => Num::Minus,
                    b'0' => Num::Zero,
                    digit => {
                        self.value = u64::from(digit - b'0');
                        Num::Int
                    }
                });
            }
            Kind::Null => self.state = State::Lit(b"ull"),
            Kind::Bool if byte == b't' => self.state = State::Lit(b"rue"),
            _ => self.state = State::Lit(b"alse"),
        }
        next
    }

    /// A value of role `self.role` starts with a `kind`: forget what the
    /// place held before (the last occurrence of a key wins).
    fn value_starts(&mut self, kind: Kind) {
        let found = &mut self.found;
        match self.role {
            Role::Top => found.clear(),
            Role::Model(slot) => found.models[slot].reset(kind),
            Role::Type => found.kind.reset(kind),
            Role::Usage(slot) => {
                found.usage[slot] = UsageCounts::default();
                found.usage_kind[slot] = kind;
            }
            Role::Count(slot, field) => {
                let count = match kind {
                    Kind::Null => Count::Null,
                    // Set when the number ends.
                    _ => Count::Invalid,
                };
                found.usage[slot].set(field, count);
            }
            Role::Details(slot, field) => found.usage[slot].set(field, Count::Absent),
            Role::Message | Role::Response => {
                let slot = if self.role == Role::Message {
                    MESSAGE
                } else {
                    RESPONSE
                };
                found.models[slot].reset(Kind::Absent);
                found.usage[slot] = UsageCounts::default();
                found.usage_kind[slot] = Kind::Absent;
            }
            Role::Choices => {
                found.choices = kind;
                found.choices_empty = true;
            }
            _ => {}
        }
    }

    /// A value ended; `text` is the generated text in it (a measured string
    /// or the sum of a tracked container).
    fn value_done(&mut self, text: u64, is_string: bool) {
        if self.depth == 0 {
            self.state = State::End;
            return;
        }
        self.state = State::After;
        let frame = &mut self.frames[self.depth - 1];
        if !frame.object {
            frame.text[0] = frame.text[0].saturating_add(text);
        } else if frame.member == Role::Delta {
            // An event's `delta` is text (Responses) or an object (Anthropic).
            let (as_text, as_object) = if is_string { (text, 0) } else { (0, text) };
            frame.text[DELTA_TEXT] = as_text;
            frame.text[DELTA_OBJECT] = as_object;
        } else if frame.slot != NO_SLOT {
            frame.text[usize::from(frame.slot)] = text;
        }
    }

    /// A closing bracket of the current frame.
    fn close(&mut self, object: bool, next: usize) -> usize {
        let frame = self.frames[self.depth - 1];
        debug_assert_eq!(frame.object, object);
        self.depth -= 1;
        if frame.role == Role::Top {
            self.found.text = frame.text;
        }
        let sum = frame.text.iter().fold(0u64, |a, b| a.saturating_add(*b));
        self.value_done(sum, false);
        next
    }

    fn begin_string(&mut self, str_use: StrUse) {
        self.str_use = str_use;
        self.escape = Escape::None;
        self.high_surrogate = None;
        self.measured = 0;
        if str_use == StrUse::Key {
            self.key_len = 0;
            self.key_over = false;
        }
        self.state = State::Str;
    }

    /// Decoded bytes of the current string.
    fn string_bytes(&mut self, bytes: &[u8]) {
        match self.str_use {
            StrUse::Skip => {}
            StrUse::Measure => self.measured = self.measured.saturating_add(bytes.len() as u64),
            StrUse::Key => {
                let end = self.key_len + bytes.len();
                if self.key_over || end > KEY_CAP {
                    self.key_over = true;
                } else {
                    self.key[self.key_len..end].copy_from_slice(bytes);
                    self.key_len = end;
                }
            }
            StrUse::Model(slot) => self.found.models[slot].push(bytes, MODEL_CAP),
            StrUse::Type => self.found.kind.push(bytes, KIND_CAP),
        }
    }

    /// The current string is not valid text (for what is copied).
    fn string_spoiled(&mut self) {
        match self.str_use {
            StrUse::Key => self.key_over = true,
            StrUse::Model(slot) => self.found.models[slot].spoiled = true,
            StrUse::Type => self.found.kind.spoiled = true,
            StrUse::Skip | StrUse::Measure => {}
        }
    }

    /// Inside a string.
    fn string(&mut self, input: &[u8], mut at: usize) -> usize {
        while at < input.len() {
            if self.escape != Escape::None {
                if !self.escaped(input[at]) {
                    return self.fail();
                }
                at += 1;
                continue;
            }
            let rest = &input[at..];
            let Some(stop) = string_stop(rest) else {
                self.plain_string_bytes(rest);
                return input.len();
            };
            self.plain_string_bytes(&rest[..stop]);
            at += stop + 1;
            if rest[stop] == b'\\' {
                self.escape = Escape::Backslash;
            } else {
                self.string_ends();
                return at;
            }
        }
        at
    }

    fn plain_string_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.high_surrogate.take().is_some() {
            self.string_spoiled();
        }
        self.string_bytes(bytes);
    }

    /// One byte of an escape sequence; `false` when it is invalid.
    fn escaped(&mut self, byte: u8) -> bool {
        match self.escape {
            Escape::Backslash => {
                let decoded = match byte {
                    b'"' | b'\\' | b'/' => byte,
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.escape = Escape::Hex(0);
                        self.hex = 0;
                        return true;
                    }
                    _ => return false,
                };
                self.escape = Escape::None;
                self.plain_string_bytes(&[decoded]);
                true
            }
            Escape::Hex(n) => {
                let Some(digit) = char::from(byte).to_digit(16) else {
                    return false;
                };
                self.hex = self.hex << 4 | digit;
                if n < 3 {
                    self.escape = Escape::Hex(n + 1);
                } else {
                    self.escape = Escape::None;
                    self.code_point(self.hex);
                }
                true
            }
            Escape::None => true,
        }
    }

    /// A `\uXXXX` escape.
    fn code_point(&mut self, unit: u32) {
        let pending = self.high_surrogate.take();
        if (0xDC00..0xE000).contains(&unit) {
            if let Some(high) = pending {
                // The pair is one character of 4 bytes; the high half was
                // measured as 3.
                let c = 0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00);
                self.surrogate_pair_ends(c);
                return;
            }
        }
        if pending.is_some() {
            self.string_spoiled();
        }
        if (0xD800..0xDC00).contains(&unit) {
            self.high_surrogate = Some(unit);
            if self.str_use == StrUse::Measure {
                self.measured = self.measured.saturating_add(3);
            }
            return;
        }
        match char::from_u32(unit) {
            Some(c) => self.string_bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
            None => {
                // A lone low surrogate: measured as 3 bytes, not valid text.
                if self.str_use == StrUse::Measure {
                    self.measured = self.measured.saturating_add(3);
                }
                self.string_spoiled();
            }
        }
    }

    fn surrogate_pair_ends(&mut self, c: u32) {
        if self.str_use == StrUse::Measure {
            self.measured = self.measured.saturating_add(1);
            return;
        }
        match char::from_u32(c) {
            Some(c) => self.string_bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
            None => self.string_spoiled(),
        }
    }

    fn string_ends(&mut self) {
        if self.high_surrogate.take().is_some() {
            self.string_spoiled();
        }
        match self.str_use {
            StrUse::Key => {
                let frame = &mut self.frames[self.depth - 1];
                let (role, slot) = if self.key_over {
                    (Role::Ignore, NO_SLOT)
                } else {
                    frame.role.member(&self.key[..self.key_len], self.shape)
                };
                frame.member = role;
                frame.slot = slot;
                self.state = State::Colon;
            }
            StrUse::Measure => self.value_done(self.measured, true),
            _ => self.value_done(0, true),
        }
    }

    /// One byte inside a number (or just after it).
    fn number(&mut self, num: Num, byte: u8, at: usize) -> usize {
        let digit = byte.is_ascii_digit();
        let next = match (num, byte) {
            (Num::Minus, b'0') => Num::Zero,
            (Num::Minus, _) if digit => {
                self.value = u64::from(byte - b'0');
                Num::Int
            }
            (Num::Int, _) if digit => {
                self.push_digit(byte);
                Num::Int
            }
            (Num::Zero | Num::Int, b'.') => Num::Dot,
            (Num::Dot | Num::Frac, _) if digit => Num::Frac,
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Num::Exp,
            (Num::Exp, b'+' | b'-') => Num::ExpSign,
            (Num::Exp | Num::ExpSign | Num::ExpDigits, _) if digit => Num::ExpDigits,
            (num, _) if num.can_end() && !digit => {
                // The byte after the number: read it again as structure.
                self.end_number();
                return at;
            }
            _ => return self.fail(),
        };
        self.state = State::Num(next);
        at + 1
    }

    fn end_number(&mut self) {
        let State::Num(num) = self.state else {
            return;
        };
        if let Role::Count(slot, field) = self.role {
            let whole = matches!(num, Num::Zero | Num::Int);
            if whole && !self.negative && !self.overflow {
                self.found.usage[slot].set(field, Count::Valid(self.value));
            }
        }
        self.value_done(0, false);
    }

    /// Inside a skipped container: only strings and bracket balance matter.
    fn skip(&mut self, input: &[u8], mut at: usize) -> usize {
        while at < input.len() {
            if self.skip_in_string {
                if self.skip_escape {
                    self.skip_escape = false;
                    at += 1;
                    continue;
                }
                match memchr2(b'"', b'\\', &input[at..]) {
                    None => return input.len(),
                    Some(stop) => {
                        at += stop;
                        if input[at] == b'"' {
                            self.skip_in_string = false;
                        } else {
                            self.skip_escape = true;
                        }
                        at += 1;
                    }
                }
                continue;
            }
            match SKIP_CLASS[usize::from(input[at])] {
                QUOTE => self.skip_in_string = true,
                OPEN => self.skip_depth += 1,
                CLOSE => {
                    self.skip_depth -= 1;
                    if self.skip_depth == 0 {
                        self.value_done(0, false);
                        return at + 1;
                    }
                }
                TOKEN => {}
                _ => return self.fail(),
            }
            at += 1;
        }
        at
    }
}

#[cfg(test)]
mod tests;
