//! The servers under test: how to build, find, start and stop each one on a loopback port.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cleanup, load, procs};

/// The surge hyperfork keeps room for by default (`--max-surge`): `share_of` divides the budget by the
/// pool size plus this.
pub const HYPERFORK_MAX_SURGE: usize = 1;

/// One server of the comparison.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `pg_app` under hyperfork with this many workers, each worker's pool `share_of(budget)`;
    /// `default`: the default pool size (no `--workers`).
    Hyperfork { workers: usize, default: bool },
    /// `pg_app single`: one process, a tokio multi-thread runtime (one thread per core), one pool of
    /// the whole budget.
    Single { threads: usize },
    /// `benches/fastapi_app.py` under `uvicorn --workers N`.
    Uvicorn { python: PathBuf, workers: usize },
    /// `benches/fastapi_app.py` under `gunicorn -k uvicorn.workers.UvicornWorker -w N`.
    Gunicorn { python: PathBuf, workers: usize },
}

impl Kind {
    /// The row label in the report.
    pub fn label(&self) -> String {
        match self {
            Kind::Hyperfork {
                workers,
                default: true,
            } => format!("hyperfork, pg_app, default pool ({workers} workers)"),
            Kind::Hyperfork { workers, .. } => format!("hyperfork, pg_app, --workers {workers}"),
            Kind::Single { threads } => {
                format!("axum, pg_app single: 1 process × {threads} threads")
            }
            Kind::Uvicorn { workers, .. } => {
                format!("FastAPI + asyncpg, uvicorn --workers {workers}")
            }
            Kind::Gunicorn { workers, .. } => {
                format!("FastAPI + asyncpg, gunicorn -k uvicorn.workers.UvicornWorker -w {workers}")
            }
        }
    }

    /// The database pools the server holds at most, as "processes × connections".
    pub fn pools(&self, budget: usize) -> String {
        match self {
            Kind::Hyperfork { workers, .. } => format!(
                "{workers} × {} (`share_of({budget})`, room kept for a surge of \
                 {HYPERFORK_MAX_SURGE})",
                budget / (workers + HYPERFORK_MAX_SURGE)
            ),
            Kind::Single { .. } => format!("1 × {budget}"),
            Kind::Uvicorn { workers, .. } | Kind::Gunicorn { workers, .. } => {
                format!(
                    "{workers} × {} (budget / workers)",
                    budget / workers.max(&1)
                )
            }
        }
    }
}

/// What every server is started with.
pub struct Env {
    /// The `pg_app` example binary.
    pub pg_app: PathBuf,
    /// `benches/`, where `fastapi_app.py` is.
    pub benches: PathBuf,
    /// The app's PostgreSQL URL.
    pub database_url: String,
    /// Database connections the server may hold in all.
    pub budget: usize,
}

/// A started server; stopped with its whole process tree when dropped.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// The pid of the process started (the master, for pre-fork servers).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server: SIGTERM, then SIGKILL to the whole tree after 15 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = self.pid();
        let pids = procs::tree(pid);
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
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
        cleanup::unregister_server(pid);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions; a stale pid at worst gets ESRCH.
        unsafe { libc::kill(pid, sig) };
    }
}

/// A port that was free a moment ago, on 127.0.0.1.
fn free_addr() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// A command without the variables that would change a server's worker count, logging or database.
fn command(program: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k_str = k.to_string_lossy();
        if k_str.starts_with("HYPERFORK_")
            || k_str.starts_with("PG")
            || [
                "UVICORN_WORKERS",
                "WEB_CONCURRENCY",
                "RUST_LOG",
                "DATABASE_URL",
                "DB_BUDGET",
                "GUNICORN_CMD_ARGS",
            ]
            .contains(&k_str.as_ref())
        {
            c.env_remove(k);
        }
    }
    c
}

