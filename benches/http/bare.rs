//! The bare fork pool: the smallest pre-fork server, the reference of hyperfork's own cost per
//! request. One process binds the listening socket as hyperfork does (`SO_REUSEADDR`, backlog 2048)
//! and forks N children before any runtime exists; each child builds a tokio current-thread runtime,
//! accepts from the shared socket (a plain shared accept: every child waits on it, the first to run
//! takes the connection), sets `TCP_NODELAY`, and serves hyper's `http1` connection builder with the
//! answer every server here gives (`x-worker: SLOT`). No supervision, no request guard, no
//! deadlines, no drain, no shared-memory counters.
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
    let parent = getpid();
    let mut children = Vec::with_capacity(workers);
    for slot in 0..workers {
        // SAFETY: this process has a single thread (checked above) and no runtime yet, so the child
        // is a complete copy of it: it may allocate, build its runtime and return from `main` like
        // any process.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => return child(slot, listener, parent, mask),
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

/// A child: serves on `listener` until killed.
fn child(slot: usize, listener: std::net::TcpListener, parent: Pid, mask: SigSet) -> ExitCode {
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
    match runtime.block_on(serve(listener, slot)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bare: worker {slot}: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(listener: std::net::TcpListener, slot: usize) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let worker = HeaderValue::from(slot);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
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
}
