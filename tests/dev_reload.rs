//! `--reload` seen from outside: a new build of the executable on disk is swapped in by a binary
//! upgrade under keep-alive and connection-per-request load without a failed request; a build that
//! cannot start leaves the old master serving and the next good one is picked up; a config file or a
//! `--reload-dir` change reloads the workers; the seed's dev command serves with one worker.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// A copy of the hyperfork binary in `dir`, so the test can replace it on disk.
fn staged_binary(dir: &Path) -> PathBuf {
    let path = dir.join("hyperfork");
    std::fs::copy(hyperfork_bin(), &path).unwrap();
    path
}

/// A new build of the same program: the real binary with `tag` appended (an ELF file runs the same
/// with bytes after its end, and its content differs from the running one).
fn build(dir: &Path, name: &str, tag: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = std::fs::read(hyperfork_bin()).unwrap();
    bytes.extend_from_slice(tag);
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Puts `new` at `path` the way an editor or a deploy does: rename over the old name.
fn rename_over(new: &Path, path: &Path) {
    std::fs::rename(new, path).unwrap();
}

/// Puts `new` at `path` the way `cargo build` does: remove the old name, hard-link the new file.
fn link_over(new: &Path, path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::hard_link(new, path).unwrap();
}

/// The master of the worker answering `/health` now.
fn answering_master(port: u16) -> Option<i32> {
    let (_, worker) = health_identity(&get(port, "/health").ok()?);
    parent_of(worker as i32)
}

/// Waits (bounded) until a master other than those in `seen` answers; returns it.
fn wait_new_master(p: &Proc, seen: &[i32]) -> i32 {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(60), || {
        found = answering_master(p.port).filter(|m| !seen.contains(m));
        found.is_some()
    });
    assert!(ok, "no new master answered:\n{}", p.stderr());
    found.unwrap()
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_new_build_is_swapped_in_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let bin = staged_binary(dir.path());
    let mut p = Proc::serve(&bin, &["--reload", "--no-access-log"], &[]);
    let first = p.pid();
    assert_eq!(p.worker_pids().len(), 1, "--reload runs one worker");
    assert!(p.stderr().contains("--reload: watching"), "{}", p.stderr());

    // The same bytes in a new file: nothing to swap.
    let same = dir.path().join("same");
    std::fs::copy(hyperfork_bin(), &same).unwrap();
    rename_over(&same, &bin);
    assert!(
        p.wait_log("with the same content", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert_eq!(answering_master(p.port), Some(first));

    let keep_alive = Load::start(p.port, 4);
    let per_request = Load::per_request(p.port, 2);
    assert!(wait_until(Duration::from_secs(20), || keep_alive
        .ok_count()
        > 50
        && per_request.ok_count() > 20));

    // A build renamed over the executable.
    let one = build(dir.path(), "build-1", b"build 1");
    rename_over(&one, &bin);
    let second = wait_new_master(&p, &[first]);
    let _second_guard = PidGuard(second);
    let status = p.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first master did not hand over and exit: {status:?}\n{}",
        p.stderr()
    );
    assert_eq!(
        inode(Path::new(&format!("/proc/{second}/exe"))),
        inode(&bin)
    );
    assert_eq!(children_of(second).len(), 1, "{}", p.stderr());

    // A build hard-linked over it, as cargo does: the new master watches too.
    let deps = dir.path().join("deps");
    std::fs::create_dir(&deps).unwrap();
    let two = build(&deps, "hyperfork-2", b"build 2");
    link_over(&two, &bin);
    let third = wait_new_master(&p, &[first, second]);
    let _third_guard = PidGuard(third);
    assert_eq!(inode(Path::new(&format!("/proc/{third}/exe"))), inode(&bin));

    // Keep both loads on the last master for a while.
    let (k, r) = (keep_alive.ok_count(), per_request.ok_count());
    assert!(wait_until(Duration::from_secs(20), || keep_alive
        .ok_count()
        > k + 50
        && per_request.ok_count() > r + 20));
    let log = p.stderr();
    assert!(log.contains("is a new build; swapping it in"), "{log}");
    let pids = keep_alive.finish_clean(100, &log);
    per_request.finish_clean(40, &log);
    assert!(
        pids.len() >= 3,
        "a worker of each master answered: {pids:?}"
    );
    assert_eq!(answering_master(p.port), Some(third));
}

#[test]
fn a_build_that_cannot_start_leaves_the_old_master_serving_until_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let bin = staged_binary(dir.path());
    let p = Proc::serve(&bin, &["--reload", "--no-access-log"], &[]);
    let first = p.pid();
    let workers = p.worker_pids();
    let load = Load::start(p.port, 2);
    let failures = |n: usize| {
        wait_until(Duration::from_secs(60), || {
            p.stderr().matches("binary upgrade failed").count() >= n
        })
    };

    // A program that exits at once: its error is printed, the old master keeps serving.
    let script = dir.path().join("script");
    std::fs::write(
        &script,
        "#!/bin/sh\necho 'new build: cannot start' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    rename_over(&script, &bin);
    assert!(failures(1), "{}", p.stderr());
    let log = p.stderr();
    assert!(log.contains("new build: cannot start"), "{log}");
    assert!(log.contains("exited with status 1"), "{log}");

    // A truncated build (the linker stopped half-way).
    let bytes = std::fs::read(hyperfork_bin()).unwrap();
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &bytes[..64 * 1024]).unwrap();
    std::fs::set_permissions(&truncated, std::fs::Permissions::from_mode(0o755)).unwrap();
    rename_over(&truncated, &bin);
    assert!(failures(2), "{}", p.stderr());

    // A build without the executable bit.
    let plain = build(dir.path(), "plain", b"not executable");
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
    rename_over(&plain, &bin);
    assert!(failures(3), "{}", p.stderr());
    assert!(
        p.stderr().contains("Permission denied"),
        "the error says why:\n{}",
        p.stderr()
    );

    assert_eq!(answering_master(p.port), Some(first));
    assert_eq!(p.worker_pids(), workers, "the old worker kept serving");

    // The next good build is picked up.
    let good = build(dir.path(), "good", b"good");
    rename_over(&good, &bin);
    let second = wait_new_master(&p, &[first]);
    let _guard = PidGuard(second);
    load.finish_clean(20, &p.stderr());
}

