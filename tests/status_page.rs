//! The status page (`/`, `/status`) and its JSON (`/status.json`) on `--metrics-bind`, against the
//! faults example: a draining worker during a reload, a worker killed by a signal (its cause and
//! time), a job's last run and next tick, the sampled rates and percentiles, the page without
//! JavaScript (plain GET) and in a real headless browser (Debian's `chromium`), whose screenshot is
//! kept as `$CARGO_TARGET_TMPDIR/status-page.png`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pg::run_within;
use common::{Proc, example_bin, free_port, wait_until};
use serde_json::Value;

/// `GET path` on the metrics port: status line, headers and body.
fn http(port: u16, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// `/status.json`, parsed.
fn status(port: u16) -> Value {
    let (head, body) = http(port, "GET", "/status.json");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/json"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The faults example with a metrics port and a 1 s job (`flaky`, failing every other run).
fn start(workers: &str) -> (Proc, u16) {
    let metrics = free_port();
    let bind = format!("127.0.0.1:{metrics}");
    let p = Proc::serve(
        &example_bin("faults"),
        &[
            "--workers",
            workers,
            "--metrics-bind",
            &bind,
            "--graceful-timeout",
            "60",
        ],
        &[("HYPERFORK_FAULT", "job-panic")],
    );
    (p, metrics)
}

fn workers(s: &Value) -> &Vec<Value> {
    s["workers"].as_array().expect("workers")
}

fn pid_of_slot(s: &Value, slot: u64) -> Option<i64> {
    workers(s)
        .iter()
        .find(|w| w["slot"] == slot && w["state"] == "ready")
        .and_then(|w| w["pid"].as_i64())
}

#[test]
fn the_json_shows_jobs_restarts_draining_and_latency() {
    let (p, m) = start("2");

    // A job run: its last run, outcome, duration and next tick.
    assert!(
        wait_until(Duration::from_secs(30), || {
            status(m)["jobs"][0]["runs"].as_u64().unwrap_or(0) >= 2
                && !status(m)["jobs"][0]["last_duration_seconds"].is_null()
        }),
        "the 1 s job ran twice: {}",
        status(m)
    );
    let s = status(m);
    let job = &s["jobs"][0];
    assert_eq!(job["name"], "flaky");
    assert_eq!(job["schedule"], "every 1s");
    assert!(
        job["failures"].as_u64().unwrap() >= 1,
        "run 0 panics: {job}"
    );
    assert!(
        ["ok", "failed", "running"].contains(&job["last_outcome"].as_str().unwrap()),
        "{job}"
    );
    let (started, next) = (
        job["last_start"].as_f64().unwrap(),
        job["next_tick"].as_f64().unwrap(),
    );
    let at = s["now"].as_f64().unwrap();
    assert!(started <= at && started > at - 60.0, "{job}");
    assert!(
        next > at && next <= at + 1.5,
        "the next 1 s tick: {job}, now {at}"
    );
    assert!(job["last_duration_seconds"].as_f64().unwrap() >= 0.0);
    assert!(s["scheduler_holder"].as_i64().is_some(), "{s}");
    assert!(s["memory"]["total"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["pool_size"], 2);

    // Latency: 20 requests of at least 30 ms each (a slower machine only raises the figures).
    for _ in 0..20 {
        assert_eq!(common::get(p.port, "/sleep?ms=30").unwrap().status, 200);
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            status(m)["slots"].as_array().unwrap().iter().any(|sl| {
                sl["p50_seconds"].as_f64().is_some_and(|v| v >= 0.025)
                    && sl["p99_seconds"].as_f64() >= sl["p50_seconds"].as_f64()
                    && sl["rate_history"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|r| r.as_f64().unwrap() > 0.0)
            })
        }),
        "a slot's p50 is at least 25 ms (the bucket of 30 ms), its p99 no less: {}",
        status(m)["slots"]
    );

    // A restart: SIGKILL slot 1's worker; cause "signal", with its time.
    let before = now();
    let victim = pid_of_slot(&status(m), 1).expect("slot 1's worker");
    // SAFETY: kill(2) on a worker of the master this test started.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(30), || {
            pid_of_slot(&status(m), 1).is_some_and(|p| p != victim)
        }),
        "slot 1 is refilled: {}",
        status(m)
    );
    let s = status(m);
    let exit = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pid"] == victim)
        .unwrap_or_else(|| panic!("an exit event for pid {victim}: {}", s["events"]));
    assert_eq!(exit["kind"], "exit");
    assert_eq!(exit["cause"], "signal");
    assert_eq!(exit["slot"], 1);
    let t = exit["at"].as_f64().unwrap();
    assert!(t >= before - 1.0 && t <= now() + 1.0, "{exit}");
    assert!(
        s["exits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "signal" && c["count"] == 1),
        "{}",
        s["exits"]
    );
    assert!(
        s["slots"][1]["spawns"].as_u64().unwrap() >= 2,
        "{}",
        s["slots"]
    );
    assert_eq!(s["slots"][1]["exits"], 1);

    // A draining worker: a long request in flight during a reload.
    let mut long = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    long.write_all(b"GET /sleep?ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut busy = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            busy = workers(&status(m))
                .iter()
                .find(|w| w["in_flight"] == 1)
                .and_then(|w| w["pid"].as_i64());
            busy.is_some()
        }),
        "the long request is in flight: {}",
        status(m)
    );
    let busy = busy.unwrap();
    p.signal(libc::SIGHUP);
    // The old worker drains its request while the reload goes on (the surge room it holds keeps
    // the reload from completing before it exits).
    let mut seen = Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen = status(m);
            workers(&seen)
                .iter()
                .any(|w| w["pid"] == busy && w["state"] == "draining" && w["in_flight"] == 1)
        }),
        "pid {busy} drains its request: {seen}"
    );
    assert_eq!(seen["phase"], "reloading", "{seen}");
    drop(long);
    assert!(
        p.wait_log("reload complete", Duration::from_secs(60)),
        "{}",
        p.stderr()
    );
    let s = status(m);
    assert_eq!(
        workers(&s).iter().filter(|w| w["state"] == "ready").count(),
        2,
        "{s}"
    );
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "reload" && e["result"] == "completed"),
        "{}",
        s["events"]
    );
    assert!(
        s["reloads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "completed" && c["count"] == 1),
        "{}",
        s["reloads"]
    );
}

