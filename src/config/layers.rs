//! The layers a setting is looked up in, written once for every setting: the command line, then its
//! environment variables in declared order (an empty one counts as unset), then its TOML key, then its
//! default. Each value remembers its [`Source`].

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
    /// A command-line flag, e.g. `--workers`.
    Cli(&'static str),
    /// An environment variable, e.g. `UVICORN_WORKERS`.
    Env(&'static str),
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
            Source::Env(name) => write!(f, "env {name}"),
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

/// Reads environment variables; a seam so tests can pass a map instead of the process environment.
pub trait Env {
    /// The variable's value, `None` when unset or empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

/// The command line, the environment and (once read) the TOML file.
pub(crate) struct Layers<'a> {
    cli: &'a Cli,
    env: &'a dyn Env,
    file: Option<File>,
}

impl<'a> Layers<'a> {
    /// The command line and the environment, without a file yet.
    pub fn new(cli: &'a Cli, env: &'a dyn Env) -> Self {
        Layers {
            cli,
            env,
            file: None,
        }
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
        if let Some(v) = self.cli_value(spec)? {
            return Ok(Some(v));
        }
        if let Some(v) = self.env_value(spec)? {
            return Ok(Some(v));
        }
        if let Some(v) = self.file_value(spec)? {
            return Ok(Some(v));
        }
        self.default(spec)
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

    /// Whether the command line gives the setting.
    pub fn on_cli<K: Kind>(&self, spec: &Spec<K>) -> bool {
        spec.about
            .flag
            .is_some_and(|f| self.cli.values(f).is_some())
    }

    /// Whether the command line or one of the setting's environment variables gives it (valid or not).
    pub fn on_cli_or_env<K: Kind>(&self, spec: &Spec<K>) -> bool {
        self.on_cli(spec) || spec.about.env.iter().any(|n| self.env.get(n).is_some())
    }

    /// Whether any layer but the default gives the setting (valid or not).
    pub fn is_set<K: Kind>(&self, spec: &Spec<K>) -> bool {
        self.on_cli_or_env(spec)
            || (spec.about.toml).is_some_and(|k| self.file().is_some_and(|f| f.value(k).is_some()))
    }

    /// The value given on the command line.
    pub fn cli_value<K: Kind>(
        &self,
        spec: &Spec<K>,
    ) -> Result<Option<Sourced<K::Value>>, ConfigError> {
        let Some(flag) = spec.about.flag else {
            return Ok(None);
        };
        let Some(texts) = self.cli.values(flag) else {
            return Ok(None);
        };
        let value = K::from_flag(texts).map_err(|m| ConfigError::Cli(format!("{flag}: {m}")))?;
        checked(spec, &value, |m| {
            ConfigError::Invalid(format!("{flag}: {m}"))
        })?;
        Ok(Some(Sourced {
            value,
            source: Source::Cli(flag),
        }))
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
            return Ok(Some(Sourced {
                value,
                source: Source::Env(name),
            }));
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
