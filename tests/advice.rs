//! Live tuning advice, seen from outside: each rule driven into its state by `examples/faults.rs`
//! (blocking handlers, CPU-bound handlers, allocations in a memory-limited cgroup, 503s from
//! `--limit-concurrency`), read back from `ctl status --json`; and the same advice on the status
//! page and in `hyperfork plan` while a master runs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::cgroup::MemCgroup;
use common::*;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// A master of `examples/faults.rs` with its own control socket.
struct Server {
    p: Proc,
    socket: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ctl.sock").to_str().unwrap().to_string();
        let mut all = vec!["--control-socket", &socket];
        all.extend_from_slice(args);
        let p = Proc::serve(&example_bin("faults"), &all, &[]);
        Server {
            p,
            socket,
            _dir: dir,
        }
    }

    /// `ctl status --json`.
    fn status(&self) -> Value {
        status_at(&self.socket)
    }

    /// Polls `ctl status` (up to `limit`) until an advice line contains `needle`; panics with the
    /// last status otherwise.
    fn wait_advice(&self, needle: &str, limit: Duration) -> String {
        let mut last = Value::Null;
        let mut found = None;
        wait_until(limit, || {
            last = self.status();
            found = advice(&last).into_iter().find(|a| a.contains(needle));
            found.is_some()
        });
        let a =
            found.unwrap_or_else(|| panic!("no advice with {needle:?} within {limit:?}: {last}"));
        eprintln!("advice: {a}");
        a
    }
}

