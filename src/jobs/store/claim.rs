//! Claims: who runs a tick, with which fencing token, until when.
//!
//! A claim is one transaction on the store's connection:
//!
//! 1. `UPDATE hyperfork_job_tokens SET token = token + 1 … RETURNING token` (the row is made if need
//!    be). The row lock it takes serializes every claim of the job across the fleet until commit.
//! 2. One read of the job's claims: the row of this tick if any, the latest claimed tick, and a run
//!    of another tick whose lease has not expired and that has not finished.
//! 3. [`decide`]: insert the claim (`INSERT … ON CONFLICT (job, tick) DO NOTHING RETURNING`), take
//!    over an expired unfinished claim of the same tick (at-least-once jobs only), or give up.
//! 4. `COMMIT`; giving up rolls back, so the token only moves for claims that won, and tokens of a
//!    job strictly increase in the order claims were won.
//!
//! The lease is `clock_timestamp() + lease`, on the database's clock: hosts' clocks never decide
//! whether a lease has expired. While the run goes on its owner renews the lease at half its length;
//! when it ends the claim records `finished_at` and the outcome.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{Store, StoreError};

/// The existing claim of the tick being claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Existing {
    /// Who claimed it.
    pub owner: String,
    /// Whether its run finished.
    pub finished: bool,
    /// Whether its lease has not expired.
    pub live: bool,
}

/// What the claims table says about a job when a tick is claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The claim of this tick, if any.
    pub same: Option<Existing>,
    /// The latest tick of the job anyone claimed.
    pub latest: Option<DateTime<Utc>>,
    /// A run of another tick that has not finished and whose lease has not expired: owner, tick.
    pub running: Option<(String, DateTime<Utc>)>,
}

/// What a claim does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nobody claimed the tick: claim it.
    Insert,
    /// Its claim expired unfinished and the job is at-least-once: take it over.
    TakeOver,
    /// Someone else has (or had) it.
    Elsewhere(String),
    /// A later tick was claimed already: this one is coalesced into it.
    Superseded(DateTime<Utc>),
    /// Another run of the job still holds its lease (the job does not allow overlap).
    Busy(String, DateTime<Utc>),
}

/// The decision for claiming `tick` given what the table holds.
///
/// `overlap`: the job allows a run to start while another is going. `at_least_once`: an unfinished
/// claim whose lease expired may be taken over (the run is assumed lost with its host).
pub(crate) fn decide(
    tick: DateTime<Utc>,
    seen: &Seen,
    overlap: bool,
    at_least_once: bool,
) -> Decision {
    let busy = || {
        seen.running
            .as_ref()
            .filter(|_| !overlap)
            .map(|(owner, t)| Decision::Busy(owner.clone(), *t))
    };
    if let Some(latest) = seen.latest.filter(|l| *l > tick) {
        return match &seen.same {
            Some(e) => Decision::Elsewhere(e.owner.clone()),
            None => Decision::Superseded(latest),
        };
    }
    match &seen.same {
        Some(e) if e.finished || e.live || !at_least_once => Decision::Elsewhere(e.owner.clone()),
        Some(_) => busy().unwrap_or(Decision::TakeOver),
        None => busy().unwrap_or(Decision::Insert),
    }
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// This worker runs the tick, with this fencing token; `took_over`: the tick had an expired
    /// claim of another run.
    Won { token: i64, took_over: bool },
    /// Not run here: why, for the log.
    Lost(Decision),
}

/// What a claim needs to know about the job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub job: &'a str,
    pub tick: DateTime<Utc>,
    pub overlap: bool,
    pub at_least_once: bool,
}

const MAKE_TOKEN_ROW: &str =
    "INSERT INTO hyperfork_job_tokens (job, token) VALUES ($1, 0) ON CONFLICT (job) DO NOTHING";
const NEXT_TOKEN: &str =
    "UPDATE hyperfork_job_tokens SET token = token + 1 WHERE job = $1 RETURNING token";
const SEE: &str = "SELECT \
      (SELECT max(tick) FROM hyperfork_job_claims WHERE job = $1), \
      s.owner, s.finished_at IS NOT NULL, s.lease_until > clock_timestamp(), \
      r.owner, r.tick \
    FROM (SELECT 1) AS one \
    LEFT JOIN hyperfork_job_claims s ON s.job = $1 AND s.tick = $2 \
    LEFT JOIN LATERAL ( \
      SELECT owner, tick FROM hyperfork_job_claims \
      WHERE job = $1 AND tick <> $2 AND finished_at IS NULL AND lease_until > clock_timestamp() \
      ORDER BY tick DESC LIMIT 1) r ON true";
