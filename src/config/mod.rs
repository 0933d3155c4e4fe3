//! Settings: command line, then environment, then TOML file, then defaults.
//!
//! [`Settings::resolve`] merges the layers and remembers where each value came from ([`Source`]), so that
//! `hyperfork plan` and the startup log can say why the pool has the size it has. An empty environment
//! variable counts as unset.

pub(crate) mod cli;
pub(crate) mod cores;
pub(crate) mod health;
pub(crate) mod sizing;
pub(crate) mod values;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use self::cli::Cli;
use self::values::{Accept, LogLevel};
use crate::error::ConfigError;
use crate::jobs::Job;
use crate::jobs::schedule::{Cron, Every, Schedule};
use crate::shared::listener::BindSpec;

/// Default TCP host.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default TCP port.
pub const DEFAULT_PORT: u16 = 8000;
/// Default listen backlog.
pub const DEFAULT_BACKLOG: u32 = 2048;
/// Default cap of the computed worker count.
pub const DEFAULT_MAX_WORKERS: usize = 8;
/// Default graceful shutdown timeout.
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle keep-alive timeout (uvicorn's default).
pub const DEFAULT_TIMEOUT_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Default heartbeat timeout: a worker silent this long is replaced.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time to receive a whole request header after its first byte.
pub const DEFAULT_TIMEOUT_REQUEST_HEADER: Duration = Duration::from_secs(10);
/// Default most header fields per request (gunicorn's and hyper's default).
pub const DEFAULT_LIMIT_REQUEST_FIELDS: u64 = 100;
/// Default largest request line plus headers, in bytes.
pub const DEFAULT_LIMIT_REQUEST_HEADER_SIZE: u64 = 64 * 1024;
pub use self::values::{DEFAULT_SOCKET_MODE, MIN_LIMIT_REQUEST_HEADER_SIZE};

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

/// The fully resolved settings the master runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Addresses to listen on, at least one.
    pub binds: Vec<Sourced<BindSpec>>,
    /// Listen backlog.
    pub backlog: u32,
    /// An explicit worker count, if any layer gave one.
    pub workers: Option<Sourced<usize>>,
    /// Cap of the computed worker count.
    pub max_workers: Sourced<usize>,
    /// Development mode: one worker, debug logs.
    pub debug: Sourced<bool>,
    /// Runtime threads per worker (1 = current-thread runtime).
    pub threads: usize,
    /// How long a graceful shutdown waits before killing workers.
    pub graceful_timeout: Duration,
    /// Log level (ignored when `RUST_LOG` is set).
    pub log_level: LogLevel,
    /// How workers share new connections.
    pub accept: Accept,
    /// The configuration file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Command jobs from the file's `[[jobs]]` tables.
    pub jobs: Vec<Job>,
    /// Where to write the master's pid.
    pub pid_file: Option<PathBuf>,
    /// Where to append logs instead of stderr.
    pub log_file: Option<PathBuf>,
    /// A worker whose event loop is silent this long is replaced; zero: off.
    pub timeout: Duration,
    /// Requests after which a worker is replaced; zero: off.
    pub max_requests: u64,
    /// Random extra requests (0..=this) per worker on top of `max_requests`.
    pub max_requests_jitter: u64,
    /// Resident memory (bytes) beyond which a worker is replaced; zero: off.
    pub max_worker_memory: u64,
    /// A request header not complete this long after its first byte closes the connection.
    pub timeout_request_header: Duration,
    /// Declared request bodies larger than this (bytes) get 413; zero: off.
    pub limit_request_body: u64,
    /// Requests with more header fields get 431.
    pub limit_request_fields: usize,
    /// Requests whose request line and headers are larger (bytes) get 431.
    pub limit_request_header_size: u64,
    /// Idle keep-alive connections are closed after this long.
    pub timeout_keep_alive: Duration,
    /// Most requests a worker serves at once (beyond: 503).
    pub limit_concurrency: Option<usize>,
    /// The exact mode of the unix socket files the master binds: `socket_mode`, else `0o666` minus
    /// `umask`, else [`DEFAULT_SOCKET_MODE`].
    pub socket_mode: u32,
    /// The umask the master sets at start (inherited by workers); `None` keeps the inherited one.
    pub umask: Option<u32>,
}

impl Settings {
    /// The limits each worker enforces on connections and requests.
    pub fn limits(&self) -> crate::worker::serve::Limits {
        crate::worker::serve::Limits {
            timeout_keep_alive: self.timeout_keep_alive,
            limit_concurrency: self.limit_concurrency,
            timeout_request_header: self.timeout_request_header,
            limit_request_body: self.limit_request_body,
            limit_request_fields: self.limit_request_fields,
            limit_request_header_size: self.limit_request_header_size,
        }
    }

    /// The worker-health settings.
    pub fn health(&self) -> crate::config::health::Health {
        crate::config::health::Health {
            timeout: self.timeout,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            max_worker_memory: self.max_worker_memory,
        }
    }
}

