//! Reads the document into the serde mirror section by section, so that every
//! structural error is reported (not only the first one serde meets), each at
//! the offending value's own line and column with its full field path
//! (`routes[2].timeout`, not the enclosing mapping), and a tab is called a tab.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::compile::did_you_mean;
use crate::error::Problem;
use crate::locate::Locator;
use crate::raw::RawConfig;

/// The top-level keys of gateway.yaml.
const TOP_LEVEL: [&str; 14] = [
    "listen",
    "admin",
    "workers",
    "limits",
    "logging",
    "network",
    "paths",
    "responses",
    "token_cache",
    "tracing",
    "rate_limits",
    "issuers",
    "upstreams",
    "routes",
];

/// Every structural problem of `text`, or its serde mirror.
pub(crate) fn read(text: &str, locator: &Locator) -> Result<RawConfig, Vec<Problem>> {
    let value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(vec![syntax_problem(&e, text, locator)]),
    };
    let mapping = match value {
        Value::Null => return Ok(RawConfig::default()),
        Value::Mapping(m) => m,
        _ => {
            return Err(vec![problem(
                locator,
                "",
                "the document must be a mapping of sections (listen:, routes:, …)".to_owned(),
            )]);
        }
    };
    let mut raw = RawConfig::default();
    let mut problems = Vec::new();
    let mut section = Section {
        locator,
        problems: &mut problems,
    };
    for (key, value) in mapping {
        let Some(key) = key.as_str().map(str::to_owned) else {
            section.err("", "a top-level key is not a string".to_owned());
            continue;
        };
        match key.as_str() {
            "listen" => raw.listen = section.field(&key, value),
            "admin" => raw.admin = section.field(&key, value),
            "workers" => raw.workers = section.field(&key, value),
            "limits" => raw.limits = section.field(&key, value),
            "logging" => raw.logging = section.field(&key, value),
            "network" => raw.network = section.field(&key, value),
            "paths" => raw.paths = section.field(&key, value),
            "responses" => raw.responses = section.field(&key, value),
            "token_cache" => raw.token_cache = section.field(&key, value),
            "tracing" => raw.tracing = section.field(&key, value),
            "rate_limits" => raw.rate_limits = section.field(&key, value),
            "issuers" => raw.issuers = section.entries(&key, value),
            "upstreams" => raw.upstreams = section.entries(&key, value),
            "routes" => raw.routes = section.items(&key, value),
            other => {
                let hint = did_you_mean(other, TOP_LEVEL.into_iter());
                section.err(
                    other,
                    format!(
                        "unknown key `{other}`{hint}; known keys: {}",
                        TOP_LEVEL.join(", ")
                    ),
                );
            }
        }
    }
    if problems.is_empty() {
        Ok(raw)
    } else {
        Err(problems)
    }
}

/// Deserializes parts of the document, collecting problems with positions.
struct Section<'a> {
    locator: &'a Locator,
    problems: &'a mut Vec<Problem>,
}

impl Section<'_> {
    fn err(&mut self, path: &str, message: String) {
        self.problems.push(problem(self.locator, path, message));
    }

    /// One value at `path`; `None` (and a problem) when it does not fit. serde
    /// stops at a mapping's first bad field, so a mapping that fails is tried
    /// again one key at a time to report each bad field.
    fn field<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        let first = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return Some(v),
            Err(e) => located(path, &e),
        };
        let mut each = Vec::new();
        if let Value::Mapping(m) = &value
            && m.len() > 1
        {
            for (k, v) in m {
                let mut one = serde_yaml::Mapping::new();
                one.insert(k.clone(), v.clone());
                if let Err(e) = serde_path_to_error::deserialize::<_, T>(Value::Mapping(one)) {
                    let found = located(path, &e);
                    // Alone, a key also lacks its siblings: that is not its fault.
                    if !found.1.starts_with("missing field") && !each.contains(&found) {
                        each.push(found);
                    }
                }
            }
        }
        if each.is_empty() {
            each.push(first);
        }
        for (p, message) in each {
            self.err(&p, message);
        }
        None
    }

    /// A list whose items are checked one by one (`routes`).
    fn items<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Vec<T> {
        match value {
            Value::Null => Vec::new(),
            Value::Sequence(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, item)| self.field(&format!("{path}[{i}]"), item))
                .collect(),
            _ => {
                self.err(path, format!("`{path}` must be a list"));
                Vec::new()
            }
        }
    }

    /// A mapping of named entries checked one by one (`issuers`, `upstreams`).
    fn entries<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: Value,
    ) -> std::collections::BTreeMap<String, T> {
        let mut out = std::collections::BTreeMap::new();
        match value {
            Value::Null => {}
            Value::Mapping(m) => {
                for (name, item) in m {
                    let Some(name) = name.as_str().map(str::to_owned) else {
                        self.err(path, format!("a name in `{path}` is not a string"));
                        continue;
                    };
                    if let Some(v) = self.field(&format!("{path}.{name}"), item) {
                        out.insert(name, v);
                    }
                }
            }
            _ => self.err(path, format!("`{path}` must be a mapping of names")),
        }
        out
    }
}

