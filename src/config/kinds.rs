//! Kinds of setting values: how one type of value is written on the command line, in an environment
//! variable and in the TOML file.
//!
//! A kind is a type implementing [`Kind`]; a declaration names it (`WORKERS: Positive`). Every layer
//! reads text with the same [`Kind::parse`] (the declared default too); the TOML file may also hold
//! integers, booleans or arrays, which [`Kind::from_toml`] accepts or rejects with the key's line.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use clap::builder::{NonEmptyStringValueParser, PossibleValuesParser, ValueParser};

use super::values::{
    Accept, LogLevel, check_glob, non_negative_u64, parse_bool, parse_choice, parse_delay,
    parse_duration, parse_mode, parse_port, parse_size, positive_u32, positive_usize, split_list,
};

/// How a setting is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `--flag VALUE`, at most once.
    Value,
    /// `--flag` alone, meaning true.
    Switch,
    /// `--flag VALUE`, repeatable; the environment variable holds the values separated by commas.
    Repeated,
    /// TOML array of tables only (`[[jobs]]`): no flag, no environment variable.
    Tables,
}

/// One type of setting value and how each layer writes it.
pub(crate) trait Kind: 'static {
    /// The value's type.
    type Value: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// What a valid value looks like, after "expected" (environment errors).
    const EXPECTED: &'static str;
    /// How the command line writes it.
    const FORM: Form = Form::Value;

    /// Parses text: a flag's value, an environment variable, a TOML string, the declared default.
    fn parse(text: &str) -> Result<Self::Value, String>;

    /// Reads a TOML value; by default a string, parsed as text.
    fn from_toml(value: &toml::Value) -> Result<Self::Value, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            other => Err(wrong_type(other, Self::EXPECTED)),
        }
    }

    /// The value of a flag given `texts.len()` times (once, except for [`Form::Repeated`]).
    fn from_flag(texts: &[String]) -> Result<Self::Value, String> {
        match texts.last() {
            Some(t) => Self::parse(t),
            None => Err("expected a value".into()),
        }
    }

    /// How clap checks the flag's value; the parsed command line keeps the text as written.
    fn value_parser() -> ValueParser {
        ValueParser::new(|s: &str| Self::parse(s).map(|_| s.to_string()))
    }

    /// The value as `hyperfork plan --json` shows it.
    fn show(value: &Self::Value) -> serde_json::Value;
}

/// A number as JSON.
fn number(n: impl Into<serde_json::Number>) -> serde_json::Value {
    serde_json::Value::Number(n.into())
}

/// Text as JSON.
fn text(s: impl Into<String>) -> serde_json::Value {
    serde_json::Value::String(s.into())
}

/// The message for a TOML value of the wrong type, worded as serde words it.
pub(crate) fn wrong_type(value: &toml::Value, expected: &str) -> String {
    use serde::de::Unexpected;
    let got = match value {
        toml::Value::String(s) => Unexpected::Str(s),
        toml::Value::Integer(n) => Unexpected::Signed(*n),
        toml::Value::Float(f) => Unexpected::Float(*f),
        toml::Value::Boolean(b) => Unexpected::Bool(*b),
        toml::Value::Datetime(_) => Unexpected::Other("datetime"),
        toml::Value::Array(_) => Unexpected::Seq,
        toml::Value::Table(_) => Unexpected::Map,
    };
    format!("invalid type: {got}, expected {expected}")
}

/// A TOML integer converted by `convert`, or an error naming what was expected.
fn integer<T>(
    value: &toml::Value,
    expected: &str,
    convert: impl Fn(i64) -> Option<T>,
) -> Result<T, String> {
    match value {
        toml::Value::Integer(n) => {
            convert(*n).ok_or_else(|| format!("expected {expected}, got {n}"))
        }
        other => Err(wrong_type(other, expected)),
    }
}

/// A count of 1 or more (`usize`); TOML: an integer.
pub(crate) struct Positive;

impl Kind for Positive {
    type Value = usize;
    const EXPECTED: &'static str = "a positive integer (1 or more)";
    fn parse(text: &str) -> Result<usize, String> {
        positive_usize(text)
    }
    fn from_toml(value: &toml::Value) -> Result<usize, String> {
        integer(value, Self::EXPECTED, |n| {
            usize::try_from(n).ok().filter(|n| *n >= 1)
        })
    }
    fn show(value: &usize) -> serde_json::Value {
        number(*value as u64)
    }
}

/// A count of 0 or more (`u64`); TOML: an integer.
pub(crate) struct NonNegative;

