//! When jobs run: fixed intervals ([`Every`]) and 5-field cron expressions ([`Cron`]), and the catch-up
//! rule for ticks that fell due while no worker held the scheduler lease.
//!
//! Ticks are wall-clock instants in UTC. An interval's ticks are `anchor + k × interval` (k ≥ 1), with
//! the anchor fixed by the master when it starts, so every holder of the lease computes the same ticks.
//! A cron expression's ticks are its matching minutes, in UTC or in the job's time zone.
//!
//! A time zone's rules come from the system's time-zone database (`/usr/share/zoneinfo`, or the
//! directory `TZDIR` names), read by jiff when the zone is named: in the master, before any fork, so
//! the workers inherit the parsed rules and read no file. Across a daylight-saving change, croner
//! applies its rules: a fixed time that falls in the skipped hour runs at the first instant after it,
//! a fixed time in a repeated hour runs once (in the first of the two), and an interval job (a `*` or
//! a step in the minute or hour field) runs on every matching instant of both halves.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use jiff::tz::TimeZone;

/// A fixed interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every(Duration);

impl Every {
    /// Every `d`; `None` for a zero duration.
    pub fn new(d: Duration) -> Option<Every> {
        (!d.is_zero()).then_some(Every(d))
    }

    /// Every `n` seconds (at least 1).
    pub fn seconds(n: u64) -> Every {
        Every(Duration::from_secs(n.max(1)))
    }

    /// Every `n` minutes (at least 1).
    pub fn minutes(n: u64) -> Every {
        Every(Duration::from_secs(n.max(1) * 60))
    }

    /// The interval.
    pub fn interval(&self) -> Duration {
        self.0
    }
}

/// A 5-field cron expression (`minute hour day-of-month month day-of-week`), in UTC unless a time zone
/// is given.
#[derive(Debug, Clone)]
pub struct Cron {
    expr: String,
    cron: croner::Cron,
    tz: TimeZone,
}

/// A cron expression or time zone that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is not a valid 5-field cron expression.
    #[error(
        "invalid cron expression {expr:?}: {reason} (expected 5 fields: minute hour day-of-month month day-of-week)"
    )]
    Cron {
        /// The expression.
        expr: String,
        /// The parser's explanation.
        reason: String,
    },
    /// The time zone is not in the system's time-zone database.
    #[error("unknown time zone {name:?} ({reason}; install the tzdata package, or set TZDIR)")]
    TimeZone {
        /// The name as given.
        name: String,
        /// Where it was looked for and what was wrong, such as `not in /usr/share/zoneinfo`.
        reason: String,
    },
}

/// Where the time-zone database is looked for, in order, when `TZDIR` is not set (jiff's list).
const ZONEINFO_DIRS: [&str; 3] = [
    "/usr/share/zoneinfo",
    "/usr/share/lib/zoneinfo",
    "/etc/zoneinfo",
];

/// The time-zone database directory: `TZDIR` if set, else the first of [`ZONEINFO_DIRS`] that
/// exists (the first if none does, to name it in the error).
fn zoneinfo_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TZDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let found = ZONEINFO_DIRS.iter().find(|d| Path::new(d).is_dir());
    PathBuf::from(found.unwrap_or(&ZONEINFO_DIRS[0]))
}

/// The IANA time zone `name`, read by jiff from the database in [`zoneinfo_dir`]; `UTC` needs no
/// database.
///
/// The database is opened for this lookup only (jiff lists its zone names, then reads the one
/// zone's file), so nothing but the zone's rules stays in memory for the workers to inherit.
fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    if name.eq_ignore_ascii_case("UTC") {
        return Ok(TimeZone::UTC);
    }
    let dir = zoneinfo_dir();
    let error = |reason: String| ScheduleError::TimeZone {
        name: name.to_string(),
        reason,
    };
    let db = jiff::tz::TimeZoneDatabase::from_dir(&dir)
        .map_err(|_| error(format!("no time-zone database in {}", dir.display())))?;
    match db.get(name) {
        // `Etc/Unknown` is jiff's zone for "not known": it behaves as UTC, so it is refused.
        Ok(tz) if tz.iana_name().is_some() => Ok(tz),
        _ => {
            let file = dir.join(name);
            let inside = Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            Err(error(if inside && file.is_file() {
                format!("{} is not a valid time-zone file", file.display())
            } else {
                format!(
                    "not in {}: expected an IANA name such as Europe/Paris",
                    dir.display()
                )
            }))
        }
    }
}

