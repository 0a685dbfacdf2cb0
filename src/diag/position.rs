//! Where a node of a YAML document starts, by path (`keys[3].scopes[1]`).
//!
//! Validation works on typed data and reports problems by path; operators
//! want `FILE:LINE:COL`. serde_yaml keeps no positions once a document is
//! deserialized, so this module reads the text a second time with
//! `yaml-rust2`'s event parser, whose events carry markers, and keeps a small
//! tree of node positions to resolve paths against.
//!
//! It costs about as much as a parse, so callers build it only when there is
//! a problem to report. Shared by the keys loader and the server config.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based (line, column).
type Pos = (u32, u32);

/// Node positions of one YAML document, addressable by path.
pub(crate) struct PositionIndex {
    nodes: Vec<Node>,
}

struct Node {
    pos: Pos,
    kind: Kind,
}

enum Kind {
    Leaf,
    Seq(Vec<u32>),
    Map(Vec<Entry>),
}

struct Entry {
    key: Box<str>,
    key_pos: Pos,
    value: u32,
}

/// An open collection while events stream in.
enum Frame {
    Seq(u32),
    /// A mapping; `key` is the key whose value comes next.
    Map {
        node: u32,
        key: Option<(Box<str>, Pos)>,
    },
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    stack: Vec<Frame>,
    /// Set after the first document: later ones are not indexed.
    done: bool,
}

fn pos_of(mark: Marker) -> Pos {
    // yaml-rust2's lines are 1-based, its columns 0-based.
    (
        u32::try_from(mark.line()).unwrap_or(u32::MAX),
        u32::try_from(mark.col() + 1).unwrap_or(u32::MAX),
    )
}

impl Builder {
    /// Adds a node and hangs it under the open collection. A node in key
    /// position of a mapping becomes that mapping's pending key instead.
    fn start(&mut self, pos: Pos, kind: Kind, key_text: Option<&str>, empty_plain: bool) -> u32 {
        let idx = self.nodes.len() as u32;
        let mut pos = pos;
        match self.stack.last_mut() {
            None | Some(Frame::Seq(_)) => {}
            Some(Frame::Map { node, key }) => match key.take() {
                None => {
                    // A key. Block mappings report their start after the first
                    // key, so the first key's position is the mapping's.
                    *key = Some((key_text.unwrap_or("").into(), pos));
                    let map = &mut self.nodes[*node as usize];
                    if map.pos > pos {
                        map.pos = pos;
                    }
                    if key_text.is_some() {
                        return u32::MAX; // a plain key: no node of its own
                    }
                }
                Some((k, key_pos)) => {
                    // `field:` with nothing after it is an empty scalar whose
                    // marker is already on the next line: point at the key.
                    if empty_plain {
                        pos = key_pos;
                    }
                    let map = *node;
                    if let Kind::Map(entries) = &mut self.nodes[map as usize].kind {
                        entries.push(Entry {
                            key: k,
                            key_pos,
                            value: idx,
                        });
                    }
                }
            },
        }
        if let Some(Frame::Seq(seq)) = self.stack.last() {
            let seq = *seq as usize;
            if let Kind::Seq(items) = &mut self.nodes[seq].kind {
                items.push(idx);
            }
        }
        self.nodes.push(Node { pos, kind });
        idx
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let pos = pos_of(mark);
        match ev {
            Event::Scalar(text, style, _, _) => {
                let empty_plain = text.is_empty() && style == TScalarStyle::Plain;
                self.start(pos, Kind::Leaf, Some(&text), empty_plain);
            }
            Event::Alias(_) => {
                self.start(pos, Kind::Leaf, Some("*"), false);
            }
            Event::SequenceStart(..) => {
                let idx = self.start(pos, Kind::Seq(Vec::new()), None, false);
                self.stack.push(Frame::Seq(idx));
            }
            Event::MappingStart(..) => {
                let idx = self.start(pos, Kind::Map(Vec::new()), None, false);
                self.stack.push(Frame::Map {
                    node: idx,
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart => {}
        }
    }
}

/// One step of a path.
enum Step<'p> {
    Field(&'p str),
    Index(usize),
}

/// Splits `keys[3].scopes[1]` into steps; `None` when malformed.
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            out.push(Step::Index(after[..end].parse().ok()?));
            rest = &after[end + 1..];
        } else {
            let rest_field = rest.strip_prefix('.').unwrap_or(rest);
            let end = rest_field.find(['.', '[']).unwrap_or(rest_field.len());
            if end == 0 {
                return None;
            }
            out.push(Step::Field(&rest_field[..end]));
            rest = &rest_field[end..];
        }
    }
    Some(out)
}

