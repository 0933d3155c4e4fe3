//! systemd integration: readiness notifications (`sd_notify`), the watchdog, and socket activation.
//!
//! Only the master talks to systemd (`NotifyAccess=main`); workers drop `NOTIFY_SOCKET`. The master
//! sends `READY=1` once every worker of the first generation is ready; `RELOADING=1` with
//! `MONOTONIC_USEC=` when a `SIGHUP` reload starts and `READY=1` when it ends (so `systemctl reload`
//! waits for the new workers, and `Type=notify-reload` works); `STOPPING=1` on shutdown (at the start
//! of a `--shutdown-delay`), with `EXTEND_TIMEOUT_USEC=` while the delay and the drain run so that a
//! short `TimeoutStopSec` cuts neither; a `STATUS=` line on every change; and `WATCHDOG=1` at half of
//! `WATCHDOG_USEC` while at least one worker is ready. A binary upgrade (`SIGUSR2`) moves the main pid with `MAINPID=`: see
//! [`crate::master::upgrade`].

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use sd_notify::NotifyState;

use crate::error::StartError;
use crate::shared::listener::Listener;

/// Sends notifications when `NOTIFY_SOCKET` is set; does nothing otherwise.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Not the main process (yet): say nothing (a new master during a binary upgrade).
    muted: bool,
    watchdog: Option<Duration>,
    next_watchdog: Option<Instant>,
    last_status: String,
    /// `STOPPING=1` was sent: no `READY=1` after it (a pool or a reload completing during a
    /// shutdown delay only updates the status).
    stopping: bool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty());
        let watchdog = if enabled {
            sd_notify::watchdog_enabled()
        } else {
            None
        };
        Notifier {
            enabled,
            muted: false,
            watchdog,
            next_watchdog: watchdog.map(|_| Instant::now()),
            last_status: String::new(),
            stopping: false,
        }
    }

    /// Stops (or resumes) all notifications: systemd takes them only from the unit's main process.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled || self.muted {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!("cannot notify systemd: {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&mut self, status: &str) {
        if self.stopping {
            return self.status(status);
        }
        self.last_status = status.to_string();
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `MAINPID=` with `READY=1` and a status line: `pid` is now the service's main process.
    pub fn main_pid(&mut self, pid: Pid, status: &str) {
        self.last_status = status.to_string();
        self.send(&[
            NotifyState::MainPid(pid.as_raw().unsigned_abs()),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`.
    pub fn reloading(&mut self) {
        let mut states = vec![NotifyState::Reloading];
        if let Ok(m) = NotifyState::monotonic_usec_now() {
            states.push(m);
        }
        states.push(NotifyState::Status("reloading"));
        self.send(&states);
    }

    /// `STOPPING=1`.
    pub fn stopping(&mut self) {
        self.stopping = true;
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `STATUS=` if it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&[NotifyState::Status(status)]);
        }
    }

    /// `EXTEND_TIMEOUT_USEC=`: systemd should wait `d` more.
    pub fn extend_timeout(&mut self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(us)]);
    }

    /// When the next `WATCHDOG=1` is due, if the watchdog is on.
    pub fn watchdog_deadline(&self) -> Option<Instant> {
        self.next_watchdog
    }

    /// Sends `WATCHDOG=1` if due and `healthy`.
    pub fn watchdog(&mut self, now: Instant, healthy: bool) {
        let (Some(interval), Some(due)) = (self.watchdog, self.next_watchdog) else {
            return;
        };
        if now >= due {
            if healthy && !self.muted {
                self.send(&[NotifyState::Watchdog]);
            }
            self.next_watchdog = Some(now + interval / 2);
        }
    }
}

/// Sockets passed by systemd socket activation (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`), if any.
/// The variables are removed so workers never see them.
pub fn activated_listeners() -> Result<Option<Vec<Listener>>, StartError> {
    let fds: Vec<(RawFd, String)> = match sd_notify::listen_fds_with_names() {
        Ok(it) => it.collect(),
        Err(e) => {
            return Err(StartError::Os {
                what: "reading LISTEN_FDS",
                source: e,
            });
        }
    };
    // SAFETY: the master is single-threaded here; nothing reads the environment concurrently.
    unsafe {
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            std::env::remove_var(v);
        }
    }
    if fds.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (fd, name) in fds {
        // SAFETY: systemd passed us this descriptor (LISTEN_PID matched our pid) and nothing else in
        // the process owns it.
        out.push(unsafe { Listener::adopt(fd, &format!("socket-activated fd {fd} ({name})"))? });
    }
    Ok(Some(out))
}
