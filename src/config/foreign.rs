//! uvicorn's and gunicorn's options that have no setting here: the Python-only ones, rejected with a
//! one-line reason and what to do instead, and the few accepted because what they ask for is
//! already so (`--http2`: HTTP/2 is always on). None is ignored silently: a rejected one stops the
//! start (exit 2) from the command line, `GUNICORN_CMD_ARGS` or its `UVICORN_` variable; an accepted
//! one is listed by `hyperfork plan` and logged at start.
//!
//! Options hyperfork has under uvicorn's or gunicorn's name are aliases of the declared settings
//! (see [`super::settings`]), not entries here. `docs/migrating.md` lists both; a test checks it.

/// What a foreign option does here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// An error: the option has no meaning for a Rust server.
    Rejected,
    /// Accepted: what it asks for is how hyperfork always works.
    AlreadySo,
}

/// How the option is written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takes {
    /// A flag alone, e.g. `--factory`.
    Nothing,
    /// A flag with a value, e.g. `--loop uvloop`.
    Value,
}

/// A uvicorn or gunicorn option without a hyperfork setting.
#[derive(Debug)]
pub(crate) struct Foreign {
    /// Its spellings: long flags (`--loop`) and short ones (`-k`).
    pub flags: &'static [&'static str],
    /// Its environment variables (uvicorn's `UVICORN_` ones).
    pub env: &'static [&'static str],
    /// Whether it takes a value.
    pub takes: Takes,
    /// Rejected, or accepted as already so.
    pub effect: Effect,
    /// Why, and what to do instead: the end of the one-line message.
    pub why: &'static str,
}

use Effect::{AlreadySo, Rejected};
use Takes::{Nothing, Value};

const fn rejected(
    flags: &'static [&'static str],
    env: &'static [&'static str],
    takes: Takes,
    why: &'static str,
) -> Foreign {
    Foreign {
        flags,
        env,
        takes,
        effect: Rejected,
        why,
    }
}

const fn already(
    flags: &'static [&'static str],
    env: &'static [&'static str],
    takes: Takes,
    why: &'static str,
) -> Foreign {
    Foreign {
        flags,
        env,
        takes,
        effect: AlreadySo,
        why,
    }
}

