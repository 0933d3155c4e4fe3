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
