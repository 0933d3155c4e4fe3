//! The master's loop: a small synchronous state machine, readable top to bottom.
//!
//! Each turn: wait (at most 1 s, or until the next refill or kill deadline) for a signal or a control
//! message; handle the signals; read the workers' messages; reap every dead worker; then either refill
//! empty slots (running) or count down the shutdown (stopping). The master never starts a thread or a
//! tokio runtime, so `fork` stays safe for its whole life.

use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::control::{ControlPipe, Message};
use crate::error::StartError;
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
                close_fds: [self.signals.raw_fd(), self.control.read_raw_fd()],
                control: self.control.writer(),
                threads: self.args.threads,
                graceful_timeout: self.args.graceful_timeout,
                app: self.args.app,
            }),
            Ok(ForkResult::Parent { child }) => {
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
