//! What a process weighs, from `/proc/PID/smaps_rollup`: its resident set (RSS), its proportional
//! share (PSS: each shared page divided among the processes mapping it) and its private memory (USS:
//! the pages only it maps, clean or dirty).
//!
//! In a pool forked from one master, a worker's USS is what it allocated or wrote after the fork: what
//! one more worker costs. The PSS of every process of the pool adds up to what the whole pool holds,
//! each shared page counted once. [`Cost`] turns one look at a pool into the memory of a pool of any
//! size: what the measured processes hold apart from the workers' private memory, plus that private
//! memory once per worker.

use serde::Serialize;

/// One process's memory, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Resident set size: every page mapped and in memory, shared ones in full.
    pub rss: u64,
    /// Proportional set size: private pages in full, shared ones divided among their processes.
    pub pss: u64,
    /// Unique set size: the private pages (`Private_Clean` + `Private_Dirty` + `Private_Hugetlb`).
    pub uss: u64,
}

impl Footprint {
    /// The footprint of process `pid`; `None` if its `smaps_rollup` cannot be read (it exited, or
    /// belongs to another user without the right to read it).
    pub fn of(pid: i32) -> Option<Footprint> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        parse_rollup(&text)
    }
}

/// The footprint in the text of a `smaps_rollup` file (values in kB); `None` without an `Rss` line.
pub fn parse_rollup(text: &str) -> Option<Footprint> {
    let mut f = Footprint::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let (Some(value), Some("kB")) = (it.next(), it.next()) else {
            continue;
        };
        let Some(bytes) = value.parse::<u64>().ok().and_then(|v| v.checked_mul(1024)) else {
            continue;
        };
        match key {
            "Rss" => {
                f.rss = bytes;
                seen = true;
            }
            "Pss" => f.pss = bytes,
            "Private_Clean" | "Private_Dirty" | "Private_Hugetlb" => f.uss += bytes,
            _ => {}
        }
    }
    seen.then_some(f)
}

/// The memory of a pool as a function of its size, from one look at the master and some workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// What the pool holds whatever its size: the master, and the pages its workers share with it
    /// and with each other (the measured PSS, less the measured workers' private memory).
    pub fixed: u64,
    /// What one more worker costs: the largest private memory (USS) among the measured workers.
    pub per_worker: u64,
    /// How many workers were measured.
    pub measured: usize,
}

impl Cost {
    /// The cost seen in the footprints of a master and its workers; `None` without any worker.
    pub fn of(master: Footprint, workers: &[Footprint]) -> Option<Cost> {
        let per_worker = workers.iter().map(|w| w.uss).max()?;
        let pss: u64 = master.pss + workers.iter().map(|w| w.pss).sum::<u64>();
        let private: u64 = workers.iter().map(|w| w.uss).sum();
        Some(Cost {
            fixed: pss.saturating_sub(private),
            per_worker,
            measured: workers.len(),
        })
    }

    /// The memory a pool of `workers` would hold.
    pub fn pool(&self, workers: usize) -> u64 {
        self.fixed
            .saturating_add(self.per_worker.saturating_mul(workers as u64))
    }

    /// The largest count from 1 to `wanted` whose pool, with `surge` more workers alive during a
    /// reload, fits in `budget` bytes; at least 1 (a pool of no worker serves nothing, so one is
    /// started even when it does not fit).
    pub fn largest_fitting(&self, wanted: usize, surge: usize, budget: u64) -> usize {
        (1..=wanted.max(1))
            .rev()
            .find(|n| self.pool(n + surge) <= budget)
            .unwrap_or(1)
    }
}

/// One worker of a measured pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerFootprint {
    /// Its slot.
    pub slot: usize,
    /// Its pid.
    pub pid: i32,
    /// The requests it answered during the warm-up.
    pub requests: u64,
    /// Its memory after the warm-up.
    pub memory: Footprint,
}

/// The warm-up load sent to a measured pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Warmup {
    /// The path requested.
    pub path: String,
    /// Requests answered, by status code.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, or timed out).
    pub failed: u64,
}

