//! Unix sockets seen from outside: the socket file gets exactly `--socket-mode` (0660 by default, or
//! 0666 minus `--umask`), a process of another uid in the socket's group can connect and one outside
//! it cannot, and on exit the master removes the socket file only if the path still names the file it
//! created (also after a binary upgrade handed the file to a new master).

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The uid and gid the server runs as in the cross-user test (`nobody`/`nogroup` on Debian).
const SERVER_ID: u32 = 65534;
/// The uid (and primary gid) of the client in the cross-user test: not the server's.
const CLIENT_ID: u32 = 65533;

/// `GET /` over the unix socket at `path`; the whole response.
fn unix_get(path: &Path) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Starts `cmd` and waits (bounded) until `GET /` answers 200 on the unix socket at `path`.
fn start_on(cmd: Command, path: &Path) -> Proc {
    let p = Proc::start(cmd, 0);
    let ok = wait_until(Duration::from_secs(20), || {
        unix_get(path).is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    assert!(
        ok,
        "no answer on {} within 20 s; stderr:\n{}",
        path.display(),
        p.stderr()
    );
    p
}

/// A one-worker hyperfork command listening on `unix:PATH`, with extra arguments.
fn unix_command(bin: &PathBuf, path: &Path, args: &[&str]) -> Command {
    let mut cmd = command(bin);
    cmd.args(["--workers", "1", "--graceful-timeout", "5s", "--bind"])
        .arg(format!("unix:{}", path.display()))
        .args(args);
    cmd
}

/// Starts the child with umask `mask` (as if inherited from its parent, e.g. systemd's `UMask=`).
fn with_umask(cmd: &mut Command, mask: libc::mode_t) {
    // SAFETY: the closure runs in the forked child before exec and only calls umask(2), which is
    // async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        });
    }
}

/// The permission bits of `path` (not following a symbolic link).
fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// SIGTERM, then a bounded wait for a clean exit.
fn stop(p: &mut Proc) {
    p.signal(libc::SIGTERM);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the master did not exit cleanly: {status:?}\n{}",
        p.stderr()
    );
}

#[test]
fn the_default_socket_mode_is_exactly_0660_whatever_the_inherited_umask() {
    let dir = tempfile::tempdir().unwrap();
    for (i, inherited) in [0o022, 0o077, 0o000, 0o002].into_iter().enumerate() {
        let path = dir.path().join(format!("d{i}.sock"));
        let mut cmd = unix_command(&hyperfork_bin(), &path, &[]);
        with_umask(&mut cmd, inherited);
        let mut p = start_on(cmd, &path);
        assert_eq!(
            mode_of(&path),
            0o660,
            "socket mode under an inherited umask of {inherited:03o}"
        );
        stop(&mut p);
    }
}

