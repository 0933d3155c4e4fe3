//! `hyperfork ctl` against a real master: exact resizes, `reload --wait` after a good and an aborted
//! reload, a reload refused while another runs, `upgrade --wait` handing the socket to the new
//! master, and other users refused by the file's mode and by `SO_PEERCRED`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{
    CtlServer as Server, PidGuard, Proc, command, example_bin, get, hyperfork_bin, wait_until,
};

fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    Server::start(bin, args, env)
}

impl Server {
    /// Runs `hyperfork ctl ARGS` against this server.
    fn ctl(&self, args: &[&str]) -> Output {
        command(&hyperfork_bin())
            .arg("ctl")
            .args(args)
            .args(["--control-socket", self.socket.to_str().unwrap()])
            .output()
            .expect("run hyperfork ctl")
    }

    fn status(&self) -> serde_json::Value {
        let o = self.ctl(&["status", "--json"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("status JSON")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Worker processes in `state` in a status.
fn in_state(status: &serde_json::Value, state: &str) -> usize {
    status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .filter(|w| w["state"] == state)
        .count()
}

#[test]
fn workers_remove_2_leaves_exactly_two_fewer() {
    let s = start(&hyperfork_bin(), &["--workers", "4"], &[]);
    let before = s.status();
    assert_eq!(before["pool_size"], 4);
    assert_eq!(in_state(&before, "ready"), 4);
    let o = s.ctl(&["workers", "remove", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "workers 4 -> 2\n");
    assert!(
        wait_until(Duration::from_secs(20), || s.proc.worker_pids().len() == 2),
        "{:?}",
        s.proc.worker_pids()
    );
    let after = s.status();
    assert_eq!(after["pool_size"], 2);
    assert_eq!(in_state(&after, "ready"), 2);
    let slots: Vec<u64> = after["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, [0, 1], "the highest slots went");
    // Beyond the pool's last worker: refused with the reason, nothing changes.
    let o = s.ctl(&["workers", "remove", "2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("cannot remove 2 of 2 workers"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(s.proc.worker_pids().len(), 2);
    // And back up by exactly two.
    let o = s.ctl(&["workers", "add", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        wait_until(Duration::from_secs(30), || {
            let st = s.status();
            st["pool_size"] == 4
                && in_state(&st, "ready") == 4
                && st["workers"].as_array().unwrap().len() == 4
        }),
        "{}",
        s.status()
    );
}

#[test]
fn reload_wait_answers_0_after_a_good_reload() {
    let s = start(&hyperfork_bin(), &["--workers", "2"], &[]);
    let old = s.proc.worker_pids();
    let o = s.ctl(&["reload", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "reload complete: generation 2, 2 workers\n"
    );
    // Progress on stderr: each slot's new worker.
    assert!(
        text(&o.stderr).contains("worker 0: new pid"),
        "{}",
        text(&o.stderr)
    );
    let now = s.status();
    assert_eq!(now["generation"], 2);
    for w in now["workers"].as_array().unwrap() {
        assert!(!old.contains(&(w["pid"].as_i64().unwrap() as i32)));
        assert_eq!(w["generation"], 2);
    }
}

#[test]
fn reload_wait_fails_with_the_reason_after_an_aborted_reload_and_a_second_reload_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fault = dir.path().join("fault");
    std::fs::write(&fault, "").unwrap();
    let env = format!("file:{}", fault.display());
    let s = start(
        &example_bin("faults"),
        &["--workers", "2"],
        &[("HYPERFORK_FAULT", env.as_str())],
    );
    let old = s.proc.worker_pids();
    // The next generation cannot boot.
    std::fs::write(&fault, "boot-error").unwrap();
    let first = command(&hyperfork_bin())
        .args(["ctl", "reload", "--wait", "--control-socket"])
        .arg(&s.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        s.proc
            .wait_log("reloading into generation 2", Duration::from_secs(10)),
        "{}",
        s.proc.stderr()
    );
    // A reload while this one runs (it retries the boot with a back-off for seconds) is refused.
    let second = s.ctl(&["reload"]);
    assert_eq!(second.status.code(), Some(1), "{}", text(&second.stderr));
    assert_eq!(
        text(&second.stderr),
        "hyperfork ctl: a reload is in progress; try again after it\n"
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(1), "{}", text(&first.stdout));
    let err = text(&first.stderr);
    assert!(
        err.starts_with("hyperfork ctl: reload aborted: the new worker of slot")
            && err.contains("injected boot error"),
        "{err}"
    );
    assert_eq!(
        get(s.proc.port, "/").unwrap().status,
        200,
        "the old workers serve"
    );
    assert_eq!(s.proc.worker_pids(), old);
}

#[test]
fn upgrade_wait_hands_the_control_socket_to_the_new_master() {
    let s = start(&hyperfork_bin(), &["--workers", "1"], &[]);
    let o = s.ctl(&["upgrade", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let new: i32 = out
        .split("new master (pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the new master's pid in {out:?}"));
    let _guard = PidGuard(new);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let o = s.ctl(&["status", "--json"]);
            o.status.success()
                && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .is_ok_and(|v| v["master_pid"] == new)
        }),
        "ctl reaches the new master at the same path"
    );
    assert_eq!(get(s.proc.port, "/").unwrap().status, 200);
}

/// Runs `bin ctl status --control-socket SOCKET` as uid/gid 65534 (nobody).
fn ctl_as_nobody(bin: &Path, socket: &Path) -> Output {
    let mut cmd = command(&bin.to_path_buf());
    cmd.args(["ctl", "status", "--control-socket"])
        .arg(socket)
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    common::spawn_retrying(&mut cmd).wait_with_output().unwrap()
}

#[test]
fn another_user_is_refused_by_the_mode_and_by_peer_credentials() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: running the client as another uid needs root (CI runs as root)");
        return;
    }
    // A directory everyone may enter, holding a copy of the binary nobody may run and the socket.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if !dir
        .path()
        .ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    {
        eprintln!(
            "SKIPPED: {} is not reachable by other users",
            dir.path().display()
        );
        return;
    }
    let bin = dir.path().join("hyperfork");
    std::fs::copy(hyperfork_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("hf.ctl");
    let p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "--control-socket",
            socket.to_str().unwrap(),
        ],
        &[],
    );
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is owner-only");

    let o = ctl_as_nobody(&bin, &socket);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("permission denied"),
        "{}",
        text(&o.stderr)
    );

    // Opened to everyone by hand: the master still refuses another uid.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = ctl_as_nobody(&bin, &socket);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert_eq!(
        text(&o.stderr),
        "hyperfork ctl: refused: uid 65534 may not control this server (only uid 0 or root)\n"
    );
    assert!(p.wait_log(
        "control socket: refused a connection: uid 65534",
        Duration::from_secs(10)
    ));
}
