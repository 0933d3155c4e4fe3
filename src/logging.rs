//! Logging: `tracing` to stderr, synchronously, every line prefixed with who wrote it.
//!
//! The master's lines read `[master pid N]`, a worker's `[worker SLOT pid N]`. The writer is plain
//! stderr with no background thread: a thread started in the master before `fork` would not exist in the
//! workers, and their lines would be lost. `RUST_LOG`, when set, overrides the configured level.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::cli::LogLevel;

/// -1 in the master, the slot in a worker.
static SLOT: AtomicI64 = AtomicI64::new(-1);
/// This process's pid, cached.
static PID: AtomicU32 = AtomicU32::new(0);

/// Installs the global subscriber. Does nothing if the application already installed one.
pub fn init(level: LogLevel) {
    PID.store(std::process::id(), Ordering::Relaxed);
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::new(v),
        _ => EnvFilter::default().add_directive(level.as_filter().into()),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Prefixed)
        .try_init();
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
        tracing::error!("panic: {info}");
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
