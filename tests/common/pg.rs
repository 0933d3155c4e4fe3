//! A throwaway PostgreSQL cluster for tests: `initdb` + `pg_ctl start` in a fresh temp dir, listening
//! on 127.0.0.1 (a free port) and on a unix socket in that dir, stopped on drop with every process it
//! started killed, on every path (a panicking test included).
//!
//! The server binaries (`initdb`, `pg_ctl`, `postgres`) come from Debian's `postgresql` package, in
//! `/usr/lib/postgresql/<version>/bin` (the highest version), or from `PATH`; `.ci/run` installs the
//! package. Without them [`PgCluster::start`] panics: a test that needs PostgreSQL fails, it never
//! skips.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (as CI does), `initdb` and `pg_ctl`
//! (and so the server) run as `nobody` (uid and gid 65534, no supplementary groups), and the temp dir
//! belongs to `nobody`.
//!
//! The app gets role `app` (password `app`, scram-sha-256 over TCP) and database `app`, which it owns:
//! [`PgCluster::url`]. The harness itself talks to the server with `psql` over the unix socket as the
//! superuser `postgres`, in a `replication=database` session: a WAL sender, which runs plain SQL but
//! takes a `max_wal_senders` slot, not one of the `max_connections` slots. So every one of the
//! `max_connections` slots is the app's (no superuser reserve), and [`PgCluster::query`] and
//! [`PgCluster::app_connections`] keep working, without taking a slot from the app, when it uses all.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{alive, children_of, free_port, wait_until};

