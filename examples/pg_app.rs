//! A real app on hyperfork: an axum API on PostgreSQL whose scheduled job writes to the same database.
//! Read it as the model for porting an app; `tests/pg_app.rs` runs it against a real PostgreSQL.
//!
//! - **State.** Each worker builds its own connection pool in the start hook (after `fork`: a pool
//!   holds sockets and tasks, which must not cross a fork), sized by `Worker::db_pool_size`: its share
//!   of hyperfork's `--db-budget` (30 when not given), so the whole pool, reload surge included, stays
//!   under PostgreSQL's `max_connections`; `hyperfork plan` checks the same numbers against
//!   `--db-max-connections`.
//! - **Routes.** `GET /users?offset=N`, 20 users from the `N`th (by id) as JSON, `POST /users` (the
//!   body is the name), `GET /health`, which asks the database too, and `GET /`, which names the
//!   worker.
//! - **Job.** `record-usage` runs every second in worker 0 only and inserts `(job, tick, slot, pid)`
//!   into `usage_ticks`, whose `UNIQUE (job, tick)` would reject a tick run twice.
//! - **Stop hook.** Closes the pool once the worker has drained, so its connections end before it exits.
//! - **Command line.** The app's own flag (`--database-url`) and a `migrate` subcommand that creates
//!   the tables and exits without starting a server; hyperfork's flags (`--db-budget` among them) work
//!   beside them.
//! - **Without hyperfork.** `single --listen ADDR --pool-size N` serves the same router from one
//!   process on a tokio multi-thread runtime (one thread per core) with one pool of `N` connections,
//!   and no master, no fork and no job: the reference `benches/workload` compares the pool with.
//!
//! ```text
//! pg_app --database-url postgres://app:app@127.0.0.1/app migrate
//! pg_app --database-url postgres://app:app@127.0.0.1/app --db-budget 30 --workers 4
//! pg_app --database-url postgres://app:app@127.0.0.1/app single --listen 127.0.0.1:8000 --pool-size 30
//! ```
//!
//! deadpool-postgres (over tokio-postgres) is the client: it builds a pool without connecting and
//! without a runtime, closes it synchronously, and compiles in about half the time of sqlx.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
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
    #[command(subcommand)]
    command: Option<AppCommand>,
}

/// The app's own subcommands.
#[derive(clap::Subcommand)]
enum AppCommand {
    /// Create the tables, then exit
    Migrate,
    /// Serve from this one process (a tokio multi-thread runtime, one pool of the whole budget),
    /// without hyperfork's master or workers
    Single {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Database connections of the one pool
        #[arg(long, default_value_t = DEFAULT_BUDGET)]
        pool_size: usize,
    },
}

