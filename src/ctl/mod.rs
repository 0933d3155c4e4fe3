//! `hyperfork ctl`: the control socket's client.
//!
//! It finds the socket with the master's own rule ([`crate::config::control`]) from the same
//! settings (command line, environment, TOML file), connects, writes one request line and reads the
//! answer ([`crate::shared::ctl_wire`]): each progress line goes to stderr as it arrives, then the
//! final line decides the output and the exit status. It runs before anything of the server: no
//! runtime, no logging, no file created.

pub(crate) mod table;
pub(crate) mod top;

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::cli::CtlArgs;
use crate::config::control::{ControlPath, PathTooLong, control_socket};
use crate::config::{ProcessEnv, Settings};
use crate::shared::ctl_wire::{MAX_REQUEST, Reply, Request, Status};

/// Exit status when the master answered that the command succeeded.
const EXIT_OK: u8 = 0;
/// Exit status when the command failed, or the master could not be reached or did not answer.
const EXIT_FAILED: u8 = 1;
/// Exit status for a control socket path that cannot be used (too long): a configuration error.
const EXIT_USAGE: u8 = 2;

/// Why `hyperfork ctl` got no successful answer; each message is one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CtlError {
    /// The path is too long for a unix socket.
    #[error(transparent)]
    PathTooLong(#[from] PathTooLong),
    /// Nothing at the path.
    #[error(
        "control socket {} does not exist: is the server running, and with the same \
         --control-socket/--pid/RUNTIME_DIRECTORY?",
        path.display()
    )]
    Missing {
        /// The socket's path.
        path: PathBuf,
    },
    /// A socket file nobody listens on (a master that died without removing it).
    #[error(
        "no master is listening on the control socket {} (connection refused)",
        path.display()
    )]
    Refused {
        /// The socket's path.
        path: PathBuf,
    },
    /// The socket belongs to another user.
    #[error(
        "cannot connect to the control socket {}: permission denied (it is 0600, owned by the \
         server's user; run as that user or root)",
        path.display()
    )]
    Denied {
        /// The socket's path.
        path: PathBuf,
    },
    /// Any other failure to connect.
    #[error("cannot connect to the control socket {}: {source}", path.display())]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The master did not accept the connection in time (its queue is full: it is stuck).
    #[error(
        "the master did not accept the connection on {} within {} (--timeout)",
        path.display(),
        humantime::format_duration(*waited)
    )]
    ConnectTimeout {
        /// The socket's path.
        path: PathBuf,
        /// The time limit.
        waited: Duration,
    },
    /// Writing the request failed.
    #[error("cannot send the command to the master: {0}")]
    Send(#[source] io::Error),
    /// Reading the answer failed.
    #[error("cannot read the master's answer: {0}")]
    Receive(#[source] io::Error),
    /// The connection ended without the final line.
    #[error("the master closed the connection before answering")]
    Closed,
    /// No final line in time.
    #[error(
        "no answer from the master within {} (--timeout){}",
        humantime::format_duration(*waited),
        if *still_running { "; the command may still complete in the master" } else { "" }
    )]
    Timeout {
        /// The time limit.
        waited: Duration,
        /// Whether the command was one that runs on after the answer is given up (`--wait`).
        still_running: bool,
    },
    /// A line that is not a reply.
    #[error("the master sent a line this ctl cannot read ({reason}): {line}")]
    BadReply {
        /// The line, as received.
        line: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A status answer without its status.
    #[error("the master's answer to status holds no status")]
    NoStatus,
    /// The master answered that the command failed (its message).
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The exit status for this failure.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CtlError::PathTooLong(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// The master's final line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// Whether the command succeeded.
    pub ok: bool,
    /// What happened, or why it failed.
    pub message: String,
    /// The `data` member as sent (the status, for a status request).
    pub data: Option<serde_json::Value>,
}

/// Runs `hyperfork ctl`: finds the socket from `settings`, sends the command, prints the answer, and
/// returns the exit status. `program` names this binary in error lines.
pub(crate) fn run(settings: &Settings, args: &CtlArgs, program: &str) -> ExitCode {
    let place = control_socket(settings, &ProcessEnv);
    if let Some(interval) = args.top {
        return top::run(&place, args, interval, program);
    }
    let answer = exchange(&place, args, |message| {
        let _ = writeln!(io::stderr().lock(), "{message}");
    });
    let printed = conclude(answer, args, program);
    if let Some(text) = &printed.stdout {
        let mut out = io::stdout().lock();
        // A closed stdout (`| head`) is not a reason to fail or panic.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
    if let Some(line) = &printed.stderr {
        let _ = writeln!(io::stderr().lock(), "{line}");
    }
    ExitCode::from(printed.code)
}

/// The master's status, asked once over the socket at `place` (`args.timeout` bounds the exchange).
pub(crate) fn status(place: &ControlPath, args: &CtlArgs) -> Result<Status, CtlError> {
    let status_args = CtlArgs {
        request: Request::Status,
        ..args.clone()
    };
    let answer = exchange(place, &status_args, |_| {})?;
    if !answer.ok {
        return Err(CtlError::Failed(answer.message));
    }
    let data = answer.data.ok_or(CtlError::NoStatus)?;
    serde_json::from_value::<Status>(data.clone()).map_err(|e| CtlError::BadReply {
        line: data.to_string(),
        reason: e.to_string(),
    })
}

/// What `hyperfork ctl` prints, and its exit status.
#[derive(Debug, PartialEq)]
struct Printed {
    /// For stdout, newline included.
    stdout: Option<String>,
    /// One line for stderr, without its newline.
    stderr: Option<String>,
    /// The exit status.
    code: u8,
}

/// The output for the outcome of the exchange.
fn conclude(answer: Result<Answer, CtlError>, args: &CtlArgs, program: &str) -> Printed {
    let failed = |message: &dyn std::fmt::Display, code: u8| Printed {
        stdout: None,
        stderr: Some(format!("{program} ctl: {message}")),
        code,
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return failed(&e, e.exit_code()),
    };
    if !answer.ok {
        return failed(&answer.message, EXIT_FAILED);
    }
    let stdout = match (&args.request, answer.data) {
        (Request::Status, None) => return failed(&CtlError::NoStatus, EXIT_FAILED),
        (Request::Status, Some(data)) if args.json => {
            let text = serde_json::to_string_pretty(&data).unwrap_or_else(|_| data.to_string());
            Some(format!("{text}\n"))
        }
        (Request::Status, Some(data)) => match serde_json::from_value::<Status>(data.clone()) {
            Ok(status) => Some(table::render(&status, env!("CARGO_PKG_VERSION"))),
            Err(e) => {
                let e = CtlError::BadReply {
                    line: data.to_string(),
                    reason: e.to_string(),
                };
                return failed(&e, EXIT_FAILED);
            }
        },
        _ if answer.message.is_empty() => None,
        _ => Some(format!("{}\n", answer.message)),
    };
    Printed {
        stdout,
        stderr: None,
        code: EXIT_OK,
    }
}

/// The time left before the deadline; `None` for no deadline.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    /// When the time is up, and the time limit it came from.
    at: Option<(Instant, Duration)>,
}

impl Deadline {
    /// `limit` from now; `None` for no limit.
    fn after(limit: Option<Duration>) -> Deadline {
        Deadline {
            at: limit.map(|l| (Instant::now() + l, l)),
        }
    }

    /// The time left, `Some(None)` without a limit, `None` once the time is up.
    fn left(&self) -> Option<Option<Duration>> {
        match self.at {
            None => Some(None),
            Some((at, _)) => {
                let left = at.saturating_duration_since(Instant::now());
                (!left.is_zero()).then_some(Some(left))
            }
        }
    }

    /// The time limit (zero without one).
    fn limit(&self) -> Duration {
        self.at.map_or(Duration::ZERO, |(_, l)| l)
    }
}

/// Connects to the socket at `place`, sends `args.request`, hands each progress message to
/// `progress` and returns the final answer.
fn exchange(
    place: &ControlPath,
    args: &CtlArgs,
    mut progress: impl FnMut(&str),
) -> Result<Answer, CtlError> {
    let path = place.checked()?;
    let deadline = Deadline::after(args.timeout);
    let still_running = matches!(
        args.request,
        Request::Reload { wait: true } | Request::Upgrade { wait: true }
    );
    let timed_out = || CtlError::Timeout {
        waited: deadline.limit(),
        still_running,
    };
    let mut stream = connect(path, &deadline)?;
    let mut line = serde_json::to_string(&args.request)
        .map_err(|e| CtlError::Send(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
    line.push('\n');
    if line.len() > MAX_REQUEST {
        return Err(CtlError::Send(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the request is longer than {MAX_REQUEST} bytes"),
        )));
    }
    let left = deadline.left().ok_or_else(timed_out)?;
    stream.set_write_timeout(left).map_err(CtlError::Send)?;
    stream
        .write_all(line.as_bytes())
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => CtlError::Closed,
            _ => CtlError::Send(e),
        })?;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        let left = deadline.left().ok_or_else(timed_out)?;
        reader
            .get_ref()
            .set_read_timeout(left)
            .map_err(CtlError::Receive)?;
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Err(CtlError::Closed),
            Ok(_) => {}
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
                    io::ErrorKind::ConnectionReset => CtlError::Closed,
                    _ => CtlError::Receive(e),
                });
            }
        }
        if buf.last() != Some(&b'\n') {
            // The connection ended in the middle of a line.
            return Err(CtlError::Closed);
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match parse(text)? {
            (Reply::Progress { message }, _) => progress(&message),
            (Reply::Done { ok, message, .. }, data) => {
                return Ok(Answer { ok, message, data });
            }
        }
    }
}

