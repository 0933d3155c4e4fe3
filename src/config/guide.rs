//! The sizing guide's table, computed for this host: the conservative, moderate and aggressive
//! levels, each with the memory its pool holds and what is left of the budget, and the database
//! connections it opens, reload surge included, checked against the database's `max_connections`.
//!
//! - conservative: about two thirds of the cores, leaving room for a database and cache on the host;
//! - moderate: one worker per core, what a non-blocking worker needs to use every core;
//! - aggressive: `2 × cores + 1`, at most the cap: the computed default, for workers that block.

use std::fmt::Write as _;

use serde::Serialize;

use super::footprint::{Cost, mib, mib_text};
use super::memory_guard::Budget;
use super::sizing::formula;
pub(crate) use crate::app::share::DbUse;

/// Connections PostgreSQL keeps for superusers out of `max_connections` by default
/// (`superuser_reserved_connections`).
pub const SUPERUSER_RESERVED: usize = 3;

/// The database connections of one pool size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connections {
    /// Each worker's connections (its share, for a budget).
    pub per_worker: usize,
    /// All workers' connections in a steady pool.
    pub steady: usize,
    /// At the peak of a reload, with `--max-surge` extra workers alive.
    pub at_reload: usize,
    /// What the database admits for the app: `max_connections` less the superusers' reserve.
    pub allowed: Option<usize>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Level {
    /// `conservative`, `moderate`, `aggressive`, or what decided a count that is none of them
    /// (`explicit`, `memory guard`, `debug`, `reload`).
    pub name: String,
    /// The worker count.
    pub workers: usize,
    /// How the count follows from the cores.
    pub rule: String,
    /// Whether this is the count the server runs.
    pub chosen: bool,
    /// The memory its pool holds, in bytes (measured: `plan --measure`).
    pub memory: Option<u64>,
    /// The memory it holds during a reload, with `--max-surge` extra workers, in bytes.
    pub memory_at_reload: Option<u64>,
    /// What is left of the budget during a reload, in bytes; negative when the pool does not fit.
    pub left: Option<i64>,
    /// Its database connections.
    pub db: Option<Connections>,
    /// Why it does not fit, in words.
    pub warnings: Vec<String>,
}

/// What the table is computed from.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// Usable cores.
    pub cores: usize,
    /// The cap on the computed count.
    pub cap: usize,
    /// The count the server runs, and what decided it (`formula`, `explicit`, …).
    pub chosen: (usize, &'a str),
    /// What a pool costs, if measured.
    pub cost: Option<&'a Cost>,
    /// What the pool may hold.
    pub budget: Option<&'a Budget>,
    /// The app's database connections, if given.
    pub db: Option<DbUse>,
    /// The database's `max_connections`, if given.
    pub db_max: Option<usize>,
    /// `--max-surge`.
    pub max_surge: usize,
}

/// About two thirds of the cores, at least 1 (the guide's 4 of 6).
pub fn conservative(cores: usize) -> usize {
    ((cores * 2 + 1) / 3).max(1)
}

/// The table: the three levels, and the chosen count's own row when it is none of them.
pub fn levels(inputs: &Inputs<'_>) -> Vec<Level> {
    let (chosen, decided_by) = inputs.chosen;
    let c = inputs.cores;
    let mut rows = vec![
        (
            "conservative",
            conservative(c),
            format!("about 2/3 of {c} cores"),
        ),
        ("moderate", c.max(1), format!("one per core, {c} cores")),
        (
            "aggressive",
            formula(c, inputs.cap),
            format!("2 × {c} + 1, at most {}", inputs.cap),
        ),
    ];
    if !rows.iter().any(|(_, n, _)| *n == chosen) {
        let name = match decided_by {
            "formula" => "memory guard",
            other => other,
        };
        rows.push((name, chosen, "as decided".to_string()));
    }
    let mut marked = false;
    rows.into_iter()
        .map(|(name, workers, rule)| {
            // Two levels can have the same count (1 core): the first is marked.
            let is_chosen = workers == chosen && !marked;
            marked |= is_chosen;
            level(inputs, name, workers, rule, is_chosen)
        })
        .collect()
}