impl Cron {
    /// Parses a 5-field expression, evaluated in UTC.
    pub fn parse(expr: &str) -> Result<Cron, ScheduleError> {
        let fields = expr.split_whitespace().count();
        let bad = |reason: String| ScheduleError::Cron {
            expr: expr.to_string(),
            reason,
        };
        if fields != 5 && !expr.trim_start().starts_with('@') {
            return Err(bad(format!("{fields} fields")));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Cron {
            expr: expr.to_string(),
            cron,
            tz: TimeZone::UTC,
        })
    }

    /// Evaluates the expression in the IANA time zone `name` (such as `Europe/Paris`) instead of
    /// UTC.
    ///
    /// The zone's rules are read now from the system's time-zone database (`/usr/share/zoneinfo`,
    /// or the directory `TZDIR` names), so call this before [`Server::run`](crate::Server::run):
    /// the workers then inherit the rules. `UTC` needs no database.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::TimeZone`] if the database has no zone of that name, or there is no
    /// database.
    pub fn in_time_zone(mut self, name: &str) -> Result<Cron, ScheduleError> {
        self.tz = time_zone(name)?;
        Ok(self)
    }

    /// The time zone's IANA name, such as `UTC` or `Europe/Paris`.
    pub fn time_zone(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
    }

    /// The first tick after `t` (strictly after, unless `inclusive`), or the latest at or before
    /// it (`backward`); `None` if there is none or the instant is out of range.
    fn occurrence(
        &self,
        t: DateTime<Utc>,
        backward: bool,
        inclusive: bool,
    ) -> Option<DateTime<Utc>> {
        let nanos = i32::try_from(t.timestamp_subsec_nanos()).ok()?;
        let local = jiff::Timestamp::new(t.timestamp(), nanos)
            .ok()?
            .to_zoned(self.tz.clone());
        let found = if backward {
            self.cron.find_previous_occurrence(&local, inclusive)
        } else {
            self.cron.find_next_occurrence(&local, inclusive)
        }
        .ok()?
        .timestamp();
        let nanos = u32::try_from(found.subsec_nanosecond()).ok()?;
        DateTime::from_timestamp(found.as_second(), nanos)
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }
}

/// When a job runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A fixed interval.
    Every(Every),
    /// A cron expression.
    Cron(Box<Cron>),
}

impl From<Every> for Schedule {
    fn from(e: Every) -> Schedule {
        Schedule::Every(e)
    }
}

