//! The master's loop: a small synchronous state machine, readable top to bottom.
//!
//! Each turn ([`Master::run_loop`]): wait (at most 1 s, or until the next refill or kill deadline) for
//! a signal or a control message; handle the signals, each turned into an [`Intent`] first; handle the
//! workers' messages; reap every dead worker; drive a binary upgrade; then either maintain the pool
//! (refill empty slots, check the workers' health, grant the scheduler lease) or, when stopping, wind
//! down. The master never starts a thread or a tokio runtime, so `fork` stays safe for its whole life.
//!
//! Where the master is in its life is one [`Phase`]; what it knows of each worker is one record per
//! child (see [`children`]), added when it is forked and removed when it is reaped.
//!
//! A reload (`SIGHUP`) re-reads the configuration and replaces the workers slot by slot: fork the new
//! worker, wait for its ready message, then gracefully stop the old one; a new configuration that does
//! not validate, or a socket that cannot be bound, leaves the old pool serving. A worker past its
//! request or memory limit is recycled the same way, alone. `SIGTTIN` replaces every worker for the
//! larger pool, then adds the highest slot; `SIGTTOU` gracefully removes the highest slot. Every fork
//! waits for room under the surge bound (`--max-surge`, see [`surge`]): at most that many workers
//! beyond the pool are alive, draining ones included. Stopped workers drain for at most the graceful
//! timeout. `SIGUSR2` starts a new master from the executable on disk and hands everything over to it
//! once its workers are ready (see [`crate::master::upgrade`]). With `--reload`, the master also
//! watches its executable and files on an inotify descriptor in the same poll, and turns a new build
//! into an upgrade and another change into a reload (see [`watch`] and [`dev_reload`]). `SIGTERM`
//! with `--shutdown-delay` keeps the pool serving, marked draining, before the drain (see [`delay`]).

mod advice;
mod census;
mod checks;
mod children;
mod ctl;
mod delay;
mod dev_reload;
mod endpoint;
mod exposition;
mod guard;
mod handover;
mod history;
pub(crate) mod lease;
pub(crate) mod measure;
mod metrics;
pub(crate) mod pidfile;
pub(crate) mod pool;
mod reload;
pub(crate) mod signals;
mod status_page;
mod surge;
pub(crate) mod systemd;
mod tally;
pub(crate) mod upgrade;
pub(crate) mod watch;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use self::children::{Child, ChildPhase};
use self::reload::Replacement;
use self::upgrade::{Predecessor, Step, Successor};
use crate::error::StartError;
use crate::jobs::Job;
use crate::jobs::store::StoreConfig;
use crate::master::lease::Lease;
use crate::master::pool::{GIVE_UP_AFTER, Pool};
use crate::master::signals::{Intent, SignalQueue};
use crate::shared::control::{self, ControlPipe, Message, Skip};
use crate::shared::listener::Listener;
use crate::worker::runner::App;

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
    /// `plan --measure`: the pool booted, was measured, and shut down.
    Measured(Box<crate::config::footprint::PoolFootprint>),
}

/// A re-read configuration, for a reload.
pub(crate) struct Reloaded {
    pub settings: crate::config::Settings,
    /// The TLS configuration, loaded again from its files.
    pub tls: Option<crate::config::tls::Tls>,
    pub plan: crate::config::sizing::Plan,
    /// The memory guard for the re-read count, if a cgroup memory limit applies.
    pub guard: Option<crate::config::memory_guard::Guard>,
    /// The cgroup memory limit minus `--memory-reserve`, read again (for the tuning advice).
    pub budget: Option<crate::config::memory_guard::Budget>,
    pub jobs: Vec<Job>,
    /// The job store the workers forked from now on claim ticks in (`--jobs-store`).
    pub jobs_store: Option<StoreConfig>,
}

/// Re-reads the configuration; an error rejects the reload.
pub(crate) type ReloadFn<'a> = &'a dyn Fn() -> Result<Reloaded, String>;

