//! The master's live changes of the pool: `SIGHUP` reloads (re-read the configuration, replace the
//! workers slot by slot, each new worker ready before the old one stops), recycles (the same
//! replacement for one worker past a limit) and `SIGTTIN` / `SIGTTOU`.
//!
//! A replacement is a list of [`Step`]s started in order, each only when the surge bound allows one
//! more live worker (see [`crate::master::surge`]): with the default `--max-surge 1`, a slot's new
//! worker starts only once the previous slot's old worker has exited. `SIGTTIN` is a replacement too:
//! the existing slots get workers forked for the larger pool first (smaller shares of a budget, see
//! `Worker::share_of`), then the new slot is added. A reload that shrinks the pool stops the highest
//! slots first, then replaces the others.

use std::collections::VecDeque;
use std::time::Instant;

use super::tally::{Cause, Outcome};
use super::{Master, Phase, Reloaded};
use crate::jobs::Job;
use crate::master::pool::GIVE_UP_AFTER;

/// A replacement of workers, slot by slot: each new worker is ready before the old one of its slot
/// stops, and at most `--max-surge` extra workers are alive at any moment.
#[derive(Debug)]
pub(super) struct Replacement {
    /// Why the workers are replaced.
    pub kind: Replace,
    /// The steps not started yet, in order.
    pending: VecDeque<Step>,
    /// Slots whose new worker was forked (or is due for a refill) and has not reported ready yet.
    in_flight: Vec<usize>,
    /// The pool's size once done; the new workers are forked for it.
    pub size: usize,
    /// A `SIGHUP` arrived meanwhile: reload (again) once this one ends.
    pub reload_after: bool,
    /// It began while the first pool was still booting: the master goes back to
    /// [`Phase::Starting`] when it ends (the service is declared ready once the whole pool is).
    pub during_start: bool,
}

/// What a replacement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replace {
    /// `SIGHUP`: every slot, into the re-read configuration; the pool ends at its new size.
    Reload,
    /// `SIGTTIN`: every slot, in the same configuration, for a pool one larger; then the new slot.
    Grow,
    /// The worker of this slot, past its request or memory limit (the cause its exit counts as), in
    /// its own configuration.
    Recycle(usize, Cause),
}

/// One slot of a replacement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Fork a new worker into a slot that has one; the old one drains once the new one is ready.
    Replace(usize),
    /// Fork a worker into a new slot.
    Add(usize),
}

impl Step {
    /// The slot it forks into.
    pub fn slot(self) -> usize {
        match self {
            Step::Replace(slot) | Step::Add(slot) => slot,
        }
    }
}

impl Replacement {
    fn new(kind: Replace, steps: VecDeque<Step>, size: usize, during_start: bool) -> Replacement {
        Replacement {
            kind,
            pending: steps,
            in_flight: Vec::new(),
            size,
            reload_after: false,
            during_start,
        }
    }

    /// The steps from a pool of `from` slots to one of `to`: replace the slots both have, then add
    /// the new ones. Slots beyond `to` are not in it: the master stops them before it begins.
    fn steps(from: usize, to: usize) -> VecDeque<Step> {
        (0..from.min(to))
            .map(Step::Replace)
            .chain((from..to).map(Step::Add))
            .collect()
    }

    /// A reload from a pool of `from` slots into one of `to`.
    pub fn reload(from: usize, to: usize, during_start: bool) -> Replacement {
        Replacement::new(Replace::Reload, Self::steps(from, to), to, during_start)
    }

    /// `SIGTTIN` (one more) or `ctl workers add N`: from `from` slots to `to`.
    pub fn grow(from: usize, to: usize, during_start: bool) -> Replacement {
        Replacement::new(Replace::Grow, Self::steps(from, to), to, during_start)
    }

    /// What it is, for an answer: `a reload`, `a resize`, `the recycle of worker 2`.
    pub fn describe(&self) -> String {
        match self.kind {
            Replace::Reload => "a reload".into(),
            Replace::Grow => "a resize".into(),
            Replace::Recycle(slot, _) => format!("the recycle of worker {slot}"),
        }
    }

    /// The recycle of the worker of `slot`, in a pool of `size` slots.
    pub fn recycle(slot: usize, cause: Cause, size: usize, during_start: bool) -> Replacement {
        let steps = VecDeque::from([Step::Replace(slot)]);
        Replacement::new(Replace::Recycle(slot, cause), steps, size, during_start)
    }

    /// The next step to start, if any is left.
    pub fn next_step(&self) -> Option<Step> {
        self.pending.front().copied()
    }

