//! A real app on hyperfork: an axum API on PostgreSQL whose scheduled job writes to the same database.
//! Read it as the model for porting an app; `tests/pg_app.rs` runs it against a real PostgreSQL.
//!
//! - **State.** Each worker builds its own connection pool in the start hook (after `fork`: a pool
//!   holds sockets and tasks, which must not cross a fork), sized to its share of a total budget of
//!   connections (`--db-budget`), so the whole pool, reload surge included, stays under PostgreSQL's
//!   `max_connections`.
//! - **Routes.** `GET /users`, `POST /users` (the body is the name), `GET /health`, which asks the
//!   database too, and `GET /`, which names the worker.
//! - **Job.** `record-usage` runs every second in worker 0 only and inserts `(job, tick, slot, pid)`
//!   into `usage_ticks`, whose `UNIQUE (job, tick)` would reject a tick run twice.
//! - **Stop hook.** Closes the pool once the worker has drained, so its connections end before it exits.
//! - **Command line.** The app's own flags (`--database-url`, `--db-budget`) and a `migrate`
//!   subcommand that creates the tables and exits without starting a server; hyperfork's flags work
//!   beside them.
//!
//! ```text
//! pg_app --database-url postgres://app:app@127.0.0.1/app migrate
//! pg_app --database-url postgres://app:app@127.0.0.1/app --db-budget 30 --workers 4
//! ```
//!
//! deadpool-postgres (over tokio-postgres) is the client: it builds a pool without connecting and
//! without a runtime, closes it synchronously, and compiles in about half the time of sqlx.

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use deadpool_postgres::tokio_postgres::{Config, NoTls};
use deadpool_postgres::{Manager, Pool};
use hyperfork::{BoxError, Every, JobContext, Server, Worker};

/// The app's own command line; hyperfork adds its flags and subcommands.
#[derive(clap::Parser)]
#[command(
    name = "pg_app",
    version,
    about = "Users API on PostgreSQL, served by hyperfork"
)]
struct AppCli {
    /// PostgreSQL connection URL
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Most database connections the whole pool of workers may hold, reloads included
    #[arg(long, env = "DB_BUDGET", default_value_t = 30)]
    db_budget: usize,
    #[command(subcommand)]
    command: Option<AppCommand>,
}

/// The app's own subcommands.
#[derive(clap::Subcommand)]
enum AppCommand {
    /// Create the tables, then exit
    Migrate,
}

/// What each worker shares between its routes, its jobs and its stop hook.
struct AppState {
    pool: Pool,
    slot: usize,
    pid: u32,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS usage_ticks (
        job TEXT NOT NULL, tick BIGINT NOT NULL, slot INT NOT NULL, pid INT NOT NULL,
        UNIQUE (job, tick)
    );";

/// A pool of at most `size` connections; it connects on first use.
fn pool(url: &str, size: usize) -> Result<Pool, BoxError> {
    let config: Config = url.parse()?;
    Ok(Pool::builder(Manager::new(config, NoTls))
        .max_size(size)
        .build()?)
}

/// The start hook: this worker's pool, sized to its share of the budget, checked once.
async fn start(worker: &Worker, url: &str, budget: usize) -> Result<AppState, BoxError> {
    // The whole pool, reload surge included, stays within the budget; too small a budget is a boot
    // error naming the smallest that works.
    let share = worker.share_of(budget)?;
    let pool = pool(url, share)?;
    pool.get().await?.execute("SELECT 1", &[]).await?;
    tracing::info!("database pool of {share} connection(s) (budget {budget})");
    Ok(AppState {
        pool,
        slot: worker.slot(),
        pid: worker.pid(),
    })
}

/// `{"status":"ok","worker":SLOT,"pid":PID}` once the database answered.
async fn health(State(state): State<Arc<AppState>>) -> Result<String, (StatusCode, String)> {
    let client = state.pool.get().await.map_err(internal)?;
    client.query_one("SELECT 1", &[]).await.map_err(internal)?;
    Ok(format!(
        "{{\"status\":\"ok\",\"worker\":{},\"pid\":{}}}",
        state.slot, state.pid
    ))
}

async fn list_users(State(state): State<Arc<AppState>>) -> Result<String, (StatusCode, String)> {
    let client = state.pool.get().await.map_err(internal)?;
    let rows = client
        .query("SELECT name FROM users ORDER BY id", &[])
        .await
        .map_err(internal)?;
    Ok(rows
        .iter()
        .map(|r| format!("{}\n", r.get::<_, String>(0)))
        .collect())
}

async fn add_user(
    State(state): State<Arc<AppState>>,
    name: String,
) -> Result<StatusCode, (StatusCode, String)> {
    let client = state.pool.get().await.map_err(internal)?;
    client
        .execute("INSERT INTO users (name) VALUES ($1)", &[&name.trim()])
        .await
        .map_err(internal)?;
    Ok(StatusCode::CREATED)
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
}

/// The job: one row per tick; a tick recorded twice is an error.
async fn record_usage(ctx: JobContext<AppState>) -> Result<(), BoxError> {
    let client = ctx.state().pool.get().await?;
    let inserted = client
        .execute(
            "INSERT INTO usage_ticks (job, tick, slot, pid) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[
                &ctx.name.as_ref(),
                &ctx.scheduled_at.timestamp_millis(),
                &(ctx.worker.slot() as i32),
                &(ctx.worker.pid() as i32),
            ],
        )
        .await?;
    if inserted == 0 {
        return Err(format!("tick {} was already recorded", ctx.scheduled_at).into());
    }
    Ok(())
}

/// `migrate`: the tables, in a runtime of its own (no master, no fork).
fn migrate(url: &str) -> ExitCode {
    let run = async {
        let pool = pool(url, 1)?;
        pool.get().await?.batch_execute(SCHEMA).await?;
        pool.close();
        Ok::<_, BoxError>(())
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => {
            println!("migrated");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pg_app: migrate failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let (server, cli) = Server::from_env_and_args_with::<AppCli>();
    if let Some(AppCommand::Migrate) = cli.command {
        return migrate(&cli.database_url);
    }
    let (url, budget) = (cli.database_url, cli.db_budget);
    server
        .state(move |worker: &Worker| {
            let (worker, url) = (worker.clone(), url.clone());
            async move { start(&worker, &url, budget).await }
        })
        .app(|worker: &Worker<AppState>| {
            let who = format!("pg_app worker {} pid {}\n", worker.slot(), worker.pid());
            Router::new()
                .route("/", get(move || std::future::ready(who.clone())))
                .route("/health", get(health))
                .route("/users", get(list_users).post(add_user))
                .with_state(worker.state_arc())
        })
        .job("record-usage", Every::seconds(1), record_usage)
        .on_stop(|worker: Worker<AppState>| async move {
            worker.state().pool.close();
            tracing::info!("closed the database pool");
        })
        .run()
}
