//! The rules that tie settings together, applied after each declared setting is resolved on its own:
//! the listening addresses from `bind` (or `--uds`, `--fd`) or `host` and `port` (and gunicorn's
//! `PORT`), `--debug` turning on debug logs, the umask deciding the socket mode, `-` or an empty log
//! file meaning stderr, gunicorn's `--access-logfile -`; and the checks of uvicorn's and gunicorn's
//! options that have no setting here ([`super::foreign`]).

use super::foreign::{self, Effect, FOREIGN};
use super::layers::{Layer, Layers, Origin, Source, Sourced};
use super::settings::{
    ACCESS_LOG, ACCESS_LOGFILE, ALL, BIND, FD, HOST, LOG_LEVEL, PORT, SOCKET_MODE, Settings, UDS,
};
use super::values::{LogLevel, parse_bool, parse_port};
use crate::error::ConfigError;
use crate::shared::listener::BindSpec;

/// gunicorn's port variable: without any address, host or port set elsewhere, the server listens on
/// `0.0.0.0:$PORT`.
pub const PORT_VAR: &str = "PORT";

/// A resolved setting as `plan` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Resolved {
    /// The TOML key, or the flag without dashes.
    pub key: String,
    /// The value.
    pub value: serde_json::Value,
    /// Where it came from.
    pub source: String,
}

/// Addresses to bind, and inherited sockets (one of the two is empty).
type Listening = (Vec<Sourced<BindSpec>>, Vec<Sourced<i32>>);

/// The TCP and unix addresses to listen on (none when inherited sockets are given).
pub(crate) fn binds(layers: &Layers<'_>) -> Result<Vec<Sourced<BindSpec>>, ConfigError> {
    Ok(listen(layers)?.0)
}

/// The inherited sockets to listen on (`--fd N`, `--bind fd://N`).
pub(crate) fn fds(layers: &Layers<'_>) -> Result<Vec<Sourced<i32>>, ConfigError> {
    Ok(listen(layers)?.1)
}

/// Where to listen. Layer by layer, from the command line down: the first layer that gives
/// addresses (`bind`, `--uds`, `--fd`) decides, unless a layer above it gave a host or port; else one
/// TCP address from `host` and `port`, each through its own layers, with `PORT` below the TOML file.
fn listen(layers: &Layers<'_>) -> Result<Listening, ConfigError> {
    for layer in Layer::ALL {
        let mut given: Vec<Sourced<String>> = Vec::new();
        if let Some(b) = layers.value_at(layer, &BIND)? {
            if b.value.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{}: expected at least one address",
                    b.source
                )));
            }
            for v in b.value {
                given.push(Sourced {
                    value: v,
                    source: b.source.clone(),
                });
            }
        }
        if let Some(u) = layers.value_at(layer, &UDS)? {
            given.push(Sourced {
                value: format!("unix:{}", u.value.display()),
                source: u.source,
            });
        }
        if let Some(fd) = layers.value_at(layer, &FD)? {
            given.push(Sourced {
                value: format!("fd://{}", fd.value),
                source: fd.source,
            });
        }
        if !given.is_empty() {
            return split(given);
        }
        if layers.is_at(layer, &HOST) || layers.is_at(layer, &PORT) {
            break;
        }
    }
    let Some(mut host) = layers.get(&HOST)? else {
        return Err(ConfigError::Invalid("no host to listen on".into()));
    };
    let Some(mut port) = layers.get(&PORT)? else {
        return Err(ConfigError::Invalid("no port to listen on".into()));
    };
    if port.source == Source::Default {
        if let Some(text) = layers.env().get(PORT_VAR) {
            let source = env_source(layers, PORT_VAR);
            port = Sourced {
                value: parse_port(&text).map_err(|_| ConfigError::Env {
                    name: PORT_VAR,
                    value: text.clone(),
                    expected: "a port number from 0 to 65535",
                })?,
                source: source.clone(),
            };
            if host.source == Source::Default {
                host = Sourced {
                    value: "0.0.0.0".into(),
                    source,
                };
            }
        }
    }
    let name = host
        .value
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if name.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "empty host (from {}): expected a host name or IP address",
            host.source
        )));
    }
    let source = if host.source == Source::Default {
        port.source
    } else {
        host.source
    };
    Ok((
        vec![Sourced {
            value: BindSpec::Tcp {
                host: name.to_string(),
                port: port.value,
            },
            source,
        }],
        Vec::new(),
    ))
}

