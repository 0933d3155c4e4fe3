//! Live operations under load: HUP reloads without a failed request, TTIN/TTOU resizes, and scheduled
//! jobs handed over across reloads.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;

/// hyperfork serving with a TOML file holding `body`, in a directory kept while the guard lives.
fn serve_with_config(body: &str) -> (tempfile::TempDir, std::path::PathBuf, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h.toml");
    std::fs::write(&config, body).unwrap();
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    (dir, config, p)
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn three_reloads_under_load_fail_no_request_and_apply_the_new_config() {
    let (_dir, config, p) = serve_with_config("workers = 2\n");
    let first = p.worker_pids();
    assert_eq!(first.len(), 2);
    let load = Load::start(p.port, 8);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&config, "workers = 3\n").unwrap();
    for n in 1..=3 {
        p.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(30), || count(
                &p.stderr(),
                "reload complete"
            ) >= n),
            "reload {n} did not complete:\n{}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let log = p.stderr();
    load.finish_clean(100, &log);
    assert!(log.contains("workers 2 -> 3"), "{log}");
    assert!(wait_until(Duration::from_secs(30), || first
        .iter()
        .all(|&w| !alive(w))));
    assert!(
        wait_until(Duration::from_secs(30), || p.worker_pids().len() == 3),
        "{log}"
    );
    assert!(p.worker_pids().iter().all(|w| !first.contains(w)));
}

#[test]
fn a_reload_with_a_bad_config_is_rejected_and_the_old_pool_keeps_serving() {
    let (_dir, config, p) = serve_with_config("workers = 2\n");
    let before = p.worker_pids();
    std::fs::write(&config, "workers = \"lots\"\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload rejected", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    assert!(p.stderr().contains("workers"));
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    assert_eq!(p.worker_pids(), before);
}

#[test]
fn ttin_and_ttou_change_the_live_worker_count() {
    let p = Proc::serve(&hyperfork_bin(), &["--workers", "2"], &[]);
    let first = p.worker_pids();
    p.signal(libc::SIGTTIN);
    // SIGTTIN replaces both workers (for a pool of 3) before it adds the third: wait for the end, or
    // the SIGTTOU below would come during it and be ignored.
    assert!(
        p.wait_log("SIGTTIN complete: 3 workers", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(20), || p.worker_pids().len() == 3
            && first.iter().all(|&w| !alive(w))),
        "{}",
        p.stderr()
    );
    p.signal(libc::SIGTTOU);
    assert!(p.wait_log("SIGTTOU: workers 3 -> 2", Duration::from_secs(20)));
    assert!(
        wait_until(Duration::from_secs(20), || p.worker_pids().len() == 2),
        "{}",
        p.stderr()
    );
    p.signal(libc::SIGTTOU);
    assert!(
        wait_until(Duration::from_secs(20), || p.worker_pids().len() == 1),
        "{}",
        p.stderr()
    );
    p.signal(libc::SIGTTOU);
    assert!(p.wait_log("keeps at least 1 worker", Duration::from_secs(20)));
    assert_eq!(p.worker_pids().len(), 1);
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
}

#[test]
fn scheduled_jobs_run_once_per_tick_across_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ticks.log");
    let config = dir.path().join("h.toml");
    std::fs::write(
        &config,
        format!(
            "workers = 3\n[[jobs]]\nname = \"append\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \"echo \\\"$HYPERFORK_SCHEDULED_AT $HYPERFORK_WORKER_ID $PPID\\\" >> {}\"]\n",
            out.display()
        ),
    )
    .unwrap();
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    assert!(wait_until(Duration::from_secs(20), || !read_tick_lines(
        &out
    )
    .is_empty()));
    let started = Instant::now();
    for (n, at) in [(1, 2500), (2, 5500)] {
        while started.elapsed() < Duration::from_millis(at) {
            std::thread::sleep(Duration::from_millis(20));
        }
        p.signal(libc::SIGHUP);
        assert!(wait_until(Duration::from_secs(30), || count(
            &p.stderr(),
            "reload complete"
        ) >= n));
    }
    while started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    let log = p.stderr();
    let slot0 = slot0_pids(&log);
    assert_eq!(
        slot0.len(),
        3,
        "slot 0 was not replaced by both reloads:\n{log}"
    );
    let lines = read_tick_lines(&out);
    for l in &lines {
        assert_eq!(l.slot, 0, "a run outside slot 0 (pid {})", l.pid);
        assert!(
            slot0.contains(&l.pid),
            "run by pid {} which is not in slot 0",
            l.pid
        );
    }
    let mut ms: Vec<i64> = lines.iter().map(|l| l.tick.timestamp_millis()).collect();
    ms.sort_unstable();
    let unique: HashSet<i64> = ms.iter().copied().collect();
    assert_eq!(unique.len(), ms.len(), "a tick ran twice: {ms:?}");
    // Tolerance: none. A reload stops the old holder gracefully (its running run finishes), and the
    // ticks due during the hand-over are within the 1 s misfire grace, so every tick runs once.
    let span = (ms[ms.len() - 1] - ms[0]) / 1000 + 1;
    assert_eq!(span, ms.len() as i64, "ticks missing: {ms:?}\n{log}");
    assert!(span >= 8, "{ms:?}");
}

