//! `/metrics` from the master (`--metrics-bind`), against the real binaries: exact per-worker counts
//! of known requests, exits by cause, the listen-queue gauge, and a stalled scraper that cannot stall
//! supervision.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Conn, Proc, example_bin, free_port, get, health_identity, hyperfork_bin, wait_until};

/// The samples of a scrape: `name{labels}` → value.
#[derive(Debug, Default, Clone)]
struct Samples(BTreeMap<String, f64>);

impl Samples {
    /// The value of `name` with exactly `labels` (in the order the page writes them).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = key(name, labels);
        self.0.get(&key).copied().unwrap_or(f64::NAN)
    }

    /// The sum of every sample of `name` whose labels include `with`.
    fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.split('{').next() == Some(name)
                    && with
                        .iter()
                        .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// One scrape of `http://127.0.0.1:PORT/metrics`.
fn scrape(port: u16) -> Samples {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the scrape");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("text/plain; version=0.0.4"),
        "Prometheus content type: {head}"
    );
    let mut out = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (k, v) = line.rsplit_once(' ').expect("name value");
        let v = match v {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number in {line:?}")),
        };
        out.insert(k.to_string(), v);
    }
    Samples(out)
}

/// Starts `bin` with a metrics port; returns the server and that port.
fn start(bin: &std::path::PathBuf, args: &[&str]) -> (Proc, u16) {
    let metrics = free_port();
    let bind = format!("127.0.0.1:{metrics}");
    let mut all = vec!["--metrics-bind", bind.as_str()];
    all.extend_from_slice(args);
    let p = Proc::serve(bin, &all, &[]);
    (p, metrics)
}

/// Sends raw bytes on `conn` and reads one response.
fn send(conn: &mut Conn, raw: &str) -> common::Response {
    conn.reader_mut().write_all(raw.as_bytes()).unwrap();
    conn.read_response().expect("a response")
}

