//! `gateway.yaml`: parsing, interpolation and validation for Portcullis.
//!
//! The text is parsed with serde_yaml into mirror types that refuse unknown keys,
//! then compiled into the immutable [`GatewayConfig`]: references resolved, CIDRs
//! parsed, secrets interpolated, files read. Every problem is reported at once as
//! `file:line:column: field.path: message`.

pub mod compile;
pub mod error;
pub mod interpolate;
pub mod lint;
pub mod locate;
pub mod model;
mod raw;
pub mod units;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::*;

use crate::compile::{Ctx, base_dir, did_you_mean};
use crate::locate::Locator;

/// Loads and validates a configuration file.
pub fn load(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        problems: vec![Problem {
            path: String::new(),
            message: format!("cannot read: {e}"),
            line: None,
            column: None,
        }],
    })?;
    load_str(&text, &file, &base_dir(path), &interpolate::process_env)
}

/// Validates configuration text. `base` resolves relative file paths; `env` looks
/// up `${VAR}` references.
pub fn load_str(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GatewayConfig, ConfigError> {
    let locator = Locator::new(text);
    let raw: raw::RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            return Err(ConfigError {
                file: file.to_owned(),
                problems: vec![serde_problem(&e, &locator)],
            });
        }
    };
    let mut ctx = Ctx {
        problems: Vec::new(),
        base: base.to_path_buf(),
        env,
        files: Vec::new(),
    };
    let compiled = compile::compile(raw, &mut ctx, file);
    match compiled {
        Some(config) if ctx.problems.is_empty() => Ok(config),
        _ => {
            let mut problems: Vec<Problem> = ctx
                .problems
                .into_iter()
                .map(|(path, message)| {
                    let pos = locator.find(&path);
                    Problem {
                        path,
                        message,
                        line: pos.map(|p| p.0),
                        column: pos.map(|p| p.1),
                    }
                })
                .collect();
            problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
            Err(ConfigError {
                file: file.to_owned(),
                problems,
            })
        }
    }
}

fn serde_problem(e: &serde_yaml::Error, locator: &Locator) -> Problem {
    let (line, column) = e
        .location()
        .map_or((None, None), |l| (Some(l.line()), Some(l.column())));
    let mut message = e.to_string();
    // serde_yaml appends " at line L column C"; the prefix already says where.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    // serde_yaml prefixes the path ("routes[0]: ..."): keep it as the path.
    let (mut path, mut message) = match message.split_once(": ") {
        Some((p, m)) if !p.contains(' ') => (p.to_owned(), m.to_owned()),
        _ => (String::new(), message),
    };
    if let Some(field) = unknown_field(&message) {
        let expected = expected_fields(&message);
        message = format!(
            "unknown key `{field}`{}",
            did_you_mean(&field, expected.iter().map(String::as_str))
        );
        if !expected.is_empty() {
            message.push_str(&format!("; known keys: {}", expected.join(", ")));
        }
        path = if path.is_empty() {
            field
        } else {
            format!("{path}.{field}")
        };
    }
    if path.is_empty()
        && let (Some(l), Some(c)) = (line, column)
        && let Some(p) = locator.path_at(l, c)
    {
        path = p.to_owned();
    }
    Problem {
        path,
        message,
        line,
        column,
    }
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
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

#[cfg(test)]
mod tests;
