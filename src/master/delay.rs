//! The shutdown delay (`--shutdown-delay`): between `SIGTERM` and the drain, a time during which the
//! pool keeps accepting and serving while telling load balancers it is going away.
//!
//! At `SIGTERM` with a delay, the master marks the pool draining in the shared table (every worker's
//! `--readiness-path` answers 503 from then on, see `worker::readiness`), sends systemd
//! `STOPPING=1`, and keeps the pool as it was: dead workers are still replaced, the scheduler keeps
//! running. Live changes (reload, upgrade, resize) are refused as during a shutdown. When the delay
//! is over, the graceful shutdown starts as it would have at `SIGTERM`. A second `SIGTERM` (or `ctl
//! stop`) skips the rest of the delay; `SIGINT` and `SIGQUIT` stop fast at once, as always.
//!
//! While the delay runs, `EXTEND_TIMEOUT_USEC` asks systemd for what is left of it plus the graceful
//! timeout, so a short `TimeoutStopSec` cuts neither. No delay applies while a binary upgrade is
//! under way (the new master would take over the socket in the middle of it).

use std::time::{Duration, Instant};

use super::Master;

/// How much longer than the delay and the drain systemd is asked to wait.
pub(super) const EXTEND_MARGIN: Duration = Duration::from_secs(5);

/// A graceful shutdown waiting out the shutdown delay.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delayed {
    /// When the drain starts.
    pub drain_at: Instant,
    /// When `EXTEND_TIMEOUT_USEC` was last sent.
    extended: Option<Instant>,
}

impl Delayed {
    /// Whole seconds left, rounded up (what the status line and the title show).
    pub fn seconds_left(&self, now: Instant) -> u64 {
        let left = self.drain_at.saturating_duration_since(now);
        left.as_millis().div_ceil(1000) as u64
    }
}

impl Master<'_> {
    /// Whether the master is shutting down: draining, or waiting out the shutdown delay first.
    pub(super) fn shutting_down(&self) -> bool {
        self.is_stopping() || self.delayed.is_some()
    }

    /// `SIGTERM` with a shutdown delay: mark the pool draining and keep serving until the delay is
    /// over. Returns `false` (nothing started) when no delay applies.
    pub(super) fn begin_delay(&mut self) -> bool {
        let delay = self.args.shutdown_delay;
        if delay.is_zero() {
            return false;
        }
        if self.upgrading() {
            tracing::info!(
                "SIGTERM: a binary upgrade is in progress; draining at once, without the {} \
                 shutdown delay",
                humantime::format_duration(delay)
            );
            return false;
        }
        let now = Instant::now();
        self.notifier.stopping();
        self.stats.set_draining();
        self.delayed = Some(Delayed {
            drain_at: now + delay,
            extended: None,
        });
        let readiness = match &self.args.limits.readiness_path {
            Some(path) => format!("{path} answers 503"),
            None => "no --readiness-path to tell load balancers".to_string(),
        };
        tracing::info!(
            "SIGTERM: draining in {}, then waiting up to {} for in-flight requests; still serving \
             meanwhile, {readiness} (SIGTERM again: drain now)",
            humantime::format_duration(delay),
            humantime::format_duration(self.args.graceful_timeout)
        );
        self.extend_delay(now);
        true
    }

    /// The delay's turn: keep systemd waiting, and start the drain once the delay is over.
    pub(super) fn drive_delay(&mut self, now: Instant) {
        let Some(d) = self.delayed else {
            return;
        };
        if now >= d.drain_at {
            let why = format!(
                "shutdown delay ({}) over",
                humantime::format_duration(self.args.shutdown_delay)
            );
            self.drain(true, &why);
            return;
        }
        if d.extended.is_none_or(|t| now >= t + Duration::from_secs(1)) {
            self.extend_delay(now);
        }
    }

    /// `EXTEND_TIMEOUT_USEC` for what is left of the delay, the drain after it, and a margin.
    fn extend_delay(&mut self, now: Instant) {
        let Some(d) = self.delayed.as_mut() else {
            return;
        };
        let left = d.drain_at.saturating_duration_since(now);
        self.notifier
            .extend_timeout(left + self.args.graceful_timeout + EXTEND_MARGIN);
        d.extended = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_left_round_up() {
        let now = Instant::now();
        let d = Delayed {
            drain_at: now + Duration::from_millis(6_200),
            extended: None,
        };
        assert_eq!(d.seconds_left(now), 7);
        assert_eq!(d.seconds_left(now + Duration::from_secs(6)), 1);
        assert_eq!(d.seconds_left(now + Duration::from_secs(9)), 0);
    }
}
