//! `--reload`, the master's side: what a settled change (see [`crate::master::watch`]) becomes.
//!
//! A new build of the executable starts a binary upgrade (the `SIGUSR2` path: the new master takes
//! over once its workers are ready, so no request is dropped, and a build that fails to start leaves
//! this master serving until the next build); any other change starts a reload (the `SIGHUP` path).
//! A change waits while an upgrade is under way, and a new build also while a reload is; a master
//! that is shutting down (a finished upgrade included) stops watching. A reload watches what its new
//! settings name from then on. A pool whose every worker keeps failing to boot does not end the master
//! as it otherwise would: it keeps retrying (at the longest back-off) until a build or a change fixes it.

use std::time::Instant;

use super::Master;
use crate::master::watch::{Change, Spec, Watcher};

/// The watcher and the change it reported that waits for its turn.
#[derive(Debug)]
pub(super) struct DevReload {
    watcher: Watcher,
    /// A settled change not acted on yet.
    waiting: Option<Change>,
    /// Whether the wait was logged.
    logged: bool,
    /// Whether the pool's giving up was logged.
    stuck_logged: bool,
}

impl DevReload {
    /// Starts watching what `spec` names, and says so.
    pub fn start(spec: Spec, now: Instant) -> std::io::Result<DevReload> {
        let watcher = Watcher::new(spec, now)?;
        let s = watcher.spec();
        let mut what: Vec<String> = s.exe.iter().map(|e| e.display().to_string()).collect();
        what.extend(s.files.iter().map(|f| f.display().to_string()));
        if !s.dirs.is_empty() {
            let dirs: Vec<String> = s.dirs.iter().map(|d| d.display().to_string()).collect();
            what.push(format!(
                "{} ({} directories)",
                dirs.join(", "),
                watcher.tree_dirs()
            ));
        }
        tracing::info!(
            "--reload: watching {}; a new build is swapped in by a binary upgrade, any other change \
             reloads the workers (after {} of quiet)",
            if what.is_empty() {
                "nothing".to_string()
            } else {
                what.join(", ")
            },
            humantime::format_duration(s.delay)
        );
        Ok(DevReload {
            watcher,
            waiting: None,
            logged: false,
            stuck_logged: false,
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.watcher.fd()
    }

    /// The descriptor, for a forked worker to close.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.watcher.raw_fd()
    }

    /// When the watcher has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.watcher.deadline()
    }
}

impl Master<'_> {
    /// Reads the watcher and acts on a settled change when nothing it must wait for is under way.
    pub(super) fn drive_watch(&mut self, now: Instant) {
        if self.shutting_down() {
            if self.dev.take().is_some() {
                tracing::debug!("--reload: shutting down; no longer watching files");
            }
            return;
        }
        let upgrading = self.upgrading();
        let reloading = self.replacement().is_some();
        let stuck = self.pool.gave_up();
        let Some(dev) = self.dev.as_mut() else {
            return;
        };
        dev.stuck_logged &= stuck;
        dev.watcher.read(now);
        if let Some(c) = dev.watcher.due(now) {
            match dev.waiting.as_mut() {
                Some(w) => w.merge(c),
                None => dev.waiting = Some(c),
            }
        }
        let Some(change) = dev.waiting.as_ref() else {
            return;
        };
        let busy = if upgrading {
            Some("a binary upgrade")
        } else if change.exe && reloading {
            Some("a reload")
        } else {
            None
        };
        if let Some(what) = busy {
            if !dev.logged {
                tracing::info!("--reload: {what} is in progress; the change waits for it");
                dev.logged = true;
            }
            return;
        }
        dev.logged = false;
        let Some(change) = dev.waiting.take() else {
            return;
        };
        if change.exe {
            let exe = dev
                .watcher
                .spec()
                .exe
                .as_deref()
                .map_or_else(String::new, |e| e.display().to_string());
            tracing::info!("--reload: {exe} is a new build; swapping it in by a binary upgrade");
            if self.begin_upgrade() {
                if let Some(dev) = self.dev.as_mut() {
                    tracing::info!(
                        "--reload: {exe} is still open for writing; trying again shortly"
                    );
                    dev.watcher.try_again(now);
                }
            }
        } else {
            tracing::info!(
                "--reload: {} changed; reloading the workers",
                change.describe_files()
            );
            self.begin_reload();
        }
    }

    /// With `--reload`, a pool whose every worker failed to boot [`GIVE_UP_AFTER`] times in a row
    /// keeps the master up, waiting for a build or a change that fixes it (says so once); without,
    /// `false`: the master gives up.
    ///
    /// [`GIVE_UP_AFTER`]: crate::master::pool::GIVE_UP_AFTER
    pub(super) fn waiting_for_a_fix(&mut self) -> bool {
        let Some(dev) = self.dev.as_mut() else {
            return false;
        };
        if !dev.stuck_logged {
            dev.stuck_logged = true;
            let cause = self
                .pool
                .last_error()
                .map_or_else(String::new, |(slot, e)| format!(" (worker {slot}: {e})"));
            tracing::error!(
                "every worker failed to boot {} times in a row{cause}; --reload keeps the master up \
                 and retrying: fix it and build again, or change the config",
                crate::master::pool::GIVE_UP_AFTER
            );
        }
        true
    }

    /// What a reload's new settings ask to watch; an error (a `--reload-dir` that is not a
    /// directory) rejects the reload.
    pub(super) fn watch_spec(
        &self,
        settings: &crate::config::Settings,
    ) -> Result<Option<Spec>, String> {
        let exe = self.args.program.as_ref().map(|p| p.exe());
        Spec::of(settings, exe)
    }

    /// Watches what `spec` names from now on (nothing for `None`); returns the change to log.
    pub(super) fn rewatch(&mut self, spec: Option<Spec>) -> Vec<String> {
        let current = self.dev.as_ref().map(|d| d.watcher.spec());
        if current == spec.as_ref() {
            return Vec::new();
        }
        let Some(spec) = spec else {
            self.dev = None;
            return vec!["--reload off: no longer watching files".into()];
        };
        match DevReload::start(spec, Instant::now()) {
            Ok(d) => {
                self.dev = Some(d);
                vec!["--reload: watching the new settings' files".into()]
            }
            Err(e) => {
                tracing::error!("--reload: cannot watch files ({e}); keeping the current watch");
                Vec::new()
            }
        }
    }
}
