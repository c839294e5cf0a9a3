//! `gateway.yaml`: parsing, interpolation and validation for Portcullis.
//!
//! The text is parsed with serde_yaml into mirror types that refuse unknown keys,
//! then compiled into the immutable [`GatewayConfig`]: references resolved, CIDRs
//! parsed, secrets interpolated, files read. Every problem is reported at once as
//! `file:line:column: field.path: message`.

mod ai_routes;
pub mod compile;
pub mod error;
pub mod interpolate;
mod introspection;
pub mod lint;
pub mod locate;
pub mod model;
pub mod providers;
pub mod rate_limits;
mod raw;
pub mod resource;
mod structure;
pub mod units;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::*;

use crate::compile::{Ctx, base_dir};
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
    let raw = match structure::read(text, &locator) {
        Ok(raw) => raw,
        Err(mut problems) => {
            problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
            return Err(ConfigError {
                file: file.to_owned(),
                problems,
            });
        }
    };
    let mut ctx = Ctx {
        problems: Vec::new(),
        base: base.to_path_buf(),
        env,
        files: Vec::new(),
        broken: Default::default(),
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

#[cfg(test)]
mod tests;