#[test]
fn metrics_count_every_response_exactly_per_worker() {
    let (p, m) = start(
        &example_bin("faults"),
        &["--workers", "2", "--limit-request-body", "100"],
    );
    // The one request `serve` made counts; wait for it so the baseline is settled.
    assert!(
        wait_until(Duration::from_secs(10), || {
            scrape(m).sum("hyperfork_requests_total", &[]) == 1.0
        }),
        "the start-up request is counted"
    );
    let before = scrape(m);

    // Per worker: [1xx, 2xx, 3xx, 4xx, 5xx], rejections, panics.
    let mut expected: BTreeMap<String, ([u64; 5], u64, u64)> = BTreeMap::new();
    for _ in 0..6 {
        let mut c = Conn::open(p.port).unwrap();
        let first = c.get("/health").unwrap();
        let w = first.header("x-worker").expect("x-worker").to_string();
        let e = expected.entry(w.clone()).or_default();
        e.0[1] += 1;
        for _ in 0..3 {
            assert_eq!(c.get("/nope").unwrap().status, 404);
            e.0[3] += 1;
        }
        let r = send(
            &mut c,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        );
        assert_eq!(r.status, 405);
        e.0[3] += 1;
        assert_eq!(c.get("/panic").unwrap().status, 500);
        e.0[4] += 1;
        e.2 += 1;
        // Answered by hyperfork (413) and the connection closes after it: last on this one.
        let r = send(
            &mut c,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        );
        assert_eq!(r.status, 413);
        e.0[3] += 1;
        e.1 += 1;
    }
    let sent: u64 = expected.values().map(|e| e.0.iter().sum::<u64>()).sum();
    assert_eq!(sent, 6 * 7);

    let mut after = Samples::default();
    let settled = wait_until(Duration::from_secs(10), || {
        after = scrape(m);
        after.sum("hyperfork_requests_total", &[]) - before.sum("hyperfork_requests_total", &[])
            >= sent as f64
    });
    assert!(settled, "every response is counted: {after:?}");
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    for w in ["0", "1"] {
        let (statuses, rejected, panics) = expected.get(w).copied().unwrap_or_default();
        for (i, class) in classes.iter().enumerate() {
            let labels = [("worker", w), ("class", *class)];
            let got = after.get("hyperfork_requests_total", &labels)
                - before.get("hyperfork_requests_total", &labels);
            assert_eq!(got, statuses[i] as f64, "worker {w} {class}");
        }
        let delta =
            |name: &str| after.get(name, &[("worker", w)]) - before.get(name, &[("worker", w)]);
        assert_eq!(
            delta("hyperfork_request_rejections_total"),
            rejected as f64,
            "worker {w} rejections"
        );
        assert_eq!(
            delta("hyperfork_handler_panics_total"),
            panics as f64,
            "worker {w} panics"
        );
        assert_eq!(
            delta("hyperfork_request_duration_seconds_count"),
            statuses.iter().sum::<u64>() as f64,
            "worker {w}: the histogram counts every response"
        );
        assert_eq!(
            after.get(
                "hyperfork_request_duration_seconds_bucket",
                &[("worker", w), ("le", "+Inf")]
            ),
            after.get("hyperfork_request_duration_seconds_count", &[("worker", w)]),
        );
        assert!(delta("hyperfork_received_bytes_total") > 0.0 || !expected.contains_key(w));
    }
    assert_eq!(
        after.sum("hyperfork_requests_total", &[]) - before.sum("hyperfork_requests_total", &[]),
        sent as f64,
        "in total"
    );
    assert_eq!(after.get("hyperfork_pool_size", &[]), 2.0);
    assert_eq!(after.get("hyperfork_workers", &[("state", "ready")]), 2.0);
    assert_eq!(
        after.get(
            "hyperfork_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    drop(p);
}

#[test]
fn a_killed_worker_is_an_exit_by_signal_and_its_slot_keeps_its_counts() {
    // Balanced accept: packed (the default) keeps one client's requests on worker 0 when it keeps up.
    let (p, m) = start(
        &hyperfork_bin(),
        &["--workers", "2", "--accept", "balanced"],
    );
    // Find slot 1's pid.
    let mut pid1 = None;
    for _ in 0..50 {
        let r = get(p.port, "/health").unwrap();
        let (slot, pid) = health_identity(&r);
        if slot == 1 {
            pid1 = Some(pid as i32);
            break;
        }
    }
    let pid1 = pid1.expect("slot 1 answered");
    let served = |s: &Samples| s.sum("hyperfork_requests_total", &[("worker", "1")]);
    assert!(wait_until(Duration::from_secs(10), || served(&scrape(m)) >= 1.0));
    let before = scrape(m);
    assert_eq!(
        before.get(
            "hyperfork_worker_exits_total",
            &[("worker", "1"), ("cause", "signal")]
        ),
        0.0
    );
    // SAFETY: kill(2) on a worker of the master this test started.
    unsafe { libc::kill(pid1, libc::SIGKILL) };
    let mut after = Samples::default();
    assert!(
        wait_until(Duration::from_secs(20), || {
            after = scrape(m);
            after.get("hyperfork_workers", &[("state", "ready")]) == 2.0
                && after.get(
                    "hyperfork_worker_exits_total",
                    &[("worker", "1"), ("cause", "signal")],
                ) == 1.0
        }),
        "the exit is counted under `signal` and the slot refilled: {after:?}"
    );
    assert_eq!(
        after.get("hyperfork_worker_spawns_total", &[("worker", "1")]),
        2.0
    );
    assert_eq!(
        after.sum("hyperfork_worker_exits_total", &[("worker", "0")]),
        0.0
    );
    assert!(
        served(&after) >= served(&before),
        "a slot's counters never go backwards when its worker is replaced"
    );
}

#[test]
fn a_max_requests_recycle_is_an_exit_for_max_requests() {
    let (p, m) = start(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "--max-requests",
            "3",
            "--max-requests-jitter",
            "0",
        ],
    );
    for _ in 0..6 {
        let _ = get(p.port, "/");
    }
    let mut s = Samples::default();
    assert!(
        wait_until(Duration::from_secs(20), || {
            s = scrape(m);
            s.get(
                "hyperfork_worker_exits_total",
                &[("worker", "0"), ("cause", "max_requests")],
            ) >= 1.0
        }),
        "a recycle counts as max_requests: {s:?}"
    );
    assert_eq!(
        s.get(
            "hyperfork_worker_exits_total",
            &[("worker", "0"), ("cause", "signal")]
        ),
        0.0
    );
    assert_eq!(
        s.get(
            "hyperfork_worker_exits_total",
            &[("worker", "0"), ("cause", "crash")]
        ),
        0.0
    );
}

#[test]
fn the_listen_queue_rises_while_every_worker_is_blocked() {
    let (p, m) = start(
        &example_bin("faults"),
        &["--workers", "1", "--timeout", "0"],
    );
    let listener = format!("127.0.0.1:{}", p.port);
    let queued = |s: &Samples| s.get("hyperfork_listen_queue", &[("listener", &listener)]);
    assert_eq!(queued(&scrape(m)), 0.0);
    assert!(scrape(m).get("hyperfork_listen_queue_limit", &[("listener", &listener)]) > 0.0);
    let mut blocker = Conn::open(p.port).unwrap();
    blocker.send_get("/block?ms=6000").unwrap();
    // Let the worker take the blocking request, then queue connections nobody accepts.
    std::thread::sleep(Duration::from_millis(500));
    let waiting: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", p.port)).unwrap())
        .collect();
    let mut s = Samples::default();
    assert!(
        wait_until(Duration::from_secs(4), || {
            s = scrape(m);
            queued(&s) >= 3.0
        }),
        "3 connections wait in the queue while the only worker is blocked: {}",
        queued(&s)
    );
    assert_eq!(blocker.read_response().unwrap().status, 200);
    assert!(
        wait_until(Duration::from_secs(10), || queued(&scrape(m)) == 0.0),
        "the queue drains once the worker runs again"
    );
    drop(waiting);
}

#[test]
fn a_stalled_scraper_never_stalls_supervision() {
    let (p, m) = start(&hyperfork_bin(), &["--workers", "1"]);
    // Connect and send nothing: the master serves one scrape at a time, so this one holds the slot.
    let stalled = TcpStream::connect(("127.0.0.1", m)).unwrap();
    let (_, pid) = health_identity(&get(p.port, "/health").unwrap());
    // SAFETY: kill(2) on the worker of the master this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(10), || {
            get(p.port, "/health").is_ok_and(|r| health_identity(&r).1 != pid)
        }),
        "the master replaced the worker while a scraper stalled"
    );
    // The stalled scrape is dropped at its deadline; the next one is answered.
    let s = scrape(m);
    assert_eq!(
        s.get(
            "hyperfork_worker_exits_total",
            &[("worker", "0"), ("cause", "signal")]
        ),
        1.0
    );
    drop(stalled);
}

