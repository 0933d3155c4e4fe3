//! Balanced accept: keep-alive connections opened one after another spread over every worker, instead
//! of piling onto whichever worker the kernel wakes first.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Opens `n` keep-alive connections one after another, each answering one request before the next
/// is opened and all kept open; returns how many connections each worker (`x-worker`) holds.
fn connections_per_worker(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut open = Vec::new();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let mut c = Conn::open(port).expect("connect");
        let r = c.get("/").expect("GET / on a new connection");
        assert_eq!(r.status, 200);
        let worker = r.header("x-worker").expect("x-worker header").to_string();
        *counts.entry(worker).or_insert(0) += 1;
        open.push(c);
    }
    counts
}

fn start(workers: &str, accept: &str) -> Proc {
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", workers, "--accept", accept],
        &[],
    );
    assert!(
        p.wait_log(
            &format!("all {workers} workers ready"),
            Duration::from_secs(20)
        ),
        "workers never all ready:\n{}",
        p.stderr()
    );
    p
}

#[test]
fn sequential_connections_reach_every_worker_evenly() {
    let p = start("4", "balanced");
    let counts = connections_per_worker(p.port, 24);
    assert_eq!(
        counts.len(),
        4,
        "every worker holds connections: {counts:?}"
    );
    let max = counts.values().copied().max().unwrap_or(0);
    let min = counts.values().copied().min().unwrap_or(0);
    // Perfect balance is 6 each; a peer that does not get the CPU within the 5 ms wait costs one.
    assert!(max <= 2 * min, "uneven: {counts:?}");
}

#[test]
fn shared_accept_is_still_available() {
    let p = start("2", "shared");
    let counts = connections_per_worker(p.port, 8);
    assert_eq!(counts.values().sum::<usize>(), 8, "{counts:?}");
}

/// The `accepted N connection(s); left M to less loaded workers` counts each worker logged on exit.
fn accept_counts(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("accepted ").nth(1)?;
            let (n, rest) = rest.split_once(" connection(s); left ")?;
            let (m, _) = rest.split_once(' ')?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect()
}

/// One request on a new connection that the client closes after reading the whole response.
fn get_and_close(port: u16) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read to the server's close");
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_opening_a_connection_per_request_is_never_deferred() {
    let mut p = start("2", "balanced");
    for i in 0..300 {
        assert_eq!(get_and_close(p.port), 200, "request {i}");
    }
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).is_some());
    let log = p.stderr();
    let counts = accept_counts(&log);
    assert_eq!(counts.len(), 2, "one count line per worker:\n{log}");
    // 300, and the harness's own readiness probe.
    assert!(counts.iter().map(|c| c.0).sum::<u64>() >= 300, "{counts:?}");
    assert!(
        counts.iter().all(|c| c.1 == 0),
        "a short connection was deferred while no worker had more than one open: {counts:?}"
    );
}

