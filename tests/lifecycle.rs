//! The pool's life: many workers serve, a killed worker comes back in its slot, a crash loop ends in a
//! clear error, SIGTERM drains in-flight requests, and no worker outlives its master.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn concurrent_load_is_served_by_more_than_one_worker() {
    let p = Proc::serve(&hyperfork_bin(), &["--workers", "4"], &[]);
    let mut pids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.len() < 2 && Instant::now() < deadline {
        for (_, pid) in burst(p.port, 32) {
            pids.insert(pid);
        }
    }
    assert!(pids.len() >= 2, "only pids {pids:?} answered");
    let workers: HashSet<u64> = p.worker_pids().into_iter().map(|x| x as u64).collect();
    assert!(
        pids.is_subset(&workers),
        "answers from {pids:?}, workers {workers:?}"
    );
}

#[test]
fn responses_carry_the_worker_slot() {
    let p = Proc::serve(&hyperfork_bin(), &["--workers", "2"], &[]);
    let r = get(p.port, "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "Hello, world!");
    let slot: u64 = r.header("x-worker").unwrap().parse().unwrap();
    assert!(slot < 2);
    let h = get(p.port, "/health").unwrap();
    let (hslot, hpid) = health_identity(&h);
    assert_eq!(h.header("x-worker").unwrap(), hslot.to_string());
    assert!(p.worker_pids().contains(&(hpid as i32)));
    assert_eq!(get(p.port, "/nope").unwrap().status, 404);
}

/// Learns `slot -> pid` by bursts of concurrent requests until every slot has been seen.
fn slots_to_pids(port: u16, slots: usize) -> HashMap<u64, u64> {
    let mut map = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while map.len() < slots && Instant::now() < deadline {
        for (slot, pid) in burst(port, 16) {
            map.insert(slot, pid);
        }
    }
    assert_eq!(map.len(), slots, "saw only {map:?}");
    map
}

/// Milliseconds since midnight of a log line's RFC 3339 timestamp.
fn log_millis(line: &str) -> u64 {
    let t = &line[11..23]; // HH:MM:SS.mmm
    let h: u64 = t[0..2].parse().unwrap();
    let m: u64 = t[3..5].parse().unwrap();
    let s: u64 = t[6..8].parse().unwrap();
    let ms: u64 = t[9..12].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ms
}

fn log_line<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{log}"))
}

#[test]
fn a_killed_worker_is_replaced_in_the_same_slot() {
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "2", "--log-level", "debug"],
        &[],
    );
    let before = slots_to_pids(p.port, 2);
    let old = before[&1];
    // Let the worker outlive the crash window, so the restart is immediate.
    std::thread::sleep(Duration::from_millis(1200));
    // SAFETY: kill(2) on a worker of our own child.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };

    let replaced = format!("worker 1 (pid {old}) was killed by SIGKILL");
    assert!(
        p.wait_log(&replaced, Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
    let ready_re = |log: &str| {
        log.lines()
            .find(|l| {
                l.contains("worker 1 (pid")
                    && l.contains("is ready")
                    && !l.contains(&format!("pid {old})"))
            })
            .map(str::to_string)
    };
    assert!(
        wait_until(Duration::from_secs(10), || ready_re(&p.stderr()).is_some()),
        "no replacement became ready:\n{}",
        p.stderr()
    );
    let log = p.stderr();
    let died_at = log_millis(log_line(&log, &replaced));
    let ready_line = ready_re(&log).unwrap();
    let ready_at = log_millis(&ready_line);
    assert!(
        ready_at.saturating_sub(died_at) < 1000,
        "replacement took {} ms:\n{log}",
        ready_at.saturating_sub(died_at)
    );

    // The new pid serves, from slot 1.
    let mut seen = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.is_none() && Instant::now() < deadline {
        seen = burst(p.port, 16).into_iter().find(|(slot, _)| *slot == 1);
    }
    let (_, new_pid) = seen.expect("slot 1 answers again");
    assert_ne!(new_pid, old);
    assert!(
        ready_line.contains(&format!("pid {new_pid})")),
        "{ready_line}"
    );
    assert_eq!(p.worker_pids().len(), 2);
}

#[test]
fn a_worker_that_panics_at_boot_backs_off_and_the_master_gives_up() {
    let mut cmd = command(&example_bin("faults"));
    cmd.args(["--workers", "2", "--port", &free_port().to_string()])
        .env("HYPERFORK_FAULT", "boot-panic");
    let mut p = Proc::start(cmd, 0);
    let status = p
        .wait_exit(Duration::from_secs(60))
        .expect("the master gives up instead of looping");
    let log = p.stderr();
    assert_eq!(status.code(), Some(3), "{log}");
    for backoff in [
        "restarting in 100ms",
        "restarting in 200ms",
        "restarting in 400ms",
    ] {
        assert!(log.contains(backoff), "no {backoff:?} in:\n{log}");
    }
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("giving up") && last.contains("injected boot panic"),
        "last line: {last}"
    );
}

