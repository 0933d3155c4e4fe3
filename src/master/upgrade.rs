//! Binary upgrade (`SIGUSR2`): the master starts a new master from the executable on disk, hands it the
//! listening sockets, and steps aside once the new master's workers are all ready.
//!
//! # The hand-over, step by step
//!
//! 1. The old master runs the executable path it recorded at start (the file on disk, so a binary
//!    replaced since then is the one that runs — not `/proc/self/exe`, which is the old inode) with
//!    its original arguments. The child inherits the listening sockets and one end of a socket pair,
//!    named by [`LISTENERS_VAR`] and [`CHANNEL_VAR`], and the identity of each unix socket file the
//!    old master would remove on exit ([`SOCKET_FILES_VAR`]); the new master removes the variables at
//!    once.
//! 2. The new master reads its configuration as any master does, reuses each inherited socket that
//!    still matches an address it should listen on (binding the others), and boots its pool. Its
//!    workers accept from the same sockets as the old ones, so requests keep being answered.
//! 3. When every new worker has reported ready, the new master writes `ready` on the channel.
//! 4. The old master tells systemd the new main pid (`MAINPID=`, `READY=1`; it is still the main
//!    process, so systemd accepts it under the default `NotifyAccess=main`), answers `main`, and stops
//!    talking to systemd. The new master then sends `MAINPID=` and `READY=1` itself, writes the pid
//!    file, and takes over the socket files.
//! 5. The old master drains its workers as on `SIGTERM`. Its slot 0 stops scheduling at once; when it
//!    has released the scheduler lease (or exited), the old master sends the lease record (anchor and
//!    each job's last started tick) as its last line, and the new master grants the lease to its own
//!    slot 0. Jobs never run in both pools at once.
//!
//! If the new master exits, or is not ready within [`READY_TIMEOUT`], the old master stops it, logs
//! why, and keeps serving. If the old master vanishes mid-way (end of file on the channel), the new
//! master carries on alone.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::error::StartError;
use crate::shared::control::Order;
use crate::shared::listener::{FileId, Listener};

/// Names the inherited listening descriptors, comma-separated.
pub const LISTENERS_VAR: &str = "HYPERFORK_UPGRADE_LISTENERS";
/// Names the descriptor of the channel to the old master.
pub const CHANNEL_VAR: &str = "HYPERFORK_UPGRADE_CHANNEL";
/// `1` when the inherited sockets came from systemd socket activation.
pub const ACTIVATED_VAR: &str = "HYPERFORK_UPGRADE_ACTIVATED";
/// For each descriptor of [`LISTENERS_VAR`], in the same order and comma-separated: `DEV:INO`, the
/// identity of the unix socket file the old master bound (see [`crate::shared::listener::FileId`]), or `-`
/// (a TCP socket, or a file that is not ours to remove, such as systemd's).
///
/// The identity travels from the old master rather than being read again by the new one: a `stat` of
/// the path at adoption would record whatever is at the path by then, and if another server had
/// replaced the file in the meantime, the new master would later delete that server's socket. Passing
/// the identity recorded right after `bind` keeps the rule "remove only the file we created" across
/// any number of upgrades.
pub const SOCKET_FILES_VAR: &str = "HYPERFORK_UPGRADE_SOCKET_FILES";
/// How long the old master waits for the new master's workers to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

const READY: &str = "ready";
const MAIN: &str = "main";

/// The executable and arguments to start a new master with, recorded when the master starts.
#[derive(Debug, Clone)]
pub struct Program {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Program {
    /// This process's executable path and arguments. Call it at start: `/proc/self/exe` then names
    /// the path the binary was started from, which is where an upgraded binary will be.
    pub fn current() -> io::Result<Program> {
        let exe = std::env::current_exe()?;
        Ok(Program {
            exe,
            args: std::env::args_os().collect(),
        })
    }

    /// The executable's path.
    pub fn exe(&self) -> &std::path::Path {
        &self.exe
    }
}

/// One end of the line channel between the old and the new master (non-blocking).
#[derive(Debug)]
pub struct Channel {
    sock: UnixStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Channel {
    fn new(sock: UnixStream) -> io::Result<Channel> {
        sock.set_nonblocking(true)?;
        Ok(Channel {
            sock,
            buf: Vec::new(),
            closed: false,
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether the other side closed its end.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes one line; `false` if it could not be written whole (the other side is gone).
    pub fn send(&mut self, line: &str) -> bool {
        let line = format!("{}\n", line.trim_end());
        // Lines are short and the socket buffer is empty at every step of the protocol, so one
        // non-blocking write takes the whole line.
        matches!(self.sock.write(line.as_bytes()), Ok(n) if n == line.len())
    }

    /// Reads the lines that arrived; sets [`Channel::is_closed`] at end of file.
    pub fn recv(&mut self) -> Vec<String> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            lines.push(String::from_utf8_lossy(&line).trim().to_string());
        }
        lines
    }
}

/// Where the new master is, as the old master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Booting its workers; it must say `ready` by `deadline`.
    Booting {
        /// When the new master must be ready by.
        deadline: Instant,
    },
    /// It said `ready` and was told `main`: it is the service's main process now.
    TookOver,
    /// It was not ready in time; the old master asked it to stop and keeps serving.
    Abandoned,
}

/// What the old master knows of the new master it started.
#[derive(Debug)]
pub struct Successor {
    /// The new master's pid (a child of the old master until the old one exits).
    pub pid: Pid,
    /// The channel to it; `None` once the lease record was sent.
    pub channel: Option<Channel>,
    /// Where it is in the hand-over.
    pub stage: Stage,
}

impl Successor {
    /// When the new master must be ready by, while it boots.
    pub fn deadline(&self) -> Option<Instant> {
        match self.stage {
            Stage::Booting { deadline } => Some(deadline),
            Stage::TookOver | Stage::Abandoned => None,
        }
    }

