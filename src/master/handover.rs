//! The master's side of a binary upgrade (`SIGUSR2`), in both roles: the old master starting its
//! successor and handing over, and the new master taking over. The protocol is in [`crate::master::upgrade`].

use std::time::Instant;

use nix::sys::signal::{Signal, kill};

use super::tally::Outcome;
use super::{Master, Phase};
use crate::master::upgrade::{self, Said, Stage, Step};

impl Master<'_> {
    /// Whether a binary upgrade is under way, in either role.
    pub(super) fn upgrading(&self) -> bool {
        self.successor.as_ref().is_some_and(|s| !s.took_over()) || self.predecessor.is_some()
    }

    /// `SIGUSR2`: start a new master from the executable on disk. Returns `true` when it could not
    /// start because the file is still open for writing (`ETXTBSY`), worth trying again shortly.
    pub(super) fn begin_upgrade(&mut self) -> bool {
        if self.upgrading() {
            tracing::warn!("SIGUSR2 ignored: a binary upgrade is already in progress");
            self.upgrade_refused("a binary upgrade is already in progress");
            return false;
        }
        if self.replacement().is_some() {
            tracing::warn!("SIGUSR2 ignored: a reload is in progress; send it again after it");
            self.upgrade_refused("a reload is in progress; try again after it");
            return false;
        }
        let Some(program) = self.args.program.as_ref() else {
            tracing::error!(
                "SIGUSR2 ignored: the executable's path could not be read at start, so there is \
                 nothing to run"
            );
            self.upgrade_refused(
                "the executable's path could not be read at start, so there is nothing to run",
            );
            return false;
        };
        self.notifier.reloading();
        match upgrade::spawn(program, &self.args.listeners, self.args.activated) {
            Ok(s) => {
                tracing::info!(
                    "SIGUSR2: starting a new master from {} (pid {}); this one keeps serving until \
                     the new one's workers are ready",
                    program.exe().display(),
                    s.pid
                );
                self.successor = Some(s);
                false
            }
            Err(e) => {
                let busy = matches!(
                    &e,
                    crate::error::StartError::Os { source, .. }
                        if source.raw_os_error() == Some(libc::ETXTBSY)
                );
                let message = format!("binary upgrade failed, this master keeps serving: {e}");
                tracing::error!("{message}");
                let status = self.status_line();
                self.notifier.ready(&status);
                self.upgrade_ended(Outcome::Aborted, message);
                busy
            }
        }
    }

    /// An upgrade refused before it started.
    fn upgrade_refused(&mut self, why: &str) {
        self.upgrade_ended(Outcome::Rejected, format!("binary upgrade refused: {why}"));
    }

    /// An upgrade ended: count it and answer whoever waits for it.
    pub(super) fn upgrade_ended(&mut self, outcome: Outcome, message: String) {
        self.tally.upgrade(outcome);
        self.answer_waiters(
            super::ctl::Awaited::Upgrade,
            outcome == Outcome::Completed,
            &message,
        );
    }

    /// The old master's side of an upgrade: hand over when the new master is ready, give up on it
    /// when it is late, and send the lease record once this master's holder is gone.
    pub(super) fn drive_successor(&mut self, now: Instant) {
        let stopping = self.is_stopping();
        let Some(s) = self.successor.as_mut() else {
            return;
        };
        match s.stage {
            Stage::Booting { deadline } => {
                // A master that is shutting down stops its successor too; it hands nothing over.
                if s.poll_ready() && !stopping {
                    self.hand_over();
                } else if now >= deadline {
                    s.stage = Stage::Abandoned;
                    let pid = s.pid;
                    let message = format!(
                        "binary upgrade failed: the new master (pid {pid}) was not ready within {}; \
                         stopping it, this master keeps serving",
                        humantime::format_duration(upgrade::READY_TIMEOUT)
                    );
                    tracing::error!("{message}");
                    let _ = kill(pid, Signal::SIGTERM);
                    self.upgrade_ended(Outcome::Aborted, message);
                }
            }
            Stage::TookOver if s.channel.is_some() && self.lease.is_free() => {
                s.send_lease(&self.lease.record());
                tracing::info!("handed the scheduler lease record to the new master");
            }
            Stage::TookOver | Stage::Abandoned => {}
        }
    }

    /// The new master is ready: make it the main process and drain this one.
    pub(super) fn hand_over(&mut self) {
        let Some(s) = self.successor.as_mut() else {
            return;
        };
        let new = s.pid;
        s.stage = Stage::TookOver;
        self.notifier
            .main_pid(new, &format!("handed over to the new master, pid {new}"));
        self.notifier.set_muted(true);
        if !s.send_main() {
            tracing::warn!("cannot tell the new master (pid {new}) it took over");
        }
        // The new master owns the socket files and the pid file from now on.
        self.owns_files = false;
        if let Some(ctl) = self.ctl.as_mut() {
            ctl.hand_over();
        }
        if let Some(p) = self.pid_file.take() {
            p.keep();
        }
        tracing::info!(
            "the new master (pid {new}) has every worker ready and takes over; draining this \
             master's workers (up to {}), then exiting",
            humantime::format_duration(self.args.graceful_timeout)
        );
        self.phase = Phase::Stopping {
            kill_at: Some(Instant::now() + self.args.graceful_timeout),
            extended: None,
        };
        self.signal_all(Signal::SIGTERM);
        self.upgrade_ended(
            Outcome::Completed,
            format!("upgraded: the new master (pid {new}) took over; this one drains and exits"),
        );
    }

    /// The new master exited (it is this master's child until this one exits).
    pub(super) fn successor_exited(&mut self, how: &str) {
        let Some(s) = self.successor.take() else {
            return;
        };
        if s.took_over() {
            tracing::warn!("the new master (pid {}) {how}", s.pid);
            return;
        }
        if !self.is_stopping() {
            let message = format!(
                "binary upgrade failed: the new master (pid {}) {how} before its workers were ready; \
                 this master keeps serving",
                s.pid
            );
            tracing::error!("{message}");
            let status = self.status_line();
            self.notifier.ready(&status);
            if s.stage != Stage::Abandoned {
                self.upgrade_ended(Outcome::Aborted, message);
            }
        } else {
            tracing::debug!("the new master (pid {}) {how}", s.pid);
        }
    }

    /// The new master's side of an upgrade: take over when told, then adopt the lease record.
    pub(super) fn drive_predecessor(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        for said in p.poll() {
            match said {
                Said::Main => self.become_main(),
                Said::Lease(anchor_ms, last_ticks) => {
                    self.lease.adopt(Some((anchor_ms, last_ticks)));
                    tracing::info!("received the scheduler lease record from the previous master");
                    self.predecessor = None;
                    return;
                }
                Said::Gone => {
                    if self
                        .predecessor
                        .as_ref()
                        .is_some_and(|p| p.step != Step::Main)
                    {
                        tracing::warn!(
                            "the previous master is gone before the hand-over; carrying on alone"
                        );
                        self.become_main();
                    }
                    if self.lease.is_held_elsewhere() {
                        self.lease.adopt(None);
                        tracing::warn!(
                            "the previous master is gone without sending the scheduler lease record; \
                             scheduling from now on"
                        );
                    }
                    self.predecessor = None;
                    return;
                }
            }
        }
    }

    /// This master is now the service's main process.
    pub(super) fn become_main(&mut self) {
        let Some(p) = self.predecessor.as_mut() else {
            return;
        };
        let was_ready = p.step == Step::Ready;
        p.step = Step::Main;
        self.notifier.set_muted(false);
        self.owns_files = !self.args.activated;
        if let Err(e) = self.open_ctl(true) {
            tracing::error!("no control socket: {e}");
        }
        if let Some(path) = self.args.pid_file.as_deref() {
            match crate::master::pidfile::PidFile::create(path) {
                Ok(f) => self.pid_file = Some(f),
                Err(e) => tracing::error!("{e}"),
            }
        }
        if was_ready {
            tracing::info!("took over from the previous master");
            let status = self.status_line();
            self.notifier.main_pid(self.pid, &status);
        } else if self.declared() {
            let status = self.status_line();
            self.notifier.ready(&status);
        }
        // Otherwise READY=1 goes out with the usual message once every worker is ready.
    }
}