    /// Starts the next step: its slot waits for its new worker's ready message.
    pub fn start_next(&mut self) -> Option<Step> {
        let step = self.pending.pop_front()?;
        self.in_flight.push(step.slot());
        Some(step)
    }

    /// The slots waiting for their new worker.
    pub fn in_flight(&self) -> &[usize] {
        &self.in_flight
    }

    /// The worker of `slot` reported ready: whether the replacement was waiting for it.
    pub fn ready(&mut self, slot: usize) -> bool {
        let before = self.in_flight.len();
        self.in_flight.retain(|&s| s != slot);
        self.in_flight.len() < before
    }

    /// What the exit of a worker this replaces counts as.
    pub fn cause(&self) -> Cause {
        match self.kind {
            Replace::Reload => Cause::Reload,
            Replace::Grow => Cause::Resize,
            Replace::Recycle(_, cause) => cause,
        }
    }

    /// Whether every step started and every new worker is ready.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty() && self.in_flight.is_empty()
    }

    /// The phase the master goes back to when this ends.
    fn resume(&self) -> Phase {
        if self.during_start {
            Phase::Starting
        } else {
            Phase::Running
        }
    }
}

impl Master<'_> {
    /// `SIGTTIN` (+1) / `SIGTTOU` (-1).
    pub(super) fn resize(&mut self, delta: i32) {
        if self.replacement().is_some() {
            tracing::warn!(
                "resize ignored: a reload is in progress; send the signal again after it"
            );
            return;
        }
        let size = self.pool.size();
        if delta > 0 {
            if self.upgrading() {
                tracing::warn!("SIGTTIN ignored: a binary upgrade is in progress");
                return;
            }
            tracing::info!(
                "SIGTTIN: workers {size} -> {}; replacing the workers for the larger pool first, \
                 then adding slot {size}",
                size + 1
            );
            let during_start = matches!(self.phase, Phase::Starting);
            self.phase = Phase::Replacing(Replacement::grow(size, size + 1, during_start));
            self.step_replacement();
        } else if size <= 1 {
            tracing::warn!("SIGTTOU ignored: the pool keeps at least 1 worker");
        } else {
            self.shrink_pool(size - 1, Cause::Resize);
            tracing::info!(
                "SIGTTOU: workers {size} -> {}, stopping slot {}",
                size - 1,
                size - 1
            );
        }
        self.pool_announced = false;
    }

    /// `SIGHUP`: re-read the configuration and start replacing workers.
    pub(super) fn begin_reload(&mut self) {
        // A reload queued behind one that ends during a shutdown delay.
        if self.shutting_down() {
            tracing::info!("reload dropped: shutting down");
            return;
        }
        if let Phase::Replacing(r) = &mut self.phase {
            tracing::info!("SIGHUP: a reload is in progress; another one follows it");
            r.reload_after = true;
            return;
        }
        self.notifier.reloading();
        let mut new = match (self.args.reload)() {
            Ok(n) => n,
            Err(e) => return self.reject_reload(&e),
        };
        let watch = match self.watch_spec(&new.settings) {
            Ok(w) => w,
            Err(e) => return self.reject_reload(&e),
        };
        let mut changes = match self.rebind(&new) {
            Ok(c) => c,
            Err(e) => return self.reject_reload(&e),
        };
        changes.extend(self.rewatch(watch));
        let workers = self.guarded_size(new.plan.workers, new.guard.clone());
        new.plan.workers = workers;
        changes.extend(self.apply_settings(new));
        self.generation += 1;
        tracing::info!(
            "SIGHUP: reloading into generation {} ({})",
            self.generation,
            if changes.is_empty() {
                "no setting changed".to_string()
            } else {
                changes.join("; ")
            }
        );
        let from = self.pool.size();
        if workers < from {
            // Before any new worker starts: the new workers' shares of a budget assume the smaller
            // pool, so the slots it drops must not outlive them.
            tracing::info!("reload: stopping slots {workers}..{from} first");
            self.shrink_pool(workers, Cause::Reload);
        }
        let during_start = matches!(self.phase, Phase::Starting);
        let replacement = Replacement::reload(self.pool.size(), workers, during_start);
        self.phase = Phase::Replacing(replacement);
        self.step_replacement();
    }

    fn reject_reload(&mut self, e: &dyn std::fmt::Display) {
        tracing::error!("reload rejected, the current workers keep serving: {e}");
        let status = self.status_line();
        self.notifier.ready(&status);
        self.reload_ended(
            Outcome::Rejected,
            format!("reload rejected, the current workers keep serving: {e}"),
        );
    }

    /// A reload ended: count it and answer whoever waits for it.
    pub(super) fn reload_ended(&mut self, outcome: Outcome, message: String) {
        self.tally.reload(outcome);
        self.answer_waiters(
            super::ctl::Awaited::Reload,
            outcome == Outcome::Completed,
            &message,
        );
    }

    /// Binds the new configuration's new addresses before any old worker stops. Addresses kept from
    /// the old configuration keep their sockets; dropped ones close once the old workers are gone.
    /// Returns the change to log (none when the addresses stay the same).
    fn rebind(&mut self, new: &Reloaded) -> Result<Vec<String>, crate::error::StartError> {
        let specs: Vec<_> = new.settings.binds.iter().map(|b| b.value.clone()).collect();
        if specs == self.args.binds {
            return Ok(Vec::new());
        }
        let added: Vec<_> = specs
            .iter()
            .filter(|s| !self.args.binds.contains(s))
            .cloned()
            .collect();
        let fresh = crate::shared::listener::bind_all(
            &added,
            new.settings.backlog,
            new.settings.socket_mode,
            self.args.account.as_ref(),
        )?;
        let mut listeners = Vec::new();
        for l in std::mem::take(&mut self.args.listeners) {
            if specs.iter().any(|b| l.serves(b)) {
                listeners.push(l);
            } else {
                self.retired_listeners.push(l);
            }
        }
        for l in &fresh {
            tracing::info!("reload: listening on {}", l.describe());
        }
        listeners.extend(fresh);
        let change = format!("listen {} -> {}", join(&self.args.binds), join(&specs));
        self.args.listeners = listeners;
        self.args.binds = specs;
        Ok(vec![change])
    }

    /// Takes the new configuration's settings for the workers forked from now on; returns what
    /// changed, to log.
    fn apply_settings(&mut self, new: Reloaded) -> Vec<String> {
        let mut changes = Vec::new();
        let (settings, args) = (&new.settings, &mut self.args);
        if settings.backlog != args.backlog {
            changes.push("backlog changes apply to new sockets only".to_string());
            args.backlog = settings.backlog;
        }
        if settings.socket_mode != args.socket_mode {
            changes.push(format!(
                "socket mode {:04o} -> {:04o}, for new unix sockets only",
                args.socket_mode, settings.socket_mode
            ));
            args.socket_mode = settings.socket_mode;
        }
        if new.plan.workers != self.pool.size() {
            changes.push(format!(
                "workers {} -> {}",
                self.pool.size(),
                new.plan.workers
            ));
        }
        if settings.max_surge != args.max_surge {
            changes.push(format!(
                "max surge {} -> {}",
                args.max_surge, settings.max_surge
            ));
        }
        if settings.threads != args.threads {
            changes.push(format!("threads {} -> {}", args.threads, settings.threads));
        }
        if settings.graceful_timeout != args.graceful_timeout {
            changes.push(format!(
                "graceful timeout {} -> {}",
                humantime::format_duration(args.graceful_timeout),
                humantime::format_duration(settings.graceful_timeout)
            ));
        }
        let names = |jobs: &[Job]| {
            jobs.iter()
                .map(|j| format!("{} ({})", j.name, j.schedule))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if names(&new.jobs) != names(&args.jobs) {
            changes.push(format!(
                "jobs [{}] -> [{}]",
                names(&args.jobs),
                names(&new.jobs)
            ));
        }
        if settings.metrics_bind != args.metrics_bind {
            changes.push(format!(
                "the metrics address changes only on a restart (still {})",
                args.metrics_bind
                    .map_or_else(|| "off".to_string(), |a| a.to_string())
            ));
        }
        match (&args.tls, &new.tls) {
            (None, None) => {}
            (Some(old), Some(tls)) if old.summary() == tls.summary() => {
                changes.push(format!("TLS certificate reloaded: {}", tls.summary()));
            }
            (old, tls) => changes.push(format!(
                "TLS certificate {} -> {}",
                old.as_ref().map_or("off", |t| t.summary()),
                tls.as_ref().map_or("off", |t| t.summary())
            )),
        }
        let limits = settings.limits();
        if limits != args.limits {
            changes.push(format!("limits {:?} -> {limits:?}", args.limits));
        }
        let health = settings.health();
        if health != args.health {
            changes.push(format!("health {:?} -> {health:?}", args.health));
        }
        args.limits = limits;
        args.health = health;
        args.cores = new.plan.cores.count;
        args.budget = new.budget.clone();
        args.threads = settings.threads;
        args.max_surge = settings.max_surge;
        args.graceful_timeout = settings.graceful_timeout;
        if settings.shutdown_delay != args.shutdown_delay {
            changes.push(format!(
                "shutdown delay {} -> {}",
                humantime::format_duration(args.shutdown_delay),
                humantime::format_duration(settings.shutdown_delay)
            ));
            args.shutdown_delay = settings.shutdown_delay;
        }
        if settings.chdir != args.chdir {
            changes.push(format!("chdir {:?} -> {:?}", args.chdir, settings.chdir));
            args.chdir = settings.chdir.clone();
        }
        let db = settings.db_use();
        if db != args.db {
            changes.push(format!("database connections {:?} -> {db:?}", args.db));
            args.db = db;
        }
        if new.jobs_store != args.jobs_store {
            let show = |s: &Option<crate::jobs::store::StoreConfig>| {
                s.as_ref().map_or("off".to_string(), |c| {
                    format!("{} (lease {})", c.url, humantime::format_duration(c.lease))
                })
            };
            changes.push(format!(
                "job store {} -> {}",
                show(&args.jobs_store),
                show(&new.jobs_store)
            ));
        }
        args.jobs = new.jobs;
        args.jobs_store = new.jobs_store;
        args.tls = new.tls;
        changes
    }

    /// The new worker of `slot` is ready: if a replacement waits for it, stop the old worker of that
    /// slot and start what the surge bound allows next.
    pub(super) fn replacement_ready(&mut self, slot: usize, pid: nix::unistd::Pid) {
        let Phase::Replacing(r) = &mut self.phase else {
            return;
        };
        if !r.ready(slot) {
            return;
        }
        let cause = r.cause();
        if let Some(old) = self.replaced_in(slot) {
            let message = format!("worker {slot}: new pid {pid} ready, stopping old pid {old}");
            tracing::info!("{message}");
            self.retire(old, self.args.graceful_timeout, cause);
            if cause == Cause::Reload {
                self.progress(super::ctl::Awaited::Reload, &message);
            }
        }
        self.step_replacement();
    }

    /// Starts every next step the surge bound allows now, or finishes the replacement. Called again
    /// on every turn of the loop, so a step waiting for an old worker to exit starts once it is
    /// reaped.
    pub(super) fn step_replacement(&mut self) {
        loop {
            let Some(r) = self.replacement() else {
                return;
            };
            if r.is_done() {
                return self.finish_replacement();
            }
            if r.next_step().is_none() || !self.has_room() {
                return;
            }
            let Some(step) = (match &mut self.phase {
                Phase::Replacing(r) => r.start_next(),
                _ => None,
            }) else {
                return;
            };
            let slot = step.slot();
            if slot >= self.pool.size() {
                self.pool.grow(slot + 1 - self.pool.size(), Instant::now());
            }
            self.replace_holder(slot);
            self.spawn(slot);
        }
    }

    /// Every slot of the replacement has its new worker: settle the pool's size and go on.
    fn finish_replacement(&mut self) {
        let Some(r) = self.end_replacement() else {
            return;
        };
        self.shrink_pool(r.size, r.cause());
        match r.kind {
            Replace::Recycle(slot, _) => tracing::info!("worker {slot} recycled"),
            Replace::Grow => tracing::info!("SIGTTIN complete: {} workers", r.size),
            Replace::Reload => {
                let message = format!(
                    "reload complete: generation {}, {} workers",
                    self.generation, r.size
                );
                tracing::info!("{message}");
                self.reload_ended(Outcome::Completed, message);
            }
        }
        if r.reload_after {
            self.begin_reload();
        } else if r.kind == Replace::Reload {
            let status = self.status_line();
            self.notifier.ready(&status);
        }
    }

    /// Leaves [`Phase::Replacing`] for the phase the replacement interrupted.
    fn end_replacement(&mut self) -> Option<Replacement> {
        let resume = self.replacement()?.resume();
        match std::mem::replace(&mut self.phase, resume) {
            Phase::Replacing(r) => Some(r),
            _ => None,
        }
    }

    /// Stops a replacement whose new worker keeps failing to boot: the slots it has not replaced
    /// keep their old workers.
    pub(super) fn abort_stuck_replacement(&mut self) {
        let Some(r) = self.replacement() else {
            return;
        };
        let Some(slot) = r.in_flight().iter().copied().find(|&slot| {
            slot < self.pool.size() && self.pool.slot(slot).boot_failures >= GIVE_UP_AFTER
        }) else {
            return;
        };
        let error = self
            .pool
            .slot(slot)
            .last_error
            .clone()
            .unwrap_or_else(|| "no error reported".into());
        let Some(r) = self.end_replacement() else {
            return;
        };
        for &s in r.in_flight() {
            self.give_back(s, s == slot, r.cause());
        }
        let why =
            format!("the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} times ({error})");
        match r.kind {
            Replace::Recycle(..) => {
                tracing::error!("recycling aborted: {why}; the old worker keeps serving");
            }
            Replace::Grow => tracing::error!(
                "SIGTTIN aborted: {why}; the slots not replaced yet keep their old workers"
            ),
            Replace::Reload => {
                let message = format!(
                    "reload aborted: {why}; the slots not replaced yet keep their old workers"
                );
                tracing::error!("{message}");
                let status = self.status_line();
                self.notifier.ready(&status);
                self.reload_ended(Outcome::Aborted, message);
                return;
            }
        }
        if r.reload_after {
            self.begin_reload();
        }
    }

    /// An aborted replacement gives `slot` back to its old worker, stopping the new one. A slot
    /// without an old worker keeps its new one, unless that one is `stuck`: then it is retried
    /// after the back-off.
    fn give_back(&mut self, slot: usize, stuck: bool, cause: Cause) {
        let old = self.replaced_in(slot);
        if old.is_none() && !stuck {
            return;
        }
        if let Some(pid) = self.holder_of(slot) {
            self.kill_now(pid, cause);
        }
        match old {
            Some(old) => self.reattach(slot, old),
            None => self.pool.fork_failed(slot, Instant::now()),
        }
    }
}

