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
use crate::config::memory::Memory;
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
    /// The machine's memory and the cgroup memory limit, read for `hyperfork plan` only (the pool is
    /// not sized by memory yet, so the master does not read it).
    pub memory: Option<Memory>,
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