impl From<Cron> for Schedule {
    fn from(c: Cron) -> Schedule {
        Schedule::Cron(Box::new(c))
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(e) => write!(f, "every {}", humantime::format_duration(e.0)),
            Schedule::Cron(c) => write!(f, "cron {:?} ({})", c.expr, c.time_zone()),
        }
    }
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Schedule {
    /// The first tick strictly after `t`; `anchor` is the interval's origin.
    pub fn next_after(&self, t: DateTime<Utc>, anchor: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(e) => {
                let step = duration_ms(e.0).max(1);
                let since = (t - anchor).num_milliseconds();
                let k = if since < 0 { 1 } else { since / step + 1 };
                anchor.checked_add_signed(chrono::Duration::milliseconds(k.checked_mul(step)?))
            }
            Schedule::Cron(c) => c.occurrence(t, false, false),
        }
    }

    /// The latest tick at or before `t` and strictly after `after`, if any.
    pub fn latest_in(
        &self,
        after: DateTime<Utc>,
        t: DateTime<Utc>,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(e) => {
                let step = duration_ms(e.0).max(1);
                let since = (t - anchor).num_milliseconds();
                if since < step {
                    return None;
                }
                let tick = anchor + chrono::Duration::milliseconds(since / step * step);
                (tick > after).then_some(tick)
            }
            Schedule::Cron(c) => {
                let tick = c.occurrence(t, true, true)?;
                (tick > after).then_some(tick)
            }
        }
    }

    /// How many ticks fall in `(after, t]` (counted up to `limit`).
    pub fn count_in(
        &self,
        after: DateTime<Utc>,
        t: DateTime<Utc>,
        anchor: DateTime<Utc>,
        limit: usize,
    ) -> usize {
        let mut n = 0;
        let mut cur = after;
        while n < limit {
            match self.next_after(cur, anchor) {
                Some(next) if next <= t => {
                    n += 1;
                    cur = next;
                }
                _ => break,
            }
        }
        n
    }

    /// The default misfire grace: one interval for `every`, 60 s for cron.
    pub fn default_misfire_grace(&self) -> Duration {
        match self {
            Schedule::Every(e) => e.0,
            Schedule::Cron(_) => Duration::from_secs(60),
        }
    }
}

/// What a new lease holder does about ticks that fell due while nobody held the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatchUp {
    /// The tick to run now, if the latest missed tick is within the misfire grace.
    pub run: Option<DateTime<Utc>>,
    /// Missed ticks folded into that run (not counting it).
    pub coalesced: usize,
    /// Missed ticks skipped because they were past the grace.
    pub skipped: usize,
}

