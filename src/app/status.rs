//! What the scheduler of a worker reports about itself, for `/health` and the app: whether this worker
//! holds the scheduler lease, and each job's recent history.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// What `/health` shows about the scheduler.
#[derive(Debug, Default)]
pub struct SchedulerStatus {
    pub(crate) holder: AtomicBool,
    pub(crate) jobs: Mutex<BTreeMap<String, JobStatus>>,
}

/// One job's recent history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobStatus {
    /// The schedule, e.g. `every 30s`.
    pub schedule: String,
    /// Runs started by this worker.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
    /// Ticks skipped (previous run still going, missed beyond the grace, or not confirmed by the job
    /// store).
    pub skipped: u64,
    /// Ticks skipped because the job store could not confirm the claim (also in `skipped`).
    pub store_skipped: u64,
    /// Ticks another host claimed in the job store (`--jobs-store`).
    pub run_elsewhere: u64,
    /// The fencing token of the last run started here (job store only).
    pub last_token: Option<i64>,
    /// Runs going on now.
    pub running: u64,
    /// The tick of the last run started (RFC 3339).
    pub last_tick: Option<String>,
    /// When the last finished run ended (RFC 3339).
    pub last_finished: Option<String>,
    /// `ok` or the failure of the last finished run.
    pub last_outcome: Option<String>,
    /// How long the last finished run took.
    pub last_duration_ms: Option<u64>,
}

impl SchedulerStatus {
    /// Whether this worker holds the scheduler lease now.
    pub fn is_holder(&self) -> bool {
        self.holder.load(Ordering::Relaxed)
    }

    /// Every job's status, by name.
    pub fn jobs(&self) -> BTreeMap<String, JobStatus> {
        self.jobs.lock().map(|j| j.clone()).unwrap_or_default()
    }

    pub(crate) fn update(&self, job: &str, f: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut jobs) = self.jobs.lock() {
            f(jobs.entry(job.to_string()).or_default());
        }
    }
}