#[test]
fn an_app_that_cannot_boot_waits_for_a_build_that_can() {
    // The faults example's workers fail to boot; without --reload the master gives up (exit 3).
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("app");
    std::fs::copy(example_bin("faults"), &bin).unwrap();
    let port = free_port();
    let mut cmd = command(&bin);
    cmd.args(["--port", &port.to_string(), "--reload", "--no-access-log"])
        .env("HYPERFORK_FAULT", "boot-error");
    let mut p = Proc::start(cmd, port);
    assert!(
        p.wait_log("--reload keeps the master up", Duration::from_secs(60)),
        "{}",
        p.stderr()
    );
    assert!(
        p.wait_exit(Duration::from_millis(500)).is_none(),
        "{}",
        p.stderr()
    );
    let first = p.pid();

    // The fixed build: the hyperfork binary, whose app has no fault to inject.
    let fixed = build(dir.path(), "fixed", b"fixed");
    rename_over(&fixed, &bin);
    let second = wait_new_master(&p, &[first]);
    let _guard = PidGuard(second);
    assert_eq!(get(port, "/health").unwrap().status, 200);
}

#[test]
fn a_build_after_cargo_clean_is_swapped_in() {
    // `cargo clean` removes target/ while the server runs from target/debug: the kernel reports
    // nothing for a directory a running executable keeps alive, so the master notices it is gone.
    let dir = tempfile::tempdir().unwrap();
    let debug = dir.path().join("target/debug");
    std::fs::create_dir_all(&debug).unwrap();
    let bin = staged_binary(&debug);
    let p = Proc::serve(&bin, &["--reload", "--no-access-log"], &[]);
    let first = p.pid();
    std::fs::remove_dir_all(dir.path().join("target")).unwrap();
    assert!(
        p.wait_log("target/debug is gone", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert_eq!(answering_master(p.port), Some(first));
    std::fs::create_dir_all(debug.join("deps")).unwrap();
    let new = build(&debug.join("deps"), "hyperfork-1", b"after clean");
    std::fs::hard_link(&new, &bin).unwrap();
    let second = wait_new_master(&p, &[first]);
    let _guard = PidGuard(second);
    assert!(
        p.stderr().contains("target/debug is back"),
        "{}",
        p.stderr()
    );
}

#[test]
fn a_changed_config_file_or_reload_dir_file_reloads_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, "timeout_keep_alive = 5\n").unwrap();
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("index.html"), "<p>one</p>").unwrap();
    let p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--reload",
            "--reload-dir",
            templates.to_str().unwrap(),
            "--reload-include",
            "*.html",
            "--log-level",
            "debug",
        ],
        &[],
    );
    let reloads = |n: usize| {
        wait_until(Duration::from_secs(60), || {
            p.stderr().matches("reload complete").count() >= n
        })
    };
    let worker = p.worker_pids();

    // An editor's save: a new file renamed over the config.
    let tmp = dir.path().join(".app.toml.new");
    std::fs::write(&tmp, "timeout_keep_alive = 6\n").unwrap();
    rename_over(&tmp, &config);
    assert!(reloads(1), "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("app.toml changed; reloading the workers"),
        "{}",
        p.stderr()
    );
    assert_ne!(p.worker_pids(), worker);
    assert_eq!(get(p.port, "/health").unwrap().status, 200);

    // The same content written again: no reload.
    std::fs::write(&config, "timeout_keep_alive = 6\n").unwrap();
    assert!(
        p.wait_log("was rewritten unchanged", Duration::from_secs(30)),
        "{}",
        p.stderr()
    );
    assert_eq!(p.stderr().matches("reload complete").count(), 1);

    // A template in the --reload-dir.
    std::fs::write(templates.join("index.html"), "<p>two</p>").unwrap();
    assert!(reloads(2), "{}", p.stderr());
    assert!(
        p.stderr()
            .contains("index.html changed; reloading the workers"),
        "{}",
        p.stderr()
    );
}

