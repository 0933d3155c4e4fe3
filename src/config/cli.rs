//! The command line shared by the `hyperfork` binary and every binary built on the library, built
//! from the declared settings ([`super::settings`]): one global flag per setting, its help ending in
//! `(env …)` and `[default: …]`, and the subcommands `serve`, `plan [--json]` and `ctl …` (the
//! control socket's client, see [`CtlArgs`]).
//!
//! Clap checks each value with the setting's parser; the parsed [`Cli`] keeps the values as written,
//! and the layering ([`super::layers`]) turns them into values, falling back to the environment, the
//! TOML file and the defaults for flags not given.

use std::collections::HashMap;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches};

use super::declare::Declared;
use super::kinds::{Form, Kind, Seconds};
use super::settings::ALL;
use super::values::parse_duration;
use crate::shared::ctl_wire::Request;

/// How long `hyperfork ctl` waits for the master's answer without `--wait`.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `hyperfork ctl reload --wait` and `upgrade --wait` wait for the master's answer: a reload
/// replaces every worker one by one, each old one draining for up to `--graceful-timeout`.
pub const CTL_WAIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Subcommands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the worker-count decision, every input it used, and exit.
    Plan {
        /// Print the plan as JSON.
        json: bool,
    },
    /// Send a command to the running master over its control socket (`hyperfork ctl …`).
    Ctl(CtlArgs),
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
            );
        cmd.subcommand(clap::Command::new("serve").about("Run the server (the default)"))
            .subcommand(plan)
            .subcommand(ctl_command())
            .args(ALL.iter().filter_map(|d| arg(*d)))
            .args(ALL.iter().filter_map(|d| negation(*d)))
    }

    /// The command line clap matched.
    pub fn from_matches(matches: &ArgMatches) -> Cli {
        let command = match matches.subcommand() {
            Some(("plan", sub)) => Some(Command::Plan {
                json: sub.get_flag("json"),
            }),
            Some(("serve", _)) => Some(Command::Serve),
            Some(("ctl", sub)) => Some(Command::Ctl(ctl_args(sub))),
            Some((name, _)) => Some(Command::App(name.to_string())),
            None => None,
        };
        let mut given = HashMap::new();
        for d in ALL {
            let (Some(flag), form) = (d.about().flag, d.form()) else {
                continue;
            };
            let id = flag.trim_start_matches('-');
            let values: Vec<String> = match form {
                Form::Switch if matches.get_flag(id) => vec!["true".to_string()],
                Form::Switch if negatable(*d) && matches.get_flag(&format!("no-{id}")) => {
                    vec!["false".to_string()]
                }
                Form::Switch | Form::Tables => continue,
                Form::Value | Form::Repeated => match matches.get_many::<String>(id) {
                    Some(v) => v.cloned().collect(),
                    None => continue,
                },
            };
            given.insert(flag, values);
        }
        Cli { command, given }
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

/// The parsed `ctl` subcommand.
fn ctl_args(m: &ArgMatches) -> CtlArgs {
    let count = |m: &ArgMatches| m.get_one::<i64>("N").copied().unwrap_or(1);
    let (request, json) = match m.subcommand() {
        Some(("status", s)) => (Request::Status, s.get_flag("json")),
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
        timeout,
    }
}

/// Whether a switch is on by default, so it has a `--no-` flag to turn it off.
fn negatable(d: &dyn Declared) -> bool {
    d.form() == Form::Switch && d.about().default == Some("true")
}

/// `no-ID`, kept for the process's life as clap's ids are static (a few bytes, once per command).
fn no_flag(id: &str) -> &'static str {
    Box::leak(format!("no-{id}").into_boxed_str())
}

/// The `--no-NAME` flag of a switch on by default (uvicorn's `--no-access-log`), the last of the two
/// on the command line winning.
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
        Form::Repeated => arg.action(ArgAction::Append).value_parser(d.value_parser()),
        Form::Value | Form::Tables => arg.action(ArgAction::Set).value_parser(d.value_parser()),
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
        assert_eq!(cli.command, Some(Command::Plan { json: true }));
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
            help.contains("(env HYPERFORK_BACKLOG) [default: 2048]"),
            "{help}"
        );
        assert!(
            help.contains("(env HYPERFORK_BIND, comma-separated)"),
            "{help}"
        );
        assert!(!help.contains("HYPERFORK_DEBUG) [default"), "{help}");
    }
}
