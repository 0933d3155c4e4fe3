//! The memory guard: a computed worker count stops where the pool would pass the cgroup memory limit
//! minus `--memory-reserve`; an explicit count is never reduced, only warned about.
//!
//! The pool must fit during a reload too, when `--max-surge` extra workers are alive beside it: past a
//! hard limit the kernel kills a process, and a deploy is the worst moment for that. (The database
//! budget counts the surge the same way, see `Worker::share_of`.)
//!
//! The master decides once its first worker is ready, from the measured footprint of itself and that
//! worker ([`Cost`]), and again at each reload from the workers then alive. `plan --measure` boots a
//! pool the same way, so it predicts the same count. Without a cgroup memory limit the guard does
//! nothing: the machine's free memory moves too much to refuse workers by, and `plan` shows it instead.

use serde::Serialize;

use super::footprint::{Cost, mib};
use super::memory::Memory;

/// What the pool may hold: a memory limit, less the reserve for what shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    /// The memory the pool shares with what else runs beside it, in bytes.
    pub usable: u64,
    /// What it is: `the cgroup allows` (a limit the kernel enforces) or `MemAvailable is`.
    pub from: String,
    /// The reserve (`--memory-reserve`), in bytes.
    pub reserve: u64,
}

impl Budget {
    /// The cgroup limit less `reserve`; `None` without a cgroup memory limit.
    pub fn of_limit(memory: &Memory, reserve: u64) -> Option<Budget> {
        let limit = memory.limit.as_ref()?;
        Some(Budget {
            usable: limit.bytes,
            from: "the cgroup allows".to_string(),
            reserve,
        })
    }

    /// The cgroup limit less `reserve`, else the machine's available memory (`MemAvailable`, what
    /// can be allocated now without swapping) less `reserve`; `None` when neither is known.
    pub fn of(memory: &Memory, reserve: u64) -> Option<Budget> {
        Budget::of_limit(memory, reserve).or_else(|| {
            memory.available.map(|a| Budget {
                usable: a,
                from: "MemAvailable is".to_string(),
                reserve,
            })
        })
    }

    /// What the pool may hold, in bytes.
    pub fn bytes(&self) -> u64 {
        self.usable.saturating_sub(self.reserve)
    }

    /// `the cgroup allows 512 MiB minus 64 MiB reserve`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} MiB minus {} MiB reserve",
            self.from,
            mib(self.usable),
            mib(self.reserve)
        )
    }
}

/// The guard's inputs: the budget and the count the settings ask for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guard {
    /// What the pool may hold.
    pub budget: Budget,
    /// The count the settings decided.
    pub wanted: usize,
    /// Whether that count was given (explicit, never reduced) rather than computed.
    pub explicit: bool,
    /// The extra workers alive during a reload (`--max-surge`).
    pub surge: usize,
}

/// The guard's decision for one measured cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The count to run.
    pub workers: usize,
    /// The count the settings decided.
    pub wanted: usize,
    /// What the wanted pool would hold during a reload (with the surge), in bytes.
    pub wanted_needs: u64,
    /// The largest count that fits (the decision, for a computed count).
    pub fitting: usize,
    /// What the pool may hold, in bytes.
    pub budget: u64,
    /// The line for the log and `plan`: what was decided, with the numbers; `None` when the wanted
    /// pool fits.
    pub message: Option<String>,
}

impl Guard {
    /// The guard for a pool of `wanted` workers and `surge` more during a reload, under `budget`
    /// (a cgroup limit's: [`Budget::of_limit`]).
    pub fn new(budget: Budget, wanted: usize, explicit: bool, surge: usize) -> Guard {
        Guard {
            budget,
            wanted,
            explicit,
            surge,
        }
    }

