//! The surge bound (`--max-surge S`): how many workers may be alive at once while a reload, a
//! recycle or a `SIGTTIN` replaces workers, so that a budget the pool shares (database connections)
//! holds during the change too.
//!
//! Each worker counts for `parts = n + s`: the pool size `n` it was forked for plus the surge `s`
//! allowed then; `Worker::share_of(total)` gives it `floor(total / parts)`. The master forks a worker
//! only if, with it, the number of live workers (booting, serving, replaced or draining) is at most
//! the smallest `parts` among them ([`fits`]). Then every live worker's share is at most
//! `total / min_parts`, and there are at most `min_parts` of them: the shares add up to at most
//! `total`. In a steady pool of `n` workers forked for `n`, that allows `n + s` workers: one slot's
//! new worker beside the old one with `s = 1`, and the next slot waits until that old worker has
//! exited, not merely been told to drain.
//!
//! The rest follows from it: `SIGTTOU` only stops a worker (the others keep the shares of a larger
//! pool); `SIGTTIN` first replaces every worker by one forked for the larger pool, then adds the slot
//! (adding it first would leave no room for any later replacement: `n + 1` live workers forked for
//! `n`, with `s = 1`); a reload that shrinks the pool stops the dropped slots before forking. Refills
//! of dead or silent workers wait for room as well.

use super::Master;

/// What a worker forked for a pool of `pool_size` with a surge of `max_surge` counts for.
pub(super) fn parts(pool_size: usize, max_surge: usize) -> usize {
    pool_size.saturating_add(max_surge)
}

/// Whether one more worker counting for `new` may start beside live workers counting for `live`:
/// the count with it is at most the smallest of all their parts.
pub(super) fn fits(live: impl IntoIterator<Item = usize>, new: usize) -> bool {
    let (count, least) = live
        .into_iter()
        .fold((0usize, new), |(n, least), p| (n + 1, least.min(p)));
    count < least
}

