//! The cgroups this process is in, for the limits that size the pool: the process's path in each
//! hierarchy (`/proc/self/cgroup`), where that hierarchy is mounted (`/proc/self/mountinfo`, a
//! container may see only a sub-tree), and the walk from the process's own cgroup up to the mount
//! point, since a parent's limit binds its children. [`super::cores`] reads the CPU quota along it and
//! [`super::memory`] the memory limits. Everything is read under a root directory, so tests use
//! sample files.

use std::path::Path;

/// What `read` finds in each cgroup directory from the process's own up to the hierarchy's mount
/// point, in the v2 hierarchy and in the v1 hierarchy carrying `controller`, read under `root`
/// (`/` on a real machine). `read` is given the directory and whether it is a v2 one.
pub(crate) fn along_path<T>(
    root: &Path,
    controller: &str,
    mut read: impl FnMut(&Path, bool) -> Option<T>,
) -> Vec<T> {
    let mut found = Vec::new();
    let Ok(cgroup) = std::fs::read_to_string(root.join("proc/self/cgroup")) else {
        return found;
    };
    let mountinfo = std::fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
    for m in parse_proc_cgroup(&cgroup, controller) {
        let Some(mount) = find_mount(&mountinfo, m.v2, controller) else {
            continue;
        };
        // The path in /proc/self/cgroup is relative to the hierarchy's root; the mount may expose a
        // sub-tree of it (containers), in which case strip that prefix.
        let rel = if mount.root != "/" {
            m.path.strip_prefix(&mount.root).unwrap_or(&m.path)
        } else {
            &m.path
        };
        let base = root.join(mount.mount_point.trim_start_matches('/'));
        let mut dir = base.join(rel.trim_start_matches('/'));
        loop {
            if let Some(v) = read(&dir, m.v2) {
                found.push(v);
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    found
}

/// A cgroup hierarchy this process belongs to, as listed in `/proc/self/cgroup`.
#[derive(Debug, PartialEq)]
struct Membership {
    /// `true` for the unified (v2) hierarchy.
    v2: bool,
    /// The process's path inside the hierarchy.
    path: String,
}

/// The `/proc/self/cgroup` lines relevant to `controller`: the v2 line (`0::/path`) and a v1 line
/// whose controllers include it.
fn parse_proc_cgroup(text: &str, controller: &str) -> Vec<Membership> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            out.push(Membership {
                v2: true,
                path: path.to_string(),
            });
        } else if ctrls.split(',').any(|c| c == controller) {
            out.push(Membership {
                v2: false,
                path: path.to_string(),
            });
        }
    }
    out
}

/// A cgroup mount from `/proc/self/mountinfo`: the root of the hierarchy it exposes and where.
#[derive(Debug, PartialEq)]
struct Mount {
    root: String,
    mount_point: String,
}

/// Finds the mount of the v2 hierarchy, or of the v1 hierarchy carrying `controller`.
fn find_mount(mountinfo: &str, v2: bool, controller: &str) -> Option<Mount> {
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let fstype = right[0];
        let ok = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && right[2].split(',').any(|o| o == controller)
        };
        if ok {
            return Some(Mount {
                root: unescape(left[3]),
                mount_point: unescape(left[4]),
            });
        }
    }
    None
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn v1_lines_are_chosen_by_controller() {
        let text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n";
        let cpu = parse_proc_cgroup(text, "cpu");
        let mem = parse_proc_cgroup(text, "memory");
        assert_eq!(cpu.len(), 2);
        assert_eq!(mem.len(), 2);
        assert!(mem.iter().any(|m| !m.v2 && m.path == "/docker/abc"));
        assert!(parse_proc_cgroup("4:cpu,cpuacct:/x\n", "memory").is_empty());
    }
}
