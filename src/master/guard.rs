//! The memory guard in the master (see [`crate::config::memory_guard`]): with a cgroup memory limit
//! and a computed worker count, the first pool starts with slot 0 alone; once that worker is ready,
//! the master measures itself and it, and grows the pool only as far as the limit minus the reserve
//! allows. An explicit count starts whole and is only warned about. A reload decides again from the
//! workers alive at that moment.
//!
//! Slot 0 is forked for the wanted size, so its share of a budget (`Worker::share_of`) assumes the
//! larger pool: never more than a smaller pool allows, and the surge bound leaves room for the rest.

use nix::unistd::Pid;

use super::Master;
use crate::config::footprint::{Cost, Footprint};
use crate::config::memory_guard::{Decision, Guard};

/// The guard's state in the master.
#[derive(Debug, Default)]
pub(super) struct GuardState {
    /// Waiting for the first ready worker to measure.
    pub pending: Option<Guard>,
    /// The last decision, for `plan --measure`.
    pub decision: Option<Decision>,
}

impl GuardState {
    /// The state for a master started with `guard`.
    pub fn new(guard: Option<Guard>) -> GuardState {
        GuardState {
            pending: guard,
            decision: None,
        }
    }

    /// How many slots the first pool starts with: 1 while a computed count waits for the guard.
    pub fn first_pool(&self, workers: usize) -> usize {
        match &self.pending {
            Some(g) if !g.explicit => 1,
            _ => workers,
        }
    }

    /// The pool size workers are forked for while the guard waits: the wanted one.
    pub fn wanted(&self) -> Option<usize> {
        self.pending.as_ref().map(|g| g.wanted)
    }
}

impl Master<'_> {
    /// What a pool costs, from the footprints of this master and the ready workers `pids`.
    pub(super) fn measure_cost(&self, pids: &[Pid]) -> Option<Cost> {
        let master = Footprint::of(self.pid.as_raw())?;
        let workers: Vec<Footprint> = pids
            .iter()
            .filter_map(|p| Footprint::of(p.as_raw()))
            .collect();
        Cost::of(master, &workers)
    }

    /// A worker is ready: if the guard waits, decide the pool's size from it.
    pub(super) fn apply_guard(&mut self, ready: Pid) {
        let Some(guard) = self.guard.pending.take() else {
            return;
        };
        let now = std::time::Instant::now();
        let workers = match self.measure_cost(&[ready]) {
            Some(cost) => {
                let d = guard.decide(&cost);
                if let Some(m) = &d.message {
                    tracing::warn!("{m}");
                } else {
                    tracing::info!(
                        "memory: {} workers need {} MiB, {}",
                        d.wanted,
                        crate::config::footprint::mib(d.wanted_needs),
                        guard.budget.describe()
                    );
                }
                let n = d.workers;
                self.guard.decision = Some(d);
                n
            }
            None => {
                tracing::warn!(
                    "cannot read the memory of pid {ready} or of the master (/proc/PID/smaps_rollup); \
                     starting all {} workers",
                    guard.wanted
                );
                guard.wanted
            }
        };
        let size = self.pool.size();
        if workers > size {
            self.pool.grow(workers - size, now);
        }
    }

    /// The size a reload leads to: `wanted`, or what fits under `guard` given the ready workers'
    /// footprints now.
    pub(super) fn guarded_size(&mut self, wanted: usize, guard: Option<Guard>) -> usize {
        let Some(guard) = guard else {
            return wanted;
        };
        let pids: Vec<Pid> = self.serving().into_iter().map(|(_, pid)| pid).collect();
        let Some(cost) = self.measure_cost(&pids) else {
            return wanted;
        };
        let d = guard.decide(&cost);
        if let Some(m) = &d.message {
            tracing::warn!("reload: {m}");
        }
        let n = d.workers;
        self.guard.decision = Some(d);
        n
    }
}
