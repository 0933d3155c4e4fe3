//! What the master counts for metrics and `ctl status` beyond the workers' own counters: why each
//! worker ended, forks per slot, the requests of workers that have exited (so a slot's counters never
//! go backwards), reloads and upgrades by result, each job's runs, and the CPU time of exited
//! workers.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use super::history::EventKind;
use crate::shared::stats::Counts;

/// Why a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Cause {
    /// Exited on its own, with a status, after it was ready.
    Crash,
    /// Killed by a signal the master did not send (the OOM killer, an operator's `kill -9`).
    Signal,
    /// Its event loop went silent past `--timeout`.
    Heartbeat,
    /// Died before it was ready (its start hook or app factory failed).
    BootFailure,
    /// Not ready within `--boot-timeout`.
    BootTimeout,
    /// Replaced after `--max-requests`.
    MaxRequests,
    /// Replaced for using more than `--max-worker-memory`.
    Memory,
    /// Replaced by a reload.
    Reload,
    /// Stopped when a new master took over (binary upgrade).
    Upgrade,
    /// Stopped or replaced by a pool resize (`SIGTTIN`, `SIGTTOU`, `ctl workers`).
    Resize,
    /// Stopped by the master's shutdown.
    Shutdown,
}

impl Cause {
    /// Every cause, in label order.
    pub(crate) const ALL: [Cause; 11] = [
        Cause::Crash,
        Cause::Signal,
        Cause::Heartbeat,
        Cause::BootFailure,
        Cause::BootTimeout,
        Cause::MaxRequests,
        Cause::Memory,
        Cause::Reload,
        Cause::Upgrade,
        Cause::Resize,
        Cause::Shutdown,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Cause::Crash => "crash",
            Cause::Signal => "signal",
            Cause::Heartbeat => "heartbeat",
            Cause::BootFailure => "boot_failure",
            Cause::BootTimeout => "boot_timeout",
            Cause::MaxRequests => "max_requests",
            Cause::Memory => "memory",
            Cause::Reload => "reload",
            Cause::Upgrade => "upgrade",
            Cause::Resize => "resize",
            Cause::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// How a reload or an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Outcome {
    /// Every worker replaced (a reload), or the new master took over (an upgrade).
    Completed,
    /// Started, then given up: a new worker kept failing to boot, or the new master failed.
    Aborted,
    /// Refused before any worker changed: the configuration did not validate, an address could not
    /// be bound, or another reload or upgrade was running.
    Rejected,
}

impl Outcome {
    /// Every outcome, in label order.
    pub(crate) const ALL: [Outcome; 3] = [Outcome::Completed, Outcome::Aborted, Outcome::Rejected];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Aborted => "aborted",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One job's runs, as the scheduler reported them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JobTally {
    /// Runs started.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Ticks skipped (the previous run still going, missed beyond the grace, or not confirmed by
    /// the job store).
    pub skips: u64,
    /// Ticks skipped because the job store could not confirm the claim (also in `skips`).
    pub store_skips: u64,
    /// Ticks another host claimed (job store).
    pub elsewhere: u64,
    /// Runs going on now.
    pub running: u64,
    /// When the last successful run ended.
    pub last_success: Option<SystemTime>,
    /// How long the last finished run took.
    pub last_duration: Option<Duration>,
    /// When the last run started.
    pub last_start: Option<SystemTime>,
    /// When the last run ended.
    pub last_end: Option<SystemTime>,
    /// Whether the last finished run succeeded.
    pub last_ok: Option<bool>,
}

/// Everything the master counts, for its life.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// Worker exits, by slot and cause.
    pub exits: BTreeMap<(usize, Cause), u64>,
    /// Workers forked, by slot.
    pub spawns: BTreeMap<usize, u64>,
    /// The final counters of every exited worker, summed by slot.
    pub retired: BTreeMap<usize, Counts>,
    /// The CPU seconds of every exited worker, summed by slot.
    pub retired_cpu: BTreeMap<usize, f64>,
    /// How long the last worker of each slot took from fork to ready.
    pub boot: BTreeMap<usize, Duration>,
    /// Reloads by outcome.
    pub reloads: BTreeMap<Outcome, u64>,
    /// Binary upgrades by outcome.
    pub upgrades: BTreeMap<Outcome, u64>,
    /// Each job, by name.
    pub jobs: BTreeMap<String, JobTally>,
    /// The last exits, reloads and upgrades, with their time (for the status page).
    pub events: super::history::EventLog,
}

impl Tally {
    /// A worker of `slot` was forked.
    pub fn spawned(&mut self, slot: usize) {
        *self.spawns.entry(slot).or_default() += 1;
    }

    /// A worker of `slot` (process `pid`) ended for `cause`, leaving `counts` and `cpu` seconds
    /// behind.
    pub fn exited(
        &mut self,
        slot: usize,
        pid: i32,
        cause: Cause,
        counts: Option<Counts>,
        cpu: f64,
    ) {
        *self.exits.entry((slot, cause)).or_default() += 1;
        self.events.push(EventKind::Exit { slot, pid, cause });
        if let Some(c) = counts {
            self.retired.entry(slot).or_default().add(&c.totals());
        }
        *self.retired_cpu.entry(slot).or_default() += cpu;
    }

    /// A reload ended with `outcome`.
    pub fn reload(&mut self, outcome: Outcome) {
        *self.reloads.entry(outcome).or_default() += 1;
        self.events.push(EventKind::Reload(outcome));
    }

    /// An upgrade ended with `outcome`.
    pub fn upgrade(&mut self, outcome: Outcome) {
        *self.upgrades.entry(outcome).or_default() += 1;
        self.events.push(EventKind::Upgrade(outcome));
    }

    /// The tally of `job`.
    pub fn job(&mut self, job: &str) -> &mut JobTally {
        self.jobs.entry(job.to_string()).or_default()
    }

    /// Exits of `slot` for `cause`.
    pub fn exits_of(&self, slot: usize, cause: Cause) -> u64 {
        self.exits.get(&(slot, cause)).copied().unwrap_or(0)
    }
}

/// User plus system CPU seconds of `pid`, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), then fields 4.. ; utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Clock ticks per second (`/proc` CPU times are in these).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slots_counters_add_up_over_its_workers() {
        let mut t = Tally::default();
        let one = Counts {
            status: [0, 3, 0, 1, 0],
            in_flight: 1,
            ..Counts::default()
        };
        t.exited(2, 10, Cause::Signal, Some(one), 0.5);
        t.exited(2, 11, Cause::MaxRequests, Some(one), 0.25);
        assert_eq!(t.exits_of(2, Cause::Signal), 1);
        assert_eq!(t.exits_of(2, Cause::MaxRequests), 1);
        assert_eq!(t.exits_of(1, Cause::Signal), 0);
        assert_eq!(t.retired[&2].requests(), 8);
        assert_eq!(
            t.retired[&2].in_flight, 0,
            "an exited worker has nothing in flight"
        );
        assert_eq!(t.retired_cpu[&2], 0.75);
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Cause::ALL.iter().map(|c| c.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Cause::ALL.len());
    }

    #[test]
    fn cpu_time_is_read_from_proc() {
        let cpu = cpu_seconds(std::process::id() as i32).expect("read /proc/self/stat");
        assert!(cpu.is_finite() && cpu >= 0.0, "{cpu}");
        assert_eq!(cpu_seconds(-1), None);
    }
}
