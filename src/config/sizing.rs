//! Worker sizing: how many workers the pool runs, and why.
//!
//! An explicit count wins (`--workers`, `UVICORN_WORKERS`, `WEB_CONCURRENCY`, `HYPERFORK_WORKERS`, the
//! TOML `workers` key, in that order). Otherwise the count is `min(2 × cores + 1, cap)`. `--debug` forces
//! exactly one worker; `--reload` runs one unless a count is given. An explicit count is not capped: the
//! cap bounds only the computed value.
//!
//! `2 × cores + 1` comes from gunicorn, where workers block on I/O. A non-blocking hyper worker keeps a
//! core busy on its own, so `--workers <cores>` is often faster; the plan says so.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::cores::Cores;
use crate::config::footprint::{PoolFootprint, mib, mib_text};
use crate::config::guide::{self, DbUse, Level};
use crate::config::memory::Memory;
use crate::config::memory_guard::{Budget, Decision, Guard};
use crate::config::{Settings, Source, Sourced};

/// The formula applied when no count is given.
pub const FORMULA: &str = "min(2 × cores + 1, cap)";

/// The sizing decision and every input it used.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The number of workers the pool will run.
    pub workers: usize,
    /// What decided it: `debug`, `explicit`, `reload` or `formula`.
    pub decided_by: &'static str,
    /// Usable cores and how they were found.
    pub cores: Cores,
    /// The machine's memory and the cgroup memory limit (`plan` only).
    pub memory: Option<Memory>,
    /// What the pool may hold: the cgroup limit, else `MemAvailable`, less `--memory-reserve`.
    pub budget: Option<Budget>,
    /// The memory guard, when a cgroup memory limit applies (see [`crate::config::memory_guard`]).
    pub memory_guard: Option<GuardReport>,
    /// `plan --measure`: the pool booted, warmed up and measured.
    pub measured: Option<PoolFootprint>,
    /// The app's database connections (`--db-pool-per-worker` or `--db-budget`).
    pub db: Option<DbUse>,
    /// The database's `max_connections` (`--db-max-connections`).
    pub db_max_connections: Option<usize>,
    /// The guide's levels for this host, the chosen count marked.
    pub levels: Vec<Level>,
    /// The cap on the computed count.
    pub cap: usize,
    /// Where the cap came from.
    pub cap_source: String,
    /// Whether debug mode is on.
    pub debug: bool,
    /// Where the debug setting came from.
    pub debug_source: String,
    /// Whether `--reload` (development) is on: one worker unless a count is given.
    pub reload: bool,
    /// Where the reload setting came from.
    pub reload_source: String,
    /// The explicit count, if one was given.
    pub explicit: Option<usize>,
    /// Where the explicit count came from.
    pub explicit_source: Option<String>,
    /// The formula.
    pub formula: &'static str,
    /// The formula with the numbers filled in.
    pub formula_result: String,
    /// Things the user should know, e.g. an explicit count ignored in debug mode.
    pub warnings: Vec<String>,
    /// Where the server listens, each address with where it came from.
    pub listen: Vec<Listen>,
    /// Every setting's resolved value and where it came from (flag as spelled, `env NAME`,
    /// `FILE key`, `GUNICORN_CMD_ARGS FLAG`, `default`), by key.
    pub settings: std::collections::BTreeMap<String, Shown>,
    /// uvicorn's and gunicorn's options given that change nothing here, and why.
    pub no_effect: Vec<String>,
}

/// The memory guard as `plan` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    /// Whether the count is explicit: never reduced, only warned about.
    pub explicit: bool,
    /// What the pool may hold.
    pub budget: Budget,
    /// What the guard decided for the measured pool (`plan --measure`).
    pub decision: Option<Decision>,
}

/// An address the server listens on.
#[derive(Debug, Clone, Serialize)]
pub struct Listen {
    /// `HOST:PORT`, `unix:PATH` or `fd://N`.
    pub address: String,
    /// Where it came from.
    pub source: String,
}

