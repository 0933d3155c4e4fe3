//! The command line shared by the `hyperfork` binary and every binary built on the library, built
//! from the declared settings ([`super::settings`]): one global flag per setting, its help ending in
//! `(env …)` and `[default: …]`, and the subcommands `serve`, `plan [--json]` and `ctl …` (the
//! control socket's client, see [`CtlArgs`]).
//!
//! Clap checks each value with the setting's parser; the parsed [`Cli`] keeps the values as written,
//! and the layering ([`super::layers`]) turns them into values, falling back to `GUNICORN_CMD_ARGS`,
//! the environment, the TOML file and the defaults for flags not given.
//!
//! uvicorn's and gunicorn's spellings of a setting (`--keep-alive`, `-b`) are arguments of their own,
//! hidden from `--help` (the setting's help names them), so the parsed command line knows which
//! spelling was used. Their options without a setting here ([`super::foreign`]) are hidden arguments
//! too, so that each gets its own message instead of clap's "unexpected argument".

use std::collections::HashMap;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};

use super::declare::Declared;
use super::foreign::{FOREIGN, Takes};
use super::kinds::{Form, Kind, Seconds};
use super::settings::ALL;
use super::values::{parse_delay, parse_duration};
use crate::shared::ctl_wire::Request;

/// How long `hyperfork ctl` waits for the master's answer without `--wait`.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `hyperfork ctl reload --wait` and `upgrade --wait` wait for the master's answer: a reload
/// replaces every worker one by one, each old one draining for up to `--graceful-timeout`.
pub const CTL_WAIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often `hyperfork ctl top` refreshes without `--interval`, as `top` does by default (3 s there).
pub const TOP_INTERVAL: Duration = Duration::from_secs(1);
/// The shortest `ctl top --interval`: each refresh is a status request the master answers.
pub const TOP_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The variable gunicorn reads extra command-line arguments from.
pub const GUNICORN_CMD_ARGS: &str = "GUNICORN_CMD_ARGS";

/// Subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// `--check-config` (gunicorn): resolve and check every setting, print nothing, exit 0.
    Check,
    /// Print the worker-count decision, every input it used, and exit.
    Plan {
        /// Print the plan as JSON.
        json: bool,
        /// `--measure`: boot the pool on an ephemeral loopback port, warm it up on this path,
        /// measure its memory, and stop it.
        measure: Option<String>,
    },
    /// Send a command to the running master over its control socket (`hyperfork ctl …`).
    Ctl(CtlArgs),
    /// `hyperfork jobs migrate`: create the job store's tables in `--jobs-store`, then exit.
    JobsMigrate,
    /// A subcommand of the app's own command line (see `Server::from_env_and_args_with`).
    App(String),
}

/// `hyperfork ctl`: the command for the master and how to wait for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlArgs {
    /// The command, as sent on the control socket.
    pub request: Request,
    /// `ctl status --json`: print the master's status as JSON instead of a table.
    pub json: bool,
    /// `ctl top`: the live view, refreshed every this long (`--interval`); `None` for every other
    /// command. Its request is [`Request::Status`], sent once per refresh.
    pub top: Option<Duration>,
    /// How long to wait for the master's final answer (`--timeout`); `None` for no limit
    /// (`--timeout 0`). Without the flag: [`CTL_TIMEOUT`], or [`CTL_WAIT_TIMEOUT`] with `--wait`.
    pub timeout: Option<Duration>,
}

/// A parsed command line: the subcommand, and the flags given with their values as written.
#[derive(Debug, Clone, Default)]
pub struct Cli {
    /// What to do; without a subcommand the server runs.
    pub command: Option<Command>,
    /// Each given flag (e.g. `--workers`) and its values; a switch given holds `true`.
    given: HashMap<&'static str, Vec<String>>,
    /// The spelling used for each given flag, when it is not the flag itself (e.g. `-b`).
    spelled: HashMap<&'static str, &'static str>,
    /// The foreign options given (see [`super::foreign`]), as spelled.
    foreign: Vec<&'static str>,
}