/// The uid and gid the server runs as when the tests run as root (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;
/// The app's role, its password and its database.
pub const APP: &str = "app";
/// WAL sender slots: how many harness sessions may be open at once.
const HARNESS_SLOTS: u32 = 20;
/// `application_name` of the harness's own sessions, which [`PgCluster::app_connections`] leaves out.
const HARNESS_APP_NAME: &str = "pg-test-harness";
/// The one message for a machine without the server binaries.
const MISSING: &str = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in \
    /usr/lib/postgresql/*/bin nor on PATH: install Debian's server package with \
    `apt-get install postgresql` (.ci/run does); this test needs a real PostgreSQL";

/// A running throwaway cluster; dropping it stops the server and removes its files.
pub struct PgCluster {
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`; removed once `Drop::drop` has
    /// stopped the server (fields drop after it).
    dir: tempfile::TempDir,
    /// Directory of `initdb`, `pg_ctl` and `postgres`.
    bin: PathBuf,
    psql: PathBuf,
    port: u16,
    /// `Some(uid)` when the tests run as root and the server runs as that uid.
    run_as: Option<u32>,
}

impl PgCluster {
    /// Starts a cluster with `max_connections = 100`.
    pub fn start() -> PgCluster {
        PgCluster::with_max_connections(100)
    }

    /// Starts a cluster with `max_connections` client slots, all of them the app's: the next client
    /// connection is refused ("sorry, too many clients already"), while the harness keeps working. A
    /// test can also cap the app's role alone with `pg.admin_query("ALTER ROLE app CONNECTION LIMIT
    /// n")` ("too many connections for role").
    pub fn with_max_connections(max_connections: u32) -> PgCluster {
        assert!(max_connections > 0, "max_connections must be at least 1");
        let bin = server_bin_dir().unwrap_or_else(|| panic!("{MISSING}"));
        let psql = psql_path(&bin).unwrap_or_else(|| {
            panic!(
                "psql not found in {} nor on PATH: install it with `apt-get install postgresql` \
                 (which brings postgresql-client)",
                bin.display()
            )
        });
        // SAFETY: geteuid cannot fail.
        let run_as = (unsafe { libc::geteuid() } == 0).then_some(NOBODY);
        let dir = tempfile::Builder::new()
            .prefix("pg-")
            .tempdir()
            .expect("create a temp dir for the PostgreSQL cluster");
        // Traversable by others: a test may connect to the unix socket as another user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the cluster's temp dir");
        if let Some(uid) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(uid))
                .expect("chown the cluster's temp dir to nobody");
        }
        // The guard exists from here on: a panic in a later step stops whatever was started.
        let mut pg = PgCluster {
            dir,
            bin,
            psql,
            port: 0,
            run_as,
        };
        if run_as.is_some() {
            pg.check_usable_by_server_user();
        }
        pg.initdb(max_connections);
        pg.start_server();
        pg.admin_exec(
            "postgres",
            &[
                &format!("CREATE ROLE {APP} LOGIN PASSWORD '{APP}'"),
                &format!("CREATE DATABASE {APP} OWNER {APP}"),
            ],
        );
        pg
    }

    /// The app's connection string: `postgres://app:app@127.0.0.1:PORT/app`.
    pub fn url(&self) -> String {
        format!("postgres://{APP}:{APP}@127.0.0.1:{}/{APP}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory of the unix socket (`.s.PGSQL.PORT`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> i32 {
        postmaster_pid(&self.data_dir()).expect("postmaster.pid names the running postmaster")
    }

    /// Runs `sql` in database `app` as role `app` (objects it creates belong to the app) and returns
    /// the rows of its last statement, each column as text (NULL as ""). Panics on an SQL error.
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.psql_rows(APP, &[&format!("SET ROLE {APP}"), sql])
    }

    /// Runs `sql` in database `app` as the superuser; the rows of its last statement.
    pub fn admin_query(&self, sql: &str) -> Vec<Vec<String>> {
        self.psql_rows(APP, &[sql])
    }

    /// How many client sessions are connected to database `app`, not counting the harness's own
    /// (this query's included).
    pub fn app_connections(&self) -> usize {
        let rows = self.admin_query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{APP}' \
             AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND application_name IS DISTINCT FROM '{HARNESS_APP_NAME}'"
        ));
        rows.first()
            .and_then(|r| r.first())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("count(*) from pg_stat_activity, got {rows:?}"))
    }

    /// A `psql` command connected over TCP with [`url`](Self::url)'s credentials, as the app connects:
    /// `-X -q -At -F TAB -v ON_ERROR_STOP=1`; add `-c SQL`, or pipe statements to its stdin.
    pub fn app_psql(&self) -> Command {
        self.psql_to(&self.url())
    }

    /// A `psql` command connected to `url` (a connection string), with `app_psql`'s options.
    pub fn psql_to(&self, url: &str) -> Command {
        let mut c = Command::new(&self.psql);
        clear_pg_env(&mut c);
        c.args(["-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(url)
            .env("PGCONNECT_TIMEOUT", "10");
        c
    }

    /// Opens one more app connection (a `psql` over TCP, idle, reading its stdin) and waits (bounded)
    /// until the server counts it; closed when the returned guard drops.
    pub fn hold_app_connection(&self) -> HeldConnection {
        let before = self.app_connections();
        let mut cmd = self.app_psql();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn psql to hold a connection");
        let mut exited = None;
        let counted = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            self.app_connections() > before
        });
        if !counted || exited.is_some() {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut err);
            }
            let why = exited.map_or("not counted within 10 s".to_string(), |s| s.to_string());
            panic!("psql could not hold an app connection ({why}): {err}");
        }
        HeldConnection { child }
    }

    /// Stops the server with `pg_ctl stop -m fast`: every session is ended, the data stays; [`start`]
    /// brings it back on the same port. Dropping the cluster stops it anyway.
    ///
    /// [`start`]: PgCluster::start_again
    pub fn stop_fast(&self) {
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        let out = run_within(c, Duration::from_secs(90)).expect("run pg_ctl stop");
        assert!(out.status.success(), "pg_ctl stop failed:\n{}", out.text());
    }

    /// Starts the server [`stop_fast`](PgCluster::stop_fast) stopped, on the port it had.
    pub fn start_again(&self) {
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        let out = run_within(c, Duration::from_secs(90)).expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start (again, port {}) failed:\n{}\nserver log:\n{}",
            self.port,
            out.text(),
            self.log()
        );
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server binaries, run as the server's user, in the temp dir.
    fn server_command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        clear_pg_env(&mut c);
        c.current_dir(self.dir.path()).env("LC_ALL", "C");
        if let Some(id) = self.run_as {
            // As root, std drops the supplementary groups before setuid.
            c.uid(id).gid(id);
        }
        c
    }

    /// As root: the server's user can run the binaries and write the temp dir.
    fn check_usable_by_server_user(&self) {
        let mut c = Command::new("test");
        c.current_dir("/")
            .arg("-x")
            .arg(self.bin.join("initdb"))
            .args(["-a", "-x"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-a", "-x"])
            .arg(self.bin.join("postgres"))
            .args(["-a", "-w"])
            .arg(self.dir.path())
            .uid(NOBODY)
            .gid(NOBODY);
        let out = run_within(c, Duration::from_secs(10)).expect("run `test` as nobody");
        assert!(
            out.status.success(),
            "PostgreSQL refuses to run as root, so the tests run it as nobody (uid {NOBODY}), which \
             cannot run the binaries in {} or write {}: check the permissions of both and of the \
             directories above them (TMPDIR)",
            self.bin.display(),
            self.dir.path().display()
        );
    }

    fn initdb(&self, max_connections: u32) {
        let mut c = self.server_command("initdb");
        c.arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        let out = run_within(c, Duration::from_secs(120)).expect("run initdb");
        assert!(out.status.success(), "initdb failed:\n{}", out.text());
        let conf = format!(
            "\n# Added by the test harness: a throwaway cluster.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             max_connections = {max_connections}\n\
             superuser_reserved_connections = 0\n\
             max_wal_senders = {HARNESS_SLOTS}\n\
             password_encryption = 'scram-sha-256'\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n",
            self.dir.path().display()
        );
        let path = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("append to postgresql.conf");
    }

    /// `pg_ctl start` on a free port, again on another port if that one was taken meanwhile.
    fn start_server(&mut self) {
        let log_path = self.dir.path().join("postgres.log");
        for attempt in 1..=3 {
            let port = free_port();
            let log_before = self.log().len();
            let mut c = self.server_command("pg_ctl");
            c.arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log_path)
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("-p {port}"))
                .arg("start");
            let out = run_within(c, Duration::from_secs(90)).expect("run pg_ctl start");
            if out.status.success() {
                self.port = port;
                return;
            }
            let log = self.log();
            let new_log = log.get(log_before..).unwrap_or(&log);
            if attempt < 3 && new_log.contains("could not bind") {
                continue;
            }
            panic!(
                "pg_ctl start failed (port {port}):\n{}\nserver log:\n{new_log}",
                out.text()
            );
        }
    }

    /// Runs each statement (one `-c` each, so each in its own transaction) as the superuser.
    fn admin_exec(&self, db: &str, statements: &[&str]) {
        self.psql_rows(db, statements);
    }

    fn psql_rows(&self, db: &str, statements: &[&str]) -> Vec<Vec<String>> {
        let mut c = Command::new(&self.psql);
        clear_pg_env(&mut c);
        c.args(["-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d"])
            // A WAL sender session runs SQL too, outside the app's max_connections slots.
            .arg(format!("dbname={db} replication=database"))
            .env("PGAPPNAME", HARNESS_APP_NAME)
            .env("PGCONNECT_TIMEOUT", "10");
        for s in statements {
            c.arg("-c").arg(s);
        }
        let out = run_within(c, Duration::from_secs(60)).expect("run psql");
        assert!(
            out.status.success(),
            "psql failed running {statements:?}:\n{}",
            out.text()
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let Some(pid) = postmaster_pid(&data) else {
            return; // never started, or already stopped
        };
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        let mut c = self.server_command("pg_ctl");
        c.arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        let _ = run_within(c, Duration::from_secs(15));
        wait_until(Duration::from_secs(5), || !alive(pid));
        // Whatever outlived the stop (a hung postmaster, an orphaned backend) is killed.
        for &p in &pids {
            if alive(p) && is_postgres(p) {
                // SAFETY: kill(2) on a postgres process this cluster started.
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                }
            }
        }
        if !wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))) {
            eprintln!("PgCluster: postgres processes {pids:?} still alive after SIGKILL");
        }
    }
}

/// An extra app connection (an idle `psql`); dropping it kills the `psql`, which closes it.
pub struct HeldConnection {
    child: Child,
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The finished output of a bounded command.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Exit status, stdout and stderr, for failure messages.
    pub fn text(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            String::from_utf8_lossy(&self.stdout),
            String::from_utf8_lossy(&self.stderr)
        )
    }
}

/// Runs `cmd` (stdin null, output captured) for at most `timeout`; past that it is killed and this
/// returns an error. Output a lingering grandchild keeps open is given up on after 2 s more.
pub fn run_within(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {what}: {e}"))?;
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        if let Some(mut pipe) = pipe {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        rx
    };
    let out_rx = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_rx = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} still running after {timeout:?}; killed"));
            }
            Err(e) => return Err(format!("wait for {what}: {e}")),
        }
    };
    let grace = Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: out_rx.recv_timeout(grace).unwrap_or_default(),
        stderr: err_rx.recv_timeout(grace).unwrap_or_default(),
    })
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: Debian's highest version under
/// `/usr/lib/postgresql`, else the first `PATH` entry that has all three.
pub fn server_bin_dir() -> Option<PathBuf> {
    let has_all = |d: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|p| d.join(p).is_file())
    };
    let version = |d: &Path| -> Vec<u32> {
        d.file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.split('.').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default()
    };
    let mut debian: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|d| has_all(&d.join("bin")))
        .collect();
    debian.sort_by_key(|d| version(d));
    if let Some(d) = debian.pop() {
        return Some(d.join("bin"));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).find(|d| has_all(d))
}

/// `psql` beside the server binaries (Debian keeps one there), else on `PATH`.
fn psql_path(bin: &Path) -> Option<PathBuf> {
    std::iter::once(bin.to_path_buf())
        .chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ))
        .map(|d| d.join("psql"))
        .find(|p| p.is_file())
}

/// Removes libpq's `PG*` variables, so only the arguments decide where a client connects.
fn clear_pg_env(c: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            c.env_remove(k);
        }
    }
}

/// The pid on the first line of `DATA/postmaster.pid`.
fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a postgres process (not some process that reused the pid).
fn is_postgres(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
}
