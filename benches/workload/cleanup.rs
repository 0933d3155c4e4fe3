//! Cleanup on SIGINT, SIGTERM and SIGHUP. The guards (servers, the PostgreSQL cluster) stop what they
//! started when they drop, on errors and panics; a signal would end the process without running them,
//! so these signals are caught instead, and a thread stops the registered servers and PostgreSQL, and
//! exits.
//! PostgreSQL matters most: `pg_ctl` starts it in a session of its own, so a Ctrl-C on the terminal
//! does not reach it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// What a signal must stop.
struct Registry {
    /// Root pids of the running servers (their whole trees are killed).
    servers: Vec<u32>,
    /// The postmaster and the cluster's directory.
    postgres: Option<(i32, PathBuf)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    servers: Vec::new(),
    postgres: None,
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The write end of the pipe the signal handler writes the signal's number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the pipe outlives the process's handlers.
    unsafe {
        libc::write(
            SIGNAL_PIPE.load(Ordering::Relaxed),
            (&raw const byte).cast::<libc::c_void>(),
            1,
        )
    };
}

/// Catches the signals with a handler that writes to a pipe, and starts the thread that reads it.
/// A handler, not a blocked mask with `sigwait`: children inherit a signal mask (`std` does not reset
/// it), and a server started with SIGTERM blocked would not stop; a caught signal is reset to its
/// default at `exec`.
pub fn install() -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot create the signal pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    let [read_fd, write_fd] = fds;
    SIGNAL_PIPE.store(write_fd, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut byte = 0u8;
            loop {
                // SAFETY: reads one byte into `byte`.
                let n = unsafe { libc::read(read_fd, (&raw mut byte).cast::<libc::c_void>(), 1) };
                if n == 1 {
                    break;
                }
                if n == 0
                    || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
            }
            let sig = libc::c_int::from(byte);
            eprintln!("workload: signal {sig}: stopping the servers and PostgreSQL");
            stop_everything();
            std::process::exit(128 + sig);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a valid handler and an empty mask; SA_RESTART so that the
        // other threads' system calls are not cut short.
        let rc = unsafe {
            let mut action = std::mem::zeroed::<libc::sigaction>();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(format!(
                "cannot catch signal {sig}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Records a started server.
pub fn register_server(pid: u32) {
    registry().servers.push(pid);
}

/// Forgets a stopped server.
pub fn unregister_server(pid: u32) {
    registry().servers.retain(|&p| p != pid);
}

/// Records the running PostgreSQL.
pub fn register_postgres(postmaster: i32, dir: &Path) {
    registry().postgres = Some((postmaster, dir.to_path_buf()));
}

/// Forgets it once stopped.
pub fn unregister_postgres() {
    registry().postgres = None;
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) };
}

fn stop_everything() {
    let mut r = registry();
    for root in std::mem::take(&mut r.servers) {
        for p in crate::procs::tree(root) {
            if let Ok(p) = i32::try_from(p) {
                kill(p, libc::SIGKILL);
            }
        }
    }
    if let Some((postmaster, dir)) = r.postgres.take() {
        let backends = crate::children_of(postmaster);
        // SIGQUIT: PostgreSQL's immediate shutdown (what `pg_ctl stop -m immediate` sends).
        kill(postmaster, libc::SIGQUIT);
        if !crate::wait_until(Duration::from_secs(5), || !crate::alive(postmaster)) {
            kill(postmaster, libc::SIGKILL);
        }
        for b in backends {
            let postgres = std::fs::read_to_string(format!("/proc/{b}/comm"))
                .is_ok_and(|c| c.trim() == "postgres");
            if postgres && crate::alive(b) {
                kill(b, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
