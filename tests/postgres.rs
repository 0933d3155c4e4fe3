//! The real-PostgreSQL harness (`common::pg`) checked on its own: a throwaway cluster answers SQL over
//! its unix socket and over TCP with the app's credentials (and refuses a wrong password), counts the
//! app's connections, keeps working without taking a slot from the app when the app uses them all,
//! and leaves no postgres process behind when its guard drops, also when the test panics.

mod common;

use std::time::Duration;

use common::pg::{PgCluster, run_within};
use common::{alive, children_of, wait_until};

fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
    r.iter()
        .map(|row| row.iter().map(|c| c.to_string()).collect())
        .collect()
}

/// Runs `sql` with `psql` over TCP with `url`'s credentials; its output or its error.
fn app_sql(pg: &PgCluster, url: &str, sql: &str) -> Result<String, String> {
    let mut c = pg.psql_to(url);
    c.arg("-c").arg(sql);
    let out = run_within(c, Duration::from_secs(30))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(out.text())
    }
}

#[test]
fn cluster_answers_sql_counts_app_connections_and_stops_on_drop() {
    let pg = PgCluster::start();

    // A table, rows in, a conflicting row ignored, rows out.
    pg.query(
        "CREATE TABLE ticks (job text NOT NULL, tick bigint NOT NULL, PRIMARY KEY (job, tick))",
    );
    pg.query("INSERT INTO ticks VALUES ('a', 1), ('a', 2), ('b', 1)");
    let inserted = pg
        .query("INSERT INTO ticks VALUES ('a', 1), ('b', 2) ON CONFLICT DO NOTHING RETURNING job");
    assert_eq!(inserted, rows(&[&["b"]]), "only the new row goes in");
    assert_eq!(
        pg.query("SELECT job, tick, tick * 10 FROM ticks ORDER BY job, tick"),
        rows(&[
            &["a", "1", "10"],
            &["a", "2", "20"],
            &["b", "1", "10"],
            &["b", "2", "20"],
        ])
    );
    assert_eq!(
        pg.query("SELECT tableowner FROM pg_tables WHERE tablename = 'ticks'"),
        rows(&[&["app"]]),
        "query() creates objects as the app's role"
    );

    // Over TCP, as the app connects: the URL's role, database and port, and its password is checked.
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://app:app@127.0.0.1:{}/app", pg.port())
    );
    assert_eq!(
        app_sql(
            &pg,
            &url,
            "SELECT current_user, current_database(), inet_server_port(), count(*) FROM ticks"
        )
        .expect("psql connects with the app's URL"),
        format!("app\tapp\t{}\t4", pg.port())
    );
    let wrong = url.replace("app:app@", "app:wrong@");
    let err = app_sql(&pg, &wrong, "SELECT 1").expect_err("a wrong password is refused");
    assert!(err.contains("password authentication failed"), "{err}");

    // A second connection held open is counted, and no longer once closed.
    assert_eq!(
        pg.app_connections(),
        0,
        "the harness's own sessions are not counted"
    );
    let held = pg.hold_app_connection();
    assert_eq!(pg.app_connections(), 1);
    let held2 = pg.hold_app_connection();
    assert_eq!(pg.app_connections(), 2);
    drop(held);
    drop(held2);
    assert!(
        wait_until(Duration::from_secs(10), || pg.app_connections() == 0),
        "closed connections still counted: {}",
        pg.app_connections()
    );

    // Dropping the guard stops the postmaster and every process under it, and removes the files.
    let postmaster = pg.postmaster_pid();
    let mut pids = vec![postmaster];
    pids.extend(children_of(postmaster));
    assert!(
        pids.len() > 2,
        "a running cluster has background processes: {pids:?}"
    );
    assert!(alive(postmaster));
    let dir = pg.socket_dir().to_path_buf();
    drop(pg);
    let left: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "postgres processes left running: {left:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn every_slot_is_the_apps_and_the_harness_takes_none() {
    let pg = PgCluster::with_max_connections(3);
    let held: Vec<_> = (0..3).map(|_| pg.hold_app_connection()).collect();
    assert_eq!(pg.app_connections(), 3);
    let err = app_sql(&pg, &pg.url(), "SELECT 1").expect_err("a 4th app connection is refused");
    assert!(err.contains("too many clients"), "{err}");
    assert_eq!(
        pg.query("SELECT 1"),
        rows(&[&["1"]]),
        "the harness still gets in"
    );
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || pg.app_connections() == 0));
    assert_eq!(
        app_sql(&pg, &pg.url(), "SELECT 1").expect("the app connects again"),
        "1"
    );

    // A per-role cap, for a test that keeps max_connections high.
    pg.admin_query("ALTER ROLE app CONNECTION LIMIT 1");
    let _one = pg.hold_app_connection();
    let err =
        app_sql(&pg, &pg.url(), "SELECT 1").expect_err("the role's 2nd connection is refused");
    assert!(err.contains("too many connections for role"), "{err}");
}

#[test]
fn a_panicking_test_leaves_no_postgres_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let pg = PgCluster::start();
        // A held connection too: its backend must go as well.
        let _held = pg.hold_app_connection();
        let mut pids = vec![pg.postmaster_pid()];
        pids.extend(children_of(pids[0]));
        tx.send(pids).expect("send the pids");
        panic!("the test fails with the cluster running");
    })
    .join();
    assert!(result.is_err(), "the thread panicked");
    let pids = rx
        .recv_timeout(Duration::from_secs(1))
        .expect("the cluster started and sent its pids");
    let left: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "postgres processes left running: {left:?}");
}
