//! The comparative HTTP benchmark.
//!
//! `cargo bench --bench http` starts each server on loopback, warms it, and drives `GET /` in three
//! shapes: 64 keep-alive connections; 32 client loops opening a new connection per request
//! (`Connection: close`); and new connections at a steady 2,000 per second (open loop). The servers
//! are interleaved round by round (their order rotates each round), each running the three shapes in
//! turn. Figures are medians over the rounds; throughput and p99 are also given as ratios to the
//! baseline (and nginx) of the same round. Beside them runs a bare fork pool (this executable forking
//! N tokio current-thread workers that serve hyper's `http1` builder, nothing else), the reference of
//! hyperfork's CPU per request at the same pool size; and the CPU-bound scenario: the faults example
//! (`examples/faults.rs`, built by the bench) under the default pool with each accept strategy, 64
//! keep-alive connections sending `/work?us=500` at a steady 2,000 requests per second in all, where
//! the busiest worker's share of the requests and the latency show how evenly the accept spread the
//! connections. It then times hyperfork's start-up and worker replacement, and writes the report to
//! `target/bench-report.md`.
//!
//! `cargo test` runs this same program without `--bench`: one short round, written to
//! `target/bench-smoke-report.md`, with no thresholds. It keeps the harness from rotting.
//!
//! Options (after `--`): `--rounds N`, `--seconds S` (measured time per server, shape and round),
//! `--connections N` (keep-alive), `--short-connections N` (client loops of the
//! connection-per-request shape), `--steady-rate R` (new connections per second of the steady shape),
//! `--only NAME[,NAME]` (baseline, hyperfork, bare, access-log, nginx, uvicorn, cpu-bound, tls),
//! `--accept STRATEGY` (hyperfork's accept strategy), `--workers N[,N]` (hyperfork and bare pool
//! sizes), `--work-us N`, `--work-rate R`, `--work-connections N` (the CPU-bound scenario's knobs),
//! `--report FILE`. Besides the pools asked for, hyperfork runs at the default pool size with
//! `--accept shared`, the reference of the short-connection target. `access-log` is hyperfork with
//! one worker per core, logging to a file at `--log-level info`, once with the access log on and once
//! with `--no-access-log`: the access log's cost in CPU per request. `tls` is hyperfork beside nginx
//! over HTTPS with the same certificate, one worker per core each (see `tls.rs`), keep-alive and a
//! full handshake per request.

mod bare;
mod baseline;
mod load;
mod machine;
mod paced;
mod procs;
mod report;
mod servers;
mod steady;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use servers::{Kind, Logging};

/// What the run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Full benchmark (`--bench`) or smoke run.
    pub full: bool,
    /// Rounds over all servers.
    pub rounds: usize,
    /// Measured load per server and round.
    pub measure: Duration,
    /// Unmeasured load before it.
    pub warm: Duration,
    /// Keep-alive connections of the load generator.
    pub connections: usize,
    /// Client loops of the connection-per-request shape.
    pub short_connections: usize,
    /// New connections per second of the steady-rate shape.
    pub steady_rate: f64,
    /// Threads of the load generator.
    pub client_threads: usize,
    /// Repeats of each start-up / replacement timing.
    pub repeats: usize,
    /// Server families to run; empty: all.
    pub only: Vec<String>,
    /// Where the report goes.
    pub report: PathBuf,
    /// hyperfork's `--accept` strategy, if not its default.
    pub accept: Option<String>,
    /// hyperfork pool sizes to run; empty: 1, cores and the default.
    pub workers: Vec<usize>,
    /// CPU-bound scenario: µs of CPU each request burns (`/work?us=N`).
    pub work_us: u64,
    /// CPU-bound scenario: requests per second in all (open loop).
    pub work_rate: f64,
    /// CPU-bound scenario: keep-alive connections sharing the rate.
    pub work_connections: usize,
}

