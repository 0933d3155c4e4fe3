//! Logging: `tracing` to stderr or a log file, synchronously, every line prefixed with who wrote it.
//!
//! The master's lines read `[master pid N]`, a worker's `[worker SLOT pid N]`. The writer has no
//! background thread: a thread started in the master before `fork` would not exist in the workers, and
//! their lines would be lost. `RUST_LOG`, when set, overrides the configured level.
//!
//! With a log file, every process appends to it (`O_APPEND`, one `write` per line, so lines from
//! different processes never interleave). [`reopen`] opens the path again, for log rotation: the master
//! calls it on `SIGUSR1` and passes the signal to its workers, which call it too.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::values::LogLevel;
use crate::error::StartError;

/// -1 in the master, the slot in a worker.
static SLOT: AtomicI64 = AtomicI64::new(-1);
/// This process's pid, cached.
static PID: AtomicU32 = AtomicU32::new(0);

/// The log file, when logging to one. The master is single-threaded, so the lock is never held by
/// another thread when it forks.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes each line to the log file, or to stderr without one.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            Some((_, f)) => f.write_all(buf)?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Opens the log file again at its path (after it was moved away by log rotation). Returns the path,
/// or `None` when logging to stderr. On error the old file stays in use.
pub fn reopen() -> Result<Option<PathBuf>, StartError> {
    let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
    let Some((path, f)) = file.as_mut() else {
        return Ok(None);
    };
    *f = open(path).map_err(|source| StartError::LogFile {
        path: path.clone(),
        source,
    })?;
    Ok(Some(path.clone()))
}

/// Installs the global subscriber, writing to `file` (appending) or to stderr. Does nothing if the
/// application already installed one; fails if the file cannot be opened.
pub fn init(level: LogLevel, file: Option<&Path>) -> Result<(), StartError> {
    if let Some(path) = file {
        let f = open(path).map_err(|source| StartError::LogFile {
            path: path.to_path_buf(),
            source,
        })?;
        *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some((path.to_path_buf(), f));
    }
    PID.store(std::process::id(), Ordering::Relaxed);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        _ => EnvFilter::default().add_directive(level.as_filter().into()),
    };
    // Colour (the fields of events that carry any) only for a person at a terminal: never in a log
    // file, a pipe or the journal.
    let ansi = file.is_none() && io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| Sink)
        .event_format(Prefixed)
        .try_init();
    Ok(())
}

/// Marks this process as the worker in `slot`; called in the worker right after `fork`.
pub fn set_worker(slot: usize) {
    PID.store(std::process::id(), Ordering::Relaxed);
    SLOT.store(slot as i64, Ordering::Relaxed);
}

/// The prefix of this process's log lines, e.g. `worker 2 pid 4242`.
pub fn who() -> String {
    let mut pid = PID.load(Ordering::Relaxed);
    if pid == 0 {
        pid = std::process::id();
    }
    match SLOT.load(Ordering::Relaxed) {
        s if s < 0 => format!("master pid {pid}"),
        s => format!("worker {s} pid {pid}"),
    }
}

/// Routes panics through `tracing`, so a panic's line carries the prefix too.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("unknown panic payload");
        match info.location() {
            Some(at) => tracing::error!("panic at {at}: {message}"),
            None => tracing::error!("panic: {message}"),
        }
    }));
}

struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SystemTime.format_time(&mut writer)?;
        write!(writer, " {:>5} [{}] ", event.metadata().level(), who())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
