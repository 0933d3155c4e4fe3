//! The database side: the schema and the seeded users, and a monitor that samples the app's
//! connections from `pg_stat_activity`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deadpool_postgres::tokio_postgres::{Config, NoTls};

use crate::pg::PgCluster;

/// Creates the tables with `pg_app migrate` (the app's own schema) and seeds `users` users: id,
/// `user N`, `userN@example.com`, and `created_at` one hour apart from 2025-01-01 (whole seconds, so
/// every server prints them the same way).
pub fn prepare(pg: &PgCluster, pg_app: &Path, users: usize) -> Result<(), String> {
    let out = std::process::Command::new(pg_app)
        .args(["--database-url", &pg.url(), "migrate"])
        .env_remove("DATABASE_URL")
        .output()
        .map_err(|e| format!("cannot run pg_app migrate: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pg_app migrate failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    pg.query(&format!(
        "INSERT INTO users (name, email, created_at) \
         SELECT 'user ' || i, 'user' || i || '@example.com', \
                timestamptz '2025-01-01 00:00:00+00' + i * interval '1 hour' \
         FROM generate_series(1, {users}) AS i"
    ));
    pg.query("ANALYZE users");
    let count = pg.query("SELECT count(*) FROM users");
    if count.first().and_then(|r| r.first()).map(String::as_str) != Some(&users.to_string()) {
        return Err(format!("seeded {users} users, the table holds {count:?}"));
    }
    Ok(())
}

/// The app's connections over a window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connections {
    /// Most connections open at once.
    pub peak: i64,
    /// Median of the open connections.
    pub median: i64,
    /// Mean of the connections running a query when sampled.
    pub active_mean: f64,
    /// Samples taken.
    pub samples: usize,
}

/// One sample: when, connections open, connections running a query.
type Sample = (Instant, i64, i64);

/// Samples every 100 ms, over its own connection, the app's client connections to the database
/// (every client backend of database `app` but its own and the test harness's `psql`).
pub struct Monitor {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const COUNT: &str = "SELECT count(*), count(*) FILTER (WHERE state = 'active') \
     FROM pg_stat_activity \
     WHERE datname = current_database() AND backend_type = 'client backend' \
       AND pid <> pg_backend_pid() \
       AND application_name IS DISTINCT FROM 'pg-test-harness'";

/// How often the monitor samples.
const EVERY: Duration = Duration::from_millis(100);

impl Monitor {
    /// Connects (as the app's role, `application_name` `workload-monitor`) and starts sampling.
    pub fn start(url: &str) -> Result<Monitor, String> {
        let mut config: Config = url
            .parse()
            .map_err(|e| format!("monitor: bad database URL: {e}"))?;
        config.application_name("workload-monitor");
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (s, st) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pg-monitor".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("monitor: runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let client = match config.connect(NoTls).await {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            client
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("monitor: cannot connect: {e}")));
                            return;
                        }
                    };
                    let statement = match client.prepare(COUNT).await {
                        Ok(st) => st,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("monitor: {e}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    while !st.load(Ordering::Relaxed) {
                        match client.query_one(&statement, &[]).await {
                            Ok(row) => {
                                let open: i64 = row.get(0);
                                let active: i64 = row.get(1);
                                s.lock().unwrap_or_else(|e| e.into_inner()).push((
                                    Instant::now(),
                                    open,
                                    active,
                                ));
                            }
                            Err(e) => {
                                eprintln!("workload: monitor: {e}");
                                return;
                            }
                        }
                        tokio::time::sleep(EVERY).await;
                    }
                });
            })
            .map_err(|e| format!("monitor: cannot start its thread: {e}"))?;
        let monitor = Monitor {
            samples,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(monitor),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("monitor: not connected within 30 s".into()),
        }
    }

    /// The samples taken between `from` and `to`.
    pub fn between(&self, from: Instant, to: Instant) -> Connections {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let window: Vec<&Sample> = samples
            .iter()
            .filter(|(t, _, _)| *t >= from && *t <= to)
            .collect();
        let median = |mut v: Vec<i64>| {
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        Connections {
            peak: window.iter().map(|s| s.1).max().unwrap_or(0),
            median: median(window.iter().map(|s| s.1).collect()),
            active_mean: window.iter().map(|s| s.2 as f64).sum::<f64>()
                / (window.len().max(1) as f64),
            samples: window.len(),
        }
    }

    /// Waits (up to `timeout`) for a sample taken from now on that counts no app connection.
    pub fn wait_for_no_app_connections(&self, timeout: Duration) -> bool {
        let since = Instant::now();
        crate::wait_until(timeout, || {
            self.samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .rev()
                .take_while(|(t, _, _)| *t >= since)
                .any(|(_, open, _)| *open == 0)
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
