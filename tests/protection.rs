//! Worker health and protection, from outside, against `examples/faults.rs`: stuck workers, recycling,
//! back-pressure, hostile clients, handler panics, and a small HTTP fuzz.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;

fn faults(args: &[&str]) -> Proc {
    Proc::serve(&example_bin("faults"), args, &[])
}

/// What a raw exchange ended with.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// An HTTP status line arrived.
    Status(u16),
    /// The server closed the connection without an answer.
    Closed,
    /// Neither within the wait.
    Silent,
}

/// Sends `bytes` on a new connection (then half-closes if `finish`), and reads the first line back.
fn raw(port: u16, bytes: &[u8], finish: bool, wait: Duration) -> Outcome {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    if s.write_all(bytes).is_err() {
        return Outcome::Closed;
    }
    if finish {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return Outcome::Silent;
            }
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&got);
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
    {
        Some(code) => Outcome::Status(code),
        None => Outcome::Closed,
    }
}

/// The timestamp of the first log line containing `needle`.
fn logged_at(log: &str, needle: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let ts = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[test]
fn a_worker_with_a_blocked_runtime_is_replaced_while_the_others_serve() {
    let p = faults(&["--workers", "2", "--timeout", "2"]);
    let before = p.worker_pids();
    let port = p.port;
    // The blocking request: its worker stops answering anything for 10 s.
    let blocker = std::thread::spawn(move || {
        raw(
            port,
            b"GET /block?ms=10000 HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
            Duration::from_secs(15),
        )
    });
    assert!(p.wait_log("blocking the runtime", Duration::from_secs(10)));
    let mut answered = 0;
    while !p.stderr().contains("silent for") {
        let r = get(port, "/health").expect("another worker answers meanwhile");
        assert_eq!(r.status, 200);
        answered += 1;
        assert!(answered < 2000, "never detected:\n{}", p.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered > 0);
    let log = p.stderr();
    let stuck: i32 = log
        .split("blocking the runtime")
        .next()
        .and_then(|head| head.rsplit("pid ").next())
        .and_then(|rest| rest.split(']').next())
        .and_then(|pid| pid.parse().ok())
        .expect("the blocked worker's pid");
    assert!(before.contains(&stuck));
    assert!(wait_until(Duration::from_secs(10), || !alive(stuck)));
    assert!(wait_until(Duration::from_secs(10), || {
        let now = p.worker_pids();
        now.len() == 2 && !now.contains(&stuck)
    }));
    // Measured by the processes' own clocks: from the block to the replacement's boot.
    let log = p.stderr();
    let blocked = logged_at(&log, "blocking the runtime").unwrap();
    let silent_line = log.lines().find(|l| l.contains("silent for")).unwrap();
    let replaced = logged_at(&log[log.find(silent_line).unwrap()..], "booting worker").unwrap();
    let took = replaced - blocked;
    assert!(
        took < chrono::Duration::seconds(4),
        "replaced {took} after the block:\n{log}"
    );
    assert_eq!(get(port, "/health").unwrap().status, 200);
    assert_eq!(blocker.join().unwrap(), Outcome::Closed);
}

#[test]
fn max_requests_recycles_every_worker_without_a_failed_request() {
    let p = faults(&[
        "--workers",
        "2",
        "--max-requests",
        "50",
        "--max-requests-jitter",
        "10",
    ]);
    let load = Load::start(p.port, 16);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let log = p.stderr();
            log.contains("worker 0 recycled")
                && log.contains("worker 1 recycled")
                && load.ok_count() >= 1000
        }),
        "{}",
        p.stderr()
    );
    let log = p.stderr();
    load.finish_clean(999, &log);
    for slot in 0..2 {
        assert!(
            log.contains(&format!("worker {slot} recycled")),
            "slot {slot} never recycled:\n{log}"
        );
    }
}

