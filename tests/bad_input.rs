//! Every bad input stops hyperfork before any worker is forked, with one line naming the input and
//! what was expected, and a non-zero exit (2 for usage errors).

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// Runs hyperfork to completion (bounded), with extra environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(&hyperfork_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::null());
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > Duration::from_secs(20) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("hyperfork {args:?} did not exit on bad input");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap()
}

/// Asserts the exit code and that stderr is exactly one line containing every needle.
fn assert_one_line_error(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {:?}", lines[0]);
    }
    assert!(!stderr.contains("booting worker"));
}

#[test]
fn workers_zero() {
    let out = run(&["--workers", "0"], &[]);
    assert_one_line_error(&out, 2, &["--workers", "positive integer", "\"0\""]);
}

#[test]
fn log_level_unknown_names_the_choices() {
    let out = run(&["--log-level", "warn"], &[]);
    assert_one_line_error(
        &out,
        2,
        &["--log-level", "'warn'", "expected one of:", "warning"],
    );
}

#[test]
fn workers_not_a_number() {
    let out = run(&["--workers", "abc"], &[]);
    assert_one_line_error(&out, 2, &["--workers", "positive integer", "abc"]);
}

#[test]
fn uvicorn_workers_env_bad_values() {
    for bad in ["abc", "0", "-1"] {
        let out = run(&[], &[("UVICORN_WORKERS", bad)]);
        assert_one_line_error(&out, 2, &["UVICORN_WORKERS", "positive integer", bad]);
    }
    let out = run(&[], &[("WEB_CONCURRENCY", "lots")]);
    assert_one_line_error(&out, 2, &["WEB_CONCURRENCY", "lots"]);
}

#[test]
fn unknown_toml_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "port = 8000\nwrokers = 4\n").unwrap();
    let p = path.to_str().unwrap();
    let out = run(&["--config", p], &[]);
    assert_one_line_error(&out, 2, &[p, ":2:", "wrokers", "workers"]);
}

#[test]
fn wrong_toml_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "# sizing\n\nworkers = \"four\"\n").unwrap();
    let p = path.to_str().unwrap();
    let out = run(&["--config", p], &[]);
    assert_one_line_error(&out, 2, &[p, ":3:", "workers", "integer"]);
    std::fs::write(&path, "port = 8000\nmax_workers = 0\n").unwrap();
    let out = run(&["--config", p], &[]);
    assert_one_line_error(&out, 2, &[p, ":2:", "max_workers", "positive integer"]);
}

#[test]
fn missing_config_file() {
    let out = run(&["--config", "/nonexistent/hyperfork.toml"], &[]);
    assert_one_line_error(
        &out,
        2,
        &["/nonexistent/hyperfork.toml", "cannot read config file"],
    );
    let out = run(&[], &[("HYPERFORK_CONFIG", "/nonexistent/env.toml")]);
    assert_one_line_error(&out, 2, &["/nonexistent/env.toml"]);
}

#[test]
fn port_already_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = run(&["--port", &port, "--log-level", "error"], &[]);
    assert_one_line_error(&out, 1, &[&format!("127.0.0.1:{port}"), "in use"]);
}

#[test]
fn log_file_in_a_missing_directory() {
    let out = run(
        &[
            "--log-file",
            "/nonexistent-dir/hyperfork.log",
            "--port",
            "0",
        ],
        &[],
    );
    assert_one_line_error(
        &out,
        1,
        &["cannot open the log file /nonexistent-dir/hyperfork.log"],
    );
}

#[test]
fn unbindable_host() {
    // 192.0.2.1 is TEST-NET-1: never an address of this machine.
    let port = free_port().to_string();
    let out = run(
        &[
            "--host",
            "192.0.2.1",
            "--port",
            &port,
            "--log-level",
            "error",
        ],
        &[],
    );
    assert_one_line_error(&out, 1, &[&format!("192.0.2.1:{port}"), "cannot listen"]);
}

#[test]
fn unix_socket_in_a_missing_directory() {
    let out = run(
        &[
            "--bind",
            "unix:/nonexistent-dir/app.sock",
            "--log-level",
            "error",
        ],
        &[],
    );
    assert_one_line_error(
        &out,
        1,
        &[
            "unix:/nonexistent-dir/app.sock",
            "/nonexistent-dir",
            "does not exist",
        ],
    );
}

#[test]
fn bad_socket_mode_and_umask() {
    let out = run(&["--socket-mode", "9x9"], &[]);
    assert_one_line_error(&out, 2, &["--socket-mode", "9x9", "octal", "0660"]);
    let out = run(&["--umask", "1000"], &[]);
    assert_one_line_error(&out, 2, &["--umask", "1000", "at most 0777"]);
    let out = run(&["--port", "0"], &[("HYPERFORK_SOCKET_MODE", "u+rw")]);
    assert_one_line_error(&out, 2, &["HYPERFORK_SOCKET_MODE", "u+rw", "octal"]);
    let out = run(&["--port", "0"], &[("HYPERFORK_UMASK", "0x1f")]);
    assert_one_line_error(&out, 2, &["HYPERFORK_UMASK", "0x1f", "octal"]);
}

#[test]
fn toml_socket_mode_must_be_a_quoted_octal_string() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let p = path.to_str().unwrap();
    // TOML reads an unquoted 660 as decimal 660 (0o1224): refused, with the fix.
    std::fs::write(&path, "workers = 1\nsocket_mode = 660\n").unwrap();
    let out = run(&["--config", p], &[]);
    assert_one_line_error(&out, 2, &[p, ":2:", "socket_mode", "660", "quote"]);
    std::fs::write(&path, "umask = \"9x9\"\n").unwrap();
    let out = run(&["--config", p], &[]);
    assert_one_line_error(&out, 2, &[p, ":1:", "umask", "\"9x9\"", "0660"]);
}

#[test]
fn malformed_bind_address() {
    // `localhost` alone is gunicorn's HOST form (port 8000); a port that is not a number is not.
    let out = run(&["--bind", "localhost:http"], &[]);
    assert_one_line_error(&out, 2, &["\"localhost:http\"", "--bind", "HOST:PORT"]);
}

#[test]
fn bad_env_port_and_log_level() {
    let out = run(&[], &[("HYPERFORK_PORT", "99999")]);
    assert_one_line_error(&out, 2, &["HYPERFORK_PORT", "99999"]);
    let out = run(&[], &[("HYPERFORK_LOG_LEVEL", "loud")]);
    assert_one_line_error(&out, 2, &["HYPERFORK_LOG_LEVEL", "loud"]);
}

#[test]
fn unknown_flag() {
    let out = run(&["--wrokers", "2"], &[]);
    assert_one_line_error(&out, 2, &["--wrokers"]);
}

#[test]
fn help_and_version_exit_zero() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--workers"));
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn bad_sizes_and_limits() {
    let out = run(&["--max-worker-memory", "lots"], &[]);
    assert_one_line_error(&out, 2, &["--max-worker-memory", "64MiB", "lots"]);
    let out = run(&["--limit-request-header-size", "1KiB", "--port", "0"], &[]);
    assert_one_line_error(
        &out,
        2,
        &["--limit-request-header-size", "at least 8.0 KiB"],
    );
    let out = run(&["--port", "0"], &[("HYPERFORK_MAX_REQUESTS", "-3")]);
    assert_one_line_error(&out, 2, &["HYPERFORK_MAX_REQUESTS", "-3"]);
}
