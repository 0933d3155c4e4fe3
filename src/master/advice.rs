//! Live tuning advice: the sizing guide's rules ("too few workers: low CPU, slow responses; too many:
//! high memory; optimal: CPU 80–90 %") applied to what the master measured over the last minute (or
//! less, if it is younger). Pure: the master fills a [`Window`], [`advise`] words the advice, each
//! line naming the numbers behind it.
//!
//! The rules, in order:
//! - CPU-bound: the workers used at least [`CPU_BUSY`] of the usable cores and the accept queue
//!   backed up (grew over the window, or stayed above 0 for all of it): more workers will not help.
//! - Blocking: the workers used at most [`CPU_IDLE`] of the cores while the queue backed up: the
//!   workers wait on something (blocking calls, a slow database) rather than compute.
//! - Memory: the pool (master and workers, shared pages counted once) holds at least
//!   [`MEMORY_FULL`] of the memory guard's budget (the cgroup limit minus `--memory-reserve`).
//! - 503s: any request answered 503 by `--limit-concurrency` in the window.
//!
//! When none applies, one "no advice" line still gives the figures looked at, so an operator (and
//! `hyperfork plan`) can tell "looked and found nothing" from "could not look".

use crate::config::footprint::mib;
use crate::config::memory_guard::Budget;

/// The CPU-bound rule's threshold: the workers' CPU as a share of the usable cores.
pub(crate) const CPU_BUSY: f64 = 0.80;

/// The blocking rule's threshold: at most this share of the usable cores.
pub(crate) const CPU_IDLE: f64 = 0.50;

/// The memory rule's threshold: the pool's memory as a share of the budget.
pub(crate) const MEMORY_FULL: f64 = 0.90;

/// The longest window the advice looks at.
pub(crate) const WINDOW_SECONDS: f64 = 60.0;

/// What the master measured over the window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Window {
    /// The window's length, seconds (at most [`WINDOW_SECONDS`]).
    pub seconds: f64,
    /// The usable cores (`config::cores`).
    pub cores: usize,
    /// The workers' CPU time (user + system) over the window, seconds, exited workers included.
    pub cpu_seconds: f64,
    /// Connections waiting in the accept queues at the window's start, at its end, and the fewest
    /// seen in between.
    pub queue_first: u32,
    pub queue_last: u32,
    pub queue_min: u32,
    /// The workers in the pool, and those with requests in flight now.
    pub workers: usize,
    pub busy_workers: usize,
    /// What the pool holds now (master and workers, their PSS), bytes, if it could be read.
    pub memory_used: Option<u64>,
    /// The memory guard's budget, if a cgroup memory limit applies.
    pub budget: Option<Budget>,
    /// `--limit-concurrency`, and the 503s it answered over the window.
    pub limit_concurrency: Option<usize>,
    pub limit_503s: u64,
}

impl Window {
    /// The workers' CPU as a share of the cores (1.0: every core busy).
    fn cpu_share(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.cpu_seconds / self.seconds / self.cores.max(1) as f64
    }

    /// Whether the accept queue backed up: grew, or never emptied during the window.
    fn queue_backed_up(&self) -> bool {
        self.queue_last > self.queue_first || self.queue_min > 0
    }

    /// `the accept queue grew from 0 to 37` / `the accept queue stayed above 0 (5 to 3)`.
    fn queue_words(&self) -> String {
        if self.queue_last > self.queue_first {
            format!(
                "the accept queue grew from {} to {}",
                self.queue_first, self.queue_last
            )
        } else {
            format!(
                "the accept queue stayed above 0 ({} to {})",
                self.queue_first, self.queue_last
            )
        }
    }

    /// `2 cores` / `1 core`.
    fn cores_words(&self) -> String {
        let n = self.cores.max(1);
        format!("{n} {}", if n == 1 { "core" } else { "cores" })
    }
}

