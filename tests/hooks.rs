//! App state and hooks, from outside, against `examples/hooks.rs`: the state built by the async start
//! hook reaches the app and the jobs; a start hook that fails, panics, never finishes or blocks its
//! thread is a boot failure (the last two through the boot timeout); the stop hook runs after the
//! drain on every graceful path and not on a fast shutdown.

mod common;

use std::time::Duration;

use common::*;

fn hooks(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let port = free_port();
    let mut cmd = command(&example_bin("hooks"));
    cmd.arg("--port").arg(port.to_string()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::start(cmd, port)
}

/// Runs the example with a failing start hook until the master gives up; returns its stderr.
fn gives_up_with(start: &str, args: &[&str]) -> String {
    let mut p = hooks(args, &[("HOOKS_START", start)]);
    let status = p.wait_exit(Duration::from_secs(90));
    let log = p.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "the master should give up with status 3:\n{log}"
    );
    log
}

#[test]
fn the_state_reaches_the_app_and_the_jobs() {
    let mut p = hooks(&["--workers", "2"], &[("HOOKS_TOKEN", "t0k3n")]);
    // (The token comes from the environment variable the app declared.)
    p.wait_serving();
    let r = get(p.port, "/").expect("GET /");
    assert!(r.body.starts_with("t0k3n "), "{:?}", r.body);
    assert!(
        p.wait_log("job sees token t0k3n in slot 0", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
}

#[test]
fn log_lines_carry_no_colour_codes_and_successful_runs_stay_below_info() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h.log");
    let mut p = hooks(
        &["--workers", "1", "--log-file", file.to_str().unwrap()],
        &[("HOOKS_TOKEN", "colour")],
    );
    p.wait_serving();
    let read = || std::fs::read_to_string(&file).unwrap_or_default();
    // The job's line carries a structured field, which is where colour codes showed.
    assert!(
        wait_until(Duration::from_secs(20), || read()
            .matches("job sees token colour")
            .count()
            >= 2),
        "{}",
        read()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).is_some());
    let log = read();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in the log file:\n{log}"
    );
    assert!(!p.stderr().contains('\u{1b}'), "{}", p.stderr());
    assert!(
        !log.contains("succeeded in"),
        "a successful run logged at info:\n{log}"
    );
}

#[test]
fn a_start_hook_error_or_panic_is_a_boot_failure_named_in_the_exit() {
    let log = gives_up_with("error", &["--workers", "1"]);
    assert!(
        log.contains("start hook failed: injected start error: database unreachable"),
        "{log}"
    );
    let log = gives_up_with("panic", &["--workers", "1"]);
    assert!(
        log.contains("start hook panicked: injected start panic"),
        "{log}"
    );
}

#[test]
fn a_start_hook_that_never_finishes_ends_at_the_boot_timeout() {
    let log = gives_up_with("pending", &["--workers", "1", "--boot-timeout", "1"]);
    assert!(
        log.contains("the start hook did not finish within --boot-timeout (1s)"),
        "{log}"
    );
}

#[test]
fn a_start_hook_that_blocks_its_thread_is_killed_at_the_boot_timeout() {
    // Nothing inside the worker can run: the master's clock ends it.
    let log = gives_up_with("block", &["--workers", "1", "--boot-timeout", "1"]);
    assert!(
        log.contains("not ready within --boot-timeout (1s)"),
        "{log}"
    );
}

/// Lines saying the stop hook ran, in `log`.
fn stop_hooks(log: &str) -> usize {
    log.matches("stop hook ran in slot").count()
}

#[test]
fn the_stop_hook_runs_on_reload_ttou_and_sigterm_but_not_on_a_fast_shutdown() {
    let mut p = hooks(&["--workers", "2"], &[]);
    p.wait_serving();
    assert_eq!(get(p.port, "/").unwrap().status, 200);
    // Reload: both old workers drain, then run the hook.
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(30), || stop_hooks(&p.stderr()) >= 2),
        "reload:\n{}",
        p.stderr()
    );
    // TTOU: the removed worker runs it.
    p.signal(libc::SIGTTOU);
    assert!(
        wait_until(Duration::from_secs(30), || stop_hooks(&p.stderr()) >= 3),
        "TTOU:\n{}",
        p.stderr()
    );
    // SIGTERM: the last worker runs it before the master exits.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).is_some());
    let log = p.stderr();
    assert_eq!(stop_hooks(&log), 4, "{log}");
    let hook = log.rfind("stop hook ran in slot").unwrap_or(0);
    let exit = log.rfind("all workers exited").unwrap_or(0);
    assert!(
        hook < exit,
        "the hook ran after the master's last line:\n{log}"
    );

    // A fast shutdown exits at once, without the hook.
    let mut p = hooks(&["--workers", "1"], &[]);
    p.wait_serving();
    p.signal(libc::SIGQUIT);
    assert!(p.wait_exit(Duration::from_secs(30)).is_some());
    assert_eq!(stop_hooks(&p.stderr()), 0, "{}", p.stderr());
}

/// Runs the example to completion (bounded) with `args`; returns status, stdout and stderr.
fn run_hooks(args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = command(&example_bin("hooks"));
    cmd.args(args).stdin(std::process::Stdio::null());
    let out = cmd.output().expect("run the example");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_app_extends_the_command_line_with_its_name_flags_and_subcommands() {
    let (code, out, _) = run_hooks(&["--version"]);
    assert_eq!((code, out.trim()), (Some(0), "hooks-demo 9.9.9"));
    let (code, out, _) = run_hooks(&["--help"]);
    assert_eq!(code, Some(0));
    for needle in [
        "An app with state and hooks",
        "--token",
        "token",
        "--workers",
        "plan",
    ] {
        assert!(out.contains(needle), "{needle:?} not in --help:\n{out}");
    }
    // The app's subcommand runs without starting a master.
    let (code, out, err) = run_hooks(&["--token", "abc", "token"]);
    assert_eq!((code, out.trim()), (Some(0), "abc"), "{err}");
    assert!(!err.contains("listening"), "{err}");
    // A bad flag is one line and status 2, as for hyperfork's own.
    let (code, _, err) = run_hooks(&["--bogus"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The app's flag reaches its state, hyperfork's flags work beside it.
    let mut p = hooks(&["--workers", "1", "--token", "from-the-flag"], &[]);
    p.wait_serving();
    let r = get(p.port, "/").expect("GET /");
    assert!(r.body.starts_with("from-the-flag 0 "), "{:?}", r.body);
}

#[test]
fn the_stop_hook_runs_when_a_worker_is_recycled() {
    let mut p = hooks(&["--workers", "1", "--max-requests", "5"], &[]);
    p.wait_serving();
    let first = p.worker_pids();
    for _ in 0..10 {
        let _ = get(p.port, "/");
    }
    assert!(
        wait_until(Duration::from_secs(30), || stop_hooks(&p.stderr()) >= 1),
        "no stop hook after the recycle:\n{}",
        p.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(30), || first.iter().all(|&w| !alive(w))),
        "{}",
        p.stderr()
    );
    assert!(p.stderr().contains("recycled"), "{}", p.stderr());
}
