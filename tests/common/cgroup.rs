//! A memory-limited cgroup made for one test (tests/memory.rs, tests/advice.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{command, wait_until};

/// A memory cgroup made for one test (v2 if the unified hierarchy offers the memory controller, else
/// v1), removed on drop once the processes in it are killed.
pub struct MemCgroup {
    pub dir: PathBuf,
    /// `cgroup v2 memory.max` or `cgroup v1 memory.limit_in_bytes`.
    pub kind: &'static str,
}

impl MemCgroup {
    /// A child of this process's own memory cgroup, limited to `bytes`. Panics, saying why, when
    /// the machine has no writable memory cgroup: the guard's test must not pass without one.
    pub fn create(name: &str, bytes: u64) -> MemCgroup {
        let unique = format!("hyperfork-test-{name}-{}", std::process::id());
        let mut tried = Vec::new();
        for (kind, parent, file) in candidates() {
            let dir = parent.join(&unique);
            let made = std::fs::create_dir(&dir).and_then(|_| {
                if kind.contains("v2") && !dir.join(file).exists() {
                    // The parent must hand the memory controller down first.
                    std::fs::write(parent.join("cgroup.subtree_control"), "+memory")?;
                }
                std::fs::write(dir.join(file), bytes.to_string())
            });
            match made {
                Ok(()) => return MemCgroup { dir, kind },
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    tried.push(format!("{kind} under {}: {e}", parent.display()));
                }
            }
        }
        panic!(
            "no writable memory cgroup on this machine, so the memory guard cannot be tested \
             (this test needs root and a cgroup v2 or v1 memory hierarchy); tried: {tried:?}"
        );
    }

    /// `cmd` run inside the cgroup: `sh` moves itself in, then execs the program.
    pub fn wrap(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = command(&PathBuf::from("/bin/sh"));
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(program)
            .args(args);
        c
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Whatever is left in it (the test's guards kill their processes first).
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process this test started in its own cgroup.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        wait_until(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.dir).is_ok()
        });
    }
}

/// Where a memory cgroup can be made: (kind, parent directory, limit file), v2 first.
fn candidates() -> Vec<(&'static str, PathBuf, &'static str)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let rfields: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(point), Some(fstype)) =
            (fields.get(3), fields.get(4), rfields.first())
        else {
            continue;
        };
        let opts = rfields.get(2).copied().unwrap_or("");
        let (kind, file, wanted) = match *fstype {
            "cgroup2" => ("cgroup v2 memory.max", "memory.max", None),
            "cgroup" if opts.split(',').any(|o| o == "memory") => (
                "cgroup v1 memory.limit_in_bytes",
                "memory.limit_in_bytes",
                Some("memory"),
            ),
            _ => continue,
        };
        let path = own.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, controllers, path) = (it.next()?, it.next()?, it.next()?);
            let matches = match wanted {
                None => controllers.is_empty(),
                Some(c) => controllers.split(',').any(|x| x == c),
            };
            matches.then(|| path.to_string())
        });
        let Some(path) = path else { continue };
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .trim_start_matches('/');
        let parent = Path::new(point).join(rel);
        if kind.contains("v2") {
            let offered = std::fs::read_to_string(parent.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"));
            if !offered {
                continue;
            }
            out.insert(0, (kind, parent, file));
        } else {
            out.push((kind, parent, file));
        }
    }
    out
}