    /// How many workers to run, given what a pool costs.
    pub fn decide(&self, cost: &Cost) -> Decision {
        let budget = self.budget.bytes();
        let wanted_needs = cost.pool(self.wanted + self.surge);
        let fitting = cost.largest_fitting(self.wanted, self.surge, budget);
        let fits = wanted_needs <= budget;
        let need = format!(
            "{} would need {} MiB with a reload's {} extra (--max-surge), {}",
            self.wanted,
            mib(wanted_needs),
            self.surge,
            self.budget.describe()
        );
        let (workers, message) = match (fits, self.explicit) {
            (true, _) => (self.wanted, None),
            (false, false) => (
                fitting,
                Some(format!(
                    "starting {fitting} of {} workers: {need}",
                    self.wanted
                )),
            ),
            (false, true) => (
                self.wanted,
                Some(format!(
                    "the explicit count is kept, but {need}; {} worker{} would fit ({} MiB each, {} MiB \
                     for the master and shared pages)",
                    fitting,
                    if fitting == 1 { "" } else { "s" },
                    mib(cost.per_worker),
                    mib(cost.fixed)
                )),
            ),
        };
        Decision {
            workers,
            wanted: self.wanted,
            wanted_needs,
            fitting,
            budget,
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::memory::Limit;

    const MIB: u64 = 1024 * 1024;

    fn limited(bytes: u64) -> Memory {
        Memory {
            total: Some(4096 * MIB),
            available: Some(2048 * MIB),
            limit: Some(Limit {
                kind: "cgroup v2 memory.max",
                path: "/sys/fs/cgroup/app".into(),
                bytes,
            }),
        }
    }

    /// The budget of `limited(bytes)` with a 64 MiB reserve.
    fn limit_budget(bytes: u64) -> Budget {
        Budget::of_limit(&limited(bytes), 64 * MIB).unwrap()
    }

    fn cost(fixed: u64, per_worker: u64) -> Cost {
        Cost {
            fixed: fixed * MIB,
            per_worker: per_worker * MIB,
            measured: 1,
        }
    }

    #[test]
    fn a_computed_count_stops_at_what_fits_and_says_why() {
        let g = Guard::new(limit_budget(512 * MIB), 5, false, 1);
        let d = g.decide(&cost(10, 120));
        // 3 workers hold 370 MiB, but 490 MiB while a reload forks a 4th: 2 fit.
        assert_eq!((d.workers, d.fitting, d.wanted), (2, 2, 5));
        assert_eq!(
            d.message.as_deref(),
            Some(
                "starting 2 of 5 workers: 5 would need 730 MiB with a reload's 1 extra (--max-surge), \
                 the cgroup allows 512 MiB minus 64 MiB reserve"
            )
        );
    }

    #[test]
    fn a_pool_that_fits_is_left_alone() {
        let g = Guard::new(limit_budget(512 * MIB), 5, false, 1);
        let d = g.decide(&cost(10, 50));
        assert_eq!(d.workers, 5);
        assert!(d.message.is_none());
    }

    #[test]
    fn an_explicit_count_is_kept_and_warned_about() {
        let g = Guard::new(limit_budget(512 * MIB), 5, true, 1);
        let d = g.decide(&cost(10, 120));
        assert_eq!((d.workers, d.fitting), (5, 2));
        let m = d.message.unwrap();
        assert!(
            m.starts_with("the explicit count is kept, but 5 would need 730 MiB"),
            "{m}"
        );
        assert!(m.contains("2 workers would fit (120 MiB each"), "{m}");
    }

    #[test]
    fn no_cgroup_limit_no_guard() {
        let m = Memory {
            limit: None,
            ..limited(0)
        };
        assert!(Budget::of_limit(&m, 64 * MIB).is_none(), "no guard");
        let b = Budget::of(&m, 64 * MIB).unwrap();
        assert_eq!(b.bytes(), 1984 * MIB);
        assert_eq!(
            b.describe(),
            "MemAvailable is 2048 MiB minus 64 MiB reserve"
        );
    }

    #[test]
    fn a_reserve_above_the_limit_leaves_one_worker() {
        let g = Guard::new(limit_budget(32 * MIB), 5, false, 1);
        let d = g.decide(&cost(10, 50));
        assert_eq!(d.workers, 1);
        assert_eq!(d.budget, 0);
    }
}
