//! Scheduled jobs: only slot 0 runs them, never two runs for one tick, missed ticks caught up, failures
//! contained.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Writes a TOML file with one command job.
fn job_config(dir: &Path, body: &str) -> String {
    let path = dir.join("jobs.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

/// A command appending `TICK SLOT PID` to `out`.
fn appending_job(out: &Path, every: &str) -> String {
    format!(
        "[[jobs]]\nname = \"append\"\nevery = \"{every}\"\ncommand = [\"sh\", \"-c\", \"echo \\\"$HYPERFORK_SCHEDULED_AT $HYPERFORK_WORKER_ID $PPID\\\" >> {}\"]\n",
        out.display()
    )
}

/// The pid holding the lease now, from the master's log.
fn current_holder(log: &str) -> Option<i32> {
    log.lines()
        .rev()
        .filter(|l| l.contains("holds the scheduler lease"))
        .filter_map(|l| {
            l.split("worker 0 (pid ")
                .nth(1)?
                .split(')')
                .next()?
                .parse()
                .ok()
        })
        .next()
}

#[test]
fn every_tick_runs_once_in_slot_0_across_two_sigkills() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.log");
    let config = job_config(dir.path(), &appending_job(&out, "1s"));
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "3", "--config", &config],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(20), || !read_tick_lines(&out)
            .is_empty()),
        "no job ran:\n{}",
        p.stderr()
    );
    let started = Instant::now();
    let mut killed = Vec::new();
    for at in [Duration::from_millis(2500), Duration::from_millis(5500)] {
        while started.elapsed() < at {
            std::thread::sleep(Duration::from_millis(20));
        }
        let holder = current_holder(&p.stderr()).expect("a lease holder");
        assert!(
            !killed.contains(&holder),
            "the lease was not handed over:\n{}",
            p.stderr()
        );
        // SAFETY: kill(2) on a worker of our own child.
        unsafe { libc::kill(holder, libc::SIGKILL) };
        killed.push(holder);
        assert!(
            p.wait_log(
                &format!("holder pid {holder} exited"),
                Duration::from_secs(10)
            ),
            "{}",
            p.stderr()
        );
    }
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    let log = p.stderr();
    let lines = read_tick_lines(&out);

    // Only slot 0 ran the job, and only workers the master booted into slot 0.
    let slot0 = slot0_pids(&log);
    assert!(slot0.len() >= 3, "slot 0 was not replaced twice:\n{log}");
    for l in &lines {
        assert_eq!(l.slot, 0, "a run outside slot 0");
        assert!(
            slot0.contains(&l.pid),
            "run by pid {} which is not a slot-0 worker",
            l.pid
        );
    }
    // No tick ran twice.
    let ticks: Vec<i64> = lines.iter().map(|l| l.tick.timestamp_millis()).collect();
    let unique: HashSet<i64> = ticks.iter().copied().collect();
    assert_eq!(unique.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    // One line per elapsed tick. Tolerance, from the misfire policy: a tick that fell due while slot 0
    // was being replaced runs when the new holder starts (it is within the 1 s grace), so nothing is
    // missed; only a run already started when its worker was SIGKILLed can be lost (it was reported
    // started, so it is not run again): at most one tick per kill.
    let mut sorted = ticks.clone();
    sorted.sort_unstable();
    let span = (sorted[sorted.len() - 1] - sorted[0]) / 1000 + 1;
    for w in sorted.windows(2) {
        assert_eq!(
            (w[1] - w[0]) % 1000,
            0,
            "ticks off the 1 s grid: {sorted:?}"
        );
    }
    let missing = span - sorted.len() as i64;
    assert!(
        (0..=killed.len() as i64).contains(&missing),
        "{missing} tick(s) missing over {span} ticks: {sorted:?}\n{log}"
    );
    assert!(span >= 8, "only {span} ticks in 8+ s: {sorted:?}");
}

