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
//!
//! With a job store (`--jobs-store`), interval ticks are counted from the Unix epoch instead of the
//! master's start, every tick is claimed in the store before it starts ([`crate::jobs::fleet`]), and
//! the catch-up after a new holder starts counts from the fleet's latest claimed tick when that is
//! later than this host's record.

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
use crate::jobs::fleet;
use crate::jobs::schedule::catch_up;
use crate::jobs::store::{FLEET_ANCHOR, Store, StoreConfig};
use crate::jobs::{Action, Delivery, Fence, Job, JobContext};
use crate::shared::control::{ControlWriter, Message, Skip};

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
    store: Option<Arc<Store>>,
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
    /// The origin of interval grids: the master's start, or the Unix epoch with a job store.
    anchor: DateTime<Utc>,
    /// Where the catch-up starts for a job this host has no record of: the master's start.
    since: DateTime<Utc>,
    worker: Worker,
    state: AnyState,
    control: ControlWriter,
    status: Arc<SchedulerStatus>,
    runs: Arc<RunSet>,
    store: Option<Arc<Store>>,
    stop: watch::Receiver<bool>,
}

impl LoopCtx {
    /// Counts and reports ticks of `job` not run here.
    fn not_run(&self, job: &str, count: u64, why: Skip) {
        self.status.update(job, |s| match why {
            Skip::Elsewhere => s.run_elsewhere += count,
            Skip::Store => {
                s.skipped += count;
                s.store_skipped += count;
            }
            Skip::Late | Skip::Overlap => s.skipped += count,
        });
        self.control.send(&Message::JobSkip {
            pid: self.worker.pid() as i32,
            count,
            why,
            job: job.to_string(),
        });
    }
}

