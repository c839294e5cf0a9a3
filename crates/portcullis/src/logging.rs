//! Log setup: `tracing` with the level from `RUST_LOG` or the configuration, as
//! text or JSON lines, written to stderr by a writer thread.
//!
//! Request threads only format a line and hand it over a channel; the writer
//! thread batches whatever has queued into one `write` to stderr. So the access log
//! costs no system call and no lock on stderr per request. No line is dropped:
//! when the writer falls 128,000 lines behind, logging waits for it.

use std::io::BufWriter;

use portcullis_config::{LogFormat, Logging};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Bytes the writer thread gathers before a write to stderr; it also writes
/// whenever the queue runs empty.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Installs the global subscriber once. Keep the guard until the process ends:
/// dropping it writes out the lines still queued.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(logging: &Logging) -> Option<WorkerGuard> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&logging.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("portcullis-log")
        .finish(BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match logging.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.ok().map(|()| guard)
}