impl PositionIndex {
    /// Indexes the first document of `text`. A syntax error ends the index
    /// where it occurs; what came before stays addressable. `None` when not
    /// even the root node could be read.
    pub(crate) fn new(text: &str) -> Option<PositionIndex> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by serde_yaml with its own position;
        // here it only ends the index early.
        let _ = parser.load(&mut builder, false);
        if builder.nodes.is_empty() {
            return None;
        }
        Some(PositionIndex {
            nodes: builder.nodes,
        })
    }

    /// Where the node at `path` starts: for a mapping field such as
    /// `keys[3].sha256`, its *value* (the thing that is wrong), except that
    /// an empty value (`sha256:` alone) points at the field's key. When the
    /// path does not exist (a missing field, an index past the end), the
    /// nearest existing ancestor's position. `""` is the document's root.
    /// An index into a mapping (`model_prices[1]`) is its n-th entry, at
    /// its key.
    pub(crate) fn locate(&self, path: &str) -> Option<(usize, usize)> {
        self.walk(path, false)
    }

    /// Like [`PositionIndex::locate`], but for a mapping field the position
    /// of its *key*: what an "unknown field" problem should point at.
    pub(crate) fn locate_key(&self, path: &str) -> Option<(usize, usize)> {
        self.walk(path, true)
    }

    fn walk(&self, path: &str, want_key: bool) -> Option<(usize, usize)> {
        let root = self.nodes.first()?;
        let mut node = root;
        let mut pos = root.pos;
        for step in steps(path).unwrap_or_default() {
            let next = match (&node.kind, step) {
                (Kind::Map(entries), Step::Field(name)) => entries
                    .iter()
                    .find(|e| &*e.key == name)
                    .map(|e| (e.value, if want_key { Some(e.key_pos) } else { None })),
                (Kind::Seq(items), Step::Index(i)) => items.get(i).map(|v| (*v, None)),
                // The n-th entry of a mapping whose keys are data, not field
                // names (`model_prices[2]`): an entry starts at its key.
                (Kind::Map(entries), Step::Index(i)) => {
                    entries.get(i).map(|e| (e.value, Some(e.key_pos)))
                }
                _ => None,
            };
            let Some((value, key_pos)) = next else {
                break;
            };
            let Some(child) = self.nodes.get(value as usize) else {
                break;
            };
            node = child;
            pos = key_pos.unwrap_or(child.pos);
        }
        Some((pos.0 as usize, pos.1 as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment
organisations:
  - id: org_a
    workspaces:
      - id: ws_a
        slug: a
keys:
  - id: k1
    type: workspace-service
    scopes: [completions.write, logs.view]
    sha256:
    rate_limits:
      - { type: requests, unit: rpm, value: 10 }
  - id: k2
    scopes:
      - a.b
      - \"c.d\"
";

    fn index() -> PositionIndex {
        PositionIndex::new(DOC).expect("indexes")
    }

    #[test]
    fn scalars_and_items_are_located_one_based() {
        let ix = index();
        assert_eq!(ix.locate("keys[0].id"), Some((8, 9)));
        assert_eq!(ix.locate("keys[0].scopes[1]"), Some((10, 33)));
        assert_eq!(ix.locate("keys[1].scopes[1]"), Some((17, 9)));
        assert_eq!(
            ix.locate("organisations[0].workspaces[0].slug"),
            Some((6, 15))
        );
        assert_eq!(ix.locate("keys[0].rate_limits[0].value"), Some((13, 45)));
    }

    #[test]
    fn collections_start_at_their_first_key_or_bracket() {
        let ix = index();
        assert_eq!(ix.locate("keys[1]"), Some((14, 5)));
        assert_eq!(ix.locate("keys"), Some((8, 3)));
        assert_eq!(ix.locate("keys[0].rate_limits[0]"), Some((13, 9)));
        assert_eq!(ix.locate("keys[0].scopes"), Some((10, 13)));
        assert_eq!(ix.locate(""), Some((2, 1)));
    }

    #[test]
    fn key_position_for_unknown_field_style_problems() {
        let ix = index();
        assert_eq!(ix.locate_key("keys[0].scopes"), Some((10, 5)));
        assert_eq!(ix.locate_key("keys"), Some((7, 1)));
        // An index step has no key: the element itself.
        assert_eq!(ix.locate_key("keys[1]"), Some((14, 5)));
    }

    #[test]
    fn an_index_into_a_mapping_is_its_nth_entry_at_its_key() {
        let ix = PositionIndex::new("prices:\n  \"a.b*\": { input: 1 }\n  c: { input: 2 }\n")
            .expect("indexes");
        assert_eq!(ix.locate("prices[0]"), Some((2, 3)));
        assert_eq!(ix.locate("prices[1]"), Some((3, 3)));
        assert_eq!(ix.locate("prices[1].input"), Some((3, 15)));
        assert_eq!(
            ix.locate("prices[2]"),
            Some((2, 3)),
            "past the end: the mapping"
        );
    }

    #[test]
    fn empty_value_points_at_its_key() {
        assert_eq!(index().locate("keys[0].sha256"), Some((11, 5)));
    }

    #[test]
    fn missing_paths_fall_back_to_the_nearest_ancestor() {
        let ix = index();
        assert_eq!(ix.locate("keys[1].sha256"), Some((14, 5)));
        assert_eq!(ix.locate("keys[7].id"), Some((8, 3)));
        assert_eq!(ix.locate("keys[0].scopes[9]"), Some((10, 13)));
        assert_eq!(ix.locate("nope"), Some((2, 1)));
        assert_eq!(ix.locate("keys..[x"), Some((2, 1)));
    }

    #[test]
    fn a_broken_document_is_indexed_up_to_the_error() {
        let ix = PositionIndex::new("keys:\n  - id: a\n  - id: \"b\n").expect("partial");
        assert_eq!(ix.locate("keys[0].id"), Some((2, 9)));
        assert!(PositionIndex::new("").is_none());
        assert!(PositionIndex::new("{").is_some());
    }
}