impl Cli {
    /// The clap command: every declared setting's flag, global so it also works after a subcommand.
    pub fn command() -> clap::Command {
        Cli::add_to(
            clap::Command::new("hyperfork")
                .version(env!("CARGO_PKG_VERSION"))
                .about("A pre-fork master for Rust HTTP services")
                .long_about(
                    "Binds the listening socket once, forks a pool of workers that share it, restarts \
                     any worker that dies into the same slot, and shuts down gracefully on SIGTERM.",
                ),
        )
    }

    /// `cmd` (an app's own command line) with hyperfork's subcommands and every setting's flag.
    pub fn add_to(cmd: clap::Command) -> clap::Command {
        let plan = clap::Command::new("plan")
            .about("Print the worker-count decision, every input it used, and exit")
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("Print the plan as JSON"),
            )
            .arg(
                Arg::new("measure")
                    .long("measure")
                    .action(ArgAction::SetTrue)
                    .help(
                        "Boot the pool on an ephemeral loopback port, send each worker a warm-up load, \
                         read every process's memory (RSS, PSS, private), then stop it; the app's start \
                         and stop hooks run, scheduled jobs do not",
                    ),
            )
            .arg(
                Arg::new("warmup-path")
                    .long("warmup-path")
                    .value_name("PATH")
                    .default_value("/")
                    .requires("measure")
                    .value_parser(|p: &str| {
                        if p.starts_with('/') {
                            Ok(p.to_string())
                        } else {
                            Err(format!("expected a path starting with /, got {p:?}"))
                        }
                    })
                    .help("The path --measure's warm-up requests"),
            );
        let check = Arg::new("check-config")
            .long("check-config")
            .global(true)
            .action(ArgAction::SetTrue)
            .help(
                "Check the configuration and exit: status 0 if it is valid, 2 with the error if not \
                 (gunicorn's; `plan` prints it)",
            );
        cmd.subcommand(clap::Command::new("serve").about("Run the server (the default)"))
            .subcommand(plan)
            .subcommand(ctl_command())
            .subcommand(
                clap::Command::new("jobs")
                    .about("The job store (--jobs-store) shared by the hosts running this service")
                    .subcommand_required(true)
                    .subcommand(clap::Command::new("migrate").about(
                        "Create the job store's tables and fence function in --jobs-store (what \
                         the first claim does otherwise), then exit",
                    )),
            )
            .args(ALL.iter().filter_map(|d| arg(*d)))
            .args(ALL.iter().filter_map(|d| negation(*d)))
            .args(ALL.iter().flat_map(|d| aliases(*d)))
            .args(foreign_args())
            .arg(check)
    }

    /// `GUNICORN_CMD_ARGS`, split as gunicorn splits it (shell words) and parsed as a command line of
    /// flags only.
    pub fn from_cmd_args(text: &str) -> Result<Cli, crate::error::ConfigError> {
        let bad = |m: String| crate::error::ConfigError::Cli(format!("{GUNICORN_CMD_ARGS}: {m}"));
        let words =
            shlex::split(text).ok_or_else(|| bad(format!("unbalanced quotes in {text:?}")))?;
        let matches = Cli::command()
            .no_binary_name(true)
            .try_get_matches_from(words)
            .map_err(|e| bad(one_line(&e)))?;
        let cli = Cli::from_matches(&matches);
        match cli.command {
            None => Ok(cli),
            Some(_) => Err(bad(format!(
                "expected flags only, got a subcommand in {text:?}"
            ))),
        }
    }

    /// The command line clap matched.
    pub fn from_matches(matches: &ArgMatches) -> Cli {
        let command = match matches.subcommand() {
            Some(("plan", sub)) => Some(Command::Plan {
                json: sub.get_flag("json"),
                measure: sub
                    .get_flag("measure")
                    .then(|| sub.get_one::<String>("warmup-path").cloned())
                    .flatten(),
            }),
            Some(("serve", _)) => Some(Command::Serve),
            Some(("ctl", sub)) => Some(Command::Ctl(ctl_args(sub))),
            Some(("jobs", _)) => Some(Command::JobsMigrate),
            Some((name, _)) => Some(Command::App(name.to_string())),
            None if flag(matches, "check-config") => Some(Command::Check),
            None => None,
        };
        Cli {
            command,
            ..Cli::settings_from_matches(matches)
        }
    }

    /// The settings' flags of a command line clap matched, without its subcommand: also for a
    /// command line matched leniently (`ignore_errors`), whose subcommands' arguments may be missing.
    pub fn settings_from_matches(matches: &ArgMatches) -> Cli {
        let mut cli = Cli::default();
        for d in ALL {
            let (Some(canonical), form) = (d.about().flag, d.form()) else {
                continue;
            };
            // Every spelling's values with their positions on the command line.
            let mut found: Vec<(usize, &'static str, String)> = Vec::new();
            for spelling in std::iter::once(canonical).chain(d.about().aliases.iter().copied()) {
                let id = arg_id(canonical, spelling);
                let at = |id: &str| -> Vec<usize> {
                    matches.indices_of(id).into_iter().flatten().collect()
                };
                match form {
                    Form::Switch => {
                        if flag(matches, id) {
                            let i = at(id).last().copied().unwrap_or(0);
                            found.push((i, spelling, "true".into()));
                        }
                        let no = no_flag(id);
                        if flag(matches, no) {
                            let i = at(no).last().copied().unwrap_or(0);
                            found.push((i, no_spelling(spelling), "false".into()));
                        }
                    }
                    Form::Tables => {}
                    Form::Value | Form::Repeated => {
                        if let Ok(Some(values)) = matches.try_get_many::<String>(id) {
                            found.extend(
                                at(id)
                                    .into_iter()
                                    .zip(values)
                                    .map(|(i, v)| (i, spelling, v.clone())),
                            );
                        }
                    }
                }
            }
            if found.is_empty() {
                continue;
            }
            found.sort_by_key(|(i, ..)| *i);
            let last = found.last().map_or(canonical, |(_, s, _)| *s);
            let values = match form {
                // The last spelling on the command line wins, as a repeated flag's last value does.
                Form::Switch | Form::Value => found
                    .last()
                    .map(|(_, _, v)| v.clone())
                    .into_iter()
                    .collect(),
                _ => found.into_iter().map(|(_, _, v)| v).collect(),
            };
            cli.given.insert(canonical, values);
            if last != canonical {
                cli.spelled.insert(canonical, last);
            }
        }
        for f in FOREIGN {
            for spelling in f.flags {
                if given(matches, spelling) {
                    cli.foreign.push(spelling);
                }
            }
        }
        cli
    }

    /// The foreign options given (see [`super::foreign`]), as spelled.
    pub fn foreign(&self) -> &[&'static str] {
        &self.foreign
    }

    /// How `flag` (a setting's flag) was spelled on the command line: `-b` for `--bind`, `--no-debug`
    /// for a switch turned off; the flag itself when given so or not given.
    pub fn spelling(&self, flag: &'static str) -> &'static str {
        self.spelled.get(flag).copied().unwrap_or(flag)
    }

    /// Parses `args` (the first is the program).
    #[cfg(test)]
    pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Cli::from_matches(
            &Cli::command().try_get_matches_from(args)?,
        ))
    }

    /// The values given with `flag` (e.g. `--workers`), `None` if it was not given.
    pub fn values(&self, flag: &str) -> Option<&[String]> {
        self.given.get(flag).map(Vec::as_slice)
    }
}

