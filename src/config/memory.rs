//! The memory the pool may use: the machine's (`MemTotal` and `MemAvailable` in `/proc/meminfo`) and
//! the tightest cgroup limit along the process's cgroup path: v2 `memory.max` (the hard limit: the
//! kernel kills past it) and `memory.high` (the throttle: past it the kernel reclaims and slows the
//! cgroup down), v1 `memory.limit_in_bytes`. As for the CPU quota ([`super::cores`]), a parent's limit
//! binds its children, so the whole path up to the hierarchy's mount point is read and the smallest
//! limit wins. Parsing is done by pure functions over file contents; [`detect_in`] reads under any
//! root directory, so tests use sample files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cgroup;

/// A cgroup v1 `memory.limit_in_bytes` at or above this means "no limit" (the kernel writes its
/// largest page-aligned value, 9223372036854771712, there).
const V1_UNLIMITED: u64 = 1 << 62;

/// A memory limit found in a cgroup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limit {
    /// Which file it came from: `cgroup v2 memory.max`, `cgroup v2 memory.high` or `cgroup v1
    /// memory.limit_in_bytes`.
    pub kind: &'static str,
    /// The cgroup directory holding it.
    pub path: PathBuf,
    /// The limit, in bytes.
    pub bytes: u64,
}

/// The machine's memory and the cgroup limit, and how they were found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Memory {
    /// `MemTotal` from `/proc/meminfo`, in bytes, if it could be read.
    pub total: Option<u64>,
    /// `MemAvailable` from `/proc/meminfo`, in bytes: what can be allocated without swapping.
    pub available: Option<u64>,
    /// The tightest cgroup limit, if any.
    pub limit: Option<Limit>,
}

impl Memory {
    /// What the pool may use: the cgroup limit if there is one and it is below the machine's
    /// memory, else the machine's memory; `None` when neither could be read.
    pub fn usable(&self) -> Option<u64> {
        match (self.limit.as_ref().map(|l| l.bytes), self.total) {
            (Some(l), Some(t)) => Some(l.min(t)),
            (Some(l), None) => Some(l),
            (None, t) => t,
        }
    }

    /// One line saying what was found, and where.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        match self.total {
            Some(t) => {
                let _ = write!(s, "MemTotal {}", mib(t));
            }
            None => s.push_str("/proc/meminfo unreadable"),
        }
        if let Some(a) = self.available {
            let _ = write!(s, ", MemAvailable {}", mib(a));
        }
        match &self.limit {
            Some(l) => {
                let _ = write!(s, "; {} {} at {}", l.kind, mib(l.bytes), l.path.display());
            }
            None => s.push_str("; no cgroup memory limit"),
        }
        s
    }
}

/// `bytes` in MiB, as the plan shows them.
fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes / (1024 * 1024))
}

/// Detects the memory of this machine and process.
pub fn detect() -> Memory {
    detect_in(Path::new("/"))
}

/// Detects memory reading `proc/meminfo`, `proc/self/cgroup`, `proc/self/mountinfo` and cgroup files
/// under `root`.
pub fn detect_in(root: &Path) -> Memory {
    let (total, available) = std::fs::read_to_string(root.join("proc/meminfo"))
        .map(|t| parse_meminfo(&t))
        .unwrap_or((None, None));
    let limit = cgroup::along_path(root, "memory", read_limits)
        .into_iter()
        .flatten()
        .min_by_key(|l| l.bytes);
    Memory {
        total,
        available,
        limit,
    }
}

/// `MemTotal` and `MemAvailable` from the text of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
    let mut total = None;
    let mut available = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(value)) = (it.next(), it.next()) else {
            continue;
        };
        let unit = match it.next() {
            Some("kB") => 1024,
            None => 1,
            Some(_) => continue,
        };
        let Some(bytes) = value.parse::<u64>().ok().and_then(|v| v.checked_mul(unit)) else {
            continue;
        };
        match key {
            "MemTotal:" => total = Some(bytes),
            "MemAvailable:" => available = Some(bytes),
            _ => {}
        }
    }
    (total, available)
}

/// A cgroup v2 `memory.max` or `memory.high`: `max` (no limit) or a number of bytes.
pub fn parse_v2(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok()
}

/// A cgroup v1 `memory.limit_in_bytes`: a number of bytes, or the kernel's "unlimited" (a huge
/// value; `-1` when written by hand).
pub fn parse_v1(text: &str) -> Option<u64> {
    let v = text.trim().parse::<u64>().ok()?;
    (v < V1_UNLIMITED).then_some(v)
}

/// A limit file: its name, how the plan names it, and its parser.
type LimitFile = (&'static str, &'static str, fn(&str) -> Option<u64>);

