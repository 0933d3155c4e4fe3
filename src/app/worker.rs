//! The identity of one worker, as the app, its jobs and its hooks see it: slot, pid, pool size,
//! generation, its share of a budget, the scheduler's status in this worker, and the app's own state
//! once the start hook has built it.

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
#[derive(Debug, Clone)]
struct Identity {
    slot: usize,
    pid: u32,
    pool_size: usize,
    scheduler: Arc<SchedulerStatus>,
    generation: u64,
    max_surge: usize,
    db: Option<crate::app::share::DbUse>,
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
            .field("generation", &self.id.generation)
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
                generation: 1,
                max_surge: 1,
                db: None,
            }),
            state: Arc::new(()),
        }
    }

    /// The same identity with another generation (the default is 1, the first pool). For tests of
    /// app factories; the master sets it for every fork.
    pub fn with_generation(self, generation: u64) -> Worker {
        let mut id = (*self.id).clone();
        id.generation = generation;
        Worker {
            id: Arc::new(id),
            state: self.state,
        }
    }

    /// The same identity with another surge bound (the default is 1, as `--max-surge`). For tests of
    /// app factories; the master sets it for every fork.
    pub fn with_max_surge(self, max_surge: usize) -> Worker {
        let mut id = (*self.id).clone();
        id.max_surge = max_surge;
        Worker {
            id: Arc::new(id),
            state: self.state,
        }
    }

    /// The same identity with `--db-budget total`: the pool shares `total` database connections
    /// (see [`Worker::db_pool_size`]). For tests of app factories; the master sets it for every fork.
    pub fn with_db_budget(self, total: usize) -> Worker {
        self.with_db(crate::app::share::DbUse::Budget(total))
    }

    /// The same identity with `--db-pool-per-worker n` (see [`Worker::db_pool_size`]). For tests of
    /// app factories; the master sets it for every fork.
    pub fn with_db_pool_per_worker(self, n: usize) -> Worker {
        self.with_db(crate::app::share::DbUse::PerWorker(n))
    }

    /// The same identity with the database connections the settings give, if any.
    pub(crate) fn with_db(self, db: impl Into<Option<crate::app::share::DbUse>>) -> Worker {
        let mut id = (*self.id).clone();
        id.db = db.into();
        Worker {
            id: Arc::new(id),
            state: self.state,
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

    /// How many slots the pool has: the size this worker was forked for. A `SIGTTIN` forks its
    /// workers for the size the pool grows to, and running workers do not see a later resize.
    pub fn pool_size(&self) -> usize {
        self.id.pool_size
    }

    /// The master's generation when it forked this worker: 1 for the first pool, one more after each
    /// reload (`SIGHUP`), as in the master's process title (`gen G`) and log. A recycle or a resize
    /// keeps the generation; a new master (binary upgrade) starts again at 1.
    pub fn generation(&self) -> u64 {
        self.id.generation
    }

    /// The most extra workers the master keeps alive beside the pool during a reload, a recycle or a
    /// `SIGTTIN` (`--max-surge`, as it was when this worker was forked).
    pub fn max_surge(&self) -> usize {
        self.id.max_surge
    }

    /// This worker's share of a budget the whole pool draws on, such as the database's
    /// `max_connections`: `floor(total / (pool_size + max_surge))`. The master never keeps more
    /// workers alive than that divisor (the smallest of every live worker's, draining and surge workers
    /// included, see `--max-surge`), so the shares of all live workers never add up to more than
    /// `total`, during reloads, recycles, `SIGTTIN` and `SIGTTOU` too. A binary upgrade (`SIGUSR2`)
    /// runs two whole pools for a moment and is not covered.
    ///
    /// An error when `total` is smaller than `pool_size + max_surge` (the share would be 0); returned
    /// from a `try_app` factory, it fails the worker's boot with a message naming the minimum.
    ///
    /// ```
    /// let worker = hyperfork::Worker::new(0, 1234, 3);
    /// assert_eq!(worker.share_of(30).unwrap(), 7); // 30 / (3 workers + surge 1)
    /// assert!(worker.share_of(3).is_err());
    /// ```
    pub fn share_of(&self, total: usize) -> Result<usize, crate::app::ShareError> {
        crate::app::share::share(total, self.id.pool_size, self.id.max_surge)
    }

    /// How many database connections this worker's pool may open, from the settings:
    /// `--db-pool-per-worker N` gives `N`; `--db-budget N` gives [`Worker::share_of`]`(N)`, so that
    /// the whole pool, reload surge included, stays within `N`; neither gives `None` (the app decides).
    /// `hyperfork plan` and the start-up log check the same numbers against `--db-max-connections`.
    ///
    /// ```
    /// let worker = hyperfork::Worker::new(0, 1234, 3).with_db_budget(30);
    /// assert_eq!(worker.db_pool_size().unwrap(), Some(7)); // 30 / (3 workers + surge 1)
    /// let worker = hyperfork::Worker::new(0, 1234, 3).with_db_pool_per_worker(10);
    /// assert_eq!(worker.db_pool_size().unwrap(), Some(10));
    /// assert_eq!(hyperfork::Worker::new(0, 1234, 3).db_pool_size().unwrap(), None);
    /// ```
    pub fn db_pool_size(&self) -> Result<Option<usize>, crate::app::ShareError> {
        self.id
            .db
            .map(|db| db.per_worker(self.id.pool_size, self.id.max_surge))
            .transpose()
    }

    /// Whether this is slot 0, the primary worker (the one that runs scheduled jobs).
    pub fn is_primary(&self) -> bool {
        self.id.slot == 0
    }
}
