//! The master's live changes of the pool: `SIGHUP` reloads (re-read the configuration, replace the
//! workers slot by slot, each new worker ready before the old one stops) and `SIGTTIN` / `SIGTTOU`.

use std::time::Instant;

use super::{Master, Reload};
use crate::jobs::Job;
use crate::master::pool::GIVE_UP_AFTER;

impl Master<'_> {
    /// `SIGTTIN` (+1) / `SIGTTOU` (-1).
    pub(super) fn resize(&mut self, delta: i32) {
        if self.reload.is_some() {
            tracing::warn!(
                "resize ignored: a reload is in progress; send the signal again after it"
            );
            return;
        }
        let size = self.pool.size();
        if delta > 0 {
            self.pool.grow(1, Instant::now());
            tracing::info!("SIGTTIN: workers {size} -> {}", size + 1);
        } else if size <= 1 {
            tracing::warn!("SIGTTOU ignored: the pool keeps at least 1 worker");
        } else {
            self.shrink_pool(size - 1);
            tracing::info!(
                "SIGTTOU: workers {size} -> {}, stopping slot {}",
                size - 1,
                size - 1
            );
        }
        self.announced_ready = false;
    }

    /// `SIGHUP`: re-read the configuration and start replacing workers.
    pub(super) fn begin_reload(&mut self) {
        if self.reload.is_some() {
            tracing::info!("SIGHUP: a reload is in progress; another one follows it");
            self.reload_pending = true;
            return;
        }
        self.notifier.reloading();
        let new = match (self.args.reload)() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("reload rejected, the current workers keep serving: {e}");
                let status = self.status_line();
                self.notifier.ready(&status);
                return;
            }
        };
        let specs: Vec<_> = new.settings.binds.iter().map(|b| b.value.clone()).collect();
        let mut changes = Vec::new();
        if specs != self.args.binds {
            // Bind new addresses before any old worker stops. Addresses kept from the old
            // configuration keep their sockets; dropped ones close once the old workers are gone.
            let added: Vec<_> = specs
                .iter()
                .filter(|s| !self.args.binds.contains(s))
                .cloned()
                .collect();
            let fresh = match crate::shared::listener::bind_all(
                &added,
                new.settings.backlog,
                new.settings.socket_mode,
            ) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("reload rejected, the current workers keep serving: {e}");
                    let status = self.status_line();
                    self.notifier.ready(&status);
                    return;
                }
            };
            let mut listeners = Vec::new();
            for l in std::mem::take(&mut self.args.listeners) {
                if specs.iter().any(|b| l.serves(b)) {
                    listeners.push(l);
                } else {
                    self.retired_listeners.push(l);
                }
            }
            for l in &fresh {
                tracing::info!("reload: listening on {}", l.describe());
            }
            listeners.extend(fresh);
            changes.push(format!(
                "listen {} -> {}",
                join(&self.args.binds),
                join(&specs)
            ));
            self.args.listeners = listeners;
            self.args.binds = specs;
        }
        if new.settings.backlog != self.args.backlog {
            changes.push("backlog changes apply to new sockets only".to_string());
            self.args.backlog = new.settings.backlog;
        }
        if new.settings.socket_mode != self.args.socket_mode {
            changes.push(format!(
                "socket mode {:04o} -> {:04o}, for new unix sockets only",
                self.args.socket_mode, new.settings.socket_mode
            ));
            self.args.socket_mode = new.settings.socket_mode;
        }
        if new.plan.workers != self.pool.size() {
            changes.push(format!(
                "workers {} -> {}",
                self.pool.size(),
                new.plan.workers
            ));
        }
        if new.settings.threads != self.args.threads {
            changes.push(format!(
                "threads {} -> {}",
                self.args.threads, new.settings.threads
            ));
        }
        if new.settings.graceful_timeout != self.args.graceful_timeout {
            changes.push(format!(
                "graceful timeout {} -> {}",
                humantime::format_duration(self.args.graceful_timeout),
                humantime::format_duration(new.settings.graceful_timeout)
            ));
        }
        let names = |jobs: &[Job]| {
            jobs.iter()
                .map(|j| format!("{} ({})", j.name, j.schedule))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if names(&new.jobs) != names(&self.args.jobs) {
            changes.push(format!(
                "jobs [{}] -> [{}]",
                names(&self.args.jobs),
                names(&new.jobs)
            ));
        }
        let limits = new.settings.limits();
        if limits != self.args.limits {
            changes.push(format!("limits {:?} -> {limits:?}", self.args.limits));
        }
        let health = new.settings.health();
        if health != self.args.health {
            changes.push(format!("health {:?} -> {health:?}", self.args.health));
        }
        self.args.limits = limits;
        self.args.health = health;
        self.args.threads = new.settings.threads;
        self.args.graceful_timeout = new.settings.graceful_timeout;
        self.args.jobs = new.jobs;
        self.generation += 1;
        tracing::info!(
            "SIGHUP: reloading into generation {} ({})",
            self.generation,
            if changes.is_empty() {
                "no setting changed".to_string()
            } else {
                changes.join("; ")
            }
        );
        self.reload = Some(Reload {
            slot: 0,
            end: new.plan.workers,
            new_size: new.plan.workers,
            recycle: false,
        });
        self.step_reload();
    }

    /// Stops a reload whose new worker keeps failing to boot; the slot keeps its old worker.
    pub(super) fn abort_failed_reload(&mut self) {
        let Some(r) = self.reload.as_ref() else {
            return;
        };
        let slot = r.slot;
        if slot >= self.pool.size() || self.pool.slot(slot).boot_failures < GIVE_UP_AFTER {
            return;
        }
        let error = self
            .pool
            .slot(slot)
            .last_error
            .clone()
            .unwrap_or_else(|| "no error reported".into());
        let recycle = r.recycle;
        self.reload = None;
        if let Some(pid) = self.holder_of(slot) {
            self.kill_now(pid);
        }
        match self.replaced_in(slot) {
            Some(old) => self.reattach(slot, old),
            None => self.pool.fork_failed(slot, Instant::now()),
        }
        if recycle {
            tracing::error!(
                "recycling aborted: the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} times \
                 ({error}); the old worker keeps serving"
            );
            return;
        }
        self.reload_pending = false;
        tracing::error!(
            "reload aborted: the new worker of slot {slot} failed to boot {GIVE_UP_AFTER} times ({error}); \
             slot {slot} and the slots after it keep their old workers"
        );
        let status = self.status_line();
        self.notifier.ready(&status);
    }

    /// Replaces the next slot, or finishes the reload.
    pub(super) fn step_reload(&mut self) {
        let Some(r) = self.reload.as_mut() else {
            return;
        };
        if r.slot >= r.end {
            let (new_size, recycle, recycled) = (r.new_size, r.recycle, r.end.saturating_sub(1));
            self.shrink_pool(new_size);
            self.reload = None;
            if recycle {
                tracing::info!("worker {recycled} recycled");
            } else {
                tracing::info!(
                    "reload complete: generation {}, {} workers",
                    self.generation,
                    new_size
                );
            }
            if recycle && !self.reload_pending {
                return;
            }
            if std::mem::take(&mut self.reload_pending) {
                self.begin_reload();
            } else {
                let status = self.status_line();
                self.notifier.ready(&status);
            }
            return;
        }
        let slot = r.slot;
        if slot >= self.pool.size() {
            self.pool.grow(slot + 1 - self.pool.size(), Instant::now());
        }
        self.replace_holder(slot);
        self.spawn(slot);
    }
}

fn join(specs: &[crate::shared::listener::BindSpec]) -> String {
    specs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
