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
