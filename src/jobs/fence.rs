//! The fencing token of a run under a job store (`--jobs-store`), as a job sees it.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// The claim a run holds in the job store: its job, tick and fencing token.
///
/// Tokens of a job strictly increase in the order claims were won, across the whole fleet. A run
/// whose host paused or lost the database past its lease may still be going when another host claims
/// a later tick (or, for an at-least-once job, the same tick again) with a higher token. To keep such
/// a stale run from writing, make its writes in one transaction that starts with
/// [`Fence::CHECK`]: `hyperfork_fence(job, token)` raises SQLSTATE [`Fence::STALE`] (`HF001`) unless
/// the token is still the job's latest, and holds a share lock on the job's token row until the
/// transaction ends, so no newer claim commits in between.
///
/// ```no_run
/// # async fn record(ctx: hyperfork::JobContext, client: &mut tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
/// let tx = client.transaction().await?;
/// if let Some(fence) = &ctx.fence {
///     // Fails the transaction if a newer claim of this job exists.
///     tx.execute(hyperfork::Fence::CHECK, &[&fence.job(), &fence.token()]).await?;
/// }
/// tx.execute("INSERT INTO usage (tick) VALUES ($1)", &[&ctx.scheduled_at]).await?;
/// tx.commit().await
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Fence {
    job: Arc<str>,
    tick: DateTime<Utc>,
    token: i64,
}

impl Fence {
    /// The statement that guards a transaction: parameters `$1` the job's name (text) and `$2` the
    /// token (bigint).
    pub const CHECK: &'static str = "SELECT hyperfork_fence($1, $2)";

    /// The SQLSTATE `hyperfork_fence` raises for a stale token.
    pub const STALE: &'static str = "HF001";

    pub(crate) fn new(job: Arc<str>, tick: DateTime<Utc>, token: i64) -> Fence {
        Fence { job, tick, token }
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// The tick the claim is for.
    pub fn tick(&self) -> DateTime<Utc> {
        self.tick
    }

    /// The fencing token.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// [`Fence::CHECK`] with the values written in, for a client without parameters (`psql -c`):
    /// `SELECT hyperfork_fence('name', 42)`, the name quoted as an SQL string literal.
    pub fn check_sql(&self) -> String {
        format!(
            "SELECT hyperfork_fence('{}', {})",
            self.job.replace('\'', "''"),
            self.token
        )
    }
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence")
            .field("job", &self.job)
            .field("tick", &self.tick)
            .field("token", &self.token)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_with_values_quotes_the_name() {
        let f = Fence::new(Arc::from("it's"), DateTime::UNIX_EPOCH, 42);
        assert_eq!(f.check_sql(), "SELECT hyperfork_fence('it''s', 42)");
        assert_eq!((f.job(), f.token()), ("it's", 42));
    }
}
