//! Binary upgrade (`SIGUSR2`) seen from outside: a new master from the binary on disk takes over under
//! load without a failed request, jobs never run in both pools, and a broken binary changes nothing.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A copy of the hyperfork binary in `dir`, so the test can replace it on disk.
fn staged_binary(dir: &Path) -> PathBuf {
    let path = dir.join("hyperfork");
    std::fs::copy(hyperfork_bin(), &path).unwrap();
    path
}

/// Replaces `path` the way a deploy does: write a new file, rename it over the old one.
fn replace_binary(path: &Path, with: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(with, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn usr2_under_load_hands_over_to_a_new_master_from_the_binary_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let bin = staged_binary(dir.path());
    let pid_file = dir.path().join("hyperfork.pid");
    let ticks = dir.path().join("ticks.log");
    let starts = dir.path().join("starts.log");
    let runs = dir.path().join("runs.log");
    let config = dir.path().join("h.toml");
    // `append` records each tick; `long` runs 1.5 s and records when it started and ended, so two
    // runs at once in two pools would show as overlapping intervals.
    let long = format!(
        "s=$(date +%s%N); echo \\\"$PPID $s\\\" >> {starts}; sleep 1.5; echo \\\"$PPID $s $(date +%s%N)\\\" >> {runs}",
        starts = starts.display(),
        runs = runs.display()
    );
    std::fs::write(
        &config,
        format!(
            "workers = 2\n\
             [[jobs]]\nname = \"append\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \"echo \\\"$HYPERFORK_SCHEDULED_AT $HYPERFORK_WORKER_ID $PPID\\\" >> {}\"]\n\
             [[jobs]]\nname = \"long\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \"{long}\"]\n",
            ticks.display()
        ),
    )
    .unwrap();
    let mut p = Proc::serve(
        &bin,
        &[
            "--config",
            config.to_str().unwrap(),
            "--pid",
            pid_file.to_str().unwrap(),
        ],
        &[],
    );
    let old = p.pid();
    let old_workers = p.worker_pids();
    assert_eq!(old_workers.len(), 2);
    assert!(wait_until(Duration::from_secs(20), || !read_tick_lines(
        &ticks
    )
    .is_empty()));
    let load = Load::start(p.port, 8);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let old_inode = inode(&bin);
    replace_binary(&bin, &hyperfork_bin());
    assert_ne!(inode(&bin), old_inode);

    // Upgrade right after a `long` run started, so that run is in flight during the hand-over.
    let before = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
            > before
    }));
    let guard = p.upgrade_from_pid_file(&pid_file);
    let new = guard.0;
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old master did not exit cleanly: {status:?}\n{}",
        p.stderr()
    );
    // Keep the load (and the job) running on the new master alone for a while.
    while started.elapsed() < Duration::from_secs(7) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = p.stderr();
    load.finish_clean(100, &log);

    // The new master runs the replaced binary and serves through its own workers.
    assert_eq!(inode(Path::new(&format!("/proc/{new}/exe"))), inode(&bin));
    assert!(old_workers.iter().all(|&w| !alive(w)));
    let new_workers = children_of(new);
    assert_eq!(new_workers.len(), 2, "{log}");
    let (_, pid) = health_identity(&get(p.port, "/health").unwrap());
    assert!(
        new_workers.contains(&(pid as i32)),
        "{pid} not in {new_workers:?}"
    );
    assert_ne!(parent_of(new), Some(old));

    // Scheduled jobs: only ever in a slot 0, never two runs of one tick, no tick lost.
    let slot0 = slot0_pids(&log);
    assert_eq!(slot0.len(), 2, "one slot 0 per master:\n{log}");
    let lines = read_tick_lines(&ticks);
    for l in &lines {
        assert_eq!(l.slot, 0, "a run outside slot 0 (pid {})", l.pid);
        assert!(slot0.contains(&l.pid), "run by pid {}, not a slot 0", l.pid);
    }
    assert!(
        lines.iter().any(|l| l.pid == slot0[1]),
        "the new master's slot 0 never ran the job:\n{log}"
    );
    let mut ms: Vec<i64> = lines.iter().map(|l| l.tick.timestamp_millis()).collect();
    ms.sort_unstable();
    let unique: HashSet<i64> = ms.iter().copied().collect();
    assert_eq!(unique.len(), ms.len(), "a tick ran twice: {ms:?}");
    // Tolerance: one tick. The lease moves only once the old holder's `long` run has ended (up to
    // 1.5 s into the drain); of the ticks due meanwhile, the latest runs if within the 1 s misfire
    // grace and earlier ones coalesce into it.
    let span = (ms[ms.len() - 1] - ms[0]) / 1000 + 1;
    assert!(
        span - (ms.len() as i64) <= 1,
        "more than one tick missing: {ms:?}\n{log}"
    );
    // Never two runs at once, across both masters.
    let mut intervals: Vec<(i32, u128, u128)> = std::fs::read_to_string(&runs)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    intervals.sort_by_key(|i| i.1);
    assert!(
        intervals.iter().any(|i| i.0 == slot0[0]) && intervals.iter().any(|i| i.0 == slot0[1]),
        "both slot 0 workers ran `long`: {intervals:?}"
    );
    for w in intervals.windows(2) {
        assert!(w[1].1 >= w[0].2, "two runs of `long` at once: {w:?}\n{log}");
    }

    // The new master stops like any master and removes its pid file.
    // SAFETY: kill(2) on the pid the pid file names.
    unsafe {
        libc::kill(new, libc::SIGTERM);
    }
    assert!(wait_until(Duration::from_secs(30), || !alive(new)));
    assert!(!pid_file.exists());
}

#[test]
fn usr2_with_a_broken_binary_keeps_the_old_master_serving() {
    let dir = tempfile::tempdir().unwrap();
    let bin = staged_binary(dir.path());
    let pid_file = dir.path().join("hyperfork.pid");
    let mut p = Proc::serve(
        &bin,
        &["--workers", "2", "--pid", pid_file.to_str().unwrap()],
        &[],
    );
    let workers = p.worker_pids();
    let broken = dir.path().join("broken.sh");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    replace_binary(&bin, &broken);
    p.signal(libc::SIGUSR2);
    assert!(
        p.wait_log("binary upgrade failed", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert!(
        p.stderr().contains("exited with status 1"),
        "{}",
        p.stderr()
    );
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    assert_eq!(p.worker_pids(), workers);
    assert_eq!(read_pid(&pid_file), Some(p.pid()));

    // Once a good binary is back, the next USR2 succeeds.
    replace_binary(&bin, &hyperfork_bin());
    p.signal(libc::SIGUSR2);
    assert!(
        wait_until(Duration::from_secs(30), || read_pid(&pid_file)
            .is_some_and(|pid| pid != p.pid())),
        "{}",
        p.stderr()
    );
    let _guard = PidGuard(read_pid(&pid_file).unwrap());
    assert!(
        p.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
}
