//! The bare fork pool: the smallest pre-fork server, the reference of hyperfork's own cost per
//! request. One process binds the listening socket as hyperfork does (`SO_REUSEADDR`, backlog 2048)
//! and forks N children before any runtime exists; each child builds a tokio current-thread runtime,
//! sets `TCP_NODELAY` on each connection and serves it with hyper's `http1` connection builder and
//! the answer every server here gives (`x-worker: SLOT`). No supervision, no request guard, no
//! deadlines, no drain, no counters.
//!
//! The children accept in turn (round robin): whose turn it is is a counter in memory shared by the
//! pool; the child whose turn it is accepts one connection on its runtime, passes the turn on and
//! wakes the next child through that child's eventfd; the others wait on their eventfd. A burst of
//! keep-alive connections is so spread evenly whatever the scheduler does, so the keep-alive figures
//! compare hyperfork with a pool doing the same work per worker. Everything runs on the runtime's
//! one thread: a second thread would make glibc wrap every `recv`, `writev` and `epoll_wait` in its
//! cancellation bookkeeping (measured: 48 ns per request, which a single-threaded hyperfork worker
//! does not pay). A plain shared accept (every child polls the socket, the first to run
//! takes the connection) left one of 2 workers with none of 64 connections in 2 of 3 rounds, a
//! single-process server in effect, which then sleeps less per request and skews CPU per request;
//! `HYPERFORK_BENCH_BARE_ACCEPT=shared` brings it back. The handover costs an eventfd write and a
//! wake-up per connection, which only the short-connection shapes see.
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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

use hyper::Request;
use hyper::header::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

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
    let listener = match bind(addr) {
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
    let mut turn = if round_robin {
        match Turn::new(workers) {
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
                let accept = match turn.take() {
                    Some(turn) => Accept::InTurn(turn),
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

/// The listening socket, with hyperfork's options.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
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

/// Whose turn it is to accept: a counter in memory shared by the pool (worker `counter % workers`
/// accepts), and one eventfd per worker, which the worker passing the turn writes to wake the next.
#[derive(Debug)]
struct Turn {
    counter: &'static AtomicU32,
    wake: Vec<OwnedFd>,
}

impl Turn {
    /// Maps the counter and makes the eventfds, shared with every process forked after the call.
    fn new(workers: usize) -> std::io::Result<Turn> {
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
        let counter = unsafe { &*ptr.cast::<AtomicU32>() };
        let wake = (0..workers)
            .map(|_| {
                // SAFETY: eventfd takes no pointer; the result is checked before use.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: eventfd returned a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Turn { counter, wake })
    }

    /// Whether it is worker `slot`'s turn.
    fn is(&self, slot: usize) -> bool {
        self.counter.load(Ordering::Acquire) as usize % self.wake.len() == slot
    }

    /// Passes the turn from `slot` to the next worker and wakes it.
    fn pass(&self, slot: usize) {
        self.counter.fetch_add(1, Ordering::AcqRel);
        let next = &self.wake[(slot + 1) % self.wake.len()];
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to an eventfd this process
        // keeps open.
        unsafe { libc::write(next.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

/// Empties an eventfd (`WouldBlock` when it was empty).
fn drain(fd: &OwnedFd) -> std::io::Result<()> {
    let mut value = [0u8; 8];
    // SAFETY: reads at most 8 bytes into `value`, which outlives the call, from an open descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// How a child accepts.
#[derive(Debug)]
enum Accept {
    /// In turn with the others ([`Turn`]).
    InTurn(Turn),
    /// Whenever it is first to the shared socket, like every other child.
    Shared,
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
        Accept::InTurn(turn) => runtime.block_on(serve_in_turn(listener, slot, turn)),
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare: worker {slot}: {e}");
            ExitCode::from(1)
        }
    }
}

/// Accepts when it is this worker's turn, one connection at a time, and serves.
async fn serve_in_turn(
    listener: std::net::TcpListener,
    slot: usize,
    turn: Turn,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let worker = HeaderValue::from(slot);
    // SAFETY: the AsyncFd owns this duplicate of the eventfd: it stays open, and is the same one,
    // until the AsyncFd is dropped, which deregisters it first.
    let woken = unsafe {
        AsyncFd::register_with_interest(turn.wake[slot].try_clone()?, Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)?;
    loop {
        if !turn.is(slot) {
            let mut ready = woken.readable().await?;
            // Empty: readiness is cleared once a read finds it empty, then the turn is checked again.
            let _ = ready.try_io(|fd| drain(fd.get_ref()));
            continue;
        }
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        turn.pass(slot);
        spawn_connection(stream, &worker);
    }
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