/// The `ctl` subcommand and its own subcommands.
///
/// Its `--timeout` (the client's wait) takes the id of the global `--timeout` setting (a worker's
/// heartbeat timeout), which clap then does not copy into `ctl`: within a `ctl` command line,
/// `--timeout` is the client's, wherever it is written.
fn ctl_command() -> clap::Command {
    let switch = |id: &'static str, help: &'static str| {
        Arg::new(id).long(id).action(ArgAction::SetTrue).help(help)
    };
    let count = |help: &'static str| {
        Arg::new("N")
            .required(true)
            .value_parser(worker_count)
            .help(help)
    };
    let workers = clap::Command::new("workers")
        .about("Add or remove exactly N workers")
        .subcommand_required(true)
        .subcommand(
            clap::Command::new("add")
                .about("Add N workers")
                .arg(count("Workers to add, 1 or more")),
        )
        .subcommand(
            clap::Command::new("remove")
                .about("Remove N workers, the highest slots first")
                .arg(count("Workers to remove, 1 or more")),
        );
    let wait_help = "Answer only once it completed or failed; exit status 1 if it failed";
    clap::Command::new("ctl")
        .about("Send a command to the running master over its control socket")
        .long_about(
            "Send a command to the running master over its control socket, found from the same \
             settings as the server's (--control-socket, RUNTIME_DIRECTORY, --pid, --bind; see \
             docs/operations.md). Exit status 0 when the master answers that the command \
             succeeded, 1 when it failed or the master could not be reached, 2 for a bad command \
             line.",
        )
        .subcommand_required(true)
        .arg_required_else_help(true)
        .arg(
            Arg::new("timeout")
                .long("timeout")
                .global(true)
                .value_name("DURATION")
                .value_parser(Seconds::value_parser())
                .help(
                    "How long to wait for the master's answer, e.g. 30s, 10m; 0 waits as long as \
                     it takes [default: 5s; 15m with --wait]",
                ),
        )
        .subcommand(
            clap::Command::new("status")
                .about("Print the master, its listeners and every worker")
                .arg(switch("json", "Print the status as JSON")),
        )
        .subcommand(
            clap::Command::new("top")
                .about(
                    "Show the master and every worker live, refreshed in place (q or Ctrl-C quits)",
                )
                .long_about(
                    "Show the master, its listeners and every worker live, refreshed in place \
                     like top, with each worker's requests per second between two refreshes. q or \
                     Ctrl-C quits. When stdout is not a terminal, print one snapshot (requests per \
                     second over one interval) and exit.",
                )
                .arg(
                    Arg::new("interval")
                        .long("interval")
                        .short('d')
                        .value_name("DURATION")
                        .value_parser(top_interval)
                        .help("Time between refreshes, e.g. 2, 0.5, 500ms [default: 1s]"),
                ),
        )
        .subcommand(workers)
        .subcommand(
            clap::Command::new("reload")
                .about("Re-read the configuration and replace every worker (like SIGHUP)")
                .arg(switch("wait", wait_help)),
        )
        .subcommand(
            clap::Command::new("upgrade")
                .about("Start the executable on disk as a new master and hand over (like SIGUSR2)")
                .arg(switch("wait", wait_help)),
        )
        .subcommand(
            clap::Command::new("reopen-logs")
                .about("Reopen the log file after rotation (like SIGUSR1)"),
        )
        .subcommand(
            clap::Command::new("stop")
                .about("Shut down gracefully (like SIGTERM)")
                .arg(switch(
                    "fast",
                    "Shut down fast: in-flight requests get 2 s (like SIGINT)",
                )),
        )
}

