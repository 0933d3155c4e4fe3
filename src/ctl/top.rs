//! `hyperfork ctl top`: the master's status, live, refreshed in place like `top`.
//!
//! Each refresh is one status request ([`super::status`]); each worker's requests per second come
//! from the difference between two polls, matched by pid. [`screen`] turns a pair of polls into the
//! screen's lines (no terminal involved, so it is tested with fixed statuses); [`run`] does the
//! terminal's part: the alternate screen, a hidden cursor and raw mode (to read `q` and Ctrl-C), all
//! restored on every way out, a panic included.
//!
//! When the master stops answering after the first poll, the last status stays on the screen and the
//! bottom line says that the master is not reachable and why; it keeps asking every interval, as
//! `top` and `watch` keep going when a process or a command fails: a restart or a binary upgrade
//! (`ctl upgrade`, whose new master takes over the socket) comes back on the same screen. A master
//! not reachable at the first poll is an error, as for `ctl status` (exit 1).

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, queue, terminal};

use super::table::{self, bytes, duration};
use super::{EXIT_FAILED, EXIT_OK};
use crate::config::cli::CtlArgs;
use crate::config::control::ControlPath;
use crate::shared::ctl_wire::{Status, WorkerStatus};

/// The earlier of two polls, and the time between the two.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Before<'a> {
    /// The earlier status.
    pub status: &'a Status,
    /// The time between the two polls.
    pub elapsed: Duration,
}

/// The terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// The size assumed when the terminal reports none (0 × 0).
const FALLBACK_SIZE: Size = Size {
    width: 80,
    height: 24,
};

/// The worker table's columns: title, right-aligned (numbers).
const COLUMNS: [(&str, bool); 11] = [
    ("slot", true),
    ("pid", true),
    ("state", false),
    ("age", true),
    ("req/s", true),
    ("in-flight", true),
    ("conns", true),
    ("RSS", true),
    ("CPU %", true),
    ("gen", true),
    ("sched", false),
];

/// The columns left out first when the table is too wide, by index in [`COLUMNS`]: gen, age,
/// conns, state, CPU %, RSS. Slot, pid, req/s, in-flight and the scheduler mark always stay.
const DROP_ORDER: [usize; 6] = [9, 3, 6, 2, 8, 7];

/// The screen for the status `now`, with requests per second from `before` (none at the first
/// poll: `-`). With a `size`, exactly `size.height` lines, none wider than `size.width`, `last` on
/// the bottom one; without (a snapshot), every line in full and no `last`.
pub(crate) fn screen(
    now: &Status,
    before: Option<Before<'_>>,
    size: Option<Size>,
    client_version: &str,
    last: &str,
) -> Vec<String> {
    let mut lines: Vec<String> = header(now, before, client_version)
        .into_iter()
        .map(|(name, value)| format!("{:<10}{value}", format!("{name}:")))
        .collect();
    lines.push(String::new());
    let mut workers: Vec<&WorkerStatus> = now.workers.iter().collect();
    workers.sort_by_key(|w| (w.slot, w.pid));
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| row(w, now.scheduler_holder, before))
        .collect();
    let mut table = if rows.is_empty() {
        vec!["no worker process".to_string()]
    } else {
        columns(&rows, size.map(|s| s.width))
    };
    let Some(size) = size else {
        lines.append(&mut table);
        return lines;
    };
    // Rows for the table: all but the header and the bottom line.
    let room = size.height.saturating_sub(lines.len() + 1);
    if table.len() > room && room >= 2 {
        // The title line, as many workers as fit, and how many more there are.
        let hidden = table.len() - (room - 1);
        table.truncate(room - 1);
        table.push(format!(
            "… and {hidden} more (a taller terminal shows them)"
        ));
    }
    lines.append(&mut table);
    lines.truncate(size.height.saturating_sub(1));
    lines.resize(size.height.saturating_sub(1), String::new());
    if size.height > 0 {
        lines.push(last.to_string());
    }
    lines.into_iter().map(|l| clip(l, size.width)).collect()
}