#[test]
fn a_blocked_peer_is_deferred_to_at_most_once() {
    let p = Proc::serve(
        &example_bin("faults"),
        &[
            "--workers",
            "2",
            "--accept",
            "balanced",
            "--log-level",
            "debug",
        ],
        &[],
    );
    assert!(
        p.wait_log("all 2 workers ready", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    // Keep-alive connections until both workers hold one.
    let mut held: Vec<(Conn, String)> = Vec::new();
    while held
        .iter()
        .map(|h| &h.1)
        .collect::<std::collections::HashSet<_>>()
        .len()
        < 2
    {
        assert!(held.len() < 50, "one worker never got a connection");
        let mut c = Conn::open(p.port).expect("connect");
        let r = c.get("/").expect("GET /");
        let pid = r.header("x-pid").expect("x-pid").to_string();
        held.push((c, pid));
    }
    // Block the last connection's worker (B) for 5 s; its accept loop stays parked meanwhile.
    let (mut blocked, b_pid) = held.pop().expect("a connection");
    blocked.send_get("/block?ms=5000").expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let log_before = p.stderr().len();
    let mut answered_by = Vec::new();
    for _ in 0..12 {
        let mut c = Conn::open(p.port).expect("connect");
        let r = c.get("/").expect("GET / while a peer is blocked");
        answered_by.push(r.header("x-pid").expect("x-pid").to_string());
        held.push((c, String::new()));
    }
    assert!(
        answered_by.iter().all(|pid| *pid != b_pid),
        "the blocked worker answered: {answered_by:?}"
    );
    let needle = format!("a connection left to worker pid {b_pid} waited");
    let missed = |p: &Proc| p.stderr()[log_before..].matches(needle.as_str()).count();
    assert!(
        wait_until(Duration::from_secs(10), || missed(&p) >= 1),
        "no connection was left to the blocked worker:\n{}",
        &p.stderr()[log_before..]
    );
    assert_eq!(blocked.read_response().expect("the block ends").status, 200);
    // The first connection past the margin is left to the blocked worker and taken back after the
    // wait; every later one goes straight to the busy but responsive worker.
    assert_eq!(
        missed(&p),
        1,
        "deferrals to the blocked worker that it never took:\n{}",
        &p.stderr()[log_before..]
    );
}

#[test]
fn packed_accept_gathers_connections_on_the_first_worker_while_it_keeps_up() {
    // An idle pool: every new connection finds worker 0 keeping up, and the others leave it to worker
    // 0. A peer left a connection takes it itself after 5 ms, though, when worker 0 does not get the
    // CPU in time, which a test machine running other tests does now and then. So the property is
    // statistical: worker 0 holds more connections than any other, and at least half, in one of 3
    // pools. Balanced accept never does (it spreads them evenly; see the test above).
    let mut seen = Vec::new();
    for _ in 0..3 {
        let p = start("3", "packed");
        let counts = connections_per_worker(p.port, 18);
        let first = counts.get("0").copied().unwrap_or(0);
        let others = counts
            .iter()
            .filter(|(w, _)| w.as_str() != "0")
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        if first > others && first >= 9 {
            return;
        }
        seen.push(counts);
    }
    panic!("worker 0 never held most connections: {seen:?}");
}

#[test]
fn packed_accept_passes_over_a_blocked_worker() {
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "3", "--accept", "packed"],
        &[],
    );
    assert!(p.wait_log("all 3 workers ready", Duration::from_secs(20)));
    // Worker 0 takes the first connection of an idle pool; block it for 4 s.
    let mut first = Conn::open(p.port).expect("connect");
    let r = first.get("/").expect("GET /");
    let blocked_pid = r.header("x-pid").expect("x-pid").to_string();
    first.send_get("/block?ms=4000").expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = Conn::open(p.port).expect("connect");
        let r = c.get("/").expect("GET / while worker 0 is blocked");
        assert_ne!(
            r.header("x-pid"),
            Some(blocked_pid.as_str()),
            "a blocked worker does not keep up: new connections pass it"
        );
        held.push(c);
    }
    assert_eq!(first.read_response().expect("the block ends").status, 200);
}

/// Sends SIGCONT to a stopped process when dropped, on every path.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

#[test]
fn connections_queued_behind_a_deferred_one_are_all_accepted() {
    // Worker 0 stopped looks idle, so worker 1 leaves each new connection to it and takes one back
    // after 5 ms. A burst queues several at once, with one readiness event for all of them: the
    // ones behind the one taken back must be accepted too, not left until the next connection.
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2", "--accept", "packed"],
        &[],
    );
    assert!(p.wait_log("all 2 workers ready", Duration::from_secs(20)));
    let mut first = Conn::open(p.port).expect("connect");
    let r = first.get("/").expect("GET / on an idle pool");
    let stopped = r.header("x-pid").expect("x-pid").to_string();
    drop(first);
    let pid: i32 = stopped.parse().expect("pid");
    let _resume = Resume(pid);
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &stopped])
            .status()
            .expect("kill")
            .success()
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut burst: Vec<Conn> = (0..8)
        .map(|_| Conn::open(p.port).expect("connect"))
        .collect();
    for c in &mut burst {
        c.send_get("/").expect("send");
    }
    for (i, c) in burst.iter_mut().enumerate() {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("connection {i} of the burst got no answer: {e}"));
        assert_eq!(r.status, 200);
        assert_ne!(r.header("x-pid"), Some(stopped.as_str()));
    }
}
