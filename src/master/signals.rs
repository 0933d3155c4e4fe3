//! Signals in the master: blocked, then read from a `signalfd` by the main loop.
//!
//! No signal handler runs in the master at all: the signals it cares about are blocked in its (single)
//! thread and the kernel queues them on a `signalfd`, which the main loop polls next to the control pipe.
//! Several `SIGCHLD` may merge into one; the loop reaps with `waitpid(-1, WNOHANG)` until empty anyway.
//!
//! | signal | master |
//! |---|---|
//! | `SIGTERM` | graceful shutdown: after `--shutdown-delay` (a second one ends it), workers stop accepting, finish in-flight requests, exit |
//! | `SIGINT`, `SIGQUIT` | fast shutdown |
//! | `SIGCHLD` | reap and replace dead workers |
//! | `SIGHUP` | reload the configuration, replace workers slot by slot |
//! | `SIGTTIN`, `SIGTTOU` | one more, one fewer worker |
//! | `SIGUSR1` | reopen the log file |
//! | `SIGUSR2` | binary upgrade: start a new master, hand over |
//!
//! The loop never acts on a raw signal: [`intent`] turns each one into an [`Intent`] (what is asked of
//! the master, whatever signal asked it), and the loop dispatches intents.
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

/// What a signal asks of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Stop every worker and exit: gracefully (`SIGTERM`: finish in-flight requests within the
    /// graceful timeout) or fast (`SIGINT`, `SIGQUIT`).
    Shutdown {
        /// Whether in-flight requests may finish.
        graceful: bool,
    },
    /// Re-read the configuration and replace the workers slot by slot (`SIGHUP`).
    Reload,
    /// Start a new master from the executable on disk and hand over to it (`SIGUSR2`).
    Upgrade,
    /// Reopen the log file here and in every worker (`SIGUSR1`).
    ReopenLogs,
    /// One more worker (`SIGTTIN`).
    AddWorker,
    /// One fewer worker, never below one (`SIGTTOU`).
    RemoveWorker,
    /// A child exited (`SIGCHLD`).
    ReapChildren,
}

impl Intent {
    /// Whether the intent is still acted on once the master is shutting down: only a (faster)
    /// shutdown and reaping are.
    pub fn applies_while_stopping(self) -> bool {
        matches!(self, Intent::Shutdown { .. } | Intent::ReapChildren)
    }
}

/// What `sig` asks of the master; `None` for a signal the master does not handle.
pub fn intent(sig: Signal) -> Option<Intent> {
    Some(match sig {
        Signal::SIGTERM => Intent::Shutdown { graceful: true },
        Signal::SIGINT | Signal::SIGQUIT => Intent::Shutdown { graceful: false },
        Signal::SIGHUP => Intent::Reload,
        Signal::SIGUSR2 => Intent::Upgrade,
        Signal::SIGUSR1 => Intent::ReopenLogs,
        Signal::SIGTTIN => Intent::AddWorker,
        Signal::SIGTTOU => Intent::RemoveWorker,
        Signal::SIGCHLD => Intent::ReapChildren,
        _ => return None,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_master_signal_has_an_intent() {
        for sig in MASTER_SIGNALS {
            assert!(intent(sig).is_some(), "{sig} has no intent");
        }
        assert_eq!(intent(Signal::SIGPIPE), None);
        assert_eq!(intent(Signal::SIGUSR1), Some(Intent::ReopenLogs));
    }

    #[test]
    fn term_is_graceful_int_and_quit_are_fast() {
        assert_eq!(
            intent(Signal::SIGTERM),
            Some(Intent::Shutdown { graceful: true })
        );
        for sig in [Signal::SIGINT, Signal::SIGQUIT] {
            assert_eq!(intent(sig), Some(Intent::Shutdown { graceful: false }));
        }
    }

    #[test]
    fn live_operations_map_to_their_intents() {
        assert_eq!(intent(Signal::SIGHUP), Some(Intent::Reload));
        assert_eq!(intent(Signal::SIGUSR2), Some(Intent::Upgrade));
        assert_eq!(intent(Signal::SIGTTIN), Some(Intent::AddWorker));
        assert_eq!(intent(Signal::SIGTTOU), Some(Intent::RemoveWorker));
        assert_eq!(intent(Signal::SIGCHLD), Some(Intent::ReapChildren));
    }

    #[test]
    fn only_shutdown_and_reaping_apply_while_stopping() {
        let applies: Vec<Intent> = MASTER_SIGNALS
            .into_iter()
            .filter_map(intent)
            .filter(|i| i.applies_while_stopping())
            .collect();
        assert_eq!(
            applies,
            vec![
                Intent::ReapChildren,
                Intent::Shutdown { graceful: true },
                Intent::Shutdown { graceful: false },
                Intent::Shutdown { graceful: false },
            ]
        );
    }
}
