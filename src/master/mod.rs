//! The master's loop: a small synchronous state machine, readable top to bottom.
//!
//! Each turn: wait (at most 1 s, or until the next refill or kill deadline) for a signal or a control
//! message; handle the signals; read the workers' messages; reap every dead worker; then either refill
//! empty slots (running) or count down the shutdown (stopping). The master never starts a thread or a
//! tokio runtime, so `fork` stays safe for its whole life.
//!
//! A reload (`SIGHUP`) re-reads the configuration and replaces the workers slot by slot: fork the new
//! worker, wait for its ready message, then gracefully stop the old one; a new configuration that does
//! not validate, or a socket that cannot be bound, leaves the old pool serving. `SIGTTIN` / `SIGTTOU`
//! add or gracefully remove the highest slot. Stopped workers drain for at most the graceful timeout.
//! `SIGUSR2` starts a new master from the executable on disk and hands everything over to it once its
//! workers are ready (see [`crate::master::upgrade`]).

mod checks;
mod children;
mod handover;
pub(crate) mod lease;
pub(crate) mod pidfile;
pub(crate) mod pool;
mod reload;
pub(crate) mod signals;
pub(crate) mod systemd;
pub(crate) mod upgrade;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use self::children::{Child, ChildPhase};
use self::upgrade::{Predecessor, Step, Successor};
use crate::app::AppFactory;
use crate::error::StartError;
use crate::jobs::Job;
use crate::master::lease::Lease;
use crate::master::pool::{GIVE_UP_AFTER, Pool};
use crate::master::signals::{Intent, SignalQueue};
use crate::shared::control::{self, ControlPipe, Message};
use crate::shared::listener::Listener;

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

/// A re-read configuration, for a reload.
pub(crate) struct Reloaded {
    pub settings: crate::config::Settings,
    pub plan: crate::config::sizing::Plan,
    pub jobs: Vec<Job>,
}

/// Re-reads the configuration; an error rejects the reload.
pub(crate) type ReloadFn<'a> = &'a dyn Fn() -> Result<Reloaded, String>;

/// What the master needs to run.
pub(crate) struct MasterArgs<'a> {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    pub limits: crate::worker::serve::Limits,
    pub health: crate::config::health::Health,
    pub binds: Vec<crate::shared::listener::BindSpec>,
    pub backlog: u32,
    /// The mode of unix socket files bound from now on (a reload may bind new addresses).
    pub socket_mode: u32,
    pub listeners: Vec<Listener>,
    pub app: &'a AppFactory,
    pub jobs: Vec<Job>,
    pub reload: ReloadFn<'a>,
    /// Whether the sockets came from systemd (their files are systemd's, never removed).
    pub activated: bool,
    /// What to run for a binary upgrade; `None` if the executable could not be found at start.
    pub program: Option<upgrade::Program>,
    /// The channel to the master that started this one (binary upgrade).
    pub predecessor: Option<upgrade::Channel>,
    /// Where to write the pid file.
    pub pid_file: Option<std::path::PathBuf>,
    /// How workers share new connections.
    pub accept: crate::config::cli::Accept,
}

/// A reload in progress: slots below `slot` run new workers.
#[derive(Debug)]
struct Reload {
    slot: usize,
    /// Slots `slot..end` are replaced.
    end: usize,
    new_size: usize,
    /// A recycle of one worker (past a limit), not a `SIGHUP` reload.
    recycle: bool,
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
    /// Every live worker, from its fork to its reaping.
    children: HashMap<Pid, Child>,
    lease: Lease,
    /// Sockets of an earlier configuration, closed once no old worker is left.
    retired_listeners: Vec<Listener>,
    reload: Option<Reload>,
    reload_pending: bool,
    generation: u64,
    notifier: crate::master::systemd::Notifier,
    /// Whether READY=1 went out for the first generation.
    notified_ready: bool,
    /// When EXTEND_TIMEOUT_USEC was last sent during a shutdown.
    last_extend: Option<Instant>,
    /// The new master of a binary upgrade this master started.
    successor: Option<Successor>,
    /// The master that started this one, until the hand-over completes.
    predecessor: Option<Predecessor>,
    /// Whether this master removes the unix socket files and its pid file on exit.
    owns_files: bool,
    pid_file: Option<crate::master::pidfile::PidFile>,
    /// The process title last set.
    title: String,
    /// When the workers' memory is sampled next.
    next_memory_sample: Instant,
    /// The accept-balancing table shared with the workers (balanced accept only).
    balance: Option<crate::shared::balance::Table>,
}