/// What the master needs to run.
pub(crate) struct MasterArgs<'a> {
    pub workers: usize,
    pub threads: usize,
    pub graceful_timeout: Duration,
    /// How long `SIGTERM` keeps the pool serving, marked draining, before the drain (`--shutdown-delay`).
    pub shutdown_delay: Duration,
    pub limits: crate::config::health::Limits,
    /// The TLS configuration the workers forked from now on serve with (`--ssl-certfile`).
    pub tls: Option<crate::config::tls::Tls>,
    pub health: crate::config::health::Health,
    pub binds: Vec<crate::shared::listener::BindSpec>,
    pub backlog: u32,
    /// The mode of unix socket files bound from now on (a reload may bind new addresses).
    pub socket_mode: u32,
    pub listeners: Vec<Listener>,
    pub app: &'a App,
    pub jobs: Vec<Job>,
    /// Where slot 0 claims each tick (`--jobs-store`); `None`: ticks run on this host alone.
    pub jobs_store: Option<StoreConfig>,
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
    pub accept: crate::config::values::Accept,
    /// Most extra workers alive during a replacement (`--max-surge`).
    pub max_surge: usize,
    /// Where to serve `/metrics` (`--metrics-bind`); `None`: nowhere.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// The control socket's path, and whether it was given explicitly (then failing to bind it is
    /// fatal); `None`: no control socket.
    pub control_socket: Option<(std::path::PathBuf, bool)>,
    /// The account the workers switch to (`--user`, `--group`), given the unix sockets bound from
    /// now on; `None`: the workers run as the master.
    pub account: Option<crate::shared::privileges::Account>,
    /// What `--reload` watches; `None`: nothing.
    pub watch: Option<watch::Spec>,
    /// The directory workers change to before the app starts (`--chdir`).
    pub chdir: Option<std::path::PathBuf>,
    /// How the workers forked from now on open database connections (`Worker::db_pool_size`).
    pub db: Option<crate::app::share::DbUse>,
    /// The memory guard, if a cgroup memory limit applies (see [`guard`]).
    pub guard: Option<crate::config::memory_guard::Guard>,
    /// The usable cores (`config::cores`), for the tuning advice.
    pub cores: usize,
    /// The cgroup memory limit minus `--memory-reserve`, if a limit applies (the tuning advice);
    /// read at start and at each reload.
    pub budget: Option<crate::config::memory_guard::Budget>,
    /// `plan --measure`: measure the pool once it is whole, then shut down.
    pub measure: Option<measure::Spec>,
}

/// Where the master is in its life. What may overlap a phase stays outside it: the binary upgrade
/// in either role (`successor`, `predecessor`: it starts while serving and outlives the hand-over
/// into the shutdown), `owns_files` (who removes the socket and pid files follows the hand-over, not
/// the phase), `pool_announced` (a resize re-arms it in any phase) and `delayed` (a shutdown delay
/// keeps the phase it interrupts: a pool starting or a reload go on while it runs).
#[derive(Debug)]
enum Phase {
    /// Forking the first pool. The service is declared ready (`READY=1`, or `ready` to the previous
    /// master) once every slot is ready.
    Starting,
    /// Serving.
    Running,
    /// Replacing workers one slot at a time: a reload or a recycle. Ends in the phase it
    /// interrupted.
    Replacing(Replacement),
    /// Shutting down: every worker was told to stop.
    Stopping {
        /// When the workers left get `SIGKILL` (`None`: sent already).
        kill_at: Option<Instant>,
        /// When `EXTEND_TIMEOUT_USEC` was last sent.
        extended: Option<Instant>,
    },
}

/// The master: its phase, one record per worker, the pool's slots, the lease, and the upgrade in
/// either role.
struct Master<'a> {
    args: MasterArgs<'a>,
    pid: Pid,
    signals: SignalQueue,
    control: ControlPipe,
    pool: Pool,
    phase: Phase,
    /// Whether "all N workers ready" was logged for the pool's current size (a resize re-arms it).
    pool_announced: bool,
    /// Every live worker, from its fork to its reaping.
    children: HashMap<Pid, Child>,
    lease: Lease,
    /// Sockets of an earlier configuration, closed once no old worker is left.
    retired_listeners: Vec<Listener>,
    generation: u64,
    notifier: crate::master::systemd::Notifier,
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
    /// The workers' request counters, in shared memory.
    stats: crate::shared::stats::Table,
    /// What the master counts itself: exits by cause, reloads, jobs.
    tally: tally::Tally,
    /// When the master started.
    started: Instant,
    /// The `/metrics` socket (`--metrics-bind`).
    metrics: Option<metrics::MetricsServer>,
    /// The recent past for the status page, `ctl status` and the advice, sampled once a second.
    history: history::History,
    /// The control socket (`hyperfork ctl`).
    ctl: Option<ctl::CtlServer>,
    /// `--reload`: the file watcher and the change waiting for its turn.
    dev: Option<dev_reload::DevReload>,
    /// The memory guard: waiting for a worker to measure, and its last decision.
    guard: guard::GuardState,
    /// `plan --measure`: the pool's measurement, once taken.
    measured: Option<crate::config::footprint::PoolFootprint>,
    /// A graceful shutdown waiting out `--shutdown-delay` (see [`delay`]).
    delayed: Option<delay::Delayed>,
}

