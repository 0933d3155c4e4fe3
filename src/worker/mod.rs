//! The worker: what runs in a child process after `fork`, up to its `exit`.
//!
//! hyperfork forks without `exec`: a worker starts in well under a millisecond and shares the master's
//! memory copy-on-write. That is sound only because the master is single-threaded and has never touched
//! tokio when it forks (tokio's docs allow fork only then), and because the child follows these rules,
//! in this order:
//!
//! 0. with `--user`/`--group`, switch to that account for good (supplementary groups, gid, uid; see
//!    [`crate::shared::privileges`]) before anything else, app code included; a switch that fails is
//!    a boot failure. It comes first because a credential change clears the parent-death signal;
//! 1. ask the kernel for `SIGKILL` when the master dies (`PR_SET_PDEATHSIG`), then check the master did
//!    not die before that call (`getppid`), so no worker outlives its master;
//! 2. close the master's private descriptors (signalfd, the control pipe's read end);
//! 3. unblock the signals the master blocked (the mask is inherited, also by programs the app runs);
//! 4. export `HYPERFORK_WORKER_ID` and remove the variables meant for the master only (`NOTIFY_SOCKET`,
//!    `LISTEN_*`); after a switch to a user, set `USER`, `LOGNAME` and `HOME` to that user's;
//! 5. build its own tokio runtime, call the app factory inside it, and serve;
//! 6. never return into the master's code: panics are caught and every path ends in `exit`.
//!
//! Exit status 3 means the app failed to boot; the master counts those towards giving up.

mod accept;
mod access;
mod access_sink;
mod connection;
pub(crate) mod deadlines;
mod guard;
mod readiness;
mod response_headers;
pub(crate) mod runner;
pub(crate) mod serve;
mod tls;

use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use tokio::sync::watch;

use crate::app::Worker;
use crate::app::state::AnyState;
use crate::error::{EXIT_BOOT, EXIT_RUNTIME};
use crate::jobs::scheduler::Scheduler;
use crate::shared::control::{ControlWriter, Message, Order};
use crate::shared::listener::Listener;
use crate::shared::privileges::Account;
use crate::worker::runner::{App, Runner};
use crate::worker::serve::{ServeControl, Stop};

/// Everything a freshly forked worker needs from the master.
pub(crate) struct ChildArgs<'a> {
    pub slot: usize,
    pub pool_size: usize,
    pub master_pid: nix::unistd::Pid,
    pub listeners: &'a [Listener],
    pub close_fds: Vec<std::os::fd::RawFd>,
    pub orders: std::os::fd::OwnedFd,
    pub control: ControlWriter,
    pub jobs: &'a [crate::jobs::Job],
    /// Where slot 0 claims each tick (`--jobs-store`), if anywhere.
    pub jobs_store: Option<&'a crate::jobs::store::StoreConfig>,
    pub threads: usize,
    pub graceful_timeout: Duration,
    pub limits: crate::config::health::Limits,
    /// The TLS configuration (`--ssl-certfile`), loaded by the master.
    pub tls: Option<crate::config::tls::Tls>,
    pub health: crate::config::health::Health,
    pub app: &'a App,
    pub balance: Option<crate::shared::balance::Table>,
    /// The request counters' table (see [`crate::shared::stats`]).
    pub stats: crate::shared::stats::Table,
    /// The master's generation at the fork (1 for the first pool).
    pub generation: u64,
    /// The surge bound at the fork (`--max-surge`), for `Worker::share_of`.
    pub max_surge: usize,
    /// The database connections the settings give (`Worker::db_pool_size`).
    pub db: Option<crate::app::share::DbUse>,
    /// The account to switch to (`--user`, `--group`), if any.
    pub account: Option<&'a Account>,
    /// The directory to change to before the app starts (`--chdir`).
    pub chdir: Option<&'a std::path::Path>,
}

