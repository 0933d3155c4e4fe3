//! The real-workload benchmark: the users API of `examples/pg_app.rs` (axum, a deadpool-postgres pool,
//! `GET /users?offset=N` returning 20 rows as JSON) on one real PostgreSQL, under hyperfork's default
//! pool, as one multi-thread process (`pg_app single`), and the seeds' stack (FastAPI + asyncpg,
//! `benches/fastapi_app.py`) under `uvicorn --workers N` and under gunicorn with uvicorn workers, N
//! being hyperfork's default pool size. Every server gets the same budget of database connections.
//!
//! `cargo bench --bench workload` starts one throwaway PostgreSQL (`tests/common/pg.rs`), creates the
//! tables with `pg_app migrate`, seeds 1,000 users, then runs the servers in turn, interleaved round
//! by round (the order rotates each round): each is started fresh, its `GET /users` answer checked
//! (20 rows, the same bytes from every server), warmed, then measured under 64 keep-alive
//! connections, each client loop on its own page. It reports req/s, p50/p99, CPU per 1,000 requests
//! of the server's process tree and of PostgreSQL's processes, the server tree's memory and the
//! database connections the app held (sampled from `pg_stat_activity`), and writes the report to
//! `target/workload-report.md`.
//!
//! `cargo test` runs this same program without `--bench`: one short round (a couple of seconds per
//! server) written to `target/workload-smoke-report.md`; it fails when a server answers no 200. The
//! Python servers are skipped, with a message, when their packages are missing.
//!
//! Options (after `--`): `--rounds N`, `--seconds S` (measured time per server and round), `--warmup
//! S`, `--connections N`, `--budget N` (database connections per server), `--users N` (rows seeded),
//! `--only NAME[,NAME]` (hyperfork, single, uvicorn, gunicorn), `--workers N[,N]` (extra hyperfork
//! rows with these pool sizes, beside the default pool), `--report FILE`.

#[allow(dead_code)]
#[path = "../http/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../../tests/common/pg.rs"]
mod pg;
#[allow(dead_code)]
#[path = "../http/procs.rs"]
mod procs;

#[path = "../http/machine.rs"]
mod machine;

mod cleanup;
mod db;
mod report;
mod servers;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use servers::Kind;

/// What the run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Full benchmark (`--bench`) or smoke round.
    pub full: bool,
    /// Rounds over all servers.
    pub rounds: usize,
    /// Measured load per server and round.
    pub measure: Duration,
    /// Unmeasured load before it (pools fill, caches warm).
    pub warm: Duration,
    /// Keep-alive connections of the load generator.
    pub connections: usize,
    /// Threads of the load generator.
    pub client_threads: usize,
    /// Database connections each server may hold in all.
    pub budget: usize,
    /// Users seeded.
    pub users: usize,
    /// Servers to run; empty: all.
    pub only: Vec<String>,
    /// Pool sizes of extra hyperfork rows, besides the default pool.
    pub workers: Vec<usize>,
    /// Where the report goes.
    pub report: PathBuf,
}

/// Rows per page of `GET /users`.
pub const PAGE: usize = 20;

