//! The signal mask, which crosses the fork: the master blocks the signals it reads from its signalfd,
//! and a forked worker inherits that mask (as would any program it runs, since
//! `std::process::Command` keeps it), so a worker empties it first thing.

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

/// Unblocks every signal in the calling thread; a forked worker calls this before anything else.
pub(crate) fn unblock_all() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}