/// Runs the master until shutdown. Must be called from a single-threaded process that has not used
/// tokio.
pub(crate) fn run(args: MasterArgs<'_>) -> Result<Outcome, StartError> {
    crate::worker::prepare_master();
    let mut master = Master::new(args)?;
    // A new master of a binary upgrade binds it when it takes over.
    if master.predecessor.is_none() {
        master.open_ctl(false)?;
    }
    let mut outcome = master.run_loop();
    if let (Outcome::Stopped, Some(m)) = (&outcome, master.measured.take()) {
        outcome = Outcome::Measured(Box::new(m));
    }
    if master.owns_files {
        crate::shared::listener::remove_unix_files(&master.args.listeners);
        crate::shared::listener::remove_unix_files(&master.retired_listeners);
        if let Some(ctl) = &master.ctl {
            ctl.remove_file();
        }
    }
    Ok(outcome)
}

impl<'a> Master<'a> {
    /// Opens the signalfd and the control pipe and sets up the bookkeeping; forks nothing yet.
    fn new(mut args: MasterArgs<'a>) -> Result<Master<'a>, StartError> {
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
        // A pool booted only to be measured is not the service systemd started.
        notifier.set_muted(predecessor.is_some() || args.measure.is_some());
        let packed = args.accept == crate::config::values::Accept::Packed;
        let balance = match args.accept {
            crate::config::values::Accept::Balanced | crate::config::values::Accept::Packed => {
                Some(
                    crate::shared::balance::Table::new(packed).map_err(|source| {
                        StartError::Os {
                            what: "mapping the accept-balancing table",
                            source,
                        }
                    })?,
                )
            }
            crate::config::values::Accept::Shared => None,
        };
        let metrics = match args.metrics_bind {
            Some(addr) => {
                let server = metrics::MetricsServer::bind(addr)?;
                if let Some(at) = server.local_addr() {
                    tracing::info!("serving metrics at http://{at}/metrics");
                }
                Some(server)
            }
            None => None,
        };
        let stats = crate::shared::stats::Table::new().map_err(|source| StartError::Os {
            what: "mapping the request counters' table",
            source,
        })?;
        let dev =
            match args.watch.take() {
                Some(spec) => Some(dev_reload::DevReload::start(spec, now).map_err(|source| {
                    StartError::Os {
                        what: "watching files for --reload",
                        source,
                    }
                })?),
                None => None,
            };
        let guard = guard::GuardState::new(args.guard.take());
        Ok(Master {
            pool: Pool::new(guard.first_pool(args.workers), now),
            guard,
            measured: None,
            pid: nix::unistd::getpid(),
            signals,
            control,
            phase: Phase::Starting,
            pool_announced: false,
            children: HashMap::new(),
            retired_listeners: Vec::new(),
            generation: 1,
            notifier,
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
            stats,
            tally: tally::Tally::default(),
            started: now,
            metrics,
            history: history::History::default(),
            ctl: None,
            dev,
            delayed: None,
        })
    }
}

impl Master<'_> {
    /// The loop: a few verbs, each turn.
    fn run_loop(&mut self) -> Outcome {
        loop {
            self.wait();
            self.handle_signals();
            self.handle_messages();
            self.reap();
            let now = Instant::now();
            self.drive_upgrade(now);
            self.drive_watch(now);
            self.drive_delay(now);
            self.kill_overdue_drains(now);
            self.report(now);
            self.sample_history(now);
            self.serve_metrics(now);
            self.serve_ctl(now);
            let ended = if self.is_stopping() {
                self.wind_down(now)
            } else {
                self.maintain_pool(now)
            };
            if let Some(outcome) = ended {
                return outcome;
            }
        }
    }

