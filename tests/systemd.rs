//! systemd integration seen from outside: notifications, socket activation, pid file, and the
//! connection limits the seed unit sets.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Collects every datagram sent to a NOTIFY_SOCKET the test listens on, with the sender's pid (from
/// `SCM_CREDENTIALS`, as systemd reads it).
struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<(i32, String)>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        setsockopt(&sock, sockopt::PassCred, &true).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with the test process; reads are bounded by the timeout.
            loop {
                let mut cmsg = nix::cmsg_space!(libc::ucred);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) else {
                    continue;
                };
                let pid = msg
                    .cmsgs()
                    .ok()
                    .into_iter()
                    .flatten()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                        _ => None,
                    })
                    .unwrap_or(0);
                let n = msg.bytes;
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((pid, text));
            }
        });
        NotifySocket {
            path,
            messages,
            _dir: dir,
        }
    }

    /// Messages other than plain STATUS= / EXTEND_TIMEOUT_USEC= updates.
    fn lifecycle(&self) -> Vec<String> {
        self.lifecycle_from().into_iter().map(|(_, m)| m).collect()
    }

    /// Like [`NotifySocket::lifecycle`], with each sender's pid.
    fn lifecycle_from(&self) -> Vec<(i32, String)> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| !m.starts_with("STATUS=") && !m.starts_with("EXTEND_TIMEOUT_USEC="))
            .cloned()
            .collect()
    }
}

#[test]
fn notify_socket_gets_ready_reloading_and_stopping() {
    let notify = NotifySocket::new();
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "2"],
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    assert!(wait_until(Duration::from_secs(20), || !notify
        .lifecycle()
        .is_empty()));
    assert_eq!(
        notify.lifecycle()[0],
        "READY=1\nSTATUS=2/2 workers ready, generation 1\n"
    );
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(30), || notify.lifecycle().len() >= 3),
        "{:?}",
        notify.lifecycle()
    );
    let msgs = notify.lifecycle();
    let reloading: Vec<&str> = msgs[1].lines().collect();
    assert_eq!(reloading.len(), 3, "{msgs:?}");
    assert_eq!(reloading[0], "RELOADING=1");
    let usec: u64 = reloading[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(reloading[2], "STATUS=reloading");
    assert_eq!(msgs[2], "READY=1\nSTATUS=2/2 workers ready, generation 2\n");
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    let msgs = notify.lifecycle();
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert_eq!(msgs[3], "STOPPING=1\nSTATUS=stopping\n");
    // The drain asked systemd for time.
    assert!(
        notify
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| m.starts_with("EXTEND_TIMEOUT_USEC="))
    );
}

#[test]
fn a_shutdown_delay_says_stopping_at_once_and_extends_the_stop_timeout_over_the_delay() {
    let notify = NotifySocket::new();
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "--shutdown-delay",
            "40s",
            "--graceful-timeout",
            "3s",
        ],
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    assert!(wait_until(Duration::from_secs(20), || !notify
        .lifecycle()
        .is_empty()));
    p.signal(libc::SIGTERM);
    // STOPPING=1 goes out when the delay starts, while the pool still serves.
    assert!(
        wait_until(Duration::from_secs(10), || notify.lifecycle().len() >= 2),
        "{:?}",
        notify.lifecycle()
    );
    assert_eq!(notify.lifecycle()[1], "STOPPING=1\nSTATUS=stopping\n");
    assert_eq!(get(p.port, "/").unwrap().status, 200);
    // systemd is asked to wait for the delay and the drain after it: more than the 40 s delay,
    // where the drain alone would ask for 3 s + a margin.
    let extended =
        |m: &str| -> Option<u64> { m.strip_prefix("EXTEND_TIMEOUT_USEC=")?.trim().parse().ok() };
    assert!(
        wait_until(Duration::from_secs(10), || notify
            .messages
            .lock()
            .unwrap()
            .iter()
            .any(|(_, m)| extended(m).is_some())),
        "no EXTEND_TIMEOUT_USEC during the delay"
    );
    let first = notify
        .messages
        .lock()
        .unwrap()
        .iter()
        .find_map(|(_, m)| extended(m))
        .unwrap();
    assert!(
        (40_000_000..=60_000_000).contains(&first),
        "EXTEND_TIMEOUT_USEC={first} does not cover the delay and the drain"
    );
    assert!(p.child.try_wait().unwrap().is_none(), "{}", p.stderr());
    // A second SIGTERM drains at once; STOPPING=1 is not sent again.
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(20)).expect("master exits");
    assert!(status.success(), "{}", p.stderr());
    let stopping = notify
        .lifecycle()
        .iter()
        .filter(|m| m.starts_with("STOPPING=1"))
        .count();
    assert_eq!(stopping, 1, "{:?}", notify.lifecycle());
}