    /// Whether it took over.
    pub fn took_over(&self) -> bool {
        self.stage == Stage::TookOver
    }

    /// Reads the channel; `true` when the new master reported its workers ready.
    pub fn poll_ready(&mut self) -> bool {
        let Some(ch) = self.channel.as_mut() else {
            return false;
        };
        ch.recv().iter().any(|l| l == READY)
    }

    /// Tells the new master it is now the main process.
    pub fn send_main(&mut self) -> bool {
        self.channel.as_mut().is_some_and(|c| c.send(MAIN))
    }

    /// Sends the scheduler lease record, the last line, and closes the channel.
    pub fn send_lease(&mut self, record: &Order) {
        if let Some(mut ch) = self.channel.take() {
            ch.send(&record.encode());
        }
    }
}

/// Starts the new master: `program` with the listening sockets and a channel end inherited.
pub fn spawn(
    program: &Program,
    listeners: &[Listener],
    activated: bool,
) -> Result<Successor, StartError> {
    let os = |what, source| StartError::Os { what, source };
    let (ours, theirs) = UnixStream::pair().map_err(|e| os("creating the upgrade channel", e))?;
    let channel = Channel::new(ours).map_err(|e| os("creating the upgrade channel", e))?;
    let mut inherit: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    let fds = inherit
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let files = listeners
        .iter()
        .map(|l| {
            l.file_id()
                .map_or_else(|| "-".to_string(), |id| id.to_string())
        })
        .collect::<Vec<_>>()
        .join(",");
    inherit.push(theirs.as_raw_fd());
    let mut cmd = std::process::Command::new(&program.exe);
    if let Some((arg0, rest)) = program.args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env(LISTENERS_VAR, fds)
        .env(CHANNEL_VAR, theirs.as_raw_fd().to_string())
        .env(ACTIVATED_VAR, if activated { "1" } else { "0" })
        .env(SOCKET_FILES_VAR, files)
        // The watchdog belongs to whichever master is main; without WATCHDOG_PID it applies to the
        // new master's own pid.
        .env_remove("WATCHDOG_PID");
    // The new master reads the env file and `-e` itself, as they are then.
    crate::config::env_file::leave_out(&mut cmd);
    // SAFETY: the closure runs in the forked child before `exec` and only makes async-signal-safe
    // calls (fcntl, sigprocmask) on descriptors this process owns and keeps open until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &inherit {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The master blocks the signals it reads from its signalfd; a new program must start
            // with none blocked.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| os("starting the new master's executable", e))?;
    drop(theirs);
    Ok(Successor {
        pid: Pid::from_raw(child.id() as i32),
        channel: Some(channel),
        stage: Stage::Booting {
            deadline: Instant::now() + READY_TIMEOUT,
        },
    })
}

/// What a new master inherited from the master that started it.
#[derive(Debug)]
pub struct Inherited {
    /// The old master's listening sockets.
    pub listeners: Vec<Listener>,
    /// Whether they came from systemd socket activation.
    pub activated: bool,
    /// The channel to the old master.
    pub channel: Channel,
}

/// Where a new master is in the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Booting its workers; `ready` not sent yet.
    Booting,
    /// Sent `ready`; waiting for `main`.
    Ready,
    /// Main process; waiting for the lease record.
    Main,
}

/// The new master's side of the hand-over.
#[derive(Debug)]
pub struct Predecessor {
    /// The channel to the old master.
    pub channel: Channel,
    /// Where the hand-over is.
    pub step: Step,
}

/// What the old master said.
#[derive(Debug, PartialEq, Eq)]
pub enum Said {
    /// This master is now the main process.
    Main,
    /// The scheduler lease record (anchor and last ticks).
    Lease(i64, std::collections::BTreeMap<String, i64>),
    /// The old master closed the channel.
    Gone,
}

impl Predecessor {
    /// Reports that every worker is ready.
    pub fn send_ready(&mut self) {
        if self.channel.send(READY) {
            self.step = Step::Ready;
        }
    }