/// The TOML file's schema. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    host: Option<String>,
    port: Option<toml::Spanned<Count>>,
    bind: Option<Vec<String>>,
    backlog: Option<toml::Spanned<Count>>,
    workers: Option<toml::Spanned<Count>>,
    max_workers: Option<toml::Spanned<Count>>,
    debug: Option<bool>,
    threads: Option<toml::Spanned<Count>>,
    graceful_timeout: Option<toml::Spanned<DurationValue>>,
    log_level: Option<LogLevel>,
    accept: Option<Accept>,
    pid: Option<PathBuf>,
    log_file: Option<PathBuf>,
    timeout: Option<toml::Spanned<DurationValue>>,
    max_requests: Option<toml::Spanned<Count>>,
    max_requests_jitter: Option<toml::Spanned<Count>>,
    max_worker_memory: Option<toml::Spanned<SizeValue>>,
    timeout_request_header: Option<toml::Spanned<DurationValue>>,
    limit_request_body: Option<toml::Spanned<SizeValue>>,
    limit_request_fields: Option<toml::Spanned<Count>>,
    limit_request_header_size: Option<toml::Spanned<SizeValue>>,
    timeout_keep_alive: Option<toml::Spanned<DurationValue>>,
    limit_concurrency: Option<toml::Spanned<Count>>,
    socket_mode: Option<toml::Spanned<ModeValue>>,
    umask: Option<toml::Spanned<ModeValue>>,
    jobs: Option<Vec<toml::Spanned<JobFile>>>,
}

/// One `[[jobs]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    every: Option<toml::Spanned<DurationValue>>,
    cron: Option<toml::Spanned<String>>,
    timezone: Option<toml::Spanned<String>>,
    command: toml::Spanned<Vec<String>>,
    timeout: Option<toml::Spanned<DurationValue>>,
    misfire_grace: Option<toml::Spanned<DurationValue>>,
    #[serde(default)]
    overlap: bool,
}

