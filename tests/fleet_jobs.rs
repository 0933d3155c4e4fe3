//! Jobs across several hosts (`--jobs-store`): two masters as two "hosts" (their own ports, their own
//! processes) on one real PostgreSQL started by the test. Every tick of a 1 s job runs exactly once
//! between them while one host's master is SIGKILLed and restarted, the other's slot 0 is SIGKILLed,
//! and the database is stopped for 3 s (those ticks are logged as skipped, and HTTP keeps answering);
//! the fencing tokens strictly increase. A run paused past its lease (SIGSTOP) cannot commit with its
//! stale token once another host holds a newer one. An at-least-once tick lost with its host runs
//! again on the other, with a higher token. `hyperfork jobs migrate` and the settings' errors.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::pg::PgCluster;
use common::*;

/// The lease the hosts use: a run lost with its host holds the job this long.
const LEASE: &str = "2s";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One line the job appended: `TICK HOST TOKEN`.
#[derive(Debug, Clone)]
struct Row {
    tick: DateTime<Utc>,
    host: String,
    token: i64,
}

fn read_rows(path: &Path) -> Vec<Row> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "a line is TICK HOST TOKEN: {l:?}");
            Row {
                tick: DateTime::parse_from_rfc3339(f[0])
                    .unwrap()
                    .with_timezone(&Utc),
                host: f[1].to_string(),
                token: f[2].parse().expect("a numeric token"),
            }
        })
        .collect()
}

/// Starts a host: a master with 2 workers on `port`, its job in `config`, claiming in `url`.
fn start_host(name: &str, port: u16, metrics: u16, config: &Path, url: &str) -> Proc {
    let mut cmd = command(&hyperfork_bin());
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--workers", "2", "--jobs-lease", LEASE, "--config"])
        .arg(config)
        .arg("--metrics-bind")
        .arg(format!("127.0.0.1:{metrics}"))
        .env("HYPERFORK_JOBS_STORE", url)
        .env("HOST_NAME", name);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    p
}

