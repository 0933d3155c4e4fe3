//! Usable CPU cores: the scheduler affinity mask and the cgroup CPU quota (v2 `cpu.max`, v1
//! `cpu.cfs_quota_us` / `cpu.cfs_period_us`), whichever is smaller, the quota rounded up, never below 1.
//!
//! The quota is looked up in the process's own cgroup and every parent up to the hierarchy's mount point;
//! the smallest quota wins (a parent's limit binds its children). Parsing is done by pure functions over
//! file contents, and [`detect_in`] reads from any root directory, so tests use sample files.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup;

/// A CPU quota found in a cgroup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quota {
    /// Which interface it came from: `cgroup v2 cpu.max` or `cgroup v1 cpu.cfs_quota_us`.
    pub kind: &'static str,
    /// The cgroup directory holding the limit.
    pub path: PathBuf,
    /// Allowed CPU time per period, in microseconds.
    pub quota_us: u64,
    /// The period, in microseconds.
    pub period_us: u64,
}

impl Quota {
    /// The quota in CPUs (may be fractional).
    pub fn cpus(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    /// The quota rounded up to whole CPUs, at least 1.
    pub fn whole_cpus(&self) -> usize {
        (self.quota_us.div_ceil(self.period_us) as usize).max(1)
    }
}

/// The usable core count and how it was found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cores {
    /// The usable cores: min(affinity, ceil(quota)), at least 1.
    pub count: usize,
    /// CPUs in the scheduler affinity mask, if it could be read.
    pub affinity: Option<usize>,
    /// The tightest cgroup quota, if any.
    pub quota: Option<Quota>,
    /// Which input decided `count`: `affinity mask`, `cgroup quota` or `fallback`.
    pub decided_by: &'static str,
}

impl Cores {
    /// Combines an affinity count and a quota.
    pub fn combine(affinity: Option<usize>, quota: Option<Quota>) -> Cores {
        let from_affinity = affinity.filter(|&n| n > 0);
        let from_quota = quota.as_ref().map(Quota::whole_cpus);
        let (count, decided_by) = match (from_affinity, from_quota) {
            (Some(a), Some(q)) if q < a => (q, "cgroup quota"),
            (Some(a), _) => (a, "affinity mask"),
            (None, Some(q)) => (q, "cgroup quota"),
            (None, None) => (
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                "fallback",
            ),
        };
        Cores {
            count: count.max(1),
            affinity,
            quota,
            decided_by,
        }
    }

    /// One line saying where the count came from.
    pub fn explain(&self) -> String {
        let aff = match self.affinity {
            Some(n) => format!("affinity mask {n} CPUs"),
            None => "affinity mask unreadable".into(),
        };
        let quota = match &self.quota {
            Some(q) => format!(
                "{} {}/{} = {:.2} CPUs at {} (rounded up to {})",
                q.kind,
                q.quota_us,
                q.period_us,
                q.cpus(),
                q.path.display(),
                q.whole_cpus()
            ),
            None => "no cgroup CPU quota".into(),
        };
        format!("{aff}; {quota}; decided by {}", self.decided_by)
    }
}

/// Detects the usable cores of this process.
pub fn detect() -> Cores {
    detect_in(Path::new("/"), affinity_count())
}

/// Detects cores reading `proc/self/cgroup`, `proc/self/mountinfo` and cgroup files under `root`.
pub fn detect_in(root: &Path, affinity: Option<usize>) -> Cores {
    Cores::combine(affinity, find_quota(root))
}

/// CPUs in this process's scheduler affinity mask.
pub fn affinity_count() -> Option<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let set = sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .count();
    (n > 0).then_some(n)
}

/// Parses a cgroup v2 `cpu.max` file: `max 100000` (no limit) or `150000 100000`.
pub fn parse_cpu_max(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace();
    let quota = it.next()?;
    let period = it.next().map_or(Some(100_000), |p| p.parse::<u64>().ok())?;
    if quota == "max" || period == 0 {
        return None;
    }
    let quota = quota.parse::<u64>().ok()?;
    (quota > 0).then_some((quota, period))
}