impl Master<'_> {
    /// The pool size a worker forked now is for: the size a replacement in progress leads to, else
    /// the pool's.
    pub(super) fn spawn_size(&self) -> usize {
        // While the memory guard waits, workers are forked for the size it may grant.
        let size = self.guard.wanted().unwrap_or(self.pool.size());
        self.replacement().map_or(size, |r| r.size)
    }

    /// Whether the surge bound allows forking one more worker now.
    pub(super) fn has_room(&self) -> bool {
        let new = parts(self.spawn_size(), self.args.max_surge);
        fits(self.children.values().map(|c| c.parts), new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::share::share;
    use crate::master::reload::{Replacement, Step};

    #[test]
    fn a_steady_pool_has_room_for_its_surge_and_no_more() {
        assert!(fits([4, 4, 4], 4), "3 + 1");
        assert!(!fits([4, 4, 4, 4], 4), "4 alive already");
        assert!(fits([6, 6, 6, 6, 6], 6), "3 + 3: a 6th");
        assert!(!fits([6; 6], 6));
        assert!(fits([], 1), "the first worker of a pool of 1");
    }

    #[test]
    fn the_smallest_parts_bound_the_count() {
        // After SIGTTOU 4 -> 3 (surge 1): 3 workers forked for 4, and the stopped one still draining.
        assert!(!fits([5, 5, 5, 5], 4), "the recycle waits for the drain");
        assert!(fits([5, 5, 5], 4), "then goes");
        // A reload into a smaller surge waits for the old workers of the larger one.
        assert!(!fits([6, 6, 6, 4], 4));
    }

    /// One simulated worker: what it counts for, and whether it still runs.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum State {
        Booting,
        Ready,
        Replaced,
        Draining,
    }

    #[derive(Debug, Clone, Copy)]
    struct Sim {
        slot: usize,
        parts: usize,
        state: State,
    }

    /// The master's replacement logic over simulated workers, checking after every event that the
    /// live workers' shares of every budget fit it, and that at most `size + surge` are alive.
    struct Model {
        workers: Vec<Sim>,
        pool: usize,
        surge: usize,
        most: usize,
        /// A simple generator choosing which event comes next.
        seed: u64,
    }

    impl Model {
        /// A steady pool of `n`, forked with `surge`.
        fn new(n: usize, surge: usize, seed: u64) -> Model {
            let workers = (0..n)
                .map(|slot| Sim {
                    slot,
                    parts: parts(n, surge),
                    state: State::Ready,
                })
                .collect();
            Model {
                workers,
                pool: n,
                surge,
                most: 0,
                seed,
            }
        }

        fn live(&self) -> impl Iterator<Item = &Sim> {
            self.workers.iter()
        }

        fn check(&mut self, bound: usize) {
            let count = self.workers.len();
            self.most = self.most.max(count);
            assert!(
                count <= bound,
                "{count} alive, bound {bound}: {:?}",
                self.workers
            );
            for total in [1, 7, 10, 29, 30, 31, 100, 1000] {
                let sum: usize = self
                    .live()
                    .filter_map(|w| share(total, w.parts, 0).ok())
                    .sum();
                let all_ok = self.live().all(|w| share(total, w.parts, 0).is_ok());
                if all_ok {
                    assert!(sum <= total, "{sum} > {total}: {:?}", self.workers);
                }
            }
        }

        fn next_random(&mut self) -> u64 {
            self.seed = self
                .seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.seed >> 33
        }

        /// Stops the slots from `size` on (SIGTTOU, a shrinking reload).
        fn shrink(&mut self, size: usize) {
            for w in &mut self.workers {
                if w.slot >= size && matches!(w.state, State::Booting | State::Ready) {
                    w.state = State::Draining;
                }
            }
            self.pool = size;
        }

        /// Starts every step the bound allows, as `Master::step_replacement` does.
        fn step(&mut self, r: &mut Replacement) {
            while r.next_step().is_some() {
                let new = parts(r.size, self.surge);
                if !fits(self.live().map(|w| w.parts), new) {
                    return;
                }
                let Some(step) = r.start_next() else { return };
                let slot = step.slot();
                for w in &mut self.workers {
                    if w.slot == slot && matches!(w.state, State::Booting | State::Ready) {
                        assert!(matches!(step, Step::Replace(_)), "{step:?} has a holder");
                        w.state = State::Replaced;
                    }
                }
                self.workers.push(Sim {
                    slot,
                    parts: new,
                    state: State::Booting,
                });
            }
        }

        /// Runs `r` to its end, events in a random order: a booting worker reports ready (its old
        /// one drains), or a draining one exits. Then waits for the drains.
        fn run(&mut self, mut r: Replacement, bound: usize) {
            self.step(&mut r);
            self.check(bound);
            loop {
                let booting: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].state == State::Booting)
                    .collect();
                let draining: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].state == State::Draining)
                    .collect();
                if booting.is_empty() && draining.is_empty() {
                    break;
                }
                let pick = self.next_random() as usize;
                let ready = draining.is_empty() || (!booting.is_empty() && pick % 2 == 0);
                if ready {
                    let i = booting[pick / 2 % booting.len()];
                    self.workers[i].state = State::Ready;
                    let slot = self.workers[i].slot;
                    if r.ready(slot) {
                        for w in &mut self.workers {
                            if w.slot == slot && w.state == State::Replaced {
                                w.state = State::Draining;
                            }
                        }
                    }
                } else {
                    let i = draining[pick / 2 % draining.len()];
                    self.workers.remove(i);
                }
                self.step(&mut r);
                self.check(bound);
            }
            assert!(r.is_done(), "stuck: {r:?} {:?}", self.workers);
            self.pool = r.size;
            assert_eq!(self.workers.len(), self.pool);
        }
    }

    #[test]
    fn reloads_resizes_and_recycles_keep_every_budget() {
        for seed in 0..40 {
            for n in 1..=6 {
                for s in 1..=3 {
                    let mut m = Model::new(n, s, seed);
                    m.run(Replacement::reload(n, n, false), n + s);
                    // SIGTTIN, then SIGTTIN again.
                    m.run(Replacement::grow(n, n + 1, false), n + s);
                    m.run(Replacement::grow(n + 1, n + 2, false), n + 1 + s);
                    // SIGTTOU (the stopped worker still draining), then a recycle.
                    m.shrink(n + 1);
                    m.run(
                        Replacement::recycle(0, crate::master::tally::Cause::Memory, n + 1, false),
                        n + 2 + s,
                    );
                    // A reload that grows by 2, one that shrinks by 2 (dropped slots first).
                    m.run(Replacement::reload(n + 1, n + 3, false), n + 3 + s);
                    m.shrink(n + 1);
                    m.run(Replacement::reload(n + 1, n + 1, false), n + 3 + s);
                }
            }
        }
    }

    #[test]
    fn a_reload_with_a_smaller_surge_waits_for_the_larger_surge_workers() {
        for seed in 0..40 {
            let mut m = Model::new(3, 3, seed);
            m.run(Replacement::reload(3, 3, false), 6);
            m.surge = 1;
            m.run(Replacement::reload(3, 3, false), 6);
            m.run(Replacement::reload(3, 3, false), 4);
        }
    }

    #[test]
    fn with_surge_1_a_slot_waits_until_the_old_worker_of_the_previous_one_exited() {
        let mut m = Model::new(3, 1, 0);
        let mut r = Replacement::reload(3, 3, false);
        m.step(&mut r);
        assert_eq!(r.in_flight(), [0]);
        // Slot 0's new worker is ready: its old one drains, and slot 1 still waits.
        m.workers[3].state = State::Ready;
        assert!(r.ready(0));
        m.workers[0].state = State::Draining;
        m.step(&mut r);
        assert_eq!(r.in_flight(), [] as [usize; 0]);
        assert_eq!(r.next_step(), Some(Step::Replace(1)));
        // It exited: slot 1 starts.
        m.workers.remove(0);
        m.step(&mut r);
        assert_eq!(r.in_flight(), [1]);
    }

    #[test]
    fn with_surge_3_three_slots_are_replaced_at_once() {
        let mut m = Model::new(3, 3, 0);
        let mut r = Replacement::reload(3, 3, false);
        m.step(&mut r);
        assert_eq!(r.in_flight(), [0, 1, 2]);
        assert_eq!(m.workers.len(), 6);
    }

    #[test]
    fn the_surge_bound_is_reached_but_not_passed() {
        for s in 1..=3 {
            let mut m = Model::new(4, s, 7);
            m.run(Replacement::reload(4, 4, false), 4 + s);
            assert_eq!(m.most, 4 + s.min(4), "surge {s}");
        }
    }
}
