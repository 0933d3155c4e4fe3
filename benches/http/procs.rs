//! Process accounting from /proc: a process tree, its CPU time, and its memory (RSS and PSS).

use std::time::Duration;

/// `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(pp) = stat_field(p, 1).and_then(|s| s.parse().ok()) {
                parents.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Field `n` (0 = state) after the command name of /proc/PID/stat.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    after.split_whitespace().nth(n).map(str::to_string)
}

/// User plus system CPU time of the processes.
pub fn cpu_time(pids: &[u32]) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .map(|&p| {
            let utime: u64 = stat_field(p, 11).and_then(|s| s.parse().ok()).unwrap_or(0);
            let stime: u64 = stat_field(p, 12).and_then(|s| s.parse().ok()).unwrap_or(0);
            utime + stime
        })
        .sum();
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// CPU time the whole machine spent busy (every state of /proc/stat's `cpu` line but idle and
/// iowait), over all cores.
fn machine_busy() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_secs_f64(busy as f64 / hz)
}

/// CPU use of the machine outside a server's processes and this benchmark's own (the load
/// generators): other sessions' builds and benchmarks, which disturb the figures.
#[derive(Debug, Clone, Copy)]
pub struct Others {
    machine: Duration,
    mine: Duration,
    at: std::time::Instant,
}

impl Others {
    /// Starts counting, `server` being the server's processes.
    pub fn start(server: &[u32]) -> Others {
        Others {
            machine: machine_busy(),
            mine: cpu_time(server) + cpu_time(&[std::process::id()]),
            at: std::time::Instant::now(),
        }
    }

    /// Cores the other processes kept busy on average since [`Others::start`].
    pub fn cores(&self, server: &[u32]) -> f64 {
        let machine = machine_busy().saturating_sub(self.machine);
        let mine = (cpu_time(server) + cpu_time(&[std::process::id()])).saturating_sub(self.mine);
        machine.saturating_sub(mine).as_secs_f64() / self.at.elapsed().as_secs_f64().max(1e-9)
    }
}

/// Resident and proportional set size of one process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size.
    pub rss_kib: u64,
    /// Proportional set size: shared pages divided among their sharers.
    pub pss_kib: u64,
}

/// The memory of `pid` from /proc/PID/smaps_rollup (RSS from /proc/PID/status without it).
pub fn memory(pid: u32) -> Memory {
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].split_whitespace().next()?.parse().ok())
    };
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        if let Some(rss) = field(&text, "Rss:") {
            return Memory {
                rss_kib: rss,
                pss_kib: field(&text, "Pss:").unwrap_or(0),
            };
        }
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    Memory {
        rss_kib: field(&text, "VmRSS:").unwrap_or(0),
        pss_kib: 0,
    }
}

/// Memory of a server's process tree: the total, and the largest single worker.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeMemory {
    /// Sum over every process of the tree.
    pub total: Memory,
    /// The worker with the largest RSS (the process itself for a single-process server).
    pub worker: Memory,
}

/// Samples the memory of `root`'s tree; workers are its children, if it has any.
pub fn tree_memory(root: u32) -> TreeMemory {
    let pids = tree(root);
    let mut out = TreeMemory::default();
    for &p in &pids {
        let m = memory(p);
        out.total.rss_kib += m.rss_kib;
        out.total.pss_kib += m.pss_kib;
        let is_worker = p != root || pids.len() == 1;
        if is_worker && m.rss_kib > out.worker.rss_kib {
            out.worker = m;
        }
    }
    out
}