/// A worker count for `ctl workers add|remove N`: 1 or more.
fn worker_count(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a number of workers, 1 or more".to_string()),
    }
}

/// A refresh interval for `ctl top --interval`: seconds (`2`, `0.5`) or a duration (`500ms`), at
/// least [`TOP_MIN_INTERVAL`].
fn top_interval(s: &str) -> Result<Duration, String> {
    let expected = || {
        format!("expected a refresh interval of 0.1s or more, such as 2, 0.5 or 500ms, got {s:?}")
    };
    match parse_delay(s) {
        Ok(d) if d >= TOP_MIN_INTERVAL => Ok(d),
        _ => Err(expected()),
    }
}

/// The parsed `ctl` subcommand.
fn ctl_args(m: &ArgMatches) -> CtlArgs {
    let count = |m: &ArgMatches| m.get_one::<i64>("N").copied().unwrap_or(1);
    let mut top = None;
    let (request, json) = match m.subcommand() {
        Some(("status", s)) => (Request::Status, s.get_flag("json")),
        Some(("top", t)) => {
            top = Some(
                t.get_one::<Duration>("interval")
                    .copied()
                    .unwrap_or(TOP_INTERVAL),
            );
            (Request::Status, false)
        }
        Some(("workers", w)) => match w.subcommand() {
            Some(("remove", r)) => (Request::Workers { change: -count(r) }, false),
            Some((_, a)) => (Request::Workers { change: count(a) }, false),
            None => (Request::Status, false),
        },
        Some(("reload", s)) => (
            Request::Reload {
                wait: s.get_flag("wait"),
            },
            false,
        ),
        Some(("upgrade", s)) => (
            Request::Upgrade {
                wait: s.get_flag("wait"),
            },
            false,
        ),
        Some(("reopen-logs", _)) => (Request::ReopenLogs, false),
        Some(("stop", s)) => (
            Request::Stop {
                fast: s.get_flag("fast"),
            },
            false,
        ),
        // clap requires one of the above; a status changes nothing.
        Some(_) | None => (Request::Status, false),
    };
    let waits = matches!(
        request,
        Request::Reload { wait: true } | Request::Upgrade { wait: true }
    );
    let timeout = match m
        .get_one::<String>("timeout")
        .and_then(|t| parse_duration(t).ok())
    {
        Some(t) if t.is_zero() => None,
        Some(t) => Some(t),
        None if waits => Some(CTL_WAIT_TIMEOUT),
        None => Some(CTL_TIMEOUT),
    };
    CtlArgs {
        request,
        json,
        top,
        timeout,
    }
}