/// A resolved setting in the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// The value.
    pub value: serde_json::Value,
    /// Where it came from.
    pub source: String,
}

/// The computed count: `min(2 × cores + 1, cap)`, at least 1.
pub fn formula(cores: usize, cap: usize) -> usize {
    cores.saturating_mul(2).saturating_add(1).min(cap).max(1)
}

impl Plan {
    /// Decides the worker count from settings and detected cores.
    pub fn decide(settings: &Settings, cores: Cores) -> Plan {
        let mut plan = Plan::from_parts(
            settings.workers.as_ref(),
            &settings.max_workers,
            &settings.debug,
            &settings.reload,
            cores,
        );
        plan.listen = (settings.binds.iter().map(|b| Listen {
            address: b.value.to_string(),
            source: b.source.to_string(),
        }))
        .chain(settings.fds.iter().map(|fd| Listen {
            address: format!("fd://{}", fd.value),
            source: fd.source.to_string(),
        }))
        .collect();
        plan.settings = (settings.resolved.iter())
            .map(|r| {
                let shown = Shown {
                    value: r.value.clone(),
                    source: r.source.clone(),
                };
                (r.key.clone(), shown)
            })
            .collect();
        plan.no_effect = settings.no_effect.clone();
        plan
    }

    /// The guard a master started with these settings applies under a cgroup limit's `budget`
    /// ([`Budget::of_limit`]; none without one): on a computed count (it stops growing where the
    /// pool would pass the limit less the reserve) and on an explicit one (warned about only); not
    /// in debug or `--reload` mode.
    pub fn guard(&self, budget: Option<&Budget>, surge: usize) -> Option<Guard> {
        let explicit = match self.decided_by {
            "formula" if self.workers > 1 => false,
            "explicit" => true,
            _ => return None,
        };
        Some(Guard::new(budget?.clone(), self.workers, explicit, surge))
    }

    /// The plan with the memory and database inputs: the budget, the memory guard, the
    /// measurement if `plan --measure` took one (the count becomes what the guard decided), and
    /// the guide's levels.
    pub fn with_memory(
        mut self,
        settings: &Settings,
        memory: Memory,
        measured: Option<PoolFootprint>,
    ) -> Plan {
        let reserve = settings.memory_reserve;
        self.budget = Budget::of(&memory, reserve);
        self.memory_guard = (self.guard(
            Budget::of_limit(&memory, reserve).as_ref(),
            settings.max_surge,
        ))
        .map(|g| GuardReport {
            explicit: g.explicit,
            budget: g.budget,
            decision: measured.as_ref().and_then(|m| m.guard.clone()),
        });
        if let Some(d) = self.memory_guard.as_ref().and_then(|g| g.decision.as_ref()) {
            if d.workers != self.workers {
                self.workers = d.workers;
                self.decided_by = "memory guard";
            }
        }
        self.db = settings.db_use();
        self.db_max_connections = settings.db_max_connections.as_ref().map(|m| m.value);
        self.levels = guide::levels(&guide::Inputs {
            cores: self.cores.count,
            cap: self.cap,
            chosen: (self.workers, self.decided_by),
            cost: measured.as_ref().map(|m| &m.cost),
            budget: self.budget.as_ref(),
            db: self.db,
            db_max: self.db_max_connections,
            max_surge: settings.max_surge,
        });
        self.memory = Some(memory);
        self.measured = measured;
        self
    }