/// Every foreign option. Each flag and variable appears once.
pub(crate) const FOREIGN: &[Foreign] = &[
    // uvicorn
    rejected(
        &[],
        &["UVICORN_APP"],
        Value,
        "hyperfork serves the app compiled into its binary (Server::app in a library app); there is no APP to import",
    ),
    rejected(
        &["--loop"],
        &["UVICORN_LOOP"],
        Value,
        "asyncio/uvloop are Python event loops; each hyperfork worker runs a tokio runtime (--threads N: 1 = current-thread, more = multi-thread)",
    ),
    rejected(
        &["--http"],
        &["UVICORN_HTTP"],
        Value,
        "h11/httptools are Python HTTP parsers; hyper parses HTTP/1.1 and HTTP/2; drop it",
    ),
    rejected(
        &["--ws"],
        &["UVICORN_WS"],
        Value,
        "WebSocket implementations are Python libraries; a Rust app upgrades the connection itself (e.g. axum's WebSocketUpgrade); drop it",
    ),
    rejected(
        &["--ws-max-size"],
        &["UVICORN_WS_MAX_SIZE"],
        Value,
        "WebSockets are the app's (e.g. axum's WebSocketUpgrade::max_message_size); set it there",
    ),
    rejected(
        &["--ws-max-queue"],
        &["UVICORN_WS_MAX_QUEUE"],
        Value,
        "WebSockets are the app's (e.g. axum's WebSocketUpgrade); set it there",
    ),
    rejected(
        &["--ws-ping-interval"],
        &["UVICORN_WS_PING_INTERVAL"],
        Value,
        "WebSockets are the app's: send pings from the app's socket task",
    ),
    rejected(
        &["--ws-ping-timeout"],
        &["UVICORN_WS_PING_TIMEOUT"],
        Value,
        "WebSockets are the app's: time out pings in the app's socket task",
    ),
    rejected(
        &["--ws-per-message-deflate"],
        &["UVICORN_WS_PER_MESSAGE_DEFLATE"],
        Value,
        "WebSockets are the app's (e.g. tokio-tungstenite's config); set it there",
    ),
    rejected(
        &["--lifespan"],
        &["UVICORN_LIFESPAN"],
        Value,
        "ASGI lifespan is Python; startup and shutdown are Server::state (after fork, per worker) and Server::on_stop",
    ),
    rejected(
        &["--interface"],
        &["UVICORN_INTERFACE"],
        Value,
        "ASGI/WSGI are Python interfaces; the app is a Rust hyper/tower service; drop it",
    ),
    rejected(
        &["--log-config"],
        &["UVICORN_LOG_CONFIG"],
        Value,
        "Python logging configuration; use --log-level, RUST_LOG (tracing directives), --log-file and --access-log-format",
    ),
    rejected(
        &["--root-path"],
        &["UVICORN_ROOT_PATH"],
        Value,
        "ASGI's root_path is handed to the app in its scope; a Rust app has none: nest its routes under the prefix (axum: Router::nest) or strip the prefix in the proxy",
    ),
    rejected(
        &["--app-dir"],
        &["UVICORN_APP_DIR"],
        Value,
        "it extends Python's import path; the app is compiled into the binary; drop it (--chdir changes the workers' directory)",
    ),
    rejected(
        &["--reset-contextvars"],
        &["UVICORN_RESET_CONTEXTVARS"],
        Nothing,
        "Python contextvars; each request is its own tokio task with nothing carried over; drop it",
    ),
    rejected(
        &["--factory"],
        &["UVICORN_FACTORY"],
        Nothing,
        "the app is always built by a factory, once per worker after fork (Server::app); drop it",
    ),
    already(
        &["--http2"],
        &["UVICORN_HTTP2"],
        Nothing,
        "HTTP/2 is always on (prior knowledge in cleartext, ALPN with TLS)",
    ),
    // gunicorn
    rejected(
        &["--worker-class", "-k"],
        &[],
        Value,
        "worker classes (sync, gthread, uvicorn.workers.UvicornWorker) are Python; every hyperfork worker is an async tokio runtime (--threads N for more threads)",
    ),
    rejected(
        &["--worker-connections"],
        &[],
        Value,
        "hyperfork does not cap connections per worker; --limit-concurrency caps the requests in progress (503 beyond)",
    ),
    rejected(
        &["--preload"],
        &[],
        Nothing,
        "the app is compiled into the binary, so its code is always loaded before the fork; per-worker setup runs after the fork in Server::state; drop it",
    ),
    rejected(
        &["--spew"],
        &[],
        Nothing,
        "a Python line tracer; use RUST_LOG=trace, perf or gdb",
    ),
    rejected(
        &["--print-config"],
        &[],
        Nothing,
        "use `hyperfork plan` (or `plan --json`): every resolved setting and where it came from",
    ),
    rejected(
        &["--reuse-port"],
        &[],
        Nothing,
        "the master binds each socket once and its workers share it; to start a second server on the same port use a binary upgrade (SIGUSR2) or systemd socket activation",
    ),
    rejected(
        &["--daemon", "-D"],
        &[],
        Nothing,
        "hyperfork stays in the foreground: run it under systemd (Type=notify, see docs/systemd.md) or another supervisor",
    ),
    rejected(
        &["--logger-class"],
        &[],
        Value,
        "a Python logger class; logs go through tracing (RUST_LOG, --log-level, --log-file)",
    ),
    rejected(
        &["--log-config-json"],
        &[],
        Value,
        "Python logging configuration; use --log-level, RUST_LOG, --log-file and --access-log-format",
    ),
    rejected(
        &["--log-syslog"],
        &[],
        Nothing,
        "no syslog client: log to stderr and let journald or syslog take it (StandardError=journal)",
    ),
    rejected(
        &["--log-syslog-to"],
        &[],
        Value,
        "no syslog client: log to stderr and let journald or syslog take it",
    ),
    rejected(
        &["--log-syslog-prefix"],
        &[],
        Value,
        "no syslog client: journald tags lines with the unit's SyslogIdentifier=",
    ),
    rejected(
        &["--log-syslog-facility"],
        &[],
        Value,
        "no syslog client: journald sets SyslogFacility= from the unit",
    ),
    rejected(
        &["--disable-redirect-access-to-syslog"],
        &[],
        Nothing,
        "no syslog client; access lines go where the other log lines go",
    ),
    rejected(
        &["--capture-output"],
        &[],
        Nothing,
        "the app's stdout and stderr are not redirected: log through tracing, or let systemd capture them",
    ),
    rejected(
        &["--statsd-host"],
        &[],
        Value,
        "no StatsD client: --metrics-bind ADDRESS serves Prometheus metrics",
    ),
    rejected(
        &["--dogstatsd-tags"],
        &[],
        Value,
        "no StatsD client: --metrics-bind ADDRESS serves Prometheus metrics",
    ),
    rejected(
        &["--statsd-prefix"],
        &[],
        Value,
        "no StatsD client: --metrics-bind ADDRESS serves Prometheus metrics",
    ),
    rejected(
        &["--pythonpath"],
        &[],
        Value,
        "Python's import path; the app is compiled into the binary; drop it",
    ),
    rejected(
        &["--paste", "--paster"],
        &[],
        Value,
        "PasteDeploy is Python; drop it",
    ),
    rejected(
        &["--paste-global"],
        &[],
        Value,
        "PasteDeploy is Python; drop it",
    ),
    rejected(
        &["--proxy-protocol"],
        &[],
        Value,
        "the PROXY protocol is not implemented; the client address comes from X-Forwarded-For sent by --forwarded-allow-ips peers",
    ),
    rejected(
        &["--proxy-allow-from"],
        &[],
        Value,
        "the PROXY protocol is not implemented; --forwarded-allow-ips names the proxies trusted for X-Forwarded-For",
    ),
    rejected(
        &["--protocol"],
        &[],
        Value,
        "hyperfork speaks HTTP only (no uwsgi protocol); drop it",
    ),
    rejected(
        &["--uwsgi-allow-from"],
        &[],
        Value,
        "hyperfork speaks HTTP only (no uwsgi protocol); drop it",
    ),
    rejected(
        &["--http-protocols"],
        &[],
        Value,
        "HTTP/1.1 and HTTP/2 are always both on; drop it",
    ),
    rejected(
        &["--http2-cleartext"],
        &[],
        Value,
        "cleartext HTTP/2 by prior knowledge is always on; the h2c Upgrade is not supported; drop it",
    ),
    rejected(
        &["--http2-max-concurrent-streams"],
        &[],
        Value,
        "fixed at 200 streams per connection",
    ),
    rejected(
        &["--http2-initial-window-size"],
        &[],
        Value,
        "hyper sizes HTTP/2 flow-control windows itself; not configurable",
    ),
    rejected(
        &["--http2-max-frame-size"],
        &[],
        Value,
        "hyper's HTTP/2 frame size is not configurable",
    ),
    rejected(
        &["--http2-max-header-list-size"],
        &[],
        Value,
        "not configurable; --limit-request-header-size bounds HTTP/1.1 headers",
    ),
    rejected(
        &["--permit-obsolete-folding"],
        &[],
        Nothing,
        "hyper's parser rejects obsolete line folding; not configurable",
    ),
    rejected(
        &["--strip-header-spaces"],
        &[],
        Nothing,
        "hyper's parser rejects a space before a header's colon; not configurable",
    ),
    rejected(
        &["--permit-unconventional-http-method"],
        &[],
        Nothing,
        "hyper accepts any token as a method; drop it",
    ),
    rejected(
        &["--permit-unconventional-http-version"],
        &[],
        Nothing,
        "hyper accepts HTTP/1.0, HTTP/1.1 and HTTP/2 only; not configurable",
    ),
    rejected(
        &["--casefold-http-method"],
        &[],
        Nothing,
        "methods are passed to the app as sent; normalise them in the app",
    ),
    rejected(
        &["--forwarder-headers"],
        &[],
        Value,
        "a WSGI environ setting; a Rust app reads any header itself",
    ),
    rejected(
        &["--header-map"],
        &[],
        Value,
        "a WSGI environ setting; a Rust app reads headers as sent",
    ),
    rejected(
        &["--asgi-loop"],
        &[],
        Value,
        "Python event loops; each worker runs a tokio runtime (--threads)",
    ),
    rejected(
        &["--asgi-lifespan"],
        &[],
        Value,
        "ASGI lifespan is Python; use Server::state and Server::on_stop",
    ),
    rejected(
        &["--asgi-disconnect-grace-period"],
        &[],
        Value,
        "ASGI is Python; a Rust handler's future is dropped when its client disconnects",
    ),
    rejected(
        &["--websocket-max-message-size"],
        &[],
        Value,
        "WebSockets are the app's (e.g. axum's WebSocketUpgrade::max_message_size)",
    ),
    rejected(
        &["--http-parser"],
        &[],
        Value,
        "Python HTTP parsers; hyper parses; drop it",
    ),
    rejected(
        &["--dirty-app"],
        &[],
        Value,
        "gunicorn's dirty worker pool is Python; run heavy work in tokio::task::spawn_blocking or a job",
    ),
    rejected(
        &["--dirty-workers"],
        &[],
        Value,
        "gunicorn's dirty worker pool is Python; drop it",
    ),
    rejected(
        &["--dirty-timeout"],
        &[],
        Value,
        "gunicorn's dirty worker pool is Python; drop it",
    ),
    rejected(
        &["--dirty-threads"],
        &[],
        Value,
        "gunicorn's dirty worker pool is Python; drop it",
    ),
    rejected(
        &["--dirty-graceful-timeout"],
        &[],
        Value,
        "gunicorn's dirty worker pool is Python; drop it",
    ),
    rejected(
        &["--control-socket-mode"],
        &[],
        Value,
        "the control socket's mode is always 0600 (the server's user and root; see docs/operations.md)",
    ),
    rejected(
        &["--no-control-socket"],
        &[],
        Nothing,
        "the control socket cannot be turned off; it accepts only the server's user and root",
    ),
    already(
        &["--no-sendfile"],
        &[],
        Nothing,
        "hyperfork never uses sendfile()",
    ),
    already(
        &["--worker-tmp-dir"],
        &[],
        Value,
        "the heartbeat is a message on a pipe, no file to place",
    ),
    already(
        &["--enable-stdio-inheritance", "-R"],
        &[],
        Nothing,
        "workers always inherit stdin, stdout and stderr",
    ),
    already(
        &["--enable-backlog-metric"],
        &[],
        Nothing,
        "the listen queue is always in /metrics (hyperfork_listen_queue, with --metrics-bind)",
    ),
];

