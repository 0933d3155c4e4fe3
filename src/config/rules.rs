//! The rules that tie settings together, applied after each declared setting is resolved on its own:
//! the listening addresses from `bind` or `host` and `port`, `--debug` turning on debug logs, the
//! umask deciding the socket mode, an empty log file meaning stderr.

use super::layers::{Layers, Sourced};
use super::settings::{BIND, HOST, LOG_LEVEL, PORT, SOCKET_MODE, Settings};
use super::values::LogLevel;
use crate::error::ConfigError;
use crate::shared::listener::BindSpec;

/// The addresses to listen on. `--bind` wins; then `HYPERFORK_BIND` unless `--host` or `--port` is
/// given; then the file's `bind` unless a host or port comes from the command line or the
/// environment; else one TCP address from `host` and `port`, each through its own layers.
pub(crate) fn binds(layers: &Layers<'_>) -> Result<Vec<Sourced<BindSpec>>, ConfigError> {
    if let Some(given) = layers.cli_value(&BIND)? {
        return parse_binds(given);
    }
    if !layers.on_cli(&HOST) && !layers.on_cli(&PORT) {
        if let Some(given) = layers.env_value(&BIND)? {
            return parse_binds(given);
        }
    }
    if !layers.on_cli_or_env(&HOST) && !layers.on_cli_or_env(&PORT) {
        if let Some(given) = layers.file_value(&BIND)? {
            if given.value.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "{}: key `bind`: expected at least one address",
                    layers
                        .file()
                        .map_or_else(String::new, |f| f.path().display().to_string())
                )));
            }
            return parse_binds(given);
        }
    }
    let Some(host) = layers.get(&HOST)? else {
        return Err(ConfigError::Invalid("no host to listen on".into()));
    };
    let Some(port) = layers.get(&PORT)? else {
        return Err(ConfigError::Invalid("no port to listen on".into()));
    };
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
    Ok(vec![Sourced {
        value: BindSpec::Tcp {
            host: name.to_string(),
            port: port.value,
        },
        source: host.source,
    }])
}

/// Parses each address, naming where the list came from in errors.
fn parse_binds(given: Sourced<Vec<String>>) -> Result<Vec<Sourced<BindSpec>>, ConfigError> {
    given
        .value
        .iter()
        .map(|v| {
            let spec = BindSpec::parse(v).ok_or_else(|| ConfigError::Bind {
                value: v.clone(),
                source_name: given.source.to_string(),
            })?;
            Ok(Sourced {
                value: spec,
                source: given.source.clone(),
            })
        })
        .collect()
}

/// The rules between fields, once every field is resolved.
pub(crate) fn apply(settings: &mut Settings, layers: &Layers<'_>) {
    // `--debug` (from any layer) means debug logs, unless `--log-level` is on the command line.
    if settings.debug.value && !layers.on_cli(&LOG_LEVEL) {
        settings.log_level = LogLevel::Debug;
    }
    // Like gunicorn: without an explicit socket mode, the umask decides it.
    if let (Some(mask), false) = (settings.umask, layers.is_set(&SOCKET_MODE)) {
        settings.socket_mode = 0o666 & !mask;
    }
    // An empty log file (possible only in the TOML file) means stderr.
    settings.log_file = settings
        .log_file
        .take()
        .filter(|p| !p.as_os_str().is_empty());
}