fn parse_options() -> Result<Options, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut o = Options {
        full,
        rounds: if full { 3 } else { 1 },
        measure: Duration::from_millis(if full { 5000 } else { 500 }),
        warm: Duration::from_millis(if full { 1000 } else { 200 }),
        connections: 64,
        short_connections: 32,
        steady_rate: 2000.0,
        client_threads: 2,
        repeats: if full { 15 } else { 2 },
        only: Vec::new(),
        accept: None,
        workers: Vec::new(),
        work_us: 500,
        work_rate: 2000.0,
        work_connections: 64,
        report: target.join(if full {
            "bench-report.md"
        } else {
            "bench-smoke-report.md"
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
            "--connections" => o.connections = number(a, value(a)?)? as usize,
            "--short-connections" => o.short_connections = number(a, value(a)?)? as usize,
            "--steady-rate" => o.steady_rate = number(a, value(a)?)?,
            "--client-threads" => o.client_threads = number(a, value(a)?)? as usize,
            "--repeats" => o.repeats = number(a, value(a)?)? as usize,
            "--only" => o.only = value(a)?.split(',').map(str::to_string).collect(),
            "--accept" => o.accept = Some(value(a)?),
            "--workers" => {
                o.workers = value(a)?
                    .split(',')
                    .map(|w| number(a, w.to_string()).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--work-us" => o.work_us = number(a, value(a)?)? as u64,
            "--work-rate" => o.work_rate = number(a, value(a)?)?,
            "--work-connections" => o.work_connections = number(a, value(a)?)? as usize,
            "--report" => o.report = PathBuf::from(value(a)?),
            other => {
                return Err(format!(
                    "unknown option {other:?} (expected --rounds, --seconds, --connections, \
                     --short-connections, --steady-rate, --client-threads, --repeats, --only, \
                     --accept, --workers, --work-us, --work-rate, --work-connections, --report)"
                ));
            }
        }
    }
    Ok(o)
}

/// Throughput, latency and failures of one short-connection shape in one round.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// 200 responses per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Slowest request, ms.
    pub max: f64,
    /// Non-200 responses plus connection errors.
    pub failures: u64,
}

impl Figures {
    /// The figures of `out`; an error when no request got a 200: figures over no answered request
    /// would be meaningless, so a broken server or generator stops the run (this is what the smoke
    /// round under `cargo test` checks).
    fn of(kind: &Kind, shape: &str, out: &mut load::Outcome) -> Result<Figures, String> {
        if out.ok == 0 {
            return Err(format!(
                "{}: no request got a 200 in the measured {shape} run ({} other statuses, {} \
                 connection errors)",
                kind.label(),
                out.non_200,
                out.errors
            ));
        }
        Ok(Figures {
            rate: out.rate(),
            p50: out.latency_ms(0.50),
            p99: out.latency_ms(0.99),
            max: out.latency_ms(1.0),
            failures: out.non_200 + out.errors,
        })
    }
}

/// One server's figures in one round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Keep-alive requests per second.
    pub rate: f64,
    /// Latency quantiles, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Slowest request, ms.
    pub max: f64,
    /// Non-200 responses plus connection errors.
    pub failures: u64,
    /// Memory right after start-up.
    pub idle: procs::TreeMemory,
    /// Memory in the middle of the measured load.
    pub loaded: procs::TreeMemory,
    /// CPU seconds of the server's processes per 100k requests.
    pub cpu_per_100k: f64,
    /// Busiest / least busy worker by requests (hyperfork only; infinite when a worker got none).
    pub spread: Option<f64>,
    /// Requests per worker.
    pub per_worker: BTreeMap<String, u64>,
    /// Connection per request, closed loop.
    pub short: Figures,
    /// New connections at a steady rate (open loop); `rate` is the 200s per second achieved.
    pub steady: Figures,
    /// Steady-rate connections the generator started late (its own lag, not the server's).
    pub steady_late: u64,
    /// 200 responses over the whole run of this server (warm-ups and all three shapes).
    pub answered: u64,
    /// Access-log lines of `200` answers in its log file after it stopped (the access-log rows).
    pub access_lines: Option<u64>,
    /// The CPU-bound scenario's figures (its rows only; they run no other shape).
    pub work: Option<Work>,
    /// Cores kept busy by processes other than the server and this benchmark over the measured
    /// keep-alive run (or CPU-bound run): other sessions disturbing the figures.
    pub others: f64,
}