    /// Whether the master is shutting down.
    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. })
    }

    /// Whether the service was declared ready (it is, once the first pool was complete).
    fn declared(&self) -> bool {
        match &self.phase {
            Phase::Starting => false,
            Phase::Replacing(r) => !r.during_start,
            Phase::Running | Phase::Stopping { .. } => true,
        }
    }

    /// The replacement in progress, if any.
    fn replacement(&self) -> Option<&Replacement> {
        match &self.phase {
            Phase::Replacing(r) => Some(r),
            _ => None,
        }
    }

    /// Sleeps until a signal, a message or the next deadline, at most [`TICK`].
    fn wait(&mut self) {
        let now = Instant::now();
        let timeout = self
            .next_deadline()
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
        if let Some(d) = self.dev.as_ref() {
            fds.push(PollFd::new(d.fd(), PollFlags::POLLIN));
        }
        let endpoints = self
            .metrics
            .as_ref()
            .map(|m| m.poll_fd())
            .into_iter()
            .chain(self.ctl.iter().flat_map(|c| c.poll_fds()));
        for (fd, writing) in endpoints {
            let flags = if writing {
                PollFlags::POLLOUT
            } else {
                PollFlags::POLLIN
            };
            fds.push(PollFd::new(fd, flags));
        }
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// The earliest moment the loop has something to do without being woken.
    fn next_deadline(&self) -> Option<Instant> {
        let drains = self
            .children
            .values()
            .filter_map(|c| match c.phase {
                ChildPhase::Draining { kill_at } => kill_at,
                _ => None,
            })
            .min();
        let (phase, health) = match self.phase {
            Phase::Stopping { kill_at, .. } => (kill_at, None),
            // A refill waiting for room is woken by the exit that makes it (SIGCHLD), not by a
            // deadline already past.
            _ => (
                self.pool.next_refill().filter(|_| self.has_room()),
                self.health_deadline(),
            ),
        };
        let upgrade = self.successor.as_ref().and_then(|s| s.deadline());
        [
            self.delayed.map(|d| d.drain_at),
            phase,
            drains,
            upgrade,
            health,
            self.notifier.watchdog_deadline(),
            self.metrics.as_ref().and_then(|m| m.deadline()),
            self.history.next_at(),
            self.ctl.as_ref().and_then(|c| c.deadline()),
            self.dev.as_ref().and_then(|d| d.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Acts on every pending signal, as the intent it stands for.
    fn handle_signals(&mut self) {
        for sig in self.signals.drain() {
            match signals::intent(sig) {
                None => tracing::info!("{sig} received; not supported yet, ignoring"),
                Some(i) if self.shutting_down() && !i.applies_while_stopping() => {
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
            Intent::Upgrade => {
                self.begin_upgrade();
            }
            Intent::ReopenLogs => {
                let _ = self.reopen_logs("SIGUSR1");
            }
            Intent::AddWorker => self.resize(1),
            Intent::RemoveWorker => self.resize(-1),
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
        let slot = self
            .children
            .get(&pid)
            .filter(|c| c.in_pool())
            .map(|c| c.slot);
        match msg {
            Message::Alive { .. } => self.beat(pid),
            Message::Ready { .. } => self.worker_ready(pid),
            Message::Recycle { served, .. } => {
                if let Some(slot) = slot {
                    let why = format!("served {served} requests, its --max-requests limit");
                    self.recycle(slot, pid, &why, tally::Cause::MaxRequests);
                }
            }
            Message::BootError { text, .. } => {
                if let Some(slot) = slot {
                    self.pool.boot_error(slot, text);
                }
            }
            Message::JobStart { tick_ms, job, .. } => {
                let t = self.tally.job(&job);
                t.runs += 1;
                t.running += 1;
                t.last_start = Some(SystemTime::now());
                if !self.lease.job_started(pid, &job, tick_ms) {
                    tracing::error!(
                        "pid {pid} reported a run of job {job:?} without holding the scheduler lease"
                    );
                }
            }
            Message::JobEnd {
                ok,
                duration_ms,
                job,
                ..
            } => {
                let t = self.tally.job(&job);
                t.running = t.running.saturating_sub(1);
                t.last_duration = Some(Duration::from_millis(duration_ms));
                t.last_end = Some(SystemTime::now());
                t.last_ok = Some(ok);
                if ok {
                    t.last_success = Some(SystemTime::now());
                } else {
                    t.failures += 1;
                }
            }
            Message::JobSkip {
                count, why, job, ..
            } => {
                let t = self.tally.job(&job);
                match why {
                    Skip::Elsewhere => t.elsewhere += count,
                    Skip::Store => {
                        t.skips += count;
                        t.store_skips += count;
                    }
                    Skip::Late | Skip::Overlap => t.skips += count,
                }
            }
            Message::Released { .. } => {
                if self.lease.ended(pid) {
                    tracing::info!("pid {pid} released the scheduler lease");
                }
            }
        }
    }

    /// A worker reported ready: a replacement moves on, and the pool may be complete.
    fn worker_ready(&mut self, pid: Pid) {
        let Some(child) = self.children.get_mut(&pid).filter(|c| c.in_pool()) else {
            return;
        };
        let now = Instant::now();
        child.phase = ChildPhase::Ready;
        child.last_beat = Some(now);
        child.ready_at = Some(now);
        let slot = child.slot;
        self.tally
            .boot
            .insert(slot, now.saturating_duration_since(child.started));
        self.pool.ready(slot);
        tracing::debug!("worker {slot} (pid {pid}) is ready");
        self.replacement_ready(slot, pid);
        self.apply_guard(pid);
        self.announce_if_complete();
        self.measure_if_asked();
    }

    /// Logs "all N workers ready" once per pool size, and declares the service ready the first time.
    fn announce_if_complete(&mut self) {
        if self.pool_announced || self.replacement().is_some() || !self.all_ready() {
            return;
        }
        self.pool_announced = true;
        tracing::info!("all {} workers ready", self.pool.size());
        if !matches!(self.phase, Phase::Starting) {
            return;
        }
        self.phase = Phase::Running;
        match self.predecessor.as_mut() {
            Some(p) if p.step == Step::Booting => {
                tracing::info!("telling the previous master that this one is ready to take over");
                p.send_ready();
            }
            _ => {
                let status = self.status_line();
                self.notifier.ready(&status);
            }
        }
    }

    /// The binary upgrade, in whichever role this master has.
    fn drive_upgrade(&mut self, now: Instant) {
        self.drive_successor(now);
        self.drive_predecessor();
    }

    /// The watchdog, the status line for systemd, and the process title.
    fn report(&mut self, now: Instant) {
        let healthy = !self.is_stopping() && self.ready_count() > 0;
        self.notifier.watchdog(now, healthy);
        let status = self.status_line();
        self.notifier.status(&status);
        let state = if self.is_stopping() {
            crate::shared::proctitle::MasterState::Stopping
        } else if let Some(d) = self.delayed {
            crate::shared::proctitle::MasterState::StoppingIn(d.seconds_left(now))
        } else {
            crate::shared::proctitle::MasterState::Serving(self.pool.size())
        };
        let title = crate::shared::proctitle::master(self.generation, state);
        if title != self.title {
            crate::shared::proctitle::set(&title);
            self.title = title;
        }
    }

    /// The one-line status for systemd.
    fn status_line(&self) -> String {
        if self.is_stopping() {
            return format!("stopping, {} workers left", self.live().len());
        }
        if let Some(d) = self.delayed {
            return format!(
                "stopping in {}s, still serving: {}/{} workers ready",
                d.seconds_left(Instant::now()),
                self.ready_count(),
                self.pool.size()
            );
        }
        format!(
            "{}/{} workers ready, generation {}{}",
            self.ready_count(),
            self.pool.size(),
            self.generation,
            if self.replacement().is_some() {
                ", reloading"
            } else if self.successor.is_some() {
                ", upgrading"
            } else {
                ""
            }
        )
    }

    /// Keeps the pool whole while serving: gives up a stuck replacement (or the whole master, when
    /// no slot can boot), refills empty slots and moves a replacement on as far as the surge bound
    /// allows, checks the workers' health, and grants the lease.
    fn maintain_pool(&mut self, now: Instant) -> Option<Outcome> {
        self.abort_stuck_replacement();
        if self.pool.gave_up() && !self.waiting_for_a_fix() {
            return Some(Outcome::GaveUp(self.give_up()));
        }
        for slot in self.pool.due(now) {
            if !self.has_room() {
                break;
            }
            self.spawn(slot);
        }
        self.step_replacement();
        self.check_health(now);
        self.maybe_grant_lease();
        None
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

    fn signal_all(&self, sig: Signal) {
        for pid in self.live() {
            let _ = kill(pid, sig);
        }
    }

    /// `SIGUSR1` (or `ctl reopen-logs`): reopen the log file here and in every worker. Returns what
    /// happened, or why it failed.
    /// `via` names the request in the log (`SIGUSR1`, `ctl`).
    fn reopen_logs(&mut self, via: &str) -> Result<String, String> {
        match crate::logging::reopen() {
            Ok(Some(path)) => {
                let m = format!("reopened the log file {}", path.display());
                tracing::info!("{via}: {m}");
                for pid in self.children.keys() {
                    let _ = kill(*pid, Signal::SIGUSR1);
                }
                Ok(m)
            }
            Ok(None) => {
                let m = "logging to stderr, no log file to reopen".to_string();
                tracing::info!("{via}: {m}");
                Ok(m)
            }
            Err(e) => {
                let m = format!("{e}; still writing to the file already open");
                tracing::error!("{via}: {m}");
                Err(m)
            }
        }
    }

    /// `SIGTERM` (graceful) or `SIGINT` / `SIGQUIT` (fast): tell every worker to stop, after the
    /// shutdown delay for a graceful stop (see [`delay`]). A graceful stop during the delay skips
    /// the rest of it; a fast one stops at once.
    fn stop(&mut self, graceful: bool) {
        let mut why = "SIGTERM";
        if graceful && !self.is_stopping() {
            if self.delayed.is_some() {
                why = "SIGTERM again: skipping the rest of the shutdown delay";
            } else if self.begin_delay() {
                return;
            }
        }
        self.drain(graceful, why);
    }

    /// Tells every worker to stop: gracefully (drain, within the graceful timeout) or fast. `why`
    /// starts the graceful shutdown's log line.
    fn drain(&mut self, graceful: bool, why: &str) {
        // A shutdown delay already marked the pool draining and told systemd.
        let delayed = self.delayed.take().is_some();
        let (killed, extended) = match self.phase {
            Phase::Stopping { .. } if graceful => {
                tracing::info!("SIGTERM again: already shutting down");
                return;
            }
            Phase::Stopping { kill_at, extended } => (kill_at.is_none(), extended),
            _ if delayed => (false, None),
            _ => {
                self.notifier.stopping();
                self.stats.set_draining();
                (false, None)
            }
        };
        let (grace, sig) = if graceful {
            tracing::info!(
                "{why}: graceful shutdown, waiting up to {} for in-flight requests",
                humantime::format_duration(self.args.graceful_timeout)
            );
            (self.args.graceful_timeout, Signal::SIGTERM)
        } else {
            tracing::info!("fast shutdown");
            (FAST_SHUTDOWN_GRACE, Signal::SIGQUIT)
        };
        let kill_at = (!killed).then(|| Instant::now() + grace);
        self.phase = Phase::Stopping { kill_at, extended };
        self.signal_all(sig);
    }

    /// The shutdown's turn: keep systemd waiting, end once every child is gone, `SIGKILL` at the
    /// deadline.
    fn wind_down(&mut self, now: Instant) -> Option<Outcome> {
        let Phase::Stopping {
            mut kill_at,
            mut extended,
        } = self.phase
        else {
            return None;
        };
        if extended.is_none_or(|t| now >= t + Duration::from_secs(1)) {
            // Ask systemd to wait for the drain (plus a margin), however short TimeoutStopSec is.
            let left = kill_at.map_or(Duration::ZERO, |t| t.saturating_duration_since(now));
            self.notifier.extend_timeout(left + delay::EXTEND_MARGIN);
            extended = Some(now);
        }
        let live = self.live();
        if live.is_empty() {
            tracing::info!("all workers exited; shutting down");
            return Some(Outcome::Stopped);
        }
        if kill_at.is_some_and(|t| now >= t) {
            tracing::warn!(
                "{} worker(s) still running at the shutdown deadline; sending SIGKILL",
                live.len()
            );
            self.signal_all(Signal::SIGKILL);
            kill_at = None;
        }
        self.phase = Phase::Stopping { kill_at, extended };
        None
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
        self.handle_messages();
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
    | Message::JobEnd { pid, .. }
    | Message::JobSkip { pid, .. }
    | Message::Released { pid }
    | Message::Alive { pid }
    | Message::Recycle { pid, .. }) = msg;
    Pid::from_raw(*pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_names_its_sender_as_a_pid() {
        let msgs = [
            Message::Ready { pid: 7 },
            Message::BootError {
                pid: 7,
                text: "x".into(),
            },
            Message::JobStart {
                pid: 7,
                tick_ms: 1,
                job: "j".into(),
            },
            Message::Released { pid: 7 },
            Message::Alive { pid: 7 },
            Message::Recycle { pid: 7, served: 1 },
        ];
        for m in &msgs {
            assert_eq!(sender(m), Pid::from_raw(7), "{m:?}");
        }
    }
}
