//! Dropping privileges (`--user`, `--group`), seen from outside: the master binds a privileged port
//! as root and stays root, every worker and the jobs it runs are `nobody` in all four uids and gids,
//! requests are served, the log file belongs to the user so the workers reopen it after a rotation,
//! `--umask` reaches the workers' files, the control socket stays root's, a reload binds new unix
//! sockets for the user and a binary upgrade's workers are unprivileged too; unknown names and a
//! non-root master asking for another user are one-line usage errors.
//!
//! CI runs as root; as another user the tests that need root print why they are skipped.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// `nobody` and `nogroup` on Debian, the user the tests switch to.
const NOBODY: u32 = 65534;

/// Whether this process is root; prints why `test` is skipped when it is not.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!(
            "SKIPPED {test}: needs root to start hyperfork as root and switch the workers to \
             nobody (CI runs as root)"
        );
    }
    root
}

/// A temporary directory that `nobody` can enter and write to (tempfile creates it 0700), checked
/// up to `/`.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        usable_by_others(dir.path()),
        "{} or a directory above it is not searchable by other users; set TMPDIR to one that is",
        dir.path().display()
    );
    dir
}

/// Whether every directory from `path` up to `/` has the "other" execute bit.
fn usable_by_others(path: &Path) -> bool {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// The hyperfork binary, copied into `dir` when `nobody` cannot reach it where cargo built it.
fn binary_for_others(dir: &Path) -> PathBuf {
    let bin = hyperfork_bin();
    if usable_by_others(&bin) {
        return bin;
    }
    let copy = dir.join("hyperfork");
    std::fs::copy(&bin, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// A free port below 1024, which only root may bind.
fn privileged_port() -> u16 {
    let start = 600 + (std::process::id() % 400) as u16;
    (start..1024)
        .chain(600..start)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port between 600 and 1023")
}

/// The ids on a line of `/proc/PID/status` (`Uid`, `Gid`: real, effective, saved, filesystem;
/// `Groups`: the supplementary groups).
fn ids(pid: i32, line: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{line}:")))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// Asserts that `pid` runs as nobody/nogroup in all four uids and gids, with nogroup as its only
/// supplementary group.
fn assert_nobody(pid: i32, what: &str, log: &str) {
    assert_eq!(
        ids(pid, "Uid"),
        [NOBODY; 4],
        "{what} (pid {pid}) uids\n{log}"
    );
    assert_eq!(
        ids(pid, "Gid"),
        [NOBODY; 4],
        "{what} (pid {pid}) gids\n{log}"
    );
    assert_eq!(
        ids(pid, "Groups"),
        [NOBODY],
        "{what} (pid {pid}) groups\n{log}"
    );
}

/// Runs hyperfork with `args` and `env` (as `uid`, if given) until it exits, at most 30 s (a server
/// that starts instead of failing listens on a free port and is killed); returns the exit code and
/// stderr.
fn run(bin: &PathBuf, args: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> (i32, String) {
    let port = free_port();
    let mut cmd = command(bin);
    cmd.arg("--port").arg(port.to_string()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(id) = uid {
        cmd.uid(id).gid(id);
    }
    let mut p = Proc::start(cmd, port);
    let status = p.wait_exit(Duration::from_secs(30));
    let stderr = p.stderr();
    let status = status.unwrap_or_else(|| panic!("still running after 30 s:\n{stderr}"));
    (status.code().unwrap_or(-1), stderr)
}

/// Asserts a usage error: exit status 2 and one line on stderr that contains every `needle`.
fn assert_usage_error(result: (i32, String), needles: &[&str]) {
    let (code, stderr) = result;
    assert_eq!(code, 2, "exit status; stderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{n:?} missing from:\n{stderr}");
    }
}

#[test]
fn workers_jobs_and_the_log_file_are_nobodys_on_a_port_bound_as_root() {
    if !root_or_skip("workers_jobs_and_the_log_file_are_nobodys_on_a_port_bound_as_root") {
        return;
    }
    let dir = shared_dir();
    let d = dir.path();
    let (log, job_out, job_file, ctl) = (
        d.join("hf.log"),
        d.join("job.out"),
        d.join("job.file"),
        d.join("ctl.sock"),
    );
    let config = d.join("hyperfork.toml");
    std::fs::write(
        &config,
        format!(
            "[[jobs]]\nname = \"whoami\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", \
             \"echo \\\"$(id -u) $(id -g) $(id -G) $HOME $USER\\\" > {out}; touch {file}\"]\n",
            out = job_out.display(),
            file = job_file.display()
        ),
    )
    .unwrap();
    let port = privileged_port();
    let bin = hyperfork_bin();
    let mut cmd = command(&bin);
    cmd.args(["--user", "nobody", "--host", "127.0.0.1", "--workers", "2"])
        .args(["--umask", "027", "--graceful-timeout", "5s"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--log-file")
        .arg(&log)
        .arg("--control-socket")
        .arg(&ctl)
        .arg("--config")
        .arg(&config);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || log_text()
            .contains("all 2 workers ready")),
        "the pool never got ready\n{}{}",
        p.stderr(),
        log_text()
    );

    // The master bound port {port} as root and stays root.
    assert_eq!(ids(p.pid(), "Uid"), [0; 4], "the master's uids");
    assert!(
        log_text().contains(
            "the workers and their jobs run as user nobody (uid 65534), group nogroup (gid 65534)"
        ),
        "{}",
        log_text()
    );
    // Every worker is nobody, for good, and serves.
    let workers = p.worker_pids();
    assert_eq!(workers.len(), 2, "{workers:?}");
    for &w in &workers {
        assert_nobody(w, "worker", &log_text());
    }
    for _ in 0..6 {
        let r = get(port, "/health").expect("GET /health");
        assert_eq!(r.status, 200);
        let (_, pid) = health_identity(&r);
        assert!(workers.contains(&(pid as i32)), "answered by {pid}");
    }

    // The job ran in worker 0 as nobody, with the user's HOME and USER, under the umask.
    assert!(
        wait_until(Duration::from_secs(20), || job_file.exists()
            && std::fs::read_to_string(&job_out)
                .is_ok_and(|s| s.ends_with('\n'))),
        "the job never ran\n{}",
        log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&job_out).unwrap().trim(),
        "65534 65534 65534 /nonexistent nobody"
    );
    let meta = std::fs::metadata(&job_file).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (NOBODY, NOBODY),
        "the job's file owner"
    );
    assert_eq!(
        meta.mode() & 0o777,
        0o640,
        "the job's file under --umask 027"
    );

    // The log file belongs to nobody (the master created it under the umask); the workers wrote
    // their lines, access lines included, and reopen it after a rotation.
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (NOBODY, NOBODY, 0o640)
    );
    assert!(
        wait_until(Duration::from_secs(10), || log_text()
            .contains("\"GET /health HTTP/1.1\" 200")),
        "no access line\n{}",
        log_text()
    );
    std::fs::rename(&log, d.join("hf.log.1")).unwrap();
    p.signal(libc::SIGUSR1);
    for &w in &workers {
        let line = format!("pid {w}] reopened the log file {}", log.display());
        assert!(
            wait_until(Duration::from_secs(10), || log_text().contains(&line)),
            "worker {w} did not reopen the rotated log file\n{}{}",
            p.stderr(),
            log_text()
        );
    }
    assert_eq!(
        std::fs::metadata(&log).unwrap().uid(),
        NOBODY,
        "the new log file's owner"
    );

    // The control socket stays root's: root is served, nobody is not.
    let meta = std::fs::symlink_metadata(&ctl).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o600),
        "the control socket"
    );
    let ctl_arg = ctl.to_str().unwrap();
    let (code, stderr) = run(
        &bin,
        &["ctl", "status", "--control-socket", ctl_arg],
        &[],
        None,
    );
    assert_eq!(code, 0, "ctl status as root\n{stderr}");
    let other_bin = binary_for_others(d);
    let (code, stderr) = run(
        &other_bin,
        &["ctl", "status", "--control-socket", ctl_arg],
        &[],
        Some(NOBODY),
    );
    assert_ne!(code, 0, "ctl status as nobody was served");
    assert!(stderr.contains("ermission denied"), "{stderr}");

    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        log_text()
    );
}

