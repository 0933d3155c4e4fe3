//! The PostgreSQL example (`examples/pg_app.rs`) against a real PostgreSQL: a throwaway cluster per
//! test, no mock. Through two reloads and the SIGKILL of worker 0 under load, requests keep being
//! served, every tick of the job is written exactly once and only by slot 0, and the app's
//! connections never exceed its budget; on SIGTERM the stop hooks close the pools before the master
//! exits. `pg_app single` serves the same `GET /users` JSON from one process, no master.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pg::PgCluster;
use common::*;

/// Samples the app's connection count until stopped; returns the highest.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(cluster: Arc<PgCluster>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(cluster.app_connections(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// The pid of the worker holding slot 0 now, from the master's log.
fn slot0_pid(p: &Proc) -> Option<i32> {
    slot0_pids(&p.stderr()).last().copied()
}

/// `pg_app migrate` against `url`.
fn migrate(url: &str) {
    let migrate = command(&example_bin("pg_app"))
        .args(["--database-url", url, "migrate"])
        .output()
        .expect("run pg_app migrate");
    assert!(
        migrate.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&migrate.stderr)
    );
}

#[test]
fn the_postgres_app_keeps_its_budget_and_runs_each_tick_once_through_reloads_and_a_kill() {
    let cluster = Arc::new(PgCluster::start());
    let url = cluster.url();
    migrate(&url);

    // 3 workers, a budget of 12: 3 connections each, so 4 workers (the reload surge) fit.
    let budget = 12;
    let mut p = Proc::serve(
        &example_bin("pg_app"),
        &[
            "--workers",
            "3",
            "--database-url",
            &url,
            "--db-budget",
            &budget.to_string(),
        ],
        &[],
    );
    // hyperfork's --db-budget reaches the app through Worker::db_pool_size: 12 / (3 + 1).
    assert!(
        p.wait_log("database pool of 3 connection(s)", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    let sampler = Sampler::start(cluster.clone());
    let load = Load::start(p.port, 8);
    std::thread::sleep(Duration::from_millis(1500));
    for n in 1..=2 {
        p.reload(n);
        std::thread::sleep(Duration::from_millis(1500));
    }
    // SIGKILL the scheduler's worker: its connections are cut, its slot is refilled, the lease moves.
    let victim = slot0_pid(&p).expect("slot 0's pid in the log");
    // SAFETY: kill(2) on a worker of the master this test started.
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(30), || slot0_pid(&p)
            .is_some_and(|pid| pid != victim)),
        "no new slot 0:\n{}",
        p.stderr()
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, bad_status, errors, _) = load.finish();
    assert!(ok > 100, "only {ok} requests served");
    assert_eq!(bad_status, 0, "non-200 answers: {errors:?}");
    // Only the connections the SIGKILL cut may fail (at most one per client).
    assert!(
        errors.len() <= 8,
        "{} connection errors: {errors:?}",
        errors.len()
    );

    // SIGTERM: every worker closes its pool in its stop hook before the master's last line.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(60)).is_some());
    let max = sampler.finish();
    let log = p.stderr();
    assert!(
        max <= budget,
        "{max} connections at the peak, budget {budget}:\n{log}"
    );
    assert!(max > 0, "the sampler never saw the app connected");
    let closed = log.matches("closed the database pool").count();
    assert!(closed >= 3, "{closed} pools closed:\n{log}");
    let last_close = log.rfind("closed the database pool").unwrap_or(0);
    let master_done = log.rfind("all workers exited").unwrap_or(0);
    assert!(last_close < master_done, "{log}");
    assert!(
        wait_until(Duration::from_secs(10), || cluster.app_connections() == 0),
        "connections left after exit: {}",
        cluster.app_connections()
    );

    // Every tick exactly once, only from slot 0, no tick recorded twice, at most one tick lost to the
    // kill (the run in flight when worker 0 died).
    assert!(!log.contains("already recorded"), "{log}");
    let rows = cluster.query("SELECT tick, slot FROM usage_ticks ORDER BY tick");
    assert!(rows.len() >= 5, "{} ticks: {rows:?}", rows.len());
    assert!(rows.iter().all(|r| r[1] == "0"), "{rows:?}");
    let ticks: Vec<i64> = rows.iter().map(|r| r[0].parse().expect("a tick")).collect();
    let missing: i64 = ticks.windows(2).map(|w| (w[1] - w[0]) / 1000 - 1).sum();
    eprintln!(
        "pg_app: {ok} requests, {} connection error(s), peak {max} of {budget} connections, {} \
         ticks, {missing} missing",
        errors.len(),
        ticks.len()
    );
    assert!(
        missing <= 1,
        "{missing} tick(s) missing in {ticks:?}:\n{log}"
    );
}

#[test]
fn the_single_process_mode_serves_pages_of_users_as_json_without_a_master() {
    let cluster = PgCluster::start();
    let url = cluster.url();
    migrate(&url);
    cluster.query(
        "INSERT INTO users (name, email, created_at) \
         SELECT 'user ' || i, 'user' || i || '@example.com', \
                timestamptz '2025-01-01 00:00:00+00' + i * interval '1 hour' \
         FROM generate_series(1, 25) AS i",
    );
    let port = free_port();
    let mut cmd = command(&example_bin("pg_app"));
    cmd.args(["--database-url", &url, "single", "--pool-size", "4"])
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    assert!(
        children_of(p.pid()).is_empty(),
        "single forked: {:?}\n{}",
        children_of(p.pid()),
        p.stderr()
    );

    // The last page: users 21 to 25, in id order, created_at in RFC 3339.
    let user = |i: u32| {
        format!(
            "{{\"id\":{i},\"name\":\"user {i}\",\"email\":\"user{i}@example.com\",\
             \"created_at\":\"2025-01-0{}T{:02}:00:00+00:00\"}}",
            1 + i / 24,
            i % 24
        )
    };
    let page = get(port, "/users?offset=20").expect("GET /users?offset=20");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.header("content-type"), Some("application/json"));
    let expected: Vec<String> = (21..=25).map(user).collect();
    assert_eq!(page.body, format!("[{}]", expected.join(",")));
    // No offset: the first 20.
    let first = get(port, "/users").expect("GET /users");
    let expected: Vec<String> = (1..=20).map(user).collect();
    assert_eq!(first.body, format!("[{}]", expected.join(",")));
    let bad = get(port, "/users?offset=-1").expect("GET /users?offset=-1");
    assert_eq!(bad.status, 400, "{}", bad.body);
    let held = cluster.app_connections();
    assert!((1..=4).contains(&held), "{held} connections, budget 4");

    // SIGTERM: the open connections end, the pool closes, the process exits 0.
    p.signal(libc::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(30))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}\n{}", p.stderr());
    assert!(
        wait_until(Duration::from_secs(10), || cluster.app_connections() == 0),
        "connections left after exit: {}",
        cluster.app_connections()
    );
}
