//! Scheduled job definitions: what runs, when, and with which limits.
//!
//! A job is either an async Rust function (added with [`crate::Server::job`]) or a command (a `[[jobs]]`
//! table in the TOML file). Only the worker holding the scheduler lease runs jobs; see
//! [`crate::jobs::scheduler`]. With a job store ([`store`]), hosts running the same service also claim
//! each tick in PostgreSQL, and a run gets a fencing token ([`Fence`]).

pub(crate) mod command;
pub(crate) mod fence;
pub(crate) mod fleet;
pub(crate) mod run_set;
pub(crate) mod schedule;
pub(crate) mod scheduler;
pub(crate) mod store;

pub use fence::Fence;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::app::Worker;
use crate::app::state::{AnyState, typed};
use crate::jobs::schedule::Schedule;

/// What a job run receives: the tick, and the worker running it with the app's state.
pub struct JobContext<S = ()> {
    /// The job's name.
    pub name: Arc<str>,
    /// The tick this run is for (not the moment it started).
    pub scheduled_at: DateTime<Utc>,
    /// The worker running it (always slot 0), with the app state its start hook built.
    pub worker: Worker<S>,
    /// The run's claim in the job store (`--jobs-store`): guard the job's writes with its token;
    /// `None` without a store.
    pub fence: Option<Fence>,
}

impl<S> JobContext<S> {
    /// The app state of the worker running the job (see [`crate::Server::state`]).
    pub fn state(&self) -> &S {
        self.worker.state()
    }
}

impl<S> Clone for JobContext<S> {
    fn clone(&self) -> Self {
        JobContext {
            name: self.name.clone(),
            scheduled_at: self.scheduled_at,
            worker: self.worker.clone(),
            fence: self.fence.clone(),
        }
    }
}

impl<S> fmt::Debug for JobContext<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("name", &self.name)
            .field("scheduled_at", &self.scheduled_at)
            .field("worker", &self.worker)
            .field("fence", &self.fence)
            .finish()
    }
}

/// What a job function may return: `()` or a `Result` whose error is displayed in the log.
pub trait JobResult {
    /// `Ok` for success, `Err(text)` for a failure.
    fn into_outcome(self) -> Result<(), String>;
}

