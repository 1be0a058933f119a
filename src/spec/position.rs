//! Maps key paths (`columns.app_version.transforms[0]`) to line and column in the YAML text,
//! so spec errors can point at the spot in the file.
//!
//! figment's YAML provider (serde_yaml) does not expose spans, so the text is walked with
//! yaml-rust2's event parser, which does; only when a problem must be placed (see `diagnose`).

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};

/// Key path → (line, column), both 1-based.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map {
        path: String,
        expecting_key: bool,
        current_key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Positions {
    /// Indexes every key and sequence item of `text`. Unparsable text yields an empty index
    /// (the syntax error itself is reported elsewhere, with its own position).
    pub fn index(text: &str) -> Self {
        let mut out = Positions::default();
        let mut parser = Parser::new_from_str(text);
        let mut stack: Vec<Frame> = Vec::new();
        while let Ok((event, mark)) = parser.next_token() {
            let pos = (mark.line(), mark.col() + 1);
            // The path of the node this event starts, if it is a value inside a container.
            let node_path = match stack.last_mut() {
                Some(Frame::Map {
                    path,
                    expecting_key,
                    current_key,
                }) => {
                    if *expecting_key {
                        None
                    } else {
                        current_key.as_ref().map(|k| join(path, k))
                    }
                }
                Some(Frame::Seq { path, index }) => Some(format!("{path}[{index}]")),
                None => Some(String::new()),
            };
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    match stack.last_mut() {
                        Some(Frame::Map {
                            path,
                            expecting_key,
                            current_key,
                        }) => {
                            if *expecting_key {
                                // A mapping's own position is that of its first key (the
                                // parser's marker for a mapping start is past it).
                                out.map.entry(path.clone()).or_insert(pos);
                                out.map.insert(join(path, &value), pos);
                                *current_key = Some(value);
                                *expecting_key = false;
                            } else {
                                *expecting_key = true;
                            }
                        }
                        Some(Frame::Seq { path, index }) => {
                            out.map.entry(format!("{path}[{index}]")).or_insert(pos);
                            *index += 1;
                        }
                        None => {}
                    }
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let p = node_path.unwrap_or_default();
                    if matches!(event, Event::MappingStart(..)) {
                        stack.push(Frame::Map {
                            path: p,
                            expecting_key: true,
                            current_key: None,
                        });
                    } else {
                        stack.push(Frame::Seq { path: p, index: 0 });
                    }
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    match stack.last_mut() {
                        Some(Frame::Map { expecting_key, .. }) => *expecting_key = true,
                        Some(Frame::Seq { index, .. }) => *index += 1,
                        None => {}
                    }
                }
                Event::Alias(_) => match stack.last_mut() {
                    Some(Frame::Map { expecting_key, .. }) => *expecting_key = !*expecting_key,
                    Some(Frame::Seq { index, .. }) => *index += 1,
                    None => {}
                },
                _ => {}
            }
        }
        out
    }

    /// The position of exactly `path`, if the YAML text has that key or item.
    pub fn exact(&self, path: &str) -> Option<(usize, usize)> {
        self.map.get(path).copied()
    }

    /// The position of `path`, or of its closest indexed ancestor.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.map.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let text = "source:\n  type: sqs\ncolumns:\n  app_version:\n    path: $.v\n    transforms:\n      - type: trim\n      - type: versoin_to_int\n";
        let p = Positions::index(text);
        assert_eq!(p.find("source.type"), Some((2, 3)));
        assert_eq!(p.find("columns.app_version.path"), Some((5, 5)));
        assert_eq!(
            p.find("columns.app_version.transforms[1].type"),
            Some((8, 9))
        );
        assert_eq!(p.find("columns.app_version.transforms[1]"), Some((8, 9)));
        // Unknown deeper paths fall back to the closest ancestor.
        assert_eq!(p.find("columns.app_version.path.more"), Some((5, 5)));
    }
}
