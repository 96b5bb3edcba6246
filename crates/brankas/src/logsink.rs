//! Where the server's log lines go while it serves: into one in-memory buffer that is written
//! to stderr in batches (one `write` for many lines) by a thread that wakes every few
//! milliseconds, instead of one unbuffered `write` per line on the thread that answers the
//! request.
//!
//! Nothing is dropped and the order is kept: lines are appended under one lock, and whoever
//! writes the buffer out does so under that lock. A warning or an error (alerts among them)
//! is written out at once, with every line before it, by the thread that logs it: it is on
//! stderr before the call returns, and it never waits for another thread. A line waits at most
//! [`PAUSE`] otherwise; a buffer past [`HIGH`] bytes is written out by whoever fills it.
//! [`Guard`] writes out what is left when serving ends. Other commands log straight to stderr,
//! as before. The content is what `tracing` formats (no patient data is logged, see
//! ARCHITECTURE.md).

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// How long a line may wait in the buffer.
const PAUSE: Duration = Duration::from_millis(5);

/// Bytes after which the logging thread writes the buffer out itself.
const HIGH: usize = 64 * 1024;

static SINK: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

/// Makes the `tracing` writers.
pub(crate) struct Sink;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        Writer { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Writer {
        Writer { urgent: *meta.level() <= tracing::Level::WARN }
    }
}

/// The `tracing` writer: buffered while the sink runs, else stderr.
pub(crate) struct Writer {
    urgent: bool,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(sink) = SINK.get() else { return std::io::stderr().write(buf) };
        let mut pending = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        pending.extend_from_slice(buf);
        if self.urgent || pending.len() >= HIGH {
            write_out(&mut pending);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match SINK.get() {
            Some(_) => Ok(()),
            None => std::io::stderr().flush(),
        }
    }
}

/// Writes the buffer to stderr and empties it (the caller holds the lock).
fn write_out(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        let _ = std::io::stderr().write_all(pending);
        pending.clear();
    }
}

/// Writes out what is buffered when dropped.
pub(crate) struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        flush();
    }
}

/// Starts buffering (once per process), with the thread that writes the buffer out.
pub(crate) fn start() -> Guard {
    if SINK.set(Mutex::new(Vec::with_capacity(HIGH))).is_ok() {
        let _ = std::thread::Builder::new().name("log-writer".into()).spawn(|| {
            loop {
                std::thread::sleep(PAUSE);
                flush();
            }
        });
    }
    Guard
}

/// Writes out every line buffered so far.
pub(crate) fn flush() {
    if let Some(sink) = SINK.get() {
        write_out(&mut sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }
}
