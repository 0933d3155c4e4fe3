//! Jobs across several hosts: run this same app on every host behind the load balancer; its job runs
//! once per tick between all of them, claimed in the app's PostgreSQL ([`Server::jobs_store`]), and
//! its write is guarded by the run's fencing token. `tests/fleet_jobs.rs` runs two of them as two
//! hosts on one real PostgreSQL.
//!
//! - **Job store.** `Server::jobs_store(--database-url)`: the tables are created on first use.
//!   `--jobs-lease` (hyperfork's flag) sets how long a claim stays its host's without a renewal.
//! - **Job.** `record-usage` runs every second; after `--write-after` (0 by default: a slow job, for
//!   demonstrations and tests) it inserts `(tick, host, token)` into `fleet_usage` in a transaction that
//!   starts with `hyperfork_fence(job, token)`. A run whose host paused past its lease, while another
//!   host claimed a later tick, fails that check and writes nothing.
//! - **State.** One small pool per worker, closed by the stop hook; only slot 0 runs jobs.
//!
//! ```text
//! fleet --database-url postgres://app:app@db/app --host-name web-1 --port 8000 --jobs-lease 10s
//! ```

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use deadpool_postgres::tokio_postgres::{Config, NoTls};
use deadpool_postgres::{Manager, Pool};
use hyperfork::{BoxError, Every, Fence, JobContext, Server, Worker};

/// The app's own command line; hyperfork adds its flags.
#[derive(clap::Parser)]
#[command(
    name = "fleet",
    version,
    about = "One job run once per tick across every host"
)]
struct AppCli {
    /// PostgreSQL connection URL: the app's tables and the job store
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// This host's name in `fleet_usage`
    #[arg(long, env = "HOST_NAME", default_value = "localhost")]
    host_name: String,
    /// How long each run waits, holding its claim, before it writes
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    write_after: Duration,
}

/// What each worker shares between its routes, its job and its stop hook.
struct AppState {
    pool: Pool,
    host: String,
    write_after: Duration,
}

/// The app's table, made by slot 0 under an advisory lock (hosts start together).
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(hashtext('fleet example schema'));
    CREATE TABLE IF NOT EXISTS fleet_usage (
        tick TIMESTAMPTZ PRIMARY KEY, host TEXT NOT NULL, token BIGINT NOT NULL
    );";

async fn start(
    worker: &Worker,
    url: &str,
    host: String,
    write_after: Duration,
) -> Result<AppState, BoxError> {
    let config: Config = url.parse()?;
    let pool = Pool::builder(Manager::new(config, NoTls))
        .max_size(2)
        .build()?;
    if worker.is_primary() {
        let mut client = pool.get().await?;
        let tx = client.transaction().await?;
        tx.batch_execute(SCHEMA).await?;
        tx.commit().await?;
    }
    Ok(AppState {
        pool,
        host,
        write_after,
    })
}

/// A database error with the server's message (tokio-postgres shows only "db error").
fn db(e: deadpool_postgres::tokio_postgres::Error) -> BoxError {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()).into(),
        None => e.into(),
    }
}

/// The job: one row per tick, written only while the run's token is the job's latest.
async fn record_usage(ctx: JobContext<AppState>) -> Result<(), BoxError> {
    let fence: Fence = ctx
        .fence
        .clone()
        .ok_or("no job store: the app sets one, unless this is not hyperfork")?;
    let state = ctx.state();
    tracing::info!(
        "record-usage: tick {} holds token {}",
        ctx.scheduled_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        fence.token()
    );
    tokio::time::sleep(state.write_after).await;
    let mut client = state.pool.get().await?;
    let tx = client.transaction().await.map_err(db)?;
    // First: refuses (SQLSTATE HF001) if a newer claim of this job exists, and holds the job's token
    // row until commit, so none can commit in between.
    tx.execute(Fence::CHECK, &[&fence.job(), &fence.token()])
        .await
        .map_err(db)?;
    tx.execute(
        "INSERT INTO fleet_usage (tick, host, token) VALUES ($1, $2, $3)",
        &[&ctx.scheduled_at, &state.host, &fence.token()],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(())
}

fn main() -> ExitCode {
    let (server, cli) = Server::from_env_and_args_with::<AppCli>();
    let AppCli {
        database_url: url,
        host_name,
        write_after,
    } = cli;
    server
        .jobs_store(url.clone())
        .state(move |worker: &Worker| {
            let (worker, url, host) = (worker.clone(), url.clone(), host_name.clone());
            async move { start(&worker, &url, host, write_after).await }
        })
        .app(|worker: &Worker<AppState>| {
            let who = format!("fleet {} worker {}\n", worker.state().host, worker.slot());
            Router::new()
                .route("/", get(move || std::future::ready(who.clone())))
                .route("/health", get(|| std::future::ready("ok\n")))
        })
        .job("record-usage", Every::seconds(1), record_usage)
        .on_stop(|worker: Worker<AppState>| async move {
            worker.state().pool.close();
        })
        .run()
}