#[test]
fn the_seed_dev_command_serves_with_one_worker() {
    // `uvicorn apps.api.main:app --host 0.0.0.0 --port 11400 --reload --log-level debug`, with
    // hyperfork in uvicorn's place: bound on every address, asked on loopback only.
    let port = free_port();
    let mut cmd = command(&hyperfork_bin());
    cmd.args([
        "--host",
        "0.0.0.0",
        "--port",
        &port.to_string(),
        "--reload",
        "--log-level",
        "debug",
    ]);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    assert_eq!(p.worker_pids().len(), 1, "{}", p.stderr());
    assert!(
        p.stderr().contains("starting 1 worker (--reload"),
        "{}",
        p.stderr()
    );
    assert_eq!(get(port, "/health").unwrap().status, 200);
}

/// `hyperfork plan --json` with `args` and `env`.
fn plan(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = command(&hyperfork_bin());
    cmd.arg("plan").arg("--json").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn reload_runs_one_worker_unless_a_count_is_given_under_any_of_its_names() {
    let p = plan(&["--reload"], &[]);
    assert_eq!(
        (p["workers"].as_u64(), p["decided_by"].as_str()),
        (Some(1), Some("reload"))
    );
    let p = plan(&[], &[("UVICORN_RELOAD", "true")]);
    assert_eq!(p["workers"], 1);
    assert_eq!(p["reload_source"], "env UVICORN_RELOAD");
    let p = plan(&[], &[("HYPERFORK_RELOAD", "1"), ("UVICORN_WORKERS", "3")]);
    assert_eq!(
        (p["workers"].as_u64(), p["decided_by"].as_str()),
        (Some(3), Some("explicit"))
    );
    let p = plan(&["--reload", "--workers", "2"], &[]);
    assert_eq!(p["workers"], 2);
}

/// Runs the server with `args` and `env`; returns its exit status and stderr.
fn run_failing(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = command(&hyperfork_bin());
    cmd.args(["--port", "0"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_reload_settings_are_usage_errors_naming_the_input() {
    let (code, err) = run_failing(&["--reload", "--reload-dir", "/nonexistent/templates"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--reload-dir /nonexistent/templates: expected an existing directory"),
        "{err}"
    );
    let (code, err) = run_failing(&["--reload-delay", "soon"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--reload-delay"), "{err}");
    let (code, err) = run_failing(&[], &[("UVICORN_RELOAD_INCLUDES", "[abc")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("UVICORN_RELOAD_INCLUDES"), "{err}");
    assert!(err.contains("expected glob patterns"), "{err}");
}

#[test]
fn reload_options_without_reload_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--reload-dir", dir.path().to_str().unwrap()],
        &[("UVICORN_RELOAD_DELAY", "0.5")],
    );
    let log = p.stderr();
    assert!(
        log.contains("--reload-dir is set but --reload is not"),
        "{log}"
    );
    assert!(
        log.contains("--reload-delay is set but --reload is not"),
        "{log}"
    );
    assert!(!log.contains("--reload: watching"), "{log}");
}