/// One row.
fn level(inputs: &Inputs<'_>, name: &str, workers: usize, rule: String, chosen: bool) -> Level {
    let mut warnings = Vec::new();
    let memory = inputs.cost.map(|c| c.pool(workers));
    let memory_at_reload = inputs.cost.map(|c| c.pool(workers + inputs.max_surge));
    let left = match (memory_at_reload, inputs.budget) {
        (Some(m), Some(b)) => Some(b.bytes() as i64 - m as i64),
        _ => None,
    };
    if let (Some(m), Some(r), Some(l), Some(b)) = (memory, memory_at_reload, left, inputs.budget) {
        if l < 0 {
            warnings.push(format!(
                "{name} ({workers} workers) needs {} MiB, {} MiB during a reload (--max-surge {}), \
                 {} MiB more than {}",
                mib(m),
                mib(r),
                inputs.max_surge,
                mib(l.unsigned_abs()),
                b.describe()
            ));
        }
    }
    let db = inputs.db.and_then(|db| {
        match connections(db, workers, inputs.max_surge, inputs.db_max) {
            Ok(c) => {
                if let Some(allowed) = c.allowed.filter(|a| c.at_reload > *a) {
                    warnings.push(format!(
                        "{name} ({workers} workers) opens {} database connections, {} during a reload \
                         (--max-surge {}), but max_connections {} admits {allowed} ({SUPERUSER_RESERVED} \
                         are kept for superusers)",
                        c.steady,
                        c.at_reload,
                        inputs.max_surge,
                        inputs.db_max.unwrap_or(0),
                    ));
                }
                Some(c)
            }
            Err(e) => {
                warnings.push(format!("{name} ({workers} workers): {e}"));
                None
            }
        }
    });
    Level {
        name: name.to_string(),
        workers,
        rule,
        chosen,
        memory,
        memory_at_reload,
        left,
        db,
        warnings,
    }
}

/// The connections a pool of `workers` opens, with `surge` extra workers during a reload.
pub fn connections(
    db: DbUse,
    workers: usize,
    surge: usize,
    db_max: Option<usize>,
) -> Result<Connections, String> {
    let alive = workers + surge;
    let per_worker = db.per_worker(workers, surge).map_err(|e| e.to_string())?;
    Ok(Connections {
        per_worker,
        steady: per_worker * workers,
        at_reload: per_worker * alive,
        allowed: db_max.map(|m| m.saturating_sub(SUPERUSER_RESERVED)),
    })
}

