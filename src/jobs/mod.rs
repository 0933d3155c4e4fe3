//! Scheduled job definitions: what runs, when, and with which limits.
//!
//! A job is either an async Rust function (added with [`crate::Server::job`]) or a command (a `[[jobs]]`
//! table in the TOML file). Only the worker holding the scheduler lease runs jobs; see
//! [`crate::jobs::scheduler`].

pub(crate) mod command;
pub(crate) mod run_set;
pub(crate) mod schedule;
pub(crate) mod scheduler;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::app::Worker;
use crate::jobs::schedule::Schedule;

/// What a job run receives.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job's name.
    pub name: Arc<str>,
    /// The tick this run is for (not the moment it started).
    pub scheduled_at: DateTime<Utc>,
    /// The worker running it (always slot 0).
    pub worker: Worker,
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
pub(crate) type JobFn = Arc<dyn Fn(JobContext) -> JobFuture + Send + Sync>;

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

/// A scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
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
}

impl Job {
    /// A job running the async function `f` on `schedule`.
    pub fn new<F, Fut, R>(name: impl Into<String>, schedule: impl Into<Schedule>, f: F) -> Job
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: JobResult + 'static,
    {
        let f: JobFn = Arc::new(move |ctx| {
            let fut = f(ctx);
            Box::pin(async move { fut.await.into_outcome() })
        });
        Job {
            name: name.into(),
            schedule: schedule.into(),
            action: Action::Function(f),
            timeout: None,
            misfire_grace: None,
            overlap: false,
        }
    }

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
        }
    }

    /// Cancels a run that takes longer than `d`.
    pub fn timeout(mut self, d: Duration) -> Job {
        self.timeout = Some(d);
        self
    }

    /// Sets how late a missed tick may still run.
    pub fn misfire_grace(mut self, d: Duration) -> Job {
        self.misfire_grace = Some(d);
        self
    }

    /// Allows a tick to start while the previous run is still going.
    pub fn overlap(mut self, yes: bool) -> Job {
        self.overlap = yes;
        self
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
