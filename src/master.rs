//! The master's loop: a small synchronous state machine, readable top to bottom.
//!
//! Each turn: wait (at most 1 s, or until the next refill or kill deadline) for a signal or a control
//! message; handle the signals; read the workers' messages; reap every dead worker; then either refill
//! empty slots (running) or count down the shutdown (stopping). The master never starts a thread or a
//! tokio runtime, so `fork` stays safe for its whole life.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::control::{self, ControlPipe, Message};
use crate::error::StartError;
use crate::jobs::Job;
use crate::lease::Lease;
use crate::listener::Listener;
use crate::pool::{GIVE_UP_AFTER, Pool};
use crate::server::AppFactory;
use crate::signals::SignalQueue;
use crate::worker::{self, ChildArgs};

/// How long a fast shutdown (SIGINT, SIGQUIT) waits before killing workers.
const FAST_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The longest the loop sleeps.
const TICK: Duration = Duration::from_secs(1);

/// How the master ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Shut down on request; every worker exited.
    Stopped,
    /// Every slot failed to boot repeatedly.
    GaveUp(String),
}

/// What the master needs to run.
pub(crate) struct MasterArgs<'a> {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    pub listeners: &'a [Listener],
    pub app: &'a AppFactory,
    pub jobs: &'a [Job],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopping { kill_at: Instant, killed: bool },
}

struct Master<'a> {
    args: MasterArgs<'a>,
    pid: Pid,
    signals: SignalQueue,
    control: ControlPipe,
    pool: Pool,
    state: State,
    announced_ready: bool,
    /// The write end of each live worker's order pipe.
    orders: HashMap<Pid, OwnedFd>,
    lease: Lease,
}