#[test]
fn a_reload_binds_new_unix_sockets_for_the_user_and_an_upgrades_workers_are_unprivileged() {
    if !root_or_skip(
        "a_reload_binds_new_unix_sockets_for_the_user_and_an_upgrades_workers_are_unprivileged",
    ) {
        return;
    }
    let dir = shared_dir();
    let port = free_port();
    let sock = dir.path().join("app.sock");
    let config = dir.path().join("hyperfork.toml");
    // The user from the TOML file, as an integer uid.
    let body = |binds: &str| format!("user = 65534\nworkers = 1\nbind = [{binds}]\n");
    let tcp = format!("\"127.0.0.1:{port}\"");
    std::fs::write(&config, body(&tcp)).unwrap();
    let mut cmd = command(&hyperfork_bin());
    cmd.arg("--config").arg(&config);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    for w in p.worker_pids() {
        assert_nobody(w, "worker", &p.stderr());
    }

    // A reload adds a unix socket: the root master binds it and gives it to the user.
    std::fs::write(
        &config,
        body(&format!("{tcp}, \"unix:{}\"", sock.display())),
    )
    .unwrap();
    p.reload(1);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (NOBODY, NOBODY, 0o660),
        "the new socket's owner and mode"
    );
    let answer = {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for w in p.worker_pids() {
        assert_nobody(w, "worker after the reload", &p.stderr());
    }

    // A binary upgrade: the new master is root again, its workers nobody, and it serves.
    let new = p.upgrade_from_log();
    assert_eq!(ids(new.0, "Uid"), [0; 4], "the new master's uids");
    assert!(
        wait_until(Duration::from_secs(20), || children_of(new.0).len() == 1
            && get(port, "/health").is_ok_and(
                |r| r.status == 200 && health_identity(&r).1 == children_of(new.0)[0] as u64
            )),
        "the new master's worker never answered\n{}",
        p.stderr()
    );
    for w in children_of(new.0) {
        assert_nobody(w, "the new master's worker", &p.stderr());
    }
}

