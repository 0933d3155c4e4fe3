//! The pool's bookkeeping: which pid holds which slot, when an empty slot may be refilled, and when to
//! give up.
//!
//! A worker that dies within [`QUICK_DEATH`] of starting, or before it reported ready, is refilled after
//! a back-off that starts at 100 ms and doubles up to 10 s; a worker that lived longer is replaced at
//! once. Deaths before ready are boot failures; when every slot has [`GIVE_UP_AFTER`] of them in a row
//! and none has come up, the master stops instead of looping forever.

use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// A death this soon after the fork counts as a crash for the back-off.
pub const QUICK_DEATH: Duration = Duration::from_secs(1);
/// First back-off delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest back-off delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Consecutive boot failures, in every slot, after which the master gives up.
pub const GIVE_UP_AFTER: u32 = 5;

/// The back-off before refilling a slot after `crashes` consecutive quick deaths (≥ 1).
pub fn backoff(crashes: u32) -> Duration {
    let exp = crashes.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// One slot of the pool.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The live worker, if any.
    pub pid: Option<Pid>,
    /// When the live (or last) worker was forked.
    pub started: Instant,
    /// Whether the live worker reported ready.
    pub ready: bool,
    /// Consecutive quick deaths, for the back-off.
    pub crashes: u32,
    /// Consecutive deaths before ready.
    pub boot_failures: u32,
    /// When an empty slot may be refilled.
    pub refill_at: Option<Instant>,
    /// The last boot error a worker of this slot reported.
    pub last_error: Option<String>,
}

impl Slot {
    /// An empty slot, due for a fork at `now`.
    fn empty(now: Instant) -> Slot {
        Slot {
            pid: None,
            started: now,
            ready: false,
            crashes: 0,
            boot_failures: 0,
            refill_at: Some(now),
            last_error: None,
        }
    }
}

/// What the pool decided about a dead worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// Its slot.
    pub slot: usize,
    /// How long it lived.
    pub lived: Duration,
    /// Whether it had reported ready.
    pub was_ready: bool,
    /// The delay before the slot is refilled.
    pub delay: Duration,
}

/// All slots.
#[derive(Debug)]
pub struct Pool {
    slots: Vec<Slot>,
}

impl Pool {
    /// A pool of `size` empty slots, all due now.
    pub fn new(size: usize, now: Instant) -> Pool {
        Pool {
            slots: vec![Slot::empty(now); size],
        }
    }

    /// Number of slots.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// A slot's state.
    pub fn slot(&self, slot: usize) -> &Slot {
        &self.slots[slot]
    }

    /// The slot a pid holds.
    pub fn slot_of(&self, pid: Pid) -> Option<usize> {
        self.slots.iter().position(|s| s.pid == Some(pid))
    }

    /// Live worker pids.
    pub fn live(&self) -> Vec<Pid> {
        self.slots.iter().filter_map(|s| s.pid).collect()
    }

    /// Detaches the live worker of `slot` (being replaced by a reload) and leaves the slot empty with
    /// no refill scheduled; the caller forks its replacement. Returns the detached pid.
    pub fn detach(&mut self, slot: usize) -> Option<Pid> {
        let s = &mut self.slots[slot];
        s.ready = false;
        s.refill_at = None;
        s.pid.take()
    }

    /// Puts a live, ready worker back into `slot` (an aborted reload keeps its old worker).
    pub fn reattach(&mut self, slot: usize, pid: Pid) {
        let s = &mut self.slots[slot];
        s.pid = Some(pid);
        s.ready = true;
        s.refill_at = None;
        s.crashes = 0;
        s.boot_failures = 0;
    }

    /// Adds `n` empty slots, due now.
    pub fn grow(&mut self, n: usize, now: Instant) {
        self.slots.extend(std::iter::repeat_n(Slot::empty(now), n));
    }

    /// Removes the slots from `size` on; returns their live pids (to be stopped by the caller).
    pub fn truncate(&mut self, size: usize) -> Vec<Pid> {
        if size >= self.slots.len() {
            return Vec::new();
        }
        self.slots.drain(size..).filter_map(|s| s.pid).collect()
    }

