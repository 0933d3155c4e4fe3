//! The declaration machinery: what a setting declares ([`About`], [`Spec`]) and the [`settings!`]
//! macro that turns the list in [`super::settings`] into the spec constants, the table of every
//! setting ([`super::settings::ALL`]) and the typed [`super::Settings`] struct.
//!
//! The command line ([`super::cli`]), the TOML key check ([`super::file`]), the layering
//! ([`super::layers`]) and the reference table (`super::reference`, built for tests) all read the declarations, so a
//! setting is written once.

use std::marker::PhantomData;

use clap::builder::ValueParser;

use super::kinds::{Form, Kind};
use super::layers::Sourced;

/// What a setting declares besides its value type: names in each layer, default, help.
#[derive(Debug, Clone, Copy)]
pub(crate) struct About {
    /// The long flag, e.g. `--workers`.
    pub flag: Option<&'static str>,
    /// The short flag, e.g. `w`.
    pub short: Option<char>,
    /// Other spellings of the flag, uvicorn's and gunicorn's (e.g. `--keep-alive`, `-b`); each is
    /// its own clap argument, so the source names the spelling used.
    pub aliases: &'static [&'static str],
    /// Environment variables, the first set one wins.
    pub env: &'static [&'static str],
    /// The TOML key.
    pub toml: Option<&'static str>,
    /// The default, as text parsed like any other layer's.
    pub default: Option<&'static str>,
    /// Without a default: what happens when no layer sets it (for help and docs), e.g. `no limit`.
    pub unset: Option<&'static str>,
    /// The flag's value placeholder, e.g. `N`.
    pub value_name: Option<&'static str>,
    /// The help text: the declaration's doc comment, one string per line.
    pub help: &'static [&'static str],
}

impl About {
    /// The setting's name in messages: its flag, else its TOML key.
    pub fn name(&self) -> &'static str {
        self.flag.or(self.toml).unwrap_or("?")
    }

    /// The setting's key in `plan --json`: its TOML key, else its flag without dashes (`env_file`).
    pub fn key(&self) -> String {
        match (self.toml, self.flag) {
            (Some(k), _) => k.to_string(),
            (None, Some(f)) => f.trim_start_matches('-').replace('-', "_"),
            (None, None) => "?".to_string(),
        }
    }

    /// The help text on one line, without the Markdown escapes the doc comment needs (`\[`).
    pub fn help_text(&self) -> String {
        let lines: Vec<&str> = self
            .help
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect();
        lines.join(" ").replace("\\[", "[").replace("\\]", "]")
    }

    /// The default as help and docs show it: the default value (`""` when empty), else what
    /// happens without one.
    pub fn default_text(&self) -> Option<&'static str> {
        match self.default {
            Some("") => Some("\"\""),
            Some(text) => Some(text),
            None => self.unset,
        }
    }

    /// The `--help` text: the help, then `(env A, B)` and `[default: D]`.
    pub fn cli_help(&self, form: Form) -> String {
        let mut s = self.help_text();
        if !self.aliases.is_empty() {
            s.push_str(&format!(" (also {})", self.aliases.join(", ")));
        }
        if !self.env.is_empty() {
            let list = if form == Form::Repeated {
                ", comma-separated"
            } else {
                ""
            };
            s.push_str(&format!(" (env {}{list})", self.env.join(", ")));
        }
        match self.default_text() {
            Some(d) if form != Form::Switch => s.push_str(&format!(" [default: {d}]")),
            _ => {}
        }
        s
    }
}

/// A check beyond a kind's parser, e.g. a lower bound; the message says what was expected.
pub(crate) type Check<T> = fn(&T) -> Result<(), String>;

/// A declared setting whose values are of kind `K`.
pub(crate) struct Spec<K: Kind> {
    /// Names, default and help.
    pub about: About,
    /// A check beyond the kind's parser (e.g. a lower bound), applied to the value from any layer.
    pub check: Option<Check<K::Value>>,
    /// The kind.
    pub kind: PhantomData<fn() -> K>,
}

