//! Logging: `tracing` to stderr or a log file, synchronously, every line prefixed with who wrote it.
//!
//! The master's lines read `[master pid N]`, a worker's `[worker SLOT pid N]`. The writer has no
//! background thread: a thread started in the master before `fork` would not exist in the workers, and
//! their lines would be lost. `RUST_LOG`, when set, overrides the configured level.
//!
//! With a log file, every process appends to it (`O_APPEND`, one `write` per line, so lines from
//! different processes never interleave). [`reopen`] opens the path again, for log rotation: the master
//! calls it on `SIGUSR1` and passes the signal to its workers, which call it too. Under `--user` the
//! master hands the file to the workers' account ([`hand_files_to`]), so they can reopen it.
//!
//! Access lines take a shorter way in workers (`worker::access_sink`): formatted with the same
//! [`prefix`] and [`SystemTime`] stamp straight into a buffer, and written here in batches of whole
//! lines with [`write_lines`], when this module's subscriber is the one installed ([`owns_output`]).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::values::LogLevel;
use crate::error::StartError;
use crate::shared::privileges::{self, Account};

/// -1 in the master, the slot in a worker.
static SLOT: AtomicI64 = AtomicI64::new(-1);
/// This process's pid, cached.
static PID: AtomicU32 = AtomicU32::new(0);

/// The log file, when logging to one. The master is single-threaded, so the lock is never held by
/// another thread when it forks.
static FILE: Mutex<Option<(PathBuf, File)>> = Mutex::new(None);

/// Whether the installed global subscriber is the one [`init`] built (an application may have
/// installed its own).
static OWNED: AtomicBool = AtomicBool::new(false);

/// The account the log file is handed to (`--user`), set by the master before [`init`].
static OWNER: Mutex<Option<Account>> = Mutex::new(None);

/// Hands the log file, from [`init`] on and at every [`reopen`], to `account` (the workers' account,
/// `--user`), so that the workers, which run as it, can reopen it after a rotation.
pub fn hand_files_to(account: Option<Account>) {
    *OWNER.lock().unwrap_or_else(|e| e.into_inner()) = account;
}

/// Opens the log file for appending, creating it. In a root master with an account to hand it to,
/// the file is opened without following a symlink at the path and then handed over (see
/// [`privileges::hand_over`]); a symlink there is opened as usual but not handed over.
fn open(path: &Path) -> io::Result<File> {
    let owner = OWNER.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    let Some(account) = owner.filter(|_| nix::unistd::geteuid().is_root()) else {
        return options.open(path);
    };
    let nofollow = options.clone().custom_flags(libc::O_NOFOLLOW).open(path);
    let (file, nofollow) = match nofollow {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => (options.open(path)?, false),
        Err(e) => return Err(e),
    };
    privileges::hand_over(&file, &account, nofollow)
        .map_err(|e| io::Error::other(format!("cannot hand it to {account}: {e}")))?;
    Ok(file)
}

/// Writes each line to the log file, or to stderr without one.
struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_lines(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `lines` (whole lines) where every log line goes, the log file or stderr, with one `write`
/// when the system takes it whole (it always does for a file, and for a pipe up to `PIPE_BUF` bytes).
pub(crate) fn write_lines(lines: &[u8]) -> io::Result<()> {
    let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
    match file.as_mut() {
        Some((_, f)) => f.write_all(lines),
        None => io::stderr().write_all(lines),
    }
}

/// Whether log lines are formatted by [`init`]'s subscriber: then an access line written with
/// [`write_lines`], [`prefix`] and [`SystemTime`]'s stamp is the line `tracing` would have written.
pub(crate) fn owns_output() -> bool {
    OWNED.load(Ordering::Relaxed)
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

/// Installs the global subscriber, writing to `file` (appending) or to stderr, in colour if `colors`
/// says so (`None`: when stderr is a terminal and there is no file). Does nothing if the application
/// already installed one; fails if the file cannot be opened.
pub fn init(level: LogLevel, file: Option<&Path>, colors: Option<bool>) -> Result<(), StartError> {
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
    let ansi = colors.unwrap_or_else(|| file.is_none() && io::stderr().is_terminal());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(|| Sink)
        .event_format(Prefixed)
        .try_init();
    // `try_init` also fails when only its `log` bridge could not be set; ask the dispatcher instead.
    let owned = tracing::dispatcher::get_default(|d| d.is::<Prefixed>());
    OWNED.store(owned, Ordering::Relaxed);
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

/// What follows the time stamp on this process's lines at `level`, e.g. `"  INFO [worker 2 pid 4242] "`.
pub(crate) fn prefix(level: Level) -> String {
    format!(" {level:>5} [{}] ", who())
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

/// The line format: time stamp, level, [`who`], then the event's fields.
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
        writer.write_str(&prefix(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
