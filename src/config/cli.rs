//! The command line shared by the `hyperfork` binary and every binary built on the library, built
//! from the declared settings ([`super::settings`]): one global flag per setting, its help ending in
//! `(env …)` and `[default: …]`, and the subcommands `serve` and `plan [--json]`.
//!
//! Clap checks each value with the setting's parser; the parsed [`Cli`] keeps the values as written,
//! and the layering ([`super::layers`]) turns them into values, falling back to the environment, the
//! TOML file and the defaults for flags not given.

use std::collections::HashMap;

use clap::{Arg, ArgAction, ArgMatches};

use super::declare::Declared;
use super::kinds::Form;
use super::settings::ALL;

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
    /// A subcommand of the app's own command line (see `Server::from_env_and_args_with`).
    App(String),
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