    /// Reads what the old master said since the last call.
    pub fn poll(&mut self) -> Vec<Said> {
        let mut out: Vec<Said> = self
            .channel
            .recv()
            .iter()
            .filter_map(|line| {
                if line == MAIN {
                    return Some(Said::Main);
                }
                match Order::decode(line) {
                    Some(Order::Grant {
                        anchor_ms,
                        last_ticks,
                    }) => Some(Said::Lease(anchor_ms, last_ticks)),
                    _ => {
                        tracing::warn!("unreadable line from the previous master: {line:?}");
                        None
                    }
                }
            })
            .collect();
        if self.channel.is_closed() {
            out.push(Said::Gone);
        }
        out
    }
}

/// Reads (and removes) the upgrade variables; `None` when this master was not started by another.
pub fn inherited() -> Result<Option<Inherited>, StartError> {
    let listeners = std::env::var(LISTENERS_VAR).ok();
    let channel = std::env::var(CHANNEL_VAR).ok();
    let activated = std::env::var(ACTIVATED_VAR).is_ok_and(|v| v == "1");
    let files = std::env::var(SOCKET_FILES_VAR).ok();
    // SAFETY: the master is single-threaded here; nothing reads the environment concurrently.
    unsafe {
        for v in [LISTENERS_VAR, CHANNEL_VAR, ACTIVATED_VAR, SOCKET_FILES_VAR] {
            std::env::remove_var(v);
        }
    }
    let (Some(listeners), Some(channel)) = (listeners, channel) else {
        return Ok(None);
    };
    let bad = |var: &str, value: &str| StartError::Bind {
        address: format!("the sockets passed by the previous master ({var}={value:?})"),
        source: io::Error::new(io::ErrorKind::InvalidInput, "expected descriptor numbers"),
    };
    let channel_fd: RawFd = channel
        .trim()
        .parse()
        .map_err(|_| bad(CHANNEL_VAR, &channel))?;
    let mut fds = Vec::new();
    for part in listeners.split(',').filter(|p| !p.trim().is_empty()) {
        fds.push(
            part.trim()
                .parse::<RawFd>()
                .map_err(|_| bad(LISTENERS_VAR, &listeners))?,
        );
    }
    if fds.contains(&channel_fd) || fds.iter().any(|&fd| fd < 3) || channel_fd < 3 {
        return Err(bad(LISTENERS_VAR, &listeners));
    }
    // A previous master of an older version does not send the identities: then no inherited socket
    // file is removed by this master (a stale socket left behind is replaced by the next start).
    let ids = match &files {
        Some(v) => parse_socket_files(v, fds.len()).ok_or_else(|| bad(SOCKET_FILES_VAR, v))?,
        None => vec![None; fds.len()],
    };
    let mut out = Vec::new();
    for (fd, id) in fds.into_iter().zip(ids) {
        // SAFETY: the previous master cleared close-on-exec on exactly these descriptors for us;
        // nothing else in this process knows them.
        let mut l = unsafe { Listener::adopt(fd, &format!("inherited socket (fd {fd})"))? };
        l.set_file_id(id);
        out.push(l);
    }
    // SAFETY: as above, for the channel's descriptor.
    if unsafe { libc::fcntl(channel_fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(StartError::Os {
            what: "adopting the upgrade channel",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: checked open just above; owned by nobody else.
    let sock = unsafe { UnixStream::from_raw_fd(channel_fd) };
    let channel = Channel::new(sock).map_err(|e| StartError::Os {
        what: "adopting the upgrade channel",
        source: e,
    })?;
    Ok(Some(Inherited {
        listeners: out,
        activated,
        channel,
    }))
}

/// Parses [`SOCKET_FILES_VAR`]: exactly `n` entries, each `DEV:INO` or `-`.
fn parse_socket_files(value: &str, n: usize) -> Option<Vec<Option<FileId>>> {
    let ids = value
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim() {
            "-" => Some(None),
            id => FileId::parse(id).map(Some),
        })
        .collect::<Option<Vec<_>>>()?;
    (ids.len() == n).then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_file_identities_parse() {
        let id = FileId {
            dev: 64769,
            ino: 12,
        };
        assert_eq!(
            parse_socket_files("-,64769:12", 2),
            Some(vec![None, Some(id)])
        );
        assert_eq!(parse_socket_files("", 0), Some(vec![]));
        assert_eq!(parse_socket_files("-", 2), None);
        assert_eq!(parse_socket_files("-,x:1", 2), None);
    }

    #[test]
    fn the_channel_carries_the_protocol_both_ways() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut old = Successor {
            pid: Pid::from_raw(1),
            channel: Some(Channel::new(a).unwrap()),
            stage: Stage::Booting {
                deadline: Instant::now(),
            },
        };
        let mut new = Predecessor {
            channel: Channel::new(b).unwrap(),
            step: Step::Booting,
        };
        assert!(!old.poll_ready());
        new.send_ready();
        assert_eq!(new.step, Step::Ready);
        assert!(old.poll_ready());
        assert!(old.send_main());
        assert_eq!(new.poll(), vec![Said::Main]);
        let record = Order::Grant {
            anchor_ms: 5,
            last_ticks: [("j".to_string(), 9)].into(),
        };
        old.send_lease(&record);
        assert!(old.channel.is_none());
        assert_eq!(
            new.poll(),
            vec![Said::Lease(5, [("j".to_string(), 9)].into()), Said::Gone]
        );
    }
}