/// Work done once in the master, before its first fork, that every worker would otherwise redo on
/// its own pages.
///
/// A worker's first thread-local with a destructor (tokio's runtime context) makes glibc register it
/// through `__cxa_thread_atexit_impl`, whose call into the dynamic loader is bound lazily: the first
/// call resolves the symbol, reading the symbol tables of every loaded object (the loader's code,
/// `libm`'s and `libgcc_s`'s tables, the binary's), some 200 KiB of pages each worker would map on
/// its own. Registering one here resolves it in the master; the workers inherit the bound entry.
pub(crate) fn prepare_master() {
    thread_local! {
        static BOUND: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BOUND.with(|_| {});
}

/// Runs the worker in the child process. Never returns.
pub(crate) fn run_child(args: ChildArgs<'_>) -> ! {
    let code = match catch_unwind(AssertUnwindSafe(|| child_main(args))) {
        Ok(code) => code,
        Err(_) => i32::from(EXIT_RUNTIME),
    };
    // The access lines still buffered, including those of connections the runtime dropped.
    access_sink::flush();
    std::process::exit(code)
}

/// The worker's life after the fork: the fork rules (1–4), then its own runtime and app (5), then
/// serving until the drain ends.
fn child_main(args: ChildArgs<'_>) -> i32 {
    // Rule 0: become the account before anything else (and before rule 1, which a credential change
    // would undo). A failure is reported once the rules below set up the logging prefix.
    let switched = args.account.map(Account::assume);
    if !follow_fork_rules(&args) {
        return i32::from(EXIT_RUNTIME);
    }
    if let Some(dir) = args.chdir {
        if let Err(e) = std::env::set_current_dir(dir) {
            tracing::error!("cannot change to --chdir {}: {e}", dir.display());
            return i32::from(EXIT_BOOT);
        }
    }
    let pid = std::process::id();
    if let Some(Err(e)) = switched {
        let text = e.to_string();
        tracing::error!("{text}");
        args.control.send(&Message::BootError {
            pid: pid as i32,
            text,
        });
        return i32::from(EXIT_BOOT);
    }
    let worker = Worker::new(args.slot, pid, args.pool_size)
        .with_generation(args.generation)
        .with_max_surge(args.max_surge)
        .with_db(args.db);
    let booted = match boot(&args, &worker) {
        Ok(b) => b,
        Err(text) => {
            tracing::error!("app failed to boot: {text}");
            args.control.send(&Message::BootError {
                pid: pid as i32,
                text,
            });
            return i32::from(EXIT_BOOT);
        }
    };
    match serve(args, &worker, booted) {
        Ok(()) => {
            tracing::debug!("exiting");
            0
        }
        Err(e) => {
            tracing::error!("{e}");
            i32::from(EXIT_RUNTIME)
        }
    }
}

/// Rules 1 to 4 of the module: die with the master, close its descriptors, reset the signals, and
/// clean the environment. `false` if the master is already gone.
fn follow_fork_rules(args: &ChildArgs<'_>) -> bool {
    // Rule 1: die with the master.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != args.master_pid {
        return false;
    }
    // Rule 2: close the master's private descriptors.
    for &fd in &args.close_fds {
        // SAFETY: these descriptors belong to the master's signalfd and control-pipe read end. This
        // child never returns into the master's code (it ends in `exit`), so nothing will use or close
        // them again here.
        unsafe {
            libc::close(fd);
        }
    }
    // Rule 3: signals. SIGUSR1 (reopen the log file) would kill the worker until its handler is
    // installed; it is ignored until then, and the worker reopens the file once when the handler is in
    // place, so a rotation in between is not missed.
    // SAFETY: setting a disposition to SIG_IGN installs no handler code; the process has one thread.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGUSR1,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    crate::shared::sigmask::unblock_all();
    crate::logging::set_worker(args.slot);
    crate::shared::proctitle::set(&crate::shared::proctitle::worker(args.slot, false));
    // Rule 4: environment.
    // SAFETY: the child of a single-threaded master has exactly one thread, and no runtime or thread
    // exists yet, so nothing can read the environment concurrently.
    unsafe {
        std::env::set_var("HYPERFORK_WORKER_ID", args.slot.to_string());
        for var in [
            "NOTIFY_SOCKET",
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
        ] {
            std::env::remove_var(var);
        }
        // As `su` and systemd's User= do: the app and its jobs see the user they run as.
        if let Some((name, home)) = args.account.and_then(Account::login) {
            std::env::set_var("USER", name);
            std::env::set_var("LOGNAME", name);
            std::env::set_var("HOME", home);
        }
    }
    true
}