#[test]
fn a_boot_error_in_one_slot_does_not_stop_the_pool() {
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2"],
        &[("HYPERFORK_FAULT", "boot-panic-slot0")],
    );
    assert!(
        p.wait_log("restarting in 400ms", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    assert!(!p.stderr().contains("giving up"));
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let mut p = Proc::serve(&example_bin("axum_app"), &["--workers", "2"], &[]);
    let mut conn = Conn::open(p.port).unwrap();
    // A first request on the keep-alive connection proves a worker owns it.
    assert_eq!(conn.get("/").unwrap().status, 200);
    conn.send_get("/slow?ms=3000").unwrap();
    assert!(p.wait_log("slow request started", Duration::from_secs(20)));
    p.signal(libc::SIGTERM);

    let r = conn
        .read_response()
        .expect("the in-flight request completes");
    assert_eq!(r.status, 200);
    assert!(r.body.starts_with("slow done"), "{}", r.body);
    assert_eq!(r.header("connection"), Some("close"));
    let status = p.wait_exit(Duration::from_secs(30)).expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
}

#[test]
fn sigterm_with_a_request_beyond_the_graceful_timeout_kills_and_exits() {
    let mut p = Proc::serve(
        &example_bin("axum_app"),
        &["--workers", "1", "--graceful-timeout", "1s"],
        &[],
    );
    let mut conn = Conn::open(p.port).unwrap();
    assert_eq!(conn.get("/").unwrap().status, 200);
    conn.send_get("/slow?ms=30000").unwrap();
    assert!(p.wait_log("slow request started", Duration::from_secs(20)));
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(20)).expect("master exits");
    assert!(status.success(), "{}", p.stderr());
    assert!(conn.read_response().is_err());
}

#[test]
fn sigint_is_a_fast_shutdown() {
    let mut p = Proc::serve(&example_bin("axum_app"), &["--workers", "2"], &[]);
    let mut conn = Conn::open(p.port).unwrap();
    assert_eq!(conn.get("/").unwrap().status, 200);
    conn.send_get("/slow?ms=30000").unwrap();
    assert!(p.wait_log("slow request started", Duration::from_secs(20)));
    p.signal(libc::SIGINT);
    let status = p.wait_exit(Duration::from_secs(10)).expect("master exits");
    assert!(status.success(), "{}", p.stderr());
    assert!(conn.read_response().is_err(), "fast shutdown does not wait");
}

#[test]
fn no_worker_outlives_a_killed_master() {
    let mut p = Proc::serve(&hyperfork_bin(), &["--workers", "3"], &[]);
    let workers = p.worker_pids();
    assert_eq!(workers.len(), 3);
    p.signal(libc::SIGKILL);
    p.wait_exit(Duration::from_secs(10))
        .expect("master is gone");
    let gone = wait_until(Duration::from_secs(2), || {
        workers.iter().all(|&w| !alive(w))
    });
    let left: Vec<i32> = workers.iter().copied().filter(|&w| alive(w)).collect();
    assert!(
        gone,
        "workers still alive 2 s after the master died: {left:?}"
    );
}

#[test]
fn unix_socket_serves_and_is_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.sock");
    let mut cmd = command(&hyperfork_bin());
    cmd.args(["--workers", "1", "--bind"])
        .arg(format!("unix:{}", path.display()));
    let mut p = Proc::start(cmd, 0);
    assert!(wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&path).is_ok()
    }));
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("Hello, world!"),
        "{out}"
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(!path.exists(), "socket file left behind");
}