/// Runs the master until shutdown. Must be called from a single-threaded process that has not used
/// tokio.
pub(crate) fn run(mut args: MasterArgs<'_>) -> Result<Outcome, StartError> {
    let signals = SignalQueue::install()?;
    let control = ControlPipe::new()?;
    let now = Instant::now();
    let predecessor = args.predecessor.take().map(|channel| Predecessor {
        channel,
        step: Step::Booting,
    });
    // A new master writes its pid file when it takes over; the old one's is still right until then.
    let pid_file = match (&args.pid_file, &predecessor) {
        (Some(p), None) => Some(crate::master::pidfile::PidFile::create(p)?),
        _ => None,
    };
    let anchor_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut notifier = crate::master::systemd::Notifier::from_env();
    notifier.set_muted(predecessor.is_some());
    let balance = match args.accept {
        crate::config::cli::Accept::Balanced => Some(
            crate::shared::balance::Table::new().map_err(|source| StartError::Os {
                what: "mapping the accept-balancing table",
                source,
            })?,
        ),
        crate::config::cli::Accept::Shared => None,
    };
    let mut master = Master {
        pool: Pool::new(args.workers, now),
        pid: nix::unistd::getpid(),
        signals,
        control,
        state: State::Running,
        announced_ready: false,
        children: HashMap::new(),
        retired_listeners: Vec::new(),
        reload: None,
        reload_pending: false,
        generation: 1,
        notifier,
        notified_ready: false,
        last_extend: None,
        lease: if predecessor.is_some() {
            Lease::held_by_predecessor(anchor_ms)
        } else {
            Lease::new(anchor_ms)
        },
        successor: None,
        owns_files: predecessor.is_none() && !args.activated,
        predecessor,
        pid_file,
        args,
        title: String::new(),
        next_memory_sample: now,
        balance,
    };
    let outcome = master.run_loop();
    if master.owns_files {
        crate::shared::listener::remove_unix_files(&master.args.listeners);
        crate::shared::listener::remove_unix_files(&master.retired_listeners);
    }
    outcome
}

