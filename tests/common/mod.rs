//! Test harness: start hyperfork binaries as separate processes on unique loopback ports, talk HTTP/1.1
//! to them, and kill everything they started on every path.
#![allow(dead_code)]

pub mod cgroup;
pub mod pg;
mod process;

pub use process::{alive, children_of, free_port, wait_until};

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The hyperfork binary.
pub fn hyperfork_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hyperfork"))
}

/// An example binary. A plain `cargo test` builds every example next to the binaries; `cargo test
/// --test NAME` does not, so run `cargo build --examples` first when running one test file alone.
pub fn example_bin(name: &str) -> PathBuf {
    let bin = hyperfork_bin();
    let dir = bin.parent().expect("binary has a directory");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example {} not built at {}",
        name,
        path.display()
    );
    path
}

/// Spawns `cmd`, retrying (bounded) while the kernel says the executable is busy (ETXTBSY): a binary
/// a test has just written can still be open for writing in a child another test thread forked and
/// has not yet exec'd.
pub fn spawn_retrying(cmd: &mut Command) -> Child {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Ok(child) => return child,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn process: {e}"),
        }
    }
}

/// A command with a clean environment for hyperfork's variables.
pub fn command(bin: &PathBuf) -> Command {
    let mut c = Command::new(bin);
    for var in [
        "UVICORN_WORKERS",
        "WEB_CONCURRENCY",
        "HYPERFORK_WORKERS",
        "HYPERFORK_MAX_WORKERS",
        "HYPERFORK_DEBUG",
        "HYPERFORK_CONFIG",
        "HYPERFORK_HOST",
        "HYPERFORK_PORT",
        "HYPERFORK_BIND",
        "HYPERFORK_LOG_LEVEL",
        "HYPERFORK_THREADS",
        "HYPERFORK_GRACEFUL_TIMEOUT",
        "HYPERFORK_FAULT",
        "HYPERFORK_SOCKET_MODE",
        "HYPERFORK_UMASK",
        "HYPERFORK_MAX_SURGE",
        "HYPERFORK_CONTROL_SOCKET",
        "HYPERFORK_METRICS_BIND",
        "HYPERFORK_PID",
        "UVICORN_RELOAD",
        "HYPERFORK_RELOAD",
        "UVICORN_RELOAD_DIRS",
        "HYPERFORK_RELOAD_DIRS",
        "UVICORN_RELOAD_INCLUDES",
        "HYPERFORK_RELOAD_INCLUDES",
        "UVICORN_RELOAD_EXCLUDES",
        "HYPERFORK_RELOAD_EXCLUDES",
        "UVICORN_RELOAD_DELAY",
        "HYPERFORK_RELOAD_DELAY",
        "RUNTIME_DIRECTORY",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    // Every other variable a setting reads (uvicorn's and gunicorn's too).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("UVICORN_")
            || name.starts_with("HYPERFORK_")
            || ["PORT", "GUNICORN_CMD_ARGS", "FORWARDED_ALLOW_IPS"].contains(&name.as_ref())
        {
            c.env_remove(name.as_ref());
        }
    }
    // The control socket's default path (without --control-socket, --pid or RUNTIME_DIRECTORY) is in
    // XDG_RUNTIME_DIR: keep the tests' sockets out of the user's runtime directory and /tmp.
    let run = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run");
    let _ = std::fs::create_dir_all(&run);
    c.env("XDG_RUNTIME_DIR", run);
    c
}

