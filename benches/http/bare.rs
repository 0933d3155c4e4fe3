//! The bare fork pool: the smallest pre-fork server, the reference of hyperfork's own cost per
//! request. One process binds the listening socket as hyperfork does (`SO_REUSEADDR`, backlog 2048)
//! and forks N children before any runtime exists; each child builds a tokio current-thread runtime,
//! sets `TCP_NODELAY` on each connection and serves it with hyper's `http1` connection builder and
//! the answer every server here gives (`x-worker: SLOT`). No supervision, no request guard, no
//! deadlines, no drain, no counters.
//!
//! The children accept in turn (round robin): a thread of each child waits for its turn (a counter
//! in memory shared by the pool, a futex), takes one connection with a blocking `accept`, passes the
//! turn on and hands the connection to its runtime. A burst of keep-alive connections is so spread
//! evenly whatever the scheduler does, so the keep-alive figures compare hyperfork with a pool doing
//! the same work per worker. A plain shared accept (every child polls the socket, the first to run
//! takes the connection) left one of 2 workers with none of 64 connections in 2 of 3 rounds, a
//! single-process server in effect, which then sleeps less per request and skews CPU per request;
//! `HYPERFORK_BENCH_BARE_ACCEPT=shared` brings it back. The handover costs a futex wake-up per
//! connection, which only the short-connection shapes see.
//!
//! It runs as this benchmark's own executable, started with [`crate::baseline::ROLE_VAR`] = `bare`,
//! `HYPERFORK_BENCH_ADDR` and `HYPERFORK_BENCH_WORKERS`. The parent only waits: it forwards SIGTERM
//! and SIGINT to the children and exits once they are gone, and it stops the others and exits with
//! an error as soon as one child dies (a pool short of a worker would skew the figures). Each child
//! asks the kernel for SIGKILL when the parent dies (`PR_SET_PDEATHSIG`), so a parent killed with
//! SIGKILL leaves no child serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use std::sync::atomic::{AtomicU32, Ordering};

use hyper::Request;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};

use crate::baseline::{hello, role_addr};

/// The listen backlog: hyperfork's default `--backlog`.
const BACKLOG: i32 = 2048;

/// Serves until killed.
pub fn run() -> ExitCode {
    let addr = match role_addr("bare") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let workers = match std::env::var("HYPERFORK_BENCH_WORKERS").map(|w| w.parse::<usize>()) {
        Ok(Ok(w)) if w > 0 => w,
        _ => {
            eprintln!("bare: HYPERFORK_BENCH_WORKERS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let round_robin = std::env::var("HYPERFORK_BENCH_BARE_ACCEPT").as_deref() != Ok("shared");
    let listener = match bind(addr, !round_robin) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bare: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    // The children must be forked from a process with a single thread: they then inherit the whole
    // process, with no lock held by a thread that does not exist in them.
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 {
        eprintln!("bare: {threads} threads before forking, expected 1");
        return ExitCode::from(1);
    }
    // Blocked before the first fork, so that no signal is lost before `sigwait`; each child restores
    // the previous mask.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        signals.add(s);
    }
    let mask = match signals.thread_swap_mask(SigmaskHow::SIG_BLOCK) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("bare: cannot block signals: {e}");
            return ExitCode::from(1);
        }
    };
    let turn = if round_robin {
        match Turn::new() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("bare: cannot map the accept turn: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    let parent = getpid();
    let mut children = Vec::with_capacity(workers);
    for slot in 0..workers {
        // SAFETY: this process has a single thread (checked above) and no runtime yet, so the child
        // is a complete copy of it: it may allocate, build its runtime and return from `main` like
        // any process.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let accept = match turn {
                    Some(turn) => Accept::InTurn { turn, workers },
                    None => Accept::Shared,
                };
                return child(slot, listener, accept, parent, mask);
            }
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                eprintln!("bare: fork failed: {e}");
                stop(&children);
                return ExitCode::from(1);
            }
        }
    }
    // The parent never accepts; once every child is gone, new connections are refused.
    drop(listener);
    wait(&signals, &mut children)
}

/// The listening socket, with hyperfork's options; blocking unless `nonblocking` (the round-robin
/// accept blocks in `accept`).
fn bind(addr: SocketAddr, nonblocking: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(nonblocking)?;
    Ok(socket.into())
}