fn join(specs: &[crate::shared::listener::BindSpec]) -> String {
    specs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(r: &mut Replacement) -> Vec<Step> {
        std::iter::from_fn(|| r.start_next()).collect()
    }

    #[test]
    fn a_reload_replaces_every_slot_of_the_new_size() {
        let mut r = Replacement::reload(3, 3, false);
        assert_eq!((r.kind, r.size), (Replace::Reload, 3));
        assert!(!r.reload_after);
        assert!(matches!(r.resume(), Phase::Running));
        assert_eq!(
            steps(&mut r),
            [Step::Replace(0), Step::Replace(1), Step::Replace(2)]
        );
    }

    #[test]
    fn a_growing_reload_replaces_the_old_slots_before_adding_new_ones() {
        let mut r = Replacement::reload(2, 4, false);
        assert_eq!(
            steps(&mut r),
            [
                Step::Replace(0),
                Step::Replace(1),
                Step::Add(2),
                Step::Add(3)
            ]
        );
        // Shrinking: the master stops the dropped slots first, then replaces the others.
        let mut r = Replacement::reload(2, 2, false);
        assert_eq!(steps(&mut r), [Step::Replace(0), Step::Replace(1)]);
    }

    #[test]
    fn sigttin_replaces_every_slot_for_the_larger_pool_then_adds_one() {
        let mut r = Replacement::grow(3, 4, false);
        assert_eq!((r.kind, r.size), (Replace::Grow, 4));
        assert_eq!(
            steps(&mut r),
            [
                Step::Replace(0),
                Step::Replace(1),
                Step::Replace(2),
                Step::Add(3)
            ]
        );
    }

    #[test]
    fn a_recycle_replaces_one_slot_and_keeps_the_size() {
        let mut r = Replacement::recycle(2, Cause::Memory, 4, false);
        assert_eq!((r.kind, r.size), (Replace::Recycle(2, Cause::Memory), 4));
        assert_eq!(r.cause(), Cause::Memory);
        assert_eq!(steps(&mut r), [Step::Replace(2)]);
    }

    #[test]
    fn a_replacement_is_done_once_every_started_slot_is_ready() {
        let mut r = Replacement::reload(2, 2, false);
        assert_eq!(r.start_next(), Some(Step::Replace(0)));
        assert_eq!(r.start_next(), Some(Step::Replace(1)));
        assert_eq!(r.in_flight(), [0, 1]);
        assert!(!r.ready(5), "not a slot it waits for");
        assert!(r.ready(1));
        assert!(!r.is_done());
        assert!(!r.ready(1), "already ready");
        assert!(r.ready(0));
        assert!(r.is_done());
        assert_eq!(r.next_step(), None);
    }

    #[test]
    fn a_replacement_begun_during_start_resumes_the_start() {
        assert!(matches!(
            Replacement::recycle(0, Cause::MaxRequests, 2, true).resume(),
            Phase::Starting
        ));
        assert!(matches!(
            Replacement::reload(2, 2, true).resume(),
            Phase::Starting
        ));
        assert!(matches!(
            Replacement::grow(2, 3, true).resume(),
            Phase::Starting
        ));
    }
}