/// The advice for `w`: one line per rule that applies, or one "no advice" line with the figures.
pub(crate) fn advise(w: &Window) -> Vec<String> {
    let mut out = Vec::new();
    let share = w.cpu_share();
    let cpu = (share * w.cores.max(1) as f64 * 100.0).round();
    let all = w.cores.max(1) * 100;
    if share >= CPU_BUSY && w.queue_backed_up() {
        out.push(format!(
            "all {} busy (CPU {cpu} % of {all} %) and {}: the host is CPU-bound, more workers will \
             not help",
            w.cores_words(),
            w.queue_words()
        ));
    }
    if share <= CPU_IDLE && w.queue_backed_up() {
        out.push(format!(
            "CPU at {} % of {} while {} ({} of {} workers with requests in flight): workers block; \
             try more workers or --threads",
            (share * 100.0).round(),
            w.cores_words(),
            w.queue_words(),
            w.busy_workers,
            w.workers
        ));
    }
    if let (Some(used), Some(budget)) = (w.memory_used, &w.budget) {
        if budget.bytes() > 0 && used as f64 >= MEMORY_FULL * budget.bytes() as f64 {
            out.push(format!(
                "memory: {} {} use {} of the {} {} minus {} reserve: fewer workers or a lower \
                 --max-worker-memory",
                w.workers,
                if w.workers == 1 { "worker" } else { "workers" },
                size(used),
                size(budget.usable),
                budget.from,
                size(budget.reserve)
            ));
        }
    }
    if w.limit_503s > 0 {
        let limit = w
            .limit_concurrency
            .map_or_else(String::new, |n| format!(" {n}"));
        out.push(format!(
            "{} {} answered 503 by --limit-concurrency{limit} in the last {} s: raise it, or add \
             workers if the CPU allows",
            w.limit_503s,
            if w.limit_503s == 1 {
                "request"
            } else {
                "requests"
            },
            w.seconds.round()
        ));
    }
    if out.is_empty() {
        let memory = match (w.memory_used, &w.budget) {
            (Some(used), Some(b)) => format!(", memory {} of {}", size(used), size(b.bytes())),
            (Some(used), None) => format!(", memory {}", size(used)),
            _ => String::new(),
        };
        out.push(format!(
            "no advice: CPU {} % of {}, accept queue {}{memory}",
            (share * 100.0).round(),
            w.cores_words(),
            w.queue_last
        ));
    }
    out
}