#[test]
fn a_worker_past_the_memory_limit_is_recycled_without_failing_other_clients() {
    let p = faults(&["--workers", "2", "--max-worker-memory", "64MiB"]);
    let load = Load::start(p.port, 8);
    let r = get(p.port, "/alloc?mb=128").unwrap();
    assert_eq!(r.status, 200);
    let fat: i32 = r.header("x-pid").unwrap().parse().unwrap();
    assert!(
        p.wait_log(&format!("(pid {fat}) uses"), Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    assert!(wait_until(Duration::from_secs(30), || !alive(fat)));
    std::thread::sleep(Duration::from_millis(300));
    load.finish_clean(0, &p.stderr());
    assert!(p.stderr().contains("recycled"));
}

#[test]
fn limit_concurrency_answers_503_with_retry_after_beyond_the_limit() {
    let p = faults(&["--workers", "1", "--limit-concurrency", "4"]);
    let port = p.port;
    let (ok, busy, retry) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (ok, busy, retry) = (ok.clone(), busy.clone(), retry.clone());
            std::thread::spawn(move || {
                let r = get(port, "/sleep?ms=500").expect("no connection error");
                match r.status {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    503 => {
                        if r.header("retry-after") == Some("1") {
                            retry.fetch_add(1, Ordering::Relaxed);
                        }
                        busy.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("status {other}"),
                };
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (ok, busy) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed));
    assert_eq!(ok + busy, 32);
    assert!(ok >= 4, "{ok} served");
    assert!(busy >= 1, "no 503");
    assert_eq!(
        retry.load(Ordering::Relaxed),
        busy,
        "503 without Retry-After"
    );
}

#[test]
fn a_panicking_handler_costs_one_500_and_the_worker_lives_on() {
    let p = faults(&["--workers", "1"]);
    let mut c = Conn::open(p.port).unwrap();
    let (_, pid) = health_identity(&c.get("/health").unwrap());
    assert_eq!(c.get("/panic").unwrap().status, 500);
    let r = c.get("/health").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(health_identity(&r).1, pid, "another worker answered");
    // The line may still be on its way through the stderr pipe.
    assert!(
        p.wait_log("handler for GET /panic panicked", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
}

#[test]
fn malformed_and_oversized_requests_get_their_status_and_the_server_stays_healthy() {
    let p = faults(&["--workers", "1", "--limit-request-body", "1KiB"]);
    let before = p.worker_pids();
    let port = p.port;
    let wait = Duration::from_secs(10);
    let body = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n{}",
        "x".repeat(2048)
    );
    assert_eq!(
        raw(port, body.as_bytes(), false, wait),
        Outcome::Status(413)
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n");
    assert_eq!(
        raw(port, many.as_bytes(), false, wait),
        Outcome::Status(431)
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    assert_eq!(
        raw(port, huge.as_bytes(), false, wait),
        Outcome::Status(431)
    );
    assert_eq!(
        raw(port, b"GARBAGE\r\n\r\n", false, wait),
        Outcome::Status(400)
    );
    assert_eq!(
        raw(port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", false, wait),
        Outcome::Status(400)
    );
    assert_eq!(get(port, "/health").unwrap().status, 200);
    assert_eq!(p.worker_pids(), before);
}

#[test]
fn a_slowloris_header_is_cut_at_the_header_timeout_not_the_keep_alive_one() {
    // The keep-alive timeout is long (the seed unit's 65 s); the header timeout closes the trickle.
    let p = faults(&[
        "--workers",
        "1",
        "--timeout-keep-alive",
        "65",
        "--timeout-request-header",
        "2",
    ]);
    let port = p.port;
    let trickle = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let outcome = raw(
            port,
            b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: a",
            false,
            Duration::from_secs(30),
        );
        (outcome, started.elapsed())
    });
    // Others are served meanwhile.
    for _ in 0..5 {
        assert_eq!(get(port, "/health").unwrap().status, 200);
    }
    let (outcome, lasted) = trickle.join().unwrap();
    assert_eq!(outcome, Outcome::Closed);
    // Closed by the deadline, not at once (a lower bound only: a slow machine takes longer).
    assert!(
        lasted >= Duration::from_millis(1500),
        "closed after {lasted:?}"
    );
    // An idle keep-alive connection is not cut by the header timeout.
    let mut c = Conn::open(port).unwrap();
    assert_eq!(c.get("/health").unwrap().status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.get("/health").unwrap().status, 200);
}

/// A tiny deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn fuzzed_requests_are_answered_or_closed_and_no_worker_dies() {
    let p = faults(&["--workers", "2", "--timeout-request-header", "2"]);
    let before = p.worker_pids();
    let valid: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /sleep?ms=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /health HTTP/1.0\r\n\r\n",
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for i in 0..300 {
        let mut bytes = valid[rng.below(valid.len())].to_vec();
        match rng.below(4) {
            // Random bytes.
            0 => {
                let n = 1 + rng.below(200);
                bytes = (0..n).map(|_| rng.next() as u8).collect();
            }
            // Flip a few bytes.
            1 => {
                for _ in 0..1 + rng.below(5) {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.next() as u8;
                }
            }
            // Cut it short.
            2 => bytes.truncate(rng.below(bytes.len())),
            // Duplicate a slice in the middle.
            _ => {
                let at = rng.below(bytes.len());
                let len = rng.below(bytes.len() - at) + 1;
                let piece = bytes[at..at + len].to_vec();
                bytes.splice(at..at, piece);
            }
        }
        let outcome = raw(p.port, &bytes, true, Duration::from_secs(10));
        assert_ne!(
            outcome,
            Outcome::Silent,
            "case {i}: no answer and no close for {:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    assert_eq!(p.worker_pids(), before, "{}", p.stderr());
    assert!(!p.stderr().contains("panic"), "{}", p.stderr());
}