/// An integer in the TOML file; range checks happen after parsing, so errors can name the line.
#[derive(Debug, Clone, Copy)]
struct Count(i64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Count, E> {
                Ok(Count(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Count, E> {
                Ok(Count(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A TOML value written as a non-negative integer or as a string, parsed into `K::Out`; a parse error
/// is kept so it can be reported with the key's line.
#[derive(Debug)]
struct Scalar<K: ScalarKind>(Result<K::Out, String>);

/// How one kind of [`Scalar`] reads integers and strings.
trait ScalarKind {
    type Out: fmt::Debug;
    /// What the value should look like, for errors.
    const EXPECTING: &'static str;
    fn from_u64(v: u64) -> Self::Out;
    fn parse(s: &str) -> Result<Self::Out, String>;
}

/// Integer seconds or a duration string such as `"30s"`.
#[derive(Debug)]
struct Seconds;

impl ScalarKind for Seconds {
    type Out = Duration;
    const EXPECTING: &'static str = "a duration: integer seconds or a string such as \"30s\"";
    fn from_u64(v: u64) -> Duration {
        Duration::from_secs(v)
    }
    fn parse(s: &str) -> Result<Duration, String> {
        values::parse_duration(s)
    }
}

/// Integer bytes or a size string such as `"64MiB"`.
#[derive(Debug)]
struct Bytes;

impl ScalarKind for Bytes {
    type Out = u64;
    const EXPECTING: &'static str = "a size: integer bytes or a string such as \"64MiB\"";
    fn from_u64(v: u64) -> u64 {
        v
    }
    fn parse(s: &str) -> Result<u64, String> {
        values::parse_size(s)
    }
}

type DurationValue = Scalar<Seconds>;
type SizeValue = Scalar<Bytes>;

/// An octal mode in the TOML file, which must be a string: an unquoted `660` is a decimal integer in
/// TOML, so integers are kept as an error asking to quote the value (reported with the key's line).
#[derive(Debug)]
struct ModeValue(Result<u32, String>);

impl<'de> Deserialize<'de> for ModeValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ModeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode as a string such as \"0660\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ModeValue, E> {
                Ok(ModeValue(Err(format!(
                    "expected an octal mode as a quoted string such as \"0660\", got the integer {v}: \
                     TOML reads an unquoted number as decimal (or 0o-octal), so quote it"
                ))))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ModeValue, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ModeValue, E> {
                Ok(ModeValue(crate::shared::listener::parse_mode(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// An octal mode setting (`socket_mode`, `umask`): command line, environment, TOML key; `None` when no
/// layer sets it.
fn layered_mode(
    cli: Option<u32>,
    env: &dyn Env,
    env_name: &'static str,
    (path, text, key, file): (&Path, &str, &str, Option<&toml::Spanned<ModeValue>>),
) -> Result<Option<u32>, ConfigError> {
    if let Some(m) = cli {
        return Ok(Some(m));
    }
    if let Some(m) = env_parse(
        env,
        env_name,
        "an octal mode such as 660, 0660 or 0o660 (at most 0777)",
        |s| crate::shared::listener::parse_mode(s).ok(),
    )? {
        return Ok(Some(m));
    }
    match file {
        Some(v) => match &v.get_ref().0 {
            Ok(m) => Ok(Some(*m)),
            Err(msg) => Err(file_error(
                path,
                text,
                v.span(),
                format!("key `{key}`: {msg}"),
            )),
        },
        None => Ok(None),
    }
}

impl<'de, K: ScalarKind> Deserialize<'de> for Scalar<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(std::marker::PhantomData<K>);
        impl<K: ScalarKind> serde::de::Visitor<'_> for V<K> {
            type Value = Scalar<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(K::EXPECTING)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar<K>, E> {
                u64::try_from(v)
                    .map(|n| Scalar(Ok(K::from_u64(n))))
                    .map_err(|_| E::custom(format!("expected {}, got {v}", K::EXPECTING)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar<K>, E> {
                Ok(Scalar(Ok(K::from_u64(v))))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar<K>, E> {
                Ok(Scalar(K::parse(v)))
            }
        }
        d.deserialize_any(V::<K>(std::marker::PhantomData))
    }
}

/// A non-negative integer setting: command line, environment, TOML key, default. Values below `min`
/// are errors naming where they came from.
fn layered_u64(
    cli: Option<u64>,
    env: &dyn Env,
    env_name: &'static str,
    (path, text, key, file): (&Path, &str, &str, Option<&toml::Spanned<Count>>),
    (default, min): (u64, u64),
) -> Result<u64, ConfigError> {
    let too_small = |n: u64, from: String| {
        ConfigError::Invalid(format!(
            "{from}: expected an integer of at least {min}, got {n}"
        ))
    };
    if let Some(n) = cli {
        return if n < min {
            Err(too_small(n, format!("--{}", key.replace('_', "-"))))
        } else {
            Ok(n)
        };
    }
    let expected = if min == 0 {
        "a non-negative integer"
    } else {
        "a positive integer (1 or more)"
    };
    if let Some(n) = env_parse(env, env_name, expected, |s| {
        s.parse::<u64>().ok().filter(|n| *n >= min)
    })? {
        return Ok(n);
    }
    match file {
        Some(v) => {
            let n = v.get_ref().0;
            if n < min as i64 {
                Err(file_error(
                    path,
                    text,
                    v.span(),
                    format!("key `{key}`: expected {expected}, got {n}"),
                ))
            } else {
                Ok(n as u64)
            }
        }
        None => Ok(default),
    }
}

/// A size setting: command line, environment, TOML key, default; at least `min` unless zero is
/// allowed (`min` of 0).
fn layered_size(
    cli: Option<u64>,
    env: &dyn Env,
    env_name: &'static str,
    (path, text, key, file): (&Path, &str, &str, Option<&toml::Spanned<SizeValue>>),
    (default, min): (u64, u64),
) -> Result<u64, ConfigError> {
    let check = |n: u64, from: &dyn Fn(String) -> ConfigError| {
        if n < min {
            Err(from(format!(
                "expected a size of at least {}, got {n} bytes",
                bytesize::ByteSize::b(min).display().iec()
            )))
        } else {
            Ok(n)
        }
    };
    if let Some(n) = cli {
        let flag = format!("--{}", key.replace('_', "-"));
        return check(n, &|m| ConfigError::Invalid(format!("{flag}: {m}")));
    }
    if let Some(n) = env_parse(
        env,
        env_name,
        "a size such as 1048576, 512KiB or 64MiB",
        |s| values::parse_size(s).ok(),
    )? {
        return check(n, &|m| ConfigError::Invalid(format!("{env_name}: {m}")));
    }
    match file {
        Some(v) => match &v.get_ref().0 {
            Ok(n) => check(*n, &|m| {
                file_error(path, text, v.span(), format!("key `{key}`: {m}"))
            }),
            Err(msg) => Err(file_error(
                path,
                text,
                v.span(),
                format!("key `{key}`: {msg}"),
            )),
        },
        None => Ok(default),
    }
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

fn env_count(env: &dyn Env, name: &'static str) -> Result<Option<Sourced<usize>>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(v) => values::positive_usize(&v)
            .map(|n| {
                Some(Sourced {
                    value: n,
                    source: Source::Env(name),
                })
            })
            .map_err(|_| ConfigError::Env {
                name,
                value: v,
                expected: "a positive integer (1 or more)",
            }),
    }
}

fn env_parse<T>(
    env: &dyn Env,
    name: &'static str,
    expected: &'static str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(v) => parse(v.trim()).map(Some).ok_or(ConfigError::Env {
            name,
            value: v,
            expected,
        }),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    values::parse_bool(s).ok()
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key written on the line holding `offset` (the text before `=`), if any.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[start..end];
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
}

fn file_error(
    path: &Path,
    text: &str,
    span: std::ops::Range<usize>,
    message: String,
) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        line: line_of(text, span.start),
        message,
    }
}

fn load_file(path: &Path) -> Result<(FileConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    match toml::from_str::<FileConfig>(&text) {
        Ok(cfg) => Ok((cfg, text)),
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().replace('\n', " ");
            let message = match key_at(&text, span.start) {
                Some(key) if !msg.contains(&format!("`{key}`")) => format!("key `{key}`: {msg}"),
                _ => msg,
            };
            Err(file_error(path, &text, span, message))
        }
    }
}

/// Checks a count read from the TOML file.
fn file_count(
    path: &Path,
    text: &str,
    key: &'static str,
    v: &toml::Spanned<Count>,
) -> Result<Sourced<usize>, ConfigError> {
    let n = v.get_ref().0;
    if n < 1 {
        return Err(file_error(
            path,
            text,
            v.span(),
            format!("key `{key}`: expected a positive integer (1 or more), got {n}"),
        ));
    }
    Ok(Sourced {
        value: n as usize,
        source: Source::File {
            path: path.to_path_buf(),
            key,
        },
    })
}

/// A duration setting: command line, then environment, then TOML key, then default.
fn layered_duration(
    cli: Option<Duration>,
    env: &dyn Env,
    env_name: &'static str,
    (path, text, key, file): (&Path, &str, &str, Option<&toml::Spanned<DurationValue>>),
    default: Duration,
) -> Result<Duration, ConfigError> {
    if let Some(d) = cli {
        return Ok(d);
    }
    let from_env = env_parse(
        env,
        env_name,
        "a duration such as 30, 30s, 2m or 500ms",
        |s| values::parse_duration(s).ok(),
    )?;
    if let Some(d) = from_env {
        return Ok(d);
    }
    match file {
        Some(v) => match &v.get_ref().0 {
            Ok(d) => Ok(*d),
            Err(msg) => Err(file_error(
                path,
                text,
                v.span(),
                format!("key `{key}`: {msg}"),
            )),
        },
        None => Ok(default),
    }
}

/// A duration key of a job table.
fn job_duration(
    path: &Path,
    text: &str,
    name: &str,
    key: &str,
    v: &toml::Spanned<DurationValue>,
) -> Result<Duration, ConfigError> {
    match &v.get_ref().0 {
        Ok(d) => Ok(*d),
        Err(msg) => Err(file_error(
            path,
            text,
            v.span(),
            format!("job {name:?}: key `{key}`: {msg}"),
        )),
    }
}

/// Turns `[[jobs]]` tables into command jobs.
fn file_jobs(
    path: &Path,
    text: &str,
    list: &[toml::Spanned<JobFile>],
) -> Result<Vec<Job>, ConfigError> {
    let mut jobs = Vec::new();
    for spanned in list {
        let j = spanned.get_ref();
        let at = |span: std::ops::Range<usize>, msg: String| file_error(path, text, span, msg);
        let name = j.name.trim();
        if name.is_empty() {
            return Err(at(
                spanned.span(),
                "[[jobs]]: key `name`: expected a non-empty name".into(),
            ));
        }
        let schedule: Schedule = match (&j.every, &j.cron) {
            (Some(_), Some(c)) => {
                return Err(at(
                    c.span(),
                    format!("job {name:?}: give either `every` or `cron`, not both"),
                ));
            }
            (None, None) => {
                return Err(at(
                    spanned.span(),
                    format!(
                        "job {name:?}: missing schedule: expected `every = \"10s\"` or `cron = \"*/5 * * * *\"`"
                    ),
                ));
            }
            (Some(e), None) => {
                let d = job_duration(path, text, name, "every", e)?;
                Every::new(d)
                    .ok_or_else(|| {
                        at(
                            e.span(),
                            format!("job {name:?}: key `every`: expected a duration above zero"),
                        )
                    })?
                    .into()
            }
            (None, Some(c)) => {
                let mut cron = Cron::parse(c.get_ref())
                    .map_err(|e| at(c.span(), format!("job {name:?}: key `cron`: {e}")))?;
                if let Some(tz) = &j.timezone {
                    cron = cron
                        .in_time_zone(tz.get_ref())
                        .map_err(|e| at(tz.span(), format!("job {name:?}: key `timezone`: {e}")))?;
                }
                cron.into()
            }
        };
        if let (Some(tz), Some(_)) = (&j.timezone, &j.every) {
            return Err(at(
                tz.span(),
                format!("job {name:?}: key `timezone` applies to `cron` only"),
            ));
        }
        let argv = j.command.get_ref().clone();
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(at(
                j.command.span(),
                format!(
                    "job {name:?}: key `command`: expected a non-empty array such as [\"sh\", \"-c\", \"...\"]"
                ),
            ));
        }
        let mut job = Job::command(name, schedule, argv).overlap(j.overlap);
        if let Some(t) = &j.timeout {
            let d = job_duration(path, text, name, "timeout", t)?;
            if d.is_zero() {
                return Err(at(
                    t.span(),
                    format!("job {name:?}: key `timeout`: expected a duration above zero"),
                ));
            }
            job = job.timeout(d);
        }
        if let Some(g) = &j.misfire_grace {
            job = job.misfire_grace(job_duration(path, text, name, "misfire_grace", g)?);
        }
        if jobs.iter().any(|o: &Job| o.name == job.name) {
            return Err(at(
                spanned.span(),
                format!("job name {name:?} is used twice: expected unique names"),
            ));
        }
        jobs.push(job);
    }
    Ok(jobs)
}

fn parse_binds(
    values: &[String],
    source: Source,
    out: &mut Vec<Sourced<BindSpec>>,
) -> Result<(), ConfigError> {
    for v in values {
        let spec = BindSpec::parse(v).ok_or_else(|| ConfigError::Bind {
            value: v.clone(),
            source_name: source.to_string(),
        })?;
        out.push(Sourced {
            value: spec,
            source: source.clone(),
        });
    }
    Ok(())
}

impl Settings {
    /// Merges command line, environment and the TOML file (from `--config` or `HYPERFORK_CONFIG`).
    pub fn resolve(cli: &Cli, env: &dyn Env) -> Result<Settings, ConfigError> {
        let config_file = cli
            .config
            .clone()
            .or_else(|| env.get("HYPERFORK_CONFIG").map(PathBuf::from));
        let (file, text) = match &config_file {
            Some(p) => load_file(p)?,
            None => (FileConfig::default(), String::new()),
        };
        let path = config_file.clone().unwrap_or_default();
        let from_file = |key: &'static str| Source::File {
            path: path.clone(),
            key,
        };

        // Worker count: --workers > UVICORN_WORKERS > WEB_CONCURRENCY > HYPERFORK_WORKERS > file.
        let workers = match cli.workers {
            Some(n) => Some(Sourced {
                value: n,
                source: Source::Cli("--workers"),
            }),
            None => match env_count(env, "UVICORN_WORKERS")? {
                Some(s) => Some(s),
                None => match env_count(env, "WEB_CONCURRENCY")? {
                    Some(s) => Some(s),
                    None => match env_count(env, "HYPERFORK_WORKERS")? {
                        Some(s) => Some(s),
                        None => match &file.workers {
                            Some(v) => Some(file_count(&path, &text, "workers", v)?),
                            None => None,
                        },
                    },
                },
            },
        };

        let max_workers = match cli.max_workers {
            Some(n) => Sourced {
                value: n,
                source: Source::Cli("--max-workers"),
            },
            None => match env_count(env, "HYPERFORK_MAX_WORKERS")? {
                Some(s) => s,
                None => match &file.max_workers {
                    Some(v) => file_count(&path, &text, "max_workers", v)?,
                    None => Sourced {
                        value: DEFAULT_MAX_WORKERS,
                        source: Source::Default,
                    },
                },
            },
        };

        let env_debug = env_parse(env, "HYPERFORK_DEBUG", "1, 0, true or false", parse_bool)?;
        let debug = if cli.debug {
            Sourced {
                value: true,
                source: Source::Cli("--debug"),
            }
        } else if let Some(d) = env_debug {
            Sourced {
                value: d,
                source: Source::Env("HYPERFORK_DEBUG"),
            }
        } else if let Some(d) = file.debug {
            Sourced {
                value: d,
                source: from_file("debug"),
            }
        } else {
            Sourced {
                value: false,
                source: Source::Default,
            }
        };

        let threads = match cli.threads {
            Some(n) => n,
            None => match env_count(env, "HYPERFORK_THREADS")? {
                Some(s) => s.value,
                None => match &file.threads {
                    Some(v) => file_count(&path, &text, "threads", v)?.value,
                    None => 1,
                },
            },
        };

        let backlog = match cli.backlog {
            Some(n) => n,
            None => match env_parse(
                env,
                "HYPERFORK_BACKLOG",
                "an integer from 1 to 4294967295",
                |s| values::positive_u32(s).ok(),
            )? {
                Some(n) => n,
                None => match &file.backlog {
                    Some(v) => {
                        let n = file_count(&path, &text, "backlog", v)?.value;
                        u32::try_from(n).map_err(|_| {
                            file_error(
                                &path,
                                &text,
                                v.span(),
                                format!(
                                    "key `backlog`: expected an integer from 1 to {}, got {n}",
                                    u32::MAX
                                ),
                            )
                        })?
                    }
                    None => DEFAULT_BACKLOG,
                },
            },
        };

        let graceful_timeout = layered_duration(
            cli.graceful_timeout,
            env,
            "HYPERFORK_GRACEFUL_TIMEOUT",
            (
                &path,
                &text,
                "graceful_timeout",
                file.graceful_timeout.as_ref(),
            ),
            DEFAULT_GRACEFUL_TIMEOUT,
        )?;

        let log_level = match cli.log_level {
            Some(l) => l,
            None => match env_parse(
                env,
                "HYPERFORK_LOG_LEVEL",
                "one of critical, error, warning, info, debug, trace",
                |s| values::parse_choice::<LogLevel>(s).ok(),
            )? {
                Some(l) => l,
                None => file.log_level.unwrap_or(if debug.value {
                    LogLevel::Debug
                } else {
                    LogLevel::Info
                }),
            },
        };
        let log_level = if debug.value && cli.log_level.is_none() {
            LogLevel::Debug
        } else {
            log_level
        };

        let accept = match cli.accept {
            Some(a) => a,
            None => env_parse(env, "HYPERFORK_ACCEPT", "one of balanced, shared", |s| {
                values::parse_choice::<Accept>(s).ok()
            })?
            .or(file.accept)
            .unwrap_or_default(),
        };

        let binds = Self::resolve_binds(cli, env, &file, &path, &text)?;
        let pid_file = cli
            .pid
            .clone()
            .or_else(|| env.get("HYPERFORK_PID").map(PathBuf::from))
            .or_else(|| file.pid.clone());
        let log_file = cli
            .log_file
            .clone()
            .or_else(|| env.get("HYPERFORK_LOG_FILE").map(PathBuf::from))
            .or_else(|| file.log_file.clone())
            .filter(|p| !p.as_os_str().is_empty());
        let timeout_keep_alive = layered_duration(
            cli.timeout_keep_alive,
            env,
            "HYPERFORK_TIMEOUT_KEEP_ALIVE",
            (
                &path,
                &text,
                "timeout_keep_alive",
                file.timeout_keep_alive.as_ref(),
            ),
            DEFAULT_TIMEOUT_KEEP_ALIVE,
        )?;
        let limit_concurrency = match cli.limit_concurrency {
            Some(n) => Some(n),
            None => match env_count(env, "HYPERFORK_LIMIT_CONCURRENCY")? {
                Some(s) => Some(s.value),
                None => match &file.limit_concurrency {
                    Some(v) => Some(file_count(&path, &text, "limit_concurrency", v)?.value),
                    None => None,
                },
            },
        };
        let jobs = match &file.jobs {
            Some(list) => file_jobs(&path, &text, list)?,
            None => Vec::new(),
        };
        let timeout = layered_duration(
            cli.timeout,
            env,
            "HYPERFORK_TIMEOUT",
            (&path, &text, "timeout", file.timeout.as_ref()),
            DEFAULT_TIMEOUT,
        )?;
        let timeout_request_header = layered_duration(
            cli.timeout_request_header,
            env,
            "HYPERFORK_TIMEOUT_REQUEST_HEADER",
            (
                &path,
                &text,
                "timeout_request_header",
                file.timeout_request_header.as_ref(),
            ),
            DEFAULT_TIMEOUT_REQUEST_HEADER,
        )?;
        let max_requests = layered_u64(
            cli.max_requests,
            env,
            "HYPERFORK_MAX_REQUESTS",
            (&path, &text, "max_requests", file.max_requests.as_ref()),
            (0, 0),
        )?;
        let max_requests_jitter = layered_u64(
            cli.max_requests_jitter,
            env,
            "HYPERFORK_MAX_REQUESTS_JITTER",
            (
                &path,
                &text,
                "max_requests_jitter",
                file.max_requests_jitter.as_ref(),
            ),
            (0, 0),
        )?;
        let limit_request_fields = layered_u64(
            cli.limit_request_fields.map(|n| n as u64),
            env,
            "HYPERFORK_LIMIT_REQUEST_FIELDS",
            (
                &path,
                &text,
                "limit_request_fields",
                file.limit_request_fields.as_ref(),
            ),
            (DEFAULT_LIMIT_REQUEST_FIELDS, 1),
        )? as usize;
        let max_worker_memory = layered_size(
            cli.max_worker_memory,
            env,
            "HYPERFORK_MAX_WORKER_MEMORY",
            (
                &path,
                &text,
                "max_worker_memory",
                file.max_worker_memory.as_ref(),
            ),
            (0, 0),
        )?;
        let limit_request_body = layered_size(
            cli.limit_request_body,
            env,
            "HYPERFORK_LIMIT_REQUEST_BODY",
            (
                &path,
                &text,
                "limit_request_body",
                file.limit_request_body.as_ref(),
            ),
            (0, 0),
        )?;
        let limit_request_header_size = layered_size(
            cli.limit_request_header_size,
            env,
            "HYPERFORK_LIMIT_REQUEST_HEADER_SIZE",
            (
                &path,
                &text,
                "limit_request_header_size",
                file.limit_request_header_size.as_ref(),
            ),
            (
                DEFAULT_LIMIT_REQUEST_HEADER_SIZE,
                MIN_LIMIT_REQUEST_HEADER_SIZE,
            ),
        )?;
        let umask = layered_mode(
            cli.umask,
            env,
            "HYPERFORK_UMASK",
            (&path, &text, "umask", file.umask.as_ref()),
        )?;
        // Like gunicorn: without an explicit socket mode, the umask decides it.
        let socket_mode = layered_mode(
            cli.socket_mode,
            env,
            "HYPERFORK_SOCKET_MODE",
            (&path, &text, "socket_mode", file.socket_mode.as_ref()),
        )?
        .unwrap_or(match umask {
            Some(mask) => 0o666 & !mask,
            None => DEFAULT_SOCKET_MODE,
        });

        Ok(Settings {
            binds,
            backlog,
            workers,
            max_workers,
            debug,
            threads,
            graceful_timeout,
            log_level,
            accept,
            config_file,
            jobs,
            pid_file,
            log_file,
            timeout,
            max_requests,
            max_requests_jitter,
            max_worker_memory,
            timeout_request_header,
            limit_request_body,
            limit_request_fields,
            limit_request_header_size,
            timeout_keep_alive,
            limit_concurrency,
            socket_mode,
            umask,
        })
    }

    fn resolve_binds(
        cli: &Cli,
        env: &dyn Env,
        file: &FileConfig,
        path: &Path,
        text: &str,
    ) -> Result<Vec<Sourced<BindSpec>>, ConfigError> {
        let mut out = Vec::new();
        if !cli.bind.is_empty() {
            parse_binds(&cli.bind, Source::Cli("--bind"), &mut out)?;
            return Ok(out);
        }
        if cli.host.is_none() && cli.port.is_none() {
            if let Some(v) = env.get("HYPERFORK_BIND") {
                let list: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
                parse_binds(&list, Source::Env("HYPERFORK_BIND"), &mut out)?;
                return Ok(out);
            }
        }
        let env_port = env_parse(
            env,
            "HYPERFORK_PORT",
            "a port number from 0 to 65535",
            |s| values::parse_port(s).ok(),
        )?;
        let env_host = env.get("HYPERFORK_HOST");
        let host_or_port_given =
            cli.host.is_some() || cli.port.is_some() || env_port.is_some() || env_host.is_some();
        if !host_or_port_given {
            if let Some(list) = &file.bind {
                parse_binds(
                    list,
                    Source::File {
                        path: path.to_path_buf(),
                        key: "bind",
                    },
                    &mut out,
                )?;
                if out.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "{}: key `bind`: expected at least one address",
                        path.display()
                    )));
                }
                return Ok(out);
            }
        }
        let (host, host_src) = if let Some(h) = &cli.host {
            (h.clone(), Source::Cli("--host"))
        } else if let Some(h) = env_host {
            (h, Source::Env("HYPERFORK_HOST"))
        } else if let Some(h) = &file.host {
            (
                h.clone(),
                Source::File {
                    path: path.to_path_buf(),
                    key: "host",
                },
            )
        } else {
            (DEFAULT_HOST.to_string(), Source::Default)
        };
        let file_port = match &file.port {
            Some(v) => {
                let n = v.get_ref().0;
                Some(u16::try_from(n).map_err(|_| {
                    file_error(
                        path,
                        text,
                        v.span(),
                        format!("key `port`: expected a port number from 0 to 65535, got {n}"),
                    )
                })?)
            }
            None => None,
        };
        let port = cli.port.or(env_port).or(file_port).unwrap_or(DEFAULT_PORT);
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "empty host (from {host_src}): expected a host name or IP address"
            )));
        }
        out.push(Sourced {
            value: BindSpec::Tcp {
                host: host.to_string(),
                port,
            },
            source: host_src,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["hyperfork"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    /// The error a TOML file with `body` gives.
    fn file_error_of(body: &str) -> String {
        let f = toml_file(body);
        Settings::resolve(&cli(&["--config", f.path().to_str().unwrap()]), &env(&[]))
            .unwrap_err()
            .to_string()
    }

    fn toml_file(body: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    #[test]
    fn the_example_file_is_valid_with_every_key_uncommented() {
        let example = include_str!("../../config/hyperfork.toml");
        let body: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.starts_with("[[jobs]]")
                    || l.split_once(" = ").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(body.contains("log_file = "), "{body}");
        assert!(body.contains("[[jobs]]"), "{body}");
        let f = toml_file(&body);
        let s = Settings::resolve(&cli(&["--config", f.path().to_str().unwrap()]), &env(&[]))
            .unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_eq!(s.jobs.len(), 1);
        assert!(s.log_file.is_some() && s.pid_file.is_some());
        assert!(
            body.contains("socket_mode = ") && body.contains("umask = "),
            "{body}"
        );
        assert_eq!(s.socket_mode, DEFAULT_SOCKET_MODE);
        assert!(s.umask.is_some());
    }

    #[test]
    fn socket_mode_and_umask_layer_and_default() {
        let s = Settings::resolve(&cli(&[]), &env(&[])).unwrap();
        assert_eq!((s.socket_mode, s.umask), (0o660, None));
        // Without a socket mode, the umask decides it.
        let s = Settings::resolve(&cli(&["--umask", "077"]), &env(&[])).unwrap();
        assert_eq!((s.socket_mode, s.umask), (0o600, Some(0o077)));
        let s = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_UMASK", "0o027")])).unwrap();
        assert_eq!((s.socket_mode, s.umask), (0o640, Some(0o027)));
        // An explicit socket mode wins over the umask, from any layer.
        let s = Settings::resolve(
            &cli(&["--umask", "077"]),
            &env(&[("HYPERFORK_SOCKET_MODE", "0666")]),
        )
        .unwrap();
        assert_eq!(s.socket_mode, 0o666);
        let f = toml_file("socket_mode = \"0600\"\numask = \"0002\"\n");
        let path = f.path().to_str().unwrap();
        let s = Settings::resolve(&cli(&["--config", path]), &env(&[])).unwrap();
        assert_eq!((s.socket_mode, s.umask), (0o600, Some(0o002)));
        let s = Settings::resolve(
            &cli(&["--config", path, "--socket-mode", "660"]),
            &env(&[("HYPERFORK_UMASK", "077")]),
        )
        .unwrap();
        assert_eq!((s.socket_mode, s.umask), (0o660, Some(0o077)));
        let e = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_SOCKET_MODE", "rw")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("HYPERFORK_SOCKET_MODE") && e.contains("\"rw\""),
            "{e}"
        );
    }

    #[test]
    fn a_toml_integer_mode_must_be_quoted() {
        let e = file_error_of("workers = 2\nsocket_mode = 660\n");
        assert!(
            e.contains(":2:")
                && e.contains("socket_mode")
                && e.contains("660")
                && e.contains("quote"),
            "{e}"
        );
        let e = file_error_of("umask = 0o027\n");
        assert!(
            e.contains(":1:") && e.contains("umask") && e.contains("quote"),
            "{e}"
        );
        let e = file_error_of("socket_mode = \"0999\"\n");
        assert!(e.contains(":1:") && e.contains("\"0999\""), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn health_and_limit_keys_layer_and_bad_values_name_their_line() {
        let f = toml_file(
            "timeout = 0\nmax_requests = 500\nmax_worker_memory = \"256MiB\"\nlimit_request_body = 1024\n",
        );
        let path = f.path().to_str().unwrap();
        let s =
            Settings::resolve(&cli(&["--config", path, "--max-requests", "7"]), &env(&[])).unwrap();
        assert_eq!(s.timeout, Duration::ZERO);
        assert_eq!(s.max_requests, 7);
        assert_eq!(s.max_worker_memory, 256 * 1024 * 1024);
        assert_eq!(s.limit_request_body, 1024);
        assert_eq!(s.limit_request_fields, 100);
        assert_eq!(s.timeout_request_header, Duration::from_secs(10));
        let e = file_error_of("workers = 2\nmax_worker_memory = \"lots\"\n");
        assert!(e.contains(":2:") && e.contains("max_worker_memory"), "{e}");
        let e = file_error_of("limit_request_header_size = 100\n");
        assert!(e.contains(":1:") && e.contains("at least 8.0 KiB"), "{e}");
    }

    #[test]
    fn cli_beats_env_beats_file() {
        let f = toml_file("workers = 2\nmax_workers = 3\n");
        let path = f.path().to_str().unwrap();
        let s = Settings::resolve(&cli(&["--config", path]), &env(&[])).unwrap();
        assert_eq!(s.workers.as_ref().unwrap().value, 2);
        assert_eq!(s.max_workers.value, 3);
        let s = Settings::resolve(
            &cli(&["--config", path]),
            &env(&[("WEB_CONCURRENCY", "5"), ("UVICORN_WORKERS", "4")]),
        )
        .unwrap();
        assert_eq!(s.workers.unwrap().source, Source::Env("UVICORN_WORKERS"));
        let s = Settings::resolve(
            &cli(&["--config", path, "--workers", "7"]),
            &env(&[("UVICORN_WORKERS", "4")]),
        )
        .unwrap();
        assert_eq!(s.workers.unwrap().value, 7);
    }

    #[test]
    fn empty_env_is_unset_and_bad_env_is_an_error() {
        let s = Settings::resolve(&cli(&[]), &env(&[("UVICORN_WORKERS", "")])).unwrap();
        assert!(s.workers.is_none());
        for bad in ["abc", "0", "-1"] {
            let e = Settings::resolve(&cli(&[]), &env(&[("UVICORN_WORKERS", bad)])).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("UVICORN_WORKERS") && msg.contains("positive integer"),
                "{msg}"
            );
        }
    }

    #[test]
    fn file_errors_name_file_line_and_key() {
        let e = file_error_of("port = 8001\n\nworkers = \"many\"\n");
        assert!(e.contains(":3:") && e.contains("workers"), "{e}");
        let e = file_error_of("bogus = 1\n");
        assert!(e.contains(":1:") && e.contains("bogus"), "{e}");
        let e = file_error_of("max_workers = 0\n");
        assert!(e.contains(":1:") && e.contains("max_workers"), "{e}");
    }

    #[test]
    fn binds_default_and_override() {
        let s = Settings::resolve(&cli(&[]), &env(&[])).unwrap();
        assert_eq!(
            s.binds[0].value,
            BindSpec::Tcp {
                host: "127.0.0.1".into(),
                port: 8000
            }
        );
        let s = Settings::resolve(
            &cli(&["--bind", "[::1]:9000", "--bind", "unix:/tmp/x.sock"]),
            &env(&[]),
        )
        .unwrap();
        assert_eq!(s.binds.len(), 2);
        assert!(Settings::resolve(&cli(&["--bind", "nonsense"]), &env(&[])).is_err());
    }

    #[test]
    fn debug_turns_on_debug_logs() {
        let s = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_DEBUG", "1")])).unwrap();
        assert!(s.debug.value);
        assert_eq!(s.log_level, LogLevel::Debug);
        assert!(Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_DEBUG", "maybe")])).is_err());
    }
}