/// Starts `kind` on a fresh loopback port and waits (up to 60 s) until `GET /users` answers 200.
pub fn start(kind: &Kind, env: &Env) -> Result<Server, String> {
    let addr = free_addr()?;
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let budget = env.budget.to_string();
    let mut cmd = match kind {
        Kind::Hyperfork { workers, default } => {
            // The default pool: no --workers. No access log, as in every other row.
            let mut c = command(&env.pg_app);
            c.args(["--database-url", &env.database_url, "--db-budget", &budget])
                .args(["--host", &host, "--port", &port, "--log-level", "warning"]);
            if !default {
                c.args(["--workers", &workers.to_string()]);
            }
            c
        }
        Kind::Single { .. } => {
            let mut c = command(&env.pg_app);
            c.args(["--database-url", &env.database_url]).args([
                "single",
                "--listen",
                &addr.to_string(),
                "--pool-size",
                &budget,
            ]);
            c
        }
        Kind::Uvicorn { python, workers } => {
            let mut c = command(python);
            c.args(["-m", "uvicorn", "fastapi_app:app", "--app-dir"])
                .arg(&env.benches)
                .args(["--host", &host, "--port", &port])
                .args(["--workers", &workers.to_string()])
                .args(["--log-level", "warning", "--no-access-log"]);
            python_env(&mut c, env, *workers);
            c
        }
        Kind::Gunicorn { python, workers } => {
            let mut c = command(python);
            c.args(["-m", "gunicorn", "fastapi_app:app", "--chdir"])
                .arg(&env.benches)
                .args(["-k", "uvicorn.workers.UvicornWorker"])
                .args(["-w", &workers.to_string(), "-b", &addr.to_string()])
                .args(["--log-level", "warning"]);
            python_env(&mut c, env, *workers);
            c
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", kind.label()))?;
    cleanup::register_server(child.id());
    let mut server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = load::get_once(addr, "/users?offset=0", Duration::from_secs(5)) {
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("{} exited during start-up: {status}", kind.label()));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer GET /users with 200 within 60 s",
                kind.label()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The FastAPI app's settings: the URL, the budget, and the worker count (both servers also read
/// `WEB_CONCURRENCY`; the app divides the budget by it).
fn python_env(c: &mut Command, env: &Env, workers: usize) {
    c.env("DATABASE_URL", &env.database_url)
        .env("DB_BUDGET", env.budget.to_string())
        .env("WEB_CONCURRENCY", workers.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1");
}

/// The `pg_app` example of the same profile as this benchmark (release under `cargo bench`, debug
/// under `cargo test`), built with `cargo build --example pg_app` when this is the full run (so it is
/// never stale) or when it is missing.
pub fn pg_app_binary(full: bool) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    // target/<profile>/deps/workload-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected location of this executable: {}", exe.display()))?;
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let binary = profile_dir.join("examples").join("pg_app");
    if full || !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "--example", "pg_app", "--manifest-path"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                c.arg("--release");
            }
            other => {
                c.args(["--profile", other]);
            }
        }
        eprintln!("workload: building the pg_app example ({profile})");
        let status = c
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo to build the pg_app example: {e}"))?;
        if !status.success() {
            return Err(format!(
                "building the pg_app example failed ({status}); try `cargo build {}--example \
                 pg_app`",
                if profile == "release" {
                    "--release "
                } else {
                    ""
                }
            ));
        }
    }
    if !binary.exists() {
        return Err(format!(
            "the pg_app example is not at {}; build it with `cargo build --example pg_app`",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Whether `python` imports `modules` (comma-separated).
pub fn python_imports(python: &Path, modules: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Python that imports FastAPI, asyncpg and uvicorn[standard] (uvloop, httptools), and a line of
/// its versions; or why there is none.
pub fn find_python() -> Result<(PathBuf, String), String> {
    const MODULES: &str = "fastapi, asyncpg, uvicorn, uvloop, httptools";
    let mut found_any = false;
    for name in ["python3", "python"] {
        let Some(py) = find_on_path(name) else {
            continue;
        };
        found_any = true;
        if !python_imports(&py, MODULES) {
            continue;
        }
        let script = r#"
import sys, importlib.metadata as m
def v(p):
    try:
        return m.version(p)
    except m.PackageNotFoundError:
        return "absent"
print(f"Python {sys.version.split()[0]}, FastAPI {v('fastapi')}, asyncpg {v('asyncpg')}, "
      f"uvicorn {v('uvicorn')}, uvloop {v('uvloop')}, httptools {v('httptools')}, "
      f"gunicorn {v('gunicorn')}")
"#;
        let versions = Command::new(&py)
            .args(["-c", script])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "Python (versions unknown)".to_string());
        return Ok((py, versions));
    }
    Err(if found_any {
        format!("no python3 that imports {MODULES}")
    } else {
        "no python3 on PATH".to_string()
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
