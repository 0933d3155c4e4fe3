//! A scheduling worker's side of the job store: claiming a tick before it runs, holding the claim
//! while it runs (renewed at half the lease), recording its end, and finding a lost run to take over
//! (at-least-once jobs). What the store says is logged with the job and the tick, and counted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::time::Instant;

use tokio::sync::watch;

use crate::jobs::store::claim::{Ask, Claimed, Decision};
use crate::jobs::store::{Store, StoreError};
use crate::jobs::{Delivery, Fence, Job};
use crate::shared::control::Skip;

/// The least time a claim is given, however close its tick is to the end of its misfire grace.
const LEAST_CLAIM_TIME: Duration = Duration::from_secs(1);
/// How long a new holder waits for the fleet's latest tick before counting from its own record.
const LOOKUP_TIME: Duration = Duration::from_secs(2);
/// How often old claims of a job are deleted, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The longest outcome text kept in the claims table.
const MAX_OUTCOME: usize = 1000;

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The latest tick of `job` claimed anywhere in the fleet; `None` if there is none, or the store did
/// not answer in time (then this host's own record decides the catch-up).
pub(crate) async fn latest(store: &Store, job: &str) -> Option<DateTime<Utc>> {
    match store.latest(job, Instant::now() + LOOKUP_TIME).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!("job {job:?}: no latest tick from the job store ({e})");
            None
        }
    }
}

/// Claims `tick` of `job`; its fencing token if this worker runs it. Anything else is logged and
/// passed to `not_run`: run elsewhere, the previous run still going on another host, or not
/// confirmed. Gives up (without a word) when `stop` changes: the scheduler is stopping.
pub(crate) async fn claim(
    job: &Job,
    tick: DateTime<Utc>,
    store: &Arc<Store>,
    mut stop: watch::Receiver<bool>,
    not_run: impl Fn(Skip),
) -> Option<i64> {
    let ask = Ask {
        job: &job.name,
        tick,
        overlap: job.overlap,
        at_least_once: job.delivery == Delivery::AtLeastOnce,
    };
    // Until the tick's misfire grace runs out: as late as the tick could still run.
    let left = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
    let left = left + job.grace();
    let deadline = Instant::now() + left.max(LEAST_CLAIM_TIME);
    let outcome = tokio::select! {
        o = store.claim(ask, deadline) => o,
        _ = stop.changed() => return None,
    };
    let (name, at) = (&job.name, rfc3339(tick));
    match outcome {
        Ok(Claimed::Won { token, took_over }) => {
            if took_over {
                tracing::warn!(
                    "job {name:?}: tick {at} taken over with token {token}: the run that had it \
                     lost its lease before finishing (at-least-once)"
                );
            }
            maybe_prune(store, name);
            Some(token)
        }
        Ok(Claimed::Lost(why)) => {
            match why {
                Decision::Elsewhere(owner) => {
                    tracing::debug!("job {name:?}: tick {at} run elsewhere ({owner})");
                    not_run(Skip::Elsewhere);
                }
                Decision::Superseded(later) => {
                    tracing::debug!(
                        "job {name:?}: tick {at} not run: a later tick ({}) was claimed already",
                        rfc3339(later)
                    );
                    not_run(Skip::Elsewhere);
                }
                Decision::Busy(owner, other) => {
                    tracing::warn!(
                        "job {name:?}: tick {at} skipped: the run of tick {} is still going on \
                         {owner}",
                        rfc3339(other)
                    );
                    not_run(Skip::Overlap);
                }
                Decision::Insert | Decision::TakeOver => {}
            }
            None
        }
        Err(e) => {
            tracing::warn!(
                "job {name:?}: tick {at} skipped: the job store could not confirm the claim ({e})"
            );
            not_run(Skip::Store);
            None
        }
    }
}

