//! The values settings take: the domain enums ([`Accept`], [`LogLevel`]) and the parsers that read a
//! value from text (a flag's value, an environment variable, a TOML string, a declared default).
//!
//! A parser's error says what was expected and repeats the text it got, e.g. `expected a positive
//! integer (1 or more), got "0"`; the caller adds where the text came from.

use std::time::Duration;

use clap::ValueEnum;

pub use crate::shared::listener::parse_mode;

/// The mode of a unix socket file when neither `socket_mode` nor `umask` is set: owner and group may
/// connect, others not (so a proxy in the socket's group can connect). The declaration of
/// `socket_mode` holds it as text; tests that bind sockets use this, and a test checks both agree.
#[cfg(test)]
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// The smallest request header size limit hyper accepts, in bytes.
pub const MIN_LIMIT_REQUEST_HEADER_SIZE: u64 = 8 * 1024;

/// How the workers share the listening socket's new connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accept {
    /// A worker with more open connections than its least loaded peer lets that peer accept first
    /// (waiting at most 5 ms).
    ///
    /// See [`crate::shared::balance`].
    Balanced,
    /// Every worker accepts as soon as it is woken: the kernel decides, and bursts pile up unevenly.
    Shared,
    /// New connections go to the first worker (in slot order) whose event loop keeps up, so idle
    /// workers stay asleep; a lagging worker sheds keep-alive connections to idle peers. Falls back
    /// to balanced when no earlier worker keeps up.
    ///
    /// See [`crate::shared::balance`].
    #[default]
    Packed,
}

/// Log levels, named as uvicorn names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only errors (uvicorn's `critical`).
    Critical,
    /// Errors.
    Error,
    /// Warnings and errors.
    Warning,
    /// The default.
    Info,
    /// Verbose; `--debug` selects it.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The `tracing` level filter this level stands for.
    pub fn as_filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Critical | LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warning => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

/// Parses a name of `E` (an [`Accept`] or a [`LogLevel`]), ignoring case and surrounding blanks.
pub fn parse_choice<E: ValueEnum>(s: &str) -> Result<E, String> {
    E::from_str(s.trim(), true).map_err(|_| {
        let names: Vec<String> = E::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value())
            .map(|p| p.get_name().to_string())
            .collect();
        format!("expected one of {}, got {s:?}", names.join(", "))
    })
}

/// Parses a strictly positive count.
pub fn positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 1 && n <= usize::MAX as i128 => Ok(n as usize),
        Ok(_) => Err(format!(
            "expected a positive integer (1 or more), got {s:?}"
        )),
        Err(_) => Err(format!("expected a positive integer, got {s:?}")),
    }
}

/// Parses a non-negative integer.
pub fn non_negative_u64(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a non-negative integer, got {s:?}"))
}

/// Parses a strictly positive `u32`.
pub fn positive_u32(s: &str) -> Result<u32, String> {
    let n = positive_usize(s)?;
    u32::try_from(n).map_err(|_| format!("expected an integer from 1 to {}, got {s:?}", u32::MAX))
}

/// Parses a TCP port number; 0 lets the kernel pick one.
pub fn parse_port(s: &str) -> Result<u16, String> {
    s.trim()
        .parse::<u16>()
        .map_err(|_| format!("expected a port number from 0 to 65535, got {s:?}"))
}

/// Parses a size: bytes (`1048576`) or a number with a unit (`64MiB`, `512KB`, `1.5GiB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("expected a size such as 1048576, 512KiB or 64MiB, got {s:?}"))
}

/// Parses a duration: a plain number of seconds (`30`) or a humantime string (`30s`, `1m 30s`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("expected a duration such as 30, 30s, 2m or 500ms, got {s:?}"))
}

/// Parses a delay: seconds as a decimal number (`0.25`, uvicorn's form) or a duration (`250ms`, `1s`).
pub fn parse_delay(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("expected a delay of 0 seconds or more, got {s:?}"));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("expected a delay such as 0.25, 1.5, 250ms or 2s, got {s:?}"))
}

/// Splits a list written in one environment variable: on commas and on whitespace (click, which
/// uvicorn uses, splits a repeatable option's variable on whitespace), empty items dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks a glob pattern (`*.html`, `templates/**/*.j2`, `[!.]*`).
pub fn check_glob(s: &str) -> Result<String, String> {
    glob::Pattern::new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("expected a glob pattern such as *.html, got {s:?}: {e}"))
}

/// Parses a boolean as written in the environment: `1`, `true`, `yes`, `on` or `0`, `false`, `no`,
/// `off`, ignoring case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected 1, 0, true or false, got {s:?}")),
    }
}

/// Checks a request header size limit: hyper needs at least [`MIN_LIMIT_REQUEST_HEADER_SIZE`].
pub fn header_size_at_least_8kib(n: &u64) -> Result<(), String> {
    if *n < MIN_LIMIT_REQUEST_HEADER_SIZE {
        return Err(format!(
            "expected a size of at least {}, got {n} bytes (hyper bounds the request line and the \
             headers together)",
            bytesize::ByteSize::b(MIN_LIMIT_REQUEST_HEADER_SIZE)
                .display()
                .iec()
        ));
    }
    Ok(())
}

/// Checks a `--readiness-path`: an absolute request path, matched as it is (no query, no spaces).
pub fn readiness_path(path: &String) -> Result<(), String> {
    let ok = path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#');
    if !ok {
        return Err(format!(
            "expected a request path starting with / (no query, no spaces), such as /ready, got \
             {path:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_counts() {
        assert_eq!(positive_usize("4"), Ok(4));
        assert!(positive_usize("0").is_err());
        assert!(positive_usize("-1").is_err());
        assert!(positive_usize("abc").is_err());
        assert!(positive_u32("5000000000").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn choices_ignore_case_and_name_the_accepted_ones() {
        assert_eq!(parse_choice::<LogLevel>(" Warning "), Ok(LogLevel::Warning));
        assert_eq!(parse_choice::<Accept>("SHARED"), Ok(Accept::Shared));
        let e = parse_choice::<Accept>("rr").unwrap_err();
        assert_eq!(e, "expected one of balanced, shared, packed, got \"rr\"");
    }

    #[test]
    fn booleans_and_ports() {
        assert_eq!(parse_bool("Yes"), Ok(true));
        assert_eq!(parse_bool("off"), Ok(false));
        assert!(parse_bool("maybe").unwrap_err().contains("\"maybe\""));
        assert_eq!(parse_port("0"), Ok(0));
        assert!(parse_port("65536").is_err());
    }

    #[test]
    fn header_size_floor() {
        assert!(header_size_at_least_8kib(&8192).is_ok());
        let e = header_size_at_least_8kib(&1024).unwrap_err();
        assert!(e.contains("at least 8.0 KiB"), "{e}");
    }

    #[test]
    fn readiness_paths_are_absolute_paths_without_a_query() {
        for ok in ["/", "/ready", "/-/ready", "/health/ready"] {
            assert_eq!(readiness_path(&ok.to_string()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ready",
            "/ready?full=1",
            "/re ady",
            "/ready#x",
            "http://h/ready",
        ] {
            let e = readiness_path(&bad.to_string()).unwrap_err();
            assert!(
                e.contains("starting with /") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