/// One round of the CPU-bound scenario.
#[derive(Debug, Clone, Default)]
pub struct Work {
    /// Requests due per second (the offered rate).
    pub offered: f64,
    /// 200 responses per second.
    pub rate: f64,
    /// Median latency, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Slowest request, ms.
    pub max: f64,
    /// Non-200 responses, connection errors, and requests never sent because the server fell
    /// behind the rate.
    pub failures: u64,
    /// The busiest worker's share of the 200s, as a multiple of a fair share (1 / workers).
    pub busiest: f64,
    /// The least busy worker's share likewise (0 when a worker got none).
    pub idlest: f64,
    /// 200s per `x-worker` value.
    pub per_worker: BTreeMap<String, u64>,
    /// CPU ms of the server's processes per request (the work included).
    pub cpu_ms: f64,
}

/// The CPU-bound scenario on a started faults example: the paced keep-alive load on `/work`.
fn measure_work(
    kind: &Kind,
    o: &Options,
    server: servers::Server,
    workers: usize,
) -> Result<Sample, String> {
    let path = format!("/work?us={}", o.work_us);
    let pids = procs::tree(server.pid());
    let run = paced::start(
        server.addr,
        &path,
        o.work_connections,
        o.work_rate,
        o.warm,
        o.measure,
        o.client_threads,
    );
    std::thread::sleep(o.warm);
    let cpu_before = procs::cpu_time(&pids);
    let others = procs::Others::start(&pids);
    let mut out = run.finish();
    let cpu = procs::cpu_time(&pids).saturating_sub(cpu_before);
    let others = others.cores(&pids);
    server.stop();
    let f = Figures::of(kind, "CPU-bound", &mut out.load)?;
    let ok = out.load.ok as f64;
    let share = |n: u64| n as f64 / ok * workers as f64;
    let counts: Vec<u64> = out.load.per_worker.values().copied().collect();
    let busiest = share(counts.iter().copied().max().unwrap_or(0));
    let idlest = if counts.len() < workers {
        0.0
    } else {
        share(counts.iter().copied().min().unwrap_or(0))
    };
    Ok(Sample {
        answered: out.load.ok,
        others,
        work: Some(Work {
            offered: out.offered as f64 / o.measure.as_secs_f64(),
            rate: f.rate,
            p50: f.p50,
            p99: f.p99,
            max: f.max,
            failures: f.failures + out.unsent,
            busiest,
            idlest,
            per_worker: std::mem::take(&mut out.load.per_worker),
            cpu_ms: cpu.as_secs_f64() * 1000.0 / ok,
        }),
        ..Sample::default()
    })
}

/// From a server's first 200 to the idle memory sample and the first load: every worker is then
/// serving (its first 200 comes from the first worker ready).
const SETTLE: Duration = Duration::from_millis(300);

