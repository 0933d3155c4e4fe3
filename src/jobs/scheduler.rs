//! The scheduler inside a worker: runs jobs while this worker holds the scheduler lease.
//!
//! The master grants the lease (see [`crate::master::lease`] for why no tick ever runs twice) over the worker's
//! order pipe. On a grant the scheduler starts one loop per job: it first applies the catch-up rule to
//! ticks missed since the last holder's last tick ([`crate::jobs::schedule::catch_up`]), then sleeps until
//! each next tick. Before a run starts, the tick is reported to the master. A run that is still going
//! when the next tick comes makes that tick skip (unless the job allows overlap). A run that fails —
//! error, panic, non-zero exit, timeout — is logged with its outcome and duration and changes nothing
//! else.
//!
//! On a revoke, or when the worker starts draining, the loops stop at once (no new run starts), the
//! running ones may finish within the graceful timeout, and the worker reports the release.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::SchedulerStatus;
use crate::jobs::run_set::RunSet;

use crate::app::Worker;
use crate::app::state::AnyState;
use crate::jobs::schedule::catch_up;
use crate::jobs::{Action, Job, JobContext};
use crate::shared::control::{ControlWriter, Message};

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The scheduler of one worker.
pub(crate) struct Scheduler {
    jobs: Vec<Arc<Job>>,
    worker: Worker,
    state: AnyState,
    control: ControlWriter,
    status: Arc<SchedulerStatus>,
    active: Option<Active>,
    retired: bool,
}

struct Active {
    stop: watch::Sender<bool>,
    loops: JoinSet<()>,
    runs: Arc<RunSet>,
}

/// What every job loop shares.
#[derive(Clone)]
struct LoopCtx {
    anchor: DateTime<Utc>,
    worker: Worker,
    state: AnyState,
    control: ControlWriter,
    status: Arc<SchedulerStatus>,
    runs: Arc<RunSet>,
}

impl Scheduler {
    pub(crate) fn new(
        jobs: &[Job],
        worker: Worker,
        state: AnyState,
        control: ControlWriter,
    ) -> Scheduler {
        let status = worker.scheduler_status();
        for j in jobs {
            status.update(&j.name, |s| s.schedule = j.schedule.to_string());
        }
        Scheduler {
            jobs: jobs.iter().cloned().map(Arc::new).collect(),
            worker,
            state,
            control,
            status,
            active: None,
            retired: false,
        }
    }