#[test]
fn unknown_users_and_groups_are_usage_errors_naming_them_and_their_source() {
    let bin = hyperfork_bin();
    assert_usage_error(
        run(&bin, &["--user", "no-such-user-hf"], &[], None),
        &["unknown user \"no-such-user-hf\" (from --user)"],
    );
    assert_usage_error(
        run(&bin, &["-u", "nobody", "-g", "no-such-group-hf"], &[], None),
        &["unknown group \"no-such-group-hf\" (from --group)"],
    );
    assert_usage_error(
        run(&bin, &[], &[("HYPERFORK_USER", "no-such-user-hf")], None),
        &["unknown user \"no-such-user-hf\" (from env HYPERFORK_USER)"],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hyperfork.toml");
    std::fs::write(&config, "group = \"no-such-group-hf\"\n").unwrap();
    assert_usage_error(
        run(&bin, &["--config", config.to_str().unwrap()], &[], None),
        &["unknown group \"no-such-group-hf\"", "key `group`"],
    );
    assert_usage_error(
        run(&bin, &["--user", "3999999999"], &[], None),
        &[
            "uid 3999999999 (from --user) has no entry",
            "give --group too",
        ],
    );
}

#[test]
fn asking_for_another_user_without_root_is_a_usage_error() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // As root, the server is started as nobody; otherwise it runs as this user.
    let (bin, uid, current) = if root {
        assert!(usable_by_others(dir.path()), "{}", dir.path().display());
        (
            binary_for_others(dir.path()),
            Some(NOBODY),
            "uid 65534 (nobody)".to_string(),
        )
    } else {
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        (hyperfork_bin(), None, format!("uid {me}"))
    };
    assert_usage_error(
        run(&bin, &["--user", "root"], &[], uid),
        &[
            "user \"root\" (from --user): switching the workers to another user needs root",
            &format!("this process runs as {current}"),
        ],
    );
    if root {
        // The current account is accepted and changes nothing.
        let port = free_port();
        let mut cmd = command(&bin);
        cmd.args(["--user", "nobody", "--group", "nogroup", "--workers", "1"])
            .arg("--port")
            .arg(port.to_string())
            .current_dir(dir.path())
            .uid(NOBODY)
            .gid(NOBODY);
        let mut p = Proc::start(cmd, port);
        p.wait_serving();
        assert!(
            p.stderr()
                .contains("already running as user nobody (uid 65534)"),
            "{}",
            p.stderr()
        );
        // Nothing was switched: the ids are those the test started it with (and std's spawn
        // cleared the supplementary groups).
        for w in p.worker_pids() {
            assert_eq!(ids(w, "Uid"), [NOBODY; 4], "worker {w}\n{}", p.stderr());
            assert_eq!(ids(w, "Gid"), [NOBODY; 4], "worker {w}\n{}", p.stderr());
        }
    }
}

#[test]
fn a_log_file_the_user_cannot_reach_stops_the_start() {
    if !root_or_skip("a_log_file_the_user_cannot_reach_stops_the_start") {
        return;
    }
    // A directory of root's that nobody cannot enter.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let log = dir.path().join("hf.log");
    let result = run(
        &hyperfork_bin(),
        &["--user", "nobody", "--log-file", log.to_str().unwrap()],
        &[],
        None,
    );
    assert_usage_error(
        result,
        &[
            &format!("the log file {} cannot be opened", log.display()),
            "user nobody (uid 65534)",
            "Permission denied",
        ],
    );
}
