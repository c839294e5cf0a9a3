//! Maps field paths (`routes[2].upstream`) to line and column in the YAML text.
//!
//! serde forgets positions once a document is deserialized, so validation errors
//! found after parsing are located by walking the YAML event stream once and
//! recording where each path starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Positions of every node of a YAML document, keyed by field path.
#[derive(Debug, Default)]
pub struct Locator {
    positions: HashMap<String, (usize, usize)>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    positions: HashMap<String, (usize, usize)>,
}

impl Walker {
    /// The path of the node about to start, and advances the parent's state.
    fn child_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => key.take().map(|k| join(path, &k)),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::Scalar(value, ..) if self.expecting_key() => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    self.positions.entry(join(path, &value)).or_insert(pos);
                    *key = Some(value);
                }
            }
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(p) = self.child_path() {
                    self.positions.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) => {
                let path = self.child_path().unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.child_path().unwrap_or_default();
                self.positions.entry(path.clone()).or_insert(pos);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Locator {
    /// Walks `text` once. A text that does not parse yields an empty locator.
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut walker, false);
        Locator {
            positions: walker.positions,
        }
    }

    /// The line and column (1-based) where `path` starts, or where its nearest
    /// existing ancestor starts when the field itself is absent.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(pos) = self.positions.get(p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The deepest path that starts on `line` (1-based), to name the field of a
    /// parse error that only carries a position.
    pub fn path_at(&self, line: usize, col: usize) -> Option<&str> {
        self.positions
            .iter()
            .filter(|(_, (l, c))| *l == line && *c <= col.max(1))
            .max_by_key(|(p, (_, c))| (*c, p.len()))
            .map(|(p, _)| p.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text = "listen:\n  address: 1.2.3.4:80\nroutes:\n  - name: a\n    upstream: x\n  - name: b\n    upstream: y\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("listen.address"), Some((2, 3)));
        assert_eq!(loc.find("routes[1].upstream"), Some((7, 5)));
        assert_eq!(loc.find("routes[1].auth.issuers").map(|p| p.0), Some(6));
        assert_eq!(loc.path_at(7, 15), Some("routes[1].upstream"));
    }
}