#[test]
fn health_of_slot_0_reports_the_scheduler_and_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.log");
    let config = job_config(dir.path(), &appending_job(&out, "1s"));
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "2", "--config", &config],
        &[],
    );
    assert!(wait_until(Duration::from_secs(20), || !read_tick_lines(
        &out
    )
    .is_empty()));
    let mut seen_primary = false;
    let mut seen_other = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen_primary && seen_other) && Instant::now() < deadline {
        let Ok(r) = get(p.port, "/health") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        if v["worker"] == 0 {
            assert_eq!(v["scheduler"], true, "{v}");
            let job = &v["jobs"]["append"];
            if job["last_outcome"] == "ok" {
                assert!(job["runs"].as_u64().unwrap() >= 1);
                assert!(job["last_tick"].is_string());
                seen_primary = true;
            }
        } else {
            assert_eq!(v["scheduler"], false, "{v}");
            assert!(v.get("jobs").is_none());
            seen_other = true;
        }
    }
    assert!(seen_primary && seen_other);
}

#[test]
fn debug_mode_runs_jobs_in_its_single_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.log");
    let config = job_config(dir.path(), &appending_job(&out, "1s"));
    let p = Proc::serve(&hyperfork_bin(), &["--debug", "--config", &config], &[]);
    assert!(
        wait_until(Duration::from_secs(20), || read_tick_lines(&out).len() >= 2),
        "{}",
        p.stderr()
    );
    let workers = p.worker_pids();
    assert_eq!(workers.len(), 1);
    assert!(
        read_tick_lines(&out)
            .iter()
            .all(|l| l.pid == workers[0] && l.slot == 0)
    );
}

#[test]
fn a_run_still_going_makes_the_next_tick_skip_and_timeouts_kill() {
    let dir = tempfile::tempdir().unwrap();
    let config = job_config(
        dir.path(),
        "[[jobs]]\nname = \"slow\"\nevery = \"1s\"\ncommand = [\"sleep\", \"2.5\"]\n\n\
         [[jobs]]\nname = \"stuck\"\nevery = \"1s\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"1500ms\"\n\n\
         [[jobs]]\nname = \"failing\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \"echo oops >&2; exit 3\"]\n",
    );
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--config", &config],
        &[],
    );
    let worker = p.worker_pids();
    for needle in [
        "job \"slow\": tick",
        "skipped: the previous run is still going",
        "job \"stuck\" (tick",
        "timed out after 1s 500ms; killed",
        "job \"failing\" stderr: oops",
        "failed after",
        "exited with status 3",
    ] {
        assert!(
            p.wait_log(needle, Duration::from_secs(20)),
            "no {needle:?} in:\n{}",
            p.stderr()
        );
    }
    // Failures did not take the worker down, and the failing job keeps running on later ticks.
    let failures = |log: &str| log.matches("exited with status 3").count();
    let before = failures(&p.stderr());
    assert!(wait_until(Duration::from_secs(20), || failures(
        &p.stderr()
    ) > before));
    assert_eq!(p.worker_pids(), worker);
}

#[test]
fn a_panicking_async_job_is_logged_and_the_next_tick_runs() {
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2"],
        &[("HYPERFORK_FAULT", "job-panic")],
    );
    let workers = p.worker_pids();
    for needle in [
        "panicked: injected job panic (run 0)",
        "flaky job run 1 for tick",
        "injected job panic (run 2)",
    ] {
        assert!(
            p.wait_log(needle, Duration::from_secs(20)),
            "no {needle:?} in:\n{}",
            p.stderr()
        );
    }
    assert_eq!(
        p.worker_pids(),
        workers,
        "a job panic must not kill the worker"
    );
}

