//! A drain load balancers see (`--shutdown-delay`, `--readiness-path`): after `SIGTERM` the pool
//! keeps serving, on kept-alive and on new connections, over HTTP/1.1 and HTTP/2, while the readiness
//! path answers 503 and the app's liveness route stays 200; then the normal drain. Without a delay,
//! `SIGTERM` stops accepting at once, as before. A second `SIGTERM` skips the rest of the delay,
//! `SIGINT` stops fast.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The status of `GET path` over HTTP/2 (prior knowledge) with curl; `None` without curl.
fn h2_status(port: u16, path: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--max-time",
            "10",
            "--http2-prior-knowledge",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The master's process title.
fn title(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .to_string()
        })
        .unwrap_or_default()
}

#[test]
fn the_delay_keeps_serving_while_readiness_answers_503_then_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hf.ctl");
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "2",
            "--shutdown-delay",
            "5s",
            "--graceful-timeout",
            "5s",
            "--readiness-path",
            "/ready",
            "--timeout-keep-alive",
            "30",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    let port = p.port;
    // Before SIGTERM: ready, on a new connection and on a kept-alive one, over both protocols.
    assert_eq!(get(port, "/ready").unwrap().status, 200);
    let mut checker = Conn::open(port).unwrap();
    let r = checker.get("/ready").unwrap();
    assert_eq!((r.status, r.header("connection")), (200, None), "{r:?}");
    if let Some(h2) = h2_status(port, "/ready") {
        assert_eq!(h2, "2 200");
    }
    let mut traffic = Conn::open(port).unwrap();
    assert_eq!(traffic.get("/").unwrap().status, 200);

    p.signal(libc::SIGTERM);
    let signalled = Instant::now();
    assert!(
        p.wait_log(
            "SIGTERM: draining in 5s, then waiting up to 5s for in-flight requests; still \
             serving meanwhile, /ready answers 503",
            Duration::from_secs(10)
        ),
        "{}",
        p.stderr()
    );

    // During the delay: the health checker's kept-alive connection sees 503 on its next request.
    let r = checker.get("/ready").unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // So does a new connection, and HTTP/2.
    assert_eq!(get(port, "/ready").unwrap().status, 503);
    if let Some(h2) = h2_status(port, "/ready") {
        assert_eq!(h2, "2 503");
    }
    // Liveness (the app's own health route) stays 200.
    assert_eq!(get(port, "/health").unwrap().status, 200);
    // Traffic keeps flowing: the kept-alive connection is reused, new connections are accepted.
    for _ in 0..5 {
        let r = traffic.get("/").unwrap();
        assert_eq!((r.status, r.header("connection")), (200, None), "{r:?}");
        let r = get(port, "/").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "Hello, world!");
    }
    // What the master shows of itself.
    let t = title(p.pid());
    assert!(t.contains("stopping in "), "{t}");
    let status = command(&hyperfork_bin())
        .args(["ctl", "status", "--json", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let phase = status["phase"].as_str().unwrap_or_default().to_string();
    assert!(phase.starts_with("stopping in "), "{status}");
    // Everything above happened within the delay: the master was still serving.
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "the master exited within the delay:\n{}",
        p.stderr()
    );

    // Then the normal drain, and a clean exit well within delay + graceful timeout.
    let status = p
        .wait_exit(Duration::from_secs(5 + 5 + 30))
        .expect("the master exits after the delay and the drain");
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    assert!(
        signalled.elapsed() >= Duration::from_secs(4),
        "{}",
        p.stderr()
    );
    let log = p.stderr();
    assert!(
        log.contains("shutdown delay (5s) over: graceful shutdown, waiting up to 5s"),
        "{log}"
    );
    assert!(log.contains("all workers exited; shutting down"), "{log}");
}

#[test]
fn without_a_delay_sigterm_stops_accepting_at_once_and_readiness_answers_503_in_the_drain() {
    let mut p = Proc::serve(
        &example_bin("faults"),
        &[
            "--workers",
            "1",
            "--readiness-path",
            "/ready",
            "--timeout-keep-alive",
            "30",
        ],
        &[],
    );
    let port = p.port;
    // A request in flight keeps the worker draining for a few seconds.
    let mut busy = Conn::open(port).unwrap();
    assert_eq!(busy.get("/").unwrap().status, 200);
    let mut checker = Conn::open(port).unwrap();
    assert_eq!(checker.get("/ready").unwrap().status, 200);
    busy.send_get("/sleep?ms=4000").unwrap();
    std::thread::sleep(Duration::from_millis(300));

    p.signal(libc::SIGTERM);
    // The pool is marked draining before the workers are told to stop: a connection still open
    // hears 503 from its readiness check.
    let r = checker.get("/ready").unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        p.wait_log("open connection(s)", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
    // The worker no longer accepts: a new connection waits in the kernel's queue, unanswered, until
    // the master exits and the socket closes.
    let mut late = Conn::open(port).unwrap();
    let answer = late.get("/");
    assert!(
        answer.is_err(),
        "a connection made after SIGTERM was served: {answer:?}\n{}",
        p.stderr()
    );
    let r = busy.read_response().expect("the in-flight request ends");
    assert_eq!(r.status, 200);
    let status = p.wait_exit(Duration::from_secs(30)).expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    let log = p.stderr();
    assert!(!log.contains("draining in"), "{log}");
    assert!(log.contains("SIGTERM: graceful shutdown"), "{log}");
}

#[test]
fn a_second_sigterm_during_the_delay_starts_the_drain_at_once() {
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "2",
            "--shutdown-delay",
            "60s",
            "--readiness-path",
            "/ready",
        ],
        &[],
    );
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_log("SIGTERM: draining in 1m", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
    assert_eq!(get(p.port, "/ready").unwrap().status, 503);
    assert_eq!(get(p.port, "/").unwrap().status, 200);
    p.signal(libc::SIGTERM);
    let status = p
        .wait_exit(Duration::from_secs(20))
        .expect("the second SIGTERM drains without waiting out the delay");
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("SIGTERM again: skipping the rest of the shutdown delay: graceful shutdown"),
        "{}",
        p.stderr()
    );
}

#[test]
fn sigint_during_the_delay_is_a_fast_shutdown() {
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--shutdown-delay", "60s"],
        &[],
    );
    p.signal(libc::SIGTERM);
    assert!(
        p.wait_log(
            "still serving meanwhile, no --readiness-path",
            Duration::from_secs(10)
        ),
        "{}",
        p.stderr()
    );
    p.signal(libc::SIGINT);
    let status = p.wait_exit(Duration::from_secs(20)).expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
    assert!(p.stderr().contains("fast shutdown"), "{}", p.stderr());
}

#[test]
fn a_readiness_path_that_is_not_a_path_is_a_usage_error() {
    let out = command(&hyperfork_bin())
        .args(["--readiness-path", "ready"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end(),
        "hyperfork: --readiness-path: expected a request path starting with / (no query, no \
         spaces), such as /ready, got \"ready\"",
    );
}
