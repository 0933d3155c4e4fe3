//! The identity of one worker, as the app, its jobs and its hooks see it: slot, pid, pool size, the
//! scheduler's status in this worker, and the app's own state once the start hook has built it.

use std::fmt;
use std::sync::Arc;

use crate::app::status::SchedulerStatus;

/// One worker: who it is, and the app state `S` it built at start (`()` for an app without state).
///
/// A worker is created after `fork`. With [`crate::Server::state`], the start hook receives a
/// `&Worker` (no state yet) and returns the state; the app factory, every job run and the stop hook
/// then receive a `Worker<S>`, whose [`Worker::state`] is that state. The type is fixed by the
/// `Server<S>` that registered them, so the state is always the one the start hook built.
pub struct Worker<S = ()> {
    id: Arc<Identity>,
    state: Arc<S>,
}

/// What identifies a worker, shared by every handle of it.
#[derive(Debug)]
struct Identity {
    slot: usize,
    pid: u32,
    pool_size: usize,
    scheduler: Arc<SchedulerStatus>,
}

impl<S> Clone for Worker<S> {
    fn clone(&self) -> Self {
        Worker {
            id: self.id.clone(),
            state: self.state.clone(),
        }
    }
}

impl<S> fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.id.slot)
            .field("pid", &self.id.pid)
            .field("pool_size", &self.id.pool_size)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Creates a worker identity; the master does this for every fork. Public for tests of app factories.
    pub fn new(slot: usize, pid: u32, pool_size: usize) -> Worker {
        Worker {
            id: Arc::new(Identity {
                slot,
                pid,
                pool_size,
                scheduler: Arc::default(),
            }),
            state: Arc::new(()),
        }
    }

    /// This worker with `state`. Public for tests of app factories and jobs.
    pub fn with_state<S>(&self, state: Arc<S>) -> Worker<S> {
        Worker {
            id: self.id.clone(),
            state,
        }
    }
}

impl<S> Worker<S> {
    /// The app state this worker's start hook built.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// A shared handle to the app state.
    pub fn state_arc(&self) -> Arc<S> {
        self.state.clone()
    }

    /// The same worker without its state.
    pub fn identity(&self) -> Worker {
        Worker {
            id: self.id.clone(),
            state: Arc::new(()),
        }
    }

    /// The scheduler's state in this worker: whether it holds the lease, and each job's last run.
    pub fn scheduler_status(&self) -> Arc<SchedulerStatus> {
        self.id.scheduler.clone()
    }

    /// The slot, `0..pool_size`. A replacement worker gets the slot of the one it replaces.
    pub fn slot(&self) -> usize {
        self.id.slot
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// How many slots the pool has.
    pub fn pool_size(&self) -> usize {
        self.id.pool_size
    }

    /// Whether this is slot 0, the primary worker (the one that runs scheduled jobs).
    pub fn is_primary(&self) -> bool {
        self.id.slot == 0
    }
}