/// What a booted worker serves with.
struct Booted {
    /// The worker's own tokio runtime.
    runtime: tokio::runtime::Runtime,
    /// Its copies of the listening sockets.
    listeners: Vec<Listener>,
    /// The app, ready to serve.
    runner: Runner,
    /// The app state the start hook built.
    state: AnyState,
}

/// Rule 5, first half: build the worker's own runtime, duplicate the listening sockets, and call the
/// app factory inside the runtime. An error is the boot error to report.
fn boot(args: &ChildArgs<'_>, worker: &Worker) -> Result<Booted, String> {
    let runtime = if args.threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .on_thread_park(crate::shared::balance::loop_parked)
            .on_thread_unpark(crate::shared::balance::loop_unparked)
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(crate::shared::balance::loop_parked)
            .on_thread_unpark(crate::shared::balance::loop_unparked)
            .build()
    }
    .map_err(|e| format!("cannot build the tokio runtime: {e}"))?;
    let listeners = args
        .listeners
        .iter()
        .map(Listener::try_clone)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot duplicate the listening socket: {e}"))?;
    let state = runtime.block_on(start(args, worker))?;
    let guard = runtime.enter();
    let runner = match catch_unwind(AssertUnwindSafe(|| (args.app.factory)(worker, &state))) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(format!("app factory failed: {e}")),
        Err(panic) => {
            return Err(format!(
                "app factory panicked: {}",
                crate::worker::serve::panic_message(&panic)
            ));
        }
    };
    drop(guard);
    Ok(Booted {
        runtime,
        listeners,
        runner,
        state,
    })
}

/// Runs the app's start hook, if any, within the boot timeout; its error, panic or timeout is the
/// boot error. A start hook that blocks the runtime's thread cannot be timed out here: the master
/// kills a worker not ready within the boot timeout.
async fn start(args: &ChildArgs<'_>, worker: &Worker) -> Result<AnyState, String> {
    let Some(hook) = &args.app.start else {
        return Ok(crate::app::state::no_state());
    };
    let run = crate::worker::guard::CatchPanic(hook(worker));
    let outcome = if args.health.boot_timeout.is_zero() {
        run.await
    } else {
        match tokio::time::timeout(args.health.boot_timeout, run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(format!(
                    "the start hook did not finish within --boot-timeout ({})",
                    humantime::format_duration(args.health.boot_timeout)
                ));
            }
        }
    };
    match outcome {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => Err(format!("start hook failed: {e}")),
        Err(panic) => Err(format!(
            "start hook panicked: {}",
            crate::worker::serve::panic_message(&panic)
        )),
    }
}

/// Runs the app's stop hook, if any, within what is left of the graceful timeout.
async fn stop(app: &App, worker: &Worker, state: &AnyState, left: Duration) {
    let Some(hook) = &app.stop else {
        return;
    };
    let run = crate::worker::guard::CatchPanic(hook(worker, state));
    match tokio::time::timeout(left, run).await {
        Ok(Ok(Ok(()))) => tracing::debug!("stop hook done"),
        Ok(Ok(Err(e))) => tracing::warn!("stop hook failed: {e}"),
        Ok(Err(panic)) => tracing::error!(
            "stop hook panicked: {}",
            crate::worker::serve::panic_message(&panic)
        ),
        Err(_) => tracing::warn!(
            "stop hook still running when the graceful timeout ran out ({} left); exiting",
            humantime::format_duration(left)
        ),
    }
}