/// Decides the catch-up at `now` for a job whose last started tick is `last`.
///
/// Every tick in `(last, now]` was missed. If the latest one is at most `grace` old it runs once, and the
/// earlier ones coalesce into it; otherwise they are all skipped.
pub fn catch_up(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    anchor: DateTime<Utc>,
    grace: Duration,
) -> CatchUp {
    const COUNT_LIMIT: usize = 100_000;
    let Some(latest) = schedule.latest_in(last, now, anchor) else {
        return CatchUp {
            run: None,
            coalesced: 0,
            skipped: 0,
        };
    };
    let missed = schedule.count_in(last, now, anchor, COUNT_LIMIT).max(1);
    if (now - latest).to_std().unwrap_or(Duration::ZERO) <= grace {
        CatchUp {
            run: Some(latest),
            coalesced: missed - 1,
            skipped: 0,
        }
    } else {
        CatchUp {
            run: None,
            coalesced: 0,
            skipped: missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_ticks_are_anchored() {
        let anchor = t("2026-01-01T00:00:00.500Z");
        let s = Schedule::from(Every::seconds(10));
        assert_eq!(
            s.next_after(anchor, anchor),
            Some(t("2026-01-01T00:00:10.500Z"))
        );
        assert_eq!(
            s.next_after(t("2026-01-01T00:00:10.500Z"), anchor),
            Some(t("2026-01-01T00:00:20.500Z"))
        );
        assert_eq!(
            s.next_after(t("2026-01-01T00:00:19Z"), anchor),
            Some(t("2026-01-01T00:00:20.500Z"))
        );
        assert_eq!(
            s.latest_in(anchor, t("2026-01-01T00:00:25Z"), anchor),
            Some(t("2026-01-01T00:00:20.500Z"))
        );
        assert_eq!(s.latest_in(anchor, t("2026-01-01T00:00:05Z"), anchor), None);
        assert_eq!(Every::new(Duration::ZERO), None);
    }

    #[test]
    fn cron_next_tick_handles_month_ends_and_leap_years() {
        let anchor = t("2026-01-01T00:00:00Z");
        let midnight = Schedule::from(Cron::parse("0 0 * * *").unwrap());
        assert_eq!(
            midnight.next_after(t("2026-01-31T23:59:30Z"), anchor),
            Some(t("2026-02-01T00:00:00Z"))
        );
        let last_of_feb = Schedule::from(Cron::parse("30 12 29 2 *").unwrap());
        assert_eq!(
            last_of_feb.next_after(t("2026-03-01T00:00:00Z"), anchor),
            Some(t("2028-02-29T12:30:00Z"))
        );
        let every5 = Schedule::from(Cron::parse("*/5 * * * *").unwrap());
        assert_eq!(
            every5.next_after(t("2026-12-31T23:58:00Z"), anchor),
            Some(t("2027-01-01T00:00:00Z"))
        );
        // On a tick, the next one is strictly later.
        assert_eq!(
            every5.next_after(t("2026-05-05T10:05:00Z"), anchor),
            Some(t("2026-05-05T10:10:00Z"))
        );
        assert_eq!(
            every5.latest_in(anchor, t("2026-05-05T10:07:00Z"), anchor),
            Some(t("2026-05-05T10:05:00Z"))
        );
    }

    #[test]
    fn cron_in_a_time_zone() {
        let anchor = t("2026-01-01T00:00:00Z");
        let paris = Schedule::from(
            Cron::parse("0 9 * * *")
                .unwrap()
                .in_time_zone("Europe/Paris")
                .unwrap(),
        );
        // Winter: UTC+1; summer: UTC+2.
        assert_eq!(
            paris.next_after(t("2026-01-10T00:00:00Z"), anchor),
            Some(t("2026-01-10T08:00:00Z"))
        );
        assert_eq!(
            paris.next_after(t("2026-07-10T00:00:00Z"), anchor),
            Some(t("2026-07-10T07:00:00Z"))
        );
        assert!(
            Cron::parse("0 9 * * *")
                .unwrap()
                .in_time_zone("Mars/Base")
                .is_err()
        );
    }

    fn paris(expr: &str) -> Schedule {
        Schedule::from(
            Cron::parse(expr)
                .unwrap()
                .in_time_zone("Europe/Paris")
                .unwrap(),
        )
    }

    // Europe/Paris, 2026: the clocks go from 02:00 CET to 03:00 CEST on 29 March (01:00 UTC), and back
    // from 03:00 CEST to 02:00 CET on 25 October (01:00 UTC).

    #[test]
    fn dst_gap_a_fixed_time_in_the_skipped_hour_runs_right_after_it() {
        let anchor = t("2026-01-01T00:00:00Z");
        let s = paris("30 2 * * *");
        // 02:30 does not exist on 29 March: the run is at the first instant after the gap, 03:00 CEST.
        assert_eq!(
            s.next_after(t("2026-03-28T12:00:00Z"), anchor),
            Some(t("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-03-29T01:00:00Z"), anchor),
            Some(t("2026-03-30T00:30:00Z"))
        );
        assert_eq!(
            s.latest_in(anchor, t("2026-03-29T01:10:00Z"), anchor),
            Some(t("2026-03-29T01:00:00Z"))
        );
        // Once that day, as on any other.
        let day = (t("2026-03-28T23:00:00Z"), t("2026-03-29T22:00:00Z"));
        assert_eq!(s.count_in(day.0, day.1, anchor, 100), 1);
        // An hourly job has 23 ticks that day: 02:00 is skipped.
        assert_eq!(paris("0 * * * *").count_in(day.0, day.1, anchor, 100), 23);
        assert_eq!(
            paris("0 * * * *").next_after(t("2026-03-29T00:00:00Z"), anchor),
            Some(t("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn dst_overlap_a_fixed_time_in_the_repeated_hour_runs_once() {
        let anchor = t("2026-01-01T00:00:00Z");
        let s = paris("30 2 * * *");
        // 02:30 happens twice on 25 October: at 00:30 UTC (CEST) and 01:30 UTC (CET). The job runs at
        // the first only, and its next run is the next day's.
        assert_eq!(
            s.next_after(t("2026-10-24T12:00:00Z"), anchor),
            Some(t("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            s.next_after(t("2026-10-25T00:30:00Z"), anchor),
            Some(t("2026-10-26T01:30:00Z"))
        );
        assert_eq!(
            s.latest_in(anchor, t("2026-10-25T01:45:00Z"), anchor),
            Some(t("2026-10-25T00:30:00Z"))
        );
        let day = (t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"));
        assert_eq!(s.count_in(day.0, day.1, anchor, 100), 1);
        // A catch-up after the repeated hour finds that one run.
        let c = catch_up(
            &s,
            t("2026-10-24T00:30:00Z"),
            t("2026-10-25T01:45:00Z"),
            anchor,
            Duration::from_secs(2 * 3600),
        );
        assert_eq!(
            c,
            CatchUp {
                run: Some(t("2026-10-25T00:30:00Z")),
                coalesced: 0,
                skipped: 0
            }
        );
    }

    #[test]
    fn dst_overlap_an_interval_job_runs_in_both_halves() {
        let anchor = t("2026-01-01T00:00:00Z");
        let day = (t("2026-10-24T22:00:00Z"), t("2026-10-25T23:00:00Z"));
        // A 25-hour day: 25 hourly ticks, 50 half-hourly ones.
        assert_eq!(paris("0 * * * *").count_in(day.0, day.1, anchor, 100), 25);
        let half = paris("*/30 * * * *");
        assert_eq!(half.count_in(day.0, day.1, anchor, 100), 50);
        let mut ticks = Vec::new();
        let mut cur = t("2026-10-24T23:45:00Z");
        for _ in 0..5 {
            cur = half.next_after(cur, anchor).unwrap();
            ticks.push(cur);
        }
        assert_eq!(
            ticks,
            [
                t("2026-10-25T00:00:00Z"),
                t("2026-10-25T00:30:00Z"),
                t("2026-10-25T01:00:00Z"),
                t("2026-10-25T01:30:00Z"),
                t("2026-10-25T02:00:00Z"),
            ]
        );
        assert_eq!(
            half.latest_in(anchor, t("2026-10-25T01:10:00Z"), anchor),
            Some(t("2026-10-25T01:00:00Z"))
        );
        assert_eq!(
            half.latest_in(anchor, t("2026-10-25T00:50:00Z"), anchor),
            Some(t("2026-10-25T00:30:00Z"))
        );
    }

    #[test]
    fn dst_in_another_hemisphere_and_offset() {
        let anchor = t("2026-01-01T00:00:00Z");
        // New York: EDT (UTC-4) from 8 March 2026, EST (UTC-5) from 1 November.
        let ny = Schedule::from(
            Cron::parse("0 9 * * 1-5")
                .unwrap()
                .in_time_zone("America/New_York")
                .unwrap(),
        );
        assert_eq!(
            ny.next_after(t("2026-03-06T15:00:00Z"), anchor),
            Some(t("2026-03-09T13:00:00Z"))
        );
        assert_eq!(
            ny.next_after(t("2026-10-30T14:00:00Z"), anchor),
            Some(t("2026-11-02T14:00:00Z"))
        );
        // Sydney: AEDT (UTC+11) until 5 April 2026, AEST (UTC+10) from then.
        let sydney = Schedule::from(
            Cron::parse("0 0 * * *")
                .unwrap()
                .in_time_zone("Australia/Sydney")
                .unwrap(),
        );
        assert_eq!(
            sydney.next_after(t("2026-04-01T00:00:00Z"), anchor),
            Some(t("2026-04-01T13:00:00Z"))
        );
        assert_eq!(
            sydney.next_after(t("2026-04-10T00:00:00Z"), anchor),
            Some(t("2026-04-10T14:00:00Z"))
        );
    }

    #[test]
    fn time_zone_names() {
        let show = |zone: &str| {
            Schedule::from(
                Cron::parse("0 9 * * *")
                    .unwrap()
                    .in_time_zone(zone)
                    .unwrap(),
            )
            .to_string()
        };
        assert_eq!(
            Schedule::from(Cron::parse("0 9 * * *").unwrap()).to_string(),
            "cron \"0 9 * * *\" (UTC)"
        );
        assert_eq!(show("utc"), "cron \"0 9 * * *\" (UTC)");
        // Names are matched without regard to case, and shown as the database spells them.
        assert_eq!(show("europe/paris"), "cron \"0 9 * * *\" (Europe/Paris)");
        for bad in [
            "Europe/Pariss",
            "Mars/Base",
            "Etc/Unknown",
            "",
            "../zoneinfo/UTC",
        ] {
            let e = Cron::parse("0 9 * * *")
                .unwrap()
                .in_time_zone(bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("unknown time zone {bad:?} (not in /"))
                    && e.ends_with("; install the tzdata package, or set TZDIR)"),
                "{e}"
            );
        }
    }

    #[test]
    fn sub_second_instants() {
        let anchor = t("2026-01-01T00:00:00Z");
        let every5 = Schedule::from(Cron::parse("*/5 * * * *").unwrap());
        assert_eq!(
            every5.next_after(t("2026-05-05T10:05:00.300Z"), anchor),
            Some(t("2026-05-05T10:10:00Z"))
        );
        assert_eq!(
            every5.next_after(t("2026-05-05T10:04:59.999Z"), anchor),
            Some(t("2026-05-05T10:05:00Z"))
        );
        assert_eq!(
            every5.latest_in(anchor, t("2026-05-05T10:05:00.300Z"), anchor),
            Some(t("2026-05-05T10:05:00Z"))
        );
    }

    #[test]
    fn bad_cron_expressions() {
        for bad in ["", "* * * *", "0 0 * * * *", "61 * * * *", "x y z a b"] {
            let e = Cron::parse(bad).unwrap_err().to_string();
            assert!(e.contains("5 fields"), "{bad}: {e}");
        }
    }

    #[test]
    fn catch_up_runs_the_latest_missed_tick_within_grace() {
        let anchor = t("2026-01-01T00:00:00Z");
        let s = Schedule::from(Every::seconds(1));
        // Last run at :03, now :04.4 → tick :04 is 0.4 s late, within the 1 s grace.
        let c = catch_up(
            &s,
            t("2026-01-01T00:00:03Z"),
            t("2026-01-01T00:00:04.400Z"),
            anchor,
            s.default_misfire_grace(),
        );
        assert_eq!(
            c,
            CatchUp {
                run: Some(t("2026-01-01T00:00:04Z")),
                coalesced: 0,
                skipped: 0
            }
        );
        // Nothing missed.
        let c = catch_up(
            &s,
            t("2026-01-01T00:00:04Z"),
            t("2026-01-01T00:00:04.400Z"),
            anchor,
            Duration::from_secs(1),
        );
        assert_eq!(c.run, None);
        assert_eq!(c.skipped, 0);
    }

    #[test]
    fn many_missed_ticks_coalesce_into_one_run() {
        let anchor = t("2026-01-01T00:00:00Z");
        let s = Schedule::from(Every::seconds(10));
        let c = catch_up(
            &s,
            t("2026-01-01T00:00:10Z"),
            t("2026-01-01T00:01:05Z"),
            anchor,
            Duration::from_secs(10),
        );
        assert_eq!(
            c,
            CatchUp {
                run: Some(t("2026-01-01T00:01:00Z")),
                coalesced: 4,
                skipped: 0
            }
        );
    }

    #[test]
    fn ticks_past_the_grace_are_skipped() {
        let anchor = t("2026-01-01T00:00:00Z");
        let s = Schedule::from(Cron::parse("0 * * * *").unwrap());
        let c = catch_up(
            &s,
            t("2026-01-01T09:00:00Z"),
            t("2026-01-01T12:30:00Z"),
            anchor,
            s.default_misfire_grace(),
        );
        assert_eq!(
            c,
            CatchUp {
                run: None,
                coalesced: 0,
                skipped: 3
            }
        );
        let c = catch_up(
            &s,
            t("2026-01-01T09:00:00Z"),
            t("2026-01-01T12:00:30Z"),
            anchor,
            s.default_misfire_grace(),
        );
        assert_eq!(
            c,
            CatchUp {
                run: Some(t("2026-01-01T12:00:00Z")),
                coalesced: 2,
                skipped: 0
            }
        );
    }
}