/// A counter of `job` from a master's `/metrics`; 0 if absent.
fn metric(port: u16, name: &str, job: &str) -> f64 {
    let Ok(r) = get(port, "/metrics") else {
        return 0.0;
    };
    let prefix = format!("{name}{{job=\"{job}\"}} ");
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls `GET /health` on every port until stopped; every failure, with when it happened.
struct Poller {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    polls: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    fn start(ports: Vec<u16>) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(Mutex::new(0));
        let (s, f, n) = (stop.clone(), failures.clone(), polls.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for &port in &ports {
                    match get(port, "/health") {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => f.lock().unwrap().push(format!("port {port}: {}", r.status)),
                        Err(e) => f.lock().unwrap().push(format!("port {port}: {e}")),
                    }
                    *n.lock().unwrap() += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Poller {
            stop,
            failures,
            polls,
            thread: Some(thread),
        }
    }

    /// Polls made and failures seen.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let polls = *self.polls.lock().unwrap();
        (polls, self.failures.lock().unwrap().clone())
    }
}

/// Waits until `path` has a row with a tick after `after` and `more` rows after that one.
fn wait_rows_after(path: &Path, after: DateTime<Utc>, more: usize, timeout: Duration) -> bool {
    wait_until(timeout, || {
        read_rows(path).iter().filter(|r| r.tick > after).count() > more
    })
}

#[test]
fn every_tick_runs_once_across_two_hosts_through_kills_and_a_database_outage() {
    let pg = PgCluster::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.txt");
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[[jobs]]\nname = \"record\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \
             \"echo \\\"$HYPERFORK_SCHEDULED_AT $HOST_NAME $HYPERFORK_FENCE_TOKEN\\\" >> {}\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let (metrics_a, metrics_b) = (free_port(), free_port());
    let a1 = start_host("a", port_a, metrics_a, &config, &url);
    let mut b = start_host("b", port_b, metrics_b, &config, &url);
    assert!(
        wait_rows_after(&out, DateTime::UNIX_EPOCH, 2, Duration::from_secs(30)),
        "no job ran:\n{}\n{}",
        a1.stderr(),
        b.stderr()
    );
    let began = Utc::now();
    let mut kills: Vec<DateTime<Utc>> = Vec::new();

    // Host a's master dies with SIGKILL (its workers follow it at once), then comes back.
    std::thread::sleep(Duration::from_secs(2));
    let a1_workers = children_of(a1.pid());
    kills.push(Utc::now());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a1.pid(), libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(20), || a1_workers
            .iter()
            .all(|&p| !alive(p))),
        "host a's workers outlived its master"
    );
    let a2 = start_host("a", port_a, metrics_a, &config, &url);

    // Host b's slot 0 dies with SIGKILL; its master replaces it.
    assert!(wait_rows_after(
        &out,
        Utc::now(),
        2,
        Duration::from_secs(20)
    ));
    let slot0 = *slot0_pids(&b.stderr()).last().expect("b has a slot 0");
    kills.push(Utc::now());
    // SAFETY: kill(2) on a worker of our own child.
    unsafe { libc::kill(slot0, libc::SIGKILL) };
    assert!(
        b.wait_log(&format!("pid {slot0} exited"), Duration::from_secs(10)),
        "{}",
        b.stderr()
    );
    assert!(wait_rows_after(
        &out,
        Utc::now(),
        2,
        Duration::from_secs(20)
    ));

    // The database stops for 3 s; HTTP is polled on both hosts all along.
    let poller = Poller::start(vec![port_a, port_b]);
    std::thread::sleep(Duration::from_millis(300));
    let outage_start = Utc::now();
    pg.stop_fast();
    std::thread::sleep(Duration::from_secs(3));
    pg.start_again();
    let outage_end = Utc::now();
    std::thread::sleep(Duration::from_millis(300));
    let (polls, failures) = poller.finish();
    assert!(polls > 20, "HTTP was hardly polled: {polls}");
    assert!(
        failures.is_empty(),
        "HTTP failed during the outage: {failures:?}"
    );
    assert!(
        wait_rows_after(&out, outage_end, 6, Duration::from_secs(30)),
        "the job did not resume after the database came back:\n{}\n{}",
        a2.stderr(),
        b.stderr()
    );
    let ended = Utc::now();
    let elsewhere = metric(metrics_a, "hyperfork_job_run_elsewhere_total", "record")
        + metric(metrics_b, "hyperfork_job_run_elsewhere_total", "record");
    let store_skips = metric(metrics_a, "hyperfork_job_store_skips_total", "record")
        + metric(metrics_b, "hyperfork_job_store_skips_total", "record");
    b.signal(libc::SIGTERM);
    a2.signal(libc::SIGTERM);
    let mut a2 = a2;
    assert!(
        b.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    assert!(
        a2.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let logs = format!("{}\n{}\n{}", a1.stderr(), a2.stderr(), b.stderr());
    assert!(
        (ended - began).num_seconds() >= 14,
        "the scenario ran for {}",
        ended - began
    );

    let rows = read_rows(&out);
    // No tick ran twice, fleet-wide.
    let mut by_tick: BTreeMap<DateTime<Utc>, Row> = BTreeMap::new();
    for r in &rows {
        assert!(
            by_tick.insert(r.tick, r.clone()).is_none(),
            "tick {} ran twice: {rows:?}",
            rfc3339(r.tick)
        );
        assert!(
            r.tick.timestamp_subsec_millis() == 0,
            "a tick off the epoch's 1 s grid: {}",
            rfc3339(r.tick)
        );
    }
    let hosts: BTreeSet<&str> = rows.iter().map(|r| r.host.as_str()).collect();
    assert!(
        hosts.contains("a") && hosts.contains("b"),
        "both hosts ran ticks: {hosts:?}"
    );
    // Tokens strictly increase with the ticks, and are the ones the claims table recorded.
    let tokens: Vec<i64> = by_tick.values().map(|r| r.token).collect();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens do not strictly increase: {tokens:?}"
    );
    let claims: BTreeMap<String, i64> = pg
        .query(
            "SELECT to_char(tick AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), token \
             FROM hyperfork_job_claims WHERE job = 'record'",
        )
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().unwrap()))
        .collect();
    for r in by_tick.values() {
        assert_eq!(
            claims.get(&rfc3339(r.tick)),
            Some(&r.token),
            "tick {} ran with a token its claim does not hold",
            rfc3339(r.tick)
        );
    }
    // No gap beyond the documented tolerance. A tick is missing only if (1) the database was down
    // when it fell due: then a host logged it as skipped; or (2) its host died during its run: then
    // it is not run again (at most once), and the job waits for that run's lease (2 s).
    let first = *by_tick.keys().next().unwrap();
    let last = *by_tick.keys().last().unwrap();
    assert!(
        last - first >= chrono::Duration::seconds(20),
        "the ticks span {} – {}",
        rfc3339(first),
        rfc3339(last)
    );
    let resumed = by_tick
        .keys()
        .find(|t| **t > outage_end)
        .copied()
        .unwrap_or(last);
    let mut skipped_in_outage = 0;
    let mut t = first;
    while t < last {
        if !by_tick.contains_key(&t) {
            let named = logs.contains(&format!("tick {} skipped: the job store", rfc3339(t)));
            let in_outage = t >= outage_start - chrono::Duration::seconds(1) && t < resumed;
            let near_kill = kills.iter().any(|k| {
                t >= *k - chrono::Duration::seconds(1) && t <= *k + chrono::Duration::seconds(3)
            });
            assert!(
                (in_outage && named) || near_kill,
                "tick {} is missing without an explanation (outage {} – {}, kills {:?}); rows:\n{}\nlogs:\n{logs}",
                rfc3339(t),
                rfc3339(outage_start),
                rfc3339(outage_end),
                kills.iter().map(|k| rfc3339(*k)).collect::<Vec<_>>(),
                rows.iter()
                    .map(|r| format!("{} {} {}", rfc3339(r.tick), r.host, r.token))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            eprintln!(
                "tick {} missing: {}",
                rfc3339(t),
                if in_outage && named {
                    "database down"
                } else {
                    "its host died"
                }
            );
            if in_outage && named {
                skipped_in_outage += 1;
            }
        }
        t += chrono::Duration::seconds(1);
    }
    eprintln!(
        "{} ticks from {} to {}, by {hosts:?}; skipped in the outage: {skipped_in_outage}; \
         run elsewhere: {elsewhere}; store skips: {store_skips}",
        rows.len(),
        rfc3339(first),
        rfc3339(last)
    );
    // The outage did skip ticks, logged with the job, the tick and the reason, and counted.
    assert!(
        skipped_in_outage >= 1,
        "no tick was skipped while the database was down for 3 s:\n{logs}"
    );
    assert!(
        logs.contains("job store") && logs.contains("unreachable"),
        "{logs}"
    );
    assert!(store_skips >= 1.0, "store skips not counted in /metrics");
    assert!(
        elsewhere >= 1.0,
        "ticks run elsewhere not counted in /metrics"
    );
    assert!(
        logs.contains("reachable again"),
        "no host said the store came back:\n{logs}"
    );
}