/// The source of a variable read directly (not through a declared setting).
fn env_source(layers: &Layers<'_>, name: &'static str) -> Source {
    match layers.env().origin(name) {
        Some(Origin::File { path, line }) => Source::EnvFile { name, path, line },
        Some(Origin::Flag) => Source::EnvFlag(name),
        None => Source::Env(name),
    }
}

/// Parses each address, naming where the list came from in errors: `fd://N` are inherited sockets,
/// which cannot be mixed with addresses to bind.
fn split(given: Vec<Sourced<String>>) -> Result<Listening, ConfigError> {
    let (mut binds, mut fds) = (Vec::new(), Vec::new());
    for g in given {
        if let Some(n) = g.value.trim().strip_prefix("fd://") {
            let fd =
                n.parse::<i32>()
                    .ok()
                    .filter(|fd| *fd >= 0)
                    .ok_or_else(|| ConfigError::Bind {
                        value: g.value.clone(),
                        source_name: g.source.to_string(),
                    })?;
            fds.push(Sourced {
                value: fd,
                source: g.source,
            });
            continue;
        }
        let spec = parse_bind(&g.value).ok_or_else(|| ConfigError::Bind {
            value: g.value.clone(),
            source_name: g.source.to_string(),
        })?;
        binds.push(Sourced {
            value: spec,
            source: g.source,
        });
    }
    if !fds.is_empty() && !binds.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "an inherited socket (--fd, fd://N from {}) cannot be combined with addresses to bind ({} from {})",
            fds[0].source, binds[0].value, binds[0].source
        )));
    }
    Ok((binds, fds))
}

/// An address as gunicorn reads it: `HOST:PORT`, `[IPv6]:PORT`, `unix:PATH`, or a `HOST` alone
/// (port 8000).
fn parse_bind(text: &str) -> Option<BindSpec> {
    if let Some(spec) = BindSpec::parse(text) {
        return Some(spec);
    }
    let t = text.trim();
    let host = t
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(t);
    let plain = !host.is_empty()
        && !t.starts_with("unix:")
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    plain.then(|| BindSpec::Tcp {
        host: host.to_string(),
        port: 8000,
    })
}

/// uvicorn's and gunicorn's options given that have no setting here: an error for a rejected one
/// (and for an unknown `UVICORN_` variable), else what each accepted one is, for `plan` and the log.
pub(crate) fn no_effect(layers: &Layers<'_>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    let given = layers.cli().foreign().iter().map(|f| f.to_string()).chain(
        (layers.cmd_args().into_iter())
            .flat_map(|c| c.foreign().iter().map(|f| format!("GUNICORN_CMD_ARGS {f}"))),
    );
    for spelled in given {
        let flag = spelled.rsplit(' ').next().unwrap_or(&spelled);
        let Some(f) = foreign::by_flag(flag) else {
            continue;
        };
        let message = foreign::message(&spelled, f);
        match f.effect {
            Effect::Rejected => return Err(ConfigError::Invalid(message)),
            Effect::AlreadySo => out.push(message),
        }
    }
    let env = layers.env();
    for f in FOREIGN {
        for name in f.env {
            let Some(value) = env.get(name) else {
                continue;
            };
            match f.effect {
                Effect::Rejected => {
                    return Err(ConfigError::Invalid(foreign::message(name, f)));
                }
                Effect::AlreadySo if parse_bool(&value) == Ok(false) => {
                    return Err(ConfigError::Invalid(format!(
                        "{name}={value}: it cannot be turned off: {}",
                        f.why
                    )));
                }
                Effect::AlreadySo => out.push(foreign::message(name, f)),
            }
        }
    }
    unknown_uvicorn_variables(layers)?;
    Ok(out)
}

