//! The servers under test: how to find, start and stop each one on a loopback port.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::baseline::ROLE_VAR;
use crate::load;
use crate::procs;

/// One server configuration of the comparison.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The single-process multi-thread hyper server (this executable), one thread per core.
    Baseline { threads: usize },
    /// The bare fork pool (this executable, [`crate::bare`]) with this many workers.
    Bare { workers: usize },
    /// The hyperfork binary with this many workers (and this `--accept` strategy, if given), logging
    /// as `logging` says.
    Hyperfork {
        workers: usize,
        accept: Option<String>,
        logging: Logging,
    },
    /// nginx with `return 200`, this many worker processes.
    Nginx { binary: PathBuf, workers: usize },
    /// uvicorn with this many workers, serving `benches/asgi_app.py`.
    Uvicorn { python: PathBuf, workers: usize },
    /// The CPU-bound scenario: the faults example (`binary`) with this many workers and this
    /// `--accept` strategy (`None`: its default, named `default_accept`), driven on `/work`.
    Work {
        binary: PathBuf,
        workers: usize,
        accept: Option<String>,
        default_accept: String,
    },
}

/// What a hyperfork row logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// `--log-level warning` to stderr: no access line (the comparison rows).
    Quiet,
    /// `--log-level info` to a log file in a temporary directory, the access log on: one line per
    /// request.
    AccessOn,
    /// The same, with `--no-access-log`: the reference of the access log's cost.
    AccessOff,
}

impl Kind {
    /// A hyperfork row with `workers` workers, the default accept strategy and quiet logs.
    pub fn hyperfork(workers: usize, accept: Option<String>) -> Kind {
        Kind::Hyperfork {
            workers,
            accept,
            logging: Logging::Quiet,
        }
    }

    /// The row label in the report.
    pub fn label(&self) -> String {
        match self {
            Kind::Baseline { threads } => {
                format!("hyper, 1 process × {threads} threads (baseline)")
            }
            Kind::Bare { workers } => format!("bare fork pool, {workers} worker(s)"),
            Kind::Hyperfork {
                workers,
                accept,
                logging,
            } => {
                let accept = accept
                    .as_ref()
                    .map_or(String::new(), |a| format!(", --accept {a}"));
                let logging = match logging {
                    Logging::Quiet => "",
                    Logging::AccessOn => ", access log on (log file)",
                    Logging::AccessOff => ", --no-access-log (log file)",
                };
                format!("hyperfork, {workers} worker(s){accept}{logging}")
            }
            Kind::Nginx { workers, .. } => format!("nginx, {workers} worker(s)"),
            Kind::Uvicorn { workers, .. } => format!("uvicorn, {workers} worker(s)"),
            Kind::Work {
                workers,
                accept,
                default_accept,
                ..
            } => match accept {
                Some(a) => format!("faults example, {workers} workers, --accept {a}"),
                None => {
                    format!("faults example, {workers} workers, default accept ({default_accept})")
                }
            },
        }
    }

    /// Whether the server runs the three `GET /` shapes (all but the CPU-bound scenario).
    pub fn is_hello(&self) -> bool {
        !matches!(self, Kind::Work { .. })
    }

    /// The accept strategy a CPU-bound row runs (its default spelled out), `None` for other rows.
    pub fn work_accept(&self) -> Option<&str> {
        match self {
            Kind::Work {
                accept,
                default_accept,
                ..
            } => Some(accept.as_deref().unwrap_or(default_accept)),
            _ => None,
        }
    }
}

/// A port that was free a moment ago, on 127.0.0.1.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    l.local_addr().expect("local address")
}

/// The hyperfork binary cargo built for this benchmark, or the one `HYPERFORK_BENCH_BINARY` names (to
/// compare two builds).
pub fn hyperfork_bin() -> PathBuf {
    std::env::var_os("HYPERFORK_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hyperfork")))
}

/// A hyperfork command serving on `addr` with `workers` workers and quiet logs.
pub fn hyperfork_command(addr: SocketAddr, workers: usize, accept: Option<&str>) -> Command {
    hyperfork_logging(&hyperfork_bin(), addr, workers, accept, "warning")
}

