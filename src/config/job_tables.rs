//! The TOML file's `[[jobs]]` tables: scheduled commands, each checked with the line of the key that
//! is wrong. The `jobs` key is declared with the other settings; its tables are read here.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::file::{File, syntax_error};
use super::kinds::{Kind, Seconds};
use super::layers::Layers;
use crate::error::ConfigError;
use crate::jobs::schedule::{Cron, Every, Schedule};
use crate::jobs::{Delivery, Job};

/// The part of the file read here; other keys are checked by [`File`].
#[derive(Debug, Default, Deserialize)]
struct JobsOnly {
    #[serde(default)]
    jobs: Vec<Spanned<JobTable>>,
}

/// One `[[jobs]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobTable {
    name: String,
    every: Option<Spanned<toml::Value>>,
    cron: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    command: Spanned<Vec<String>>,
    timeout: Option<Spanned<toml::Value>>,
    misfire_grace: Option<Spanned<toml::Value>>,
    #[serde(default)]
    overlap: bool,
    delivery: Option<Spanned<String>>,
}

/// The command jobs of the file's `[[jobs]]` tables; none without a file.
pub(crate) fn jobs(layers: &Layers<'_>) -> Result<Vec<Job>, ConfigError> {
    let Some(file) = layers.file() else {
        return Ok(Vec::new());
    };
    let tables = toml::from_str::<JobsOnly>(file.text())
        .map_err(|e| syntax_error(file.path(), file.text(), &e))?
        .jobs;
    let mut jobs: Vec<Job> = Vec::new();
    for table in &tables {
        let job = job(file, table)?;
        if jobs.iter().any(|o| o.name == job.name) {
            return Err(file.error(
                table.span(),
                format!(
                    "job name {:?} is used twice: expected unique names",
                    job.name
                ),
            ));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

/// One table's job.
fn job(file: &File, table: &Spanned<JobTable>) -> Result<Job, ConfigError> {
    let j = table.get_ref();
    let name = j.name.trim();
    if name.is_empty() {
        return Err(file.error(
            table.span(),
            "[[jobs]]: key `name`: expected a non-empty name".into(),
        ));
    }
    let schedule = schedule(file, table, name)?;
    let argv = j.command.get_ref().clone();
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err(file.error(
            j.command.span(),
            format!(
                "job {name:?}: key `command`: expected a non-empty array such as [\"sh\", \"-c\", \"...\"]"
            ),
        ));
    }
    let mut job = Job::command(name, schedule, argv).overlap(j.overlap);
    if let Some(t) = &j.timeout {
        let d = duration(file, name, "timeout", t)?;
        if d.is_zero() {
            return Err(file.error(
                t.span(),
                format!("job {name:?}: key `timeout`: expected a duration above zero"),
            ));
        }
        job = job.timeout(d);
    }
    if let Some(g) = &j.misfire_grace {
        job = job.misfire_grace(duration(file, name, "misfire_grace", g)?);
    }
    if let Some(d) = &j.delivery {
        job = job.delivery(match d.get_ref().as_str() {
            "at-most-once" => Delivery::AtMostOnce,
            "at-least-once" => Delivery::AtLeastOnce,
            other => {
                return Err(file.error(
                    d.span(),
                    format!(
                        "job {name:?}: key `delivery`: expected \"at-most-once\" or \"at-least-once\", got {other:?}"
                    ),
                ));
            }
        });
    }
    Ok(job)
}

/// A table's schedule: `every`, or `cron` with an optional `timezone`.
fn schedule(file: &File, table: &Spanned<JobTable>, name: &str) -> Result<Schedule, ConfigError> {
    let j = table.get_ref();
    match (&j.every, &j.cron) {
        (Some(_), Some(c)) => Err(file.error(
            c.span(),
            format!("job {name:?}: give either `every` or `cron`, not both"),
        )),
        (None, None) => Err(file.error(
            table.span(),
            format!(
                "job {name:?}: missing schedule: expected `every = \"10s\"` or `cron = \"*/5 * * * *\"`"
            ),
        )),
        (Some(e), None) => {
            let d = duration(file, name, "every", e)?;
            let every = Every::new(d).ok_or_else(|| {
                file.error(
                    e.span(),
                    format!("job {name:?}: key `every`: expected a duration above zero"),
                )
            })?;
            match &j.timezone {
                Some(tz) => Err(file.error(
                    tz.span(),
                    format!("job {name:?}: key `timezone` applies to `cron` only"),
                )),
                None => Ok(every.into()),
            }
        }
        (None, Some(c)) => {
            let at = |span, key: &str, e: &dyn std::fmt::Display| {
                file.error(span, format!("job {name:?}: key `{key}`: {e}"))
            };
            let mut cron = Cron::parse(c.get_ref()).map_err(|e| at(c.span(), "cron", &e))?;
            if let Some(tz) = &j.timezone {
                cron = (cron.in_time_zone(tz.get_ref())).map_err(|e| at(tz.span(), "timezone", &e))?;
            }
            Ok(cron.into())
        }
    }
}

/// A duration key of a job table: integer seconds or a string such as `"30s"`.
fn duration(
    file: &File,
    name: &str,
    key: &str,
    v: &Spanned<toml::Value>,
) -> Result<Duration, ConfigError> {
    Seconds::from_toml(v.get_ref())
        .map_err(|m| file.error(v.span(), format!("job {name:?}: key `{key}`: {m}")))
}
