//! A look at the pool at one moment, for `/metrics` and `ctl status`: every worker process with its
//! counters (read from shared memory), memory and CPU (from `/proc`), and every listening socket with
//! its accept queue. Taken only when asked; nothing here runs on its own.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::Master;
use super::children::ChildPhase;
use crate::config::health::rss_bytes;
use crate::master::tally::cpu_seconds;
use crate::shared::stats::Counts;

/// One worker process.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub slot: usize,
    pub pid: Pid,
    /// `booting`, `ready`, `replaced` or `draining`.
    pub state: &'static str,
    /// Whether it holds its slot (booting or ready).
    pub in_pool: bool,
    pub age: Duration,
    pub generation: u64,
    pub counts: Counts,
    pub rss: Option<u64>,
    pub cpu: Option<f64>,
    /// CPU use since the previous census, percent of one core.
    pub cpu_percent: Option<f64>,
    pub heartbeat_age: Option<Duration>,
    pub scheduler: bool,
}

/// One listening socket.
#[derive(Debug, Clone)]
pub(super) struct Socket {
    pub address: String,
    pub queued: Option<u32>,
    pub backlog: Option<u32>,
}

/// The pool at one moment.
#[derive(Debug, Clone)]
pub(super) struct Census {
    /// Every worker process, by slot then pid.
    pub rows: Vec<Row>,
    pub sockets: Vec<Socket>,
}

/// A state's name.
pub(super) fn state_name(phase: ChildPhase) -> &'static str {
    match phase {
        ChildPhase::Booting => "booting",
        ChildPhase::Ready => "ready",
        ChildPhase::Replaced => "replaced",
        ChildPhase::Draining { .. } => "draining",
    }
}

impl Master<'_> {
    /// Takes the census (reads `/proc` for each worker: a few system calls per worker).
    pub(super) fn census(&mut self) -> Census {
        let now = Instant::now();
        let holder = self.lease.holder();
        let stats = self.stats;
        let mut rows: Vec<Row> = self
            .children
            .iter_mut()
            .map(|(&pid, c)| {
                let cpu = cpu_seconds(pid.as_raw());
                let cpu_percent = match (cpu, c.cpu_sample) {
                    (Some(cpu), Some((at, before))) => {
                        let wall = now.saturating_duration_since(at).as_secs_f64();
                        (wall > 0.0).then(|| (cpu - before).max(0.0) / wall * 100.0)
                    }
                    _ => None,
                };
                if let Some(cpu) = cpu {
                    c.cpu_sample = Some((now, cpu));
                }
                Row {
                    slot: c.slot,
                    pid,
                    state: state_name(c.phase),
                    in_pool: c.in_pool(),
                    age: now.saturating_duration_since(c.started),
                    generation: c.generation,
                    counts: stats.read(pid.as_raw() as u32).unwrap_or_default(),
                    rss: rss_bytes(pid.as_raw()),
                    cpu,
                    cpu_percent,
                    heartbeat_age: c.last_beat.map(|t| now.saturating_duration_since(t)),
                    scheduler: holder == Some(pid),
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.slot, r.pid.as_raw()));
        let sockets = self
            .args
            .listeners
            .iter()
            .map(|l| {
                let queue = l.queue();
                Socket {
                    address: l.describe(),
                    queued: queue.map(|q| q.0),
                    backlog: queue.map(|q| q.1),
                }
            })
            .collect();
        Census { rows, sockets }
    }
}