fn measure(kind: &Kind, o: &Options, benches: &std::path::Path) -> Result<Sample, String> {
    let server = servers::start(kind, benches)?;
    // The first 200 comes from the first worker ready; the others are ready within milliseconds.
    std::thread::sleep(SETTLE);
    if let Kind::Work { workers, .. } = kind {
        return measure_work(kind, o, server, *workers);
    }
    let idle = procs::tree_memory(server.pid());
    let keep_alive = |duration| {
        load::start(
            server.addr,
            "/",
            load::Shape::KeepAlive,
            o.connections,
            duration,
            o.client_threads,
        )
    };
    let mut answered = keep_alive(o.warm).finish().ok;
    let pids = procs::tree(server.pid());
    let cpu_before = procs::cpu_time(&pids);
    let others = procs::Others::start(&pids);
    let run = keep_alive(o.measure);
    std::thread::sleep(o.measure / 2);
    let loaded = procs::tree_memory(server.pid());
    let mut out = run.finish();
    let cpu = procs::cpu_time(&pids).saturating_sub(cpu_before);
    let others = others.cores(&pids);
    let keep = Figures::of(kind, "keep-alive", &mut out)?;
    answered += out.ok;

    let per_request = |duration| {
        load::start(
            server.addr,
            "/",
            load::Shape::ConnectionPerRequest,
            o.short_connections,
            duration,
            o.client_threads,
        )
        .finish()
    };
    answered += per_request(o.warm).ok;
    let mut short = per_request(o.measure);
    answered += short.ok;
    let short = Figures::of(kind, "connection-per-request", &mut short)?;
    let mut steady =
        steady::start(server.addr, "/", o.steady_rate, o.measure, o.client_threads).finish();
    answered += steady.load.ok;
    let steady_late = steady.late;
    let steady = Figures::of(kind, "steady-rate", &mut steady.load)?;
    let access_lines = match kind {
        Kind::Hyperfork {
            logging: Logging::AccessOn,
            ..
        } => {
            // Every answered request has its line once the server stopped gracefully (plus the
            // start-up probe's): fewer means lines were lost.
            let lines = server.stop_counting("\"GET / HTTP/1.1\" 200 ");
            if lines.is_none_or(|n| n < answered) {
                return Err(format!(
                    "{}: {} access line(s) of 200 answers in the log file for {answered} 200s \
                     answered",
                    kind.label(),
                    lines.map_or("no".to_string(), |n| n.to_string())
                ));
            }
            lines
        }
        _ => {
            server.stop();
            None
        }
    };
    let spread = match kind {
        Kind::Hyperfork { workers, .. } | Kind::Bare { workers } => {
            let counts: Vec<u64> = out.per_worker.values().copied().collect();
            let max = counts.iter().copied().max().unwrap_or(0) as f64;
            let min = if counts.len() < *workers {
                0.0
            } else {
                counts.iter().copied().min().unwrap_or(0) as f64
            };
            Some(if min == 0.0 { f64::INFINITY } else { max / min })
        }
        _ => None,
    };
    Ok(Sample {
        rate: keep.rate,
        p50: keep.p50,
        p99: keep.p99,
        max: keep.max,
        failures: keep.failures,
        idle,
        loaded,
        cpu_per_100k: cpu.as_secs_f64() / (out.ok.max(1) as f64) * 100_000.0,
        spread,
        per_worker: std::mem::take(&mut out.per_worker),
        short,
        steady,
        steady_late,
        answered,
        access_lines,
        work: None,
        others,
    })
}