/// A reply line, and its `data` member as sent.
fn parse(line: &str) -> Result<(Reply, Option<serde_json::Value>), CtlError> {
    let bad = |e: serde_json::Error| CtlError::BadReply {
        line: line.to_string(),
        reason: e.to_string(),
    };
    let mut value: serde_json::Value = serde_json::from_str(line).map_err(bad)?;
    let data = value
        .as_object_mut()
        .and_then(|o| o.remove("data"))
        .filter(|d| !d.is_null());
    let reply: Reply = serde_json::from_value(value).map_err(bad)?;
    Ok((reply, data))
}

/// A connected stream to `path`; the connection itself bounded by the deadline too (a master whose
/// queue is full leaves `connect` waiting).
fn connect(path: &Path, deadline: &Deadline) -> Result<UnixStream, CtlError> {
    let other = |source: io::Error| CtlError::Connect {
        path: path.to_path_buf(),
        source,
    };
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(other)?;
    let left = deadline.left().ok_or_else(|| CtlError::ConnectTimeout {
        path: path.to_path_buf(),
        waited: deadline.limit(),
    })?;
    // A unix socket's connect waits for room in the listener's queue at most SO_SNDTIMEO.
    socket.set_write_timeout(left).map_err(other)?;
    let address = SockAddr::unix(path).map_err(other)?;
    match socket.connect(&address) {
        Ok(()) => Ok(socket.into()),
        Err(e) => Err(match (e.kind(), e.raw_os_error()) {
            (io::ErrorKind::NotFound, _) => CtlError::Missing {
                path: path.to_path_buf(),
            },
            (io::ErrorKind::ConnectionRefused, _) => CtlError::Refused {
                path: path.to_path_buf(),
            },
            (io::ErrorKind::PermissionDenied, _) => CtlError::Denied {
                path: path.to_path_buf(),
            },
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, _)
            | (_, Some(libc::EINPROGRESS)) => CtlError::ConnectTimeout {
                path: path.to_path_buf(),
                waited: deadline.limit(),
            },
            _ => other(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    use super::*;
    use crate::config::control::Origin;
    use crate::shared::ctl_wire::WorkerStatus;

    fn args(request: Request, timeout: Duration) -> CtlArgs {
        CtlArgs {
            request,
            json: false,
            top: None,
            timeout: Some(timeout),
        }
    }

    fn place(path: &Path) -> ControlPath {
        ControlPath {
            path: path.to_path_buf(),
            origin: Origin::Explicit,
        }
    }

    /// A fake master on a fresh socket: reads the request line, sends `lines`, then holds the
    /// connection `hold` long before closing it. Returns the request line it read.
    fn master(
        lines: Vec<String>,
        hold: Duration,
    ) -> (tempfile::TempDir, PathBuf, JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ctl");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            let mut stream = reader.into_inner();
            for l in lines {
                stream.write_all(l.as_bytes()).unwrap();
                stream.flush().unwrap();
            }
            std::thread::sleep(hold);
            request
        });
        (dir, path, handle)
    }

    fn status() -> Status {
        Status {
            master_pid: 10,
            version: env!("CARGO_PKG_VERSION").into(),
            generation: 1,
            phase: "running".into(),
            pool_size: 1,
            uptime_seconds: 5.0,
            scheduler_holder: None,
            listeners: vec![],
            workers: vec![WorkerStatus {
                slot: 0,
                pid: 11,
                state: "ready".into(),
                age_seconds: 5.0,
                generation: 1,
                requests: 0,
                in_flight: 0,
                open_connections: 0,
                rss_bytes: None,
                cpu_seconds: None,
                cpu_percent: None,
                heartbeat_age_seconds: None,
                scheduler: true,
            }],
            memory: None,
            advice: Vec::new(),
        }
    }

    #[test]
    fn progress_then_done_ok() {
        let lines = vec![
            Reply::Progress {
                message: "slot 0 ready".into(),
            }
            .line(),
            Reply::Progress {
                message: "slot 1 ready".into(),
            }
            .line(),
            Reply::ok("reload complete: generation 2, 2 workers").line(),
        ];
        let (_dir, path, m) = master(lines, Duration::ZERO);
        let mut seen = Vec::new();
        let a = args(Request::Reload { wait: true }, Duration::from_secs(10));
        let answer = exchange(&place(&path), &a, |p| seen.push(p.to_string())).unwrap();
        assert_eq!(seen, ["slot 0 ready", "slot 1 ready"]);
        assert!(answer.ok && answer.message.starts_with("reload complete"));
        assert_eq!(
            m.join().unwrap(),
            "{\"command\":\"reload\",\"wait\":true}\n"
        );
        let printed = conclude(Ok(answer), &a, "hyperfork");
        assert_eq!(
            printed,
            Printed {
                stdout: Some("reload complete: generation 2, 2 workers\n".into()),
                stderr: None,
                code: 0
            }
        );
    }

    #[test]
    fn a_failure_is_one_line_on_stderr_and_status_1() {
        let (_dir, path, m) = master(
            vec![Reply::failed("a reload is in progress").line()],
            Duration::ZERO,
        );
        let a = args(Request::Workers { change: -2 }, Duration::from_secs(10));
        let answer = exchange(&place(&path), &a, |_| {});
        assert_eq!(
            m.join().unwrap(),
            "{\"command\":\"workers\",\"change\":-2}\n"
        );
        let printed = conclude(answer, &a, "myapp");
        assert_eq!(
            printed,
            Printed {
                stdout: None,
                stderr: Some("myapp ctl: a reload is in progress".into()),
                code: 1
            }
        );
    }

    #[test]
    fn status_prints_the_table_or_the_json_as_sent() {
        let mut done: serde_json::Value =
            serde_json::from_str(Reply::ok("").line().trim()).unwrap();
        let mut data = serde_json::to_value(status()).unwrap();
        data["field_of_a_newer_master"] = serde_json::json!(1);
        done["data"] = data;
        let line = format!("{done}\n");
        for json in [false, true] {
            let (_dir, path, _m) = master(vec![line.clone()], Duration::ZERO);
            let mut a = args(Request::Status, Duration::from_secs(10));
            a.json = json;
            let answer = exchange(&place(&path), &a, |_| {}).unwrap();
            let printed = conclude(Ok(answer), &a, "hyperfork");
            assert_eq!(printed.code, 0);
            let out = printed.stdout.unwrap();
            if json {
                let back: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(back["master_pid"], 10);
                assert_eq!(back["field_of_a_newer_master"], 1, "{out}");
            } else {
                assert!(out.starts_with("master:   pid 10,"), "{out}");
                assert!(out.contains("sched\n"), "{out}");
            }
        }
    }

    #[test]
    fn a_status_answer_without_data_fails() {
        let a = args(Request::Status, Duration::from_secs(1));
        let answer = Answer {
            ok: true,
            message: String::new(),
            data: None,
        };
        let printed = conclude(Ok(answer), &a, "hyperfork");
        assert_eq!(printed.code, 1);
        assert!(printed.stderr.unwrap().contains("holds no status"));
    }

    #[test]
    fn a_connection_closed_without_done_is_a_failure() {
        let progress = Reply::Progress {
            message: "x".into(),
        }
        .line();
        for lines in [vec![], vec![progress], vec!["{\"reply\":\"do".to_string()]] {
            let (_dir, path, _m) = master(lines, Duration::ZERO);
            let a = args(Request::ReopenLogs, Duration::from_secs(10));
            let e = exchange(&place(&path), &a, |_| {}).unwrap_err();
            assert!(matches!(e, CtlError::Closed), "{e}");
            assert_eq!(
                e.to_string(),
                "the master closed the connection before answering"
            );
        }
    }

    #[test]
    fn silence_times_out_with_a_clear_message() {
        let (_dir, path, _m) = master(vec![], Duration::from_secs(3));
        let a = args(Request::Reload { wait: true }, Duration::from_millis(300));
        let start = Instant::now();
        let e = exchange(&place(&path), &a, |_| {}).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(
            e.to_string(),
            "no answer from the master within 300ms (--timeout); the command may still \
             complete in the master"
        );
        assert_eq!(conclude(Err(e), &a, "hyperfork").code, 1);
    }

    #[test]
    fn an_unreadable_line_is_named() {
        let (_dir, path, _m) = master(vec!["hello\n".into()], Duration::ZERO);
        let a = args(Request::Stop { fast: false }, Duration::from_secs(10));
        let e = exchange(&place(&path), &a, |_| {}).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cannot read") && msg.ends_with(": hello"),
            "{msg}"
        );
    }

    #[test]
    fn connection_errors_name_the_path_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(Request::Status, Duration::from_secs(1));
        let missing = dir.path().join("none.ctl");
        let e = exchange(&place(&missing), &a, |_| {}).unwrap_err();
        assert!(matches!(e, CtlError::Missing { .. }), "{e}");
        assert!(e.to_string().contains(&*missing.to_string_lossy()));

        let stale = dir.path().join("stale.ctl");
        drop(UnixListener::bind(&stale).unwrap());
        let e = exchange(&place(&stale), &a, |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no master is listening on the control socket {} (connection refused)",
                stale.display()
            )
        );

        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let e = exchange(&place(&long), &a, |_| {}).unwrap_err();
        assert!(matches!(e, CtlError::PathTooLong(_)), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_full_queue_times_out_the_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.ctl");
        // A listener that never accepts, with the smallest queue: fill it, then one more waits.
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        socket.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        socket.listen(0).unwrap();
        let mut held = Vec::new();
        let a = args(Request::Status, Duration::from_millis(200));
        let start = Instant::now();
        let e = loop {
            match connect(&path, &Deadline::after(a.timeout)) {
                Ok(s) => held.push(s),
                Err(e) => break e,
            }
            assert!(held.len() < 100, "the queue never filled");
        };
        assert!(matches!(e, CtlError::ConnectTimeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(held);
    }
}