/// A command of `binary` (hyperfork, or an app built on it) serving on `addr` with `workers` workers
/// at `--log-level level`, none of hyperfork's settings taken from the environment.
fn hyperfork_logging(
    binary: &Path,
    addr: SocketAddr,
    workers: usize,
    accept: Option<&str>,
    level: &str,
) -> Command {
    let mut c = Command::new(binary);
    for (k, _) in std::env::vars() {
        if k.starts_with("HYPERFORK_")
            || k == "UVICORN_WORKERS"
            || k == "WEB_CONCURRENCY"
            || k == "RUST_LOG"
        {
            c.env_remove(k);
        }
    }
    c.args([
        "--host",
        &addr.ip().to_string(),
        "--port",
        &addr.port().to_string(),
    ])
    .args(["--workers", &workers.to_string(), "--log-level", level]);
    if let Some(a) = accept {
        c.args(["--accept", a]);
    }
    c
}

/// A started server; killed with its whole process tree when dropped.
pub struct Server {
    /// The process started (the master, for pre-fork servers).
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The log file it writes, if any (in `_dir`).
    pub log_file: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Takes charge of a started process listening on `addr`.
    pub fn adopt(child: Child, addr: SocketAddr) -> Server {
        Server {
            child,
            addr,
            log_file: None,
            _dir: None,
        }
    }

    /// The pid of the process started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server: SIGTERM, then SIGKILL to the whole tree after 10 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops the server as [`Server::stop`] does, then counts the lines of its log file that contain
    /// `needle` (`None` without a log file or when it cannot be read).
    pub fn stop_counting(mut self, needle: &str) -> Option<u64> {
        self.terminate();
        let file = std::fs::File::open(self.log_file.as_ref()?).ok()?;
        let mut count = 0;
        for line in std::io::BufRead::lines(std::io::BufReader::new(file)) {
            count += u64::from(line.ok()?.contains(needle));
        }
        Some(count)
    }

