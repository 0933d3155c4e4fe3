//! Signals in the master: blocked, then read from a `signalfd` by the main loop.
//!
//! No signal handler runs in the master at all: the signals it cares about are blocked in its (single)
//! thread and the kernel queues them on a `signalfd`, which the main loop polls next to the control pipe.
//! Several `SIGCHLD` may merge into one; the loop reaps with `waitpid(-1, WNOHANG)` until empty anyway.
//!
//! | signal | master |
//! |---|---|
//! | `SIGTERM` | graceful shutdown: workers stop accepting, finish in-flight requests, exit |
//! | `SIGINT`, `SIGQUIT` | fast shutdown |
//! | `SIGCHLD` | reap and replace dead workers |
//! | `SIGHUP` | reload the configuration, replace workers slot by slot |
//! | `SIGTTIN`, `SIGTTOU` | one more, one fewer worker |
//! | `SIGUSR1` | reopen the log file |
//! | `SIGUSR2` | binary upgrade: start a new master, hand over |
//!
//! A forked worker inherits the blocked mask (and so would any program it runs: `std::process::Command`
//! keeps it), so `shared::sigmask::unblock_all` runs first thing in every worker.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::StartError;

/// The signals the master handles through its signalfd.
pub const MASTER_SIGNALS: [Signal; 9] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Pending signals of the master, readable as a file descriptor.
#[derive(Debug)]
pub struct SignalQueue {
    fd: SignalFd,
}

impl SignalQueue {
    /// Blocks [`MASTER_SIGNALS`] in the calling thread and opens a non-blocking signalfd for them.
    pub fn install() -> Result<SignalQueue, StartError> {
        let mut mask = SigSet::empty();
        for s in MASTER_SIGNALS {
            mask.add(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(|e| StartError::os("blocking signals", e))?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| StartError::os("signalfd", e))?;
        Ok(SignalQueue { fd })
    }

    /// Reads every pending signal.
    pub fn drain(&mut self) -> Vec<Signal> {
        let mut out = Vec::new();
        while let Ok(Some(info)) = self.fd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                out.push(sig);
            }
        }
        out
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The raw descriptor, for a forked worker to close.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