/// Whether a switch has a `--no-` flag to turn it off: every switch does, as uvicorn's do.
fn negatable(d: &dyn Declared) -> bool {
    d.form() == Form::Switch
}

/// Interns a flag name: clap's ids are static, so derived names are kept for the process's life (a
/// few bytes each, once per command).
fn intern(s: String) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    names.push(leaked);
    leaked
}

/// `no-ID`.
fn no_flag(id: &str) -> &'static str {
    intern(format!("no-{id}"))
}

/// `--no-NAME` for the spelling `--NAME`.
fn no_spelling(spelling: &str) -> &'static str {
    intern(format!("--no-{}", spelling.trim_start_matches('-')))
}

/// The clap id of a spelling of `canonical`: the canonical flag's id is its name without dashes, an
/// alias's is the alias as written.
fn arg_id(canonical: &'static str, spelling: &'static str) -> &'static str {
    if spelling == canonical {
        canonical.trim_start_matches('-')
    } else {
        spelling
    }
}

/// Whether the switch `id` was given; false for an id clap does not know.
fn flag(matches: &ArgMatches, id: &str) -> bool {
    given(matches, id)
        && matches
            .try_get_one::<bool>(id)
            .ok()
            .flatten()
            .copied()
            .unwrap_or(false)
}

/// Whether the argument `id` is on the command line (not a default); false for an unknown id.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.try_contains_id(id).unwrap_or(false)
        && matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

/// The `--no-NAME` flag of a switch (uvicorn's `--no-access-log`), the last of the two on the
/// command line winning.
fn negation(d: &dyn Declared) -> Option<Arg> {
    if !negatable(d) {
        return None;
    }
    let id = d.about().flag?.trim_start_matches('-');
    let no = no_flag(id);
    Some(
        Arg::new(no)
            .long(no)
            .global(true)
            .action(ArgAction::SetTrue)
            .overrides_with(id)
            .help(format!("Turn --{id} off")),
    )
}