/// The full path and the message of a deserialization error under `path`.
fn located(path: &str, e: &serde_path_to_error::Error<serde_yaml::Error>) -> (String, String) {
    let inner = e.path().to_string();
    let full = join(path, if inner == "." { "" } else { &inner });
    explain(full, &e.inner().to_string())
}

/// The path and message for serde's error text: an unknown field is named with
/// the keys that would fit.
fn explain(path: String, message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        let field = &rest[..end];
        let expected = expected_fields(message);
        let mut text = format!(
            "unknown key `{field}`{}",
            did_you_mean(field, expected.iter().map(String::as_str))
        );
        if !expected.is_empty() {
            text.push_str(&format!("; known keys: {}", expected.join(", ")));
        }
        let path = if path.ends_with(field) {
            path
        } else {
            join(&path, field)
        };
        return (path, text);
    }
    (path, message.to_owned())
}

fn expected_fields(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected one of ") else {
        return message
            .split_once("expected `")
            .and_then(|(_, r)| r.split_once('`'))
            .map(|(f, _)| vec![f.to_owned()])
            .unwrap_or_default();
    };
    list.split(", ")
        .map(|f| f.trim_matches('`').to_owned())
        .collect()
}

fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

fn problem(locator: &Locator, path: &str, message: String) -> Problem {
    let pos = locator.find(path);
    Problem {
        path: path.to_owned(),
        message,
        line: pos.map(|p| p.0),
        column: pos.map(|p| p.1),
    }
}

/// A document that is not YAML: where and why, a tab called a tab.
fn syntax_problem(e: &serde_yaml::Error, text: &str, locator: &Locator) -> Problem {
    let (line, column) = e
        .location()
        .map_or((None, None), |l| (Some(l.line()), Some(l.column())));
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C"; the prefix already says where.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    let tab_at = |l: usize, c: usize| {
        text.lines()
            .nth(l.saturating_sub(1))
            .and_then(|row| row.chars().nth(c.saturating_sub(1)))
            == Some('\t')
    };
    let tab_line = text
        .lines()
        .position(|row| row.trim_start_matches(' ').starts_with('\t'));
    let (line, column) = match (line, column) {
        (Some(l), Some(c)) if tab_at(l, c) => {
            message = "a tab character: YAML indents with spaces only".to_owned();
            (Some(l), Some(c))
        }
        _ if message.contains("cannot start any token") && tab_line.is_some() => {
            message = "a tab character: YAML indents with spaces only".to_owned();
            let l = tab_line.map(|l| l + 1);
            let c = l
                .and_then(|l| text.lines().nth(l - 1))
                .and_then(|row| row.find('\t'))
                .map(|c| c + 1);
            (l, c)
        }
        other => other,
    };
    let mut path = match (line, column) {
        (Some(l), Some(c)) => locator.path_at(l, c).unwrap_or_default().to_owned(),
        _ => String::new(),
    };
    let (mut line, mut column) = (line, column);
    if let Some((dup_line, dup_col, key)) = duplicate_key(&message, text, line) {
        message = format!(
            "duplicate key `{key}` (first at line {}); each key may appear once",
            line.unwrap_or(0)
        );
        (line, column) = (Some(dup_line), Some(dup_col));
    } else if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
    {
        // serde_yaml prefixes the path; the path field says it already.
        if path.is_empty() {
            path = prefix.to_owned();
        }
        message = rest.to_owned();
    }
    Problem {
        path,
        message,
        line,
        column,
    }
}

/// For serde_yaml's "duplicate entry with key" (located at the first one): the
/// line and column of the second one, and the key.
fn duplicate_key(
    message: &str,
    text: &str,
    first: Option<usize>,
) -> Option<(usize, usize, String)> {
    let key = message
        .split_once("duplicate entry with key \"")?
        .1
        .split('"')
        .next()?
        .to_owned();
    let first = first?;
    let lines: Vec<&str> = text.lines().collect();
    let first_row = lines.get(first.checked_sub(1)?)?;
    let indent = first_row.len() - first_row.trim_start().len();
    let found = lines.iter().enumerate().skip(first).find(|(_, row)| {
        let trimmed = row.trim_start();
        row.len() - trimmed.len() == indent
            && trimmed
                .strip_prefix(key.as_str())
                .is_some_and(|r| r.trim_start().starts_with(':'))
    })?;
    Some((found.0 + 1, indent + 1, key))
}
