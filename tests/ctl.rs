//! `hyperfork ctl` against no master, a dead socket and a fake master played by the test: the path
//! each setting leads to, the messages, the output and the exit status of the real binary.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{command, hyperfork_bin};

/// Runs `hyperfork ARGS` with `env` and none of the variables that choose the control socket.
fn ctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(&hyperfork_bin());
    for var in [
        "HYPERFORK_CONTROL_SOCKET",
        "HYPERFORK_PID",
        "RUNTIME_DIRECTORY",
        "XDG_RUNTIME_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("run hyperfork")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Files left in `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read the temporary directory")
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// A fake master on `path`: accepts one connection, reads the request line, writes `lines`, closes.
/// Returns the request line.
fn fake_master(path: &Path, lines: Vec<String>) -> JoinHandle<String> {
    let listener = UnixListener::bind(path).expect("bind the fake master's socket");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(stream);
        let mut request = String::new();
        reader.read_line(&mut request).expect("read the request");
        let mut stream = reader.into_inner();
        for l in lines {
            stream.write_all(l.as_bytes()).expect("write a reply");
        }
        request
    })
}

#[test]
fn a_missing_socket_names_the_path_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.ctl");
    let o = ctl(
        &["ctl", "status", "--control-socket", path.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "hyperfork ctl: control socket {} does not exist: is the server running, and with the \
             same --control-socket/--pid/RUNTIME_DIRECTORY?\n",
            path.display()
        )
    );
    assert!(stdout(&o).is_empty());
    assert!(files_in(dir.path()).is_empty(), "ctl created a file");
}

#[test]
fn a_socket_without_a_listener_is_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.ctl");
    drop(UnixListener::bind(&path).unwrap());
    let o = ctl(
        &["ctl", "reload"],
        &[("HYPERFORK_CONTROL_SOCKET", path.to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "hyperfork ctl: no master is listening on the control socket {} (connection refused)\n",
            path.display()
        )
    );
}

#[test]
fn the_path_follows_the_same_settings_as_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let toml = dir.path().join("h.toml");
    std::fs::write(&toml, format!("control_socket = \"{d}/from-file.ctl\"\n")).unwrap();
    // The command line, the environment, the path the message must name.
    type Case<'a> = (Vec<String>, Vec<(&'a str, String)>, String);
    let cases: Vec<Case> = vec![
        (
            vec![
                "--pid".into(),
                format!("{d}/app.pid"),
                "ctl".into(),
                "status".into(),
            ],
            vec![],
            format!("{d}/app.ctl"),
        ),
        (
            vec!["ctl".into(), "status".into()],
            vec![("HYPERFORK_PID", format!("{d}/app.pid"))],
            format!("{d}/app.ctl"),
        ),
        (
            vec![
                "ctl".into(),
                "status".into(),
                "--pid".into(),
                format!("{d}/x.pid"),
            ],
            vec![("RUNTIME_DIRECTORY", format!("{d}:/elsewhere"))],
            format!("{d}/hyperfork.ctl"),
        ),
        (
            vec![
                "--port".into(),
                "9123".into(),
                "ctl".into(),
                "status".into(),
            ],
            vec![("XDG_RUNTIME_DIR", d.to_string())],
            format!("{d}/hyperfork-127.0.0.1_9123.ctl"),
        ),
        (
            vec![
                "-c".into(),
                toml.to_str().unwrap().into(),
                "ctl".into(),
                "stop".into(),
            ],
            vec![("RUNTIME_DIRECTORY", "/elsewhere".into())],
            format!("{d}/from-file.ctl"),
        ),
    ];
    for (args, env, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = ctl(&args, &env);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("control socket {want} does not exist")),
            "{args:?} {env:?}: {}",
            stderr(&o)
        );
    }
    assert_eq!(files_in(dir.path()), vec![toml], "ctl created a file");
}

