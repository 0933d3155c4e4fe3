//! The machine a benchmark ran on, for its report: usable cores and hyperfork's default pool size
//! (from `hyperfork plan --json`), CPU model, kernel, memory. Shared by the HTTP and the real-workload
//! benchmarks.

use std::path::Path;

/// The machine the run happened on.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Usable cores, as hyperfork counts them (cgroup quota, affinity).
    pub cores: usize,
    /// hyperfork's default worker count here.
    pub default_workers: usize,
    /// CPU model name.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
}

impl Machine {
    /// Reads the machine, and asks `hyperfork` (the binary) for its sizing (`hyperfork plan --json`)
    /// with no worker count from the environment.
    pub fn read(hyperfork: &Path) -> Machine {
        let plan = std::process::Command::new(hyperfork)
            .args(["plan", "--json"])
            .env_remove("UVICORN_WORKERS")
            .env_remove("WEB_CONCURRENCY")
            .env_remove("HYPERFORK_WORKERS")
            .env_remove("HYPERFORK_MAX_WORKERS")
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok());
        let num = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_u64()).map(|n| n as usize);
        let cores = num(plan.as_ref().and_then(|p| p.pointer("/cores/count")))
            .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
            .unwrap_or(1);
        let default_workers =
            num(plan.as_ref().and_then(|p| p.get("workers"))).unwrap_or((2 * cores + 1).min(8));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, v)| v.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        Machine {
            cores,
            default_workers,
            cpu,
            kernel,
            memory_gib,
        }
    }
}
