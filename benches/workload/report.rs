//! The Markdown report: the machine, one row per server, the seed's claim beside them, and the
//! targets.

use std::fmt::Write as _;

use crate::servers::Kind;
use crate::{Machine, Options, Sample};

/// The seed's claim: FastAPI + asyncpg with 4 uvicorn workers on 6 cores, in req/s.
pub const SEED_CLAIM: (f64, f64) = (800.0, 1000.0);
/// The cores of the seed's claim.
pub const SEED_CORES: f64 = 6.0;

/// Everything the report shows.
pub struct Input<'a> {
    /// How the run was made.
    pub options: &'a Options,
    /// Where.
    pub machine: &'a Machine,
    /// The servers, in table order.
    pub kinds: &'a [Kind],
    /// Each server's samples, one per round.
    pub samples: &'a [Vec<Sample>],
    /// Servers not run, and why.
    pub skipped: &'a [String],
}

/// The median of `v` (NaN when empty).
pub fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "–".to_string()
    }
}

/// `1234.5` → `1,235`.
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let n = x.round() as i64;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

impl Input<'_> {
    fn position(&self, f: fn(&Kind) -> bool) -> Option<usize> {
        self.kinds.iter().position(f)
    }

    /// Per round, `rate(i) / rate(j)`; empty without both.
    fn round_ratios(&self, i: Option<usize>, j: Option<usize>) -> Vec<f64> {
        match (i, j) {
            (Some(i), Some(j)) => self.samples[i]
                .iter()
                .zip(&self.samples[j])
                .map(|(a, b)| a.rate / b.rate)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn rate(&self, i: Option<usize>) -> f64 {
        i.map_or(f64::NAN, |i| median(self.samples[i].iter().map(|s| s.rate)))
    }
}

/// `1.07× (per round: 0.91, 1.10, …)`, or "not measured".
fn ratios(v: &[f64]) -> String {
    if v.is_empty() {
        return "not measured".into();
    }
    let rounds: Vec<String> = v.iter().map(|r| format!("{r:.2}")).collect();
    format!(
        "{} (per round: {})",
        ratio(median(v.iter().copied())),
        rounds.join(", ")
    )
}

/// Renders the report.
pub fn render(input: &Input<'_>) -> String {
    let o = input.options;
    let m = input.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# hyperfork real-workload benchmark\n");
    let _ = writeln!(
        s,
        "Machine: {} usable core(s) ({}), {:.0} GiB, Linux {}. {}. {}. Run {} ({}).\n",
        m.host.cores,
        m.host.cpu,
        m.host.memory_gib,
        m.host.kernel,
        m.postgres,
        m.python.as_deref().unwrap_or("No FastAPI rows"),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        if o.full {
            "cargo bench --bench workload"
        } else {
            "smoke round from cargo test: short, figures not meaningful"
        },
    );
    let _ = writeln!(
        s,
        "Workload: `GET /users?offset=N`, 20 rows (id, name, email, created_at) of a {}-row table as \
         JSON (`SELECT … ORDER BY id LIMIT 20 OFFSET $1`, a prepared statement), client loop `i` \
         reading page `i mod {}`; {} keep-alive connections, one request in flight on each, load \
         generator on {} thread(s) of the same machine. One PostgreSQL for every server, on the same \
         machine; each server may hold {} database connections in all. {:.1} s warm-up then {:.1} s \
         measured per server, {} round(s), servers started fresh each round and their order rotated. \
         Figures are medians over the rounds; ratios are taken within each round, then the median.\n",
        thousands(o.users as f64),
        o.users / crate::PAGE,
        o.connections,
        o.client_threads,
        o.budget,
        o.warm.as_secs_f64(),
        o.measure.as_secs_f64(),
        o.rounds,
    );
    for k in input.skipped {
        let _ = writeln!(s, "- Skipped: {k}");
    }
    if !input.skipped.is_empty() {
        s.push('\n');
    }

    let single = input.position(|k| matches!(k, Kind::Single { .. }));
    let hyperfork = input.position(|k| matches!(k, Kind::Hyperfork { default: true, .. }));
    let uvicorn = input.position(|k| matches!(k, Kind::Uvicorn { .. }));
    let gunicorn = input.position(|k| matches!(k, Kind::Gunicorn { .. }));

    let _ = writeln!(
        s,
        "| Server | DB pools | req/s | × single process | p50 ms | p99 ms | CPU ms / 1k req: server | PostgreSQL | both | RSS MiB (PSS) | DB connections: peak | median | active (mean) | failures |"
    );
    let _ = writeln!(
        s,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, k) in input.kinds.iter().enumerate() {
        let v = &input.samples[i];
        let med = |f: &dyn Fn(&Sample) -> f64| median(v.iter().map(f));
        let server_cpu = med(&|x| x.server_cpu_ms);
        let pg_cpu = med(&|x| x.pg_cpu_ms);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} ({:.0}) | {:.0} | {:.0} | {:.1} | {} |",
            k.label(),
            k.pools(o.budget),
            thousands(med(&|x| x.rate)),
            ratio(median(input.round_ratios(Some(i), single))),
            med(&|x| x.p50),
            med(&|x| x.p99),
            server_cpu,
            pg_cpu,
            med(&|x| x.server_cpu_ms + x.pg_cpu_ms),
            med(&|x| x.memory.rss_kib as f64 / 1024.0),
            med(&|x| x.memory.pss_kib as f64 / 1024.0),
            med(&|x| x.connections.peak as f64),
            med(&|x| x.connections.median as f64),
            med(&|x| x.connections.active_mean),
            v.iter().map(|x| x.failures).sum::<u64>(),
        );
    }
    let (lo, hi) = SEED_CLAIM;
    let _ = writeln!(
        s,
        "| Seed's claim: FastAPI + asyncpg, 4 uvicorn workers, {SEED_CORES:.0} cores (not measured here) | – | {}–{} | – | – | – | – | – | – | – | – | – | – | – |",
        thousands(lo),
        thousands(hi)
    );
    for (i, k) in input.kinds.iter().enumerate() {
        for (round, x) in input.samples[i].iter().enumerate() {
            if x.failures > 0 {
                let _ = writeln!(
                    s,
                    "\nFailures of {}, round {}: {}.",
                    k.label(),
                    round + 1,
                    x.failure_detail
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nCPU: user + system time of the server's whole process tree and, separately, of every \
         PostgreSQL process (postmaster, backends, background processes; backends that exited \
         included), over the measured window, per 1,000 answered requests. RSS and PSS: the \
         server's whole tree (master and workers), midway through the measured window. DB \
         connections: the app's client connections in `pg_stat_activity`, sampled every 100 ms \
         over the measured window; \"active\" ones were running a query when sampled.\n"
    );

    // Targets and multiples.
    let hf_single = input.round_ratios(hyperfork, single);
    let hf_uvicorn = input.round_ratios(hyperfork, uvicorn);
    let hf_gunicorn = input.round_ratios(hyperfork, gunicorn);
    let _ = writeln!(s, "| Target | Measured | Met |");
    let _ = writeln!(s, "|---|---|---|");
    let r = median(hf_single.iter().copied());
    let _ = writeln!(
        s,
        "| hyperfork default pool ≥ 1.0× single-process axum req/s, equal DB budget ({}) | {} | {} |",
        o.budget,
        ratios(&hf_single),
        if !r.is_finite() {
            "not measured"
        } else if r >= 1.0 {
            "yes"
        } else {
            "no"
        }
    );
    for (name, v) in [
        ("uvicorn + FastAPI", &hf_uvicorn),
        ("gunicorn + uvicorn workers + FastAPI", &hf_gunicorn),
    ] {
        let _ = writeln!(
            s,
            "| hyperfork's multiple over {name} (stated) | {} | – |",
            ratios(v),
        );
    }
    let per_core = |rate: f64| rate / m.host.cores as f64;
    let uv = input.rate(uvicorn);
    let hf = input.rate(hyperfork);
    let _ = writeln!(
        s,
        "| Beside the seed's claim, {}–{} req/s for 4 uvicorn workers on {SEED_CORES:.0} cores ({:.0}–{:.0} per core) | uvicorn here: {} req/s on {} cores ({} per core); hyperfork here: {} req/s ({} per core, {}–{} the claim) | – |",
        thousands(lo),
        thousands(hi),
        lo / SEED_CORES,
        hi / SEED_CORES,
        thousands(uv),
        m.host.cores,
        thousands(per_core(uv)),
        thousands(hf),
        thousands(per_core(hf)),
        ratio(hf / hi),
        ratio(hf / lo),
    );
    let _ = writeln!(
        s,
        "\nThe load generator and PostgreSQL share the same {} core(s) with the server, so every \
         row pays for them too: the ratios, not the absolute figures, are the result. The seed's \
         figure comes from another machine and setup and is shown for scale only.",
        m.host.cores
    );
    s
}