#[test]
fn a_reload_whose_workers_cannot_boot_is_aborted_and_the_old_worker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("fault");
    std::fs::write(&fault, "").unwrap();
    let spec = format!("file:{}", fault.display());
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "1"],
        &[("HYPERFORK_FAULT", &spec)],
    );
    let before = p.worker_pids();
    std::fs::write(&fault, "boot-error").unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload aborted", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert!(p.stderr().contains("injected boot error"));
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || p.worker_pids() == before),
        "{:?} vs {before:?}",
        p.worker_pids()
    );
    assert!(!p.stderr().contains("giving up"));
}

#[test]
fn usr1_reopens_the_log_file_in_the_master_and_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("h.log");
    let rotated = dir.path().join("h.log.1");
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "2", "--log-file", log.to_str().unwrap()],
        &[],
    );
    let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(20), || read(&log)
        .contains("all 2 workers ready")));
    assert!(
        !p.stderr().contains("INFO"),
        "log lines went to stderr: {}",
        p.stderr()
    );
    let workers = p.worker_pids();
    // Rotate: move the file away, then signal.
    std::fs::rename(&log, &rotated).unwrap();
    p.signal(libc::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let text = read(&log);
            text.contains("SIGUSR1: reopened the log file")
                && workers
                    .iter()
                    .all(|w| text.contains(&format!("pid {w}] reopened the log file")))
        }),
        "new file:\n{}\nrotated file:\n{}",
        read(&log),
        read(&rotated)
    );
    assert!(read(&rotated).contains("all 2 workers ready"));
    assert!(!read(&rotated).contains("reopened"));
    // Workers keep writing to the new file, and nobody was killed by the signal.
    assert_eq!(p.worker_pids(), workers);
    p.signal(libc::SIGTTIN);
    assert!(wait_until(Duration::from_secs(20), || read(&log)
        .contains("SIGTTIN: workers 2 -> 3")));
}

/// What `ps` shows for `pid`: its command line, NULs as spaces, trailing ones dropped.
fn title(pid: i32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .trim_end()
        .to_string()
}

#[test]
fn process_titles_name_the_master_each_worker_and_the_scheduler() {
    let (_dir, config, p) = serve_with_config(
        "workers = 2\n[[jobs]]\nname = \"idle\"\nevery = \"1h\"\ncommand = [\"true\"]\n",
    );
    let master = p.pid();
    let titles = |want: &[&str]| {
        let mut got: Vec<String> = p.worker_pids().into_iter().map(title).collect();
        got.sort();
        got == want
    };
    assert!(
        wait_until(Duration::from_secs(20), || title(master)
            == "hyperfork: master (gen 1, 2 workers)"
            && titles(&[
                "hyperfork: worker 0 [scheduler]",
                "hyperfork: worker 1"
            ])),
        "master {:?}, workers {:?}",
        title(master),
        p.worker_pids().into_iter().map(title).collect::<Vec<_>>()
    );
    std::fs::write(&config, "workers = 3\n").unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(30), || title(master)
            == "hyperfork: master (gen 2, 3 workers)"
            && titles(&[
                "hyperfork: worker 0",
                "hyperfork: worker 1",
                "hyperfork: worker 2"
            ])),
        "master {:?}, workers {:?}",
        title(master),
        p.worker_pids().into_iter().map(title).collect::<Vec<_>>()
    );
}

#[test]
fn an_address_dropped_by_a_reload_stops_listening() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("h.toml");
    let (kept, dropped) = (free_port(), free_port());
    std::fs::write(
        &config,
        format!("workers = 2\nbind = [\"127.0.0.1:{kept}\", \"127.0.0.1:{dropped}\"]\n"),
    )
    .unwrap();
    let mut cmd = command(&hyperfork_bin());
    cmd.args(["--config", config.to_str().unwrap()]);
    let mut p = Proc::start(cmd, kept);
    p.wait_serving();
    assert_eq!(get(dropped, "/").unwrap().status, 200);
    let first = p.worker_pids();
    std::fs::write(
        &config,
        format!("workers = 2\nbind = [\"127.0.0.1:{kept}\"]\n"),
    )
    .unwrap();
    p.signal(libc::SIGHUP);
    assert!(
        p.wait_log("reload complete", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert!(wait_until(Duration::from_secs(30), || first
        .iter()
        .all(|&w| !alive(w))));
    assert_eq!(get(kept, "/").unwrap().status, 200);
    // Nobody may keep the dropped socket open: a connection to it is refused, not queued forever.
    let refused = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", dropped))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(
        refused,
        "the dropped address still accepts connections:\n{}",
        p.stderr()
    );
}