    /// Whether every slot has a ready worker.
    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| s.ready)
    }

    /// Slots with a ready worker.
    pub fn ready_count(&self) -> usize {
        self.slots.iter().filter(|s| s.ready).count()
    }

    /// Records a fork into `slot`.
    pub fn spawned(&mut self, slot: usize, pid: Pid, now: Instant) {
        let s = &mut self.slots[slot];
        s.pid = Some(pid);
        s.started = now;
        s.ready = false;
        s.refill_at = None;
    }

    /// Records a failed fork: retry after the back-off.
    pub fn fork_failed(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        s.crashes += 1;
        s.refill_at = Some(now + backoff(s.crashes));
    }

    /// Records a ready message; returns the slot if the pid is ours.
    pub fn ready(&mut self, pid: Pid) -> Option<usize> {
        let slot = self.slot_of(pid)?;
        let s = &mut self.slots[slot];
        s.ready = true;
        s.boot_failures = 0;
        s.last_error = None;
        Some(slot)
    }

    /// Records a boot error text for the pid's slot.
    pub fn boot_error(&mut self, pid: Pid, text: String) -> Option<usize> {
        let slot = self.slot_of(pid)?;
        self.slots[slot].last_error = Some(text);
        Some(slot)
    }

    /// Records a death; schedules the refill unless `refill` is false (shutting down).
    pub fn died(&mut self, pid: Pid, now: Instant, refill: bool) -> Option<Death> {
        let slot = self.slot_of(pid)?;
        let s = &mut self.slots[slot];
        let lived = now.saturating_duration_since(s.started);
        let was_ready = s.ready;
        s.pid = None;
        s.ready = false;
        if !was_ready {
            s.boot_failures += 1;
        }
        let delay = if lived < QUICK_DEATH || !was_ready {
            s.crashes += 1;
            backoff(s.crashes)
        } else {
            s.crashes = 0;
            Duration::ZERO
        };
        s.refill_at = refill.then_some(now + delay);
        Some(Death {
            slot,
            lived,
            was_ready,
            delay,
        })
    }

    /// Empty slots whose refill time has come.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.pid.is_none() && s.refill_at.is_some_and(|t| t <= now)
            })
            .collect()
    }

    /// The earliest pending refill.
    pub fn next_refill(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.pid.is_none())
            .filter_map(|s| s.refill_at)
            .min()
    }

    /// Whether every slot has failed to boot [`GIVE_UP_AFTER`] times in a row.
    pub fn gave_up(&self) -> bool {
        !self.slots.is_empty() && self.slots.iter().all(|s| s.boot_failures >= GIVE_UP_AFTER)
    }

    /// The most recent boot error of any slot, with its slot.
    pub fn last_error(&self) -> Option<(usize, &str)> {
        self.slots
            .iter()
            .enumerate()
            .find_map(|(i, s)| s.last_error.as_deref().map(|e| (i, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(8), Duration::from_secs(10));
        assert_eq!(backoff(1000), Duration::from_secs(10));
    }

    #[test]
    fn long_lived_worker_is_replaced_at_once_in_its_slot() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        pool.spawned(0, Pid::from_raw(10), t0);
        pool.spawned(1, Pid::from_raw(11), t0);
        assert_eq!(pool.ready(Pid::from_raw(11)), Some(1));
        let d = pool
            .died(Pid::from_raw(11), t0 + Duration::from_secs(5), true)
            .unwrap();
        assert_eq!((d.slot, d.delay), (1, Duration::ZERO));
        assert_eq!(pool.due(t0 + Duration::from_secs(5)), vec![1]);
    }

    #[test]
    fn boot_failures_back_off_then_give_up() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        let mut now = t0;
        let mut pid = 100;
        for round in 1..=GIVE_UP_AFTER {
            for slot in pool.due(now) {
                pool.spawned(slot, Pid::from_raw(pid), now);
                pool.boot_error(Pid::from_raw(pid), "boom".into());
                let d = pool.died(Pid::from_raw(pid), now, true).unwrap();
                assert_eq!(d.delay, backoff(round));
                pid += 1;
            }
            assert_eq!(pool.gave_up(), round == GIVE_UP_AFTER);
            now = pool.next_refill().unwrap();
        }
        assert_eq!(pool.last_error(), Some((0, "boom")));
    }

    #[test]
    fn detach_grow_truncate() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        pool.spawned(0, Pid::from_raw(1), t0);
        pool.spawned(1, Pid::from_raw(2), t0);
        assert_eq!(pool.detach(0), Some(Pid::from_raw(1)));
        assert!(
            pool.due(t0).is_empty(),
            "a detached slot is refilled by the caller"
        );
        pool.grow(1, t0);
        assert_eq!(pool.due(t0), vec![2]);
        assert_eq!(pool.truncate(1), vec![Pid::from_raw(2)]);
        assert_eq!(pool.size(), 1);
    }

    #[test]
    fn one_healthy_slot_prevents_giving_up() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        pool.spawned(1, Pid::from_raw(1), t0);
        pool.ready(Pid::from_raw(1));
        for i in 0..10 {
            pool.spawned(0, Pid::from_raw(100 + i), t0);
            pool.died(Pid::from_raw(100 + i), t0, true);
        }
        assert!(!pool.gave_up());
    }
}