impl Warmup {
    /// Requests answered.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// A pool booted and measured by `plan --measure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolFootprint {
    /// The master's pid.
    pub master_pid: i32,
    /// The master's memory.
    pub master: Footprint,
    /// Each worker's, by slot.
    pub workers: Vec<WorkerFootprint>,
    /// The warm-up load.
    pub warmup: Warmup,
    /// What a pool costs, from these footprints.
    pub cost: Cost,
    /// What the memory guard decided when the pool booted, if it applied.
    pub guard: Option<super::memory_guard::Decision>,
}

impl PoolFootprint {
    /// What the measured pool holds in all: the proportional shares of the master and its workers.
    pub fn total(&self) -> u64 {
        self.master.pss + self.workers.iter().map(|w| w.memory.pss).sum::<u64>()
    }
}

/// `bytes` in MiB, rounded, for messages.
pub fn mib(bytes: u64) -> u64 {
    (bytes + 512 * 1024) / (1024 * 1024)
}

/// `bytes` as `52 MiB`, or with one decimal below 10 MiB (`0.4 MiB`), for tables.
pub fn mib_text(bytes: u64) -> String {
    if bytes >= 10 * 1024 * 1024 {
        format!("{} MiB", mib(bytes))
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
555657089000-7ffdfa0ba000 ---p 00000000 00:00 0                          [rollup]
Rss:               53760 kB
Pss:               52511 kB
Pss_Dirty:         51312 kB
Shared_Clean:       1564 kB
Shared_Dirty:          0 kB
Private_Clean:        84 kB
Private_Dirty:     52112 kB
Referenced:        53760 kB
Anonymous:         52112 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
";

    #[test]
    fn a_rollup_gives_rss_pss_and_private_memory() {
        let f = parse_rollup(ROLLUP).unwrap();
        assert_eq!(f.rss, 53760 * 1024);
        assert_eq!(f.pss, 52511 * 1024);
        assert_eq!(f.uss, (84 + 52112) * 1024);
        assert!(parse_rollup("").is_none());
        assert!(parse_rollup("Pss: 12 kB\n").is_none(), "no Rss line");
    }

    #[test]
    fn this_process_can_be_measured() {
        let f = Footprint::of(std::process::id() as i32).unwrap();
        assert!(f.rss > 0 && f.pss > 0 && f.uss > 0, "{f:?}");
        assert!(f.uss <= f.pss && f.pss <= f.rss, "{f:?}");
    }

    fn fp(pss: u64, uss: u64) -> Footprint {
        Footprint { rss: pss, pss, uss }
    }

    #[test]
    fn a_pool_costs_its_shared_pages_once_and_each_workers_private_memory() {
        // Master: 4 MiB proportional; two workers each 50 MiB private plus 1 MiB of shared share.
        let mib = 1024 * 1024;
        let cost = Cost::of(
            fp(4 * mib, 2 * mib),
            &[fp(51 * mib, 50 * mib), fp(51 * mib, 48 * mib)],
        )
        .unwrap();
        assert_eq!(cost.per_worker, 50 * mib, "the heaviest worker");
        assert_eq!(cost.fixed, (4 + 51 + 51 - 50 - 48) * mib);
        assert_eq!(cost.pool(2), cost.fixed + 100 * mib);
        assert_eq!(cost.pool(0), cost.fixed);
        assert!(Cost::of(fp(1, 1), &[]).is_none());
    }

    #[test]
    fn the_largest_fitting_count_stops_below_the_budget_and_never_at_zero() {
        let cost = Cost {
            fixed: 10,
            per_worker: 100,
            measured: 1,
        };
        assert_eq!(cost.largest_fitting(5, 0, 1000), 5);
        assert_eq!(cost.largest_fitting(5, 0, 310), 3);
        assert_eq!(cost.largest_fitting(5, 0, 309), 2);
        assert_eq!(
            cost.largest_fitting(5, 1, 310),
            2,
            "a reload's extra worker counts"
        );
        assert_eq!(
            cost.largest_fitting(5, 0, 50),
            1,
            "one worker even when none fits"
        );
        assert_eq!(cost.largest_fitting(0, 0, 1000), 1);
    }

    #[test]
    fn mib_rounds() {
        assert_eq!(mib(1024 * 1024), 1);
        assert_eq!(mib(1024 * 1024 + 600 * 1024), 2);
        assert_eq!(mib(0), 0);
        assert_eq!(mib_text(400 * 1024), "0.4 MiB");
        assert_eq!(mib_text(52 * 1024 * 1024), "52 MiB");
    }
}
