//! The master's side of worker health (see [`crate::config::health`]): replacing workers whose event loop
//! went silent, and recycling workers past their request or memory limit.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Master, Reload, State};
use crate::config::health::{KILL_GRACE, MEMORY_SAMPLE, mib, rss_bytes};

impl Master<'_> {
    /// A heartbeat (or the ready message, the first one) from `pid`.
    pub(super) fn beat(&mut self, pid: Pid) {
        if self.pool.slot_of(pid).is_some() {
            self.beats.insert(pid, Instant::now());
        }
    }

    /// When the next health check is due: the first heartbeat deadline or memory sample.
    pub(super) fn health_deadline(&self) -> Option<Instant> {
        let timeout = self.args.health.timeout;
        let beat = (!timeout.is_zero())
            .then(|| self.beats.values().min().map(|t| *t + timeout))
            .flatten();
        let memory = (self.args.health.max_worker_memory > 0).then_some(self.next_memory_sample);
        beat.into_iter().chain(memory).min()
    }

    /// Replaces silent workers, recycles workers past the memory limit, and starts the next queued
    /// recycle.
    pub(super) fn check_health(&mut self, now: Instant) {
        if self.state != State::Running {
            return;
        }
        while self.reload.is_none() && !self.upgrading() {
            let Some((pid, why)) = self.recycle_queue.pop_front() else {
                break;
            };
            if let Some(slot) = self.pool.slot_of(pid).filter(|s| self.pool.slot(*s).ready) {
                self.recycle(slot, pid, &why);
            }
        }
        let timeout = self.args.health.timeout;
        if !timeout.is_zero() {
            for slot in 0..self.pool.size() {
                let s = self.pool.slot(slot);
                let (Some(pid), true) = (s.pid, s.ready) else {
                    continue;
                };
                let silent = self
                    .beats
                    .get(&pid)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
                if silent > timeout {
                    self.replace_silent(slot, pid, silent);
                }
            }
        }
        let limit = self.args.health.max_worker_memory;
        if limit > 0 && now >= self.next_memory_sample {
            self.next_memory_sample = now + MEMORY_SAMPLE;
            for slot in 0..self.pool.size() {
                let s = self.pool.slot(slot);
                let (Some(pid), true) = (s.pid, s.ready) else {
                    continue;
                };
                if let Some(rss) = rss_bytes(pid.as_raw()).filter(|rss| *rss > limit) {
                    self.recycle(
                        slot,
                        pid,
                        &format!(
                            "uses {} of memory, over --max-worker-memory {}",
                            mib(rss),
                            mib(limit)
                        ),
                    );
                }
            }
        }
    }

    /// A worker whose event loop stopped: `SIGTERM` now, `SIGKILL` after [`KILL_GRACE`], and a
    /// replacement at once (it is not serving anyway).
    fn replace_silent(&mut self, slot: usize, pid: Pid, silent: Duration) {
        tracing::error!(
            "worker {slot} (pid {pid}) silent for {} (--timeout {}); sending SIGTERM, SIGKILL in {}, \
             and starting a replacement",
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(self.args.health.timeout),
            humantime::format_duration(KILL_GRACE)
        );
        self.beats.remove(&pid);
        if let Some(pid) = self.pool.detach(slot) {
            let _ = kill(pid, Signal::SIGTERM);
            self.draining.insert(pid, Some(Instant::now() + KILL_GRACE));
        }
        if self.reload.as_ref().is_some_and(|r| r.slot == slot) {
            // The slot's new worker of a reload or recycle was the silent one: let the reload
            // carry on with the next attempt.
            self.pool.fork_failed(slot, Instant::now());
            return;
        }
        self.spawn(slot);
    }

    /// Replaces the worker of `slot` the zero-downtime way: its successor first, then it drains. One
    /// slot at a time: while another replacement, a reload or an upgrade runs, the request waits its
    /// turn.
    pub(super) fn recycle(&mut self, slot: usize, pid: Pid, why: &str) {
        if self.state != State::Running {
            return;
        }
        if self.reload.is_some() || self.upgrading() {
            if !self.recycle_queue.iter().any(|(p, _)| *p == pid) {
                self.recycle_queue.push_back((pid, why.to_string()));
            }
            return;
        }
        tracing::info!("worker {slot} (pid {pid}) {why}; replacing it");
        self.reload = Some(Reload {
            slot,
            end: slot + 1,
            new_size: self.pool.size(),
            old: None,
            recycle: true,
        });
        self.step_reload();
    }
}
