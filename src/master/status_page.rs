//! The status page, served by the master on `--metrics-bind` beside `/metrics`: `/status.json` (the
//! figures) and `/` or `/status` (one self-contained HTML page: a server-rendered snapshot that a
//! small inline script refreshes from `/status.json`).
//!
//! Everything here is read when asked: the census (shared-memory counters, `/proc`), the history the
//! master samples each second (rates, percentiles, sparklines: see [`super::history`]), the tally
//! (exits, reloads, upgrades, jobs) and the pool's memory (as `ctl status` computes it). Nothing
//! secret is shown: no environment, no command line, no job-store URL.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::Master;
use super::history::{EventKind, SlotHistory};
use super::tally::{Cause, Outcome};
use crate::shared::ctl_wire::MemoryStatus;

/// The HTML page; `{{body}}` is replaced by the snapshot.
const TEMPLATE: &str = include_str!("status_page.html");

/// The window of the rates and percentiles.
const MINUTE: Duration = Duration::from_secs(60);

/// The JSON document of `/status.json`.
#[derive(Debug, Serialize)]
pub(super) struct Page {
    version: &'static str,
    master_pid: i32,
    generation: u64,
    phase: String,
    uptime_seconds: f64,
    pool_size: usize,
    /// Unix time of this document.
    now: f64,
    /// Seconds between history samples.
    sample_seconds: f64,
    scheduler_holder: Option<i32>,
    /// Every worker process, by slot then pid.
    workers: Vec<Worker>,
    /// Every slot's recent figures.
    slots: Vec<Slot>,
    listeners: Vec<Listener>,
    /// Connections waiting to be accepted (all TCP listeners), one value per sample, oldest first.
    queue_history: Vec<u32>,
    /// Worker exits by cause, since the master started (causes with none left out).
    exits: Vec<Count>,
    reloads: Vec<Count>,
    upgrades: Vec<Count>,
    /// The last exits, reloads and upgrades, newest first.
    events: Vec<Event>,
    jobs: Vec<JobRow>,
    memory: Option<MemoryStatus>,
    /// Tuning advice from the last minute (see `ctl status`).
    advice: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Worker {
    slot: usize,
    pid: i32,
    state: &'static str,
    age_seconds: f64,
    generation: u64,
    in_flight: u64,
    requests: u64,
    rss_bytes: Option<u64>,
    cpu_percent: Option<f64>,
    scheduler: bool,
}

#[derive(Debug, Serialize)]
struct Slot {
    slot: usize,
    /// Requests per second over the last minute.
    requests_per_second: f64,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
    spawns: u64,
    exits: u64,
    /// Requests per second, one value per sample, oldest first.
    rate_history: Vec<f64>,
    /// Mean latency per sample (seconds; `null` when no request ended), oldest first.
    latency_history: Vec<Option<f64>>,
}

#[derive(Debug, Serialize)]
struct Listener {
    address: String,
    queued: Option<u32>,
    backlog: Option<u32>,
}

#[derive(Debug, Serialize)]
struct Count {
    name: &'static str,
    count: u64,
}

#[derive(Debug, Serialize)]
struct Event {
    /// Unix time.
    at: f64,
    /// `exit`, `reload` or `upgrade`.
    kind: &'static str,
    slot: Option<usize>,
    pid: Option<i32>,
    /// An exit's cause.
    cause: Option<&'static str>,
    /// A reload's or upgrade's result.
    result: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct JobRow {
    name: String,
    schedule: String,
    runs: u64,
    failures: u64,
    skips: u64,
    running: u64,
    last_start: Option<f64>,
    last_end: Option<f64>,
    /// `ok`, `failed` or `running`; `null` before the first run.
    last_outcome: Option<&'static str>,
    last_duration_seconds: Option<f64>,
    /// The next tick, Unix time (`null` while shutting down).
    next_tick: Option<f64>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn slot_figures(slot: usize, h: Option<&SlotHistory>, spawns: u64, exits: u64) -> Slot {
    let (rate_history, latency_history) = h
        .map(|h| {
            h.samples
                .iter()
                .map(|s| {
                    let rate = f64::from(s.requests) * 1000.0 / f64::from(s.interval_ms);
                    let mean = (s.requests > 0)
                        .then(|| s.duration_us as f64 / 1e6 / f64::from(s.requests));
                    (rate, mean)
                })
                .unzip()
        })
        .unwrap_or_default();
    Slot {
        slot,
        requests_per_second: h.map_or(0.0, |h| h.rate(MINUTE)),
        p50_seconds: h.and_then(|h| h.quantile(0.5, MINUTE)),
        p99_seconds: h.and_then(|h| h.quantile(0.99, MINUTE)),
        spawns,
        exits,
        rate_history,
        latency_history,
    }
}

impl Master<'_> {
    /// The status document, now.
    pub(super) fn status_page(&mut self) -> Page {
        let census = self.census();
        let memory = self.memory_status(&census.rows);
        let advice = self.advice(&census.rows, memory.as_ref());
        let slots = census
            .rows
            .iter()
            .map(|r| r.slot + 1)
            .chain([self.pool.size(), self.history.slots.len()])
            .max()
            .unwrap_or(0);
        let slots = (0..slots)
            .map(|s| {
                let exits = Cause::ALL.iter().map(|&c| self.tally.exits_of(s, c)).sum();
                let spawns = self.tally.spawns.get(&s).copied().unwrap_or(0);
                slot_figures(s, self.history.slot(s), spawns, exits)
            })
            .collect();
        let count = |m: &std::collections::BTreeMap<Outcome, u64>| {
            Outcome::ALL
                .iter()
                .map(|&o| Count {
                    name: o.label(),
                    count: m.get(&o).copied().unwrap_or(0),
                })
                .collect()
        };
        Page {
            version: env!("CARGO_PKG_VERSION"),
            master_pid: self.pid.as_raw(),
            generation: self.generation,
            phase: self.phase_name(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            pool_size: self.pool.size(),
            now: unix(SystemTime::now()),
            sample_seconds: super::history::EVERY.as_secs_f64(),
            scheduler_holder: self.lease.holder().map(|p| p.as_raw()),
            workers: census
                .rows
                .iter()
                .map(|r| Worker {
                    slot: r.slot,
                    pid: r.pid.as_raw(),
                    state: r.state,
                    age_seconds: r.age.as_secs_f64(),
                    generation: r.generation,
                    in_flight: r.counts.in_flight,
                    requests: r.counts.requests(),
                    rss_bytes: r.rss,
                    cpu_percent: r.cpu_percent,
                    scheduler: r.scheduler,
                })
                .collect(),
            slots,
            listeners: census
                .sockets
                .into_iter()
                .map(|s| Listener {
                    address: s.address,
                    queued: s.queued,
                    backlog: s.backlog,
                })
                .collect(),
            queue_history: self.history.queue.iter().copied().collect(),
            exits: Cause::ALL
                .iter()
                .map(|&c| Count {
                    name: c.label(),
                    count: self
                        .tally
                        .exits
                        .iter()
                        .filter(|((_, cause), _)| *cause == c)
                        .map(|(_, n)| n)
                        .sum(),
                })
                .filter(|c| c.count > 0)
                .collect(),
            reloads: count(&self.tally.reloads),
            upgrades: count(&self.tally.upgrades),
            events: self
                .tally
                .events
                .iter()
                .rev()
                .map(|e| {
                    let mut ev = Event {
                        at: unix(e.at),
                        kind: "exit",
                        slot: None,
                        pid: None,
                        cause: None,
                        result: None,
                    };
                    match e.kind {
                        EventKind::Exit { slot, pid, cause } => {
                            ev.slot = Some(slot);
                            ev.pid = Some(pid);
                            ev.cause = Some(cause.label());
                        }
                        EventKind::Reload(o) => {
                            ev.kind = "reload";
                            ev.result = Some(o.label());
                        }
                        EventKind::Upgrade(o) => {
                            ev.kind = "upgrade";
                            ev.result = Some(o.label());
                        }
                    }
                    ev
                })
                .collect(),
            jobs: self.job_rows(),
            memory,
            advice,
        }
    }

    /// Every configured job (and any the workers reported), with its last run and next tick.
    fn job_rows(&self) -> Vec<JobRow> {
        let anchor = chrono::DateTime::from_timestamp_millis(self.lease.anchor_ms())
            .unwrap_or_else(chrono::Utc::now);
        let anchor = crate::jobs::scheduler::grid_anchor(self.args.jobs_store.is_some(), anchor);
        let now = chrono::Utc::now();
        let mut names: Vec<&str> = self.args.jobs.iter().map(|j| j.name.as_str()).collect();
        for name in self.tally.jobs.keys() {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .map(|name| {
                let job = self.args.jobs.iter().find(|j| j.name == name);
                let t = self.tally.jobs.get(name).cloned().unwrap_or_default();
                let last_outcome = if t.running > 0 {
                    Some("running")
                } else {
                    t.last_ok.map(|ok| if ok { "ok" } else { "failed" })
                };
                JobRow {
                    name: name.to_string(),
                    schedule: job.map_or_else(String::new, |j| j.schedule.to_string()),
                    runs: t.runs,
                    failures: t.failures,
                    skips: t.skips,
                    running: t.running,
                    last_start: t.last_start.map(unix),
                    last_end: t.last_end.map(unix),
                    last_outcome,
                    last_duration_seconds: t.last_duration.map(|d| d.as_secs_f64()),
                    next_tick: job
                        .filter(|_| !self.is_stopping())
                        .and_then(|j| j.schedule.next_after(now, anchor))
                        .map(|t| t.timestamp_millis() as f64 / 1000.0),
                }
            })
            .collect()
    }
}

/// The document as JSON.
pub(super) fn json(page: &Page) -> String {
    serde_json::to_string(page).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The document as the HTML page.
pub(super) fn html(page: &Page) -> String {
    TEMPLATE.replace("{{body}}", &body(page))
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `1.5 ms`, `2.0 s`, or `–`.
fn secs(v: Option<f64>) -> String {
    match v {
        None => "–".to_string(),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{s:.2} s"),
    }
}

/// `3h 2m`, `5m 10s`, `42s`.
fn age(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86400, s / 3600 % 24),
    }
}

/// `12.3 MiB`.
fn bytes(b: Option<u64>) -> String {
    match b {
        None => "–".to_string(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn when(t: Option<f64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp_millis((t * 1000.0) as i64))
        .map_or_else(
            || "–".to_string(),
            |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

/// An inline SVG sparkline of `values` (missing values leave gaps).
fn spark(values: &[Option<f64>], class: &str, label: &str) -> String {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let max = values.iter().flatten().fold(0.0f64, |m, &v| m.max(v));
    let n = values.len().max(2) as f64 - 1.0;
    let mut d = String::new();
    let mut pen = 'M';
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let x = i as f64 * W / n;
                let y = if max > 0.0 {
                    H - 1.0 - v / max * (H - 2.0)
                } else {
                    H - 1.0
                };
                let _ = write!(d, "{pen}{x:.1} {y:.1}");
                if pen == 'M' {
                    // A point alone (between gaps) still shows.
                    d.push_str("h0.8");
                }
                pen = 'L';
            }
            None => pen = 'M',
        }
    }
    format!(
        "<svg class=\"spark {class}\" width=\"120\" height=\"24\" viewBox=\"0 0 120 24\" role=\"img\" \
         aria-label=\"{}\"><path d=\"{d}\"/></svg>",
        esc(label)
    )
}

/// The page's body: the same markup the page's script renders from `/status.json`.
fn body(p: &Page) -> String {
    let mut o = String::new();
    let holder = p
        .scheduler_holder
        .map_or_else(|| "none".to_string(), |h| format!("pid {h}"));
    let _ = write!(
        o,
        "<p class=\"summary\">hyperfork {} · master pid {} · {} · generation {} · up {} · pool of {} \
         · scheduler: {}</p>",
        esc(p.version),
        p.master_pid,
        esc(&p.phase),
        p.generation,
        age(p.uptime_seconds),
        p.pool_size,
        esc(&holder)
    );
    if let Some(m) = &p.memory {
        let _ = write!(
            o,
            "<p class=\"memory\">Memory: {} for the pool ({} processes and the master, shared \
             pages counted once), {} per extra worker{}</p>",
            bytes(Some(m.total)),
            m.processes,
            bytes(Some(m.per_worker)),
            m.guard
                .as_deref()
                .map_or_else(String::new, |g| format!("; memory guard: {}", esc(g)))
        );
    }
    if !p.advice.is_empty() {
        o.push_str("<div class=\"advice\"><h2>Advice</h2><ul>");
        for a in &p.advice {
            let _ = write!(o, "<li>{}</li>", esc(a));
        }
        o.push_str("</ul></div>");
    }
    o.push_str(
        "<h2>Workers</h2><table id=\"workers\"><thead><tr><th>slot</th><th>pid</th><th>state</th>\
         <th>age</th><th>req/s</th><th>in flight</th><th>p50</th><th>p99</th><th>RSS</th>\
         <th>CPU</th><th>requests/s (2 min)</th><th>mean latency</th></tr></thead><tbody>",
    );
    for w in &p.workers {
        let s = p.slots.get(w.slot);
        let rate: Vec<Option<f64>> = s.map_or_else(Vec::new, |s| {
            s.rate_history.iter().map(|&v| Some(v)).collect()
        });
        let _ = write!(
            o,
            "<tr class=\"worker {}\" data-slot=\"{}\" data-pid=\"{}\"><td>{}{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            w.state,
            w.slot,
            w.pid,
            w.slot,
            if w.scheduler {
                " <span class=\"sched\" title=\"holds the scheduler lease: runs the jobs\">jobs</span>"
            } else {
                ""
            },
            w.pid,
            w.state,
            age(w.age_seconds),
            s.map_or(0.0, |s| s.requests_per_second),
            w.in_flight,
            secs(s.and_then(|s| s.p50_seconds)),
            secs(s.and_then(|s| s.p99_seconds)),
            bytes(w.rss_bytes),
            w.cpu_percent
                .map_or_else(|| "–".to_string(), |c| format!("{c:.0}%")),
            spark(
                &rate,
                "rate",
                &format!("slot {} requests per second", w.slot)
            ),
            spark(
                s.map_or(&[][..], |s| &s.latency_history),
                "latency",
                &format!("slot {} mean latency", w.slot)
            ),
        );
    }
    o.push_str("</tbody></table>");
    o.push_str("<h2>Listen queue</h2><p class=\"queue\">");
    for l in &p.listeners {
        let _ = write!(
            o,
            "{}: {} waiting (limit {}) · ",
            esc(&l.address),
            l.queued.map_or_else(|| "–".to_string(), |q| q.to_string()),
            l.backlog.map_or_else(|| "–".to_string(), |q| q.to_string())
        );
    }
    let queue: Vec<Option<f64>> = p
        .queue_history
        .iter()
        .map(|&q| Some(f64::from(q)))
        .collect();
    o.push_str(&spark(&queue, "queue", "listen queue depth"));
    o.push_str("</p>");
    o.push_str("<h2>Exits, reloads, upgrades</h2><p class=\"counts\">Exits: ");
    if p.exits.is_empty() {
        o.push_str("none");
    }
    for c in &p.exits {
        let _ = write!(o, "{} {} · ", c.name, c.count);
    }
    o.push_str("<br>Reloads: ");
    for c in &p.reloads {
        let _ = write!(o, "{} {} · ", c.name, c.count);
    }
    o.push_str("<br>Upgrades: ");
    for c in &p.upgrades {
        let _ = write!(o, "{} {} · ", c.name, c.count);
    }
    o.push_str(
        "</p><table id=\"events\"><thead><tr><th>time</th><th>event</th><th>detail</th></tr>\
         </thead><tbody>",
    );
    if p.events.is_empty() {
        o.push_str("<tr><td colspan=\"3\">none yet</td></tr>");
    }
    for e in &p.events {
        let detail = match (e.slot, e.pid, e.cause, e.result) {
            (Some(s), Some(pid), Some(c), _) => format!("worker {s} (pid {pid}): {c}"),
            (_, _, _, Some(r)) => r.to_string(),
            _ => String::new(),
        };
        let _ = write!(
            o,
            "<tr class=\"event\"><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(Some(e.at)),
            e.kind,
            esc(&detail)
        );
    }
    o.push_str(
        "</tbody></table><h2>Jobs</h2><table id=\"jobs\"><thead><tr><th>job</th><th>schedule</th>\
         <th>runs</th><th>failures</th><th>skips</th><th>last start</th><th>outcome</th>\
         <th>duration</th><th>next tick</th></tr></thead><tbody>",
    );
    if p.jobs.is_empty() {
        o.push_str("<tr><td colspan=\"9\">no scheduled jobs</td></tr>");
    }
    for j in &p.jobs {
        let _ = write!(
            o,
            "<tr class=\"job\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&j.name),
            esc(&j.schedule),
            j.runs,
            j.failures,
            j.skips,
            when(j.last_start),
            j.last_outcome.unwrap_or("–"),
            secs(j.last_duration_seconds),
            when(j.next_tick)
        );
    }
    o.push_str("</tbody></table>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_sparkline_scales_to_its_box_and_leaves_gaps() {
        let s = spark(&[Some(0.0), Some(2.0), None, Some(1.0)], "rate", "x");
        assert!(
            s.contains("d=\"M0.0 23.0h0.8L40.0 1.0M120.0 12.0h0.8\""),
            "{s}"
        );
        let flat = spark(&[], "rate", "x");
        assert!(flat.contains("d=\"\""), "{flat}");
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(secs(Some(0.0015)), "1.5 ms");
        assert_eq!(secs(Some(2.0)), "2.00 s");
        assert_eq!(age(3725.0), "1h 2m");
        assert_eq!(bytes(Some(3 << 20)), "3.0 MiB");
        assert_eq!(when(Some(0.0)), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn the_template_has_its_slot_and_no_external_assets() {
        assert!(TEMPLATE.contains("{{body}}"));
        for external in ["http://", "https://", "src=\"//"] {
            assert!(!TEMPLATE.contains(external), "{external}");
        }
    }
}