/// uvicorn reads every option from `UVICORN_<OPTION>`; one that is neither a setting's variable nor
/// a foreign option's would be ignored silently, so it is an error naming the nearest known one.
fn unknown_uvicorn_variables(layers: &Layers<'_>) -> Result<(), ConfigError> {
    let known: Vec<&str> = ALL
        .iter()
        .flat_map(|d| d.about().env.iter().copied())
        .chain(FOREIGN.iter().flat_map(|f| f.env.iter().copied()))
        .filter(|n| n.starts_with("UVICORN_"))
        .collect();
    let mut names = layers.env().names();
    names.sort();
    for name in names {
        if !name.starts_with("UVICORN_") || known.contains(&name.as_str()) {
            continue;
        }
        if layers.env().get(&name).is_none() {
            continue;
        }
        let nearest = super::file::nearest(&name, &known)
            .map(|n| format!("; did you mean {n}?"))
            .unwrap_or_default();
        return Err(ConfigError::Invalid(format!(
            "{name} is not a uvicorn option hyperfork knows (see docs/migrating.md){nearest}"
        )));
    }
    Ok(())
}

/// Every declared setting's value and source, in declaration order.
pub(crate) fn resolved(layers: &Layers<'_>) -> Result<Vec<Resolved>, ConfigError> {
    let mut out = Vec::new();
    for d in ALL {
        if let Some(v) = d.resolved(layers)? {
            out.push(Resolved {
                key: d.about().key(),
                value: v.value,
                source: v.source.to_string(),
            });
        }
    }
    Ok(out)
}

/// The rules between fields, once every field is resolved.
pub(crate) fn apply(settings: &mut Settings, layers: &Layers<'_>) -> Result<(), ConfigError> {
    // The pool's database connections are given one way: per worker or as a budget shared out.
    if let (Some(per), Some(budget)) = (&settings.db_pool_per_worker, &settings.db_budget) {
        return Err(ConfigError::Invalid(format!(
            "{} {} and {} {}: give one, the connections per worker or the budget the pool shares",
            per.source, per.value, budget.source, budget.value
        )));
    }
    // `--debug` (from any layer) means debug logs, unless `--log-level` is on the command line.
    if settings.debug.value && !layers.on_cli(&LOG_LEVEL) {
        settings.log_level = LogLevel::Debug;
        note(
            settings,
            "log_level",
            "debug".into(),
            &settings.debug.source.to_string(),
        );
    }
    // Like gunicorn: without an explicit socket mode, the umask decides it.
    if let (Some(mask), false) = (settings.umask, layers.is_set(&SOCKET_MODE)) {
        settings.socket_mode = 0o666 & !mask;
        let mode = format!("{:04o}", settings.socket_mode);
        note(settings, "socket_mode", mode.into(), "umask");
    }
    // An empty log file (possible only in the TOML file) or `-` (gunicorn's) means stderr.
    settings.log_file = settings
        .log_file
        .take()
        .filter(|p| !p.as_os_str().is_empty() && p.as_os_str() != "-");
    if settings.log_file.is_none() {
        if let Some(r) = settings.resolved.iter_mut().find(|r| r.key == "log_file") {
            r.value = "stderr".into();
        }
    }
    // gunicorn's `--access-logfile -` turns the access log on, unless a layer says otherwise.
    if let Some(dest) = layers.get(&ACCESS_LOGFILE)? {
        if dest.value.trim() != "-" {
            return Err(ConfigError::Invalid(format!(
                "{} {}: access lines go where the other log lines go (stderr, or --log-file); \
                 give `-`, or filter the target hyperfork::access",
                dest.source, dest.value
            )));
        }
        if !layers.is_set(&ACCESS_LOG) {
            settings.access_log = true;
            note(
                settings,
                "access_log",
                true.into(),
                &dest.source.to_string(),
            );
        }
    }
    Ok(())
}

/// Records a rule's change of a resolved value.
fn note(settings: &mut Settings, key: &str, value: serde_json::Value, source: &str) {
    if let Some(r) = settings.resolved.iter_mut().find(|r| r.key == key) {
        r.value = value;
        r.source = format!("{source} (rule)");
    }
}