    /// Decides the worker count from its inputs.
    pub fn from_parts(
        explicit: Option<&Sourced<usize>>,
        cap: &Sourced<usize>,
        debug: &Sourced<bool>,
        reload: &Sourced<bool>,
        cores: Cores,
    ) -> Plan {
        let computed = formula(cores.count, cap.value);
        let formula_result = format!("min(2 × {} + 1, {}) = {}", cores.count, cap.value, computed);
        let mut warnings = Vec::new();
        let (workers, decided_by) = if debug.value {
            if let Some(e) = explicit {
                warnings.push(format!(
                    "debug mode runs exactly 1 worker; the count {} from {} is ignored",
                    e.value, e.source
                ));
            }
            (1, "debug")
        } else if let Some(e) = explicit {
            if e.value > cap.value && cap.source != Source::Default {
                warnings.push(format!(
                    "explicit count {} from {} is above the cap {}; the cap bounds only the computed count",
                    e.value, e.source, cap.value
                ));
            }
            (e.value, "explicit")
        } else if reload.value {
            (1, "reload")
        } else {
            (computed, "formula")
        };
        Plan {
            workers,
            decided_by,
            cores,
            memory: None,
            budget: None,
            memory_guard: None,
            measured: None,
            db: None,
            db_max_connections: None,
            levels: Vec::new(),
            cap: cap.value,
            cap_source: cap.source.to_string(),
            debug: debug.value,
            debug_source: debug.source.to_string(),
            reload: reload.value,
            reload_source: reload.source.to_string(),
            explicit: explicit.map(|e| e.value),
            explicit_source: explicit.map(|e| e.source.to_string()),
            formula: FORMULA,
            formula_result,
            warnings,
            listen: Vec::new(),
            settings: Default::default(),
            no_effect: Vec::new(),
        }
    }

    /// One line for the startup log.
    pub fn summary(&self) -> String {
        match self.decided_by {
            "debug" => "1 worker (debug mode)".to_string(),
            "reload" => "1 worker (--reload; give --workers for more)".to_string(),
            "memory guard" => format!(
                "{} worker{} (the memory guard's count)",
                self.workers,
                if self.workers == 1 { "" } else { "s" },
            ),
            "explicit" => format!(
                "{} worker{} (explicit, from {})",
                self.workers,
                if self.workers == 1 { "" } else { "s" },
                self.explicit_source.as_deref().unwrap_or("?")
            ),
            _ => format!(
                "{} worker{} ({} with {} usable cores)",
                self.workers,
                if self.workers == 1 { "" } else { "s" },
                self.formula_result,
                self.cores.count
            ),
        }
    }

