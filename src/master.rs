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
//! workers are ready (see [`crate::upgrade`]).

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
use crate::upgrade::{self, Predecessor, Said, Step, Successor};
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

/// A re-read configuration, for a reload.
pub(crate) struct Reloaded {
    pub settings: crate::config::Settings,
    pub plan: crate::sizing::Plan,
    pub jobs: Vec<Job>,
}

/// Re-reads the configuration; an error rejects the reload.
pub(crate) type ReloadFn<'a> = &'a dyn Fn() -> Result<Reloaded, String>;

/// What the master needs to run.
pub(crate) struct MasterArgs<'a> {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    pub timeout_keep_alive: Duration,
    pub limit_concurrency: Option<usize>,
    pub binds: Vec<crate::listener::BindSpec>,
    pub backlog: u32,
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
}

/// A reload in progress: slots below `slot` run new workers.
#[derive(Debug)]
struct Reload {
    slot: usize,
    new_size: usize,
    /// The old worker of `slot`, still serving until its replacement is ready.
    old: Option<Pid>,
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
    /// Stopped workers still draining, with the moment they get `SIGKILL` (`None`: already sent).
    draining: HashMap<Pid, Option<Instant>>,
    /// Sockets of an earlier configuration, closed once no old worker is left.
    retired_listeners: Vec<Listener>,
    reload: Option<Reload>,
    reload_pending: bool,
    generation: u64,
    notifier: crate::systemd::Notifier,
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
    pid_file: Option<crate::pidfile::PidFile>,
    /// The process title last set.
    title: String,
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
        (Some(p), None) => Some(crate::pidfile::PidFile::create(p)?),
        _ => None,
    };
    let anchor_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut notifier = crate::systemd::Notifier::from_env();
    notifier.set_muted(predecessor.is_some());
    let mut master = Master {
        pool: Pool::new(args.workers, now),
        pid: nix::unistd::getpid(),
        signals,
        control,
        state: State::Running,
        announced_ready: false,
        orders: HashMap::new(),
        draining: HashMap::new(),
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
    };
    let outcome = master.run_loop();
    if master.owns_files {
        crate::listener::remove_unix_files(&master.args.listeners);
        crate::listener::remove_unix_files(&master.retired_listeners);
    }
    outcome
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
            self.drive_successor(now);
            self.drive_predecessor();
            self.kill_overdue_drains(now);
            self.notifier.watchdog(
                now,
                self.state == State::Running && self.pool.ready_count() > 0,
            );
            let status = self.status_line();
            self.notifier.status(&status);
            let title = crate::proctitle::master(
                self.generation,
                self.pool.size(),
                self.state != State::Running,
            );
            if title != self.title {
                crate::proctitle::set(&title);
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
        let drain = self.draining.values().flatten().min().copied();
        let deadline = match self.state {
            State::Running => self.pool.next_refill(),
            State::Stopping { kill_at, killed } => (!killed).then_some(kill_at),
        };
        let upgrade = self
            .successor
            .as_ref()
            .filter(|s| !s.took_over && !s.abandoned)
            .map(|s| s.deadline);
        let deadline = [deadline, drain, upgrade, self.notifier.watchdog_deadline()]
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

    fn on_signal(&mut self, sig: Signal) {
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGTERM => self.stop(true),
            Signal::SIGINT | Signal::SIGQUIT => self.stop(false),
            _ if self.state != State::Running => {
                tracing::info!("{sig} ignored: shutting down");
            }
            Signal::SIGHUP if self.upgrading() => {
                tracing::warn!("SIGHUP ignored: a binary upgrade is in progress");
            }
            Signal::SIGHUP => self.begin_reload(),
            Signal::SIGUSR2 => self.begin_upgrade(),
            Signal::SIGUSR1 => self.reopen_logs(),
            Signal::SIGTTIN => self.resize(1),
            Signal::SIGTTOU => self.resize(-1),
            other => tracing::info!("{other} received; not supported yet, ignoring"),
        }
    }

    /// The one-line status for systemd.
    fn status_line(&self) -> String {
        match self.state {
            State::Stopping { .. } => format!("stopping, {} workers left", self.live().len()),
            State::Running => format!(
                "{}/{} workers ready, generation {}{}",
                self.pool.ready_count(),
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

    /// Every live worker: the pool's, a reload's old one, and draining ones.
    fn live(&self) -> Vec<Pid> {
        let mut v = self.pool.live();
        v.extend(self.draining.keys().copied());
        if let Some(old) = self.reload.as_ref().and_then(|r| r.old) {
            v.push(old);
        }
        // A new master that has not taken over yet stops with this one.
        if let Some(s) = self.successor.as_ref().filter(|s| !s.took_over) {
            v.push(s.pid);
        }
        v
    }

    /// Gracefully stops a worker that left the pool.
    fn retire(&mut self, pid: Pid) {
        let _ = kill(pid, Signal::SIGTERM);
        self.draining
            .insert(pid, Some(Instant::now() + self.args.graceful_timeout));
    }

    fn kill_overdue_drains(&mut self, now: Instant) {
        for (pid, at) in self.draining.iter_mut() {
            if at.is_some_and(|t| t <= now) {
                tracing::warn!(
                    "old worker (pid {pid}) still draining after the graceful timeout; sending SIGKILL"
                );
                let _ = kill(*pid, Signal::SIGKILL);
                *at = None;
            }
        }
    }

    /// `SIGTTIN` (+1) / `SIGTTOU` (-1).
    fn resize(&mut self, delta: i32) {
        if self.reload.is_some() {
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
            for pid in self.pool.truncate(size - 1) {
                self.retire(pid);
            }
            tracing::info!(
                "SIGTTOU: workers {size} -> {}, stopping slot {}",
                size - 1,
                size - 1
            );
        }
        self.announced_ready = false;
    }

    /// `SIGHUP`: re-read the configuration and start replacing workers.
    fn begin_reload(&mut self) {
        if self.reload.is_some() {
            tracing::info!("SIGHUP: a reload is in progress; another one follows it");
            self.reload_pending = true;
            return;
        }
        self.notifier.reloading();
        let new = match (self.args.reload)() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reload rejected, the current workers keep serving: {e}");
                let status = self.status_line();
                self.notifier.ready(&status);
                return;
            }
        };
        let specs: Vec<_> = new.settings.binds.iter().map(|b| b.value.clone()).collect();
        let mut changes = Vec::new();
        if specs != self.args.binds {
            // Bind new addresses before any old worker stops. Addresses kept from the old
            // configuration keep their sockets; dropped ones close once the old workers are gone.
            let added: Vec<_> = specs
                .iter()
                .filter(|s| !self.args.binds.contains(s))
                .cloned()
                .collect();
            let fresh = match crate::listener::bind_all(&added, new.settings.backlog) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("reload rejected, the current workers keep serving: {e}");
                    let status = self.status_line();
                    self.notifier.ready(&status);
                    return;
                }
            };
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
            changes.push(format!(
                "listen {} -> {}",
                join(&self.args.binds),
                join(&specs)
            ));
            self.args.listeners = listeners;
            self.args.binds = specs;
        }
        if new.settings.backlog != self.args.backlog {
            changes.push("backlog changes apply to new sockets only".to_string());
            self.args.backlog = new.settings.backlog;
        }
        if new.plan.workers != self.pool.size() {
            changes.push(format!(
                "workers {} -> {}",
                self.pool.size(),
                new.plan.workers
            ));
        }
        if new.settings.threads != self.args.threads {
            changes.push(format!(
                "threads {} -> {}",
                self.args.threads, new.settings.threads
            ));
        }
        if new.settings.graceful_timeout != self.args.graceful_timeout {
            changes.push(format!(
                "graceful timeout {} -> {}",
                humantime::format_duration(self.args.graceful_timeout),
                humantime::format_duration(new.settings.graceful_timeout)
            ));
        }
        let names = |jobs: &[Job]| {
            jobs.iter()
                .map(|j| format!("{} ({})", j.name, j.schedule))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if names(&new.jobs) != names(&self.args.jobs) {
            changes.push(format!(
                "jobs [{}] -> [{}]",
                names(&self.args.jobs),
                names(&new.jobs)
            ));
        }
        if new.settings.timeout_keep_alive != self.args.timeout_keep_alive {
            changes.push(format!(
                "keep-alive timeout {} -> {}",
                humantime::format_duration(self.args.timeout_keep_alive),
                humantime::format_duration(new.settings.timeout_keep_alive)
            ));
        }
        if new.settings.limit_concurrency != self.args.limit_concurrency {
            changes.push(format!(
                "concurrency limit {:?} -> {:?}",
                self.args.limit_concurrency, new.settings.limit_concurrency
            ));
        }
        self.args.timeout_keep_alive = new.settings.timeout_keep_alive;
        self.args.limit_concurrency = new.settings.limit_concurrency;
        self.args.threads = new.settings.threads;
        self.args.graceful_timeout = new.settings.graceful_timeout;
        self.args.jobs = new.jobs;
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
        self.reload = Some(Reload {
            slot: 0,
            new_size: new.plan.workers,
            old: None,
        });
        self.step_reload();
    }

    /// Stops a reload whose new worker keeps failing to boot; the slot keeps its old worker.
    fn abort_failed_reload(&mut self) {
        let Some(r) = self.reload.as_ref() else {
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
        let old = self.reload.take().and_then(|r| r.old);
        if let Some(pid) = self.pool.detach(slot) {
            let _ = kill(pid, Signal::SIGKILL);
            self.draining.insert(pid, None);
        }
        match old {
            Some(pid) => self.pool.reattach(slot, pid),
            None => self.pool.fork_failed(slot, Instant::now()),
        }
        self.reload_pending = false;
        tracing::error!(
            "reload aborted: the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} times ({error}); \
             slot {slot} and the slots after it keep their old workers"
        );
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    /// Replaces the next slot, or finishes the reload.
    fn step_reload(&mut self) {
        let Some(r) = self.reload.as_mut() else {
            return;
        };
        if r.slot >= r.new_size {
            let new_size = r.new_size;
            for pid in self.pool.truncate(new_size) {
                self.retire(pid);
            }
            self.reload = None;
            tracing::info!(
                "reload complete: generation {}, {} workers",
                self.generation,
                new_size
            );
            if std::mem::take(&mut self.reload_pending) {
                self.begin_reload();
            } else {
                let status = self.status_line();
                self.notifier.ready(&status);
            }
            return;
        }
        let slot = r.slot;
        if slot >= self.pool.size() {
            self.pool.grow(slot + 1 - self.pool.size(), Instant::now());
        }
        let old = self.pool.detach(slot);
        if let Some(r) = self.reload.as_mut() {
            r.old = old;
        }
        self.spawn(slot);
    }

    /// `SIGUSR1`: reopen the log file here and in every worker.
    fn reopen_logs(&mut self) {
        match crate::logging::reopen() {
            Ok(Some(path)) => {
                tracing::info!("SIGUSR1: reopened the log file {}", path.display());
                let successor = self.successor.as_ref().map(|s| s.pid);
                for pid in self.live() {
                    if Some(pid) != successor {
                        let _ = kill(pid, Signal::SIGUSR1);
                    }
                }
            }
            Ok(None) => tracing::info!("SIGUSR1: logging to stderr, no log file to reopen"),
            Err(e) => tracing::error!("SIGUSR1: {e}; still writing to the file already open"),
        }
    }

    /// Whether a binary upgrade is under way, in either role.
    fn upgrading(&self) -> bool {
        self.successor.as_ref().is_some_and(|s| !s.took_over) || self.predecessor.is_some()
    }

    /// `SIGUSR2`: start a new master from the executable on disk.
    fn begin_upgrade(&mut self) {
        if self.upgrading() {
            tracing::warn!("SIGUSR2 ignored: a binary upgrade is already in progress");
            return;
        }
        if self.reload.is_some() {
            tracing::warn!("SIGUSR2 ignored: a reload is in progress; send it again after it");
            return;
        }
        let Some(program) = self.args.program.as_ref() else {
            tracing::error!(
                "SIGUSR2 ignored: the executable's path could not be read at start, so there is \
                 nothing to run"
            );
            return;
        };
        self.notifier.reloading();
        match upgrade::spawn(program, &self.args.listeners, self.args.activated) {
            Ok(s) => {
                tracing::info!(
                    "SIGUSR2: starting a new master from {} (pid {}); this one keeps serving until \
                     the new one's workers are ready",
                    program.exe().display(),
                    s.pid
                );
                self.successor = Some(s);
            }
            Err(e) => {
                tracing::error!("binary upgrade failed, this master keeps serving: {e}");
                let status = self.status_line();
                self.notifier.ready(&status);
            }
        }
    }

    /// The old master's side of an upgrade: hand over when the new master is ready, give up on it
    /// when it is late, and send the lease record once this master's holder is gone.
    fn drive_successor(&mut self, now: Instant) {
        let Some(s) = self.successor.as_mut() else {
            return;
        };
        if !s.took_over && !s.abandoned {
            // A master that is shutting down stops its successor too; it hands nothing over.
            if s.poll_ready() && self.state == State::Running {
                self.hand_over();
            } else if now >= s.deadline {
                s.abandoned = true;
                let pid = s.pid;
                tracing::error!(
                    "binary upgrade failed: the new master (pid {pid}) was not ready within {}; \
                     stopping it, this master keeps serving",
                    humantime::format_duration(upgrade::READY_TIMEOUT)
                );
                let _ = kill(pid, Signal::SIGTERM);
            }
            return;
        }
        if s.took_over && s.channel.is_some() && self.lease.is_free() {
            s.send_lease(&self.lease.record());
            tracing::info!("handed the scheduler lease record to the new master");
        }
    }

    /// The new master is ready: make it the main process and drain this one.
    fn hand_over(&mut self) {
        let Some(s) = self.successor.as_mut() else {
            return;
        };
        let new = s.pid;
        s.took_over = true;
        self.notifier.main_pid(
            new.as_raw() as u32,
            &format!("handed over to the new master, pid {new}"),
        );
        self.notifier.set_muted(true);
        if !s.send_main() {
            tracing::warn!("cannot tell the new master (pid {new}) it took over");
        }
        // The new master owns the socket files and the pid file from now on.
        self.owns_files = false;
        if let Some(p) = self.pid_file.take() {
            p.keep();
        }
        tracing::info!(
            "the new master (pid {new}) has every worker ready and takes over; draining this \
             master's workers (up to {}), then exiting",
            humantime::format_duration(self.args.graceful_timeout)
        );
        self.reload_pending = false;
        self.state = State::Stopping {
            kill_at: Instant::now() + self.args.graceful_timeout,
            killed: false,
        };
        self.signal_all(Signal::SIGTERM);
    }

    /// The new master exited (it is this master's child until this one exits).
    fn successor_exited(&mut self, how: &str) {
        let Some(s) = self.successor.take() else {
            return;
        };
        if s.took_over {
            tracing::warn!("the new master (pid {}) {how}", s.pid);
            return;
        }
        if self.state == State::Running {
            tracing::error!(
                "binary upgrade failed: the new master (pid {}) {how} before its workers were ready; \
                 this master keeps serving",
                s.pid
            );
            let status = self.status_line();
            self.notifier.ready(&status);
        } else {
            tracing::debug!("the new master (pid {}) {how}", s.pid);
        }
    }

    /// The new master's side of an upgrade: take over when told, then adopt the lease record.
    fn drive_predecessor(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        for said in p.poll() {
            match said {
                Said::Main => self.become_main(),
                Said::Lease(anchor_ms, last_ticks) => {
                    self.lease.adopt(Some((anchor_ms, last_ticks)));
                    tracing::info!("received the scheduler lease record from the previous master");
                    self.predecessor = None;
                    return;
                }
                Said::Gone => {
                    if self
                        .predecessor
                        .as_ref()
                        .is_some_and(|p| p.step != Step::Main)
                    {
                        tracing::warn!(
                            "the previous master is gone before the hand-over; carrying on alone"
                        );
                        self.become_main();
                    }
                    if self.lease.is_held_elsewhere() {
                        self.lease.adopt(None);
                        tracing::warn!(
                            "the previous master is gone without sending the scheduler lease record; \
                             scheduling from now on"
                        );
                    }
                    self.predecessor = None;
                    return;
                }
            }
        }
    }

    /// This master is now the service's main process.
    fn become_main(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        let was_ready = p.step == Step::Ready;
        p.step = Step::Main;
        self.notifier.set_muted(false);
        self.owns_files = !self.args.activated;
        if let Some(path) = self.args.pid_file.as_deref() {
            match crate::pidfile::PidFile::create(path) {
                Ok(f) => self.pid_file = Some(f),
                Err(e) => tracing::error!("{e}"),
            }
        }
        if was_ready {
            tracing::info!("took over from the previous master");
            let status = self.status_line();
            self.notifier.main_pid(self.pid.as_raw() as u32, &status);
        } else if self.announced_ready {
            let status = self.status_line();
            self.notifier.ready(&status);
        } else {
            // READY=1 goes out with the usual message once every worker is ready.
            self.notified_ready = false;
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

    fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Ready { pid } => {
                let pid = Pid::from_raw(pid);
                if let Some(slot) = self.pool.ready(pid) {
                    tracing::debug!("worker {slot} (pid {pid}) is ready");
                    if let Some(r) = self.reload.as_mut() {
                        if r.slot == slot {
                            if let Some(old) = r.old.take() {
                                tracing::info!(
                                    "worker {slot}: new pid {pid} ready, stopping old pid {old}"
                                );
                                self.retire(old);
                            }
                            if let Some(r) = self.reload.as_mut() {
                                r.slot += 1;
                            }
                            self.step_reload();
                        }
                    }
                    if !self.announced_ready && self.reload.is_none() && self.pool.all_ready() {
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
            if self.successor.as_ref().is_some_and(|s| s.pid == pid) {
                self.successor_exited(&how);
                continue;
            }
            self.orders.remove(&pid);
            if self.lease.holder() == Some(pid) {
                self.holder_died(pid);
            }
            let running = self.state == State::Running;
            let now = Instant::now();
            let Some(death) = self.pool.died(pid, now, running) else {
                if self.draining.remove(&pid).is_some() {
                    tracing::debug!("old worker (pid {pid}) {how}");
                } else if let Some(r) = self.reload.as_mut().filter(|r| r.old == Some(pid)) {
                    r.old = None;
                    tracing::warn!(
                        "old worker (pid {pid}) {how} while waiting for its replacement"
                    );
                }
                if self.draining.is_empty()
                    && self.reload.is_none()
                    && !self.retired_listeners.is_empty()
                {
                    if self.owns_files {
                        crate::listener::remove_unix_files(&self.retired_listeners);
                    }
                    self.retired_listeners.clear();
                    tracing::info!("closed the sockets of the previous configuration");
                }
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
                listeners: &self.args.listeners,
                close_fds,
                orders: order_read,
                control: self.control.writer(),
                jobs: &self.args.jobs,
                threads: self.args.threads,
                graceful_timeout: self.args.graceful_timeout,
                timeout_keep_alive: self.args.timeout_keep_alive,
                limit_concurrency: self.args.limit_concurrency,
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

fn join(specs: &[crate::listener::BindSpec]) -> String {
    specs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