/// The limits set in one cgroup directory.
fn read_limits(dir: &Path, v2: bool) -> Option<Vec<Limit>> {
    let files: &[LimitFile] = if v2 {
        &[
            ("memory.max", "cgroup v2 memory.max", parse_v2),
            ("memory.high", "cgroup v2 memory.high", parse_v2),
        ]
    } else {
        &[(
            "memory.limit_in_bytes",
            "cgroup v1 memory.limit_in_bytes",
            parse_v1,
        )]
    };
    let found: Vec<Limit> = files
        .iter()
        .filter_map(|(file, kind, parse)| {
            let text = std::fs::read_to_string(dir.join(file)).ok()?;
            Some(Limit {
                kind,
                path: dir.to_path_buf(),
                bytes: parse(&text)?,
            })
        })
        .collect();
    (!found.is_empty()).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const MIB: u64 = 1024 * 1024;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn meminfo_parsing() {
        let text = "MemTotal:       12000000 kB\nMemFree:  100 kB\nMemAvailable:    4500000 kB\nHugePages_Total:       0\n";
        assert_eq!(
            parse_meminfo(text),
            (Some(12_000_000 * 1024), Some(4_500_000 * 1024))
        );
        assert_eq!(parse_meminfo("garbage\n"), (None, None));
        // An old kernel without MemAvailable.
        assert_eq!(
            parse_meminfo("MemTotal: 2048 kB\n"),
            (Some(2048 * 1024), None)
        );
    }

    #[test]
    fn v2_and_v1_values() {
        assert_eq!(parse_v2("max\n"), None);
        assert_eq!(parse_v2("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_v2("lots"), None);
        assert_eq!(parse_v1("9223372036854771712\n"), None);
        assert_eq!(parse_v1("-1\n"), None);
        assert_eq!(parse_v1("268435456\n"), Some(256 * MIB));
    }

    #[test]
    fn v2_nested_limits_take_the_smallest_of_max_and_high_along_the_path() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(
            r,
            "proc/meminfo",
            "MemTotal: 8388608 kB\nMemAvailable: 4194304 kB\n",
        );
        write(r, "proc/self/cgroup", "0::/system.slice/app.service\n");
        write(
            r,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
        );
        write(
            r,
            "sys/fs/cgroup/system.slice/app.service/memory.max",
            "max\n",
        );
        write(
            r,
            "sys/fs/cgroup/system.slice/app.service/memory.high",
            "805306368\n",
        );
        write(r, "sys/fs/cgroup/system.slice/memory.max", "536870912\n");
        write(r, "sys/fs/cgroup/system.slice/memory.high", "max\n");
        write(r, "sys/fs/cgroup/memory.max", "max\n");
        let m = detect_in(r);
        let l = m.limit.clone().expect("a limit");
        assert_eq!(l.bytes, 512 * MIB);
        assert_eq!(l.kind, "cgroup v2 memory.max");
        assert!(l.path.ends_with("system.slice"), "{:?}", l.path);
        assert_eq!(m.total, Some(8 * 1024 * MIB));
        assert_eq!(m.available, Some(4 * 1024 * MIB));
        assert_eq!(m.usable(), Some(512 * MIB));
        let line = m.explain();
        assert!(line.contains("cgroup v2 memory.max 512 MiB"), "{line}");
        assert!(line.contains("MemTotal 8192 MiB"), "{line}");
    }

    #[test]
    fn v2_high_below_max_is_the_limit() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "proc/self/cgroup", "0::/app\n");
        write(
            r,
            "proc/self/mountinfo",
            "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        write(r, "sys/fs/cgroup/app/memory.max", "1073741824\n");
        write(r, "sys/fs/cgroup/app/memory.high", "805306368\n");
        let l = detect_in(r).limit.expect("a limit");
        assert_eq!((l.kind, l.bytes), ("cgroup v2 memory.high", 768 * MIB));
    }

    #[test]
    fn v1_container_limit_and_unlimited() {
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
            "41 30 0:36 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n",
        );
        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "268435456\n",
        );
        let l = detect_in(r).limit.expect("a limit");
        assert_eq!(
            (l.kind, l.bytes),
            ("cgroup v1 memory.limit_in_bytes", 256 * MIB)
        );

        write(
            r,
            "sys/fs/cgroup/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        assert_eq!(detect_in(r).limit, None);
    }

    #[test]
    fn no_files_means_no_limit_and_the_machine_decides() {
        let root = tempfile::tempdir().unwrap();
        let m = detect_in(root.path());
        assert_eq!(m.limit, None);
        assert_eq!(m.usable(), None);
        assert!(m.explain().contains("no cgroup memory limit"));
    }

    #[test]
    fn real_machine_has_memory() {
        assert!(detect().total.is_some_and(|t| t > 0));
    }
}