impl Scheduler {
    pub(crate) fn new(
        jobs: &[Job],
        worker: Worker,
        state: AnyState,
        control: ControlWriter,
        store: Option<&StoreConfig>,
    ) -> Scheduler {
        let status = worker.scheduler_status();
        for j in jobs {
            status.update(&j.name, |s| s.schedule = j.schedule.to_string());
        }
        let store = store.map(|c| Arc::new(Store::new(c.clone(), worker.pid())));
        Scheduler {
            jobs: jobs.iter().cloned().map(Arc::new).collect(),
            worker,
            state,
            control,
            status,
            store,
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
        let since = DateTime::from_timestamp_millis(anchor_ms).unwrap_or_else(Utc::now);
        let anchor = grid_anchor(self.store.is_some(), since);
        match &self.store {
            Some(store) => tracing::info!(
                "holding the scheduler lease: {} job(s), claimed in the job store {} as \"{}\"",
                self.jobs.len(),
                store.config().url,
                store.owner()
            ),
            None => tracing::info!("holding the scheduler lease: {} job(s)", self.jobs.len()),
        }
        self.status.holder.store(true, Ordering::Relaxed);
        let (stop, stop_rx) = watch::channel(false);
        let runs = Arc::new(RunSet::default());
        let ctx = LoopCtx {
            anchor,
            since,
            worker: self.worker.clone(),
            state: self.state.clone(),
            control: self.control,
            status: self.status.clone(),
            runs: runs.clone(),
            store: self.store.clone(),
            stop: stop_rx.clone(),
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

/// The origin of interval grids: the master's start on one host; with a job store, the Unix epoch,
/// the same for every host whenever it started, so that every host computes the same tick keys.
pub(crate) fn grid_anchor(store: bool, master_start: DateTime<Utc>) -> DateTime<Utc> {
    if store { FLEET_ANCHOR } else { master_start }
}

async fn job_loop(
    job: Arc<Job>,
    last: Option<DateTime<Utc>>,
    mut stop: watch::Receiver<bool>,
    ctx: LoopCtx,
) {
    let mut last = last.unwrap_or(ctx.since);
    if let Some(store) = &ctx.store {
        // Ticks another host ran meanwhile are not missed: count from the fleet's latest claim.
        if let Some(fleet) = fleet::latest(store, &job.name).await {
            last = last.max(fleet);
        }
    }
    let now = Utc::now();
    let mut cursor = last.max(now);
    apply_catch_up(&job, last, now, &ctx).await;
    // At-least-once jobs look for a lost run of their latest tick at half the lease.
    let rescue_every = match (&ctx.store, job.delivery) {
        (Some(store), Delivery::AtLeastOnce) => Some(store.config().lease / 2),
        _ => None,
    };
    let mut next_rescue = rescue_every.map(|p| Instant::now() + p);
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
            let mut wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            if let Some(at) = next_rescue {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if let (Some(at), Some(every)) = (next_rescue, rescue_every) {
                if Instant::now() >= at {
                    let lost = match &ctx.store {
                        Some(store) => fleet::lost_run(&job, store).await,
                        None => None,
                    };
                    if let Some(tick) = lost {
                        fire(&job, tick, &ctx).await;
                    }
                    next_rescue = Some(Instant::now() + every);
                }
            }
            if *stop.borrow() {
                return;
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
        ctx.not_run(&job.name, c.skipped as u64, Skip::Late);
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
        ctx.not_run(&job.name, 1, Skip::Overlap);
        return;
    }
    // With a store, the fleet decides first: a tick another host has, or that cannot be confirmed,
    // does not run here.
    let fence = match &ctx.store {
        Some(store) => match fleet::claim(job, tick, store, ctx.stop.clone(), |why| {
            ctx.not_run(&job.name, 1, why)
        })
        .await
        {
            Some(token) => Some(Fence::new(Arc::from(job.name.as_str()), tick, token)),
            None => return,
        },
        None => None,
    };
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
        if let Some(f) = &fence {
            s.last_token = Some(f.token());
        }
    });
    let (job, status, worker) = (job.clone(), ctx.status.clone(), ctx.worker.clone());
    let (state, control, store) = (ctx.state.clone(), ctx.control, ctx.store.clone());
    ctx.runs.spawn(async move {
        let started = Instant::now();
        let worker_pid = worker.pid() as i32;
        let run = run_once(&job, tick, worker, &state, fence.clone());
        let outcome = match (&store, &fence) {
            (Some(store), Some(fence)) => fleet::hold(store, fence, run).await,
            _ => run.await,
        };
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
    fence: Option<Fence>,
) -> Result<(), String> {
    match &job.action {
        Action::Function(f) => {
            let ctx = JobContext {
                name: Arc::from(job.name.as_str()),
                scheduled_at: tick,
                worker,
                fence,
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
            let token = fence.map(|f| f.token());
            crate::jobs::command::run(&job.name, argv, tick, &worker, job.timeout, token).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::schedule::{Cron, Every, Schedule};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The ticks a host's slot 0 would start in `(from, to]`, as its loop computes them.
    fn ticks(
        s: &Schedule,
        anchor: DateTime<Utc>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cur = from;
        while let Some(next) = s.next_after(cur, anchor).filter(|n| *n <= to) {
            out.push(next);
            cur = next;
        }
        out
    }

    #[test]
    fn hosts_started_at_different_times_compute_the_same_tick_keys_with_a_store() {
        // Host A's master started at 10:00:00.300, host B's 7.6 s later; B's slot 0 was replaced at
        // 10:20:01.234 (a new lease holder computes from its own now).
        let (a_start, b_start) = (t("2026-03-01T10:00:00.300Z"), t("2026-03-01T10:00:07.900Z"));
        let end = t("2026-03-01T13:00:00Z");
        let schedules = [
            Schedule::from(Every::seconds(1)),
            Schedule::from(Every::seconds(7)),
            Schedule::from(Every::new(Duration::from_millis(1500)).unwrap()),
            Schedule::from(Every::minutes(90)),
            Schedule::from(Cron::parse("*/5 * * * *").unwrap()),
        ];
        for s in &schedules {
            let a = ticks(s, grid_anchor(true, a_start), b_start, end);
            let b = ticks(s, grid_anchor(true, b_start), b_start, end);
            assert!(!a.is_empty());
            assert_eq!(a, b, "{s}: the same keys on both hosts");
            // A later holder on B, from its own moment, lands on the same grid.
            let late = t("2026-03-01T10:20:01.234Z");
            let b2 = ticks(s, grid_anchor(true, b_start), late, end);
            assert!(
                b2.iter().all(|k| a.contains(k)),
                "{s}: a new holder stays on the grid"
            );
            // And the catch-up of ticks missed before it picks one of those keys.
            let c = catch_up(
                s,
                b_start,
                late,
                grid_anchor(true, b_start),
                Duration::from_secs(3600),
            );
            assert!(c.run.is_none_or(|k| a.contains(&k)), "{s}: {c:?}");
        }
        // The grid is the epoch's: a 90-minute job runs at 00:00, 01:30, 03:00 … UTC.
        let s = Schedule::from(Every::minutes(90));
        assert_eq!(
            ticks(
                &s,
                grid_anchor(true, a_start),
                a_start,
                t("2026-03-01T13:00:00Z")
            ),
            [t("2026-03-01T10:30:00Z"), t("2026-03-01T12:00:00Z")]
        );
        // Without a store each host counts from its own start, and the keys would differ.
        let s = Schedule::from(Every::seconds(10));
        let a = ticks(&s, grid_anchor(false, a_start), b_start, end);
        let b = ticks(&s, grid_anchor(false, b_start), b_start, end);
        assert!(a.iter().all(|k| !b.contains(k)));
    }
}