/// Parses cgroup v1 `cpu.cfs_quota_us` (`-1` = no limit) and `cpu.cfs_period_us`.
pub fn parse_cfs(quota: &str, period: &str) -> Option<(u64, u64)> {
    let q = quota.trim().parse::<i64>().ok()?;
    let p = period.trim().parse::<u64>().ok()?;
    (q > 0 && p > 0).then_some((q as u64, p))
}

/// Reads the quota of one cgroup directory.
fn read_quota(dir: &Path, v2: bool) -> Option<Quota> {
    let (kind, (quota_us, period_us)) = if v2 {
        let text = std::fs::read_to_string(dir.join("cpu.max")).ok()?;
        ("cgroup v2 cpu.max", parse_cpu_max(&text)?)
    } else {
        let q = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
        let p = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
        ("cgroup v1 cpu.cfs_quota_us", parse_cfs(&q, &p)?)
    };
    Some(Quota {
        kind,
        path: dir.to_path_buf(),
        quota_us,
        period_us,
    })
}

/// The smallest quota along the process's cgroup path in every CPU hierarchy, read under `root`.
fn find_quota(root: &Path) -> Option<Quota> {
    cgroup::along_path(root, "cpu", read_quota)
        .into_iter()
        .min_by(|a, b| a.cpus().total_cmp(&b.cpus()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some((150_000, 100_000)));
        assert_eq!(parse_cpu_max("50000\n"), Some((50_000, 100_000)));
        assert_eq!(parse_cpu_max("garbage"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn cfs_parsing() {
        assert_eq!(parse_cfs("-1\n", "100000\n"), None);
        assert_eq!(parse_cfs("250000\n", "100000\n"), Some((250_000, 100_000)));
        assert_eq!(parse_cfs("x", "100000"), None);
    }

    #[test]
    fn quota_rounds_up_and_never_below_one() {
        let q = |quota_us| Quota {
            kind: "t",
            path: PathBuf::new(),
            quota_us,
            period_us: 100_000,
        };
        assert_eq!(q(150_000).whole_cpus(), 2);
        assert_eq!(q(200_000).whole_cpus(), 2);
        assert_eq!(q(10_000).whole_cpus(), 1);
        assert_eq!(Cores::combine(Some(8), Some(q(150_000))).count, 2);
        assert_eq!(Cores::combine(Some(1), Some(q(400_000))).count, 1);
        assert_eq!(Cores::combine(Some(4), None).count, 4);
        assert_eq!(
            Cores::combine(Some(4), Some(q(150_000))).decided_by,
            "cgroup quota"
        );
    }

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn v2_walks_parents_and_takes_the_smallest() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "proc/self/cgroup", "0::/system.slice/app.service\n");
        write(
            r,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        write(
            r,
            "sys/fs/cgroup/system.slice/app.service/cpu.max",
            "max 100000\n",
        );
        write(r, "sys/fs/cgroup/system.slice/cpu.max", "150000 100000\n");
        let cores = detect_in(r, Some(16));
        assert_eq!(cores.count, 2);
        let q = cores.quota.unwrap();
        assert!(q.path.ends_with("system.slice"), "{:?}", q.path);
    }

    #[test]
    fn v1_with_container_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            r,
            "proc/self/cgroup",
            "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        );
        write(
            r,
            "proc/self/mountinfo",
            "40 30 0:35 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n",
        );
        write(r, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "300000\n");
        write(r, "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let cores = detect_in(r, Some(8));
        assert_eq!(cores.count, 3);
        assert_eq!(cores.quota.unwrap().kind, "cgroup v1 cpu.cfs_quota_us");
    }

    #[test]
    fn no_cgroup_files_means_affinity() {
        let root = tempfile::tempdir().unwrap();
        let cores = detect_in(root.path(), Some(3));
        assert_eq!(cores.count, 3);
        assert_eq!(cores.decided_by, "affinity mask");
    }

    #[test]
    fn real_machine_has_at_least_one_core() {
        assert!(detect().count >= 1);
    }
}