/// The header: `ctl status`'s (master, pool, listeners, memory, guard), the pool's totals, and the
/// workers gone since the previous poll.
fn header(
    now: &Status,
    before: Option<Before<'_>>,
    client_version: &str,
) -> Vec<(&'static str, String)> {
    let mut lines = table::header(now, client_version);
    if let Some(m) = &now.memory {
        // Shorter than `ctl status`'s sentence, to fit 80 columns.
        let short = format!(
            "one more worker {}; {} in all ({} worker{} + master)",
            bytes(m.per_worker),
            bytes(m.total),
            m.processes,
            if m.processes == 1 { "" } else { "s" },
        );
        if let Some(line) = lines.iter_mut().find(|(name, _)| *name == "memory") {
            line.1 = short;
        }
    }
    let rate = match before {
        Some(b) => {
            let total: f64 = now.workers.iter().filter_map(|w| rate(w, b)).sum();
            format!(
                "{} req/s over {}",
                per_second(total),
                duration(b.elapsed.as_secs_f64())
            )
        }
        None => "- req/s (until the next refresh)".to_string(),
    };
    let in_flight: u64 = now.workers.iter().map(|w| w.in_flight).sum();
    let conns: u64 = now.workers.iter().map(|w| w.open_connections).sum();
    lines.push((
        "total",
        format!("{rate}, {in_flight} in flight, {conns} connections"),
    ));
    if let Some(b) = before {
        let gone: Vec<String> = b
            .status
            .workers
            .iter()
            .filter(|old| !now.workers.iter().any(|w| w.pid == old.pid))
            .map(|old| format!("slot {} pid {}", old.slot, old.pid))
            .collect();
        if !gone.is_empty() {
            lines.push(("exited", gone.join(", ")));
        }
    }
    lines
}

/// Requests per second of `w` between the two polls; `None` for a worker the earlier poll did not
/// see (new since), or no time between them.
fn rate(w: &WorkerStatus, before: Before<'_>) -> Option<f64> {
    let secs = before.elapsed.as_secs_f64();
    let old = before.status.workers.iter().find(|o| o.pid == w.pid)?;
    (secs > 0.0).then(|| w.requests.saturating_sub(old.requests) as f64 / secs)
}