/// A running process, its stderr collected, killed (with its children) on drop.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` (stdout discarded, stderr captured).
    pub fn start(mut cmd: Command, port: u16) -> Proc {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = spawn_retrying(&mut cmd);
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut line = String::new();
            while let Ok(n) = r.read_line(&mut line) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Proc {
            child,
            port,
            stderr,
            reader: Some(reader),
            status: None,
        }
    }

    /// Starts a server binary on a fresh port with extra arguments and waits until it answers.
    pub fn serve(bin: &PathBuf, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let port = free_port();
        let mut cmd = command(bin);
        cmd.arg("--port").arg(port.to_string()).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = Proc::start(cmd, port);
        p.wait_serving();
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until `GET /` answers 200, then until the master logs its first full pool (the
    /// first worker may answer before the master has forked the last), unless a worker fails to boot
    /// or the log goes elsewhere than stderr.
    pub fn wait_serving(&mut self) {
        let port = self.port;
        let ok = wait_until(Duration::from_secs(20), || {
            get(port, "/").map(|r| r.status == 200).unwrap_or(false)
        });
        wait_until(Duration::from_secs(20), || {
            let log = self.stderr();
            log.contains(" workers ready")
                || log.contains("has every worker ready")
                || log.contains("failed to boot")
                || !log.contains("[master pid")
        });
        if !ok {
            panic!(
                "server on port {port} never answered; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Waits (bounded) until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.stderr().contains(needle))
    }

    /// Sends a signal to the master.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits (bounded) for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                // Collect the last lines. A process the master started (a binary upgrade's new
                // master) may still hold the pipe open, so the reader is not joined.
                wait_until(Duration::from_secs(2), || {
                    self.reader.as_ref().is_none_or(|r| r.is_finished())
                });
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGHUP and waits (bounded) until the log holds `n` "reload complete" lines.
    pub fn reload(&self, n: usize) {
        self.signal(libc::SIGHUP);
        assert!(
            wait_until(Duration::from_secs(60), || self
                .stderr()
                .matches("reload complete")
                .count()
                >= n),
            "reload {n} did not complete:\n{}",
            self.stderr()
        );
    }

    /// Sends SIGUSR2 and waits (bounded) for the hand-over; returns a guard that kills the new
    /// master, found by its pid in the log.
    pub fn upgrade_from_log(&self) -> PidGuard {
        self.signal(libc::SIGUSR2);
        assert!(
            self.wait_log(
                "took over from the previous master",
                Duration::from_secs(30)
            ),
            "{}",
            self.stderr()
        );
        let new: i32 = self
            .stderr()
            .split("starting a new master from ")
            .nth(1)
            .and_then(|rest| rest.split("(pid ").nth(1))
            .and_then(|rest| rest.split(')').next())
            .and_then(|pid| pid.parse().ok())
            .expect("the new master's pid in the log");
        PidGuard(new)
    }

    /// Sends SIGUSR2 and waits (bounded) until `pid_file` names a new master; returns a guard that
    /// kills it.
    pub fn upgrade_from_pid_file(&self, pid_file: &std::path::Path) -> PidGuard {
        let old = self.pid();
        self.signal(libc::SIGUSR2);
        assert!(
            wait_until(Duration::from_secs(30), || read_pid(pid_file)
                .is_some_and(|pid| pid != old)),
            "the pid file never named a new master:\n{}",
            self.stderr()
        );
        PidGuard(read_pid(pid_file).expect("a pid in the pid file"))
    }

    /// The master's live child processes.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let kids = if self.status.is_none() {
            children_of(self.pid())
        } else {
            Vec::new()
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for k in kids {
            // SAFETY: kill(2) on a pid that was our child's child a moment ago.
            unsafe {
                libc::kill(k, libc::SIGKILL);
            }
        }
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// One request on a new connection.
pub fn get(port: u16, path: &str) -> std::io::Result<Response> {
    let mut conn = Conn::open(port)?;
    conn.get(path)
}

/// A keep-alive HTTP/1.1 connection to 127.0.0.1.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().expect("addr"),
            Duration::from_secs(5),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(s),
        })
    }

    /// The socket, to write raw bytes.
    pub fn reader_mut(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Sends a GET without reading the answer.
    pub fn send_get(&mut self, path: &str) -> std::io::Result<()> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())
    }

    /// Reads one response (Content-Length bodies).
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = HashMap::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.send_get(path)?;
        self.read_response()
    }
}

/// `(slot, pid)` from the built-in app's `/health` body.
pub fn health_identity(r: &Response) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("health is JSON");
    (
        v["worker"].as_u64().expect("worker field"),
        v["pid"].as_u64().expect("pid field"),
    )
}

/// Fires `n` concurrent `/health` requests, each on its own connection; returns the `(slot, pid)` seen.
pub fn burst(port: u16, n: usize) -> Vec<(u64, u64)> {
    let handles: Vec<_> = (0..n)
        .map(|_| std::thread::spawn(move || get(port, "/health").ok().map(|r| health_identity(&r))))
        .collect();
    handles
        .into_iter()
        .filter_map(|h| h.join().ok().flatten())
        .collect()
}

/// One line a test job appended: `TICK SLOT PID` (`$HYPERFORK_SCHEDULED_AT $HYPERFORK_WORKER_ID $PPID`).
pub struct TickLine {
    pub tick: chrono::DateTime<chrono::Utc>,
    pub slot: u64,
    pub pid: i32,
}

