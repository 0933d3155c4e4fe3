//! Pool sizing, seen from outside: `hyperfork plan --json` and the number of workers actually forked.

mod common;

use std::time::Duration;

use common::*;

fn plan(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = command(&hyperfork_bin());
    cmd.arg("plan").arg("--json").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run hyperfork plan");
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan --json prints JSON")
}

/// CPUs in this process's affinity mask, from /proc/self/status.
fn affinity_cpus() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn explicit_flag_wins_over_env() {
    let p = plan(&["--workers", "3"], &[("UVICORN_WORKERS", "6")]);
    assert_eq!(p["workers"], 3);
    assert_eq!(p["decided_by"], "explicit");
    assert_eq!(p["explicit_source"], "--workers");
}

#[test]
fn uvicorn_workers_beats_web_concurrency() {
    let p = plan(&[], &[("UVICORN_WORKERS", "4"), ("WEB_CONCURRENCY", "6")]);
    assert_eq!(p["workers"], 4);
    assert_eq!(p["explicit_source"], "env UVICORN_WORKERS");
    let p = plan(&[], &[("WEB_CONCURRENCY", "6")]);
    assert_eq!(p["workers"], 6);
    assert_eq!(p["explicit_source"], "env WEB_CONCURRENCY");
}

#[test]
fn explicit_count_is_not_capped() {
    let p = plan(&["--max-workers", "2"], &[("UVICORN_WORKERS", "12")]);
    assert_eq!(p["workers"], 12);
}

#[test]
fn debug_forces_one_worker_and_warns_about_a_given_count() {
    let p = plan(&["--debug"], &[]);
    assert_eq!(p["workers"], 1);
    assert_eq!(p["decided_by"], "debug");
    let p = plan(&["--debug", "--workers", "4"], &[]);
    assert_eq!(p["workers"], 1);
    assert!(p["warnings"][0].as_str().unwrap().contains("ignored"));
    let p = plan(&[], &[("HYPERFORK_DEBUG", "1"), ("UVICORN_WORKERS", "3")]);
    assert_eq!(p["workers"], 1);
}

#[test]
fn auto_size_follows_the_formula_on_this_machine() {
    let p = plan(&[], &[]);
    let affinity = affinity_cpus();
    assert_eq!(p["cores"]["affinity"], affinity);
    let cores = p["cores"]["count"].as_u64().unwrap();
    assert!(
        cores >= 1 && cores <= affinity,
        "cores {cores}, affinity {affinity}"
    );
    if p["cores"]["quota"].is_null() {
        assert_eq!(cores, affinity);
    }
    assert_eq!(p["decided_by"], "formula");
    assert_eq!(p["workers"].as_u64().unwrap(), (2 * cores + 1).min(8));
    let capped = plan(&["--max-workers", "2"], &[]);
    assert_eq!(capped["workers"].as_u64().unwrap(), (2 * cores + 1).min(2));
    let env_cap = plan(&[], &[("HYPERFORK_MAX_WORKERS", "1")]);
    assert_eq!(env_cap["workers"], 1);
}

#[test]
fn toml_workers_is_the_last_explicit_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.toml");
    std::fs::write(&path, "workers = 2\nmax_workers = 3\n").unwrap();
    let p = plan(&["--config", path.to_str().unwrap()], &[]);
    assert_eq!(p["workers"], 2);
    let p = plan(
        &["--config", path.to_str().unwrap()],
        &[("WEB_CONCURRENCY", "5")],
    );
    assert_eq!(p["workers"], 5);
}

#[test]
fn text_plan_names_every_input() {
    let out = command(&hyperfork_bin())
        .args(["plan", "--workers", "2"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "workers:",
        "cores:",
        "cap:",
        "debug:",
        "explicit:",
        "formula:",
        "--workers",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

fn running_pool_size(args: &[&str], env: &[(&str, &str)]) -> usize {
    let p = Proc::serve(&hyperfork_bin(), args, env);
    let n = p.worker_pids().len();
    assert!(
        p.wait_log("ready", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    n
}

#[test]
fn the_running_pool_has_the_planned_size() {
    assert_eq!(running_pool_size(&[], &[("UVICORN_WORKERS", "3")]), 3);
    assert_eq!(
        running_pool_size(&["--debug"], &[("UVICORN_WORKERS", "3")]),
        1
    );
    let auto = plan(&[], &[])["workers"].as_u64().unwrap() as usize;
    assert_eq!(running_pool_size(&[], &[]), auto);
}

/// `MemTotal` from /proc/meminfo, in bytes.
fn mem_total() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib * 1024
}

#[test]
fn plan_reports_the_machines_memory() {
    let p = plan(&[], &[]);
    assert_eq!(p["memory"]["total"].as_u64(), Some(mem_total()), "{p}");
    assert!(p["memory"]["available"].as_u64().is_some(), "{p}");
    let out = command(&hyperfork_bin())
        .arg("plan")
        .output()
        .expect("run hyperfork plan");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("memory:"))
        .unwrap_or_else(|| panic!("no memory line:\n{text}"));
    assert!(line.contains("MemTotal"), "{line}");
}

/// Resident memory of `pid`, in KiB, from /proc/PID/status.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_faults_examples_boot_allocation_weighs_every_worker() {
    // The sizing tests' heavy worker: 50 MiB allocated and touched at boot, in each worker.
    let p = Proc::serve(
        &example_bin("faults"),
        &["--workers", "2"],
        &[("HYPERFORK_BOOT_ALLOC_MIB", "50")],
    );
    assert!(
        p.wait_log("all 2 workers ready", std::time::Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    let workers = p.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for pid in workers {
        let rss = rss_kib(pid);
        assert!(rss >= 50 * 1024, "worker {pid}: RSS {rss} KiB");
    }
}