/// The table as `plan` prints it, one line per level, then its warnings.
pub fn to_text(levels: &[Level]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  {:<14} {:>7}  {:<19}  {:>9}  {:<17}  rule",
        "level", "workers", "memory", "left", "db connections"
    );
    for l in levels {
        let memory = match (l.memory, l.memory_at_reload) {
            (Some(m), Some(r)) => format!("{} ({} reload)", mib_text(m), mib(r)),
            _ => "-".to_string(),
        };
        let left = l.left.map_or("-".to_string(), |v| {
            let sign = if v < 0 { "-" } else { "" };
            format!("{sign}{}", mib_text(v.unsigned_abs()))
        });
        let db = l.db.as_ref().map_or("-".to_string(), |c| {
            format!("{} ({} reload)", c.steady, c.at_reload)
        });
        let _ = writeln!(
            s,
            "{} {:<14} {:>7}  {:<19}  {:>9}  {:<17}  {}{}",
            if l.chosen { "*" } else { " " },
            l.name,
            l.workers,
            memory,
            left,
            db,
            l.rule,
            if l.warnings.is_empty() {
                ""
            } else {
                ", does not fit"
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn inputs<'a>(cores: usize, chosen: (usize, &'a str)) -> Inputs<'a> {
        Inputs {
            cores,
            cap: 8,
            chosen,
            cost: None,
            budget: None,
            db: None,
            db_max: None,
            max_surge: 1,
        }
    }

    #[test]
    fn the_guides_levels_for_six_cores() {
        // The seed's host: 6 cores, conservative 4, moderate 6, aggressive 8 (13 capped).
        let rows = levels(&inputs(6, (8, "formula")));
        let got: Vec<(&str, usize, bool)> = rows
            .iter()
            .map(|l| (l.name.as_str(), l.workers, l.chosen))
            .collect();
        assert_eq!(
            got,
            [
                ("conservative", 4, false),
                ("moderate", 6, false),
                ("aggressive", 8, true)
            ]
        );
    }

    #[test]
    fn small_hosts_have_at_least_one_worker_and_one_mark() {
        assert_eq!(conservative(1), 1);
        assert_eq!(conservative(2), 1);
        assert_eq!(conservative(3), 2);
        assert_eq!(conservative(4), 3);
        let rows = levels(&inputs(1, (1, "explicit")));
        assert_eq!(rows.iter().filter(|l| l.chosen).count(), 1);
        assert!(rows[0].chosen);
    }

    #[test]
    fn a_count_outside_the_levels_gets_its_own_row() {
        let rows = levels(&inputs(2, (3, "formula")));
        let last = rows.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.workers, last.chosen),
            ("memory guard", 3, true)
        );
        let rows = levels(&inputs(2, (12, "explicit")));
        assert_eq!(rows.last().unwrap().name, "explicit");
    }

    #[test]
    fn memory_left_and_a_warning_in_words() {
        let cost = Cost {
            fixed: 10 * MIB,
            per_worker: 120 * MIB,
            measured: 2,
        };
        let budget = Budget {
            usable: 512 * MIB,
            from: "the cgroup allows".into(),
            reserve: 64 * MIB,
        };
        let i = Inputs {
            cost: Some(&cost),
            budget: Some(&budget),
            ..inputs(2, (5, "formula"))
        };
        let rows = levels(&i);
        assert_eq!(rows[1].memory, Some(250 * MIB));
        assert_eq!(rows[1].memory_at_reload, Some(370 * MIB));
        assert_eq!(rows[1].left, Some(78 * MIB as i64));
        assert!(rows[1].warnings.is_empty());
        assert_eq!(rows[2].left, Some(-282 * MIB as i64));
        assert_eq!(
            rows[2].warnings,
            [
                "aggressive (5 workers) needs 610 MiB, 730 MiB during a reload (--max-surge 1), 282 MiB \
              more than the cgroup allows 512 MiB minus 64 MiB reserve"
            ]
        );
        let text = to_text(&rows);
        assert!(text.contains("* aggressive"), "{text}");
        assert!(text.contains("610 MiB (730 reload)"), "{text}");
        assert!(text.contains("-282 MiB"), "{text}");
        assert!(text.contains("does not fit"), "{text}");
    }

    #[test]
    fn connections_per_worker_count_the_reload_surge() {
        let c = connections(DbUse::PerWorker(10), 6, 1, Some(60)).unwrap();
        assert_eq!(
            (c.per_worker, c.steady, c.at_reload, c.allowed),
            (10, 60, 70, Some(57))
        );
        let i = Inputs {
            db: Some(DbUse::PerWorker(10)),
            db_max: Some(60),
            ..inputs(6, (8, "formula"))
        };
        let rows = levels(&i);
        assert!(rows[0].warnings.is_empty(), "4 workers: 50 at reload");
        assert_eq!(
            rows[1].warnings,
            [
                "moderate (6 workers) opens 60 database connections, 70 during a reload (--max-surge 1), \
              but max_connections 60 admits 57 (3 are kept for superusers)"
            ]
        );
    }

    #[test]
    fn a_budget_is_shared_out_and_never_passed() {
        let c = connections(DbUse::Budget(50), 4, 1, None).unwrap();
        assert_eq!((c.per_worker, c.steady, c.at_reload), (10, 40, 50));
        let e = connections(DbUse::Budget(4), 4, 1, None).unwrap_err();
        assert!(e.contains("must be at least 5"), "{e}");
    }
}
