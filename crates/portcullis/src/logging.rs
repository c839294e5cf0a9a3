//! Log setup: `tracing` with the level from `RUST_LOG` or the configuration, as
//! text or JSON lines.

use portcullis_config::{LogFormat, Logging};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once.
pub fn init(logging: &Logging) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match logging.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