/// A rate, short: one decimal below 1000, none from there.
fn per_second(r: f64) -> String {
    if r < 1000.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// One worker's cells, in [`COLUMNS`] order: its requests per second where the table has its
/// requests.
fn row(w: &WorkerStatus, holder: Option<i32>, before: Option<Before<'_>>) -> Vec<String> {
    let rate = before.and_then(|b| rate(w, b));
    table::cells(w, holder, rate.map_or_else(|| "-".to_string(), per_second))
}

/// The title line and `rows`, each column as wide as its widest cell. Within `width`: two spaces
/// between columns, else one, else without the columns of [`DROP_ORDER`] one by one.
fn columns(rows: &[Vec<String>], width: Option<usize>) -> Vec<String> {
    let widths = table::widths(&COLUMNS, rows);
    let mut shown = [true; COLUMNS.len()];
    let total = |shown: &[bool], gap: usize| {
        let n = shown.iter().filter(|s| **s).count();
        let cells: usize = widths
            .iter()
            .zip(shown)
            .filter(|(_, s)| **s)
            .map(|(w, _)| w)
            .sum();
        cells + gap * n.saturating_sub(1)
    };
    let mut gap = 2;
    if let Some(width) = width {
        if total(&shown, gap) > width {
            gap = 1;
        }
        for i in DROP_ORDER {
            if total(&shown, gap) <= width {
                break;
            }
            shown[i] = false;
        }
    }
    let titles: Vec<String> = COLUMNS.iter().map(|(t, _)| t.to_string()).collect();
    std::iter::once(&titles)
        .chain(rows)
        .map(|cells| {
            let line: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(COLUMNS)
                .zip(shown)
                .filter(|(_, s)| *s)
                .map(|(((cell, &width), (_, right)), _)| {
                    if right {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            line.join(&" ".repeat(gap)).trim_end().to_string()
        })
        .collect()
}

/// `line` cut to `width` characters, the last one `…` when cut.
fn clip(line: String, width: usize) -> String {
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        cut.push('…');
    }
    cut
}

/// Runs `ctl top` against the master at `place`, refreshing every `interval`; returns the exit
/// status: 0 on `q`, Ctrl-C or a signal, 1 if the master cannot be reached at the start or the
/// terminal fails, 2 for an unusable socket path. When stdout is not a terminal: one snapshot.
pub(crate) fn run(
    place: &ControlPath,
    args: &CtlArgs,
    interval: Duration,
    program: &str,
) -> ExitCode {
    let fail = |message: &dyn Display, code: u8| {
        let _ = writeln!(io::stderr().lock(), "{program} ctl: {message}");
        ExitCode::from(code)
    };
    let first = match super::status(place, args) {
        Ok(s) => (s, Instant::now()),
        Err(e) => return fail(&e, e.exit_code()),
    };
    if !io::stdout().is_terminal() {
        std::thread::sleep(interval);
        let now = match super::status(place, args) {
            Ok(s) => s,
            Err(e) => return fail(&e, e.exit_code()),
        };
        let before = Before {
            status: &first.0,
            elapsed: first.1.elapsed(),
        };
        let mut text = screen(&now, Some(before), None, env!("CARGO_PKG_VERSION"), "").join("\n");
        text.push('\n');
        let mut out = io::stdout().lock();
        // A closed stdout (`| head`) is not a reason to fail.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        return ExitCode::from(EXIT_OK);
    }
    match live(place, args, interval, first) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => fail(&format_args!("the terminal: {e}"), EXIT_FAILED),
    }
}

/// What ended a wait between two refreshes.
enum Wake {
    /// Time for the next poll.
    Poll,
    /// The terminal changed size: draw again now.
    Redraw,
    /// `q`, Ctrl-C or a signal.
    Quit,
}

/// The live view, until `q`, Ctrl-C or a signal.
fn live(
    place: &ControlPath,
    args: &CtlArgs,
    interval: Duration,
    first: (Status, Instant),
) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let _signals = Signals::register(&stop)?;
    let _hook = PanicHook::install();
    let mut term = Screen::enter()?;
    let mut now = first;
    let mut before: Option<(Status, Instant)> = None;
    let mut unreachable: Option<String> = None;
    let mut next = Instant::now() + interval;
    let every = duration(interval.as_secs_f64());
    loop {
        let size = match terminal::size()? {
            (0, _) | (_, 0) => FALLBACK_SIZE,
            (w, h) => Size {
                width: usize::from(w),
                height: usize::from(h),
            },
        };
        let last = match &unreachable {
            Some(e) => format!("master not reachable: {e} (retrying every {every}; q quits)"),
            None => format!("refreshing every {every}; q quits"),
        };
        let pair = before.as_ref().map(|(s, at)| Before {
            status: s,
            elapsed: now.1.saturating_duration_since(*at),
        });
        term.draw(&screen(
            &now.0,
            pair,
            Some(size),
            env!("CARGO_PKG_VERSION"),
            &last,
        ))?;
        match wait(next, &stop)? {
            Wake::Quit => return Ok(()),
            Wake::Redraw => continue,
            Wake::Poll => {}
        }
        next = Instant::now() + interval;
        match super::status(place, args) {
            Ok(s) => {
                let earlier = std::mem::replace(&mut now, (s, Instant::now()));
                // After an outage the two polls are far apart: the rate is the average over it.
                before = Some(earlier);
                unreachable = None;
            }
            Err(e) => unreachable = Some(e.to_string()),
        }
    }
}

/// Waits until `until` for a key, a resize or a signal.
fn wait(until: Instant, stop: &AtomicBool) -> io::Result<Wake> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Wake::Quit);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Wake::Poll);
        }
        // Short slices, so that a signal is seen soon.
        if !event::poll(left.min(Duration::from_millis(200)))? {
            continue;
        }
        match event::read()? {
            Event::Key(key) if quits(&key) => return Ok(Wake::Quit),
            Event::Resize(..) => return Ok(Wake::Redraw),
            _ => {}
        }
    }
}