/// The parent: waits for SIGTERM or SIGINT (stops the children, exits 0) or for a child's death
/// (stops the others, exits 1).
fn wait(signals: &SigSet, children: &mut Vec<Pid>) -> ExitCode {
    loop {
        let signal = match signals.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bare: sigwait failed: {e}");
                stop(children);
                return ExitCode::from(1);
            }
        };
        if signal != Signal::SIGCHLD {
            stop(children);
            return ExitCode::SUCCESS;
        }
        let mut died = false;
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            let Some(pid) = status.pid() else { break };
            if matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..)) {
                children.retain(|c| *c != pid);
                eprintln!("bare: worker {pid} ended: {status:?}");
                died = true;
            }
        }
        if died {
            stop(children);
            return ExitCode::from(1);
        }
    }
}

/// Sends SIGTERM to every child and waits for each.
fn stop(children: &[Pid]) {
    for &c in children {
        let _ = kill(c, Signal::SIGTERM);
    }
    for &c in children {
        let _ = waitpid(c, None);
    }
}

/// Whose turn it is to accept: a counter in memory shared by the pool, worker `turn % workers`.
#[derive(Debug, Clone, Copy)]
struct Turn(&'static AtomicU32);

impl Turn {
    /// Maps the counter, shared with every process forked after the call.
    fn new() -> std::io::Result<Turn> {
        let len = std::mem::size_of::<AtomicU32>();
        // SAFETY: an anonymous shared mapping with no address hint has no preconditions; the result
        // is checked for MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the mapping is page-aligned, zero-filled (a valid AtomicU32 of 0) and never
        // unmapped, so the reference is valid for 'static; every process writes it only atomically.
        Ok(Turn(unsafe { &*ptr.cast::<AtomicU32>() }))
    }

    /// Waits until the counter is no longer `seen` (or a spurious wake-up).
    fn wait(&self, seen: u32) {
        // SAFETY: FUTEX_WAIT reads the aligned u32 the reference points to, which stays mapped; a
        // shared (not private) futex, since the other processes wake it.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.0.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                std::ptr::null::<libc::timespec>(),
            )
        };
    }

    /// Passes the turn on and wakes the waiting workers.
    fn pass(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
        // SAFETY: FUTEX_WAKE only uses the address as a key; it stays mapped.
        unsafe { libc::syscall(libc::SYS_futex, self.0.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    }
}

/// How a child accepts.
#[derive(Debug, Clone, Copy)]
enum Accept {
    /// In turn with the others ([`Turn`]), on a thread of its own.
    InTurn { turn: Turn, workers: usize },
    /// From the shared socket on the runtime, like every other child.
    Shared,
}

/// The accepting thread of a child in a round-robin pool: when it is this worker's turn, one
/// blocking `accept`, then the turn passes on and the connection goes to the runtime.
fn accept_in_turn(
    listener: std::net::TcpListener,
    slot: usize,
    turn: Turn,
    workers: usize,
    to_runtime: tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>,
) {
    loop {
        let seen = turn.0.load(Ordering::Acquire);
        if seen as usize % workers != slot {
            turn.wait(seen);
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        turn.pass();
        if to_runtime.send(stream).is_err() {
            return;
        }
    }
}

/// A child: serves on `listener` until killed.
fn child(
    slot: usize,
    listener: std::net::TcpListener,
    accept: Accept,
    parent: Pid,
    mask: SigSet,
) -> ExitCode {
    // SIGKILL when the parent dies; if it died before this call, the child has been re-parented.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent {
        return ExitCode::from(1);
    }
    if let Err(e) = mask.thread_set_mask() {
        eprintln!("bare: worker {slot}: cannot restore the signal mask: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bare: worker {slot}: cannot build the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let served = match accept {
        Accept::Shared => runtime.block_on(serve_shared(listener, slot)),
        Accept::InTurn { turn, workers } => {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            std::thread::spawn(move || accept_in_turn(listener, slot, turn, workers, tx));
            runtime.block_on(serve_handed(rx, slot))
        }
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare: worker {slot}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Serves the connections the accepting thread hands over.
async fn serve_handed(
    mut handed: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    slot: usize,
) -> std::io::Result<()> {
    let worker = HeaderValue::from(slot);
    while let Some(stream) = handed.recv().await {
        stream.set_nonblocking(true)?;
        spawn_connection(tokio::net::TcpStream::from_std(stream)?, &worker);
    }
    Ok(())
}

/// Accepts from the shared socket on the runtime and serves.
async fn serve_shared(listener: std::net::TcpListener, slot: usize) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let worker = HeaderValue::from(slot);
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            spawn_connection(stream, &worker);
        }
    }
}

/// Serves one connection on its own task: hyper's `http1` builder, the same answer to everything.
fn spawn_connection(stream: tokio::net::TcpStream, worker: &HeaderValue) {
    let _ = stream.set_nodelay(true);
    let worker = worker.clone();
    tokio::spawn(async move {
        let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
            let resp = hello(&worker);
            async move { Ok::<_, Infallible>(resp) }
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}
