//! The master's record of every worker it forked: one [`Child`] per live process, in one map keyed by
//! pid (gunicorn's `WORKERS[pid] = worker`).
//!
//! A record is added in one place, [`Master::spawn`], right after the fork, and removed in one place,
//! [`Master::reap`], once `waitpid` collected the process; everything a worker's death changes (its
//! slot's refill, the scheduler lease, the accept-balancing table, the sockets of an earlier
//! configuration) is handled there too. Which worker holds a slot is read from the records: a slot's
//! holder is the one record of that slot that is [`ChildPhase::Booting`] or [`ChildPhase::Ready`].

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::WaitStatus;
use nix::unistd::{ForkResult, Pid, fork};

use super::Master;
use super::tally::Cause;
use crate::shared::control;
use crate::worker::{self, ChildArgs};

/// One forked worker, as the master keeps it from its fork to its reaping.
#[derive(Debug)]
pub(super) struct Child {
    /// The slot it was forked for, and holds while it is in the pool.
    pub slot: usize,
    /// The write end of its order pipe.
    pub orders: OwnedFd,
    /// When it was forked.
    pub started: Instant,
    /// When it last proved its event loop runs (a heartbeat, or its ready message).
    pub last_beat: Option<Instant>,
    /// A replacement it needs (past its request or memory limit) that waits for its turn: since
    /// when, and why.
    pub recycle: Option<(Instant, String, super::tally::Cause)>,
    /// Where it is in its life.
    pub phase: ChildPhase,
    /// Sent `SIGKILL` for not being ready within the boot timeout (its death is a boot failure).
    pub boot_killed: bool,
    /// What it counts for under the surge bound: the pool size it was forked for plus the surge
    /// allowed then (see [`super::surge`]).
    pub parts: usize,
    /// Why the master stopped it, once it did (its exit is counted under this cause).
    pub ending: Option<Cause>,
    /// When it reported ready.
    pub ready_at: Option<Instant>,
    /// The configuration generation it was forked with.
    pub generation: u64,
    /// Its CPU seconds when last sampled, and when: for the CPU use between two samples.
    pub cpu_sample: Option<(Instant, f64)>,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ChildPhase {
    /// Holds its slot; has not reported ready yet.
    Booting,
    /// Holds its slot and serves.
    Ready,
    /// Left its slot to a new worker but serves until that one is ready (a reload or a recycle).
    Replaced,
    /// Told to stop; gets `SIGKILL` at `kill_at` (`None`: sent already).
    Draining {
        /// When it gets `SIGKILL`.
        kill_at: Option<Instant>,
    },
}

impl Child {
    /// Whether it holds its slot (booting or ready).
    pub fn in_pool(&self) -> bool {
        matches!(self.phase, ChildPhase::Booting | ChildPhase::Ready)
    }

    /// Whether it holds its slot and reported ready.
    pub fn is_ready(&self) -> bool {
        self.phase == ChildPhase::Ready
    }
}

impl Master<'_> {
    /// The worker holding `slot`.
    pub(super) fn holder_of(&self, slot: usize) -> Option<Pid> {
        self.children
            .iter()
            .find(|(_, c)| c.slot == slot && c.in_pool())
            .map(|(pid, _)| *pid)
    }

    /// The worker of `slot` that is being replaced.
    pub(super) fn replaced_in(&self, slot: usize) -> Option<Pid> {
        self.children
            .iter()
            .find(|(_, c)| c.slot == slot && c.phase == ChildPhase::Replaced)
            .map(|(pid, _)| *pid)
    }

    /// The ready workers of the pool, by slot.
    pub(super) fn serving(&self) -> Vec<(usize, Pid)> {
        let mut v: Vec<(usize, Pid)> = self
            .children
            .iter()
            .filter(|(_, c)| c.is_ready())
            .map(|(pid, c)| (c.slot, *pid))
            .collect();
        v.sort_unstable();
        v
    }

    /// Slots with a ready worker.
    pub(super) fn ready_count(&self) -> usize {
        self.children.values().filter(|c| c.is_ready()).count()
    }

    /// Whether every slot has a ready worker (a slot has at most one holder).
    pub(super) fn all_ready(&self) -> bool {
        self.ready_count() == self.pool.size()
    }