/// A spelling as a clap argument: `--long` or `-s`.
fn named(id: &'static str, spelling: &'static str) -> Arg {
    let arg = Arg::new(id).global(true).hide(true);
    match spelling.strip_prefix("--") {
        Some(long) => arg.long(long),
        None => arg.short(spelling.chars().nth(1).unwrap_or('?')),
    }
}

/// The hidden arguments of a setting's other spellings (uvicorn's and gunicorn's).
fn aliases(d: &dyn Declared) -> Vec<Arg> {
    let about = d.about();
    let Some(canonical) = about.flag else {
        return Vec::new();
    };
    about
        .aliases
        .iter()
        .map(|spelling| {
            let arg = named(arg_id(canonical, spelling), spelling);
            match d.form() {
                Form::Switch => arg.action(ArgAction::SetTrue),
                Form::Repeated => arg
                    .action(ArgAction::Append)
                    .allow_negative_numbers(true)
                    .value_parser(d.value_parser()),
                Form::Value | Form::Tables => arg
                    .action(ArgAction::Set)
                    .allow_negative_numbers(true)
                    .value_parser(d.value_parser()),
            }
        })
        .collect()
}

/// The hidden arguments of the foreign options, each taking a value if it does.
fn foreign_args() -> Vec<Arg> {
    FOREIGN
        .iter()
        .flat_map(|f| f.flags.iter().map(move |spelling| (f, *spelling)))
        .map(|(f, spelling)| {
            let arg = named(spelling, spelling);
            match f.takes {
                Takes::Nothing => arg.action(ArgAction::SetTrue),
                Takes::Value => arg
                    .action(ArgAction::Append)
                    .num_args(0..=1)
                    .allow_hyphen_values(true),
            }
        })
        .collect()
}

/// A clap error on one line: its first line, the accepted values and clap's tip, if any.
pub(crate) fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut line = first.to_string();
    if line.ends_with(':') {
        // "the following required arguments were not provided:" lists them on the next lines.
        let listed: Vec<&str> = (rendered.lines())
            .skip_while(|l| !l.contains(first))
            .skip(1)
            .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(str::trim)
            .collect();
        line.push(' ');
        line.push_str(&listed.join(", "));
    }
    for l in rendered.lines().map(str::trim) {
        if let Some(values) = l.strip_prefix("[possible values:") {
            line.push_str(&format!(
                "; expected one of: {}",
                values.trim_end_matches(']').trim()
            ));
        } else if let Some(tip) = l.strip_prefix("tip:") {
            line.push_str(&format!("; tip:{tip}"));
        }
    }
    line
}

