//! The master's live changes of the pool: `SIGHUP` reloads (re-read the configuration, replace the
//! workers slot by slot, each new worker ready before the old one stops), recycles (the same
//! replacement for one worker past a limit) and `SIGTTIN` / `SIGTTOU`.

use std::time::Instant;

use super::{Master, Phase, Reloaded};
use crate::jobs::Job;
use crate::master::pool::GIVE_UP_AFTER;

/// A replacement of workers, one slot at a time: each new worker is ready before the old one of its
/// slot stops.
#[derive(Debug)]
pub(super) struct Replacement {
    /// Why the workers are replaced.
    pub kind: Replace,
    /// The slot being replaced; the slots before it run new workers.
    pub slot: usize,
    /// Slots `slot..end` are replaced.
    pub end: usize,
    /// The pool's size once done.
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
    /// One worker past its request or memory limit, in its own configuration.
    Recycle,
}

impl Replacement {
    /// A reload into a pool of `size` slots.
    pub fn reload(size: usize, during_start: bool) -> Replacement {
        Replacement {
            kind: Replace::Reload,
            slot: 0,
            end: size,
            size,
            reload_after: false,
            during_start,
        }
    }

    /// The recycle of the worker of `slot`, in a pool of `size` slots.
    pub fn recycle(slot: usize, size: usize, during_start: bool) -> Replacement {
        Replacement {
            kind: Replace::Recycle,
            slot,
            end: slot + 1,
            size,
            reload_after: false,
            during_start,
        }
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
            self.pool.grow(1, Instant::now());
            tracing::info!("SIGTTIN: workers {size} -> {}", size + 1);
        } else if size <= 1 {
            tracing::warn!("SIGTTOU ignored: the pool keeps at least 1 worker");
        } else {
            self.shrink_pool(size - 1);
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
        if let Phase::Replacing(r) = &mut self.phase {
            tracing::info!("SIGHUP: a reload is in progress; another one follows it");
            r.reload_after = true;
            return;
        }
        self.notifier.reloading();
        let new = match (self.args.reload)() {
            Ok(n) => n,
            Err(e) => return self.reject_reload(&e),
        };
        let mut changes = match self.rebind(&new) {
            Ok(c) => c,
            Err(e) => return self.reject_reload(&e),
        };
        let workers = new.plan.workers;
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
        let during_start = matches!(self.phase, Phase::Starting);
        self.phase = Phase::Replacing(Replacement::reload(workers, during_start));
        self.step_replacement();
    }

    fn reject_reload(&mut self, e: &dyn std::fmt::Display) {
        tracing::error!("reload rejected, the current workers keep serving: {e}");
        let status = self.status_line();
        self.notifier.ready(&status);
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
        args.threads = settings.threads;
        args.max_surge = settings.max_surge;
        args.graceful_timeout = settings.graceful_timeout;
        args.jobs = new.jobs;
        changes
    }

    /// The new worker of `slot` is ready: if it is the slot a replacement waits for, stop the old
    /// worker and move on to the next slot.
    pub(super) fn replacement_ready(&mut self, slot: usize, pid: nix::unistd::Pid) {
        let Phase::Replacing(r) = &mut self.phase else {
            return;
        };
        if r.slot != slot {
            return;
        }
        r.slot += 1;
        if let Some(old) = self.replaced_in(slot) {
            tracing::info!("worker {slot}: new pid {pid} ready, stopping old pid {old}");
            self.retire(old, self.args.graceful_timeout);
        }
        self.step_replacement();
    }

    /// Replaces the next slot, or finishes the replacement.
    pub(super) fn step_replacement(&mut self) {
        let Some(r) = self.replacement() else {
            return;
        };
        if r.slot >= r.end {
            return self.finish_replacement();
        }
        let slot = r.slot;
        if slot >= self.pool.size() {
            self.pool.grow(slot + 1 - self.pool.size(), Instant::now());
        }
        self.replace_holder(slot);
        self.spawn(slot);
    }

    /// Every slot of the replacement has its new worker: settle the pool's size and go on.
    fn finish_replacement(&mut self) {
        let Some(r) = self.end_replacement() else {
            return;
        };
        self.shrink_pool(r.size);
        match r.kind {
            Replace::Recycle => tracing::info!("worker {} recycled", r.end.saturating_sub(1)),
            Replace::Reload => tracing::info!(
                "reload complete: generation {}, {} workers",
                self.generation,
                r.size
            ),
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

    /// Stops a replacement whose new worker keeps failing to boot; the slot keeps its old worker.
    pub(super) fn abort_stuck_replacement(&mut self) {
        let Some(r) = self.replacement() else {
            return;
        };
        let slot = r.slot;
        if slot >= self.pool.size() || self.pool.slot(slot).boot_failures < GIVE_UP_AFTER {
            return;
        }
        let error = self
            .pool
            .slot(slot)
            .last_error
            .clone()
            .unwrap_or_else(|| "no error reported".into());
        let Some(r) = self.end_replacement() else {
            return;
        };
        if let Some(pid) = self.holder_of(slot) {
            self.kill_now(pid);
        }
        match self.replaced_in(slot) {
            Some(old) => self.reattach(slot, old),
            None => self.pool.fork_failed(slot, Instant::now()),
        }
        match r.kind {
            Replace::Recycle => {
                tracing::error!(
                    "recycling aborted: the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} \
                     times ({error}); the old worker keeps serving"
                );
                if r.reload_after {
                    self.begin_reload();
                }
            }
            Replace::Reload => {
                tracing::error!(
                    "reload aborted: the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} \
                     times ({error}); slot {slot} and the slots after it keep their old workers"
                );
                let status = self.status_line();
                self.notifier.ready(&status);
            }
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

    #[test]
    fn a_reload_replaces_every_slot_of_the_new_size() {
        let r = Replacement::reload(3, false);
        assert_eq!((r.kind, r.slot, r.end, r.size), (Replace::Reload, 0, 3, 3));
        assert!(!r.reload_after);
        assert!(matches!(r.resume(), Phase::Running));
    }

    #[test]
    fn a_recycle_replaces_one_slot_and_keeps_the_size() {
        let r = Replacement::recycle(2, 4, false);
        assert_eq!((r.kind, r.slot, r.end, r.size), (Replace::Recycle, 2, 3, 4));
    }

    #[test]
    fn a_replacement_begun_during_start_resumes_the_start() {
        assert!(matches!(
            Replacement::recycle(0, 2, true).resume(),
            Phase::Starting
        ));
        assert!(matches!(
            Replacement::reload(2, true).resume(),
            Phase::Starting
        ));
    }
}