impl Kind for NonNegative {
    type Value = u64;
    const EXPECTED: &'static str = "a non-negative integer";
    fn parse(text: &str) -> Result<u64, String> {
        non_negative_u64(text)
    }
    fn from_toml(value: &toml::Value) -> Result<u64, String> {
        integer(value, Self::EXPECTED, |n| u64::try_from(n).ok())
    }
    fn show(value: &u64) -> serde_json::Value {
        number(*value)
    }
}

/// A count from 1 to `u32::MAX` (the listen backlog); TOML: an integer.
pub(crate) struct Backlog;

impl Kind for Backlog {
    type Value = u32;
    const EXPECTED: &'static str = "an integer from 1 to 4294967295";
    fn parse(text: &str) -> Result<u32, String> {
        positive_u32(text)
    }
    fn from_toml(value: &toml::Value) -> Result<u32, String> {
        integer(value, Self::EXPECTED, |n| {
            u32::try_from(n).ok().filter(|n| *n >= 1)
        })
    }
    fn show(value: &u32) -> serde_json::Value {
        number(*value)
    }
}

/// A TCP port number; TOML: an integer.
pub(crate) struct Port;

impl Kind for Port {
    type Value = u16;
    const EXPECTED: &'static str = "a port number from 0 to 65535";
    fn parse(text: &str) -> Result<u16, String> {
        parse_port(text)
    }
    fn from_toml(value: &toml::Value) -> Result<u16, String> {
        integer(value, Self::EXPECTED, |n| u16::try_from(n).ok())
    }
    fn show(value: &u16) -> serde_json::Value {
        number(*value)
    }
}

/// A duration (`30`, `30s`, `2m`, `500ms`); TOML: integer seconds or a string.
pub(crate) struct Seconds;

impl Kind for Seconds {
    type Value = Duration;
    const EXPECTED: &'static str = "a duration such as 30, 30s, 2m or 500ms";
    fn parse(text: &str) -> Result<Duration, String> {
        parse_duration(text)
    }
    fn from_toml(value: &toml::Value) -> Result<Duration, String> {
        const EXPECTING: &str = "a duration: integer seconds or a string such as \"30s\"";
        match value {
            toml::Value::String(s) => parse_duration(s),
            other => integer(other, EXPECTING, |n| {
                u64::try_from(n).ok().map(Duration::from_secs)
            }),
        }
    }
    fn show(value: &Duration) -> serde_json::Value {
        text(humantime::format_duration(*value).to_string())
    }
}

/// A size in bytes (`1048576`, `512KiB`, `64MiB`); TOML: integer bytes or a string.
pub(crate) struct Bytes;

impl Kind for Bytes {
    type Value = u64;
    const EXPECTED: &'static str = "a size such as 1048576, 512KiB or 64MiB";
    fn parse(text: &str) -> Result<u64, String> {
        parse_size(text)
    }
    fn from_toml(value: &toml::Value) -> Result<u64, String> {
        const EXPECTING: &str = "a size: integer bytes or a string such as \"64MiB\"";
        match value {
            toml::Value::String(s) => parse_size(s),
            other => integer(other, EXPECTING, |n| u64::try_from(n).ok()),
        }
    }
    fn show(value: &u64) -> serde_json::Value {
        number(*value)
    }
}

/// An octal file mode or umask (`660`, `0660`, `0o660`); TOML: a quoted string only, since TOML reads
/// an unquoted `660` as a decimal integer.
pub(crate) struct Mode;

impl Kind for Mode {
    type Value = u32;
    const EXPECTED: &'static str = "an octal mode such as 660, 0660 or 0o660 (at most 0777)";
    fn parse(text: &str) -> Result<u32, String> {
        parse_mode(text)
    }
    fn from_toml(value: &toml::Value) -> Result<u32, String> {
        match value {
            toml::Value::String(s) => parse_mode(s),
            toml::Value::Integer(n) => Err(format!(
                "expected an octal mode as a quoted string such as \"0660\", got the integer {n}: \
                 TOML reads an unquoted number as decimal (or 0o-octal), so quote it"
            )),
            other => Err(wrong_type(
                other,
                "an octal mode as a string such as \"0660\"",
            )),
        }
    }
    fn show(value: &u32) -> serde_json::Value {
        text(format!("{value:04o}"))
    }
}

/// On or off: a flag without value; `1`, `true`, `yes`, `on` (or their opposites) in the
/// environment; a TOML boolean.
pub(crate) struct Switch;