/// Runs `run` while holding `fence`'s claim: renews the lease at half its length, then records the
/// end of the run (retrying until the lease would have expired).
pub(crate) async fn hold(
    store: &Arc<Store>,
    fence: &Fence,
    run: impl Future<Output = Result<(), String>>,
) -> Result<(), String> {
    let outcome = tokio::select! {
        o = run => o,
        never = renew(store, fence) => match never {},
    };
    finish(store, fence, &outcome).await;
    outcome
}

/// Renews the claim at half the lease, for as long as it is this run's; never returns.
async fn renew(store: &Store, fence: &Fence) -> std::convert::Infallible {
    let every = store.config().lease / 2;
    let (name, at, token) = (fence.job(), rfc3339(fence.tick()), fence.token());
    let mut held = true;
    loop {
        tokio::time::sleep(every).await;
        if !held {
            continue;
        }
        match store
            .renew(name, fence.tick(), token, Instant::now() + every)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                held = false;
                tracing::warn!(
                    "job {name:?}: tick {at}: the run lost its claim (lease expired or taken \
                     over); writes guarded by its token {token} are refused once a newer claim \
                     exists"
                );
            }
            Err(e) => tracing::warn!(
                "job {name:?}: tick {at}: cannot renew the claim ({e}); it expires unless a later \
                 renewal gets through"
            ),
        }
    }
}

/// Records the end of the run in its claim.
async fn finish(store: &Store, fence: &Fence, outcome: &Result<(), String>) {
    let text = match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => e.chars().take(MAX_OUTCOME).collect(),
    };
    let (name, at) = (fence.job(), rfc3339(fence.tick()));
    let deadline = Instant::now() + store.config().lease;
    loop {
        match store
            .finish(name, fence.tick(), fence.token(), &text, deadline)
            .await
        {
            Ok(Some(true)) => return,
            Ok(Some(false)) => {
                tracing::warn!(
                    "job {name:?}: tick {at}: the run lost its claim (its lease expired) before it \
                     ended; writes guarded by its token {} are refused once a newer claim exists",
                    fence.token()
                );
                return;
            }
            Ok(None) => {
                tracing::warn!(
                    "job {name:?}: tick {at}: the run lost its claim (taken over) before it ended; \
                     writes guarded by its token {} are refused",
                    fence.token()
                );
                return;
            }
            Err(e) if Instant::now() + Duration::from_millis(200) < deadline => {
                tracing::debug!("job {name:?}: tick {at}: cannot record the end yet ({e})");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                tracing::warn!(
                    "job {name:?}: tick {at}: cannot record the end of the run ({e}); its claim \
                     expires with its lease"
                );
                return;
            }
        }
    }
}

/// The latest tick of an at-least-once `job` if its run was lost (its claim expired unfinished) and
/// it is still within the misfire grace.
pub(crate) async fn lost_run(job: &Job, store: &Store) -> Option<DateTime<Utc>> {
    let wait = store.config().lease / 2;
    let tick = match store.orphan(&job.name, Instant::now() + wait).await {
        Ok(t) => t?,
        Err(e) => {
            tracing::debug!("job {:?}: cannot look for a lost run ({e})", job.name);
            return None;
        }
    };
    let late = (Utc::now() - tick).to_std().unwrap_or(Duration::ZERO);
    (late <= job.grace()).then_some(tick)
}

/// Deletes old claims of `job` in the background, at most once an hour per worker.
fn maybe_prune(store: &Arc<Store>, job: &str) {
    if !store.due_for_pruning(job, PRUNE_EVERY) {
        return;
    }
    let (store, job) = (store.clone(), job.to_string());
    tokio::spawn(async move {
        match store
            .prune(&job, Instant::now() + Duration::from_secs(10))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!("job {job:?}: deleted {n} old claim(s)"),
            Err(StoreError::Timeout) => {
                tracing::debug!("job {job:?}: deleting old claims took too long; next time")
            }
            Err(e) => tracing::debug!("job {job:?}: cannot delete old claims ({e})"),
        }
    });
}
