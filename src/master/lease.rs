//! The scheduler lease, as the master keeps it: who may run scheduled jobs, and which ticks have run.
//!
//! # Why jobs never run twice
//!
//! Exactly one process at a time may schedule: the master grants the lease to the ready worker of
//! slot 0 over that worker's private order pipe, and grants it again only after the holder is gone —
//! reaped by `waitpid`, or, when it is being retired while still alive (a reload), after it answered
//! [`crate::shared::control::Message::Released`], which it sends once it stopped scheduling and every run it
//! started has ended. Command jobs die with their worker (`PR_SET_PDEATHSIG`), so a holder killed with
//! `SIGKILL` leaves no run behind.
//!
//! Before a holder starts a tick's run it reports the tick to the master with one atomic write to the
//! control pipe. The master records it as the job's last tick and passes the record to the next holder
//! with the grant, so the next holder starts after it: no tick is started twice. When a holder dies the
//! master drains the control pipe once more after reaping it (the death happened after its last write,
//! so every report it made is in the pipe by then) before granting again.
//!
//! A binary upgrade (`SIGUSR2`) hands the lease from one master to the next the same way: the new
//! master starts with the lease held elsewhere ([`Lease::held_by_predecessor`]) and grants nothing
//! until the old master's holder is gone and the old master sent its record ([`Lease::adopt`]).
//!
//! Ticks that fell due between two holders are handled by [`crate::jobs::schedule::catch_up`] in the new
//! holder: the latest runs once if it is within the job's misfire grace, earlier ones coalesce into it.

use std::collections::BTreeMap;

use nix::unistd::Pid;

use crate::shared::control::Order;

/// The master's view of the lease.
#[derive(Debug, Clone)]
pub struct Lease {
    anchor_ms: i64,
    last_ticks: BTreeMap<String, i64>,
    holder: Option<Pid>,
    /// The previous master's worker may still hold the lease (binary upgrade).
    elsewhere: bool,
}

impl Lease {
    /// A lease nobody holds; interval ticks count from `anchor_ms`.
    pub fn new(anchor_ms: i64) -> Lease {
        Lease {
            anchor_ms,
            last_ticks: BTreeMap::new(),
            holder: None,
            elsewhere: false,
        }
    }

    /// A lease the previous master still holds: nothing is granted before [`Lease::adopt`].
    pub fn held_by_predecessor(anchor_ms: i64) -> Lease {
        Lease {
            elsewhere: true,
            ..Lease::new(anchor_ms)
        }
    }

    /// Whether the previous master still holds the lease.
    pub fn is_held_elsewhere(&self) -> bool {
        self.elsewhere
    }

    /// Takes over the previous master's record; `None` when that master is gone without sending one
    /// (its workers died with it, so the lease is free, and ticks restart from this master's anchor).
    pub fn adopt(&mut self, record: Option<(i64, BTreeMap<String, i64>)>) {
        if let Some((anchor_ms, last_ticks)) = record {
            self.anchor_ms = anchor_ms;
            for (job, tick) in last_ticks {
                let last = self.last_ticks.entry(job).or_insert(tick);
                *last = (*last).max(tick);
            }
        }
        self.elsewhere = false;
    }

    /// The record to hand to the next master: the anchor and each job's last started tick.
    pub fn record(&self) -> Order {
        Order::Grant {
            anchor_ms: self.anchor_ms,
            last_ticks: self.last_ticks.clone(),
        }
    }

    /// Where interval ticks count from, Unix milliseconds.
    pub fn anchor_ms(&self) -> i64 {
        self.anchor_ms
    }

    /// The current holder.
    pub fn holder(&self) -> Option<Pid> {
        self.holder
    }

    /// Whether the lease can be granted now.
    pub fn is_free(&self) -> bool {
        self.holder.is_none() && !self.elsewhere
    }

    /// Records that `pid` now holds the lease and returns the grant to send it.
    pub fn grant(&mut self, pid: Pid) -> Order {
        debug_assert!(self.holder.is_none());
        self.holder = Some(pid);
        self.record()
    }

    /// Undoes a grant that could not be delivered.
    pub fn grant_failed(&mut self, pid: Pid) {
        if self.holder == Some(pid) {
            self.holder = None;
        }
    }

    /// A holder reports a tick's start. Returns `false` (and records nothing) if `pid` is not the
    /// holder: that would be a bug worth logging.
    pub fn job_started(&mut self, pid: Pid, job: &str, tick_ms: i64) -> bool {
        if self.holder != Some(pid) {
            return false;
        }
        let last = self.last_ticks.entry(job.to_string()).or_insert(tick_ms);
        *last = (*last).max(tick_ms);
        true
    }

    /// The holder released the lease, or died. Frees it if `pid` is the holder.
    pub fn ended(&mut self, pid: Pid) -> bool {
        if self.holder == Some(pid) {
            self.holder = None;
            true
        } else {
            false
        }
    }

    /// The last started tick of `job`.
    #[cfg(test)]
    pub fn last_tick(&self, job: &str) -> Option<i64> {
        self.last_ticks.get(job).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_ticks_carry_over() {
        let mut l = Lease::new(1000);
        let a = Pid::from_raw(10);
        let b = Pid::from_raw(11);
        assert!(l.is_free());
        assert_eq!(
            l.grant(a),
            Order::Grant {
                anchor_ms: 1000,
                last_ticks: BTreeMap::new()
            }
        );
        assert!(!l.is_free());
        assert!(l.job_started(a, "j", 2000));
        assert!(
            !l.job_started(b, "j", 3000),
            "a non-holder's report is refused"
        );
        assert!(!l.ended(b));
        assert!(l.ended(a));
        let Order::Grant { last_ticks, .. } = l.grant(b);
        assert_eq!(last_ticks.get("j"), Some(&2000));
    }

    #[test]
    fn last_tick_never_goes_back() {
        let mut l = Lease::new(0);
        let a = Pid::from_raw(10);
        l.grant(a);
        l.job_started(a, "j", 5000);
        l.job_started(a, "j", 4000);
        assert_eq!(l.last_tick("j"), Some(5000));
    }

    #[test]
    fn a_lease_held_by_the_previous_master_is_granted_only_after_adoption() {
        let mut old = Lease::new(1000);
        let a = Pid::from_raw(10);
        old.grant(a);
        old.job_started(a, "j", 7000);
        assert!(old.ended(a));
        let Order::Grant {
            anchor_ms,
            last_ticks,
        } = old.record();
        let mut new = Lease::held_by_predecessor(5000);
        assert!(!new.is_free());
        new.adopt(Some((anchor_ms, last_ticks)));
        assert!(new.is_free());
        assert_eq!(new.last_tick("j"), Some(7000));
        assert_eq!(
            new.grant(Pid::from_raw(20)),
            Order::Grant {
                anchor_ms: 1000,
                last_ticks: BTreeMap::from([("j".to_string(), 7000)])
            }
        );
    }

    #[test]
    fn a_lease_whose_previous_master_vanished_is_free_after_adoption() {
        let mut l = Lease::held_by_predecessor(5000);
        l.adopt(None);
        assert!(l.is_free());
        let Order::Grant { anchor_ms, .. } = l.grant(Pid::from_raw(1));
        assert_eq!(anchor_ms, 5000);
    }

    #[test]
    fn release_frees() {
        let mut l = Lease::new(0);
        let a = Pid::from_raw(10);
        l.grant(a);
        assert!(!l.is_free());
        assert!(!l.ended(Pid::from_raw(11)), "not the holder");
        assert!(l.ended(a));
        assert!(l.is_free());
    }
}
