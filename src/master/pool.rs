//! The pool's bookkeeping: how many slots, when an empty slot may be refilled, and when to give up.
//! Which worker holds a slot is in the master's record of that worker, not here.
//!
//! A worker that dies within [`QUICK_DEATH`] of starting, or before it reported ready, is refilled after
//! a back-off that starts at 100 ms and doubles up to 10 s; a worker that lived longer is replaced at
//! once. Deaths before ready are boot failures; when every slot has [`GIVE_UP_AFTER`] of them in a row
//! and none has come up, the master stops instead of looping forever.

use std::time::{Duration, Instant};

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

/// One slot of the pool: its restart history. Which worker holds it is the master's record of that
/// worker (see `Child` in the master).
#[derive(Debug, Clone)]
pub struct Slot {
    /// Consecutive quick deaths, for the back-off.
    pub crashes: u32,
    /// Consecutive deaths before ready.
    pub boot_failures: u32,
    /// When the (empty) slot may be refilled; `None` while a worker holds it, or while the caller
    /// forks its replacement itself.
    pub refill_at: Option<Instant>,
    /// The last boot error a worker of this slot reported.
    pub last_error: Option<String>,
}

impl Slot {
    /// An empty slot, due for a fork at `now`.
    fn empty(now: Instant) -> Slot {
        Slot {
            crashes: 0,
            boot_failures: 0,
            refill_at: Some(now),
            last_error: None,
        }
    }
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

    /// A live, ready worker is back in `slot` (an aborted replacement keeps its old worker): its
    /// history starts over and no refill is due.
    pub fn reattach(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.refill_at = None;
        s.crashes = 0;
        s.boot_failures = 0;
    }

    /// Adds `n` empty slots, due now.
    pub fn grow(&mut self, n: usize, now: Instant) {
        self.slots.extend(std::iter::repeat_n(Slot::empty(now), n));
    }

    /// Removes the slots from `size` on (the caller stops their workers).
    pub fn truncate(&mut self, size: usize) {
        self.slots.truncate(size);
    }

    /// Records a fork into `slot`.
    pub fn spawned(&mut self, slot: usize) {
        self.slots[slot].refill_at = None;
    }

    /// The worker of `slot` left it (a silent worker being killed): refill it from `now` on.
    pub fn vacate(&mut self, slot: usize, now: Instant) {
        self.slots[slot].refill_at = Some(now);
    }

    /// Records a failed fork: retry after the back-off.
    pub fn fork_failed(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        s.crashes += 1;
        s.refill_at = Some(now + backoff(s.crashes));
    }

    /// Records that the worker of `slot` reported ready.
    pub fn ready(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        s.boot_failures = 0;
        s.last_error = None;
    }

    /// Records a boot error text for `slot`.
    pub fn boot_error(&mut self, slot: usize, text: String) {
        self.slots[slot].last_error = Some(text);
    }

    /// Records the death of the worker of `slot`, which lived `lived` and had reported ready or not;
    /// schedules the refill unless `refill` is false (shutting down). Returns the back-off before
    /// the refill.
    pub fn died(
        &mut self,
        slot: usize,
        lived: Duration,
        was_ready: bool,
        now: Instant,
        refill: bool,
    ) -> Duration {
        let s = &mut self.slots[slot];
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
        delay
    }

    /// Empty slots whose refill time has come.
    pub fn due(&self, now: Instant) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].refill_at.is_some_and(|t| t <= now))
            .collect()
    }

    /// The earliest pending refill.
    pub fn next_refill(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.refill_at).min()
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

    const LONG: Duration = Duration::from_secs(5);

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
        pool.spawned(0);
        pool.spawned(1);
        pool.ready(1);
        let delay = pool.died(1, LONG, true, t0 + LONG, true);
        assert_eq!(delay, Duration::ZERO);
        assert_eq!(pool.due(t0 + LONG), vec![1]);
    }

    #[test]
    fn boot_failures_back_off_then_give_up() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        let mut now = t0;
        for round in 1..=GIVE_UP_AFTER {
            for slot in pool.due(now) {
                pool.spawned(slot);
                pool.boot_error(slot, "boom".into());
                let delay = pool.died(slot, Duration::ZERO, false, now, true);
                assert_eq!(delay, backoff(round));
            }
            assert_eq!(pool.gave_up(), round == GIVE_UP_AFTER);
            now = pool.next_refill().unwrap();
        }
        assert_eq!(pool.last_error(), Some((0, "boom")));
    }

    #[test]
    fn occupied_grow_truncate() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        pool.spawned(0);
        pool.spawned(1);
        assert!(
            pool.due(t0).is_empty(),
            "a held slot (or one whose replacement the caller forks) is not refilled"
        );
        pool.grow(1, t0);
        assert_eq!(pool.due(t0), vec![2]);
        pool.truncate(1);
        assert_eq!(pool.size(), 1);
        assert!(pool.due(t0).is_empty());
    }

    #[test]
    fn one_healthy_slot_prevents_giving_up() {
        let t0 = Instant::now();
        let mut pool = Pool::new(2, t0);
        pool.spawned(1);
        pool.ready(1);
        for _ in 0..10 {
            pool.spawned(0);
            pool.died(0, Duration::ZERO, false, t0, true);
        }
        assert!(!pool.gave_up());
    }

    #[test]
    fn a_reattached_slot_starts_its_history_over() {
        let t0 = Instant::now();
        let mut pool = Pool::new(1, t0);
        for _ in 0..GIVE_UP_AFTER {
            pool.spawned(0);
            pool.died(0, Duration::ZERO, false, t0, true);
        }
        assert!(pool.gave_up());
        pool.reattach(0);
        assert!(!pool.gave_up());
        assert!(pool.due(t0).is_empty());
        assert_eq!(pool.died(0, LONG, true, t0, true), Duration::ZERO);
    }
}