    /// Starts scheduling: the lease was granted.
    pub(crate) fn start(&mut self, anchor_ms: i64, last_ticks: &BTreeMap<String, i64>) {
        if self.active.is_some() || self.retired {
            tracing::warn!("scheduler lease granted twice or after retirement; ignoring");
            return;
        }
        let anchor = DateTime::from_timestamp_millis(anchor_ms).unwrap_or_else(Utc::now);
        tracing::info!("holding the scheduler lease: {} job(s)", self.jobs.len());
        self.status.holder.store(true, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let runs = Arc::new(RunSet::default());
        let ctx = LoopCtx {
            anchor,
            worker: self.worker.clone(),
            state: self.state.clone(),
            control: self.control,
            status: self.status.clone(),
            runs: runs.clone(),
        };
        let mut loops = JoinSet::new();
        for job in &self.jobs {
            let last = last_ticks
                .get(&job.name)
                .and_then(|&ms| DateTime::from_timestamp_millis(ms));
            loops.spawn(job_loop(job.clone(), last, stop_rx.clone(), ctx.clone()));
        }
        self.active = Some(Active { stop, loops, runs });
    }

    /// Stops scheduling for good: no new run starts; running ones get up to `grace` to end, then are
    /// cancelled. Returns whether the lease was held.
    pub(crate) async fn stop(&mut self, grace: Duration) -> bool {
        self.retired = true;
        let Some(mut active) = self.active.take() else {
            return false;
        };
        let _ = active.stop.send(true);
        while active.loops.join_next().await.is_some() {}
        let runs = &active.runs;
        if runs.len() > 0 {
            tracing::info!("waiting for {} running job(s)", runs.len());
            let drained = tokio::time::timeout(grace, runs.wait_empty()).await;
            if drained.is_err() {
                tracing::warn!("cancelling {} job run(s) still going", runs.len());
                runs.abort_all();
                runs.wait_empty().await;
            }
        }
        self.status.holder.store(false, Ordering::Relaxed);
        true
    }
}

async fn job_loop(
    job: Arc<Job>,
    last: Option<DateTime<Utc>>,
    mut stop: watch::Receiver<bool>,
    ctx: LoopCtx,
) {
    let now = Utc::now();
    let last = last.unwrap_or(ctx.anchor);
    let mut cursor = last.max(now);
    apply_catch_up(&job, last, now, &ctx).await;
    loop {
        let Some(next) = job.schedule.next_after(cursor, ctx.anchor) else {
            tracing::warn!("job {:?}: {} has no future tick", job.name, job.schedule);
            return;
        };
        loop {
            let now = Utc::now();
            if now >= next {
                break;
            }
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        let now = Utc::now();
        apply_catch_up(&job, cursor, now, &ctx).await;
        cursor = now;
    }
}

/// Runs (or skips) the ticks in `(after, now]`, by the misfire rule.
async fn apply_catch_up(job: &Arc<Job>, after: DateTime<Utc>, now: DateTime<Utc>, ctx: &LoopCtx) {
    let c = catch_up(&job.schedule, after, now, ctx.anchor, job.grace());
    if c.skipped > 0 {
        tracing::warn!(
            "job {:?}: {} tick(s) missed beyond the misfire grace ({}); skipped",
            job.name,
            c.skipped,
            humantime::format_duration(job.grace())
        );
        ctx.status
            .update(&job.name, |s| s.skipped += c.skipped as u64);
        ctx.control.send(&Message::JobSkip {
            pid: ctx.worker.pid() as i32,
            count: c.skipped as u64,
            job: job.name.clone(),
        });
    }
    if c.coalesced > 0 {
        tracing::info!(
            "job {:?}: {} missed tick(s) coalesced into one run",
            job.name,
            c.coalesced
        );
    }
    if let Some(tick) = c.run {
        fire(job, tick, ctx).await;
    }
}

/// Starts one run of `job` for `tick`, unless the previous run is still going.
async fn fire(job: &Arc<Job>, tick: DateTime<Utc>, ctx: &LoopCtx) {
    let running = ctx
        .status
        .jobs
        .lock()
        .map(|j| j.get(&job.name).map_or(0, |s| s.running))
        .unwrap_or(0);
    if running > 0 && !job.overlap {
        tracing::warn!(
            "job {:?}: tick {} skipped: the previous run is still going",
            job.name,
            rfc3339(tick)
        );
        ctx.status.update(&job.name, |s| s.skipped += 1);
        ctx.control.send(&Message::JobSkip {
            pid: ctx.worker.pid() as i32,
            count: 1,
            job: job.name.clone(),
        });
        return;
    }
    // Report first: the master records the tick before the run can have any effect.
    ctx.control.send(&Message::JobStart {
        pid: ctx.worker.pid() as i32,
        tick_ms: tick.timestamp_millis(),
        job: job.name.clone(),
    });
    ctx.status.update(&job.name, |s| {
        s.runs += 1;
        s.running += 1;
        s.last_tick = Some(rfc3339(tick));
    });
    let (job, status, worker) = (job.clone(), ctx.status.clone(), ctx.worker.clone());
    let (state, control) = (ctx.state.clone(), ctx.control);
    ctx.runs.spawn(async move {
        let started = Instant::now();
        let worker_pid = worker.pid() as i32;
        let outcome = run_once(&job, tick, worker, &state).await;
        let took = started.elapsed();
        let ms = took.as_millis() as u64;
        match &outcome {
            // Success is routine (a 2 s job would log 43,200 lines a day at info); the counters in
            // `/health` keep the tally.
            Ok(()) => tracing::debug!(
                "job {:?} (tick {}) succeeded in {ms} ms",
                job.name,
                rfc3339(tick)
            ),
            Err(e) => tracing::warn!(
                "job {:?} (tick {}) failed after {ms} ms: {e}",
                job.name,
                rfc3339(tick)
            ),
        }
        control.send(&Message::JobEnd {
            pid: worker_pid,
            ok: outcome.is_ok(),
            duration_ms: ms,
            job: job.name.clone(),
        });
        status.update(&job.name, |s| {
            s.running = s.running.saturating_sub(1);
            s.last_finished = Some(rfc3339(Utc::now()));
            s.last_duration_ms = Some(ms);
            match &outcome {
                Ok(()) => s.last_outcome = Some("ok".into()),
                Err(e) => {
                    s.failures += 1;
                    s.last_outcome = Some(e.clone());
                }
            }
        });
    });
}

async fn run_once(
    job: &Job,
    tick: DateTime<Utc>,
    worker: Worker,
    state: &AnyState,
) -> Result<(), String> {
    match &job.action {
        Action::Function(f) => {
            let ctx = JobContext {
                name: Arc::from(job.name.as_str()),
                scheduled_at: tick,
                worker,
            };
            let mut handle = tokio::spawn(f(ctx, state));
            let joined = match job.timeout {
                Some(t) => match tokio::time::timeout(t, &mut handle).await {
                    Ok(j) => j,
                    Err(_) => {
                        handle.abort();
                        return Err(format!(
                            "timed out after {}; cancelled",
                            humantime::format_duration(t)
                        ));
                    }
                },
                None => handle.await,
            };
            match joined {
                Ok(r) => r,
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let text = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown payload".into());
                    Err(format!("panicked: {text}"))
                }
                Err(_) => Err("cancelled".into()),
            }
        }
        Action::Command(argv) => {
            crate::jobs::command::run(&job.name, argv, tick, &worker, job.timeout).await
        }
    }
}