    /// Forks a worker into `slot`, which has no holder: the one place a record is added. The caller
    /// checked the surge bound ([`Master::has_room`]).
    pub(super) fn spawn(&mut self, slot: usize) {
        debug_assert!(self.holder_of(slot).is_none(), "slot {slot} is held");
        let now = Instant::now();
        let (pool_size, max_surge) = (self.spawn_size(), self.args.max_surge);
        let (order_read, order_write) = match control::order_pipe() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot fork worker {slot}: {e}; retrying");
                self.pool.fork_failed(slot, now);
                return;
            }
        };
        let mut close_fds = vec![
            self.signals.raw_fd(),
            self.control.read_raw_fd(),
            order_write.as_raw_fd(),
        ];
        close_fds.extend(self.children.values().map(|c| c.orders.as_raw_fd()));
        close_fds.extend(self.dev.as_ref().map(|d| d.raw_fd()));
        // Sockets a reload dropped stay open in the master until the old workers are gone; a new
        // worker must not hold them, or the address would go on queueing connections nobody accepts.
        close_fds.extend(self.retired_listeners.iter().map(|l| l.as_raw_fd()));
        // SAFETY: the master is single-threaded (it never spawns threads or builds a runtime; `run`
        // documents the requirement and `Server::run` checks it), so the child gets a consistent copy
        // of memory with no lock held by another thread. The child never returns: `run_child` ends in
        // `exit`.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => worker::run_child(ChildArgs {
                slot,
                pool_size,
                master_pid: self.pid,
                listeners: &self.args.listeners,
                close_fds,
                orders: order_read,
                control: self.control.writer(),
                jobs: &self.args.jobs,
                jobs_store: self.args.jobs_store.as_ref(),
                threads: self.args.threads,
                graceful_timeout: self.args.graceful_timeout,
                limits: self.args.limits.clone(),
                tls: self.args.tls.clone(),
                health: self.args.health,
                app: self.args.app,
                balance: self.balance,
                stats: self.stats,
                generation: self.generation,
                max_surge,
                db: self.args.db,
                account: self.args.account.as_ref(),
                chdir: self.args.chdir.as_deref(),
            }),
            Ok(ForkResult::Parent { child }) => {
                drop(order_read);
                let record = Child {
                    slot,
                    orders: order_write,
                    started: now,
                    last_beat: None,
                    recycle: None,
                    boot_killed: false,
                    phase: ChildPhase::Booting,
                    parts: super::surge::parts(pool_size, max_surge),
                    ending: None,
                    ready_at: None,
                    generation: self.generation,
                    cpu_sample: None,
                };
                self.children.insert(child, record);
                self.tally.spawned(slot);
                tracing::info!("booting worker {slot} (pid {child})");
                self.pool.spawned(slot);
            }
            Err(e) => {
                tracing::error!("cannot fork worker {slot}: {e}; retrying");
                self.pool.fork_failed(slot, now);
            }
        }
    }

    /// Moves the holder of `slot` out of it, still serving, for a new worker to take the slot.
    pub(super) fn replace_holder(&mut self, slot: usize) -> Option<Pid> {
        let pid = self.holder_of(slot)?;
        self.set_phase(pid, ChildPhase::Replaced);
        Some(pid)
    }

    /// Gives `slot` back to its replaced worker (an aborted replacement).
    pub(super) fn reattach(&mut self, slot: usize, pid: Pid) {
        self.set_phase(pid, ChildPhase::Ready);
        self.pool.reattach(slot);
    }

    /// Gracefully stops a worker for `cause`: `SIGTERM` now, `SIGKILL` if it still runs after
    /// `grace`.
    pub(super) fn retire(&mut self, pid: Pid, grace: Duration, cause: Cause) {
        let _ = kill(pid, Signal::SIGTERM);
        let kill_at = Some(Instant::now() + grace);
        self.set_phase(pid, ChildPhase::Draining { kill_at });
        self.set_ending(pid, cause);
    }

    /// Kills a worker at once, for `cause`.
    pub(super) fn kill_now(&mut self, pid: Pid, cause: Cause) {
        let _ = kill(pid, Signal::SIGKILL);
        self.set_phase(pid, ChildPhase::Draining { kill_at: None });
        self.set_ending(pid, cause);
    }

    /// Notes why the master stops `pid` (the first reason given stands).
    pub(super) fn set_ending(&mut self, pid: Pid, cause: Cause) {
        if let Some(c) = self.children.get_mut(&pid) {
            c.ending.get_or_insert(cause);
        }
    }

    fn set_phase(&mut self, pid: Pid, phase: ChildPhase) {
        if let Some(c) = self.children.get_mut(&pid) {
            c.phase = phase;
        }
    }

    /// Stops the workers of the slots from `size` on (for `cause`), and removes those slots.
    pub(super) fn shrink_pool(&mut self, size: usize, cause: Cause) {
        self.pool.truncate(size);
        let gone: Vec<Pid> = self
            .children
            .iter()
            .filter(|(_, c)| c.in_pool() && c.slot >= size)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.retire(pid, self.args.graceful_timeout, cause);
        }
    }

    /// Sends `SIGKILL` to stopped workers past their deadline.
    pub(super) fn kill_overdue_drains(&mut self, now: Instant) {
        for (pid, c) in self.children.iter_mut() {
            if let ChildPhase::Draining { kill_at } = &mut c.phase {
                if kill_at.is_some_and(|t| t <= now) {
                    tracing::warn!(
                        "stopped worker (pid {pid}) still running at its deadline; sending SIGKILL"
                    );
                    let _ = kill(*pid, Signal::SIGKILL);
                    *kill_at = None;
                }
            }
        }
    }

    /// Collects every exited child: the one place a record is removed.
    pub(super) fn reap(&mut self) {
        while let Some((pid, ended)) = reap_one() {
            let how = ended.to_string();
            if self.successor.as_ref().is_some_and(|s| s.pid == pid) {
                self.successor_exited(&how);
            } else if let Some(child) = self.children.remove(&pid) {
                self.count_exit(pid, &child, &ended);
                self.worker_died(pid, child, &how);
            }
        }
    }

    /// Counts a worker's exit under its cause, with its last counters and CPU time.
    fn count_exit(&mut self, pid: Pid, child: &Child, ended: &Ended) {
        let cause = child.ending.unwrap_or_else(|| {
            if self.is_stopping() {
                if self.successor.as_ref().is_some_and(|s| s.took_over()) {
                    Cause::Upgrade
                } else {
                    Cause::Shutdown
                }
            } else if child.boot_killed {
                Cause::BootTimeout
            } else if matches!(ended.status, WaitStatus::Signaled(..)) {
                Cause::Signal
            } else if child.phase == ChildPhase::Booting {
                Cause::BootFailure
            } else {
                Cause::Crash
            }
        });
        let counts = self.stats.release(pid.as_raw() as u32);
        self.tally
            .exited(child.slot, pid.as_raw(), cause, counts, ended.cpu_seconds);
    }

    /// Everything a worker's death changes.
    fn worker_died(&mut self, pid: Pid, child: Child, how: &str) {
        if let Some(table) = &self.balance {
            table.release(pid.as_raw() as u32);
        }
        if self.lease.holder() == Some(pid) {
            self.holder_died(pid);
        }
        match child.phase {
            ChildPhase::Booting | ChildPhase::Ready => return self.slot_lost(pid, &child, how),
            ChildPhase::Draining { .. } => tracing::debug!("old worker (pid {pid}) {how}"),
            ChildPhase::Replaced => {
                tracing::warn!("old worker (pid {pid}) {how} while waiting for its replacement");
            }
        }
        let old_left = self.children.values().any(|c| !c.in_pool());
        if !old_left && self.replacement().is_none() && !self.retired_listeners.is_empty() {
            if self.owns_files {
                crate::shared::listener::remove_unix_files(&self.retired_listeners);
            }
            self.retired_listeners.clear();
            tracing::info!("closed the sockets of the previous configuration");
        }
    }

    /// The holder of a slot died: schedule the refill (unless stopping) and say why.
    fn slot_lost(&mut self, pid: Pid, child: &Child, how: &str) {
        let running = !self.is_stopping();
        let now = Instant::now();
        let lived = now.saturating_duration_since(child.started);
        let was_ready = child.is_ready();
        let slot = child.slot;
        let delay = self.pool.died(slot, lived, was_ready, now, running);
        let lived = humantime::format_duration(Duration::from_millis(lived.as_millis() as u64));
        if !running {
            tracing::debug!("worker {slot} (pid {pid}) {how}");
        } else if self.pool.gave_up() {
            tracing::warn!("worker {slot} (pid {pid}) {how} after {lived} before it was ready");
        } else if delay.is_zero() {
            tracing::warn!("worker {slot} (pid {pid}) {how} after {lived}; restarting it");
        } else {
            tracing::warn!(
                "worker {slot} (pid {pid}) {how} after {lived}{}; restarting in {}",
                if was_ready {
                    ""
                } else {
                    " before it was ready"
                },
                humantime::format_duration(delay)
            );
        }
    }
}

