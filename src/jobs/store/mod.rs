//! The fleet-wide job store (`--jobs-store`): claims of scheduled ticks in the app's PostgreSQL, so
//! that several hosts running the same service run each tick once between them.
//!
//! Each host's slot 0 keeps its lease from its own master (see [`crate::master::lease`]); with a
//! store it also claims every tick in the database before starting it, keyed by (job, tick), where the
//! tick comes from the schedule (interval grids anchored at the Unix epoch, see [`FLEET_ANCHOR`]), so
//! every host computes the same key. One claim wins; the others count the tick as run elsewhere. A
//! winning claim carries its owner, a lease expiry from the database's clock (renewed at half the
//! lease while the run goes on) and a fencing token that increases per job ([`claim`]); the job gets
//! the token ([`crate::jobs::Fence`]) to guard its own writes with `hyperfork_fence()` ([`schema`]).
//!
//! The store is one connection, opened lazily from slot 0's runtime (the master never connects),
//! used by one operation at a time (a claim is a transaction), and reopened with back-off after a
//! failure. Every operation has a deadline: a tick whose claim cannot be confirmed before its
//! misfire grace runs out is skipped and logged, never run; HTTP serving is never waiting on it.

pub(crate) mod claim;
pub(crate) mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};
use tokio::time::Instant;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, NoTls};

/// The origin of every interval grid when a store is configured: the Unix epoch, so that hosts that
/// started at different moments agree on `every` ticks without sharing any record.
pub(crate) const FLEET_ANCHOR: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The first wait before reconnecting after a failure; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The connection timeout when the URL gives none (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed `--jobs-store` URL; shown (`Debug`, logs, `plan`) without its password.
#[derive(Clone)]
pub struct StoreUrl {
    config: tokio_postgres::Config,
    shown: String,
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PartialEq for StoreUrl {
    fn eq(&self, other: &StoreUrl) -> bool {
        format!("{:?}", self.config) == format!("{:?}", other.config)
    }
}

impl StoreUrl {
    /// Parses a PostgreSQL connection string (`postgres://user:password@host:port/db?options` or
    /// `host=… user=…`), as libpq and tokio-postgres read it.
    pub(crate) fn parse(text: &str) -> Result<StoreUrl, String> {
        let mut config: tokio_postgres::Config = text.parse().map_err(|e| {
            format!("expected a PostgreSQL URL such as postgres://user:password@host:5432/db ({e})")
        })?;
        if config.get_hosts().is_empty() {
            return Err(
                "expected a PostgreSQL URL naming a host, such as postgres://user:password@host:5432/db"
                    .into(),
            );
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(
                "sslmode=require: TLS to the job store is not supported; use sslmode=disable or \
                 prefer (connections stay unencrypted), over a private network or a unix socket"
                    .into(),
            );
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hyperfork job store");
        }
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let port = config
                    .get_ports()
                    .get(i)
                    .or(config.get_ports().first())
                    .copied()
                    .unwrap_or(5432);
                match h {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    Host::Unix(dir) => format!("{}:{port}", dir.display()),
                }
            })
            .collect();
        let shown = format!(
            "postgres://{}@{}/{}",
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config
                .get_dbname()
                .or(config.get_user())
                .unwrap_or_default()
        );
        Ok(StoreUrl { config, shown })
    }
}

/// What the scheduler needs to use a store: where it is, the lease, how long claims are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// The database.
    pub url: StoreUrl,
    /// How long a claim stays the owner's without a renewal (`--jobs-lease`).
    pub lease: Duration,
    /// How long finished claims are kept (`--jobs-retention`); the latest of each job always is.
    pub retention: Duration,
}

/// Why a store operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StoreError {
    /// No connection could be made (or kept) before the deadline.
    #[error("job store unreachable: {0}")]
    Unreachable(String),
    /// The operation did not finish before its deadline; its result is unknown.
    #[error("job store did not answer in time")]
    Timeout,
    /// The database refused the operation.
    #[error("job store error: {0}")]
    Failed(String),
}

impl StoreError {
    fn of(e: &tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            Some(db) => StoreError::Failed(format!("{} ({})", db.message(), db.code().code())),
            None => StoreError::Unreachable(describe(e)),
        }
    }
}

/// An error with its causes, such as `error connecting to server: Connection refused (os error 111)`
/// (tokio-postgres shows only the first part).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The connection's state, behind the store's lock.
struct Conn {
    client: Option<Client>,
    /// When the next connection attempt may be made, after a failure.
    next_attempt: Option<Instant>,
    backoff: Duration,
    /// The last connection failure, and since when the store is unreachable.
    down: Option<(String, Instant)>,
    /// Whether the tables and the fence function are known to exist.
    schema_ready: bool,
}

/// The store of one scheduling worker.
pub(crate) struct Store {
    config: StoreConfig,
    /// Who claims: host name and pid, as the claims table shows it.
    owner: String,
    conn: Mutex<Conn>,
    /// When each job's old claims were last deleted.
    pruned: std::sync::Mutex<HashMap<String, Instant>>,
}

/// The connection, held for one operation: nothing else uses it meanwhile.
pub(crate) struct Session<'a> {
    conn: MutexGuard<'a, Conn>,
}

impl Session<'_> {
    /// The client.
    pub(crate) fn client(&mut self) -> &mut Client {
        self.conn
            .client
            .as_mut()
            .expect("a session always holds a connected client")
    }

    /// Drops the connection if `e` broke it (the next operation reconnects), and describes `e`.
    pub(crate) fn failed(mut self, e: &tokio_postgres::Error) -> StoreError {
        if e.is_closed() || e.as_db_error().is_none() {
            self.conn.client = None;
        }
        StoreError::of(e)
    }

    /// The operation ran out of time: its connection is in an unknown state and is dropped.
    pub(crate) fn timed_out(mut self) -> StoreError {
        self.conn.client = None;
        StoreError::Timeout
    }
}