impl Master<'_> {
    fn run_loop(&mut self) -> Result<Outcome, StartError> {
        loop {
            let now = Instant::now();
            self.wait(now);
            self.handle_signals();
            self.handle_messages();
            self.reap();
            let now = Instant::now();
            self.drive_successor(now);
            self.drive_predecessor();
            self.kill_overdue_drains(now);
            self.notifier
                .watchdog(now, self.state == State::Running && self.ready_count() > 0);
            let status = self.status_line();
            self.notifier.status(&status);
            let title = crate::shared::proctitle::master(
                self.generation,
                self.pool.size(),
                self.state != State::Running,
            );
            if title != self.title {
                crate::shared::proctitle::set(&title);
                self.title = title;
            }
            match self.state {
                State::Running => {
                    self.abort_failed_reload();
                    if self.pool.gave_up() {
                        return Ok(Outcome::GaveUp(self.give_up()));
                    }
                    for slot in self.pool.due(now) {
                        self.spawn(slot);
                    }
                    self.check_health(now);
                    self.maybe_grant_lease();
                }
                State::Stopping { kill_at, killed } => {
                    if self
                        .last_extend
                        .is_none_or(|t| now >= t + Duration::from_secs(1))
                    {
                        // Ask systemd to wait for the drain (plus a margin), however short
                        // TimeoutStopSec is.
                        let left = kill_at.saturating_duration_since(now) + Duration::from_secs(5);
                        self.notifier.extend_timeout(left);
                        self.last_extend = Some(now);
                    }
                    if self.live().is_empty() {
                        tracing::info!("all workers exited; shutting down");
                        return Ok(Outcome::Stopped);
                    }
                    if !killed && now >= kill_at {
                        let live = self.live();
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
        let drain = self
            .children
            .values()
            .filter_map(|c| match c.phase {
                ChildPhase::Draining { kill_at } => kill_at,
                _ => None,
            })
            .min();
        let deadline = match self.state {
            State::Running => self.pool.next_refill(),
            State::Stopping { kill_at, killed } => (!killed).then_some(kill_at),
        };
        let upgrade = self.successor.as_ref().and_then(|s| s.deadline());
        let health = match self.state {
            State::Running => self.health_deadline(),
            State::Stopping { .. } => None,
        };
        let deadline = [
            deadline,
            drain,
            upgrade,
            health,
            self.notifier.watchdog_deadline(),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = deadline
            .map_or(TICK, |d| d.saturating_duration_since(now))
            .min(TICK);
        // Round up so the loop does not spin on a sub-millisecond remainder.
        let ms = timeout.as_micros().div_ceil(1000) as u16;
        let mut fds = vec![
            PollFd::new(self.signals.fd(), PollFlags::POLLIN),
            PollFd::new(self.control.fd(), PollFlags::POLLIN),
        ];
        if let Some(ch) = self.successor.as_ref().and_then(|s| s.channel.as_ref()) {
            fds.push(PollFd::new(ch.fd(), PollFlags::POLLIN));
        }
        if let Some(p) = self.predecessor.as_ref() {
            fds.push(PollFd::new(p.channel.fd(), PollFlags::POLLIN));
        }
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// Acts on every pending signal, as the intent it stands for.
    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            match signals::intent(sig) {
                None => tracing::info!("{sig} received; not supported yet, ignoring"),
                Some(i) if self.state != State::Running && !i.applies_while_stopping() => {
                    tracing::info!("{sig} ignored: shutting down");
                }
                Some(i) => self.dispatch(i),
            }
        }
    }

    fn dispatch(&mut self, intent: Intent) {
        match intent {
            // The loop reaps after every wait: several SIGCHLD may have merged into one.
            Intent::ReapChildren => {}
            Intent::Shutdown { graceful } => self.stop(graceful),
            Intent::Reload if self.upgrading() => {
                tracing::warn!("SIGHUP ignored: a binary upgrade is in progress");
            }
            Intent::Reload => self.begin_reload(),
            Intent::Upgrade => self.begin_upgrade(),
            Intent::ReopenLogs => self.reopen_logs(),
            Intent::AddWorker => self.resize(1),
            Intent::RemoveWorker => self.resize(-1),
        }
    }

    /// The one-line status for systemd.
    fn status_line(&self) -> String {
        match self.state {
            State::Stopping { .. } => format!("stopping, {} workers left", self.live().len()),
            State::Running => format!(
                "{}/{} workers ready, generation {}{}",
                self.ready_count(),
                self.pool.size(),
                self.generation,
                if self.reload.is_some() {
                    ", reloading"
                } else if self.successor.is_some() {
                    ", upgrading"
                } else {
                    ""
                }
            ),
        }
    }

    /// Every live child: the workers, and a new master that has not taken over.
    fn live(&self) -> Vec<Pid> {
        let mut v: Vec<Pid> = self.children.keys().copied().collect();
        // A new master that has not taken over yet stops with this one.
        if let Some(s) = self.successor.as_ref().filter(|s| !s.took_over()) {
            v.push(s.pid);
        }
        v
    }

    /// `SIGUSR1`: reopen the log file here and in every worker.
    fn reopen_logs(&mut self) {
        match crate::logging::reopen() {
            Ok(Some(path)) => {
                tracing::info!("SIGUSR1: reopened the log file {}", path.display());
                for pid in self.children.keys() {
                    let _ = kill(*pid, Signal::SIGUSR1);
                }
            }
            Ok(None) => tracing::info!("SIGUSR1: logging to stderr, no log file to reopen"),
            Err(e) => tracing::error!("SIGUSR1: {e}; still writing to the file already open"),
        }
    }

    fn stop(&mut self, graceful: bool) {
        let now = Instant::now();
        self.reload_pending = false;
        if self.state == State::Running {
            self.notifier.stopping();
        }
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
        for pid in self.live() {
            let _ = kill(pid, sig);
        }
    }

    /// Acts on every message the workers sent.
    fn handle_messages(&mut self) {
        for msg in self.control.drain() {
            self.on_message(msg);
        }
    }

    fn on_message(&mut self, msg: Message) {
        let pid = sender(&msg);
        match msg {
            Message::Alive { .. } => self.beat(pid),
            Message::Recycle { served, .. } => {
                if let Some(slot) = self
                    .children
                    .get(&pid)
                    .filter(|c| c.in_pool())
                    .map(|c| c.slot)
                {
                    self.recycle(
                        slot,
                        pid,
                        &format!("served {served} requests, its --max-requests limit"),
                    );
                }
            }
            Message::Ready { .. } => self.worker_ready(pid),
            Message::BootError { text, .. } => {
                if let Some(c) = self.children.get(&pid).filter(|c| c.in_pool()) {
                    self.pool.boot_error(c.slot, text);
                }
            }
            Message::JobStart { tick_ms, job, .. } => {
                if !self.lease.job_started(pid, &job, tick_ms) {
                    tracing::error!(
                        "pid {pid} reported a run of job {job:?} without holding the scheduler lease"
                    );
                }
            }
            Message::Released { .. } => {
                if self.lease.ended(pid) {
                    tracing::info!("pid {pid} released the scheduler lease");
                }
            }
        }
    }

    /// A worker reported ready: the slot's replacement moves on, and the pool may be complete.
    fn worker_ready(&mut self, pid: Pid) {
        let Some(child) = self.children.get_mut(&pid).filter(|c| c.in_pool()) else {
            return;
        };
        child.phase = ChildPhase::Ready;
        child.last_beat = Some(Instant::now());
        let slot = child.slot;
        self.pool.ready(slot);
        tracing::debug!("worker {slot} (pid {pid}) is ready");
        if self.reload.as_ref().is_some_and(|r| r.slot == slot) {
            if let Some(old) = self.replaced_in(slot) {
                tracing::info!("worker {slot}: new pid {pid} ready, stopping old pid {old}");
                self.retire(old, self.args.graceful_timeout);
            }
            if let Some(r) = self.reload.as_mut() {
                r.slot += 1;
            }
            self.step_reload();
        }
        if !self.announced_ready && self.reload.is_none() && self.all_ready() {
            self.announced_ready = true;
            tracing::info!("all {} workers ready", self.pool.size());
            if !self.notified_ready {
                self.notified_ready = true;
                match self.predecessor.as_mut() {
                    Some(p) if p.step == Step::Booting => {
                        tracing::info!(
                            "telling the previous master that this one is ready to take over"
                        );
                        p.send_ready();
                    }
                    _ => {
                        let status = self.status_line();
                        self.notifier.ready(&status);
                    }
                }
            }
        }
    }

    /// Grants the scheduler lease to slot 0's worker when it is free and that worker is ready.
    fn maybe_grant_lease(&mut self) {
        if !self.lease.is_free() || self.args.jobs.is_empty() || self.pool.size() == 0 {
            return;
        }
        let Some((pid, fd)) = self
            .children
            .iter()
            .find(|(_, c)| c.slot == 0 && c.is_ready())
            .map(|(pid, c)| (*pid, &c.orders))
        else {
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

    /// Builds the give-up message and kills whatever is left.
    fn give_up(&mut self) -> String {
        self.signal_all(Signal::SIGKILL);
        for pid in self.live() {
            let _ = waitpid(pid, None);
        }
        let cause = match self.pool.last_error() {
            Some((slot, e)) => format!("last error (worker {slot}): {e}"),
            None => "the workers died without reporting an error; see the log above".to_string(),
        };
        format!("every worker failed to boot {GIVE_UP_AFTER} times in a row; giving up. {cause}")
    }
}

/// The sender of a worker's message, as the master names processes: the one place the wire's `i32`
/// becomes a [`Pid`].
fn sender(msg: &Message) -> Pid {
    let (Message::Ready { pid }
    | Message::BootError { pid, .. }
    | Message::JobStart { pid, .. }
    | Message::Released { pid }
    | Message::Alive { pid }
    | Message::Recycle { pid, .. }) = msg;
    Pid::from_raw(*pid)
}