/// A declared setting, whatever its kind: what the command line, the TOML key check and the reference
/// table need.
pub(crate) trait Declared: Sync {
    /// Names, default and help.
    fn about(&self) -> &About;
    /// How the command line writes it.
    fn form(&self) -> Form;
    /// How clap checks the flag's value.
    fn value_parser(&self) -> ValueParser;
    /// The resolved value as `plan --json` shows it, with its source; `None` when unset.
    fn resolved(
        &self,
        layers: &super::layers::Layers<'_>,
    ) -> Result<Option<Sourced<serde_json::Value>>, crate::error::ConfigError>;
    /// Parses and checks the declared default (a test calls it for every setting).
    #[cfg(test)]
    fn check_default(&self) -> Result<(), String>;
}

impl<K: Kind> Declared for Spec<K> {
    fn about(&self) -> &About {
        &self.about
    }
    fn form(&self) -> Form {
        K::FORM
    }
    fn value_parser(&self) -> ValueParser {
        K::value_parser()
    }
    fn resolved(
        &self,
        layers: &super::layers::Layers<'_>,
    ) -> Result<Option<Sourced<serde_json::Value>>, crate::error::ConfigError> {
        if K::FORM == Form::Tables {
            return Ok(None);
        }
        Ok(layers.get(self)?.map(|v| Sourced {
            value: K::show(&v.value),
            source: v.source,
        }))
    }
    #[cfg(test)]
    fn check_default(&self) -> Result<(), String> {
        match self.about.default {
            Some(text) => {
                let v = K::parse(text)?;
                self.check.map_or(Ok(()), |check| check(&v))
            }
            None => Ok(()),
        }
    }
}

