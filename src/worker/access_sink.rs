//! The access log's writer in a worker: each line formatted straight into a per-process buffer, with
//! the time stamp and prefix every log line has, and written in batches.
//!
//! A batch is whole lines, at most [`BATCH`] bytes (`PIPE_BUF`), written with one `write`, so lines
//! from different workers sharing a pipe, stderr or a file never interleave or split; a single line
//! longer than that is written alone. The buffer is written out when the next line would not fit,
//! [`FLUSH_INTERVAL`] after it got its first line, and by [`flush`], which the worker calls after the
//! drain and before every exit, and before it reopens the log file on `SIGUSR1`. Lines are lost only
//! when the worker dies without that (`SIGKILL`, a crash).
//!
//! This takes over only when the logging module's own subscriber is installed (see
//! `logging::owns_output`): under an application's own subscriber every line is a `tracing` event,
//! as any other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// The largest batch: `PIPE_BUF`, the most a pipe writes in one piece.
pub(crate) const BATCH: usize = 4096;

/// The longest a line waits in the buffer.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The target and level of access lines, as `RUST_LOG` and `--log-level` name them.
const TARGET: &str = "hyperfork::access";

/// Whether lines go to the buffer (set by [`open`]); otherwise each is a `tracing` event.
static BATCHED: AtomicBool = AtomicBool::new(false);

/// This process's buffer. A worker's threads share it; the master never writes to it, so it is
/// empty and unlocked at every `fork`.
static BUFFER: Mutex<Buffer> = Mutex::new(Buffer::new());

/// Told when the buffer gets its first line; the flush task then writes it out a little later.
static PENDING: Notify = Notify::const_new();

/// Decides, once in each worker, whether access lines are written: `false` when `hyperfork::access`
/// at INFO is filtered out (`--log-level warning`, `RUST_LOG`), and then no request builds one. When
/// they are, and the logging module formats the lines, starts batching them, with the task that
/// writes the buffer out after [`FLUSH_INTERVAL`]. Call it inside the worker's runtime.
pub(crate) fn open() -> bool {
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return false;
    }
    if crate::logging::owns_output() && !BATCHED.load(Ordering::Relaxed) {
        lock().start(crate::logging::prefix(tracing::Level::INFO));
        BATCHED.store(true, Ordering::Relaxed);
        tokio::spawn(flush_after_interval());
    }
    true
}

/// Writes one access line, finished at `now`: `line` appends its text (without the prefix and the
/// newline).
pub(crate) fn write(now: Instant, line: impl FnOnce(&mut Vec<u8>)) {
    if !BATCHED.load(Ordering::Relaxed) {
        let mut text = Vec::new();
        line(&mut text);
        tracing::info!(target: TARGET, "{}", String::from_utf8_lossy(&text));
        return;
    }
    let mut buffer = lock();
    let was_empty = buffer.bytes.is_empty();
    let wall = buffer.wall_clock(now);
    buffer.add(wall, line, &mut output);
    if was_empty && !buffer.bytes.is_empty() {
        PENDING.notify_one();
    }
}

/// Writes out every buffered line now.
pub(crate) fn flush() {
    if BATCHED.load(Ordering::Relaxed) {
        lock().write_all(&mut output);
    }
}

/// Writes a batch where the other log lines go. A batch that cannot be written is dropped, as
/// `tracing`'s own writer drops a line.
fn output(batch: &[u8]) {
    let _ = crate::logging::write_lines(batch);
}

/// Writes the buffer out [`FLUSH_INTERVAL`] after it got its first line, for as long as the runtime
/// runs.
async fn flush_after_interval() {
    loop {
        PENDING.notified().await;
        tokio::time::sleep(FLUSH_INTERVAL).await;
        flush();
    }
}

/// The buffer. If a thread panicked holding it, the part of a line it was adding is dropped, so the
/// buffer holds whole lines again.
fn lock() -> MutexGuard<'static, Buffer> {
    BUFFER.lock().unwrap_or_else(|poisoned| {
        let mut buffer = poisoned.into_inner();
        let whole = buffer
            .bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        buffer.bytes.truncate(whole);
        BUFFER.clear_poison();
        buffer
    })
}

/// Lines waiting to be written, and what each starts with.
struct Buffer {
    /// Whole lines, at most [`BATCH`] bytes between calls (or one longer line, about to be written).
    bytes: Vec<u8>,
    /// What follows the stamp: `"  INFO [worker N pid P] "`.
    prefix: String,
    /// The second `stamp` shows, since the epoch.
    second: u64,
    /// `second` as `YYYY-MM-DDTHH:MM:SS`, empty until the first line.
    stamp: String,
    /// The wall clock read at an instant, at most a second ago: a line's time is the anchor's plus
    /// the monotonic time since, one clock read per line instead of two.
    anchor: Option<(Instant, SystemTime)>,
}

impl Buffer {
    /// An empty buffer (a `static`'s initial value).
    const fn new() -> Buffer {
        Buffer {
            bytes: Vec::new(),
            prefix: String::new(),
            second: 0,
            stamp: String::new(),
            anchor: None,
        }
    }

    /// The wall-clock time at `now`, from the anchor, read again when it is a second old (so a
    /// step of the system clock shows within a second).
    fn wall_clock(&mut self, now: Instant) -> SystemTime {
        if let Some((at, wall)) = self.anchor {
            if let Some(since) = now.checked_duration_since(at) {
                if since < Duration::from_secs(1) {
                    return wall + since;
                }
            }
        }
        let wall = SystemTime::now();
        self.anchor = Some((now, wall));
        wall
    }

    /// Sets the prefix and reserves a batch.
    fn start(&mut self, prefix: String) {
        self.prefix = prefix;
        self.bytes.reserve(2 * BATCH);
    }

