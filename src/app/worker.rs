//! The identity of one worker, as the app and its jobs see it: slot, pid, pool size, and the
//! scheduler's status in this worker.

use std::sync::Arc;

use crate::app::status::SchedulerStatus;

/// The identity of one worker, passed to the app factory.
#[derive(Debug, Clone)]
pub struct Worker {
    slot: usize,
    pid: u32,
    pool_size: usize,
    scheduler: Arc<SchedulerStatus>,
}

impl Worker {
    /// Creates a worker identity; the master does this for every fork. Public for tests of app factories.
    pub fn new(slot: usize, pid: u32, pool_size: usize) -> Worker {
        Worker {
            slot,
            pid,
            pool_size,
            scheduler: Arc::default(),
        }
    }

    /// The scheduler's state in this worker: whether it holds the lease, and each job's last run.
    pub fn scheduler_status(&self) -> Arc<SchedulerStatus> {
        self.scheduler.clone()
    }

    /// The slot, `0..pool_size`. A replacement worker gets the slot of the one it replaces.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// How many slots the pool has.
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Whether this is slot 0, the primary worker (the one that runs scheduled jobs).
    pub fn is_primary(&self) -> bool {
        self.slot == 0
    }
}