#[test]
fn other_paths_and_methods_are_refused_on_the_metrics_port() {
    let (_p, m) = start(&hyperfork_bin(), &["--workers", "1"]);
    let ask = |req: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", m)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(ask("GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(ask("POST /status.json HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9_000));
    assert!(ask(&huge).starts_with("HTTP/1.1 431"));
}

#[test]
fn a_bad_metrics_address_is_a_usage_error() {
    let out = common::command(&hyperfork_bin())
        .args(["--metrics-bind", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-bind") && err.contains("nowhere"),
        "{err}"
    );
}

#[test]
fn job_runs_and_failures_are_counted_by_the_master() {
    let metrics = free_port();
    let bind = format!("127.0.0.1:{metrics}");
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2", "--metrics-bind", bind.as_str()],
        &[("HYPERFORK_FAULT", "job-panic")],
    );
    let mut s = Samples::default();
    let job = [("job", "flaky")];
    assert!(
        wait_until(Duration::from_secs(20), || {
            s = scrape(metrics);
            s.get("hyperfork_job_runs_total", &job) >= 3.0
                && s.get("hyperfork_job_failures_total", &job) >= 1.0
        }),
        "runs and failures of the flaky job: {s:?}"
    );
    let (runs, failures) = (
        s.get("hyperfork_job_runs_total", &job),
        s.get("hyperfork_job_failures_total", &job),
    );
    assert!(failures < runs, "it panics on every other run only");
    assert!(s.get("hyperfork_job_last_duration_seconds", &job) >= 0.0);
    assert_eq!(
        s.get("hyperfork_scheduler_holder", &[("worker", "0")]),
        1.0,
        "slot 0 runs the jobs"
    );
    assert!(
        s.get("hyperfork_scheduler_holder", &[("worker", "1")])
            .is_nan()
    );
    drop(p);
}