    /// The human-readable plan printed by `hyperfork plan`.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "workers:   {} (decided by {})",
            self.workers, self.decided_by
        );
        let _ = writeln!(
            s,
            "cores:     {} ({})",
            self.cores.count,
            self.cores.explain()
        );
        if let Some(m) = &self.memory {
            let usable = m.usable().map_or("unknown".to_string(), |b| {
                format!("{} MiB", b / (1024 * 1024))
            });
            let _ = writeln!(s, "memory:    {usable} usable ({})", m.explain());
            self.guard_text(&mut s);
        }
        let _ = writeln!(s, "cap:       {} ({})", self.cap, self.cap_source);
        let _ = writeln!(
            s,
            "debug:     {} ({})",
            if self.debug { "on" } else { "off" },
            self.debug_source
        );
        let _ = writeln!(
            s,
            "reload:    {} ({})",
            if self.reload { "on" } else { "off" },
            self.reload_source
        );
        match (&self.explicit, &self.explicit_source) {
            (Some(n), Some(src)) => {
                let _ = writeln!(s, "explicit:  {n} ({src})");
            }
            _ => {
                let _ = writeln!(
                    s,
                    "explicit:  none (--workers, UVICORN_WORKERS, WEB_CONCURRENCY, HYPERFORK_WORKERS, TOML workers)"
                );
            }
        }
        let _ = writeln!(s, "formula:   {} = {}", self.formula, self.formula_result);
        for w in &self.warnings {
            let _ = writeln!(s, "warning:   {w}");
        }
        let _ = writeln!(
            s,
            "note:      2 × cores + 1 suits workers that block; for a non-blocking app try --workers {}",
            self.cores.count
        );
        self.measured_text(&mut s);
        self.levels_text(&mut s);
        for l in &self.listen {
            let _ = writeln!(s, "listen:    {} ({})", l.address, l.source);
        }
        for n in &self.no_effect {
            let _ = writeln!(s, "accepted:  {n}");
        }
        if !self.settings.is_empty() {
            let _ = writeln!(s, "settings:");
            let width = self.settings.keys().map(String::len).max().unwrap_or(0);
            for (key, shown) in &self.settings {
                let value = match &shown.value {
                    serde_json::Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                let _ = writeln!(s, "  {key:<width$}  {value}  ({})", shown.source);
            }
        }
        s
    }

    /// The memory guard's lines.
    fn guard_text(&self, s: &mut String) {
        let Some(g) = &self.memory_guard else {
            let why = match self.decided_by {
                "debug" | "reload" => "one worker",
                _ if self.memory.as_ref().is_some_and(|m| m.limit.is_some()) => "one worker",
                _ => "no cgroup memory limit",
            };
            let _ = writeln!(s, "guard:     off ({why})");
            return;
        };
        match (&g.decision, g.explicit) {
            (Some(d), _) => {
                let line = d.message.clone().unwrap_or_else(|| {
                    format!(
                        "{} workers fit: {} MiB, {}",
                        d.wanted,
                        mib(d.wanted_needs),
                        g.budget.describe()
                    )
                });
                let _ = writeln!(s, "guard:     {line}");
            }
            (None, false) => {
                let _ = writeln!(
                    s,
                    "guard:     {}: the pool starts with worker 0, measures it, and grows only as far as that allows (plan --measure predicts the count)",
                    g.budget.describe()
                );
            }
            (None, true) => {
                let _ = writeln!(
                    s,
                    "guard:     {}: an explicit count is never reduced, only warned about once worker 0 is measured",
                    g.budget.describe()
                );
            }
        }
    }

    /// The measured pool's lines (`plan --measure`).
    fn measured_text(&self, s: &mut String) {
        let Some(m) = &self.measured else {
            return;
        };
        let statuses: Vec<String> = (m.warmup.statuses.iter())
            .map(|(code, n)| format!("{code}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "measured:  a pool of {} after {} warm-up requests to {} ({}{})",
            m.workers.len(),
            m.warmup.answered(),
            m.warmup.path,
            if statuses.is_empty() {
                "no answer".to_string()
            } else {
                statuses.join(", ")
            },
            if m.warmup.failed > 0 {
                format!(", {} failed", m.warmup.failed)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  {:<9} {:>7}  {:>8}  {:>8}  {:>8}  {:>8}",
            "process", "pid", "rss", "pss", "private", "requests"
        );
        let row = |s: &mut String,
                   name: String,
                   pid: i32,
                   f: &crate::config::footprint::Footprint,
                   req: String| {
            let _ = writeln!(
                s,
                "  {name:<9} {pid:>7}  {:>8}  {:>8}  {:>8}  {req:>8}",
                mib_text(f.rss),
                mib_text(f.pss),
                mib_text(f.uss)
            );
        };
        row(s, "master".into(), m.master_pid, &m.master, "-".into());
        for w in &m.workers {
            row(
                s,
                format!("worker {}", w.slot),
                w.pid,
                &w.memory,
                w.requests.to_string(),
            );
        }
        let _ = writeln!(
            s,
            "  one more worker costs {}; the pool of {} uses {} in all",
            mib_text(m.cost.per_worker),
            m.workers.len(),
            mib_text(m.total())
        );
    }

    /// The guide's table, and its warnings.
    fn levels_text(&self, s: &mut String) {
        if self.levels.is_empty() {
            return;
        }
        let memory = match (&self.measured, &self.budget) {
            (Some(_), Some(b)) => format!("memory measured, {}", b.describe()),
            (Some(_), None) => "memory measured, no budget known".to_string(),
            (None, _) => "memory not measured (plan --measure)".to_string(),
        };
        let db = match (self.db, self.db_max_connections) {
            (None, _) => {
                "no database connections given (--db-pool-per-worker or --db-budget)".to_string()
            }
            (Some(DbUse::PerWorker(n)), max) => format!(
                "{n} database connections per worker{}",
                max.map_or(String::new(), |m| format!(", max_connections {m}"))
            ),
            (Some(DbUse::Budget(n)), max) => format!(
                "a budget of {n} database connections{}",
                max.map_or(String::new(), |m| format!(", max_connections {m}"))
            ),
        };
        let _ = writeln!(s, "levels:    {memory}; {db}; * = what runs");
        s.push_str(&guide::to_text(&self.levels));
        for w in self.levels.iter().flat_map(|l| &l.warnings) {
            let _ = writeln!(s, "warning:   {w}");
        }
    }

    /// The plan as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(n: usize) -> Cores {
        Cores::combine(Some(n), None)
    }
    fn src<T>(value: T, source: Source) -> Sourced<T> {
        Sourced { value, source }
    }
    fn default_cap() -> Sourced<usize> {
        src(8, Source::Default)
    }
    fn no_debug() -> Sourced<bool> {
        src(false, Source::Default)
    }
    fn off() -> Sourced<bool> {
        src(false, Source::Default)
    }

    #[test]
    fn formula_and_cap() {
        assert_eq!(formula(1, 8), 3);
        assert_eq!(formula(2, 8), 5);
        assert_eq!(formula(3, 8), 7);
        assert_eq!(formula(4, 8), 8);
        assert_eq!(formula(64, 8), 8);
        assert_eq!(formula(64, 100), 100);
        assert_eq!(formula(2, 1), 1);
        assert_eq!(formula(0, 8), 1);
    }

    #[test]
    fn auto_uses_the_formula() {
        let p = Plan::from_parts(None, &default_cap(), &no_debug(), &off(), cores(2));
        assert_eq!((p.workers, p.decided_by), (5, "formula"));
        let p = Plan::from_parts(
            None,
            &src(3, Source::Cli("--max-workers")),
            &no_debug(),
            &off(),
            cores(2),
        );
        assert_eq!(p.workers, 3);
    }

    #[test]
    fn explicit_wins_and_is_not_capped() {
        let e = src(12, Source::Env("UVICORN_WORKERS"));
        let p = Plan::from_parts(Some(&e), &default_cap(), &no_debug(), &off(), cores(2));
        assert_eq!((p.workers, p.decided_by), (12, "explicit"));
        assert_eq!(p.explicit_source.as_deref(), Some("env UVICORN_WORKERS"));
    }

    #[test]
    fn debug_forces_one_and_warns_about_a_given_count() {
        let debug = src(true, Source::Cli("--debug"));
        let p = Plan::from_parts(None, &default_cap(), &debug, &off(), cores(8));
        assert_eq!((p.workers, p.decided_by), (1, "debug"));
        assert!(p.warnings.is_empty());
        let e = src(4, Source::Cli("--workers"));
        let p = Plan::from_parts(Some(&e), &default_cap(), &debug, &off(), cores(8));
        assert_eq!(p.workers, 1);
        assert!(p.warnings[0].contains("ignored"), "{:?}", p.warnings);
    }

    #[test]
    fn reload_runs_one_worker_unless_a_count_is_given() {
        let reload = src(true, Source::Cli("--reload"));
        let p = Plan::from_parts(None, &default_cap(), &no_debug(), &reload, cores(8));
        assert_eq!((p.workers, p.decided_by), (1, "reload"));
        assert!(p.summary().contains("--reload"), "{}", p.summary());
        let e = src(3, Source::Env("UVICORN_WORKERS"));
        let p = Plan::from_parts(Some(&e), &default_cap(), &no_debug(), &reload, cores(8));
        assert_eq!((p.workers, p.decided_by), (3, "explicit"));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(
            p.to_text().contains("reload:    on (--reload)"),
            "{}",
            p.to_text()
        );
    }

    #[test]
    fn json_carries_every_input() {
        let p = Plan::from_parts(None, &default_cap(), &no_debug(), &off(), cores(2));
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["workers"], 5);
        assert_eq!(v["cores"]["count"], 2);
        assert_eq!(v["cap"], 8);
        assert_eq!(v["cap_source"], "default");
        assert_eq!(v["debug"], false);
        assert!(v["explicit"].is_null());
        assert_eq!(v["formula"], FORMULA);
    }
}