/// The foreign option spelled `flag`.
pub(crate) fn by_flag(flag: &str) -> Option<&'static Foreign> {
    FOREIGN.iter().find(|f| f.flags.contains(&flag))
}

/// The one-line message for a foreign option given as `given` (a flag or a variable).
pub(crate) fn message(given: &str, f: &Foreign) -> String {
    match f.effect {
        Effect::Rejected => format!("{given} is not supported: {}", f.why),
        Effect::AlreadySo => format!("{given} has no effect: {}", f.why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/migrating.md names every foreign option and variable, and every uvicorn and gunicorn
    /// spelling of a setting.
    #[test]
    fn the_migration_guide_names_every_spelling() {
        let guide = include_str!("../../docs/migrating.md");
        let aliases = super::super::settings::ALL
            .iter()
            .flat_map(|d| d.about().aliases.iter().chain(d.about().env));
        for name in FOREIGN
            .iter()
            .flat_map(|f| f.flags.iter().chain(f.env))
            .chain(aliases)
            .filter(|n| !n.starts_with("HYPERFORK_") && **n != "--limit-request-field-size")
        {
            assert!(
                guide.contains(&format!("`{name}`")),
                "docs/migrating.md does not name `{name}`"
            );
        }
    }

    #[test]
    fn every_spelling_appears_once_and_is_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for f in FOREIGN {
            for name in f.flags.iter().chain(f.env) {
                assert!(seen.insert(*name), "{name} twice");
            }
            for flag in f.flags {
                let short = flag.len() == 2 && flag.starts_with('-');
                assert!(flag.starts_with("--") || short, "{flag}");
            }
            assert!(f.env.iter().all(|e| e.starts_with("UVICORN_")), "{f:?}");
            assert!(!f.why.is_empty() && !f.why.ends_with('.'), "{f:?}");
        }
    }
}
