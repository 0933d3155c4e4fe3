//! The master's side of worker health (see [`crate::config::health`]): replacing workers whose event loop
//! went silent, and recycling workers past their request or memory limit.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::children::ChildPhase;
use super::reload::Replacement;
use super::tally::Cause;
use super::{Master, Phase};
use crate::config::health::{KILL_GRACE, MEMORY_SAMPLE, mib, rss_bytes};

impl Master<'_> {
    /// Kills the workers not ready within the boot timeout (plus [`KILL_GRACE`], so that a worker
    /// whose own timer can still fire reports its clearer error first): a start hook or app factory
    /// that blocks its thread (a `block_on` inside the runtime, say) can time nothing out itself. The
    /// death counts as a boot failure, with the usual back-off.
    fn kill_slow_boots(&mut self, now: Instant) {
        let boot = self.args.health.boot_timeout;
        if boot.is_zero() {
            return;
        }
        let slow: Vec<(usize, Pid)> = self
            .children
            .iter()
            .filter(|(_, c)| {
                c.phase == ChildPhase::Booting
                    && !c.boot_killed
                    && now >= c.started + boot + KILL_GRACE
            })
            .map(|(&pid, c)| (c.slot, pid))
            .collect();
        for (slot, pid) in slow {
            let text = format!(
                "not ready within --boot-timeout ({}): its start hook or app factory is blocked or \
                 too slow; killed",
                humantime::format_duration(boot)
            );
            tracing::error!("worker {slot} (pid {pid}) {text}");
            self.pool.boot_error(slot, text);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = self.children.get_mut(&pid) {
                c.boot_killed = true;
                c.ending = Some(Cause::BootTimeout);
            }
        }
    }

    /// A heartbeat from `pid`.
    pub(super) fn beat(&mut self, pid: Pid) {
        if let Some(c) = self.children.get_mut(&pid) {
            c.last_beat = Some(Instant::now());
        }
    }

    /// When the next health check is due: the first heartbeat deadline of a ready worker, or the
    /// next memory sample.
    pub(super) fn health_deadline(&self) -> Option<Instant> {
        let timeout = self.args.health.timeout;
        let beat = (!timeout.is_zero())
            .then(|| {
                self.children
                    .values()
                    .filter(|c| c.is_ready())
                    .filter_map(|c| c.last_beat)
                    .min()
                    .map(|t| t + timeout)
            })
            .flatten();
        let memory = (self.args.health.max_worker_memory > 0).then_some(self.next_memory_sample);
        let boot = self.args.health.boot_timeout;
        let booting = (!boot.is_zero())
            .then(|| {
                self.children
                    .values()
                    .filter(|c| c.phase == ChildPhase::Booting && !c.boot_killed)
                    .map(|c| c.started + boot + KILL_GRACE)
                    .min()
            })
            .flatten();
        beat.into_iter().chain(memory).chain(booting).min()
    }

    /// Replaces silent workers, recycles workers past the memory limit, and starts the next queued
    /// recycle.
    pub(super) fn check_health(&mut self, now: Instant) {
        if self.is_stopping() {
            return;
        }
        self.start_queued_recycle();
        self.kill_slow_boots(now);
        let timeout = self.args.health.timeout;
        if !timeout.is_zero() {
            for (slot, pid) in self.serving() {
                let silent = self
                    .children
                    .get(&pid)
                    .and_then(|c| c.last_beat)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                if silent > timeout {
                    self.replace_silent(slot, pid, silent);
                }
            }
        }
        let limit = self.args.health.max_worker_memory;
        if limit > 0 && now >= self.next_memory_sample {
            self.next_memory_sample = now + MEMORY_SAMPLE;
            for (slot, pid) in self.serving() {
                if let Some(rss) = rss_bytes(pid.as_raw()).filter(|rss| *rss > limit) {
                    self.recycle(
                        slot,
                        pid,
                        &format!(
                            "uses {} of memory, over --max-worker-memory {}",
                            mib(rss),
                            mib(limit)
                        ),
                        Cause::Memory,
                    );
                }
            }
        }
    }

    /// Starts the recycle that waited longest, once no reload, recycle or upgrade runs.
    fn start_queued_recycle(&mut self) {
        if !matches!(self.phase, Phase::Starting | Phase::Running) || self.upgrading() {
            return;
        }
        let next = self
            .children
            .iter()
            .filter(|(_, c)| c.is_ready())
            .filter_map(|(pid, c)| {
                c.recycle
                    .as_ref()
                    .map(|(since, _, _)| (*since, c.slot, *pid))
            })
            .min();
        let Some((_, slot, pid)) = next else {
            return;
        };
        if let Some((_, why, cause)) = self.children.get_mut(&pid).and_then(|c| c.recycle.take()) {
            self.recycle(slot, pid, &why, cause);
        }
    }

    /// A worker whose event loop stopped: `SIGTERM` now, `SIGKILL` after [`KILL_GRACE`], and a
    /// replacement as soon as the surge bound allows (it is not serving anyway).
    fn replace_silent(&mut self, slot: usize, pid: Pid, silent: Duration) {
        tracing::error!(
            "worker {slot} (pid {pid}) silent for {} (--timeout {}); sending SIGTERM, SIGKILL in {}, \
             and starting a replacement",
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(self.args.health.timeout),
            humantime::format_duration(KILL_GRACE)
        );
        self.retire(pid, KILL_GRACE, Cause::Heartbeat);
        if self
            .replacement()
            .is_some_and(|r| r.in_flight().contains(&slot))
        {
            // The slot's new worker of a reload or recycle was the silent one: let the reload
            // carry on with the next attempt.
            self.pool.fork_failed(slot, Instant::now());
        } else {
            // Forked by the next refill, once the surge bound has room (at once, unless a
            // replacement uses the surge: then when the silent one or an old worker exits).
            self.pool.vacate(slot, Instant::now());
        }
    }

    /// Replaces the worker of `slot` the zero-downtime way: its successor first, then it drains. One
    /// slot at a time: while another replacement, a reload or an upgrade runs, the request waits its
    /// turn. `cause` is what its exit counts as.
    pub(super) fn recycle(&mut self, slot: usize, pid: Pid, why: &str, cause: Cause) {
        let during_start = match self.phase {
            Phase::Stopping { .. } => return,
            Phase::Starting | Phase::Running if !self.upgrading() => {
                matches!(self.phase, Phase::Starting)
            }
            _ => {
                if let Some(c) = self.children.get_mut(&pid).filter(|c| c.recycle.is_none()) {
                    c.recycle = Some((Instant::now(), why.to_string(), cause));
                }
                return;
            }
        };
        tracing::info!("worker {slot} (pid {pid}) {why}; replacing it");
        let r = Replacement::recycle(slot, cause, self.pool.size(), during_start);
        self.phase = Phase::Replacing(r);
        self.step_replacement();
    }
}