/// The flag of a declared setting, `None` for settings without one.
fn arg(d: &dyn Declared) -> Option<Arg> {
    let about = d.about();
    let id = about.flag?.trim_start_matches('-');
    let mut arg = Arg::new(id)
        .long(id)
        .global(true)
        .help(about.cli_help(d.form()));
    if let Some(c) = about.short {
        arg = arg.short(c);
    }
    if let Some(name) = about.value_name {
        arg = arg.value_name(name);
    }
    Some(match d.form() {
        Form::Switch if negatable(d) => arg.action(ArgAction::SetTrue).overrides_with(no_flag(id)),
        Form::Switch => arg.action(ArgAction::SetTrue),
        Form::Repeated => arg
            .action(ArgAction::Append)
            .allow_negative_numbers(true)
            .value_parser(d.value_parser()),
        Form::Value | Form::Tables => arg
            .action(ArgAction::Set)
            .allow_negative_numbers(true)
            // Choices (log levels) in any case, as in the environment and the TOML file.
            .ignore_case(true)
            .value_parser(d.value_parser()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_accepts_the_generated_command() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plan_measure_and_its_warmup_path() {
        let cli = Cli::try_parse_from(["hyperfork", "plan", "--measure"]).unwrap();
        assert_eq!(
            cli.command,
            Some(Command::Plan {
                json: false,
                measure: Some("/".into())
            })
        );
        let args = ["hyperfork", "plan", "--measure", "--warmup-path", "/health"];
        let cli = Cli::try_parse_from(args).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Plan { measure: Some(p), .. }) if p == "/health")
        );
        let e = Cli::try_parse_from(["hyperfork", "plan", "--warmup-path", "/x"]).unwrap_err();
        assert_eq!(
            one_line(&e),
            "the following required arguments were not provided: --measure"
        );
        let e = Cli::try_parse_from(["hyperfork", "plan", "--measure", "--warmup-path", "x"])
            .unwrap_err();
        assert!(
            one_line(&e).contains("expected a path starting with /"),
            "{}",
            one_line(&e)
        );
    }

    #[test]
    fn modes_are_octal() {
        let cli =
            Cli::try_parse_from(["hyperfork", "--socket-mode", "0o600", "--umask", "027"]).unwrap();
        assert_eq!(
            cli.values("--socket-mode"),
            Some(&["0o600".to_string()][..])
        );
        let e = Cli::try_parse_from(["hyperfork", "--socket-mode", "9x9"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("9x9") && e.contains("--socket-mode"), "{e}");
    }

    #[test]
    fn every_flag_is_global_so_it_works_after_the_subcommand() {
        let cli = Cli::try_parse_from(["hyperfork", "plan", "--workers", "3", "--json"]).unwrap();
        assert_eq!(cli.values("--workers"), Some(&["3".to_string()][..]));
        assert_eq!(
            cli.command,
            Some(Command::Plan {
                json: true,
                measure: None
            })
        );
        let cli = Cli::try_parse_from(["hyperfork", "serve", "--debug", "-c", "f.toml"]).unwrap();
        assert_eq!(cli.command, Some(Command::Serve));
        assert!(cli.values("--debug").is_some() && cli.values("--config").is_some());
    }

    fn ctl(args: &[&str]) -> CtlArgs {
        let line: Vec<&str> = ["hyperfork", "ctl"].iter().chain(args).copied().collect();
        match Cli::try_parse_from(&line).unwrap().command {
            Some(Command::Ctl(c)) => c,
            other => panic!("{line:?}: {other:?}"),
        }
    }

    #[test]
    fn ctl_commands_become_requests() {
        let cases = [
            (&["status"][..], Request::Status),
            (&["workers", "add", "3"], Request::Workers { change: 3 }),
            (&["workers", "remove", "2"], Request::Workers { change: -2 }),
            (&["reload"], Request::Reload { wait: false }),
            (&["reload", "--wait"], Request::Reload { wait: true }),
            (&["upgrade", "--wait"], Request::Upgrade { wait: true }),
            (&["reopen-logs"], Request::ReopenLogs),
            (&["stop"], Request::Stop { fast: false }),
            (&["stop", "--fast"], Request::Stop { fast: true }),
        ];
        for (args, request) in cases {
            let c = ctl(args);
            assert_eq!(c.request, request, "{args:?}");
            assert!(!c.json);
        }
        assert!(ctl(&["status", "--json"]).json);
    }

    #[test]
    fn ctl_waits_5s_or_15m_with_wait_unless_told() {
        assert_eq!(ctl(&["status"]).timeout, Some(CTL_TIMEOUT));
        assert_eq!(ctl(&["reload"]).timeout, Some(Duration::from_secs(5)));
        assert_eq!(
            ctl(&["reload", "--wait"]).timeout,
            Some(Duration::from_secs(900))
        );
        assert_eq!(ctl(&["upgrade", "--wait"]).timeout, Some(CTL_WAIT_TIMEOUT));
        let t = ctl(&["reload", "--wait", "--timeout", "2m"]).timeout;
        assert_eq!(t, Some(Duration::from_secs(120)));
        let t = ctl(&["--timeout", "500ms", "status"]).timeout;
        assert_eq!(t, Some(Duration::from_millis(500)));
        assert_eq!(ctl(&["stop", "--timeout", "0"]).timeout, None);
        // Before `ctl` too: within a ctl command line, --timeout is the client's.
        let cli = Cli::try_parse_from(["hyperfork", "--timeout", "7", "ctl", "status"]).unwrap();
        match cli.command {
            Some(Command::Ctl(c)) => assert_eq!(c.timeout, Some(Duration::from_secs(7))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ctl_top_refreshes_every_second_unless_told() {
        let c = ctl(&["top"]);
        assert_eq!(
            (c.request, c.top, c.json),
            (Request::Status, Some(TOP_INTERVAL), false)
        );
        assert_eq!(c.timeout, Some(CTL_TIMEOUT));
        assert_eq!(
            ctl(&["top", "--interval", "2"]).top,
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            ctl(&["top", "-d", "0.5"]).top,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            ctl(&["top", "-d", "250ms"]).top,
            Some(Duration::from_millis(250))
        );
        assert_eq!(ctl(&["status"]).top, None);
        for bad in ["0", "0.05", "soon", "-1", ""] {
            let flag = format!("--interval={bad}");
            let e = Cli::try_parse_from(["hyperfork", "ctl", "top", flag.as_str()])
                .unwrap_err()
                .to_string();
            let first = e.lines().next().unwrap_or_default();
            assert!(
                first.contains("--interval")
                    && first.contains("expected a refresh interval of 0.1s or more"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn ctl_keeps_the_global_settings_after_it() {
        let cli = Cli::try_parse_from(["hyperfork", "ctl", "status", "--control-socket", "/x.ctl"])
            .unwrap();
        assert_eq!(
            cli.values("--control-socket"),
            Some(&["/x.ctl".to_string()][..])
        );
        let cli = Cli::try_parse_from(["hyperfork", "--pid", "/run/a.pid", "ctl", "stop"]).unwrap();
        assert_eq!(cli.values("--pid"), Some(&["/run/a.pid".to_string()][..]));
        assert!(matches!(cli.command, Some(Command::Ctl(_))));
    }

    #[test]
    fn ctl_usage_errors_are_clap_errors() {
        for line in [
            &["hyperfork", "ctl"][..],
            &["hyperfork", "ctl", "frob"],
            &["hyperfork", "ctl", "workers"],
            &["hyperfork", "ctl", "workers", "add"],
            &["hyperfork", "ctl", "status", "--fast"],
            &["hyperfork", "ctl", "status", "--timeout", "soon"],
            &["hyperfork", "ctl", "workers", "remove", "-1"],
        ] {
            assert!(Cli::try_parse_from(line).is_err(), "{line:?}");
        }
        for n in ["0", "two", "1.5"] {
            let e = Cli::try_parse_from(["hyperfork", "ctl", "workers", "remove", n])
                .unwrap_err()
                .to_string();
            assert!(e.contains("expected a number of workers, 1 or more"), "{e}");
        }
    }

    #[test]
    fn help_is_generated_from_the_declarations() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("(env UVICORN_WORKERS, WEB_CONCURRENCY, HYPERFORK_WORKERS)"),
            "{help}"
        );
        assert!(
            help.contains("(env HYPERFORK_BACKLOG, UVICORN_BACKLOG) [default: 2048]"),
            "{help}"
        );
        assert!(help.contains("(also --keep-alive)"), "{help}");
        // Foreign options and other spellings are hidden: the settings' help names the spellings.
        assert!(
            !help.contains("--loop") && !help.contains("--error-logfile <"),
            "{help}"
        );
        assert!(
            help.contains("(env HYPERFORK_BIND, comma-separated)"),
            "{help}"
        );
        assert!(!help.contains("HYPERFORK_DEBUG) [default"), "{help}");
    }
}
