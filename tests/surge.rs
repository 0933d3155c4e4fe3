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
        p.reload(n);
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

/// What `/share?total=30` of the faults example answered.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share {
    share: u64,
    generation: u64,
    pool_size: u64,
    pid: i32,
}

fn ask_share(port: u16) -> std::io::Result<Share> {
    let r = get(port, "/share?total=30")?;
    let v: serde_json::Value = serde_json::from_str(&r.body)
        .map_err(|e| std::io::Error::other(format!("{e}: {} {}", r.status, r.body)))?;
    let pid: i32 = r
        .header("x-pid")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| std::io::Error::other("no x-pid"))?;
    assert_eq!(v["pid"].as_i64(), Some(i64::from(pid)));
    Ok(Share {
        share: v["share"].as_u64().unwrap(),
        generation: v["generation"].as_u64().unwrap(),
        pool_size: v["pool_size"].as_u64().unwrap(),
        pid,
    })
}

/// Asks `/share` on new connections until every pid in `pids` answered (bounded); their answers.
fn shares_of(port: u16, pids: &[i32]) -> Vec<Share> {
    let mut seen = std::collections::HashMap::new();
    wait_until(Duration::from_secs(20), || {
        for _ in 0..20 {
            if let Ok(s) = ask_share(port) {
                seen.insert(s.pid, s);
            }
        }
        pids.iter().all(|p| seen.contains_key(p))
    });
    pids.iter()
        .map(|p| {
            *seen
                .get(p)
                .unwrap_or_else(|| panic!("pid {p} never answered: {seen:?}"))
        })
        .collect()
}

/// While it runs: threads asking `/share` on new connections (every pid's share), and the master's
/// live children every 2 ms.
struct Budget {
    stop: Arc<AtomicBool>,
    shares: Arc<Mutex<std::collections::HashMap<i32, u64>>>,
    snapshots: Arc<Mutex<Vec<Vec<i32>>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Budget {
    fn watch(port: u16, master: i32) -> Budget {
        let stop = Arc::new(AtomicBool::new(false));
        let shares = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let snapshots = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (stop, shares, errors) = (stop.clone(), shares.clone(), errors.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match ask_share(port) {
                        Ok(s) => {
                            shares.lock().unwrap().insert(s.pid, s.share);
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
            }));
        }
        let (s, snaps) = (stop.clone(), snapshots.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let kids = children_of(master);
                let mut v = snaps.lock().unwrap();
                if v.last() != Some(&kids) {
                    v.push(kids);
                }
                drop(v);
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
        Budget {
            stop,
            shares,
            snapshots,
            errors,
            threads,
        }
    }

    /// Stops; the largest sum of the shares of the workers alive at once, given the shares of pids
    /// that were not asked meanwhile (`known`).
    fn finish(self, known: &[Share]) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let errors = self.errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "{} failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        let mut shares = self.shares.lock().unwrap().clone();
        shares.extend(known.iter().map(|s| (s.pid, s.share)));
        let snapshots = self.snapshots.lock().unwrap().clone();
        assert!(snapshots.len() > 2, "{snapshots:?}");
        let mut most = 0;
        for pids in &snapshots {
            let sum = pids
                .iter()
                .map(|p| {
                    *shares
                        .get(p)
                        .unwrap_or_else(|| panic!("no share known for pid {p}: {shares:?}"))
                })
                .sum::<u64>();
            most = most.max(sum);
        }
        most
    }
}

#[test]
fn shares_of_a_budget_fit_it_through_sigttin_and_sigttou() {
    let p = Proc::serve(&example_bin("faults"), &["--workers", "3"], &[]);
    let first = p.worker_pids();
    let before = shares_of(p.port, &first);
    for s in &before {
        assert_eq!(
            (s.share, s.generation, s.pool_size),
            (7, 1, 3),
            "30 / (3 + 1)"
        );
    }
    let budget = Budget::watch(p.port, p.pid());
    p.signal(libc::SIGTTIN);
    assert!(
        p.wait_log("SIGTTIN complete: 4 workers", Duration::from_secs(60)),
        "{}",
        p.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(30), || first.iter().all(|&w| !alive(w))
            && p.worker_pids().len() == 4),
        "{}",
        p.stderr()
    );
    let grown = p.worker_pids();
    let after = shares_of(p.port, &grown);
    for s in &after {
        assert_eq!(
            (s.share, s.generation, s.pool_size),
            (6, 1, 4),
            "30 / (4 + 1)"
        );
    }
    p.signal(libc::SIGTTOU);
    assert!(p.wait_log("SIGTTOU: workers 4 -> 3", Duration::from_secs(20)));
    assert!(
        wait_until(Duration::from_secs(30), || p.worker_pids().len() == 3),
        "{}",
        p.stderr()
    );
    let known: Vec<Share> = before.into_iter().chain(after).collect();
    let most = budget.finish(&known);
    assert!(most <= 30, "the live workers' shares reached {most} of 30");
    eprintln!("largest sum of shares: {most} of 30");
}

#[test]
fn the_generation_counts_reloads_and_the_share_counts_the_surge() {
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2", "--max-surge", "2"],
        &[],
    );
    let first = p.worker_pids();
    for s in shares_of(p.port, &first) {
        assert_eq!(
            (s.share, s.generation, s.pool_size),
            (7, 1, 2),
            "30 / (2 + 2)"
        );
    }
    p.signal(libc::SIGHUP);
    assert!(p.wait_log("reload complete", Duration::from_secs(30)));
    assert!(
        wait_until(Duration::from_secs(30), || first.iter().all(|&w| !alive(w))
            && p.worker_pids().len() == 2),
        "{}",
        p.stderr()
    );
    for s in shares_of(p.port, &p.worker_pids()) {
        assert_eq!((s.share, s.generation, s.pool_size), (7, 2, 2));
    }
    let r = get(p.port, "/share?total=3").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.body.contains("at least 4"), "{}", r.body);
}
