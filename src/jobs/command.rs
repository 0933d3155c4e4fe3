//! Running a command job: a child process of the scheduling worker, its output logged line by line.
//!
//! The child gets `HYPERFORK_JOB`, `HYPERFORK_WORKER_ID`, `HYPERFORK_SCHEDULED_AT` (RFC 3339) and, with a
//! job store, `HYPERFORK_FENCE_TOKEN` (the run's fencing token, see [`crate::jobs::Fence`]), runs
//! in its own process group (so a timeout kills the whole group, e.g. `sh -c` and what it starts), and
//! asks for `SIGKILL` when the worker dies, so no run outlives the lease holder.

use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::app::Worker;

/// Runs `argv` to completion (or until `timeout`) and describes the outcome.
pub(crate) async fn run(
    name: &str,
    argv: &[String],
    tick: DateTime<Utc>,
    worker: &Worker,
    timeout: Option<Duration>,
    token: Option<i64>,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("HYPERFORK_JOB", name)
        .env("HYPERFORK_WORKER_ID", worker.slot().to_string())
        .env(
            "HYPERFORK_SCHEDULED_AT",
            tick.to_rfc3339_opts(SecondsFormat::Millis, true),
        )
        .stdin(Stdio::null())
        .env_remove("HYPERFORK_FENCE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(token) = token {
        cmd.env("HYPERFORK_FENCE_TOKEN", token.to_string());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let pid = child.id();
    forward_output(name, &mut child);
    let status = match timeout {
        None => child.wait().await,
        Some(t) => match tokio::time::timeout(t, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                if let Some(pid) = pid {
                    // Kill the whole process group the child leads.
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.wait().await;
                return Err(format!(
                    "timed out after {}; killed",
                    humantime::format_duration(t)
                ));
            }
        },
    }
    .map_err(|e| format!("cannot wait for {program:?}: {e}"))?;
    outcome(status)
}

/// Logs the command's output, a line at a time: stdout at info, stderr at warn.
fn forward_output(name: &str, child: &mut tokio::process::Child) {
    if let Some(out) = child.stdout.take() {
        let job = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!("job {job:?} stdout: {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let job = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!("job {job:?} stderr: {line}");
            }
        });
    }
}

/// The run's outcome from the command's exit status.
fn outcome(status: std::process::ExitStatus) -> Result<(), String> {
    if status.success() {
        Ok(())
    } else if let Some(code) = status.code() {
        Err(format!("exited with status {code}"))
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(format!(
            "killed by signal {}",
            status.signal().unwrap_or_default()
        ))
    }
}
