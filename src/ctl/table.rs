//! `hyperfork ctl status` as text: a header block (the master, the pool, each listener), then one
//! row per worker process.

use crate::shared::ctl_wire::{Status, WorkerStatus};

/// The status as `ctl status` prints it; `client_version` is this program's version, shown beside
/// the master's when they differ.
pub(crate) fn render(status: &Status, client_version: &str) -> String {
    let mut out = String::new();
    for (name, value) in header(status, client_version) {
        out.push_str(&format!("{:<10}{value}\n", format!("{name}:")));
    }
    out.push('\n');
    if status.workers.is_empty() {
        out.push_str("no worker process\n");
        return out;
    }
    let rows: Vec<Vec<String>> = status
        .workers
        .iter()
        .map(|w| row(w, status.scheduler_holder))
        .collect();
    out.push_str(&columns(&rows));
    out
}

/// The header block's lines, each a name (`master`, `pool`, `listener`, `memory`, `guard`, `advice`) and its
/// text; `ctl status` and `ctl top` show them.
pub(crate) fn header(status: &Status, client_version: &str) -> Vec<(&'static str, String)> {
    let version = if status.version == client_version {
        status.version.clone()
    } else {
        format!("{} (this ctl: {client_version})", status.version)
    };
    let mut header = vec![
        (
            "master",
            format!(
                "pid {}, version {version}, {}, generation {}",
                status.master_pid, status.phase, status.generation
            ),
        ),
        (
            "pool",
            format!(
                "{} {}, up {}",
                status.pool_size,
                if status.pool_size == 1 {
                    "worker"
                } else {
                    "workers"
                },
                duration(status.uptime_seconds)
            ),
        ),
    ];
    for l in &status.listeners {
        let queue = match (l.queued, l.backlog) {
            (Some(q), Some(b)) => format!(", queued {q}/{b}"),
            (Some(q), None) => format!(", queued {q}"),
            (None, Some(b)) => format!(", backlog {b}"),
            (None, None) => String::new(),
        };
        header.push(("listener", format!("{}{queue}", l.address)));
    }
    if let Some(m) = &status.memory {
        header.push((
            "memory",
            format!(
                "one more worker costs {}; the pool ({} worker process{} and the master) uses {} in \
                 all",
                bytes(m.per_worker),
                m.processes,
                if m.processes == 1 { "" } else { "es" },
                bytes(m.total)
            ),
        ));
        if let Some(g) = &m.guard {
            header.push(("guard", g.clone()));
        }
    }
    for a in &status.advice {
        header.push(("advice", a.clone()));
    }
    header
}

/// The column titles and whether each is right-aligned (numbers).
const COLUMNS: [(&str, bool); 11] = [
    ("slot", true),
    ("pid", true),
    ("state", false),
    ("age", true),
    ("requests", true),
    ("in-flight", true),
    ("conns", true),
    ("RSS", true),
    ("CPU %", true),
    ("gen", true),
    ("sched", false),
];

/// One worker's cells, in [`COLUMNS`] order.
fn row(w: &WorkerStatus, holder: Option<i32>) -> Vec<String> {
    cells(w, holder, w.requests.to_string())
}

/// One worker's cells: slot, pid, state, age, `count` (its requests here, its requests per second
/// in `ctl top`), in-flight, connections, RSS, CPU %, generation and the scheduler mark.
pub(crate) fn cells(w: &WorkerStatus, holder: Option<i32>, count: String) -> Vec<String> {
    let scheduler = w.scheduler || holder == Some(w.pid);
    let dash = || "-".to_string();
    vec![
        w.slot.to_string(),
        w.pid.to_string(),
        w.state.clone(),
        duration(w.age_seconds),
        count,
        w.in_flight.to_string(),
        w.open_connections.to_string(),
        w.rss_bytes.map_or_else(dash, bytes),
        w.cpu_percent.map_or_else(dash, |p| format!("{p:.1}")),
        w.generation.to_string(),
        if scheduler { "*" } else { "" }.to_string(),
    ]
}