    fn terminate(&mut self) {
        let pids = procs::tree(self.pid());
        signal(self.pid(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in pids {
            signal(p, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid at worst gets ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Starts `kind` on a fresh loopback port and waits (up to 30 s) until it answers `GET /` with 200.
pub fn start(kind: &Kind, benches: &Path) -> Result<Server, String> {
    let addr = free_addr();
    let mut dir = None;
    let mut log_file = None;
    let mut cmd = match kind {
        Kind::Baseline { threads } => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.env(ROLE_VAR, "baseline")
                .env("HYPERFORK_BENCH_ADDR", addr.to_string())
                .env("HYPERFORK_BENCH_THREADS", threads.to_string());
            c
        }
        Kind::Bare { workers } => {
            let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
            c.env(ROLE_VAR, "bare")
                .env("HYPERFORK_BENCH_ADDR", addr.to_string())
                .env("HYPERFORK_BENCH_WORKERS", workers.to_string());
            c
        }
        Kind::Work {
            binary,
            workers,
            accept,
            ..
        } => hyperfork_logging(binary, addr, *workers, accept.as_deref(), "warning"),
        Kind::Hyperfork {
            workers,
            accept,
            logging: Logging::Quiet,
        } => hyperfork_command(addr, *workers, accept.as_deref()),
        Kind::Hyperfork {
            workers,
            accept,
            logging,
        } => {
            let d = tempfile::tempdir().map_err(|e| e.to_string())?;
            let file = d.path().join("hyperfork.log");
            let mut c =
                hyperfork_logging(&hyperfork_bin(), addr, *workers, accept.as_deref(), "info");
            c.arg("--log-file").arg(&file);
            if *logging == Logging::AccessOff {
                c.arg("--no-access-log");
            }
            dir = Some(d);
            log_file = Some(file);
            c
        }
        Kind::Nginx { binary, workers } => {
            let d = tempfile::tempdir().map_err(|e| e.to_string())?;
            let conf = d.path().join("nginx.conf");
            std::fs::write(&conf, nginx_conf(addr, *workers, d.path(), None))
                .map_err(|e| e.to_string())?;
            let mut c = Command::new(binary);
            c.arg("-p")
                .arg(d.path())
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr"]);
            dir = Some(d);
            c
        }
        Kind::Uvicorn { python, workers } => {
            let mut c = Command::new(python);
            c.args(["-m", "uvicorn", "asgi_app:app", "--app-dir"])
                .arg(benches)
                .args([
                    "--host",
                    &addr.ip().to_string(),
                    "--port",
                    &addr.port().to_string(),
                ])
                .args(["--workers", &workers.to_string()])
                .args([
                    "--log-level",
                    "warning",
                    "--no-access-log",
                    "--lifespan",
                    "off",
                ]);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
    let mut server = Server {
        child,
        addr,
        log_file,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = load::get_once(addr, "/", Duration::from_secs(2)) {
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("{} exited during start-up: {status}", kind.label()));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not answer within 30 s", kind.label()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// nginx answering every request like the others: 200, 13-byte body, the same headers, keep-alive
/// without a request cap, no access log; on TLS with `tls` (certificate chain, key), TLS 1.2 and 1.3.
pub fn nginx_conf(
    addr: SocketAddr,
    workers: usize,
    dir: &Path,
    tls: Option<(&Path, &Path)>,
) -> String {
    let d = dir.display();
    let (protocols, listen, certificate) = match tls {
        Some((cert, key)) => (
            "           ssl_protocols TLSv1.2 TLSv1.3;\n".to_string(),
            format!("{addr} ssl"),
            format!(
                "             ssl_certificate {};\n\
                              ssl_certificate_key {};\n",
                cert.display(),
                key.display()
            ),
        ),
        None => (String::new(), addr.to_string(), String::new()),
    };
    format!(
        "worker_processes {workers};\n\
         daemon off;\n\
         pid {d}/nginx.pid;\n\
         error_log stderr warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           keepalive_requests 100000000;\n\
           keepalive_timeout 65s;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
         {protocols}\
           server {{\n\
             listen {listen};\n\
         {certificate}\
             location / {{\n\
               default_type \"text/plain; charset=utf-8\";\n\
               add_header x-worker 0;\n\
               return 200 \"Hello, world!\";\n\
             }}\n\
           }}\n\
         }}\n"
    )
}

/// The faults example (`examples/faults.rs`), built for this run: `HYPERFORK_BENCH_FAULTS` if set,
/// else `cargo build --example faults` in the profile of this executable (release under `cargo
/// bench`, debug under `cargo test`, where it is already built and the call only checks it is
/// fresh), and the executable cargo reports.
pub fn faults_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HYPERFORK_BENCH_FAULTS") {
        return Ok(PathBuf::from(p));
    }
    let mut c = Command::new(env!("CARGO"));
    c.args([
        "build",
        "--example",
        "faults",
        "--message-format=json-render-diagnostics",
    ])
    .arg("--manifest-path")
    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        c.arg("--release");
    }
    let out = c
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo to build the faults example: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --example faults failed: {}",
            out.status
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == "faults"
                && m["target"]["kind"][0] == "example"
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo built the faults example but named no executable".to_string())
}

/// The accept strategy `binary` uses when `--accept` is not given, from its `--help` (`default` when
/// it cannot be read).
pub fn default_accept(binary: &Path) -> String {
    let help = Command::new(binary)
        .arg("--help")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    help.split("--accept <")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .and_then(|option| option.split("[default: ").nth(1))
        .and_then(|rest| rest.split(']').next())
        .map_or_else(|| "default".to_string(), str::to_string)
}

/// The nginx binary, if installed.
pub fn find_nginx() -> Option<PathBuf> {
    find_on_path("nginx").or_else(|| {
        let p = PathBuf::from("/usr/sbin/nginx");
        p.exists().then_some(p)
    })
}

/// A Python that can import uvicorn, uvloop and httptools (uvicorn[standard]), if any.
pub fn find_uvicorn_python() -> Option<PathBuf> {
    for name in ["python3", "python"] {
        let Some(py) = find_on_path(name) else {
            continue;
        };
        let ok = Command::new(&py)
            .args(["-c", "import uvicorn, uvloop, httptools"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(py);
        }
    }
    None
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