/// Exec of the hyperfork binary → first 200 on `GET /`, in ms.
fn time_startup(workers: usize, accept: Option<&str>) -> Result<f64, String> {
    let addr = servers::free_addr();
    let started = Instant::now();
    let child = servers::hyperfork_command(addr, workers, accept)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start hyperfork: {e}"))?;
    let guard = servers::Server::adopt(child, addr);
    let deadline = started + Duration::from_secs(10);
    let ms = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if s.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                break started.elapsed().as_secs_f64() * 1000.0;
            }
        }
        if Instant::now() > deadline {
            return Err("hyperfork did not answer within 10 s".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    guard.stop();
    Ok(ms)
}

/// SIGKILL of the only worker → first 200 from its replacement, in ms, `repeats` times.
fn time_replacement(repeats: usize, accept: Option<String>) -> Result<Vec<f64>, String> {
    let kind = Kind::hyperfork(1, accept);
    let server = servers::start(&kind, std::path::Path::new("."))?;
    let mut out = Vec::new();
    for _ in 0..repeats {
        // A worker killed within a second of its start counts as crashing and is restarted after a
        // back-off; this measures the normal case.
        std::thread::sleep(pool_quick_death());
        let pid_of = |body: &str| {
            body.split("\"pid\":")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse::<u32>().ok())
        };
        let Some((200, body)) = load::get_once(server.addr, "/health", Duration::from_secs(5))
        else {
            return Err("hyperfork /health did not answer 200".into());
        };
        let victim = pid_of(&body).ok_or("no pid in /health")?;
        let killed = Instant::now();
        servers::signal(victim, libc::SIGKILL);
        loop {
            if let Some((200, body)) =
                load::get_once(server.addr, "/health", Duration::from_secs(5))
            {
                if pid_of(&body).is_some_and(|p| p != victim) {
                    out.push(killed.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
            }
            if killed.elapsed() > Duration::from_secs(10) {
                return Err("no replacement worker answered within 10 s".into());
            }
        }
    }
    server.stop();
    Ok(out)
}

fn main() -> ExitCode {
    // The server roles of this executable; the bare pool forks, so nothing may start a thread
    // before it.
    match std::env::var(baseline::ROLE_VAR).as_deref() {
        Ok("baseline") => return baseline::run(),
        Ok("bare") => return bare::run(),
        _ => {}
    }
    let o = match parse_options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let benches = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches");
    let machine = report::Machine::read(&servers::hyperfork_bin());
    let wanted = |name: &str| o.only.is_empty() || o.only.iter().any(|n| n == name);

    let mut kinds = Vec::new();
    let mut skipped = Vec::new();
    if wanted("baseline") {
        kinds.push(Kind::Baseline {
            threads: machine.cores,
        });
    }
    if wanted("hyperfork") {
        let mut counts = if o.workers.is_empty() {
            vec![1, machine.cores, machine.default_workers]
        } else {
            o.workers.clone()
        };
        counts.dedup();
        // The reference of the short-connection target: the default pool with a plain shared accept.
        let shared = (counts.contains(&machine.default_workers)
            && o.accept.as_deref() != Some("shared"))
        .then(|| Kind::hyperfork(machine.default_workers, Some("shared".to_string())));
        kinds.extend(
            counts
                .into_iter()
                .map(|workers| Kind::hyperfork(workers, o.accept.clone())),
        );
        kinds.extend(shared);
    }
    if wanted("bare") {
        // The bare fork pool at the sizes hyperfork is compared with: one worker per core and the
        // default (the smoke round runs one size).
        let mut counts = if o.workers.is_empty() {
            vec![machine.cores, machine.default_workers]
        } else {
            o.workers.clone()
        };
        counts.dedup();
        if !o.full {
            counts.truncate(1);
        }
        kinds.extend(counts.into_iter().map(|workers| Kind::Bare { workers }));
    }
    if wanted("access-log") {
        // The access log's cost: the same pool (one worker per core) with the log on and off, both
        // writing their other lines to a log file at `--log-level info`.
        for logging in [Logging::AccessOn, Logging::AccessOff] {
            kinds.push(Kind::Hyperfork {
                workers: machine.cores,
                accept: o.accept.clone(),
                logging,
            });
        }
    }
    if wanted("nginx") {
        match servers::find_nginx() {
            Some(binary) => kinds.push(Kind::Nginx {
                binary,
                workers: machine.cores,
            }),
            None => skipped.push(
                "nginx: not installed, skipped (install it with `apt-get install nginx-light`)"
                    .to_string(),
            ),
        }
    }
    if wanted("uvicorn") {
        match servers::find_uvicorn_python() {
            Some(python) => kinds.push(Kind::Uvicorn {
                python,
                workers: machine.default_workers,
            }),
            None => skipped.push(
                "uvicorn: no python3 that imports uvicorn, uvloop and httptools, skipped (install \
                 it with `pip install 'uvicorn[standard]'`)"
                    .to_string(),
            ),
        }
    }
    if wanted("cpu-bound") {
        // The faults example under the default pool: the strategy asked for (or the default), then
        // balanced and shared accept, each once.
        let binary = match servers::faults_bin() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("bench: {e}");
                return ExitCode::from(1);
            }
        };
        let default_accept = servers::default_accept(&binary);
        let tested = o.accept.clone().unwrap_or_else(|| default_accept.clone());
        let mut policies = vec![o.accept.clone()];
        for p in ["balanced", "shared"] {
            if tested != p {
                policies.push(Some(p.to_string()));
            }
        }
        kinds.extend(policies.into_iter().map(|accept| Kind::Work {
            binary: binary.clone(),
            workers: machine.default_workers,
            accept,
            default_accept: default_accept.clone(),
        }));
    }
    for s in &skipped {
        eprintln!("bench: {s}");
    }

    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); kinds.len()];
    let mut baseline_ratios: Vec<Vec<(f64, f64)>> = vec![Vec::new(); kinds.len()];
    for round in 0..o.rounds {
        let mut round_samples: Vec<Option<Sample>> = vec![None; kinds.len()];
        for k in 0..kinds.len() {
            let i = (k + round) % kinds.len();
            eprintln!(
                "bench: round {}/{}: {}",
                round + 1,
                o.rounds,
                kinds[i].label()
            );
            match measure(&kinds[i], &o, &benches) {
                Ok(s) if s.work.is_some() => {
                    let w = s.work.as_ref().expect("checked");
                    eprintln!(
                        "bench:   {:.0}/s offered, {:.0} answered/s, p50 {:.2} ms, p99 {:.2} ms, \
                         {} failures, busiest worker {:.2}× fair, CPU {:.3} ms/request; other \
                         processes {:.2} cores",
                        w.offered, w.rate, w.p50, w.p99, w.failures, w.busiest, w.cpu_ms, s.others
                    );
                    round_samples[i] = Some(s);
                }
                Ok(s) => {
                    eprintln!(
                        "bench:   keep-alive {:.0} req/s, p99 {:.2} ms, {} failures, CPU {:.2} s/100k; \
                         connection per request {:.0} req/s, p99 {:.2} ms, {} failures; \
                         steady {:.0}/s p50 {:.2} ms, p99 {:.2} ms, {} failures, {} late; \
                         other processes {:.2} cores (keep-alive)",
                        s.rate,
                        s.p99,
                        s.failures,
                        s.cpu_per_100k,
                        s.short.rate,
                        s.short.p99,
                        s.short.failures,
                        o.steady_rate,
                        s.steady.p50,
                        s.steady.p99,
                        s.steady.failures,
                        s.steady_late,
                        s.others
                    );
                    round_samples[i] = Some(s);
                }
                Err(e) => {
                    eprintln!("bench: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        let base = round_samples
            .iter()
            .zip(&kinds)
            .find(|(_, k)| matches!(k, Kind::Baseline { .. }))
            .and_then(|(s, _)| s.clone());
        for (i, s) in round_samples.into_iter().enumerate() {
            let Some(s) = s else { continue };
            if let Some(b) = &base {
                baseline_ratios[i].push((s.rate / b.rate, s.p99 / b.p99));
            }
            samples[i].push(s);
        }
    }

    let mut startup = Vec::new();
    let mut replacement = Vec::new();
    if wanted("hyperfork") {
        for _ in 0..o.repeats {
            match time_startup(machine.default_workers, o.accept.as_deref()) {
                Ok(ms) => startup.push(ms),
                Err(e) => {
                    eprintln!("bench: start-up timing: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        match time_replacement(o.repeats, o.accept.clone()) {
            Ok(v) => replacement = v,
            Err(e) => {
                eprintln!("bench: replacement timing: {e}");
                return ExitCode::from(1);
            }
        }
    }

    let mut tls_section = String::new();
    if wanted("tls") {
        match tls::run_scenario(&o, machine.cores) {
            Ok(section) => tls_section = section,
            Err(e) => {
                eprintln!("bench: TLS: {e}");
                return ExitCode::from(1);
            }
        }
    }

    let mut text = report::render(&report::Input {
        options: &o,
        machine: &machine,
        kinds: &kinds,
        samples: &samples,
        ratios: &baseline_ratios,
        startup: &startup,
        replacement: &replacement,
        skipped: &skipped,
    });
    text.push_str(&tls_section);
    if let Err(e) = report::write(&o.report, &text) {
        eprintln!("bench: cannot write {}: {e}", o.report.display());
        return ExitCode::from(1);
    }
    println!("{text}");
    eprintln!("bench: report written to {}", o.report.display());
    ExitCode::SUCCESS
}

/// How long a worker must live for its death to be replaced at once rather than after a back-off
/// (hyperfork's `pool::QUICK_DEATH`, plus a margin).
fn pool_quick_death() -> Duration {
    Duration::from_millis(1100)
}