impl Store {
    /// A store for `config`; nothing connects before the first operation.
    pub(crate) fn new(config: StoreConfig, pid: u32) -> Store {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Store::with_owner(config, format!("{host} pid {pid}"))
    }

    /// A store claiming as `owner`.
    pub(crate) fn with_owner(config: StoreConfig, owner: String) -> Store {
        Store {
            config,
            owner,
            conn: Mutex::new(Conn {
                client: None,
                next_attempt: None,
                backoff: FIRST_BACKOFF,
                down: None,
                schema_ready: false,
            }),
            pruned: std::sync::Mutex::default(),
        }
    }

    /// Whether `job`'s old claims were not deleted for `every` (or ever); if so, notes that they are
    /// being deleted now.
    pub(crate) fn due_for_pruning(&self, job: &str, every: Duration) -> bool {
        let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match pruned.get(job) {
            Some(at) if now.duration_since(*at) < every => false,
            _ => {
                pruned.insert(job.to_string(), now);
                true
            }
        }
    }

    /// The settings.
    pub(crate) fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Who claims.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// The connection for one operation, connecting (and creating the tables on first use) if need
    /// be; waits for a back-off to end only if it ends before `deadline`.
    pub(crate) async fn session(&self, deadline: Instant) -> Result<Session<'_>, StoreError> {
        let mut conn = tokio::time::timeout_at(deadline, self.conn.lock())
            .await
            .map_err(|_| StoreError::Timeout)?;
        loop {
            if conn.client.as_ref().is_some_and(|c| !c.is_closed()) {
                return Ok(Session { conn });
            }
            if conn.client.take().is_some() {
                tracing::debug!("job store connection closed; reconnecting");
            }
            if let Some(at) = conn.next_attempt {
                if at > deadline {
                    let last = conn.down.as_ref().map_or("", |(e, _)| e.as_str());
                    return Err(StoreError::Unreachable(format!(
                        "{last}; next connection attempt in {}",
                        humantime::format_duration(round_ms(at - Instant::now()))
                    )));
                }
                tokio::time::sleep_until(at).await;
            }
            let attempt = tokio::time::timeout_at(deadline, self.connect(conn.schema_ready)).await;
            match attempt {
                Ok(Ok(client)) => {
                    if let Some((_, since)) = conn.down.take() {
                        tracing::info!(
                            "job store {} reachable again after {}",
                            self.config.url,
                            humantime::format_duration(round_ms(since.elapsed()))
                        );
                    }
                    conn.client = Some(client);
                    conn.schema_ready = true;
                    conn.next_attempt = None;
                    conn.backoff = FIRST_BACKOFF;
                }
                Ok(Err(e)) => self.down(&mut conn, describe(&e)),
                Err(_) => {
                    self.down(&mut conn, "no connection before the deadline".into());
                    return Err(StoreError::Unreachable(
                        conn.down.as_ref().map_or(String::new(), |(e, _)| e.clone()),
                    ));
                }
            }
        }
    }

    /// Records a failed connection attempt and when to try again.
    fn down(&self, conn: &mut Conn, error: String) {
        let wait = conn.backoff;
        conn.next_attempt = Some(Instant::now() + wait);
        conn.backoff = (conn.backoff * 2).min(MAX_BACKOFF);
        match &mut conn.down {
            Some((last, _)) => {
                tracing::debug!("job store {} still unreachable: {error}", self.config.url);
                *last = error;
            }
            None => {
                tracing::warn!(
                    "job store {} unreachable: {error}; retrying with back-off (at most every {}), \
                     ticks are skipped until it answers",
                    self.config.url,
                    humantime::format_duration(MAX_BACKOFF)
                );
                conn.down = Some((error, Instant::now()));
            }
        }
    }

    /// Opens a connection, its task on this runtime, and makes sure the schema exists.
    async fn connect(&self, schema_ready: bool) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.url.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("job store connection ended: {e}");
            }
        });
        let mut client = client;
        if !schema_ready {
            schema::ensure(&mut client).await?;
        }
        Ok(client)
    }
}

/// `d` to the millisecond, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// `hyperfork jobs migrate`: creates the tables and the fence function in the store's database from a
/// runtime of its own (no master, no fork), and returns the exit status.
pub(crate) fn migrate_command(
    store: Option<&StoreConfig>,
    program: &str,
) -> std::process::ExitCode {
    use crate::error::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
    let Some(store) = store else {
        eprintln!(
            "{program}: jobs migrate: no job store: expected --jobs-store URL (or \
             HYPERFORK_JOBS_STORE, or the jobs_store key)"
        );
        return std::process::ExitCode::from(EXIT_USAGE);
    };
    let run = async {
        let (mut client, connection) = store.url.config.connect(NoTls).await?;
        let connection = tokio::spawn(connection);
        schema::migrate(&mut client).await?;
        drop(client);
        let _ = connection.await;
        Ok::<_, tokio_postgres::Error>(())
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run).map_err(|e| describe(&e)));
    match result {
        Ok(()) => {
            println!(
                "job store {}: hyperfork_job_tokens, hyperfork_job_claims and hyperfork_fence() are \
                 in place",
                store.url
            );
            std::process::ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("{program}: jobs migrate: {}: {e}", store.url);
            std::process::ExitCode::from(EXIT_RUNTIME)
        }
    }
}