/// Debian's chromium (or another name for it on PATH).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && !path.is_empty() {
                return PathBuf::from(path);
            }
        }
    }
    panic!("chromium is not installed: apt-get install -y chromium (.ci/run installs it)");
}

/// Runs headless chromium on `url` with `args`; returns its stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url);
    let out = run_within(cmd, Duration::from_secs(120)).expect("chromium finishes");
    assert!(out.status.success(), "chromium failed: {}", out.text());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_page_shows_every_worker_with_and_without_javascript() {
    let (p, m) = start("3");
    for _ in 0..10 {
        common::get(p.port, "/").unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            status(m)["queue_history"].as_array().unwrap().len() >= 2
        }),
        "samples are taken"
    );
    let pids: Vec<i64> = workers(&status(m))
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);

    // Without JavaScript: the HTML itself is the snapshot.
    for path in ["/", "/status"] {
        let (head, body) = http(m, "GET", path);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/html"), "{head}");
        for pid in &pids {
            assert!(
                body.contains(&format!("data-pid=\"{pid}\"")),
                "worker {pid} in {path}: {body}"
            );
        }
        assert_eq!(body.matches("<tr class=\"worker ready\"").count(), 3);
        assert!(body.contains("<svg class=\"spark rate\""), "{body}");
        assert!(body.contains("<svg class=\"spark queue\""), "{body}");
        assert!(body.contains("<td>flaky</td>"), "{body}");
        assert!(body.contains("href=\"/status\""), "a refresh link");
        assert!(!body.contains("{{body}}"));
    }
    let (head, body) = http(m, "HEAD", "/status.json");
    assert!(
        head.starts_with("HTTP/1.1 200") && body.is_empty(),
        "{head}"
    );
    let (head, _) = http(m, "GET", "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // In a browser: the script polled /status.json and rendered the rows and charts.
    let url = format!("http://127.0.0.1:{m}/");
    let dom = browse(&url, &["--dump-dom"]);
    assert!(
        dom.contains("data-updates=\""),
        "the script updated the page: {dom}"
    );
    for pid in &pids {
        assert!(dom.contains(&format!("data-pid=\"{pid}\"")), "{pid}: {dom}");
    }
    assert_eq!(dom.matches("class=\"worker ready\"").count(), 3, "{dom}");
    assert!(dom.contains("<svg class=\"spark rate\""), "{dom}");
    assert!(dom.contains("<svg class=\"spark latency\""), "{dom}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
    eprintln!("status page screenshot: {}", shot.display());
}