/// The declared settings in the order of a TOML file: keys first, arrays of tables (`[[jobs]]`) last,
/// as TOML requires; otherwise in declaration order.
pub(crate) fn toml_order(all: &[&'static dyn Declared]) -> Vec<&'static dyn Declared> {
    let (tables, keys): (Vec<&'static dyn Declared>, Vec<_>) =
        all.iter().partition(|d| d.form() == Form::Tables);
    keys.into_iter().chain(tables).collect()
}

/// How a resolved value fills a [`super::Settings`] field: the field's type picks the shape.
///
/// `T` needs a value (the setting declares a default), `Sourced<T>` keeps where it came from,
/// `Option<T>` and `Option<Sourced<T>>` allow "not set". `None` means the value is missing.
pub(crate) trait Shape<T>: Sized {
    /// The field's value, `None` if the field needs a value and there is none.
    fn shape(value: Option<Sourced<T>>) -> Option<Self>;
}

impl<T> Shape<T> for T {
    fn shape(value: Option<Sourced<T>>) -> Option<T> {
        value.map(|v| v.value)
    }
}

impl<T> Shape<T> for Sourced<T> {
    fn shape(value: Option<Sourced<T>>) -> Option<Sourced<T>> {
        value
    }
}

impl<T> Shape<T> for Option<T> {
    fn shape(value: Option<Sourced<T>>) -> Option<Option<T>> {
        Some(value.map(|v| v.value))
    }
}

impl<T> Shape<T> for Option<Sourced<T>> {
    fn shape(value: Option<Sourced<T>>) -> Option<Option<Sourced<T>>> {
        Some(value)
    }
}

/// Declares the settings; see [`super::settings`] for the list.
///
/// Three sections, in this order, each entry preceded by its doc comment (the help text):
///
/// - `inputs { SPEC: KIND { KEYS } ... }`: settings read by a rule rather than stored as they are
///   (`host`, `port`, `bind`, the `[[jobs]]` tables).
/// - `fields { pub FIELD: TYPE = SPEC: KIND { KEYS } ... }`: a setting and the [`super::Settings`]
///   field it fills; `TYPE` is `T`, `Sourced<T>`, `Option<T>` or `Option<Sourced<T>>` of the kind's
///   value `T` (see [`Shape`]).
/// - `computed { pub FIELD: TYPE = FUNCTION; ... }`: a field computed from the layers by
///   `FUNCTION(&Layers) -> Result<TYPE, ConfigError>`.
///
/// `KEYS`, each optional but in this order, each followed by a comma: `flag: "--name"`, `short: 'n'`,
/// `aliases: ["--other-name", "-o"]` (uvicorn's and gunicorn's spellings), `env: ["FIRST", "SECOND"]`, `toml: "key"`, `default: "text"` or `unset: "what happens"`,
/// `value_name: "N"`, `check: function`.
///
/// It defines a constant `SPEC: Spec<KIND>` per setting, [`super::settings::ALL`] (inputs, then
/// fields: the order of `--help` and of the reference table) and [`super::Settings`] with
/// `Settings::from_layers`.
macro_rules! settings {
    (
        inputs {
            $( $(#[doc = $idoc:literal])* $ispec:ident : $ikind:ty { $($ikeys:tt)* } )*
        }
        fields {
            $(
                $(#[doc = $fdoc:literal])*
                pub $field:ident : $ty:ty = $spec:ident : $kind:ty { $($keys:tt)* }
            )*
        }
        computed {
            $( $(#[doc = $cdoc:literal])* pub $cfield:ident : $cty:ty = $function:path; )*
        }
    ) => {
        $(
            $(#[doc = $idoc])*
            pub(crate) const $ispec: $crate::config::declare::Spec<$ikind> =
                $crate::config::declare::settings!(@spec [$($idoc)*] $($ikeys)*);
        )*
        $(
            $(#[doc = $fdoc])*
            pub(crate) const $spec: $crate::config::declare::Spec<$kind> =
                $crate::config::declare::settings!(@spec [$($fdoc)*] $($keys)*);
        )*

        /// Every declared setting, in the order of `--help` and of the reference table.
        pub(crate) const ALL: &[&dyn $crate::config::declare::Declared] =
            &[$(&$ispec,)* $(&$spec,)*];

        /// The fully resolved settings the master runs with: each declared setting from the command
        /// line, else its environment variables, else the TOML file, else its default.
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[doc = $fdoc])* pub $field: $ty, )*
            $( $(#[doc = $cdoc])* pub $cfield: $cty, )*
        }

        impl Settings {
            /// Every field from `layers`, in declaration order.
            pub(crate) fn from_layers(
                layers: &$crate::config::layers::Layers<'_>,
            ) -> Result<Settings, $crate::error::ConfigError> {
                Ok(Settings {
                    $( $field: layers.field(&$spec)?, )*
                    $( $cfield: $function(layers)?, )*
                })
            }
        }
    };
    // One spec constant's value.
    (@spec [$($doc:literal)*]
        $(flag: $flag:literal,)?
        $(short: $short:literal,)?
        $(aliases: [$($alias:literal),* $(,)?],)?
        $(env: [$($env:literal),* $(,)?],)?
        $(toml: $toml:literal,)?
        $(default: $default:literal,)?
        $(unset: $unset:literal,)?
        $(value_name: $value_name:literal,)?
        $(check: $check:path,)?
    ) => {
        $crate::config::declare::Spec {
            about: $crate::config::declare::About {
                flag: $crate::config::declare::settings!(@opt $($flag)?),
                short: $crate::config::declare::settings!(@opt $($short)?),
                aliases: &[$($($alias),*)?],
                env: &[$($($env),*)?],
                toml: $crate::config::declare::settings!(@opt $($toml)?),
                default: $crate::config::declare::settings!(@opt $($default)?),
                unset: $crate::config::declare::settings!(@opt $($unset)?),
                value_name: $crate::config::declare::settings!(@opt $($value_name)?),
                help: &[$($doc),*],
            },
            check: $crate::config::declare::settings!(@opt $($check)?),
            kind: ::std::marker::PhantomData,
        }
    };
    (@opt) => { None };
    (@opt $value:expr) => { Some($value) };
}

pub(crate) use settings;