#[test]
fn usr2_moves_the_main_pid_with_messages_systemd_accepts() {
    let notify = NotifySocket::new();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("h.pid");
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--pid", pid_file.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap())],
    );
    let old = p.pid();
    assert!(wait_until(Duration::from_secs(20), || !notify
        .lifecycle()
        .is_empty()));
    p.signal(libc::SIGUSR2);
    assert!(
        wait_until(Duration::from_secs(30), || notify.lifecycle().len() >= 4),
        "{:?}\n{}",
        notify.lifecycle_from(),
        p.stderr()
    );
    let new = read_pid(&pid_file).unwrap();
    let _guard = PidGuard(new);
    assert_ne!(new, old);
    assert!(
        p.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    // SAFETY: kill(2) on the pid the pid file names.
    unsafe {
        libc::kill(new, libc::SIGTERM);
    }
    assert!(wait_until(Duration::from_secs(30), || !alive(new)));
    assert!(wait_until(Duration::from_secs(5), || notify
        .lifecycle()
        .len()
        >= 5));
    let msgs = notify.lifecycle_from();
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    assert_eq!(
        msgs[0],
        (
            old,
            "READY=1\nSTATUS=1/1 workers ready, generation 1\n".into()
        )
    );
    assert_eq!(msgs[1].0, old);
    assert!(
        msgs[1].1.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{msgs:?}"
    );
    // The old master, still the main process, names the new one (systemd accepts MAINPID= from the
    // main process only, under the default NotifyAccess=main)...
    assert_eq!(
        msgs[2],
        (
            old,
            format!("MAINPID={new}\nREADY=1\nSTATUS=handed over to the new master, pid {new}\n")
        )
    );
    // ...then the new master, now main, says so itself, and later stops as the main process.
    assert_eq!(
        msgs[3],
        (
            new,
            format!("MAINPID={new}\nREADY=1\nSTATUS=1/1 workers ready, generation 1\n")
        )
    );
    assert_eq!(msgs[4], (new, "STOPPING=1\nSTATUS=stopping\n".into()));
    // Nothing from the new master before it was main, nothing from the old one after.
    let all = notify.messages.lock().unwrap().clone();
    let handed = all
        .iter()
        .position(|m| m.1.starts_with("MAINPID="))
        .unwrap();
    assert!(all[..handed].iter().all(|(pid, _)| *pid == old), "{all:?}");
    assert!(
        all[handed + 1..].iter().all(|(pid, _)| *pid == new),
        "{all:?}"
    );
}

fn socket_activate_bin() -> std::path::PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let p = std::path::Path::new(dir).join("systemd-socket-activate");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "systemd-socket-activate not found: install the Debian package `systemd` (.ci/run does)"
    );
}

#[test]
fn serves_through_a_socket_passed_by_systemd_socket_activate() {
    let port = free_port();
    let mut cmd = command(&socket_activate_bin());
    cmd.arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(hyperfork_bin())
        .args(["--workers", "2", "--port", "1"]);
    let mut p = Proc::start(cmd, port);
    // With socket activation the program starts on the first connection.
    let r = (0..100)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            get(port, "/health").ok()
        })
        .unwrap_or_else(|| panic!("no answer through the passed socket:\n{}", p.stderr()));
    assert_eq!(r.status, 200);
    assert!(
        p.wait_log("socket(s) passed by systemd", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
    assert!(
        !p.stderr().contains("127.0.0.1:1"),
        "it bound --port instead"
    );
    // A binary upgrade passes systemd's socket on to the new master.
    let guard = p.upgrade_from_log();
    let new = guard.0;
    assert!(
        p.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let r = get(port, "/health").unwrap();
    assert_eq!(r.status, 200);
    assert!(children_of(new).contains(&(health_identity(&r).1 as i32)));
    assert!(!p.stderr().contains("127.0.0.1:1"), "{}", p.stderr());
}

#[test]
fn pid_file_is_written_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_path = dir.path().join("hyperfork.pid");
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--pid", pid_path.to_str().unwrap()],
        &[],
    );
    let written: i32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(written, p.pid());
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).unwrap().success());
    assert!(!pid_path.exists());
    let out = command(&hyperfork_bin())
        .args([
            "--pid",
            "/nonexistent-dir/h.pid",
            "--port",
            &free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-dir/h.pid"));
}

#[test]
fn limit_concurrency_answers_503_beyond_the_limit() {
    let p = Proc::serve(
        &example_bin("axum_app"),
        &["--workers", "1", "--limit-concurrency", "1"],
        &[],
    );
    let mut slow = Conn::open(p.port).unwrap();
    slow.send_get("/slow?ms=3000").unwrap();
    assert!(p.wait_log("slow request started", Duration::from_secs(20)));
    assert_eq!(get(p.port, "/").unwrap().status, 503);
    assert_eq!(slow.read_response().unwrap().status, 200);
    assert_eq!(get(p.port, "/").unwrap().status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_timeout() {
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--timeout-keep-alive", "1"],
        &[],
    );
    let mut conn = Conn::open(p.port).unwrap();
    assert_eq!(conn.get("/").unwrap().status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        conn.get("/").is_err(),
        "the idle connection should have been closed"
    );
    let mut fresh = Conn::open(p.port).unwrap();
    assert_eq!(fresh.get("/").unwrap().status, 200);
}

#[test]
fn the_seed_unit_command_line_is_accepted() {
    let out = command(&hyperfork_bin())
        .args([
            "plan",
            "--host",
            "0.0.0.0",
            "--port",
            "11400",
            "--workers",
            "4",
            "--log-level",
            "info",
            "--timeout-keep-alive",
            "65",
            "--limit-concurrency",
            "1000",
            "--backlog",
            "2048",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