/// `40 MiB`, `1.4 GiB`.
fn size(bytes: u64) -> String {
    const GIB: u64 = 1024 * 1024 * 1024;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", mib(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn quiet() -> Window {
        Window {
            seconds: 60.0,
            cores: 2,
            cpu_seconds: 0.12 * 2.0 * 60.0,
            queue_first: 0,
            queue_last: 0,
            queue_min: 0,
            workers: 5,
            busy_workers: 0,
            memory_used: Some(40 * MIB),
            budget: Some(Budget {
                usable: 512 * MIB,
                from: "the cgroup allows".into(),
                reserve: 64 * MIB,
            }),
            limit_concurrency: None,
            limit_503s: 0,
        }
    }

    #[test]
    fn nothing_to_say_gives_the_figures() {
        assert_eq!(
            advise(&quiet()),
            ["no advice: CPU 12 % of 2 cores, accept queue 0, memory 40 MiB of 448 MiB"]
        );
    }

    #[test]
    fn busy_cores_and_a_growing_queue_are_cpu_bound() {
        let w = Window {
            cpu_seconds: 1.92 * 60.0,
            queue_last: 37,
            ..quiet()
        };
        assert_eq!(
            advise(&w),
            [
                "all 2 cores busy (CPU 192 % of 200 %) and the accept queue grew from 0 to 37: the \
                 host is CPU-bound, more workers will not help"
            ]
        );
        // At the threshold, still; just below it, neither rule (between the two thresholds).
        let at = Window {
            cpu_seconds: CPU_BUSY * 2.0 * 60.0,
            ..w.clone()
        };
        assert!(advise(&at)[0].contains("CPU-bound"), "{:?}", advise(&at));
        let below = Window {
            cpu_seconds: 0.79 * 2.0 * 60.0,
            ..w.clone()
        };
        assert!(advise(&below)[0].starts_with("no advice"));
        // Busy cores with an empty queue: fine, that is the guide's optimum.
        let optimal = Window { queue_last: 0, ..w };
        assert!(advise(&optimal)[0].starts_with("no advice"));
    }

    #[test]
    fn idle_cores_and_a_queue_mean_blocking_workers() {
        let w = Window {
            cpu_seconds: 0.31 * 2.0 * 60.0,
            queue_last: 12,
            busy_workers: 5,
            ..quiet()
        };
        assert_eq!(
            advise(&w),
            [
                "CPU at 31 % of 2 cores while the accept queue grew from 0 to 12 (5 of 5 workers \
                 with requests in flight): workers block; try more workers or --threads"
            ]
        );
        // A queue that never emptied counts too, worded as such.
        let steady = Window {
            queue_first: 5,
            queue_min: 3,
            queue_last: 3,
            ..w.clone()
        };
        assert!(advise(&steady)[0].contains("stayed above 0 (5 to 3)"));
        // A queue that emptied once and ended lower does not.
        let drained = Window {
            queue_first: 5,
            queue_min: 0,
            queue_last: 3,
            ..w.clone()
        };
        assert!(advise(&drained)[0].starts_with("no advice"));
        // Just above the threshold: no.
        let above = Window {
            cpu_seconds: 0.51 * 2.0 * 60.0,
            ..w
        };
        assert!(advise(&above)[0].starts_with("no advice"));
    }

    #[test]
    fn a_pool_near_its_budget_is_told_so() {
        let gib = 1024 * MIB;
        let budget = Budget {
            usable: gib + gib / 2,
            from: "the cgroup allows".into(),
            reserve: 64 * MIB,
        };
        let w = Window {
            memory_used: Some(gib + 4 * gib / 10),
            budget: Some(budget.clone()),
            ..quiet()
        };
        assert_eq!(
            advise(&w),
            [
                "memory: 5 workers use 1.4 GiB of the 1.5 GiB the cgroup allows minus 64 MiB \
                 reserve: fewer workers or a lower --max-worker-memory"
            ]
        );
        let threshold = (MEMORY_FULL * budget.bytes() as f64).ceil() as u64;
        let at = Window {
            memory_used: Some(threshold),
            ..w.clone()
        };
        assert!(advise(&at)[0].starts_with("memory:"));
        let below = Window {
            memory_used: Some(threshold - MIB),
            ..w.clone()
        };
        assert!(advise(&below)[0].starts_with("no advice"));
        // Without a budget (no cgroup limit) there is nothing to compare with.
        let unlimited = Window { budget: None, ..w };
        assert_eq!(
            advise(&unlimited),
            ["no advice: CPU 12 % of 2 cores, accept queue 0, memory 1.4 GiB"]
        );
    }

    #[test]
    fn any_503_from_the_limit_is_reported() {
        let w = Window {
            limit_concurrency: Some(100),
            limit_503s: 412,
            ..quiet()
        };
        assert_eq!(
            advise(&w),
            [
                "412 requests answered 503 by --limit-concurrency 100 in the last 60 s: raise it, \
                 or add workers if the CPU allows"
            ]
        );
        let one = Window {
            limit_503s: 1,
            seconds: 12.4,
            ..w
        };
        assert!(advise(&one)[0].starts_with("1 request answered 503"));
        assert!(advise(&one)[0].contains("in the last 12 s"));
    }

    #[test]
    fn rules_add_up() {
        let w = Window {
            cpu_seconds: 1.9 * 60.0,
            queue_last: 4,
            limit_concurrency: Some(1),
            limit_503s: 3,
            ..quiet()
        };
        let a = advise(&w);
        assert_eq!(a.len(), 2, "{a:?}");
        assert!(a[0].contains("CPU-bound") && a[1].contains("503"));
    }
}