    /// Appends `line` stamped `now` (stamp, prefix, line, newline). If the buffer is then over
    /// [`BATCH`], the lines before it go to `out` first, and then the line itself if it is a batch
    /// alone.
    fn add(
        &mut self,
        now: SystemTime,
        line: impl FnOnce(&mut Vec<u8>),
        out: &mut impl FnMut(&[u8]),
    ) {
        let start = self.bytes.len();
        self.push_stamp(now);
        self.bytes.extend_from_slice(self.prefix.as_bytes());
        line(&mut self.bytes);
        self.bytes.push(b'\n');
        if self.bytes.len() > BATCH {
            if start > 0 {
                out(&self.bytes[..start]);
                self.bytes.drain(..start);
            }
            if self.bytes.len() >= BATCH {
                self.write_all(out);
            }
        }
    }

    /// Appends `now` as `tracing-subscriber`'s `SystemTime` writes it, e.g.
    /// `2026-11-23T20:16:04.123456Z`; the date and time to the second are formatted once a second.
    fn push_stamp(&mut self, now: SystemTime) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.stamp.is_empty() {
            self.second = since.as_secs();
            self.stamp = i64::try_from(self.second)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map_or_else(
                    || "9999-12-31T23:59:59".to_string(),
                    |t| t.format("%Y-%m-%dT%H:%M:%S").to_string(),
                );
        }
        self.bytes.extend_from_slice(self.stamp.as_bytes());
        let mut micros = since.subsec_micros();
        let mut digits = *b".000000Z";
        for d in digits[1..7].iter_mut().rev() {
            *d = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        self.bytes.extend_from_slice(&digits);
    }

    /// Sends every buffered line to `out` (one batch: the buffer never holds more).
    fn write_all(&mut self, out: &mut impl FnMut(&[u8])) {
        if !self.bytes.is_empty() {
            out(&self.bytes);
            self.bytes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line that appends `s`.
    fn text(s: &str) -> impl FnOnce(&mut Vec<u8>) + '_ {
        move |out| out.extend_from_slice(s.as_bytes())
    }

    #[test]
    fn the_stamp_is_the_one_tracing_writes() {
        let mut b = Buffer::new();
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_012_345);
        b.push_stamp(at);
        assert_eq!(b.bytes, b"2023-11-14T22:13:20.012345Z");

        // Same shape as tracing-subscriber's, to the second.
        let mut theirs = String::new();
        let now = SystemTime::now();
        use tracing_subscriber::fmt::time::FormatTime;
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(
                &mut theirs,
            ))
            .unwrap();
        let mut ours = Buffer::new();
        ours.push_stamp(now);
        let ours = String::from_utf8(ours.bytes).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours[..17], theirs[..17], "{ours} vs {theirs}");
        assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.');
    }

    #[test]
    fn the_wall_clock_follows_the_monotonic_one_for_a_second() {
        let mut b = Buffer::new();
        let t0 = Instant::now();
        let w0 = b.wall_clock(t0);
        let ms = Duration::from_millis(1);
        assert_eq!(b.wall_clock(t0 + 500 * ms), w0 + 500 * ms);
        // A second later, or an instant before the anchor, the wall clock is read again.
        assert!(b.wall_clock(t0 + 1000 * ms) < w0 + 500 * ms);
        assert_eq!(b.anchor.map(|a| a.0), Some(t0 + 1000 * ms));
        b.wall_clock(t0);
        assert_eq!(b.anchor.map(|a| a.0), Some(t0));
    }

    #[test]
    fn a_line_is_stamp_prefix_text() {
        let mut b = Buffer::new();
        b.start("  INFO [worker 1 pid 7] ".into());
        b.add(
            UNIX_EPOCH + Duration::from_secs(60),
            text("GET / 200"),
            &mut |_| panic!("nothing to write yet"),
        );
        assert_eq!(
            b.bytes,
            b"1970-01-01T00:01:00.000000Z  INFO [worker 1 pid 7] GET / 200\n"
        );
    }

    #[test]
    fn batches_are_whole_lines_of_at_most_pipe_buf() {
        let mut b = Buffer::new();
        b.start(String::new());
        let written = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
        let mut out = |batch: &[u8]| written.borrow_mut().push(batch.to_vec());
        // Each line: 27-byte stamp + 72 + newline = 100 bytes; the 41st does not fit.
        let line = "x".repeat(72);
        for _ in 0..41 {
            b.add(UNIX_EPOCH, text(&line), &mut out);
        }
        assert_eq!(written.borrow().len(), 1);
        assert_eq!(written.borrow()[0].len(), 4000);
        assert_eq!(b.bytes.len(), 100);
        // A line longer than a batch goes alone, right after the lines before it.
        b.add(UNIX_EPOCH, text(&"y".repeat(5000)), &mut out);
        assert!(b.bytes.is_empty());
        // Lines of many lengths, some with an inner newline from the format: every batch ends a line.
        for n in 0..300 {
            let line = format!("{}\n{}", "z".repeat(n * 7 % 500), n);
            b.add(UNIX_EPOCH, text(&line), &mut out);
        }
        b.write_all(&mut out);
        let batches = written.take();
        let (long, rest): (Vec<_>, Vec<_>) = batches.iter().partition(|b| b.len() > BATCH);
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].len(), 27 + 5000 + 1);
        assert!(rest.iter().all(|b| b.len() <= BATCH && b.ends_with(b"\n")));
        assert!(batches.iter().all(|b| b.starts_with(b"1970-01-01T")));
        let text: Vec<u8> = batches.concat();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.matches("1970-01-01T").count(), 41 + 1 + 300);
        for n in 0..300 {
            assert!(
                text.contains(&format!("\n{n}\n")),
                "line {n} missing or split"
            );
        }
    }
}