impl Kind for Switch {
    type Value = bool;
    const EXPECTED: &'static str = "1, 0, true or false";
    const FORM: Form = Form::Switch;
    fn parse(text: &str) -> Result<bool, String> {
        parse_bool(text)
    }
    fn from_toml(value: &toml::Value) -> Result<bool, String> {
        match value {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(wrong_type(other, "a boolean")),
        }
    }
    fn show(value: &bool) -> serde_json::Value {
        serde_json::Value::Bool(*value)
    }
}

/// Free text (a host name).
pub(crate) struct Text;

impl Kind for Text {
    type Value = String;
    const EXPECTED: &'static str = "a string";
    fn parse(text: &str) -> Result<String, String> {
        Ok(text.to_string())
    }
    fn show(value: &String) -> serde_json::Value {
        text(value.as_str())
    }
}

/// A user or a group (`--user`, `--group`): a name, or a numeric id; TOML: a string or a
/// non-negative integer. Looked up in the user and group databases where it is used.
pub(crate) struct NameOrId;

impl Kind for NameOrId {
    type Value = String;
    const EXPECTED: &'static str = "a name or a numeric id";
    fn parse(text: &str) -> Result<String, String> {
        match text.trim() {
            "" => Err("expected a name or a numeric id, got an empty string".into()),
            t => Ok(t.to_string()),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<String, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            other => integer(other, "a name or a numeric id", |n| {
                u32::try_from(n).ok().map(|n| n.to_string())
            }),
        }
    }
    fn show(value: &String) -> serde_json::Value {
        text(value.as_str())
    }
}

/// A TCP address with an IP literal: `HOST:PORT`, `[IPv6]:PORT`, or `localhost:PORT`.
pub(crate) struct TcpAddress;

impl Kind for TcpAddress {
    type Value = std::net::SocketAddr;
    const EXPECTED: &'static str = "an address like 127.0.0.1:9100";
    fn parse(text: &str) -> Result<std::net::SocketAddr, String> {
        let t = text.trim();
        let t = match t.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => t.to_string(),
        };
        t.parse().map_err(|_| {
            format!("expected an address like 127.0.0.1:9100 or [::1]:9100, got {text:?}")
        })
    }
    fn show(value: &std::net::SocketAddr) -> serde_json::Value {
        text(value.to_string())
    }
}

/// A file path; an empty one is refused on the command line.
pub(crate) struct Path;

impl Kind for Path {
    type Value = PathBuf;
    const EXPECTED: &'static str = "a path";
    fn parse(text: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text))
    }
    fn value_parser() -> ValueParser {
        NonEmptyStringValueParser::new().into()
    }
    fn show(value: &PathBuf) -> serde_json::Value {
        text(value.display().to_string())
    }
}

/// A short delay (`--reload-delay`): decimal seconds (`0.25`) or a duration (`250ms`); TOML: a
/// number of seconds or a string.
pub(crate) struct Delay;

impl Kind for Delay {
    type Value = Duration;
    const EXPECTED: &'static str = "a delay such as 0.25, 250ms or 2s";
    fn parse(text: &str) -> Result<Duration, String> {
        parse_delay(text)
    }
    fn from_toml(value: &toml::Value) -> Result<Duration, String> {
        match value {
            toml::Value::String(s) => parse_delay(s),
            toml::Value::Float(f) => parse_delay(&f.to_string()),
            toml::Value::Integer(n) => parse_delay(&n.to_string()),
            other => Err(wrong_type(
                other,
                "seconds (0.25) or a string such as \"250ms\"",
            )),
        }
    }
    fn show(value: &Duration) -> serde_json::Value {
        text(humantime::format_duration(*value).to_string())
    }
}

/// A list read the same way in every layer: the flag repeats; the environment variable separates the
/// items with commas or whitespace; TOML holds an array of strings. Each item is checked by `item`.
fn repeated_from_toml(
    value: &toml::Value,
    item: fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    let toml::Value::Array(items) = value else {
        return Err(wrong_type(value, "an array of strings"));
    };
    items
        .iter()
        .map(|i| match i {
            toml::Value::String(s) => item(s),
            other => Err(wrong_type(other, "a string")),
        })
        .collect()
}

/// Paths (`--reload-dir`): repeatable; see [`repeated_from_toml`] for each layer's form.
pub(crate) struct Paths;