/// Whether `key` ends the view: `q` or Ctrl-C (a byte in raw mode, not a signal).
fn quits(key: &KeyEvent) -> bool {
    key.kind == KeyEventKind::Press
        && match key.code {
            KeyCode::Char('q' | 'Q') => true,
            KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

/// The terminal in the view's modes (alternate screen, hidden cursor, raw); restored when dropped.
struct Screen {
    /// Where the screen is drawn.
    out: io::Stdout,
}

impl Screen {
    /// Switches the terminal into the view's modes.
    fn enter() -> io::Result<Screen> {
        terminal::enable_raw_mode()?;
        // From here on, dropping the guard restores whatever was switched.
        let mut s = Screen { out: io::stdout() };
        execute!(s.out, terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(s)
    }

    /// Draws `lines` from the top left, each over what was there.
    fn draw(&mut self, lines: &[String]) -> io::Result<()> {
        let mut out = self.out.lock();
        for (row, line) in lines.iter().enumerate() {
            let row = u16::try_from(row).unwrap_or(u16::MAX);
            queue!(out, cursor::MoveTo(0, row))?;
            out.write_all(line.as_bytes())?;
            queue!(out, terminal::Clear(terminal::ClearType::UntilNewLine))?;
        }
        queue!(out, terminal::Clear(terminal::ClearType::FromCursorDown))?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back: cursor shown, main screen, raw mode off. Harmless when already done.
fn restore() {
    let mut out = io::stdout();
    let _ = execute!(out, cursor::Show, terminal::LeaveAlternateScreen);
    let _ = terminal::disable_raw_mode();
}

/// A panic hook that restores the terminal before the message is printed (the message would
/// otherwise go to the alternate screen and vanish with it); the previous hook comes back on drop.
struct PanicHook {
    /// The hook that was there before.
    previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>,
}

impl PanicHook {
    /// Installs the restoring hook in front of the current one.
    fn install() -> PanicHook {
        let previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send> =
            Arc::from(std::panic::take_hook());
        let chained = Arc::clone(&previous);
        std::panic::set_hook(Box::new(move |info| {
            restore();
            chained(info);
        }));
        PanicHook { previous }
    }
}

impl Drop for PanicHook {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Setting a hook while panicking panics again; the process is ending anyway.
            return;
        }
        let previous = Arc::clone(&self.previous);
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

/// SIGTERM, SIGHUP (the terminal closed), SIGINT and SIGQUIT end the view cleanly (the terminal
/// restored) instead of killing it in raw mode; unregistered on drop.
struct Signals {
    /// The registrations.
    ids: Vec<signal_hook::SigId>,
}

impl Signals {
    /// Makes each of the signals set `stop`.
    fn register(stop: &Arc<AtomicBool>) -> io::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        let mut signals = Signals { ids: Vec::new() };
        for sig in [SIGTERM, SIGHUP, SIGINT, SIGQUIT] {
            signals
                .ids
                .push(signal_hook::flag::register(sig, Arc::clone(stop))?);
        }
        Ok(signals)
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::ctl_wire::{ListenerStatus, MemoryStatus};

    fn worker(slot: usize, pid: i32, requests: u64) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid,
            state: "ready".into(),
            age_seconds: 3723.5,
            generation: 2,
            requests,
            in_flight: 3,
            open_connections: 12,
            rss_bytes: Some(24_536_678),
            cpu_seconds: Some(12.5),
            cpu_percent: Some(1.25),
            heartbeat_age_seconds: Some(0.5),
            scheduler: false,
        }
    }

    fn status(workers: Vec<WorkerStatus>) -> Status {
        Status {
            master_pid: 4242,
            version: "0.4.0".into(),
            generation: 2,
            phase: "running".into(),
            pool_size: workers.len(),
            uptime_seconds: 90_061.0,
            scheduler_holder: workers.first().map(|w| w.pid),
            listeners: vec![ListenerStatus {
                address: "127.0.0.1:8000".into(),
                queued: Some(5),
                backlog: Some(2048),
            }],
            workers,
            memory: Some(MemoryStatus {
                per_worker: 52 * 1024 * 1024,
                total: 168 * 1024 * 1024,
                processes: 2,
                guard: None,
            }),
            advice: Vec::new(),
        }
    }

    fn pair() -> (Status, Status) {
        // Listed out of slot order, as a reload can leave them; slot 1's 4250 exits, 4252 is new.
        let before = status(vec![worker(1, 4250, 500), worker(0, 4243, 1000)]);
        let mut now = status(vec![worker(1, 4252, 7), worker(0, 4243, 1250)]);
        now.scheduler_holder = Some(4243);
        now.workers[0].state = "booting".into();
        now.workers[0].age_seconds = 0.4;
        (before, now)
    }

    #[test]
    fn the_header_and_rows_come_from_two_polls() {
        let (before, now) = pair();
        let b = Before {
            status: &before,
            elapsed: Duration::from_secs(2),
        };
        let lines = screen(&now, Some(b), None, "0.4.0", "ignored without a size");
        let want = "\
master:   pid 4242, version 0.4.0, running, generation 2
pool:     2 workers, up 1d01h
listener: 127.0.0.1:8000, queued 5/2048
memory:   one more worker 52.0 MiB; 168.0 MiB in all (2 workers + master)
total:    125.0 req/s over 2.0s, 6 in flight, 24 connections
exited:   slot 1 pid 4250

slot   pid  state      age  req/s  in-flight  conns       RSS  CPU %  gen  sched
   0  4243  ready    1h02m  125.0          3     12  23.4 MiB    1.2    2  *
   1  4252  booting   0.4s      -          3     12  23.4 MiB    1.2    2";
        assert_eq!(lines.join("\n"), want, "\n{}", lines.join("\n"));
    }

    #[test]
    fn the_first_poll_has_no_rate_yet() {
        let (_, now) = pair();
        let lines = screen(&now, None, None, "0.4.0", "");
        let text = lines.join("\n");
        assert!(
            text.contains("total:    - req/s (until the next refresh), 6 in flight"),
            "{text}"
        );
        assert!(!text.contains("exited:"), "{text}");
        let row = lines.iter().find(|l| l.contains("4243")).unwrap();
        assert!(row.contains("1h02m      -"), "{row}");
    }

    #[test]
    fn a_counter_that_went_back_is_no_negative_rate() {
        let before = status(vec![worker(0, 4243, 1000)]);
        let now = status(vec![worker(0, 4243, 10)]);
        let b = Before {
            status: &before,
            elapsed: Duration::from_secs(1),
        };
        let text = screen(&now, Some(b), None, "0.4.0", "").join("\n");
        assert!(text.contains("total:    0.0 req/s over 1.0s"), "{text}");
    }

    /// Eight busy workers with wide values: large pids, long states, big counts.
    fn eight() -> (Status, Status) {
        let mk = |bump: u64| {
            let workers = (0..8)
                .map(|slot| {
                    let mut w = worker(slot, 4_194_000 + slot as i32, 9_000_000 + bump * 12_345);
                    w.state = if slot == 3 { "draining" } else { "ready" }.into();
                    w.in_flight = 1024;
                    w.open_connections = 10_000;
                    w.rss_bytes = Some(1000 * 1024 * 1024);
                    w.cpu_percent = Some(100.0);
                    w.age_seconds = 300_000.0;
                    w.generation = 120;
                    w
                })
                .collect();
            let mut s = status(workers);
            s.phase = "stopping in 30s".into();
            s.memory = Some(MemoryStatus {
                per_worker: 1000 * 1024 * 1024,
                total: 9000 * 1024 * 1024,
                processes: 8,
                guard: Some("starting 8 of 12 workers: 12 would need 12.0 GiB of 10.0 GiB".into()),
            });
            s
        };
        (mk(0), mk(1))
    }

    #[test]
    fn eight_workers_fit_in_80_columns() {
        let (before, now) = eight();
        let b = Before {
            status: &before,
            elapsed: Duration::from_secs(1),
        };
        let size = Size {
            width: 80,
            height: 24,
        };
        let last = format!("refreshing every 1.0s; q quits{}", " x".repeat(50));
        let lines = screen(&now, Some(b), Some(size), "0.4.0", &last);
        let text = lines.join("\n");
        assert_eq!(lines.len(), 24, "{text}");
        for l in &lines {
            assert!(
                l.chars().count() <= 80,
                "{} columns: {l}",
                l.chars().count()
            );
        }
        // Every worker has its row, with the columns that matter most.
        for slot in 0..8 {
            let pid = (4_194_000 + slot).to_string();
            let row = lines
                .iter()
                .find(|l| l.contains(&pid))
                .unwrap_or_else(|| panic!("no row for {pid}\n{text}"));
            assert!(row.contains("12345") && row.contains("1024"), "{row}");
            assert!(row.contains("1000.0 MiB") && row.contains("100.0"), "{row}");
        }
        let titles = lines.iter().find(|l| l.starts_with("slot")).unwrap();
        assert!(
            titles.contains("req/s") && titles.contains("sched"),
            "{titles}"
        );
        // Long lines are cut with a mark, the bottom line included.
        assert!(
            lines[23].starts_with("refreshing every 1.0s; q quits") && lines[23].ends_with('…')
        );
        assert!(
            text.contains("guard:    starting 8 of 12 workers"),
            "{text}"
        );
    }

    #[test]
    fn a_narrow_terminal_drops_the_least_useful_columns_first() {
        let (before, now) = eight();
        let b = Before {
            status: &before,
            elapsed: Duration::from_secs(1),
        };
        let size = Size {
            width: 50,
            height: 24,
        };
        let lines = screen(&now, Some(b), Some(size), "0.4.0", "");
        let titles = lines.iter().find(|l| l.starts_with("slot")).unwrap();
        assert!(
            !titles.contains("gen") && !titles.contains("age"),
            "{titles}"
        );
        assert!(
            titles.contains("req/s") && titles.contains("in-flight"),
            "{titles}"
        );
        assert!(lines.iter().all(|l| l.chars().count() <= 50));
    }

    #[test]
    fn a_short_terminal_says_how_many_rows_are_hidden() {
        let (before, now) = eight();
        let b = Before {
            status: &before,
            elapsed: Duration::from_secs(1),
        };
        let size = Size {
            width: 100,
            height: 14,
        };
        let lines = screen(
            &now,
            Some(b),
            Some(size),
            "0.4.0",
            "master not reachable: x",
        );
        let text = lines.join("\n");
        assert_eq!(lines.len(), 14, "{text}");
        // 6 header lines and a blank one, the titles, 4 workers, the "more" line, the bottom line.
        assert!(lines[11].contains("4194003"), "{text}");
        assert!(lines[12].starts_with("… and 4 more"), "{text}");
        assert_eq!(lines[13], "master not reachable: x");
    }

    #[test]
    fn the_bottom_line_is_the_last_row_and_no_workers_are_said() {
        let now = status(vec![]);
        let size = Size {
            width: 80,
            height: 12,
        };
        let lines = screen(
            &now,
            None,
            Some(size),
            "0.4.0",
            "master not reachable: gone",
        );
        assert_eq!(lines.len(), 12);
        assert!(
            lines.contains(&"no worker process".to_string()),
            "{lines:?}"
        );
        assert_eq!(lines[11], "master not reachable: gone");
    }

    #[test]
    fn q_and_ctrl_c_quit() {
        let key = |code, modifiers| KeyEvent::new(code, modifiers);
        assert!(quits(&key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(quits(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!quits(&key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!quits(&key(KeyCode::Enter, KeyModifiers::NONE)));
    }
}
