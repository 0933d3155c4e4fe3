//! The job store's tables and its fence function, created on first use (or by `hyperfork jobs
//! migrate`), in the connection's current schema (the first of its `search_path`).
//!
//! - `hyperfork_job_tokens`: one row per job, the last fencing token handed out. A claim increments it
//!   in the claim's transaction, which also serializes the claims of one job across the fleet.
//! - `hyperfork_job_claims`: one row per (job, tick) that some host claimed: the token, the owner, the
//!   lease expiry (database clock), and when and how the run finished.
//! - `hyperfork_fence(job, token)`: what a job runs first in the transaction that makes its writes; it
//!   raises SQLSTATE `HF001` unless `token` is still the job's latest, and holds a share lock on the
//!   token row until that transaction ends, so no newer claim can commit in between.

use tokio_postgres::Client;

/// The schema, idempotent.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS hyperfork_job_tokens (
    job   text   PRIMARY KEY,
    token bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS hyperfork_job_claims (
    job         text        NOT NULL,
    tick        timestamptz NOT NULL,
    token       bigint      NOT NULL,
    owner       text        NOT NULL,
    claimed_at  timestamptz NOT NULL,
    lease_until timestamptz NOT NULL,
    finished_at timestamptz,
    outcome     text,
    attempts    integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (job, tick)
);
CREATE INDEX IF NOT EXISTS hyperfork_job_claims_unfinished
    ON hyperfork_job_claims (job) WHERE finished_at IS NULL;
COMMENT ON TABLE hyperfork_job_claims IS 'hyperfork job store, schema 1: one row per claimed (job, tick)';
CREATE OR REPLACE FUNCTION hyperfork_fence(fence_job text, fence_token bigint) RETURNS bigint
LANGUAGE plpgsql AS $fence$
DECLARE
    latest bigint;
BEGIN
    SELECT token INTO latest FROM hyperfork_job_tokens WHERE job = fence_job FOR SHARE;
    IF latest IS DISTINCT FROM fence_token THEN
        RAISE EXCEPTION 'hyperfork: stale fencing token % for job "%": a newer claim holds token %',
            fence_token, fence_job, coalesce(latest::text, 'none')
            USING ERRCODE = 'HF001';
    END IF;
    RETURN latest;
END
$fence$;
"#;

/// Whether everything [`SCHEMA`] creates is there.
const PRESENT: &str = "SELECT to_regclass('hyperfork_job_tokens') IS NOT NULL \
    AND to_regclass('hyperfork_job_claims') IS NOT NULL \
    AND to_regclass('hyperfork_job_claims_unfinished') IS NOT NULL \
    AND to_regprocedure('hyperfork_fence(text, bigint)') IS NOT NULL";

/// Creates what is missing. A role that may not create tables works once they exist (made by
/// `hyperfork jobs migrate` as another role): nothing is created then.
pub(crate) async fn ensure(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    if client.query_one(PRESENT, &[]).await?.get::<_, bool>(0) {
        return Ok(());
    }
    migrate(client).await?;
    tracing::info!("job store: created the hyperfork_job_* tables and hyperfork_fence()");
    Ok(())
}

/// Runs [`SCHEMA`] in one transaction, under an advisory lock so that hosts starting together do not
/// race on the catalog.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('hyperfork job store schema'))",
        &[],
    )
    .await?;
    tx.batch_execute(SCHEMA).await?;
    tx.commit().await
}