impl Kind for Paths {
    type Value = Vec<PathBuf>;
    const EXPECTED: &'static str = "paths separated by commas or spaces";
    const FORM: Form = Form::Repeated;
    fn parse(text: &str) -> Result<Vec<PathBuf>, String> {
        Ok(split_list(text).into_iter().map(PathBuf::from).collect())
    }
    fn from_flag(texts: &[String]) -> Result<Vec<PathBuf>, String> {
        Ok(texts.iter().map(PathBuf::from).collect())
    }
    fn from_toml(value: &toml::Value) -> Result<Vec<PathBuf>, String> {
        let items = repeated_from_toml(value, |s| Ok(s.to_string()))?;
        Ok(items.into_iter().map(PathBuf::from).collect())
    }
    fn value_parser() -> ValueParser {
        NonEmptyStringValueParser::new().into()
    }
    fn show(value: &Vec<PathBuf>) -> serde_json::Value {
        serde_json::Value::Array(
            value
                .iter()
                .map(|p| text(p.display().to_string()))
                .collect(),
        )
    }
}

/// Glob patterns (`--reload-include`, `--reload-exclude`): repeatable, each checked; see
/// [`repeated_from_toml`] for each layer's form.
pub(crate) struct Globs;

impl Kind for Globs {
    type Value = Vec<String>;
    const EXPECTED: &'static str = "glob patterns separated by commas or spaces";
    const FORM: Form = Form::Repeated;
    fn parse(text: &str) -> Result<Vec<String>, String> {
        split_list(text).iter().map(|p| check_glob(p)).collect()
    }
    fn from_flag(texts: &[String]) -> Result<Vec<String>, String> {
        texts.iter().map(|p| check_glob(p)).collect()
    }
    fn from_toml(value: &toml::Value) -> Result<Vec<String>, String> {
        repeated_from_toml(value, check_glob)
    }
    fn value_parser() -> ValueParser {
        ValueParser::new(check_glob)
    }
    fn show(value: &Vec<String>) -> serde_json::Value {
        serde_json::Value::Array(value.iter().map(|g| text(g.as_str())).collect())
    }
}

/// Addresses (`--bind`): the flag repeats; the environment variable separates them with commas; TOML
/// holds an array of strings or one string. Each address is checked where the addresses are used.
pub(crate) struct Addresses;

impl Kind for Addresses {
    type Value = Vec<String>;
    const EXPECTED: &'static str = "addresses separated by commas";
    const FORM: Form = Form::Repeated;
    fn parse(text: &str) -> Result<Vec<String>, String> {
        Ok(text.split(',').map(|s| s.trim().to_string()).collect())
    }
    fn from_flag(texts: &[String]) -> Result<Vec<String>, String> {
        Ok(texts.to_vec())
    }
    fn from_toml(value: &toml::Value) -> Result<Vec<String>, String> {
        let items = match value {
            toml::Value::Array(items) => items,
            // One address, or several separated by commas as in the environment.
            toml::Value::String(s) => return Self::parse(s),
            other => return Err(wrong_type(other, "a string or an array of strings")),
        };
        items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(other, "a string")),
            })
            .collect()
    }
    fn show(value: &Vec<String>) -> serde_json::Value {
        serde_json::Value::Array(value.iter().map(|a| text(a.as_str())).collect())
    }
}

/// `NAME=VALUE` assignments (`-e`/`--env`): the flag repeats.
pub(crate) struct Assignments;

/// Parses one `NAME=VALUE` assignment.
pub(crate) fn assignment(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value))
            if !name.is_empty()
                && !name.contains('\0')
                && !value.contains('\0')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(format!("expected NAME=VALUE, e.g. DEBUG=1, got {text:?}")),
    }
}

impl Kind for Assignments {
    type Value = Vec<(String, String)>;
    const EXPECTED: &'static str = "NAME=VALUE";
    const FORM: Form = Form::Repeated;
    fn parse(text: &str) -> Result<Self::Value, String> {
        text.split_whitespace().map(assignment).collect()
    }
    fn from_flag(texts: &[String]) -> Result<Self::Value, String> {
        texts.iter().map(|t| assignment(t)).collect()
    }
    fn value_parser() -> ValueParser {
        ValueParser::new(|s: &str| assignment(s).map(|_| s.to_string()))
    }
    fn show(value: &Self::Value) -> serde_json::Value {
        serde_json::Value::Array(
            value
                .iter()
                .map(|(n, v)| text(format!("{n}={v}")))
                .collect(),
        )
    }
}

/// An array of TOML tables (`[[jobs]]`), read where it is used; the declaration only names the key.
pub(crate) struct Tables;