/// Reads every line of a test job's output file (none if it does not exist yet).
pub fn read_tick_lines(path: &std::path::Path) -> Vec<TickLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let tick = chrono::DateTime::parse_from_rfc3339(f.next().unwrap())
                .unwrap()
                .with_timezone(&chrono::Utc);
            TickLine {
                tick,
                slot: f.next().unwrap().parse().unwrap(),
                pid: f.next().unwrap().parse().unwrap(),
            }
        })
        .collect()
}

/// Pids the master booted into slot 0, from its log.
pub fn slot0_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter_map(|l| l.split("booting worker 0 (pid ").nth(1))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .collect()
}

/// A load loop of our own over real sockets: `clients` keep-alive connections sending `GET /health`
/// back to back; a connection the server closes with `Connection: close` is reopened. With
/// [`Load::per_request`], every request opens its own connection instead.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad_status: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<HashSet<u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, clients: usize) -> Load {
        Load::with(port, clients, false)
    }

    /// `clients` clients each opening a new connection for every request (at most 200 a second
    /// each, so the closed connections' local ports last).
    pub fn per_request(port: u16, clients: usize) -> Load {
        Load::with(port, clients, true)
    }

    fn with(port: u16, clients: usize, per_request: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad_status = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let pids = Arc::new(Mutex::new(HashSet::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, bad, errors, pids) = (
                    stop.clone(),
                    ok.clone(),
                    bad_status.clone(),
                    errors.clone(),
                    pids.clone(),
                );
                std::thread::spawn(move || {
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match Conn::open(port) {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    errors.lock().unwrap().push(format!("connect: {e}"));
                                    std::thread::sleep(Duration::from_millis(10));
                                    continue;
                                }
                            },
                        };
                        match c.get("/health") {
                            Ok(r) => {
                                if r.status == 200 {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    pids.lock().unwrap().insert(health_identity(&r).1);
                                } else {
                                    bad.fetch_add(1, Ordering::Relaxed);
                                }
                                if per_request || r.header("connection") == Some("close") {
                                    conn = None;
                                }
                                if per_request {
                                    // Paced: each closed connection holds a local port in TIME_WAIT.
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                            }
                            Err(e) => {
                                errors.lock().unwrap().push(format!("request: {e}"));
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            bad_status,
            errors,
            pids,
            threads,
        }
    }

    /// 200 responses so far.
    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients and asserts more than `min_ok` 200s, no other status and no connection error
    /// (`log` is printed on failure); returns the pids that answered.
    pub fn finish_clean(self, min_ok: u64, log: &str) -> HashSet<u64> {
        let (ok, bad, errors, pids) = self.finish();
        assert!(ok > min_ok, "only {ok} requests served\n{log}");
        assert_eq!(bad, 0, "non-200 responses\n{log}");
        assert!(
            errors.is_empty(),
            "{} connection errors: {:?}\n{log}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        pids
    }

    /// Stops the clients; returns (200s, other statuses, connection errors, answering pids).
    pub fn finish(self) -> (u64, u64, Vec<String>, HashSet<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let errors = self.errors.lock().unwrap().clone();
        let pids = self.pids.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.bad_status.load(Ordering::Relaxed),
            errors,
            pids,
        )
    }
}

/// Kills a process this test did not spawn itself (and its children) on drop: a new master started by
/// a binary upgrade.
pub struct PidGuard(pub i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        let kids = children_of(self.0);
        for pid in std::iter::once(self.0).chain(kids) {
            // SAFETY: kill(2) on a pid this test watched being started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The pid in a pid file, if it holds one.
pub fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The parent of `pid`, from `/proc/PID/stat`.
pub fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A server with its control socket in a fresh directory (`--control-socket`), killed on drop.
pub struct CtlServer {
    pub proc: Proc,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl CtlServer {
    /// Starts `bin` with `args` and `env` and its control socket in a fresh directory; returns once
    /// it serves and the socket exists.
    pub fn start(bin: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> CtlServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("hf.ctl");
        let mut all = vec!["--control-socket", socket.to_str().expect("a UTF-8 path")];
        all.extend_from_slice(args);
        let proc = Proc::serve(&bin.to_path_buf(), &all, env);
        assert!(
            wait_until(Duration::from_secs(10), || socket.exists()),
            "the control socket exists"
        );
        CtlServer {
            proc,
            socket,
            _dir: dir,
        }
    }
}