/// Rule 5, second half: connect the worker to the master (signals, orders and the scheduler,
/// heartbeats, the ready message, the request limit) and serve until the drain ends; then let
/// running jobs end within the graceful timeout.
fn serve(args: ChildArgs<'_>, worker: &Worker, booted: Booted) -> Result<(), String> {
    let pid = worker.pid();
    let Booted {
        runtime,
        listeners,
        runner,
        state,
    } = booted;
    let (control, graceful_timeout, health) = (args.control, args.graceful_timeout, args.health);
    let max_requests = request_limit(&health, control, pid);
    let scheduler = (args.slot == 0 && !args.jobs.is_empty()).then(|| {
        Scheduler::new(
            args.jobs,
            worker.clone(),
            state.clone(),
            control,
            args.jobs_store,
        )
    });
    let balance = join_balance(args.balance, pid, args.slot);
    let counters = join_stats(args.stats, pid, args.slot);
    let pool = args.stats.pool();
    let (orders, mut limits, app, tls) = (args.orders, args.limits, args.app, args.tls);
    runtime.block_on(async move {
        if !access_sink::open() {
            // Access lines are filtered out: no request builds one.
            limits.access.format = None;
        }
        let (tx, rx) = watch::channel(Stop::Run);
        let stop_began = stop_clock(rx.clone());
        watch_signals(tx).map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let (sched_done_tx, mut sched_done) = watch::channel(scheduler.is_none());
        spawn_order_loop(
            orders,
            scheduler,
            rx.clone(),
            control,
            pid,
            graceful_timeout,
            sched_done_tx,
        )
        .map_err(|e| format!("cannot watch the order pipe: {e}"))?;
        if let Some(interval) = health.beat_interval() {
            tokio::spawn(heartbeat(control, pid, interval));
        }
        let ready = Box::new(move || {
            tracing::debug!("accepting connections");
            control.send(&Message::Ready { pid: pid as i32 });
        });
        let serving = ServeControl {
            ready,
            stop: rx,
            graceful_timeout,
            limits,
            max_requests,
            balance,
            counters,
            pool,
            tls,
        };
        let served = runner(listeners, serving).await;
        access_sink::flush();
        served.map_err(|e| format!("serving failed: {e}"))?;
        // Let running jobs end (the drain already stopped new ones), then the stop hook, both within
        // what is left of the graceful timeout.
        let left = || {
            let since = stop_began.get().map_or(Duration::ZERO, |t| t.elapsed());
            graceful_timeout.saturating_sub(since)
        };
        let _ = tokio::time::timeout(left(), sched_done.wait_for(|done| *done)).await;
        stop(app, worker, &state, left()).await;
        Ok(())
    })
}

/// When the worker was told to stop (set once, by a task watching `stop`).
fn stop_clock(mut stop: watch::Receiver<Stop>) -> Arc<std::sync::OnceLock<std::time::Instant>> {
    let at = Arc::new(std::sync::OnceLock::new());
    let set = at.clone();
    tokio::spawn(async move {
        if stop.wait_for(|s| *s != Stop::Run).await.is_ok() {
            let _ = set.set(std::time::Instant::now());
        }
    });
    at
}

/// The request limit, if any, and what to do on reaching it: ask the master once to be replaced
/// (it queues the request if another replacement runs).
fn request_limit(
    health: &crate::config::health::Health,
    control: ControlWriter,
    pid: u32,
) -> Option<(u64, crate::worker::serve::OnMaxRequests)> {
    let limit = health.request_limit(u64::from(pid) ^ seed_from_clock())?;
    let ask: crate::worker::serve::OnMaxRequests = Arc::new(move |served| {
        tracing::info!("served {served} requests, the limit; asking to be replaced");
        control.send(&Message::Recycle {
            pid: pid as i32,
            served,
        });
    });
    Some((limit, ask))
}

/// This worker's entry in the accept-balancing table (balanced accept only).
fn join_balance(
    table: Option<crate::shared::balance::Table>,
    pid: u32,
    slot: usize,
) -> Option<crate::shared::balance::Member> {
    let member = table?.join(pid, slot);
    match &member {
        // Only packed accept reads whether a loop is idle: the hooks stay no-ops otherwise.
        Some(m) if m.packed() => m.publish_loop(),
        Some(_) => {}
        None => {
            tracing::warn!("the accept-balancing table is full; this worker accepts unbalanced")
        }
    }
    member
}

/// This worker's entry in the counters' table; a private one, invisible to the master, if the table
/// is full.
fn join_stats(
    table: crate::shared::stats::Table,
    pid: u32,
    slot: usize,
) -> crate::shared::stats::Counters {
    table.join(pid, slot).unwrap_or_else(|| {
        tracing::warn!(
            "the counters' table is full; this worker's requests are not in the metrics"
        );
        crate::shared::stats::Counters::private()
    })
}