#[test]
fn bad_job_tables_are_usage_errors_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[[jobs]]\nname = \"a\"\ncron = \"61 * * * *\"\ncommand = [\"true\"]\n",
            ":3:",
            "cron",
        ),
        (
            "[[jobs]]\nname = \"a\"\ncommand = [\"true\"]\n",
            "",
            "missing schedule",
        ),
        (
            "[[jobs]]\nname = \"a\"\nevery = \"1s\"\ncron = \"* * * * *\"\ncommand = [\"true\"]\n",
            ":4:",
            "not both",
        ),
        (
            "[[jobs]]\nname = \"a\"\nevery = \"soon\"\ncommand = [\"true\"]\n",
            ":3:",
            "every",
        ),
        (
            "[[jobs]]\nname = \"a\"\nevery = \"1s\"\ncommand = []\n",
            ":4:",
            "command",
        ),
        (
            "[[jobs]]\nname = \"a\"\nevery = \"1s\"\ncommand = [\"true\"]\nretries = 3\n",
            ":5:",
            "retries",
        ),
        (
            "[[jobs]]\nname = \"a\"\ncron = \"* * * * *\"\ntimezone = \"Mars/Base\"\ncommand = [\"true\"]\n",
            ":4:",
            "time zone",
        ),
        (
            "[[jobs]]\nname = \"a\"\ncron = \"* * * * *\"\ntimezone = \"Europe/Pariss\"\ncommand = [\"true\"]\n",
            ":4:",
            "key `timezone`: unknown time zone \"Europe/Pariss\" (not in /",
        ),
        (
            "[[jobs]]\nname = \"a\"\nevery = \"1s\"\ncommand = [\"true\"]\n[[jobs]]\nname = \"a\"\nevery = \"2s\"\ncommand = [\"true\"]\n",
            "",
            "used twice",
        ),
    ];
    for (body, line, needle) in cases {
        let config = job_config(dir.path(), body);
        let out = command(&hyperfork_bin())
            .args(["--config", &config, "--port", &free_port().to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&config) && stderr.contains(line) && stderr.contains(needle),
            "{body}\n{stderr}"
        );
    }
}

#[test]
fn cron_time_zones_come_from_the_system_database_or_tzdir() {
    let dir = tempfile::tempdir().unwrap();
    let tzdir = dir.path().join("zoneinfo");
    std::fs::create_dir_all(tzdir.join("Test")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy("/usr/share/zoneinfo/Europe/Paris", tzdir.join("Test/Zone"))
        .expect("the system's tzdata (apt-get install tzdata)");
    std::fs::write(tzdir.join("Test/Broken"), "not TZif").unwrap();
    let job = |zone: &str| {
        job_config(
            dir.path(),
            &format!(
                "[[jobs]]\nname = \"a\"\ncron = \"0 9 * * *\"\ntimezone = \"{zone}\"\ncommand = [\"true\"]\n"
            ),
        )
    };
    let tzdir_s = tzdir.to_str().unwrap();
    let empty_s = empty.to_str().unwrap();

    // A zone TZDIR has and the system has not: read from there, in the master.
    let config = job("Test/Zone");
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--config", &config],
        &[("TZDIR", tzdir_s)],
    );
    assert!(
        p.wait_log(
            "job \"a\": cron \"0 9 * * *\" (Test/Zone), in worker 0",
            Duration::from_secs(10)
        ),
        "{}",
        p.stderr()
    );
    drop(p);

    // Usage errors (exit 2, one line) naming the zone, the file's line and where it was looked for.
    let cases = [
        (
            "Europe/Paris",
            tzdir_s,
            format!(
                "unknown time zone \"Europe/Paris\" (not in {tzdir_s}: expected an IANA name such as Europe/Paris; install the tzdata package, or set TZDIR)"
            ),
        ),
        (
            "Test/Broken",
            tzdir_s,
            format!(
                "unknown time zone \"Test/Broken\" ({tzdir_s}/Test/Broken is not a valid time-zone file; install"
            ),
        ),
        (
            "Europe/Paris",
            empty_s,
            format!(
                "unknown time zone \"Europe/Paris\" (no time-zone database in {empty_s}; install the tzdata package, or set TZDIR)"
            ),
        ),
    ];
    for (zone, tzdir, needle) in cases {
        let config = job(zone);
        let out = command(&hyperfork_bin())
            .args(["--config", &config, "--port", &free_port().to_string()])
            .env("TZDIR", tzdir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{zone} in {tzdir}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("{config}:4:")) && stderr.contains(&needle),
            "{needle}\n{stderr}"
        );
    }

    // UTC needs no database.
    let config = job("UTC");
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--config", &config],
        &[("TZDIR", empty_s)],
    );
    assert!(
        p.wait_log("(UTC), in worker 0", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
}