/// How a child ended: its wait status and the CPU time it used.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended {
    status: WaitStatus,
    /// User plus system CPU seconds over its life.
    cpu_seconds: f64,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            WaitStatus::Exited(_, code) => write!(f, "exited with status {code}"),
            WaitStatus::Signaled(_, sig, core) => {
                write!(f, "was killed by {sig}")?;
                if core {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
            other => write!(f, "ended ({other:?})"),
        }
    }
}

/// Collects one exited child without waiting: its pid and how it ended (with `wait4`, which also
/// gives the CPU time it used: `/proc` no longer has it).
fn reap_one() -> Option<(Pid, Ended)> {
    loop {
        let mut raw = 0;
        // SAFETY: an all-zero `rusage` is a valid value of the plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only to the two out-pointers, which point to live locals of the right
        // types.
        let pid = unsafe { libc::wait4(-1, &mut raw, libc::WNOHANG, &mut usage) };
        if pid <= 0 {
            return None;
        }
        let pid = Pid::from_raw(pid);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let cpu_seconds = tv(usage.ru_utime) + tv(usage.ru_stime);
        // Stopped or continued is not an exit (and not reported without WUNTRACED anyway).
        if let Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
            WaitStatus::from_raw(pid, raw)
        {
            return Some((
                pid,
                Ended {
                    status,
                    cpu_seconds,
                },
            ));
        }
    }
}
