//! Cleanup on SIGINT, SIGTERM and SIGHUP. The guards (servers, the PostgreSQL cluster) stop what they
//! started when they drop, on errors and panics; a signal ends the process without running them, so
//! a thread waits for these signals instead, stops the registered servers and PostgreSQL, and exits.
//! PostgreSQL matters most: `pg_ctl` starts it in a session of its own, so a Ctrl-C on the terminal
//! does not reach it.

use std::path::{Path, PathBuf};
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

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill the set; the signals are valid.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the signals in this thread (so in every thread started after it: call it first in
/// `main`) and starts the thread that waits for them. Children get an empty mask from `std`.
pub fn install() -> Result<(), String> {
    let set = signal_set();
    // SAFETY: a valid set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(format!(
            "cannot block SIGINT/SIGTERM/SIGHUP: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: a valid set, blocked in every thread; sig is written by sigwait.
            while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
            eprintln!("workload: signal {sig}: stopping the servers and PostgreSQL");
            stop_everything();
            std::process::exit(128 + sig);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
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
