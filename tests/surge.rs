//! The reload surge bound: a reload under load keeps at most `--max-surge` extra workers alive,
//! draining ones included, and still fails no request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Counts the master's live children every 2 ms, in a thread, until stopped; keeps the largest count
/// and the pid sets seen at that count.
struct Peak {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, Vec<i32>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn watch(master: i32) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        let (s, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let kids = children_of(master);
                let mut best = out.lock().unwrap();
                if kids.len() > best.0 {
                    *best = (kids.len(), kids);
                }
                drop(best);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Peak {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops watching; the largest count seen, and those pids.
    fn finish(mut self) -> (usize, Vec<i32>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves 3 workers with `args` under 8 keep-alive clients, reloads twice, and returns the largest
/// number of live workers seen meanwhile. Checks that no request failed and every worker was replaced.
fn peak_over_two_reloads(args: &[&str]) -> usize {
    let mut all = vec!["--workers", "3"];
    all.extend_from_slice(args);
    let p = Proc::serve(&hyperfork_bin(), &all, &[]);
    let first = p.worker_pids();
    assert_eq!(first.len(), 3, "{}", p.stderr());
    let load = Load::start(p.port, 8);
    std::thread::sleep(Duration::from_millis(300));
    let peak = Peak::watch(p.pid());
    for n in 1..=2 {
        p.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(60), || p
                .stderr()
                .matches("reload complete")
                .count()
                >= n),
            "reload {n} did not complete:\n{}",
            p.stderr()
        );
    }
    // Watch until every old worker of both reloads is gone.
    assert!(
        wait_until(Duration::from_secs(60), || first.iter().all(|&w| !alive(w))
            && p.worker_pids().len() == 3),
        "{}",
        p.stderr()
    );
    let (max, pids) = peak.finish();
    let log = p.stderr();
    load.finish_clean(100, &log);
    let last = p.worker_pids();
    assert!(
        last.iter().all(|w| !first.contains(w)),
        "{first:?} {last:?}"
    );
    eprintln!("peak {max} live workers: {pids:?}");
    max
}

#[test]
fn a_reload_under_load_keeps_at_most_one_extra_worker_alive() {
    let max = peak_over_two_reloads(&[]);
    assert!(max <= 3 + 1, "{max} live workers at once (3 + surge 1)");
}

/// How long a reload of 3 workers takes: until `reload complete`, and until the last old worker
/// exited; `busy` keeps 8 clients sending back to back, else 8 keep-alive connections sit idle.
fn reload_times(args: &[&str], busy: bool) -> Vec<(Duration, Duration)> {
    let mut all = vec!["--workers", "3"];
    all.extend_from_slice(args);
    let p = Proc::serve(&hyperfork_bin(), &all, &[]);
    let load = busy.then(|| Load::start(p.port, 8));
    let mut times = Vec::new();
    for n in 1..=5 {
        let idle: Vec<Conn> = if busy {
            Vec::new()
        } else {
            (0..8)
                .map(|_| {
                    let mut c = Conn::open(p.port).unwrap();
                    c.get("/health").unwrap();
                    c
                })
                .collect()
        };
        std::thread::sleep(Duration::from_millis(300));
        let old = p.worker_pids();
        let t0 = std::time::Instant::now();
        p.signal(libc::SIGHUP);
        assert!(poll_until(Duration::from_secs(60), || p
            .stderr()
            .matches("reload complete")
            .count()
            >= n));
        let complete = t0.elapsed();
        assert!(poll_until(Duration::from_secs(60), || old
            .iter()
            .all(|&w| !alive(w))));
        times.push((complete, t0.elapsed()));
        drop(idle);
    }
    if let Some(load) = load {
        load.finish_clean(100, &p.stderr());
    }
    times
}

/// Prints reload times (not a check): `cargo test --test surge -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_reload_time() {
    for (args, busy) in [
        (&[][..], true),
        (&[][..], false),
        (&["--max-surge", "3"][..], true),
        (&["--max-surge", "3"][..], false),
    ] {
        if !args.is_empty() && !hyperfork_help().contains("--max-surge") {
            continue;
        }
        let times = reload_times(args, busy);
        eprintln!(
            "{args:?} {}: (reload complete, old workers gone) {:?}",
            if busy {
                "busy keep-alive"
            } else {
                "idle keep-alive"
            },
            times
        );
    }
}

fn hyperfork_help() -> String {
    let out = command(&hyperfork_bin()).arg("--help").output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`wait_until`], polling every millisecond.
fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

#[test]
fn with_max_surge_3_a_reload_keeps_at_most_three_extra_workers_alive() {
    let max = peak_over_two_reloads(&["--max-surge", "3"]);
    assert!(max <= 3 + 3, "{max} live workers at once (3 + surge 3)");
}