fn status_at(socket: &str) -> Value {
    let out = command(&example_bin("faults"))
        .args(["ctl", "status", "--json", "--control-socket", socket])
        .output()
        .expect("run ctl status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

fn advice(status: &Value) -> Vec<String> {
    status["advice"]
        .as_array()
        .unwrap_or_else(|| panic!("no advice array: {status}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The usable cores, as hyperfork counts them (`plan --json`).
fn cores() -> u64 {
    let out = command(&example_bin("faults"))
        .args(["plan", "--json"])
        .output()
        .expect("run plan");
    let plan: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    plan["cores"]["count"].as_u64().expect("cores.count")
}

/// The number right after `before` in `text`.
fn number_after(text: &str, before: &str) -> f64 {
    let rest = &text[text
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {text:?}"))
        + before.len()..];
    let n: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    n.parse()
        .unwrap_or_else(|_| panic!("no number after {before:?} in {text:?}"))
}

/// `clients` threads each sending `path` on a new connection, back to back, until stopped;
/// counts the answers by status.
struct Clients {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    unavailable: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Clients {
    fn start(port: u16, path: &str, clients: usize, each: Option<usize>) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, unavailable) = (stop.clone(), ok.clone(), unavailable.clone());
                let path = path.to_string();
                std::thread::spawn(move || {
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) && each.is_none_or(|n| sent < n) {
                        sent += 1;
                        match get(port, &path) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) if r.status == 503 => {
                                unavailable.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
            })
            .collect();
        Clients {
            stop,
            ok,
            unavailable,
            threads,
        }
    }

    /// Stops (after the requests in progress) and returns (200s, 503s).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for every client to send its requests and returns (200s, 503s).
    fn join(self) -> (u64, u64) {
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.unavailable.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn blocking_handlers_are_told_to_add_workers_or_threads() {
    let cores = cores();
    let s = Server::start(&["--workers", "2", "--threads", "1"]);
    // Each request blocks its worker's only thread: while it does, nothing is accepted, and the
    // clients waiting for their next connection queue in the kernel.
    let load = Clients::start(s.p.port, "/block?ms=300", 12, None);
    let a = s.wait_advice("workers block", Duration::from_secs(60));
    let (ok, _) = load.finish();
    assert!(ok > 0, "no request answered");
    assert!(a.starts_with("CPU at "), "{a}");
    let cpu = number_after(&a, "CPU at ");
    assert!(cpu <= 50.0, "{a}");
    let cores_words = if cores == 1 {
        "1 core".to_string()
    } else {
        format!("{cores} cores")
    };
    assert!(
        a.contains(&format!("% of {cores_words} while the accept queue ")),
        "{a}"
    );
    let queued = if a.contains("grew from 0 to ") {
        number_after(&a, "grew from 0 to ")
    } else {
        number_after(&a, "stayed above 0 (")
    };
    assert!(queued > 0.0, "{a}");
    let busy = number_after(&a[a.rfind(" (").unwrap()..], " (");
    assert!((0.0..=2.0).contains(&busy), "{a}");
    assert!(
        a.ends_with(
            " of 2 workers with requests in flight): workers block; try more workers or --threads"
        ),
        "{a}"
    );
}

#[test]
fn cpu_bound_handlers_are_told_more_workers_will_not_help() {
    let cores = cores();
    // Three busy workers a core, so the pool gets the cores even beside other work on the host;
    // 50 ms of work a request keeps the clients' own CPU small.
    let workers = (3 * cores).to_string();
    let s = Server::start(&["--workers", &workers, "--threads", "1"]);
    let load = Clients::start(s.p.port, "/work?us=50000", 8 * cores as usize, None);
    let a = s.wait_advice("CPU-bound", Duration::from_secs(90));
    let (ok, _) = load.finish();
    assert!(ok > 0, "no request answered");
    let cores_words = if cores == 1 {
        "all 1 core busy".to_string()
    } else {
        format!("all {cores} cores busy")
    };
    assert!(a.starts_with(&format!("{cores_words} (CPU ")), "{a}");
    let cpu = number_after(&a, "(CPU ");
    let all = number_after(&a, " % of ");
    assert_eq!(all, (cores * 100) as f64, "{a}");
    assert!(cpu >= 0.8 * all, "{a}");
    assert!(a.contains(" %) and the accept queue "), "{a}");
    assert!(
        a.ends_with(": the host is CPU-bound, more workers will not help"),
        "{a}"
    );
}

#[test]
fn a_pool_near_its_memory_budget_is_told_to_shrink() {
    // 256 MiB minus a 64 MiB reserve: 192 MiB for the pool, advice from 90 % of it (172.8 MiB), the
    // kernel's limit well above that.
    let cg = MemCgroup::create("advice", 256 * MIB);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock").to_str().unwrap().to_string();
    let cmd = cg.wrap(
        &example_bin("faults"),
        &[
            "--port",
            &port.to_string(),
            "--workers",
            "2",
            "--memory-reserve",
            "64MiB",
            "--control-socket",
            &socket,
        ],
    );
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    let mut found = None;
    let mut last = Value::Null;
    // 8 MiB at a time, into whichever worker accepts, until the advice appears; never past the
    // budget (the cgroup's own limit is 64 MiB further).
    for _ in 0..40 {
        last = status_at(&socket);
        found = advice(&last).into_iter().find(|a| a.starts_with("memory:"));
        if found.is_some() {
            break;
        }
        let total = last["memory"]["total"].as_u64().unwrap_or(0);
        if total < 188 * MIB {
            let r = get(port, "/alloc?mb=8").expect("alloc");
            assert_eq!(r.status, 200, "{}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let a = found.unwrap_or_else(|| panic!("no memory advice: {last}\n{}", p.stderr()));
    eprintln!("advice: {a}");
    // Under 1 GiB, the figure is in MiB.
    let used = number_after(&a, "memory: 2 workers use ");
    assert!((172.0..=256.0).contains(&used), "{a}");
    assert!(
        a.ends_with(
            " of the 256 MiB the cgroup allows minus 64 MiB reserve: fewer workers or a lower \
             --max-worker-memory"
        ),
        "{a}"
    );
    drop(p);
}

#[test]
fn refused_requests_are_counted_against_limit_concurrency() {
    let s = Server::start(&["--workers", "1", "--limit-concurrency", "1"]);
    // 4 clients, 5 requests each, on a worker that serves one at a time.
    let load = Clients::start(s.p.port, "/sleep?ms=200", 4, Some(5));
    let (ok, refused) = load.join();
    assert!(ok > 0 && refused > 0, "{ok} answered, {refused} refused");
    let noun = if refused == 1 { "request" } else { "requests" };
    let want = format!("{refused} {noun} answered 503 by --limit-concurrency 1 in the last ");
    let a = s.wait_advice(&want, Duration::from_secs(30));
    assert!(
        a.ends_with(" s: raise it, or add workers if the CPU allows"),
        "{a}"
    );
}

#[test]
fn the_status_page_and_plan_show_the_advice_of_the_running_master() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ctl.sock").to_str().unwrap().to_string();
    let plan = |json: bool| {
        let mut c = command(&example_bin("faults"));
        c.args(["plan", "--control-socket", &socket]);
        if json {
            c.arg("--json");
        }
        let out = c.output().expect("run plan");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // No master yet: nothing extra.
    assert!(!plan(false).contains("live:"));
    let before: Value = serde_json::from_str(&plan(true)).unwrap();
    assert!(before.get("live").is_none(), "{before}");

    let metrics = free_port();
    let bind = format!("127.0.0.1:{metrics}");
    let s = Server {
        p: Proc::serve(
            &example_bin("faults"),
            &[
                "--workers",
                "2",
                "--control-socket",
                &socket,
                "--metrics-bind",
                &bind,
            ],
            &[],
        ),
        socket: socket.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    // An idle pool: the one line with the figures looked at.
    let a = s.wait_advice("no advice: CPU ", Duration::from_secs(20));
    assert!(a.contains("accept queue 0"), "{a}");

    let text = plan(false);
    assert!(text.contains("\nlive:      no advice: CPU "), "{text}");
    let doc: Value = serde_json::from_str(&plan(true)).unwrap();
    let live = doc["live"].as_array().unwrap_or_else(|| panic!("{doc}"));
    assert!(
        live.iter()
            .any(|l| l.as_str().unwrap().starts_with("no advice: CPU ")),
        "{doc}"
    );
    assert!(doc["workers"].is_u64(), "the plan is still there: {doc}");

    let json: Value = serde_json::from_str(&get(metrics, "/status.json").unwrap().body).unwrap();
    assert!(
        advice(&json).iter().any(|l| l.starts_with("no advice: ")),
        "{json}"
    );
    let html = get(metrics, "/").unwrap().body;
    assert!(
        html.contains("<div class=\"advice\"><h2>Advice</h2><ul><li>no advice: CPU "),
        "{html}"
    );
    // ctl status prints it in its header.
    let out = command(&example_bin("faults"))
        .args(["ctl", "status", "--control-socket", &socket])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nadvice:   no advice: CPU "), "{text}");
}