/// Each column's width: its widest cell, or its title.
pub(crate) fn widths(titles: &[(&str, bool)], rows: &[Vec<String>]) -> Vec<usize> {
    titles
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([title.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// The title line and `rows`, each column as wide as its widest cell, two spaces apart.
fn columns(rows: &[Vec<String>]) -> String {
    let widths = widths(&COLUMNS, rows);
    let titles: Vec<String> = COLUMNS.iter().map(|(t, _)| t.to_string()).collect();
    let mut out = String::new();
    for cells in std::iter::once(&titles).chain(rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(COLUMNS)
            .map(|((cell, &width), (_, right))| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A duration in seconds, short: `0.4s`, `42s`, `5m03s`, `2h05m`, `3d04h`; `-` if not a duration.
pub(crate) fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_string();
    }
    if seconds < 10.0 {
        return format!("{:.1}s", (seconds * 10.0).floor() / 10.0);
    }
    // Whole seconds; the fraction does not matter beyond ten seconds.
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A size in bytes, short: `512 B`, `23.4 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::ctl_wire::ListenerStatus;

    fn worker(slot: usize, pid: i32, state: &str) -> WorkerStatus {
        WorkerStatus {
            slot,
            pid,
            state: state.into(),
            age_seconds: 3723.5,
            generation: 2,
            requests: 1024,
            in_flight: 3,
            open_connections: 12,
            rss_bytes: Some(24_536_678),
            cpu_seconds: Some(12.5),
            cpu_percent: Some(1.25),
            heartbeat_age_seconds: Some(0.5),
            scheduler: false,
        }
    }

    fn status() -> Status {
        let mut w0 = worker(0, 4243, "ready");
        w0.scheduler = true;
        let mut w1 = worker(1, 4250, "draining");
        w1.rss_bytes = None;
        w1.cpu_percent = None;
        w1.generation = 1;
        w1.age_seconds = 42.9;
        w1.requests = 7;
        Status {
            master_pid: 4242,
            version: "0.4.0".into(),
            generation: 2,
            phase: "reloading".into(),
            pool_size: 2,
            uptime_seconds: 90_061.0,
            scheduler_holder: Some(4243),
            listeners: vec![
                ListenerStatus {
                    address: "127.0.0.1:8000".into(),
                    queued: Some(0),
                    backlog: Some(2048),
                },
                ListenerStatus {
                    address: "unix:/run/app.sock".into(),
                    queued: None,
                    backlog: None,
                },
            ],
            workers: vec![w0, w1, worker(1, 4251, "booting")],
            memory: None,
            advice: Vec::new(),
        }
    }

    #[test]
    fn the_status_is_a_header_and_a_table() {
        let text = render(&status(), "0.4.0");
        let want = "\
master:   pid 4242, version 0.4.0, reloading, generation 2
pool:     2 workers, up 1d01h
listener: 127.0.0.1:8000, queued 0/2048
listener: unix:/run/app.sock

slot   pid  state       age  requests  in-flight  conns       RSS  CPU %  gen  sched
   0  4243  ready     1h02m      1024          3     12  23.4 MiB    1.2    2  *
   1  4250  draining    42s         7          3     12         -      -    1
   1  4251  booting   1h02m      1024          3     12  23.4 MiB    1.2    2
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn the_pools_memory_and_the_guard_are_said() {
        let mut s = status();
        s.memory = Some(crate::shared::ctl_wire::MemoryStatus {
            per_worker: 52 * 1024 * 1024,
            total: 168 * 1024 * 1024,
            processes: 3,
            guard: Some("starting 3 of 5 workers: 5 would need 272 MiB".into()),
        });
        let text = render(&s, "0.4.0");
        assert!(
            text.contains(
                "memory:   one more worker costs 52.0 MiB; the pool (3 worker processes and the \
                 master) uses 168.0 MiB in all\nguard:    starting 3 of 5 workers"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_advice_is_a_header_line() {
        let mut s = status();
        s.advice = vec!["no advice: CPU 3 % of 2 cores, accept queue 0".into()];
        let text = render(&s, "0.4.0");
        assert!(
            text.contains(
                "listener: unix:/run/app.sock\nadvice:   no advice: CPU 3 % of 2 cores, accept \
                 queue 0\n\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_different_version_and_no_workers_are_said() {
        let mut s = status();
        s.workers.clear();
        s.pool_size = 1;
        let text = render(&s, "0.5.0");
        assert!(text.contains("version 0.4.0 (this ctl: 0.5.0)"), "{text}");
        assert!(text.contains("1 worker, up"), "{text}");
        assert!(text.ends_with("\nno worker process\n"), "{text}");
    }

    #[test]
    fn the_scheduler_holder_is_marked_even_without_the_flag() {
        let mut s = status();
        s.workers[0].scheduler = false;
        let text = render(&s, "0.4.0");
        let line = text.lines().find(|l| l.contains("4243")).unwrap();
        assert!(line.ends_with('*'), "{text}");
    }

    #[test]
    fn durations_and_sizes_are_short() {
        let cases = [
            (0.0, "0.0s"),
            (0.45, "0.4s"),
            (9.99, "9.9s"),
            (42.9, "42s"),
            (303.0, "5m03s"),
            (7500.0, "2h05m"),
            (273_600.0, "3d04h"),
            (-1.0, "-"),
            (f64::NAN, "-"),
        ];
        for (secs, want) in cases {
            assert_eq!(duration(secs), want, "{secs}");
        }
        let sizes = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (24_536_678, "23.4 MiB"),
            (3 << 30, "3.0 GiB"),
        ];
        for (n, want) in sizes {
            assert_eq!(bytes(n), want, "{n}");
        }
    }
}