#[test]
fn a_run_paused_past_its_lease_cannot_commit_with_its_stale_token() {
    let pg = PgCluster::start();
    let url = pg.url();
    let bin = example_bin("fleet");
    let start = |name: &str, write_after: &str| {
        let port = free_port();
        let mut cmd = command(&bin);
        cmd.args(["--database-url", &url, "--host-name", name])
            .args(["--write-after", write_after, "--workers", "1"])
            .args(["--jobs-lease", LEASE, "--port", &port.to_string()]);
        let mut p = Proc::start(cmd, port);
        p.wait_serving();
        p
    };
    // Host a alone: its run holds its token for 6 s before writing.
    let a = start("a", "6s");
    let held = |log: &str| {
        log.lines().find_map(|l| {
            let rest = l.split("record-usage: tick ").nth(1)?;
            let (tick, token) = rest.split_once(" holds token ")?;
            Some((tick.to_string(), token.trim().parse::<i64>().ok()?))
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || held(&a.stderr()).is_some()),
        "host a never ran its job:\n{}",
        a.stderr()
    );
    // Paused (a long GC, a frozen VM) in the middle of its run: no renewal, its lease expires.
    let worker = *slot0_pids(&a.stderr()).last().expect("a has a slot 0");
    // SAFETY: kill(2) on a worker of our own child.
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    let (stale_tick, stale) = held(&a.stderr()).unwrap();
    // Host b claims the next ticks once a's lease has expired, with newer tokens, and writes them.
    let b = start("b", "0s");
    let written = || {
        pg.query("SELECT host, token FROM fleet_usage ORDER BY token")
            .into_iter()
            .map(|r| (r[0].clone(), r[1].parse::<i64>().unwrap()))
            .collect::<Vec<_>>()
    };
    let b_wrote = wait_until(Duration::from_secs(30), || {
        written().iter().any(|(host, _)| host == "b")
    });
    // Resumed: a's run goes on to write with its stale token.
    // SAFETY: kill(2) on a worker of our own child.
    unsafe { libc::kill(worker, libc::SIGCONT) };
    assert!(
        b_wrote,
        "host b never wrote:\n{}\n{}",
        a.stderr(),
        b.stderr()
    );
    let refused = format!("stale fencing token {stale} for job \"record-usage\"");
    assert!(
        a.wait_log(&refused, Duration::from_secs(30)),
        "the stale run was not refused:\n{}",
        a.stderr()
    );
    let log = a.stderr();
    assert!(
        log.contains(&format!("job \"record-usage\" (tick {stale_tick}) failed")),
        "the refused run is logged as failed:\n{log}"
    );
    assert!(log.contains("(HF001)"), "{log}");
    // Nothing of the stale run was written; b's rows carry newer tokens.
    let rows = written();
    assert!(
        rows.iter().all(|(_, token)| *token != stale),
        "the stale run wrote: {rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|(host, _)| host == "b")
            .all(|(_, token)| *token > stale),
        "{rows:?}"
    );
    let stale_rows = pg.query(&format!(
        "SELECT count(*) FROM fleet_usage WHERE tick = '{stale_tick}'"
    ));
    assert_eq!(stale_rows, vec![vec!["0".to_string()]]);
    // And a says its run lost its claim.
    assert!(
        a.wait_log("the run lost its claim", Duration::from_secs(10)),
        "{}",
        a.stderr()
    );
}

#[test]
fn jobs_migrate_creates_the_schema_and_bad_store_settings_are_usage_errors() {
    let pg = PgCluster::start();
    let url = pg.url();
    let run = |args: &[&str]| {
        let out = command(&hyperfork_bin())
            .args(args)
            .output()
            .expect("run hyperfork");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Twice: the second finds everything in place. The password is never printed.
    for _ in 0..2 {
        let (code, stdout, stderr) = run(&["jobs", "migrate", "--jobs-store", &url]);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!(
                "job store postgres://app@127.0.0.1:{}/app: hyperfork_job_tokens, \
                 hyperfork_job_claims and hyperfork_fence() are in place",
                pg.port()
            )),
            "{stdout}"
        );
        assert!(!stdout.contains("app:app@"), "{stdout}");
    }
    assert_eq!(
        pg.query(
            "SELECT count(*) FROM pg_tables WHERE tablename IN \
             ('hyperfork_job_tokens', 'hyperfork_job_claims')"
        ),
        vec![vec!["2".to_string()]]
    );
    // Nothing to migrate without a store; a store that refuses is a runtime failure.
    let (code, _, stderr) = run(&["jobs", "migrate"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("jobs migrate: no job store"), "{stderr}");
    let refused = format!("postgres://app:app@127.0.0.1:{}/app", free_port());
    let (code, _, stderr) = run(&["jobs", "migrate", "--jobs-store", &refused]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    // Bad settings: one line each, exit status 2, before anything starts.
    let dir = tempfile::tempdir().unwrap();
    let bad_delivery = dir.path().join("bad.toml");
    std::fs::write(
        &bad_delivery,
        "[[jobs]]\nname = \"a\"\nevery = \"1s\"\ncommand = [\"true\"]\ndelivery = \"twice\"\n",
    )
    .unwrap();
    let bad_delivery = bad_delivery.to_str().unwrap();
    for (args, expected) in [
        (
            vec!["--check-config", "--jobs-store", "nonsense"],
            "expected a PostgreSQL URL",
        ),
        (
            vec![
                "--check-config",
                "--jobs-store",
                "postgres://a@h/db?sslmode=require",
            ],
            "TLS to the job store is not supported",
        ),
        (
            vec!["--check-config", "--jobs-lease", "500ms"],
            "expected a lease of at least 1s",
        ),
        (
            vec!["--check-config", "--config", bad_delivery],
            "key `delivery`: expected \"at-most-once\" or \"at-least-once\", got \"twice\"",
        ),
    ] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn an_at_least_once_tick_lost_with_its_host_runs_again_elsewhere_with_a_higher_token() {
    let pg = PgCluster::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("starts.txt");
    let config = dir.path().join("jobs.toml");
    // A 5 s job whose runs take 4 s; a tick stays runnable for 20 s, longer than the 2 s lease.
    std::fs::write(
        &config,
        format!(
            "[[jobs]]\nname = \"rollup\"\nevery = \"5s\"\nmisfire_grace = \"20s\"\n\
             delivery = \"at-least-once\"\ncommand = [\"sh\", \"-c\", \
             \"echo \\\"$HYPERFORK_SCHEDULED_AT $HOST_NAME $HYPERFORK_FENCE_TOKEN\\\" >> {}; sleep 4\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let mut hosts: BTreeMap<String, Proc> = BTreeMap::new();
    for name in ["a", "b"] {
        hosts.insert(
            name.to_string(),
            start_host(name, free_port(), free_port(), &config, &url),
        );
    }
    // The first run starts on one host; that host dies with its run (its master SIGKILLed).
    assert!(
        wait_until(Duration::from_secs(30), || !read_rows(&out).is_empty()),
        "no run started"
    );
    let lost = read_rows(&out)[0].clone();
    let dying = hosts.remove(&lost.host).unwrap();
    let workers = children_of(dying.pid());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(dying.pid(), libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(20), || workers
        .iter()
        .all(|&p| !alive(p))));
    // Once its lease expired, the other host runs the same tick again, with a higher token.
    let (other, survivor) = hosts.iter().next().unwrap();
    let rerun = || {
        read_rows(&out)
            .into_iter()
            .find(|r| r.tick == lost.tick && r.host == *other)
    };
    assert!(
        wait_until(Duration::from_secs(20), || rerun().is_some()),
        "tick {} was not run again; rows {:?}:\n{}",
        rfc3339(lost.tick),
        read_rows(&out),
        survivor.stderr()
    );
    let again = rerun().unwrap();
    assert!(again.token > lost.token, "{again:?} after {lost:?}");
    assert!(
        survivor.stderr().contains(&format!(
            "job \"rollup\": tick {} taken over with token {}",
            rfc3339(lost.tick),
            again.token
        )),
        "{}",
        survivor.stderr()
    );
    let attempts = pg.query(&format!(
        "SELECT attempts FROM hyperfork_job_claims WHERE job = 'rollup' AND tick = '{}'",
        rfc3339(lost.tick)
    ));
    assert_eq!(attempts, vec![vec!["2".to_string()]]);
    drop(dying);
}
