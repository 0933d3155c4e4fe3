//! Sizing by memory, seen from outside: the memory guard of a pool started inside a memory-limited
//! cgroup this test creates, `plan --measure`'s prediction of it, and `plan --measure`'s figures
//! against what `/proc` shows for a pool started by hand.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cgroup::MemCgroup;
use common::*;

const MIB: u64 = 1024 * 1024;

/// `examples/faults.rs` started in a test's memory cgroup.
trait Heavy {
    fn serve_heavy(&self, args: &[&str], workers: usize) -> Proc;
}

impl Heavy for MemCgroup {
    /// `examples/faults.rs` with workers of 50 MiB each, started inside the cgroup on a fresh port
    /// with `args`, once it logs `all N workers ready` (`workers`).
    fn serve_heavy(&self, args: &[&str], workers: usize) -> Proc {
        let port = free_port();
        let mut all = vec!["--port".to_string(), port.to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = self.wrap(&example_bin("faults"), &all);
        cmd.env("HYPERFORK_BOOT_ALLOC_MIB", "50");
        let mut p = Proc::start(cmd, port);
        p.wait_serving();
        let ready = format!("all {workers} workers ready");
        assert!(
            p.wait_log(&ready, Duration::from_secs(30)),
            "{}",
            p.stderr()
        );
        p
    }
}

/// Runs `plan --measure --json` (with `args`) and returns its JSON, failing on a non-zero exit.
fn measure(mut cmd: Command) -> serde_json::Value {
    let out = cmd.output().expect("run plan --measure");
    assert!(
        out.status.success(),
        "plan --measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plan --measure --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_computed_pool_stops_at_what_fits_in_its_cgroup_and_plan_predicts_it() {
    // Workers of 50 MiB each in a 256 MiB cgroup with the default 64 MiB reserve: 192 MiB for the
    // pool during a reload, which forks one more worker (--max-surge 1). 2 workers fit (about 12 MiB
    // for the master and shared pages, plus 3 × 51 while reloading) and 3 do not (4 × 51); the
    // formula asks for at least 3 on any machine.
    let cg = MemCgroup::create("guard", 256 * MIB);
    let mut cmd = cg.wrap(&example_bin("faults"), &["plan", "--measure", "--json"]);
    cmd.env("HYPERFORK_BOOT_ALLOC_MIB", "50");
    let predicted = measure(cmd);
    let wanted = predicted["memory_guard"]["decision"]["wanted"]
        .as_u64()
        .unwrap_or_else(|| panic!("no guard decision in the plan: {predicted}"));
    assert!(wanted >= 3, "{predicted}");
    assert_eq!(predicted["workers"], 2, "{predicted}");
    assert_eq!(predicted["decided_by"], "memory guard", "{predicted}");
    assert_eq!(predicted["memory"]["limit"]["kind"], cg.kind, "{predicted}");
    assert_eq!(
        predicted["measured"]["workers"].as_array().map(Vec::len),
        Some(2)
    );

    let p = cg.serve_heavy(&[], 2);
    let line = format!("starting 2 of {wanted} workers: {wanted} would need ");
    let log = p.stderr();
    let logged = log
        .lines()
        .find(|l| l.contains(&line))
        .unwrap_or_else(|| panic!("no `{line}` line:\n{log}"));
    assert!(
        logged.contains("MiB with a reload's 1 extra (--max-surge), the cgroup allows 256 MiB minus 64 MiB reserve"),
        "{logged}"
    );
    assert_eq!(p.worker_pids().len(), 2, "{log}");
    // The guard stopped growing; it did not fork and kill.
    assert!(!log.contains("worker 2 "), "{log}");
    assert_eq!(get(p.port, "/").map(|r| r.status).ok(), Some(200));
}

#[test]
fn a_reload_decides_again_with_fresh_measurements() {
    // 2 workers of 50 MiB (and a reload's third) fit in 256 MiB minus 64 MiB; after the reserve
    // drops to 8 MiB, 3 do.
    let cg = MemCgroup::create("reload", 256 * MIB);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hyperfork.toml");
    std::fs::write(&config, "memory_reserve = \"64MiB\"\n").unwrap();
    let p = cg.serve_heavy(&["--config", config.to_str().unwrap()], 2);
    std::fs::write(&config, "memory_reserve = \"8MiB\"\n").unwrap();
    p.reload(1);
    let log = p.stderr();
    assert!(
        log.contains("reload: starting 3 of ")
            && log.contains("the cgroup allows 256 MiB minus 8 MiB reserve"),
        "{log}"
    );
    assert!(log.contains("workers 2 -> 3"), "{log}");
    assert!(
        log.contains("reload complete: generation 2, 3 workers"),
        "{log}"
    );
    assert_eq!(p.worker_pids().len(), 3, "{log}");
}

#[test]
fn an_explicit_count_in_a_small_cgroup_is_kept_and_warned_about() {
    let cg = MemCgroup::create("explicit", 256 * MIB);
    let p = cg.serve_heavy(&["--workers", "3"], 3);
    let log = p.stderr();
    assert!(
        log.contains("the explicit count is kept, but 3 would need ")
            && log.contains("2 workers would fit"),
        "{log}"
    );
    assert_eq!(p.worker_pids().len(), 3, "{log}");
}

/// `Private_Clean + Private_Dirty` of `pid` from `/proc/PID/smaps_rollup`, in bytes.
fn private_bytes(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// `n` GETs of `/`, each on its own connection closed by the server (`Connection: close`, read to
/// the end), 8 at a time: the load `plan --measure` sends.
fn warm(port: u16, n: usize) {
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..n.div_ceil(8) {
                    let Ok(mut conn) = Conn::open(port) else {
                        continue;
                    };
                    let s = conn.reader_mut();
                    let _ = s.write_all(
                        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                    );
                    let _ = s.read_to_end(&mut Vec::new());
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// `plan --measure`'s private memory per worker, against `/proc` for a pool of 2 started by hand
/// with the same settings and warmed with as many requests: within 20 %.
fn measure_matches_proc(bin: &Path, env: &[(&str, &str)]) {
    let args = ["--workers", "2", "--accept", "balanced"];
    let mut cmd = command(&bin.to_path_buf());
    cmd.args(["plan", "--measure", "--json"])
        .args(args)
        .envs(env.iter().copied());
    let plan = measure(cmd);
    let measured: Vec<u64> = plan["measured"]["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no measured workers: {plan}"))
        .iter()
        .map(|w| w["memory"]["uss"].as_u64().expect("uss"))
        .collect();
    assert_eq!(measured.len(), 2, "{plan}");
    let requests = plan["measured"]["warmup"]["statuses"]["200"]
        .as_u64()
        .unwrap_or_else(|| panic!("no 200s in the warm-up: {plan}"));
    let per_worker = plan["measured"]["cost"]["per_worker"].as_u64().unwrap();
    assert_eq!(per_worker, *measured.iter().max().unwrap());

    let p = Proc::serve(&bin.to_path_buf(), &args, env);
    assert!(p.wait_log("all 2 workers ready", Duration::from_secs(30)));
    warm(p.port, requests as usize);
    let by_hand: Vec<u64> = p.worker_pids().into_iter().map(private_bytes).collect();
    assert_eq!(by_hand.len(), 2);
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len() as f64;
    let (m, h) = (mean(&measured), mean(&by_hand));
    let off = (m - h).abs() / h;
    assert!(
        off <= 0.20,
        "{}: plan --measure says {m:.0} bytes private per worker, /proc shows {h:.0} for a pool \
         started by hand ({:.0} % off); measured {measured:?}, by hand {by_hand:?}",
        bin.display(),
        off * 100.0
    );
}

#[test]
fn plan_measure_matches_proc_for_the_built_in_app() {
    measure_matches_proc(&hyperfork_bin(), &[]);
}

#[test]
fn plan_measure_matches_proc_for_a_worker_that_allocates_50_mib_at_boot() {
    measure_matches_proc(
        &example_bin("faults"),
        &[("HYPERFORK_BOOT_ALLOC_MIB", "50")],
    );
}

#[test]
fn plan_without_measure_shows_the_guard_and_the_levels() {
    let mut cmd = command(&hyperfork_bin());
    cmd.args([
        "plan",
        "--json",
        "--db-pool-per-worker",
        "10",
        "--db-max-connections",
        "20",
    ]);
    let out = cmd.output().expect("run plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let levels = plan["levels"].as_array().expect("levels");
    let names: Vec<&str> = levels.iter().filter_map(|l| l["name"].as_str()).collect();
    assert_eq!(
        &names[..3],
        ["conservative", "moderate", "aggressive"],
        "{plan}"
    );
    assert_eq!(
        levels.iter().filter(|l| l["chosen"] == true).count(),
        1,
        "{plan}"
    );
    // The default pool (at least 3 workers) opens 30+ connections, 40+ during a reload: more than
    // max_connections 20 admits.
    let chosen = levels.iter().find(|l| l["chosen"] == true).unwrap();
    let n = chosen["workers"].as_u64().unwrap();
    assert_eq!(
        chosen["db"]["at_reload"].as_u64(),
        Some((n + 1) * 10),
        "{plan}"
    );
    assert_eq!(chosen["db"]["allowed"].as_u64(), Some(17), "{plan}");
    let warning = chosen["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("but max_connections 20 admits 17"),
        "{plan}"
    );
}

#[test]
fn ctl_status_answers_from_the_live_pool() {
    let faults = example_bin("faults");
    let s = CtlServer::start(
        &faults,
        &["--workers", "2"],
        &[("HYPERFORK_BOOT_ALLOC_MIB", "50")],
    );
    let (p, socket) = (&s.proc, s.socket.to_str().unwrap());
    assert!(p.wait_log("all 2 workers ready", Duration::from_secs(30)));
    let out = command(&faults)
        .args(["ctl", "status", "--json", "--control-socket", socket])
        .output()
        .expect("run ctl status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &status["memory"];
    let per_worker = m["per_worker"]
        .as_u64()
        .unwrap_or_else(|| panic!("{status}"));
    let by_hand = p
        .worker_pids()
        .into_iter()
        .map(private_bytes)
        .max()
        .unwrap();
    let off = (per_worker as f64 - by_hand as f64).abs() / by_hand as f64;
    assert!(
        off <= 0.20,
        "ctl says {per_worker}, /proc {by_hand}: {status}"
    );
    assert!(m["total"].as_u64().unwrap() >= 100 * MIB, "{status}");
    assert_eq!(m["processes"], 2, "{status}");
    let text = command(&faults)
        .args(["ctl", "status", "--control-socket", socket])
        .output()
        .expect("run ctl status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("memory:   one more worker costs 5") && text.contains("in all"),
        "{text}"
    );
}

#[test]
fn plan_measure_of_an_app_that_cannot_boot_exits_3_with_its_error() {
    let out = command(&example_bin("faults"))
        .args(["plan", "--measure", "--workers", "2"])
        .env("HYPERFORK_FAULT", "boot-error")
        .output()
        .expect("run plan --measure");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "no plan without a measurement: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("failed to boot") && last.contains("injected boot error"),
        "{err}"
    );
}