#[test]
fn socket_mode_and_umask_set_the_mode_of_the_files_the_master_creates() {
    let dir = tempfile::tempdir().unwrap();

    // --socket-mode 600. The pid file follows the (inherited) umask: 0644 under 022.
    let path = dir.path().join("a.sock");
    let pid = dir.path().join("a.pid");
    let mut cmd = unix_command(
        &hyperfork_bin(),
        &path,
        &["--socket-mode", "600", "--pid", pid.to_str().unwrap()],
    );
    with_umask(&mut cmd, 0o022);
    let mut p = start_on(cmd, &path);
    assert_eq!(mode_of(&path), 0o600, "--socket-mode 600");
    assert!(wait_until(Duration::from_secs(10), || pid.exists()));
    assert_eq!(mode_of(&pid), 0o644, "pid file under umask 022");
    stop(&mut p);

    // --umask 077, no --socket-mode: the socket is 0666 & !077 = 0600, and so are the pid and log
    // files, although the inherited umask (002) would make them 0664.
    let path = dir.path().join("b.sock");
    let pid = dir.path().join("b.pid");
    let log = dir.path().join("b.log");
    let mut cmd = unix_command(
        &hyperfork_bin(),
        &path,
        &[
            "--umask",
            "077",
            "--pid",
            pid.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    with_umask(&mut cmd, 0o002);
    let mut p = start_on(cmd, &path);
    assert_eq!(mode_of(&path), 0o600, "--umask 077");
    assert!(wait_until(Duration::from_secs(10), || pid.exists()));
    assert_eq!(mode_of(&pid), 0o600, "pid file under --umask 077");
    assert_eq!(mode_of(&log), 0o600, "log file under --umask 077");
    stop(&mut p);

    // An explicit socket mode wins over --umask; env and TOML are read too.
    let path = dir.path().join("c.sock");
    let mut cmd = unix_command(&hyperfork_bin(), &path, &["--umask", "077"]);
    cmd.env("HYPERFORK_SOCKET_MODE", "0o666");
    let mut p = start_on(cmd, &path);
    assert_eq!(mode_of(&path), 0o666, "HYPERFORK_SOCKET_MODE=0o666");
    stop(&mut p);
    let path = dir.path().join("d.sock");
    let config = dir.path().join("d.toml");
    std::fs::write(&config, "socket_mode = \"0640\"\n").unwrap();
    let cmd = unix_command(
        &hyperfork_bin(),
        &path,
        &["--config", config.to_str().unwrap()],
    );
    let mut p = start_on(cmd, &path);
    assert_eq!(mode_of(&path), 0o640, "TOML socket_mode = \"0640\"");
    stop(&mut p);
}

/// Whether `path` and every directory above it can be used by a uid that is neither owner nor in the
/// group (the "other" execute bit).
fn usable_by_others(path: &Path) -> bool {
    path.ancestors()
        .filter(|p| !p.as_os_str().is_empty())
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// Runs in a forked child: becomes `uid`/`gid` with supplementary `groups`, connects to `addr`, sends
/// a GET and reads the start of the answer. Only raw, async-signal-safe calls that do not allocate:
/// the test process has other threads, whose locks the child must not touch.
///
/// Exit codes: 0 = an answer starting `HTTP/1.1 200`; [`EXIT_EACCES`] = connect failed with
/// `EACCES`; other values name the step that failed.
///
/// # Safety
///
/// Must only be called in the child of a `fork`, and never returns.
unsafe fn connect_child(
    addr: &libc::sockaddr_un,
    groups: &[libc::gid_t],
    uid: libc::uid_t,
    gid: libc::gid_t,
) -> ! {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    const EXPECTED: &[u8; 12] = b"HTTP/1.1 200";
    // SAFETY: every call is a plain system call wrapper on memory this function owns or borrows;
    // none allocates or takes a lock.
    unsafe {
        let groups_ptr = if groups.is_empty() {
            std::ptr::null()
        } else {
            groups.as_ptr()
        };
        if libc::setgroups(groups.len(), groups_ptr) != 0 {
            libc::_exit(20);
        }
        if libc::setgid(gid) != 0 {
            libc::_exit(21);
        }
        if libc::setuid(uid) != 0 {
            libc::_exit(22);
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            libc::_exit(23);
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if libc::connect(fd, (addr as *const libc::sockaddr_un).cast(), len) != 0 {
            let errno = *libc::__errno_location();
            libc::_exit(if errno == libc::EACCES {
                EXIT_EACCES
            } else {
                11
            });
        }
        let mut sent = 0;
        while sent < REQUEST.len() {
            let n = libc::write(fd, REQUEST[sent..].as_ptr().cast(), REQUEST.len() - sent);
            if n <= 0 {
                libc::_exit(12);
            }
            sent += n as usize;
        }
        let mut buf = [0u8; 12];
        let mut got = 0;
        while got < buf.len() {
            let n = libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got);
            if n <= 0 {
                libc::_exit(13);
            }
            got += n as usize;
        }
        libc::_exit(if &buf == EXPECTED { 0 } else { 14 });
    }
}

/// The child's exit code when `connect` failed with `EACCES`.
const EXIT_EACCES: i32 = 10;

/// Kills and reaps a forked child on drop unless it was reaped.
struct ForkGuard(libc::pid_t);

impl Drop for ForkGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill and waitpid on a child this process forked and has not reaped.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Connects to the unix socket at `path` from a forked child running as `uid`/`gid` with the
/// supplementary `groups`; returns the child's exit code (see [`connect_child`]).
fn connect_as(path: &Path, uid: u32, gid: u32, groups: &[u32]) -> i32 {
    // Everything the child uses is prepared before the fork.
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: the child only runs `connect_child`, which makes async-signal-safe calls without
    // allocating and ends in _exit; the parent only waits for it.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: this is the forked child.
        unsafe { connect_child(&addr, &groups, uid, gid) };
    }
    assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    let mut guard = ForkGuard(pid);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            guard.0 = 0;
            assert!(
                libc::WIFEXITED(status),
                "the client child did not exit normally: status {status}"
            );
            return libc::WEXITSTATUS(status);
        }
        assert!(
            Instant::now() < deadline,
            "the client child (uid {uid}) did not finish within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a `Name:` line of `/proc/PID/status`.
fn proc_status(pid: i32, name: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or("")
        .trim()
        .to_string()
}

#[test]
fn another_uid_in_the_sockets_group_can_connect_and_one_outside_it_cannot() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED another_uid_in_the_sockets_group_can_connect_and_one_outside_it_cannot: \
             needs root to run the server and the clients under other uids (CI runs as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert!(
        usable_by_others(dir.path()),
        "{} or a directory above it is not searchable by other users; set TMPDIR to one that is",
        dir.path().display()
    );
    // The server runs as another uid: it must be able to reach and run the binary.
    let mut bin = hyperfork_bin();
    if !usable_by_others(&bin) {
        let copy = dir.path().join("hyperfork");
        std::fs::copy(&bin, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin = copy;
    }
    let path = dir.path().join("app.sock");
    let mut cmd = unix_command(&bin, &path, &[]);
    // With a uid set and the parent root, std calls setgroups(0) in the child before setuid, so
    // the server keeps no supplementary group of ours (checked below); a pre_exec hook would run
    // after setuid, too late to do it.
    cmd.current_dir(dir.path()).uid(SERVER_ID).gid(SERVER_ID);
    let mut p = start_on(cmd, &path);
    assert_eq!(
        proc_status(p.pid(), "Uid").split_whitespace().next(),
        Some(SERVER_ID.to_string().as_str())
    );
    assert_eq!(proc_status(p.pid(), "Groups"), "", "the server kept groups");
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (SERVER_ID, SERVER_ID));
    assert_eq!(meta.mode() & 0o7777, 0o660);

    // Another uid whose supplementary groups include the socket's group: connects and is served.
    let code = connect_as(&path, CLIENT_ID, CLIENT_ID, &[SERVER_ID]);
    assert_eq!(
        code,
        0,
        "uid {CLIENT_ID} in group {SERVER_ID} could not get a 200 (exit {code}; {EXIT_EACCES} = \
         EACCES on connect)\n{}",
        p.stderr()
    );
    // The same uid without the group: refused by the file's mode.
    let code = connect_as(&path, CLIENT_ID, CLIENT_ID, &[]);
    assert_eq!(
        code, EXIT_EACCES,
        "uid {CLIENT_ID} outside group {SERVER_ID}: expected EACCES on connect, exit {code}"
    );
    stop(&mut p);
    assert!(!path.exists(), "the socket file was left behind");
}

#[test]
fn our_own_socket_file_is_removed_on_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.sock");
    let mut p = start_on(unix_command(&hyperfork_bin(), &path, &[]), &path);
    stop(&mut p);
    assert!(!path.exists(), "our own socket file was left behind");
}

#[test]
fn a_socket_that_replaced_ours_survives_our_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.sock");
    let mut p = start_on(unix_command(&hyperfork_bin(), &path, &[]), &path);
    // Another server's socket, renamed over ours (as a new deployment binding beside it would).
    let other_path = dir.path().join("other.sock");
    let other = UnixListener::bind(&other_path).unwrap();
    std::fs::rename(&other_path, &path).unwrap();
    stop(&mut p);

    let meta =
        std::fs::symlink_metadata(&path).expect("the other server's socket file was removed");
    assert!(meta.file_type().is_socket());
    let _client = UnixStream::connect(&path).expect("the other socket no longer accepts");
    other.set_nonblocking(true).unwrap();
    let accepted = wait_until(Duration::from_secs(5), || other.accept().is_ok());
    assert!(accepted, "the connection did not reach the other listener");
    assert!(
        p.stderr().contains("not removing"),
        "no log line about the file left alone:\n{}",
        p.stderr()
    );
}

#[test]
fn a_regular_file_put_in_place_of_our_socket_survives_our_exit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hf.sock");
    let mut p = start_on(unix_command(&hyperfork_bin(), &path, &[]), &path);
    let tmp = dir.path().join("file.tmp");
    std::fs::write(&tmp, "someone else's data\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    stop(&mut p);
    assert_eq!(
        std::fs::read_to_string(&path).expect("the regular file was removed"),
        "someone else's data\n"
    );
}

#[test]
fn after_a_binary_upgrade_the_new_master_removes_the_socket_file_it_took_over() {
    let dir = tempfile::tempdir().unwrap();
    // A copy, so the executable path the master records is ours.
    let bin = dir.path().join("hyperfork");
    std::fs::copy(hyperfork_bin(), &bin).unwrap();
    let path = dir.path().join("hf.sock");
    let pid_file = dir.path().join("hf.pid");
    let mut p = start_on(
        unix_command(&bin, &path, &["--pid", pid_file.to_str().unwrap()]),
        &path,
    );
    let old = p.pid();
    assert!(wait_until(Duration::from_secs(10), || read_pid(&pid_file) == Some(old)));
    let guard = p.upgrade_from_pid_file(&pid_file);
    let new = guard.0;
    // The old master leaves the file to the new one.
    stop(&mut p);
    assert!(
        unix_get(&path).is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "the new master does not answer on {}:\n{}",
        path.display(),
        p.stderr()
    );
    // SAFETY: kill(2) on the new master, which this test watched being started.
    unsafe { libc::kill(new, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(30), || !alive(new)),
        "the new master did not exit"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !path.exists()),
        "the new master left the socket file it took over behind:\n{}",
        p.stderr()
    );
}