fn parse_options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut o = Options {
        full,
        rounds: if full { 3 } else { 1 },
        measure: Duration::from_millis(if full { 10_000 } else { 1_500 }),
        warm: Duration::from_millis(if full { 2_000 } else { 500 }),
        connections: 64,
        client_threads: 2,
        budget: 20,
        users: 1000,
        only: Vec::new(),
        workers: Vec::new(),
        report: target.join(if full {
            "workload-report.md"
        } else {
            "workload-smoke-report.md"
        }),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0)
                .ok_or_else(|| format!("{name}: expected a positive number, got {v:?}"))
        };
        match a.as_str() {
            "--bench" => {}
            "--rounds" => o.rounds = number(a, value(a)?)? as usize,
            "--seconds" => o.measure = Duration::from_secs_f64(number(a, value(a)?)?),
            "--warmup" => o.warm = Duration::from_secs_f64(number(a, value(a)?)?),
            "--connections" => o.connections = number(a, value(a)?)? as usize,
            "--client-threads" => o.client_threads = number(a, value(a)?)? as usize,
            "--budget" => o.budget = number(a, value(a)?)? as usize,
            "--users" => o.users = number(a, value(a)?)? as usize,
            "--only" => o.only = value(a)?.split(',').map(str::to_string).collect(),
            "--workers" => {
                o.workers = value(a)?
                    .split(',')
                    .map(|w| number(a, w.to_string()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--report" => o.report = PathBuf::from(value(a)?),
            other => {
                return Err(format!(
                    "unknown option {other:?} (expected --rounds, --seconds, --warmup, \
                     --connections, --client-threads, --budget, --users, --only, --workers, \
                     --report)"
                ));
            }
        }
    }
    if o.users < PAGE {
        return Err(format!("--users: at least {PAGE} (one page)"));
    }
    Ok(o)
}

/// One server's figures in one round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// 200 responses per second over the measured window.
    pub rate: f64,
    /// Median latency, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Slowest request, ms.
    pub max: f64,
    /// Non-200 responses plus connection errors and timeouts.
    pub failures: u64,
    /// What the failures were: non-200 answers by status, connection errors, of which timeouts.
    pub failure_detail: String,
    /// CPU of the server's process tree per 1,000 requests, ms.
    pub server_cpu_ms: f64,
    /// CPU of PostgreSQL's processes per 1,000 requests, ms.
    pub pg_cpu_ms: f64,
    /// RSS and PSS of the server's whole tree midway through the measured window.
    pub memory: procs::Memory,
    /// Processes in the server's tree.
    pub processes: usize,
    /// The app's database connections over the measured window (sampled every 100 ms).
    pub connections: db::Connections,
}

/// The page offsets the client loops ask for: loop `i` reads page `i mod pages`.
fn paths(o: &Options) -> Vec<String> {
    let pages = o.users / PAGE;
    (0..o.connections.min(pages).max(1))
        .map(|i| format!("/users?offset={}", i * PAGE))
        .collect()
}

/// Runs one server through warm-up and the measured window.
fn measure(
    kind: &Kind,
    o: &Options,
    env: &servers::Env,
    monitor: &db::Monitor,
    postmaster: u32,
    reference: &mut Option<(String, String)>,
) -> Result<Sample, String> {
    let server = servers::start(kind, env)?;
    check_answer(kind, &server, reference)?;
    let paths = paths(o);
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    let run = |duration| {
        load::start_paths(
            server.addr,
            &paths,
            load::Shape::KeepAlive,
            o.connections,
            duration,
            o.client_threads,
        )
    };
    let warm = run(o.warm).finish();
    if warm.ok == 0 {
        return Err(format!(
            "{}: no request got a 200 in the warm-up ({} other statuses, {} connection errors)",
            kind.label(),
            warm.non_200,
            warm.errors
        ));
    }
    let root = server.pid();
    let server_before = cpu::tree(root);
    let pg_before = cpu::tree(postmaster);
    let started = Instant::now();
    let running = run(o.measure);
    std::thread::sleep(o.measure / 2);
    let memory = procs::tree_memory(root).total;
    let processes = procs::tree(root).len();
    let mut out = running.finish();
    let ended = Instant::now();
    let server_cpu = cpu::tree(root).saturating_sub(server_before);
    let pg_cpu = cpu::tree(postmaster).saturating_sub(pg_before);
    if out.ok == 0 {
        return Err(format!(
            "{}: no request got a 200 in the measured run ({} other statuses, {} connection \
             errors)",
            kind.label(),
            out.non_200,
            out.errors
        ));
    }
    server.stop();
    let connections = monitor.between(started, ended);
    // The next server starts with none of this one's connections left.
    if !monitor.wait_for_no_app_connections(Duration::from_secs(15)) {
        eprintln!(
            "workload: {}: its database connections were still open 15 s after it stopped",
            kind.label()
        );
    }
    let answered = out.ok as f64;
    let per_1k_ms = |cpu: Duration| cpu.as_secs_f64() * 1000.0 / answered * 1000.0;
    Ok(Sample {
        rate: out.rate(),
        p50: out.latency_ms(0.50),
        p99: out.latency_ms(0.99),
        max: out.latency_ms(1.0),
        failures: out.non_200 + out.errors,
        failure_detail: failure_detail(&out),
        server_cpu_ms: per_1k_ms(server_cpu),
        pg_cpu_ms: per_1k_ms(pg_cpu),
        memory,
        processes,
        connections,
    })
}