const INSERT: &str = "INSERT INTO hyperfork_job_claims \
      (job, tick, token, owner, claimed_at, lease_until) \
    VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp() + $5::bigint * interval '1 millisecond') \
    ON CONFLICT (job, tick) DO NOTHING RETURNING token";
const TAKE_OVER: &str = "UPDATE hyperfork_job_claims \
    SET token = $3, owner = $4, claimed_at = clock_timestamp(), \
      lease_until = clock_timestamp() + $5::bigint * interval '1 millisecond', attempts = attempts + 1 \
    WHERE job = $1 AND tick = $2 AND finished_at IS NULL AND lease_until <= clock_timestamp() \
    RETURNING token";
const RENEW: &str = "UPDATE hyperfork_job_claims \
    SET lease_until = clock_timestamp() + $4::bigint * interval '1 millisecond' \
    WHERE job = $1 AND tick = $2 AND token = $3 AND finished_at IS NULL \
      AND lease_until > clock_timestamp()";
const FINISH: &str = "UPDATE hyperfork_job_claims SET finished_at = clock_timestamp(), outcome = $4 \
    WHERE job = $1 AND tick = $2 AND token = $3 AND finished_at IS NULL \
    RETURNING lease_until > finished_at";
const LATEST: &str = "SELECT max(tick) FROM hyperfork_job_claims WHERE job = $1";
const ORPHAN: &str = "SELECT tick FROM hyperfork_job_claims \
    WHERE job = $1 AND finished_at IS NULL AND lease_until <= clock_timestamp() \
      AND tick = (SELECT max(tick) FROM hyperfork_job_claims WHERE job = $1)";