#[test]
fn a_path_too_long_for_a_socket_is_a_usage_error() {
    let long = format!("/tmp/{}.ctl", "x".repeat(110));
    let o = ctl(&["ctl", "status", "--control-socket", &long], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&long) && e.contains("at most 107 bytes") && e.lines().count() == 1,
        "{e}"
    );
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["ctl", "workers", "remove", "0"][..],
        &["ctl", "frob"],
        &["ctl", "workers", "add"],
        &["ctl", "status", "--timeout", "soon"],
    ] {
        let o = ctl(args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("hyperfork: "), "{}", stderr(&o));
    }
    let o = ctl(&["ctl", "workers", "remove", "0"], &[]);
    assert!(
        stderr(&o).contains("expected a number of workers, 1 or more"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn progress_goes_to_stderr_and_the_answer_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ctl");
    let master = fake_master(
        &path,
        vec![
            "{\"reply\":\"progress\",\"message\":\"slot 0: new worker ready\"}\n".into(),
            "{\"reply\":\"done\",\"ok\":true,\"message\":\"reload complete: generation 2\"}\n"
                .into(),
        ],
    );
    let o = ctl(
        &[
            "ctl",
            "reload",
            "--wait",
            "--control-socket",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "reload complete: generation 2\n");
    assert_eq!(stderr(&o), "slot 0: new worker ready\n");
    assert_eq!(
        master.join().unwrap(),
        "{\"command\":\"reload\",\"wait\":true}\n"
    );
}

#[test]
fn a_refusal_is_one_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ctl");
    let master = fake_master(
        &path,
        vec!["{\"reply\":\"done\",\"ok\":false,\"message\":\"a reload is in progress\"}\n".into()],
    );
    let o = ctl(
        &[
            "ctl",
            "workers",
            "remove",
            "2",
            "--control-socket",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "hyperfork ctl: a reload is in progress\n");
    assert!(stdout(&o).is_empty());
    assert_eq!(
        master.join().unwrap(),
        "{\"command\":\"workers\",\"change\":-2}\n"
    );
}

#[test]
fn status_prints_a_table_or_json() {
    let status = r#"{"master_pid":7,"version":"0.0.0","generation":3,"phase":"running","pool_size":1,"uptime_seconds":61.0,"scheduler_holder":8,"listeners":[{"address":"127.0.0.1:8000","queued":0,"backlog":2048}],"workers":[{"slot":0,"pid":8,"state":"ready","age_seconds":61.0,"generation":3,"requests":5,"in_flight":0,"open_connections":1,"rss_bytes":2097152,"cpu_seconds":0.1,"cpu_percent":0.0,"heartbeat_age_seconds":0.2,"scheduler":true}]}"#;
    let line = format!("{{\"reply\":\"done\",\"ok\":true,\"message\":\"\",\"data\":{status}}}\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.ctl");
    let master = fake_master(&path, vec![line.clone()]);
    let o = ctl(
        &["ctl", "status", "--control-socket", path.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("master:   pid 7, version 0.0.0 (this ctl: "),
        "{out}"
    );
    assert!(
        out.contains("listener: 127.0.0.1:8000, queued 0/2048"),
        "{out}"
    );
    let row = out.lines().last().unwrap();
    assert!(row.contains("2.0 MiB") && row.ends_with('*'), "{out}");
    assert_eq!(master.join().unwrap(), "{\"command\":\"status\"}\n");
    std::fs::remove_file(&path).unwrap();

    let master = fake_master(&path, vec![line]);
    let o = ctl(
        &[
            "ctl",
            "status",
            "--json",
            "--control-socket",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let want: serde_json::Value = serde_json::from_str(status).unwrap();
    assert_eq!(json, want);
    master.join().unwrap();
}

#[test]
fn a_silent_master_times_out_and_a_vanished_one_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.ctl");
    // Accepts into its queue but never answers.
    let _listener = UnixListener::bind(&path).unwrap();
    let start = Instant::now();
    let o = ctl(
        &[
            "ctl",
            "stop",
            "--timeout",
            "300ms",
            "--control-socket",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "hyperfork ctl: no answer from the master within 300ms (--timeout)\n"
    );

    let path = dir.path().join("gone.ctl");
    let master = fake_master(&path, vec![]);
    let o = ctl(
        &[
            "ctl",
            "reopen-logs",
            "--control-socket",
            path.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "hyperfork ctl: the master closed the connection before answering\n"
    );
    assert_eq!(master.join().unwrap(), "{\"command\":\"reopen-logs\"}\n");
}

/// Whether every directory above `path` lets other users through, and `path` itself too.
fn reachable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

#[test]
fn another_users_socket_is_permission_denied_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED another_users_socket_is_permission_denied_with_the_reason: needs root to run \
             the client under another uid (CI runs as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if !reachable_by_others(dir.path()) {
        eprintln!(
            "SKIPPED another_users_socket_is_permission_denied_with_the_reason: {} is not \
             reachable by other users; set TMPDIR to a directory that is",
            dir.path().display()
        );
        return;
    }
    let bin = dir.path().join("hyperfork");
    std::fs::copy(hyperfork_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("root.ctl");
    let _listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = command(&bin);
    cmd.args(["ctl", "status", "--control-socket", path.to_str().unwrap()])
        .current_dir(dir.path())
        .uid(65534)
        .gid(65534);
    let o = common::spawn_retrying(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )
    .wait_with_output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "hyperfork ctl: cannot connect to the control socket {}: permission denied (it is \
             0600, owned by the server's user; run as that user or root)\n",
            path.display()
        )
    );
}