/// `"3 × 500, 2 connection errors (1 timeout)"`, empty without failures.
fn failure_detail(out: &load::Outcome) -> String {
    let mut parts: Vec<String> = out
        .statuses
        .iter()
        .map(|(status, n)| format!("{n} × {status}"))
        .collect();
    if out.errors > 0 {
        parts.push(format!(
            "{} connection error(s) ({} timeout(s))",
            out.errors, out.timeouts
        ));
    }
    parts.join(", ")
}

/// Checks the server's `GET /users?offset=40`: 200, a JSON array of the 20 users from id 41, and the
/// same bytes as the first server's answer (so every server does the same work).
fn check_answer(
    kind: &Kind,
    server: &servers::Server,
    reference: &mut Option<(String, String)>,
) -> Result<(), String> {
    let offset = 2 * PAGE;
    let path = format!("/users?offset={offset}");
    let Some((status, body)) = load::get_once(server.addr, &path, Duration::from_secs(10)) else {
        return Err(format!("{}: no answer to GET {path}", kind.label()));
    };
    if status != 200 {
        return Err(format!(
            "{}: GET {path} answered {status}: {body}",
            kind.label()
        ));
    }
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).map_err(|e| {
        format!(
            "{}: GET {path}: not a JSON array ({e}): {body}",
            kind.label()
        )
    })?;
    let ids: Vec<Option<u64>> = rows.iter().map(|r| r["id"].as_u64()).collect();
    let expected: Vec<Option<u64>> = (offset + 1..=offset + PAGE)
        .map(|i| Some(i as u64))
        .collect();
    if ids != expected {
        return Err(format!(
            "{}: GET {path}: expected ids {}..={}, got {body}",
            kind.label(),
            offset + 1,
            offset + PAGE
        ));
    }
    match reference {
        None => *reference = Some((kind.label(), body)),
        Some((label, first)) if *first != body => {
            return Err(format!(
                "{}: GET {path} answered other bytes than {label}:\n{body}\nagainst:\n{first}",
                kind.label()
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// CPU time of process trees.
mod cpu {
    use std::time::Duration;

    /// User + system CPU of `root` and its descendants, with that of their children already reaped
    /// (a PostgreSQL backend that exited is in the postmaster's `cutime`).
    pub fn tree(root: u32) -> Duration {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks: u64 = crate::procs::tree(root)
            .iter()
            .map(|p| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                    return 0;
                };
                let Some((_, after)) = stat.rsplit_once(')') else {
                    return 0;
                };
                // After the command: state (0), ppid, …, utime (11), stime, cutime, cstime (14).
                after
                    .split_whitespace()
                    .skip(11)
                    .take(4)
                    .filter_map(|f| f.parse::<u64>().ok())
                    .sum::<u64>()
            })
            .sum();
        Duration::from_secs_f64(ticks as f64 / hz)
    }
}

/// Machine and run facts for the report.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Cores, hyperfork's default pool, CPU model, kernel, memory.
    pub host: machine::Machine,
    /// `postgres --version`.
    pub postgres: String,
    /// Python and package versions of the FastAPI rows, if run.
    pub python: Option<String>,
}

impl Machine {
    fn read() -> Machine {
        let postgres = pg::server_bin_dir()
            .and_then(|d| {
                std::process::Command::new(d.join("postgres"))
                    .arg("--version")
                    .output()
                    .ok()
            })
            .map_or_else(
                || "unknown".to_string(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
            );
        Machine {
            host: machine::Machine::read(Path::new(env!("CARGO_BIN_EXE_hyperfork"))),
            postgres,
            python: None,
        }
    }
}

fn main() -> ExitCode {
    // SIGINT, SIGTERM and SIGHUP: a thread stops every server and the PostgreSQL this run started,
    // then exits.
    if let Err(e) = cleanup::install() {
        eprintln!("workload: {e}");
        return ExitCode::from(1);
    }
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("workload: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(o: &Options) -> Result<(), String> {
    let began = Instant::now();
    let mut machine = Machine::read();
    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|n| n == name);
    let workers = machine.host.default_workers;
    let mut kinds = Vec::new();
    let mut skipped = Vec::new();
    if wanted("hyperfork") {
        kinds.push(Kind::Hyperfork {
            workers,
            default: true,
        });
        for &w in &o.workers {
            kinds.push(Kind::Hyperfork {
                workers: w,
                default: false,
            });
        }
    }
    if wanted("single") {
        kinds.push(Kind::Single {
            threads: machine.host.cores,
        });
    }
    if wanted("uvicorn") || wanted("gunicorn") {
        match servers::find_python() {
            Ok((python, versions)) => {
                machine.python = Some(versions);
                if wanted("uvicorn") {
                    kinds.push(Kind::Uvicorn {
                        python: python.clone(),
                        workers,
                    });
                }
                if wanted("gunicorn") {
                    if servers::python_imports(&python, "gunicorn") {
                        kinds.push(Kind::Gunicorn { python, workers });
                    } else {
                        skipped.push(
                            "gunicorn: not installed for this python3, skipped (install it with \
                             `python3 -m pip install gunicorn`)"
                                .to_string(),
                        );
                    }
                }
            }
            Err(why) => skipped.push(format!(
                "FastAPI rows (uvicorn, gunicorn): {why}, skipped (install them with `python3 -m \
                 pip install fastapi asyncpg gunicorn 'uvicorn[standard]'`)"
            )),
        }
    }
    for s in &skipped {
        eprintln!("workload: {s}");
    }
    if kinds.is_empty() {
        return Err("no server to run".into());
    }

    let pg_app = servers::pg_app_binary(o.full)?;
    eprintln!(
        "workload: starting PostgreSQL ({}), seeding {} users",
        machine.postgres, o.users
    );
    let cluster = pg::PgCluster::with_max_connections((o.budget as u32 + 20).max(100));
    cleanup::register_postgres(cluster.postmaster_pid(), cluster.socket_dir());
    db::prepare(&cluster, &pg_app, o.users)?;
    let monitor = db::Monitor::start(&cluster.url())?;
    let postmaster = u32::try_from(cluster.postmaster_pid())
        .map_err(|_| "postmaster.pid holds no valid pid".to_string())?;
    let env = servers::Env {
        pg_app,
        benches: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches"),
        database_url: cluster.url(),
        budget: o.budget,
    };

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); kinds.len()];
    let mut reference = None;
    for round in 0..o.rounds {
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            eprintln!(
                "workload: round {}/{}: {}",
                round + 1,
                o.rounds,
                kinds[i].label()
            );
            let s = measure(&kinds[i], o, &env, &monitor, postmaster, &mut reference)?;
            eprintln!(
                "workload:   {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} failures{}; CPU per 1k \
                 requests: server {:.0} ms, PostgreSQL {:.0} ms; RSS {:.0} MiB; DB connections \
                 peak {}, median {}",
                s.rate,
                s.p50,
                s.p99,
                s.failures,
                if s.failures > 0 {
                    format!(" ({})", s.failure_detail)
                } else {
                    String::new()
                },
                s.server_cpu_ms,
                s.pg_cpu_ms,
                s.memory.rss_kib as f64 / 1024.0,
                s.connections.peak,
                s.connections.median,
            );
            samples[i].push(s);
        }
    }
    drop(monitor);
    drop(cluster);
    cleanup::unregister_postgres();

    let text = report::render(&report::Input {
        options: o,
        machine: &machine,
        kinds: &kinds,
        samples: &samples,
        skipped: &skipped,
    });
    if let Some(dir) = o.report.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&o.report, &text)
        .map_err(|e| format!("cannot write {}: {e}", o.report.display()))?;
    println!("{text}");
    eprintln!(
        "workload: report written to {} ({:.0} s in all)",
        o.report.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

// What `tests/common/pg.rs` takes from its parent module, from the same file as in `tests/common/mod.rs`.
#[path = "../../tests/common/process.rs"]
mod process;
pub use process::{alive, children_of, free_port, wait_until};