const PRUNE: &str = "DELETE FROM hyperfork_job_claims WHERE ctid IN ( \
      SELECT ctid FROM hyperfork_job_claims \
      WHERE job = $1 AND tick < clock_timestamp() - $2::bigint * interval '1 millisecond' \
        AND tick < (SELECT max(tick) FROM hyperfork_job_claims WHERE job = $1) \
        AND (finished_at IS NOT NULL OR lease_until < clock_timestamp()) \
      LIMIT 10000)";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Claims `ask.tick`; an error means the claim is not confirmed (it may or may not have
    /// committed) and the tick must not run.
    pub(crate) async fn claim(
        &self,
        ask: Ask<'_>,
        deadline: Instant,
    ) -> Result<Claimed, StoreError> {
        let mut session = self.session(deadline).await?;
        let lease = millis(self.config.lease);
        let owner = self.owner.clone();
        let run = async {
            let tx = session.client().transaction().await?;
            tx.execute(MAKE_TOKEN_ROW, &[&ask.job]).await?;
            let token: i64 = tx.query_one(NEXT_TOKEN, &[&ask.job]).await?.get(0);
            let row = tx.query_one(SEE, &[&ask.job, &ask.tick]).await?;
            let owner_of_same: Option<String> = row.get(1);
            let seen = Seen {
                latest: row.get(0),
                same: owner_of_same.map(|owner| Existing {
                    owner,
                    finished: row.get(2),
                    live: row.get(3),
                }),
                running: row
                    .get::<_, Option<String>>(4)
                    .zip(row.get::<_, Option<DateTime<Utc>>>(5)),
            };
            let decision = decide(ask.tick, &seen, ask.overlap, ask.at_least_once);
            let write = match decision {
                Decision::Insert => INSERT,
                Decision::TakeOver => TAKE_OVER,
                lost => {
                    tx.rollback().await?;
                    return Ok(Claimed::Lost(lost));
                }
            };
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&ask.job, &ask.tick, &token, &owner, &lease];
            if tx.query_opt(write, &args).await?.is_none() {
                // Cannot happen while every claim takes the token row's lock first; kept safe anyway.
                tx.rollback().await?;
                return Ok(Claimed::Lost(Decision::Elsewhere("another claim".into())));
            }
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(Claimed::Won {
                token,
                took_over: decision == Decision::TakeOver,
            })
        };
        let outcome = tokio::time::timeout_at(deadline, run).await;
        match outcome {
            Ok(Ok(claimed)) => Ok(claimed),
            Ok(Err(e)) => Err(session.failed(&e)),
            Err(_) => Err(session.timed_out()),
        }
    }

    /// Extends the lease of a run by the configured lease; `false` if the claim is no longer this
    /// run's (expired, taken over, or finished).
    pub(crate) async fn renew(
        &self,
        job: &str,
        tick: DateTime<Utc>,
        token: i64,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        let lease = millis(self.config.lease);
        self.execute(RENEW, &[&job, &tick, &token, &lease], deadline)
            .await
            .map(|n| n == 1)
    }

    /// Records the end of a run: `Some(true)` if it still held its lease, `Some(false)` if the lease
    /// had expired (nobody took the tick over, but later ticks may have run meanwhile), `None` if its
    /// claim was taken over.
    pub(crate) async fn finish(
        &self,
        job: &str,
        tick: DateTime<Utc>,
        token: i64,
        outcome: &str,
        deadline: Instant,
    ) -> Result<Option<bool>, StoreError> {
        let row = self
            .query_opt(FINISH, &[&job, &tick, &token, &outcome], deadline)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The latest tick of `job` anyone claimed.
    pub(crate) async fn latest(
        &self,
        job: &str,
        deadline: Instant,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self.query_opt(LATEST, &[&job], deadline).await?;
        Ok(row.and_then(|r| r.get(0)))
    }

    /// The latest tick of `job` if its claim expired before its run finished (its host is gone).
    pub(crate) async fn orphan(
        &self,
        job: &str,
        deadline: Instant,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row = self.query_opt(ORPHAN, &[&job], deadline).await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Deletes up to 10,000 claims of `job` older than the retention, ended (finished or expired),
    /// keeping the latest; returns how many went.
    pub(crate) async fn prune(&self, job: &str, deadline: Instant) -> Result<u64, StoreError> {
        let keep = millis(self.config.retention);
        self.execute(PRUNE, &[&job, &keep], deadline).await
    }

    /// One query returning at most one row, within `deadline`.
    async fn query_opt(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        deadline: Instant,
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let mut session = self.session(deadline).await?;
        let run = session.client().query_opt(sql, args);
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) => Err(session.failed(&e)),
            Err(_) => Err(session.timed_out()),
        }
    }

    /// One statement, within `deadline`.
    async fn execute(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        deadline: Instant,
    ) -> Result<u64, StoreError> {
        let mut session = self.session(deadline).await?;
        let run = session.client().execute(sql, args);
        match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(session.failed(&e)),
            Err(_) => Err(session.timed_out()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn existing(finished: bool, live: bool) -> Option<Existing> {
        Some(Existing {
            owner: "b".into(),
            finished,
            live,
        })
    }

    #[test]
    fn decisions() {
        let (t1, t2) = (t("2026-01-01T00:00:01Z"), t("2026-01-01T00:00:02Z"));
        let seen = |same, latest, running| Seen {
            same,
            latest,
            running,
        };
        let none = seen(None, None, None);
        assert_eq!(decide(t1, &none, false, false), Decision::Insert);
        // Claimed already: someone else's, whatever its state, unless at-least-once finds it lost.
        for (finished, live) in [(true, false), (false, true), (false, false), (true, true)] {
            let s = seen(existing(finished, live), Some(t1), None);
            assert_eq!(
                decide(t1, &s, false, false),
                Decision::Elsewhere("b".into())
            );
        }
        let lost = seen(existing(false, false), Some(t1), None);
        assert_eq!(decide(t1, &lost, false, true), Decision::TakeOver);
        assert_eq!(
            decide(
                t1,
                &seen(existing(true, false), Some(t1), None),
                false,
                true
            ),
            Decision::Elsewhere("b".into()),
            "a finished run is never taken over"
        );
        // A later tick was claimed: this one is coalesced into it, lost or not.
        assert_eq!(
            decide(t1, &seen(None, Some(t2), None), false, true),
            Decision::Superseded(t2)
        );
        assert_eq!(
            decide(
                t1,
                &seen(existing(false, false), Some(t2), None),
                false,
                true
            ),
            Decision::Elsewhere("b".into())
        );
        // Another tick's run still holds its lease: busy, unless the job allows overlap.
        let running = seen(None, Some(t1), Some(("c".into(), t1)));
        assert_eq!(
            decide(t2, &running, false, false),
            Decision::Busy("c".into(), t1)
        );
        assert_eq!(decide(t2, &running, true, false), Decision::Insert);
    }
}