/// What each worker shares between its routes, its jobs and its stop hook.
struct AppState {
    pool: Pool,
    slot: usize,
    pid: u32,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS users (
        id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL DEFAULT '',
        created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS usage_ticks (
        job TEXT NOT NULL, tick BIGINT NOT NULL, slot INT NOT NULL, pid INT NOT NULL,
        UNIQUE (job, tick)
    );";

/// The database connections the pool of workers shares without `--db-budget` or
/// `--db-pool-per-worker`.
const DEFAULT_BUDGET: usize = 30;

/// A pool of at most `size` connections; it connects on first use.
fn pool(url: &str, size: usize) -> Result<Pool, BoxError> {
    let config: Config = url.parse()?;
    Ok(Pool::builder(Manager::new(config, NoTls))
        .max_size(size)
        .build()?)
}

/// The start hook: this worker's pool, sized by the settings (`--db-budget`, `--db-pool-per-worker`),
/// checked once.
async fn start(worker: &Worker, url: &str) -> Result<AppState, BoxError> {
    // With a budget, the whole pool, reload surge included, stays within it; too small a budget is
    // a boot error naming the smallest that works.
    let size = match worker.db_pool_size()? {
        Some(n) => n,
        None => worker.share_of(DEFAULT_BUDGET)?,
    };
    let pool = pool(url, size)?;
    pool.get().await?.execute("SELECT 1", &[]).await?;
    tracing::info!("database pool of {size} connection(s)");
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

/// One page of `GET /users`.
const LIST_USERS: &str =
    "SELECT id, name, email, created_at FROM users ORDER BY id LIMIT 20 OFFSET $1";

/// `GET /users`'s query string: `?offset=N`, 0 when absent.
#[derive(serde::Deserialize)]
struct Page {
    #[serde(default)]
    offset: u32,
}

/// A user as `GET /users` shows it; `created_at` in RFC 3339 (`2025-01-01T01:00:00+00:00`).
#[derive(serde::Serialize)]
struct User {
    id: i64,
    name: String,
    email: String,
    created_at: String,
}

/// `GET /users?offset=N`: 20 users from the `N`th by id, as a JSON array.
async fn list_users(
    State(state): State<Arc<AppState>>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<User>>, (StatusCode, String)> {
    let client = state.pool.get().await.map_err(internal)?;
    // Prepared once per connection, as asyncpg and most drivers do.
    let statement = client.prepare_cached(LIST_USERS).await.map_err(internal)?;
    let rows = client
        .query(&statement, &[&i64::from(page.offset)])
        .await
        .map_err(internal)?;
    let user = |r: &deadpool_postgres::tokio_postgres::Row| {
        Ok::<_, deadpool_postgres::tokio_postgres::Error>(User {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            email: r.try_get(2)?,
            created_at: chrono::DateTime::<chrono::Utc>::from(r.try_get::<_, SystemTime>(3)?)
                .to_rfc3339(),
        })
    };
    let users = rows.iter().map(user).collect::<Result<_, _>>();
    users.map(Json).map_err(internal)
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

/// The routes, over one pool's state; `who` is what `GET /` answers.
fn routes(state: Arc<AppState>, who: String) -> Router {
    Router::new()
        .route("/", get(move || std::future::ready(who.clone())))
        .route("/health", get(health))
        .route("/users", get(list_users).post(add_user))
        .with_state(state)
}

/// `single`: the same routes from this one process, on a tokio multi-thread runtime (one thread per
/// core) with one pool of the whole budget; no master, no fork, no job. Stops on SIGTERM or SIGINT
/// once the open connections are done, then closes the pool.
fn single(url: &str, budget: usize, listen: SocketAddr) -> ExitCode {
    let run = async {
        let pool = pool(url, budget)?;
        pool.get().await?.execute("SELECT 1", &[]).await?;
        let pid = std::process::id();
        let state = Arc::new(AppState {
            pool: pool.clone(),
            slot: 0,
            pid,
        });
        let app = routes(state, format!("pg_app single process pid {pid}\n"));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("pg_app: single process on {listen}, database pool of {budget} connection(s)");
        // As hyperfork's workers do: no Nagle delay on the answers.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await?;
        pool.close();
        Ok::<_, BoxError>(())
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|rt| rt.block_on(run));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_app: single: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let (server, cli) = Server::from_env_and_args_with::<AppCli>();
    match cli.command {
        Some(AppCommand::Migrate) => return migrate(&cli.database_url),
        Some(AppCommand::Single { listen, pool_size }) => {
            return single(&cli.database_url, pool_size, listen);
        }
        None => {}
    }
    let url = cli.database_url;
    server
        .state(move |worker: &Worker| {
            let (worker, url) = (worker.clone(), url.clone());
            async move { start(&worker, &url).await }
        })
        .app(|worker: &Worker<AppState>| {
            let who = format!("pg_app worker {} pid {}\n", worker.slot(), worker.pid());
            routes(worker.state_arc(), who)
        })
        .job("record-usage", Every::seconds(1), record_usage)
        .on_stop(|worker: Worker<AppState>| async move {
            worker.state().pool.close();
            tracing::info!("closed the database pool");
        })
        .run()
}