impl JobResult for () {
    fn into_outcome(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> JobResult for Result<(), E> {
    fn into_outcome(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

pub(crate) type JobFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
/// A job function with the app state's type erased: it is called with the worker's identity and the
/// state, and turns them back into the `JobContext<S>` it was written for.
pub(crate) type JobFn = Arc<dyn Fn(JobContext, &AnyState) -> JobFuture + Send + Sync>;

/// What a job does.
#[derive(Clone)]
pub enum Action {
    /// An async function.
    Function(JobFn),
    /// A program and its arguments, run as a child of the scheduling worker.
    Command(Vec<String>),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Function(_) => f.write_str("Function(..)"),
            Action::Command(argv) => f.debug_tuple("Command").field(argv).finish(),
        }
    }
}

/// What becomes of a tick whose run was lost with its host, when a job store is used
/// (`--jobs-store`); without one, a run lost with its worker is never run again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Delivery {
    /// Each tick runs at most once: a run lost with its host (or its database connection) is not
    /// run again.
    #[default]
    AtMostOnce,
    /// A run lost with its host is run again elsewhere, with a higher fencing token, once its lease
    /// has expired, if the tick is still within its misfire grace and no later tick was claimed:
    /// a tick may then run twice (at least once), so the job guards its writes with the token.
    AtLeastOnce,
}

/// A scheduled job, for an app whose state is `S` (`()` for jobs that need none, commands included).
pub struct Job<S = ()> {
    /// Unique name, used in logs, `/health` and `HYPERFORK_JOB`.
    pub name: String,
    /// When it runs.
    pub schedule: Schedule,
    /// What it does.
    pub action: Action,
    /// A run still going after this long is cancelled (a command is killed).
    pub timeout: Option<Duration>,
    /// How late a missed tick may still be run when a new scheduler takes over; default one interval
    /// for `every`, 60 s for cron.
    pub misfire_grace: Option<Duration>,
    /// Whether a tick may start while the previous run is still going.
    pub overlap: bool,
    /// Whether a run lost with its host is run again elsewhere (job store only).
    pub delivery: Delivery,
    /// The state type its function expects.
    state: PhantomData<fn() -> S>,
}

impl<S> Clone for Job<S> {
    fn clone(&self) -> Self {
        Job {
            name: self.name.clone(),
            schedule: self.schedule.clone(),
            action: self.action.clone(),
            timeout: self.timeout,
            misfire_grace: self.misfire_grace,
            overlap: self.overlap,
            delivery: self.delivery,
            state: PhantomData,
        }
    }
}

impl<S> fmt::Debug for Job<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("action", &self.action)
            .field("timeout", &self.timeout)
            .field("misfire_grace", &self.misfire_grace)
            .field("overlap", &self.overlap)
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl<S: Send + Sync + 'static> Job<S> {
    /// A job running the async function `f` on `schedule`; `f` gets a [`JobContext<S>`], whose
    /// [`JobContext::state`] is the app state.
    pub fn new<F, Fut, R>(name: impl Into<String>, schedule: impl Into<Schedule>, f: F) -> Job<S>
    where
        F: Fn(JobContext<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: JobResult + 'static,
    {
        let f: JobFn = Arc::new(move |ctx: JobContext, state: &AnyState| {
            let state = match typed::<S>(state) {
                Ok(s) => s,
                Err(e) => {
                    let e = e.to_string();
                    return Box::pin(async move { Err(e) });
                }
            };
            let JobContext {
                name,
                scheduled_at,
                worker,
                fence,
            } = ctx;
            let fut = f(JobContext {
                name,
                scheduled_at,
                worker: worker.with_state(state),
                fence,
            });
            Box::pin(async move { fut.await.into_outcome() })
        });
        Job {
            name: name.into(),
            schedule: schedule.into(),
            action: Action::Function(f),
            timeout: None,
            misfire_grace: None,
            overlap: false,
            delivery: Delivery::AtMostOnce,
            state: PhantomData,
        }
    }

    /// The same job, with the state type erased (the scheduler's form).
    pub(crate) fn erase(self) -> Job {
        Job {
            name: self.name,
            schedule: self.schedule,
            action: self.action,
            timeout: self.timeout,
            misfire_grace: self.misfire_grace,
            overlap: self.overlap,
            delivery: self.delivery,
            state: PhantomData,
        }
    }

    /// Cancels a run that takes longer than `d`.
    pub fn timeout(mut self, d: Duration) -> Job<S> {
        self.timeout = Some(d);
        self
    }

    /// Sets how late a missed tick may still run.
    pub fn misfire_grace(mut self, d: Duration) -> Job<S> {
        self.misfire_grace = Some(d);
        self
    }

    /// Allows a tick to start while the previous run is still going.
    pub fn overlap(mut self, yes: bool) -> Job<S> {
        self.overlap = yes;
        self
    }

    /// Sets what becomes of a run lost with its host, with a job store (the default: at most once).
    pub fn delivery(mut self, d: Delivery) -> Job<S> {
        self.delivery = d;
        self
    }
}

impl Job {
    /// A job running a command (`argv[0]` looked up in `PATH`).
    pub fn command(
        name: impl Into<String>,
        schedule: impl Into<Schedule>,
        argv: Vec<String>,
    ) -> Job {
        Job {
            name: name.into(),
            schedule: schedule.into(),
            action: Action::Command(argv),
            timeout: None,
            misfire_grace: None,
            overlap: false,
            delivery: Delivery::AtMostOnce,
            state: PhantomData,
        }
    }

    /// The misfire grace in effect.
    pub fn grace(&self) -> Duration {
        self.misfire_grace
            .unwrap_or_else(|| self.schedule.default_misfire_grace())
    }
}

/// Checks a set of jobs: names non-empty, unique and short; commands non-empty.
pub fn validate(jobs: &[Job]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for j in jobs {
        if j.name.trim().is_empty() {
            return Err("a job has an empty name".into());
        }
        if j.name.len() > 200 || j.name.contains(['\n', '\r']) {
            return Err(format!(
                "job name {:?}: expected at most 200 characters on one line",
                j.name
            ));
        }
        if !seen.insert(j.name.as_str()) {
            return Err(format!(
                "job name {:?} is used twice: expected unique names",
                j.name
            ));
        }
        if let Action::Command(argv) = &j.action {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err(format!("job {:?}: command is empty", j.name));
            }
        }
    }
    Ok(())
}