#[test]
fn a_socket_file_passed_by_systemd_is_never_removed_even_after_a_binary_upgrade() {
    let activate = ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join("systemd-socket-activate"))
        .find(|p| p.exists())
        .expect("systemd-socket-activate not found: install the Debian package `systemd` (.ci/run does)");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("hyperfork");
    std::fs::copy(hyperfork_bin(), &bin).unwrap();
    let path = dir.path().join("sa.sock");
    let mut cmd = command(&activate);
    cmd.arg("-l")
        .arg(&path)
        .arg(&bin)
        .args(["--workers", "1", "--graceful-timeout", "5s"]);
    // systemd-socket-activate binds the path, then runs hyperfork in its place on the first
    // connection.
    let mut p = start_on(cmd, &path);
    assert!(
        p.wait_log("socket(s) passed by systemd", Duration::from_secs(10)),
        "{}",
        p.stderr()
    );
    let guard = p.upgrade_from_log();
    let new = guard.0;
    stop(&mut p);
    assert!(
        path.exists(),
        "the old master removed systemd's socket file"
    );
    assert!(unix_get(&path).is_ok_and(|r| r.starts_with("HTTP/1.1 200")));
    // SAFETY: kill(2) on the new master, which this test watched being started.
    unsafe { libc::kill(new, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(30), || !alive(new)),
        "the new master did not exit"
    );
    assert!(
        path.exists(),
        "the new master removed systemd's socket file:\n{}",
        p.stderr()
    );
}