impl Kind for Tables {
    type Value = ();
    const EXPECTED: &'static str = "an array of tables";
    const FORM: Form = Form::Tables;
    fn parse(_: &str) -> Result<(), String> {
        Err("expected tables in the TOML file".into())
    }
    fn from_toml(value: &toml::Value) -> Result<(), String> {
        match value {
            toml::Value::Array(_) => Ok(()),
            other => Err(wrong_type(other, Self::EXPECTED)),
        }
    }
    fn show(_: &()) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// One of the names of an enum, ignoring case except on the command line, where clap checks the
/// names and lists them in `--help` and in errors.
pub(crate) struct Choice<E>(PhantomData<E>);

/// An enum a [`Choice`] setting takes, with its names spelled out for environment errors.
pub(crate) trait Named: ValueEnum + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// `one of` and the names, e.g. `one of balanced, shared`.
    const EXPECTED: &'static str;
}

impl Named for Accept {
    const EXPECTED: &'static str = "one of balanced, shared, packed";
}

impl Named for LogLevel {
    const EXPECTED: &'static str = "one of critical, error, warning, info, debug, trace";
}

impl<E: Named> Kind for Choice<E> {
    type Value = E;
    const EXPECTED: &'static str = E::EXPECTED;
    fn parse(text: &str) -> Result<E, String> {
        parse_choice(text)
    }
    fn value_parser() -> ValueParser {
        let names = E::value_variants()
            .iter()
            .filter_map(ValueEnum::to_possible_value);
        PossibleValuesParser::new(names).into()
    }
    fn show(value: &E) -> serde_json::Value {
        value
            .to_possible_value()
            .map_or(serde_json::Value::Null, |p| text(p.get_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<E: Named>() -> String {
        let names: Vec<String> = E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("one of {}", names.join(", "))
    }

    #[test]
    fn choice_descriptions_list_every_name() {
        assert_eq!(names::<Accept>(), Accept::EXPECTED);
        assert_eq!(names::<LogLevel>(), LogLevel::EXPECTED);
    }

    #[test]
    fn toml_integers_and_strings() {
        let int = toml::Value::Integer;
        let text = |s: &str| toml::Value::String(s.into());
        assert_eq!(Positive::from_toml(&int(3)), Ok(3));
        assert_eq!(
            Positive::from_toml(&int(0)).unwrap_err(),
            "expected a positive integer (1 or more), got 0"
        );
        assert!(
            Positive::from_toml(&text("four"))
                .unwrap_err()
                .contains("string \"four\"")
        );
        assert_eq!(Seconds::from_toml(&int(5)), Ok(Duration::from_secs(5)));
        assert_eq!(
            Seconds::from_toml(&text("2m")),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(Bytes::from_toml(&text("1KiB")), Ok(1024));
        assert!(Mode::from_toml(&int(660)).unwrap_err().contains("quote it"));
        assert_eq!(Mode::from_toml(&text("0600")), Ok(0o600));
        assert!(
            Switch::from_toml(&int(1))
                .unwrap_err()
                .contains("expected a boolean")
        );
        assert_eq!(
            Port::from_toml(&int(70000)).unwrap_err(),
            "expected a port number from 0 to 65535, got 70000"
        );
    }

    #[test]
    fn reload_lists_and_delay() {
        assert_eq!(
            Paths::parse("src, templates  static").unwrap(),
            [
                PathBuf::from("src"),
                PathBuf::from("templates"),
                PathBuf::from("static")
            ]
        );
        let given = vec!["a dir".to_string()];
        assert_eq!(Paths::from_flag(&given).unwrap(), [PathBuf::from("a dir")]);
        assert_eq!(Globs::parse("*.html *.css").unwrap(), ["*.html", "*.css"]);
        assert!(
            Globs::parse("[a")
                .unwrap_err()
                .contains("expected a glob pattern"),
            "an unclosed class is refused"
        );
        assert_eq!(Delay::parse("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(Delay::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(
            Delay::from_toml(&toml::Value::Float(1.5)),
            Ok(Duration::from_millis(1500))
        );
        assert!(
            Delay::parse("-1")
                .unwrap_err()
                .contains("0 seconds or more")
        );
        assert!(Delay::parse("soon").is_err());
    }

    #[test]
    fn addresses_split_on_commas_in_text_only() {
        assert_eq!(Addresses::parse("a:1, b:2").unwrap(), ["a:1", "b:2"]);
        let given = vec!["a:1,b:2".to_string()];
        assert_eq!(Addresses::from_flag(&given).unwrap(), ["a:1,b:2"]);
    }
}