/// Runs the master until shutdown. Must be called from a single-threaded process that has not used
/// tokio.
pub(crate) fn run(args: MasterArgs<'_>) -> Result<Outcome, StartError> {
    let signals = SignalQueue::install()?;
    let control = ControlPipe::new()?;
    let now = Instant::now();
    let mut master = Master {
        pool: Pool::new(args.workers, now),
        args,
        pid: nix::unistd::getpid(),
        signals,
        control,
        state: State::Running,
        announced_ready: false,
        orders: HashMap::new(),
        lease: Lease::new(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
    };
    master.run_loop()
}

impl Master<'_> {
    fn run_loop(&mut self) -> Result<Outcome, StartError> {
        loop {
            let now = Instant::now();
            self.wait(now);
            for sig in self.signals.drain() {
                self.on_signal(sig);
            }
            for msg in self.control.drain() {
                self.on_message(msg);
            }
            self.reap();
            let now = Instant::now();
            match self.state {
                State::Running => {
                    if self.pool.gave_up() {
                        return Ok(Outcome::GaveUp(self.give_up()));
                    }
                    for slot in self.pool.due(now) {
                        self.spawn(slot);
                    }
                    self.maybe_grant_lease();
                }
                State::Stopping { kill_at, killed } => {
                    if self.pool.live().is_empty() {
                        tracing::info!("all workers exited; shutting down");
                        return Ok(Outcome::Stopped);
                    }
                    if !killed && now >= kill_at {
                        let live = self.pool.live();
                        tracing::warn!(
                            "{} worker(s) still running at the shutdown deadline; sending SIGKILL",
                            live.len()
                        );
                        self.signal_all(Signal::SIGKILL);
                        self.state = State::Stopping {
                            kill_at,
                            killed: true,
                        };
                    }
                }
            }
        }
    }

    /// Sleeps until a signal or message arrives, or the next deadline, at most [`TICK`].
    fn wait(&mut self, now: Instant) {
        let deadline = match self.state {
            State::Running => self.pool.next_refill(),
            State::Stopping { kill_at, killed } => (!killed).then_some(kill_at),
        };
        let timeout = deadline
            .map_or(TICK, |d| d.saturating_duration_since(now))
            .min(TICK);
        // Round up so the loop does not spin on a sub-millisecond remainder.
        let ms = timeout.as_micros().div_ceil(1000) as u16;
        let mut fds = [
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
            PollFd::new(self.control.fd(), PollFlags::POLLIN),
        ];
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGTERM => self.stop(true),
            Signal::SIGINT | Signal::SIGQUIT => self.stop(false),
            other => {
                tracing::info!("{other} received; live operations are not available yet, ignoring")
            }
        }
    }

    fn stop(&mut self, graceful: bool) {
        let now = Instant::now();
        match (self.state, graceful) {
            (State::Running, true) => {
                tracing::info!(
                    "SIGTERM: graceful shutdown, waiting up to {} for in-flight requests",
                    humantime::format_duration(self.args.graceful_timeout)
                );
                self.state = State::Stopping {
                    kill_at: now + self.args.graceful_timeout,
                    killed: false,
                };
                self.signal_all(Signal::SIGTERM);
            }
            (State::Stopping { .. }, true) => {
                tracing::info!("SIGTERM again: already shutting down");
            }
            (_, false) => {
                tracing::info!("fast shutdown");
                let kill_at = now + FAST_SHUTDOWN_GRACE;
                let killed = matches!(self.state, State::Stopping { killed: true, .. });
                self.state = State::Stopping { kill_at, killed };
                self.signal_all(Signal::SIGQUIT);
            }
        }
    }

    fn signal_all(&self, sig: Signal) {
        for pid in self.pool.live() {
            let _ = kill(pid, sig);
        }
    }

    fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Ready { pid } => {
                let pid = Pid::from_raw(pid);
                if let Some(slot) = self.pool.ready(pid) {
                    tracing::debug!("worker {slot} (pid {pid}) is ready");
                    if !self.announced_ready
                        && (0..self.pool.size()).all(|s| self.pool.slot(s).ready)
                    {
                        self.announced_ready = true;
                        tracing::info!("all {} workers ready", self.pool.size());
                    }
                }
            }
            Message::BootError { pid, text } => {
                self.pool.boot_error(Pid::from_raw(pid), text);
            }
            Message::JobStart { pid, tick_ms, job } => {
                if !self.lease.job_started(Pid::from_raw(pid), &job, tick_ms) {
                    tracing::error!(
                        "pid {pid} reported a run of job {job:?} without holding the scheduler lease"
                    );
                }
            }
            Message::Released { pid } => {
                if self.lease.ended(Pid::from_raw(pid)) {
                    tracing::info!("pid {pid} released the scheduler lease");
                }
            }
        }
    }

    /// Grants the scheduler lease to slot 0's worker when it is free and that worker is ready.
    fn maybe_grant_lease(&mut self) {
        if !self.lease.is_free() || self.args.jobs.is_empty() || self.pool.size() == 0 {
            return;
        }
        let slot0 = self.pool.slot(0);
        let (Some(pid), true) = (slot0.pid, slot0.ready) else {
            return;
        };
        let Some(fd) = self.orders.get(&pid) else {
            return;
        };
        let order = self.lease.grant(pid);
        if control::send_order(fd, &order) {
            tracing::info!("worker 0 (pid {pid}) holds the scheduler lease");
        } else {
            tracing::error!("cannot send the scheduler lease to worker 0 (pid {pid}); will retry");
            self.lease.grant_failed(pid);
        }
    }

    /// Frees the lease of a dead holder, after reading every report it wrote before dying.
    fn holder_died(&mut self, pid: Pid) {
        for msg in self.control.drain() {
            self.on_message(msg);
        }
        if self.lease.ended(pid) {
            tracing::info!("the scheduler lease is free again (holder pid {pid} exited)");
        }
    }

    /// Reaps every exited child and schedules refills.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(s) => s,
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exited with status {code}")),
                WaitStatus::Signaled(pid, sig, core) => (
                    pid,
                    format!(
                        "was killed by {sig}{}",
                        if core { " (core dumped)" } else { "" }
                    ),
                ),
                _ => continue,
            };
            self.orders.remove(&pid);
            if self.lease.holder() == Some(pid) {
                self.holder_died(pid);
            }
            let running = self.state == State::Running;
            let now = Instant::now();
            let Some(death) = self.pool.died(pid, now, running) else {
                continue;
            };
            let lived =
                humantime::format_duration(Duration::from_millis(death.lived.as_millis() as u64));
            if !running {
                tracing::debug!("worker {} (pid {pid}) {how}", death.slot);
            } else if self.pool.gave_up() {
                tracing::warn!(
                    "worker {} (pid {pid}) {how} after {lived} before it was ready",
                    death.slot
                );
            } else if death.delay.is_zero() {
                tracing::warn!(
                    "worker {} (pid {pid}) {how} after {lived}; restarting it",
                    death.slot
                );
            } else {
                tracing::warn!(
                    "worker {} (pid {pid}) {how} after {lived}{}; restarting in {}",
                    death.slot,
                    if death.was_ready {
                        ""
                    } else {
                        " before it was ready"
                    },
                    humantime::format_duration(death.delay)
                );
            }
        }
    }

    fn spawn(&mut self, slot: usize) {
        let now = Instant::now();
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
        close_fds.extend(self.orders.values().map(|fd| fd.as_raw_fd()));
        // SAFETY: the master is single-threaded (it never spawns threads or builds a runtime; `run`
        // documents the requirement and `Server::run` checks it), so the child gets a consistent copy
        // of memory with no lock held by another thread. The child never returns: `run_child` ends in
        // `exit`.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => worker::run_child(ChildArgs {
                slot,
                pool_size: self.pool.size(),
                master_pid: self.pid,
                listeners: self.args.listeners,
                close_fds,
                orders: order_read,
                control: self.control.writer(),
                jobs: self.args.jobs,
                threads: self.args.threads,
                graceful_timeout: self.args.graceful_timeout,
                app: self.args.app,
            }),
            Ok(ForkResult::Parent { child }) => {
                drop(order_read);
                self.orders.insert(child, order_write);
                tracing::info!("booting worker {slot} (pid {child})");
                self.pool.spawned(slot, child, now);
            }
            Err(e) => {
                tracing::error!("cannot fork worker {slot}: {e}; retrying");
                self.pool.fork_failed(slot, now);
            }
        }
    }

    /// Builds the give-up message and kills whatever is left.
    fn give_up(&mut self) -> String {
        self.signal_all(Signal::SIGKILL);
        for pid in self.pool.live() {
            let _ = waitpid(pid, None);
        }
        let cause = match self.pool.last_error() {
            Some((slot, e)) => format!("last error (worker {slot}): {e}"),
            None => "the workers died without reporting an error; see the log above".to_string(),
        };
        format!("every worker failed to boot {GIVE_UP_AFTER} times in a row; giving up. {cause}")
    }
}
