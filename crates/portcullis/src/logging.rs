//! Log setup: `tracing` with the level from `RUST_LOG` or the configuration, as
//! text or JSON lines, written to stderr by a writer thread.
//!
//! Request threads only format a line and hand it over a channel; the writer
//! thread batches whatever has queued into one `write` to stderr. So a request's
//! access log line costs no `write` and no lock on stderr. No line is dropped:
//! when the writer falls [`QUEUED_LINES`] behind, logging waits for it.

use std::io::BufWriter;

use portcullis_config::{LogFormat, Logging};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines that may wait for the writer. The queue is allocated whole at start (32
/// bytes a line), so it is kept small: 8,192 lines are 256 KiB, where the crate's
/// default of 128,000 held 4 MiB of resident memory.
const QUEUED_LINES: usize = 8_192;

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
        .buffered_lines_limit(QUEUED_LINES)
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
