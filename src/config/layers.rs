//! The layers a setting is looked up in, written once for every setting: the command line, then
//! `GUNICORN_CMD_ARGS` (a command line in a variable, as gunicorn reads it), then its environment
//! variables in declared order (an empty one counts as unset), then its TOML key, then its default.
//! Each value remembers its [`Source`].

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use super::cli::Cli;
use super::declare::{Shape, Spec};
use super::file::File;
use super::kinds::Kind;
use crate::error::ConfigError;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag as written, e.g. `--workers` or `-w`.
    Cli(&'static str),
    /// A flag in `GUNICORN_CMD_ARGS`, e.g. `--workers`.
    CmdArgs(&'static str),
    /// An environment variable, e.g. `UVICORN_WORKERS`.
    Env(&'static str),
    /// An environment variable loaded from the `--env-file`.
    EnvFile {
        /// The variable.
        name: &'static str,
        /// The env file.
        path: PathBuf,
        /// Its line.
        line: usize,
    },
    /// An environment variable set with `-e NAME=VALUE`.
    EnvFlag(&'static str),
    /// A key of the TOML file.
    File {
        /// The file.
        path: PathBuf,
        /// The key.
        key: &'static str,
    },
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cli(flag) => write!(f, "{flag}"),
            Source::CmdArgs(flag) => write!(f, "GUNICORN_CMD_ARGS {flag}"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::EnvFile { name, path, line } => {
                write!(f, "env {name} from {}:{line}", path.display())
            }
            Source::EnvFlag(name) => write!(f, "env {name} from -e"),
            Source::File { path, key } => write!(f, "{} key `{key}`", path.display()),
            Source::Default => write!(f, "default"),
        }
    }
}

/// A value together with its [`Source`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// Where an environment variable's value came from, when hyperfork set it (see `env_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the env file.
    File {
        /// The env file.
        path: PathBuf,
        /// Its line.
        line: usize,
    },
    /// `-e NAME=VALUE`.
    Flag,
}

/// Reads environment variables; a seam so tests can pass a map instead of the process environment.
pub trait Env {
    /// The variable's value, `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String>;

    /// The names of every variable set (for the check of unknown `UVICORN_` variables).
    fn names(&self) -> Vec<String>;

    /// Where the variable's value came from, if hyperfork set it from the env file or `-e`.
    fn origin(&self, _name: &str) -> Option<Origin> {
        None
    }
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
    fn origin(&self, name: &str) -> Option<Origin> {
        super::env_file::origin(name)
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
    fn names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// One layer of [`Layers`], highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layer {
    /// The command line.
    Cli,
    /// `GUNICORN_CMD_ARGS`.
    CmdArgs,
    /// The environment.
    Env,
    /// The TOML file.
    File,
}

impl Layer {
    /// Every layer, highest first.
    pub const ALL: [Layer; 4] = [Layer::Cli, Layer::CmdArgs, Layer::Env, Layer::File];
}

/// The command line, `GUNICORN_CMD_ARGS`, the environment and (once read) the TOML file.
pub(crate) struct Layers<'a> {
    cli: &'a Cli,
    cmd_args: Option<Cli>,
    env: &'a dyn Env,
    file: Option<File>,
}

impl<'a> Layers<'a> {
    /// The command line and the environment (with `GUNICORN_CMD_ARGS` parsed), without a file yet.
    pub fn new(cli: &'a Cli, env: &'a dyn Env) -> Result<Self, ConfigError> {
        let cmd_args = match env.get(super::cli::GUNICORN_CMD_ARGS) {
            Some(text) => Some(Cli::from_cmd_args(&text)?),
            None => None,
        };
        Ok(Layers {
            cli,
            cmd_args,
            env,
            file: None,
        })
    }

    /// The command line.
    pub fn cli(&self) -> &Cli {
        self.cli
    }

    /// `GUNICORN_CMD_ARGS`, parsed, if set.
    pub fn cmd_args(&self) -> Option<&Cli> {
        self.cmd_args.as_ref()
    }

    /// The environment.
    pub fn env(&self) -> &dyn Env {
        self.env
    }

    /// Adds the TOML file, the last layer before the defaults.
    pub fn with_file(mut self, file: File) -> Self {
        self.file = Some(file);
        self
    }

    /// The TOML file, if one was read.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }

    /// The setting's value from the first layer that sets it, else its default (`None` without one).
    pub fn get<K: Kind>(&self, spec: &Spec<K>) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        for layer in Layer::ALL {
            if let Some(v) = self.value_at(layer, spec)? {
                return Ok(Some(v));
            }
        }
        self.default(spec)
    }

    /// The setting's value in one layer.
    pub fn value_at<K: Kind>(
        &self,
        layer: Layer,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        match layer {
            Layer::Cli => self.cli_value(spec),
            Layer::CmdArgs => self.cmd_args_value(spec),
            Layer::Env => self.env_value(spec),
            Layer::File => self.file_value(spec),
        }
    }

    /// Whether one layer gives the setting (valid or not).
    pub fn is_at<K: Kind>(&self, layer: Layer, spec: &Spec<K>) -> bool {
        let about = &spec.about;
        match layer {
            Layer::Cli => about.flag.is_some_and(|f| self.cli.values(f).is_some()),
            Layer::CmdArgs => about
                .flag
                .is_some_and(|f| self.cmd_args().is_some_and(|c| c.values(f).is_some())),
            Layer::Env => about.env.iter().any(|n| self.env.get(n).is_some()),
            Layer::File => about
                .toml
                .is_some_and(|k| self.file().is_some_and(|f| f.value(k).is_some())),
        }
    }

    /// The setting shaped as the [`super::Settings`] field it fills.
    pub fn field<K: Kind, F: Shape<K::Value>>(&self, spec: &Spec<K>) -> Result<F, ConfigError> {
        F::shape(self.get(spec)?).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{}: no value and no declared default",
                spec.about.name()
            ))
        })
    }

    /// Whether the command line (or `GUNICORN_CMD_ARGS`) gives the setting.
    pub fn on_cli<K: Kind>(&self, spec: &Spec<K>) -> bool {
        self.is_at(Layer::Cli, spec) || self.is_at(Layer::CmdArgs, spec)
    }

    /// Whether any layer but the default gives the setting (valid or not).
    pub fn is_set<K: Kind>(&self, spec: &Spec<K>) -> bool {
        Layer::ALL.iter().any(|l| self.is_at(*l, spec))
    }

    /// The value given on the command line.
    pub fn cli_value<K: Kind>(
        &self,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        flag_value(self.cli, spec, "", Source::Cli)
    }

    /// The value given in `GUNICORN_CMD_ARGS`.
    pub fn cmd_args_value<K: Kind>(
        &self,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        match &self.cmd_args {
            Some(c) => flag_value(c, spec, "GUNICORN_CMD_ARGS: ", Source::CmdArgs),
            None => Ok(None),
        }
    }

    /// The value of the first of the setting's environment variables that is set.
    pub fn env_value<K: Kind>(
        &self,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        for &name in spec.about.env {
            let Some(text) = self.env.get(name) else {
                continue;
            };
            let value = K::parse(&text).map_err(|_| ConfigError::Env {
                name,
                value: text.clone(),
                expected: K::EXPECTED,
            })?;
            checked(spec, &value, |m| {
                ConfigError::Invalid(format!("{name}: {m}"))
            })?;
            let source = match self.env.origin(name) {
                Some(Origin::File { path, line }) => Source::EnvFile { name, path, line },
                Some(Origin::Flag) => Source::EnvFlag(name),
                None => Source::Env(name),
            };
            return Ok(Some(Sourced { value, source }));
        }
        Ok(None)
    }

    /// The value of the setting's TOML key; errors name the file, the line and the key.
    pub fn file_value<K: Kind>(
        &self,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        let (Some(file), Some(key)) = (self.file(), spec.about.toml) else {
            return Ok(None);
        };
        let Some(v) = file.value(key) else {
            return Ok(None);
        };
        let at = |m: String| file.error(v.span(), format!("key `{key}`: {m}"));
        let value = K::from_toml(v.get_ref()).map_err(at)?;
        checked(spec, &value, at)?;
        Ok(Some(Sourced {
            value,
            source: Source::File {
                path: file.path().to_path_buf(),
                key,
            },
        }))
    }

    /// The declared default.
    fn default<K: Kind>(&self, spec: &Spec<K>) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        let Some(text) = spec.about.default else {
            return Ok(None);
        };
        let bad = |m: String| {
            ConfigError::Invalid(format!("{}: the declared default: {m}", spec.about.name()))
        };
        let value = K::parse(text).map_err(bad)?;
        checked(spec, &value, bad)?;
        Ok(Some(Sourced {
            value,
            source: Source::Default,
        }))
    }
}

/// The value a parsed command line gives the setting, its source the spelling used.
fn flag_value<K: Kind>(
    cli: &Cli,
    spec: &Spec<K>,
    prefix: &str,
    source: fn(&'static str) -> Source,
) -> Result<Option<Sourced<K::Value>>, ConfigError> {
    let Some(flag) = spec.about.flag else {
        return Ok(None);
    };
    let Some(texts) = cli.values(flag) else {
        return Ok(None);
    };
    let spelled = cli.spelling(flag);
    let value =
        K::from_flag(texts).map_err(|m| ConfigError::Cli(format!("{prefix}{spelled}: {m}")))?;
    checked(spec, &value, |m| {
        ConfigError::Invalid(format!("{prefix}{spelled}: {m}"))
    })?;
    Ok(Some(Sourced {
        value,
        source: source(spelled),
    }))
}

/// Applies the spec's check, if any, turning its message into an error with `at`.
fn checked<K: Kind>(
    spec: &Spec<K>,
    value: &K::Value,
    at: impl FnOnce(String) -> ConfigError,
) -> Result<(), ConfigError> {
    match spec.check {
        Some(check) => check(value).map_err(at),
        None => Ok(()),
    }
}
