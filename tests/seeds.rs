//! The seeds' uvicorn command lines, copied verbatim from their documents (the analyticbot worker
//! guide and the Marzneshin multi-core notes), run with `uvicorn apps.api.main:app` replaced by
//! `hyperfork` and the port 11400 by a free one: each must start and serve a request.
//!
//! The development command (`--reload`) runs one worker, as uvicorn's does.

mod common;

use std::process::Command;

use common::*;

/// Every command, as the seed writes it (line continuations included).
const COMMANDS: &[&str] = &[
    // Configuration by use case: Staging/Testing.
    "uvicorn apps.api.main:app \\
  --host 0.0.0.0 \\
  --port 11400 \\
  --workers 4 \\
  --log-level info",
    // Production (Recommended).
    "uvicorn apps.api.main:app \\
  --host 0.0.0.0 \\
  --port 11400 \\
  --workers 6 \\
  --log-level info \\
  --timeout-keep-alive 65 \\
  --limit-concurrency 1000 \\
  --backlog 2048",
    // High Traffic Production.
    "uvicorn apps.api.main:app \\
  --host 0.0.0.0 \\
  --port 11400 \\
  --workers 8 \\
  --log-level warning \\
  --timeout-keep-alive 65 \\
  --limit-concurrency 2000 \\
  --backlog 4096",
    // Quick start: 4 and 6 workers.
    "uvicorn apps.api.main:app --host 0.0.0.0 --port 11400 --workers 4",
    "uvicorn apps.api.main:app --host 0.0.0.0 --port 11400 --workers 6",
    // Migration plan, phases 1 and 2.
    "uvicorn apps.api.main:app --workers 4 --port 11400",
    "uvicorn apps.api.main:app --workers 6 --port 11400",
    // Best configuration.
    "uvicorn apps.api.main:app \\
  --host 0.0.0.0 \\
  --port 11400 \\
  --workers 6 \\
  --timeout-keep-alive 65 \\
  --limit-concurrency 1000 \\
  --log-level info",
];

/// The systemd unit's ExecStart, as the seed writes it.
const EXEC_START: &str = "/home/analyticbot/analyticbot/.venv/bin/uvicorn \\
    apps.api.main:app \\
    --host 0.0.0.0 \\
    --port 11400 \\
    --workers 4 \\
    --log-level info \\
    --timeout-keep-alive 65 \\
    --limit-concurrency 1000 \\
    --backlog 2048";

/// Runs `line` with a shell, the binary's directory first in PATH, and checks it serves; returns the
/// number of workers it started (`None` when the log level hides the line that says so).
fn serves(line: &str) -> Option<usize> {
    let port = free_port();
    let line = line.replace("11400", &port.to_string());
    let bin = hyperfork_bin();
    let dir = bin.parent().expect("binary directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd: Command = command(&"sh".into());
    cmd.env("PATH", path).arg("-c").arg(format!("exec {line}"));
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    let r = get(port, "/").unwrap_or_else(|e| panic!("{line}: {e}\n{}", p.stderr()));
    assert_eq!(r.status, 200, "{line}");
    let log = p.stderr();
    let started = log
        .split("starting ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok());
    assert!(
        started.is_some() || line.contains("--log-level warning"),
        "{line}: no 'starting N workers' line:\n{log}"
    );
    started
}

#[test]
fn the_seeds_commands_serve_with_hyperfork_in_place_of_uvicorn() {
    for seed in COMMANDS {
        let line = seed.replace("uvicorn apps.api.main:app", "hyperfork");
        assert!(!line.contains("uvicorn"), "{line}");
        let want: usize = line
            .split("--workers ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("a worker count");
        if let Some(started) = serves(&line) {
            assert_eq!(started, want, "{line}");
        }
    }
}

#[test]
fn the_seeds_systemd_exec_start_serves() {
    let line = EXEC_START.replace(
        "/home/analyticbot/analyticbot/.venv/bin/uvicorn \\\n    apps.api.main:app",
        "hyperfork",
    );
    assert!(line.starts_with("hyperfork \\\n    --host"), "{line}");
    assert_eq!(serves(&line), Some(4));
}

#[test]
fn the_seeds_dotenv_sets_the_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join(".env");
    // Marzneshin's .env, as its notes write it.
    std::fs::write(
        &env,
        "# .env file\nUVICORN_WORKERS=4  # Use exactly 4 workers\n",
    )
    .unwrap();
    let line = format!("hyperfork --env-file {} --port 11400", env.display());
    assert_eq!(serves(&line), Some(4));
    // "Leave empty for auto-calculation".
    std::fs::write(
        &env,
        "# .env\nUVICORN_WORKERS=  # Leave empty for auto-calculation\n",
    )
    .unwrap();
    let line = format!(
        "hyperfork --env-file {} --port 11400 --max-workers 2",
        env.display()
    );
    assert_eq!(serves(&line), Some(2));
}

/// The development command, as the seed writes it: `--reload` and one worker.
const DEVELOPMENT: &str = "uvicorn apps.api.main:app \\
  --host 0.0.0.0 \\
  --port 11400 \\
  --reload \\
  --log-level debug";

#[test]
fn the_seeds_development_command_serves_with_one_worker() {
    let line = DEVELOPMENT.replace("uvicorn apps.api.main:app", "hyperfork");
    assert_eq!(serves(&line), Some(1), "{line}");
}