/// Reads the master's orders. End-of-file means the master is gone: the worker exits at once.
fn spawn_order_loop(
    fd: OwnedFd,
    mut scheduler: Option<Scheduler>,
    mut stop: watch::Receiver<Stop>,
    control: ControlWriter,
    pid: u32,
    graceful_timeout: Duration,
    done: watch::Sender<bool>,
) -> std::io::Result<()> {
    crate::shared::control::set_nonblocking(&fd).map_err(std::io::Error::from)?;
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        let mut draining = false;
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match Order::decode(&line) {
                        Some(Order::Grant { anchor_ms, last_ticks }) => match scheduler.as_mut() {
                            Some(s) if !draining => {
                                s.start(anchor_ms, &last_ticks);
                                crate::shared::proctitle::set(&crate::shared::proctitle::worker(0, true));
                            }
                            _ => {
                                // Draining (or not slot 0): give the lease back at once, so the
                                // master can grant it to the next worker without waiting for this
                                // one to exit.
                                tracing::info!("scheduler lease granted while draining; released");
                                control.send(&Message::Released { pid: pid as i32 });
                            }
                        },
                        None => tracing::warn!("unreadable order from the master: {line:?}"),
                    },
                    Ok(None) | Err(_) => {
                        tracing::error!("the master is gone; exiting");
                        access_sink::flush();
                        std::process::exit(i32::from(EXIT_RUNTIME));
                    }
                },
                changed = stop.changed(), if !draining => {
                    draining = true;
                    if changed.is_ok() {
                        if let Some(s) = scheduler.as_mut() {
                            if s.stop(graceful_timeout).await {
                                control.send(&Message::Released { pid: pid as i32 });
                                crate::shared::proctitle::set(&crate::shared::proctitle::worker(0, false));
                            }
                        }
                    }
                    let _ = done.send(true);
                }
            }
        }
    });
    Ok(())
}

/// Sends `alive` every `interval` from this runtime (a blocked runtime stops it).
async fn heartbeat(control: ControlWriter, pid: u32, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        control.send(&Message::Alive { pid: pid as i32 });
    }
}

/// Some bits that differ between workers and runs, to spread their request limits.
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// `SIGTERM` asks for a graceful stop; `SIGINT` and `SIGQUIT` exit at once; `SIGUSR1` reopens the log
/// file.
fn watch_signals(tx: watch::Sender<Stop>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    if let Err(e) = crate::logging::reopen() {
        tracing::error!("{e}");
    }
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            // The lines buffered so far belong to the file being rotated away.
            access_sink::flush();
            match crate::logging::reopen() {
                Ok(Some(path)) => tracing::info!("reopened the log file {}", path.display()),
                Ok(None) => {}
                Err(e) => tracing::error!("{e}; still writing to the file already open"),
            }
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: finishing in-flight requests");
                let _ = tx.send(Stop::Graceful);
                // A second TERM, or INT/QUIT, during the drain: stop now.
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                    _ = quit.recv() => {},
                }
            }
            _ = int.recv() => {},
            _ = quit.recv() => {},
        }
        access_sink::flush();
        std::process::exit(0);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::schedule::Every;
    use crate::shared::control::{ControlPipe, send_order};

    #[test]
    fn a_grant_that_reaches_a_draining_worker_is_given_back_at_once() {
        // Declared before the runtime so they outlive it: the order loop exits the process on EOF.
        let (orders, order_writer) = crate::shared::control::order_pipe().unwrap();
        let mut control = ControlPipe::new().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let writer = control.writer();
        let released = runtime.block_on(async move {
            let job = crate::jobs::Job::new("j", Every::seconds(3600), |_| async {});
            let scheduler = Scheduler::new(
                &[job],
                Worker::new(0, 42, 1),
                crate::app::state::no_state(),
                writer,
                None,
            );
            let (stop_tx, stop) = watch::channel(Stop::Run);
            let (done, _done_rx) = watch::channel(false);
            spawn_order_loop(
                orders,
                Some(scheduler),
                stop,
                writer,
                42,
                Duration::from_secs(1),
                done,
            )
            .unwrap();
            // The drain starts, then the master's grant (sent just before it knew) arrives.
            stop_tx.send(Stop::Graceful).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(send_order(
                &order_writer,
                &Order::Grant {
                    anchor_ms: 0,
                    last_ticks: Default::default(),
                }
            ));
            for _ in 0..250 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if control.drain().contains(&Message::Released { pid: 42 }) {
                    return true;
                }
            }
            false
        });
        assert!(released, "the lease was not given back");
    }
}
