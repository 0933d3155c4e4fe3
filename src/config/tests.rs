//! Tests of the whole resolution: layers, precedence, rules and the TOML file's errors.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::*;
use crate::config::values::LogLevel;
use crate::shared::listener::BindSpec;

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
        // `db_budget` is the alternative to `db_pool_per_worker`: the two together are an error.
        .filter(|l| !l.starts_with("db_budget = "))
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
        e.contains(":2:") && e.contains("socket_mode") && e.contains("660") && e.contains("quote"),
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
    let s = Settings::resolve(&cli(&["--config", path, "--max-requests", "7"]), &env(&[])).unwrap();
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
    assert!(Settings::resolve(&cli(&["--bind", "nonsense:port"]), &env(&[])).is_err());
    // gunicorn's HOST alone: port 8000.
    let s = Settings::resolve(&cli(&["-b", "0.0.0.0"]), &env(&[])).unwrap();
    let want = BindSpec::Tcp {
        host: "0.0.0.0".into(),
        port: 8000,
    };
    assert_eq!(
        (s.binds[0].value.clone(), s.binds[0].source.clone()),
        (want, Source::Cli("-b"))
    );
}

#[test]
fn debug_turns_on_debug_logs() {
    let s = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_DEBUG", "1")])).unwrap();
    assert!(s.debug.value);
    assert_eq!(s.log_level, LogLevel::Debug);
    assert!(Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_DEBUG", "maybe")])).is_err());
}

#[test]
fn env_names_are_tried_in_declared_order_and_every_layer_keeps_its_source() {
    let f = toml_file("workers = 2\ntimeout = 7\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(
        &cli(&["--config", path]),
        &env(&[("WEB_CONCURRENCY", "3"), ("HYPERFORK_WORKERS", "4")]),
    )
    .unwrap();
    assert_eq!(s.workers.unwrap().source, Source::Env("WEB_CONCURRENCY"));
    let s = Settings::resolve(
        &cli(&["--config", path]),
        &env(&[("HYPERFORK_WORKERS", "4")]),
    )
    .unwrap();
    assert_eq!(s.workers.unwrap().value, 4);
    let s = Settings::resolve(&cli(&["--config", path]), &env(&[])).unwrap();
    let source = s.workers.unwrap().source;
    assert_eq!(source.to_string(), format!("{path} key `workers`"));
    assert_eq!(s.timeout, Duration::from_secs(7));
    assert_eq!(s.config_file.as_deref(), Some(std::path::Path::new(path)));
}

#[test]
fn a_check_names_the_layer_that_failed_it() {
    let e = Settings::resolve(&cli(&["--limit-request-header-size", "1KiB"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--limit-request-header-size: expected a size of at least 8.0 KiB"),
        "{e}"
    );
    let e = Settings::resolve(
        &cli(&[]),
        &env(&[("HYPERFORK_LIMIT_REQUEST_HEADER_SIZE", "1KiB")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("HYPERFORK_LIMIT_REQUEST_HEADER_SIZE: expected a size"),
        "{e}"
    );
}

#[test]
fn debug_yields_to_a_log_level_on_the_command_line_only() {
    let s = Settings::resolve(&cli(&["--debug", "--log-level", "error"]), &env(&[])).unwrap();
    assert_eq!(s.log_level, LogLevel::Error);
    let s = Settings::resolve(
        &cli(&[]),
        &env(&[
            ("HYPERFORK_DEBUG", "true"),
            ("HYPERFORK_LOG_LEVEL", "error"),
        ]),
    )
    .unwrap();
    assert_eq!(s.log_level, LogLevel::Debug);
}

#[test]
fn bind_layers_defer_to_host_and_port_given_higher() {
    let s = Settings::resolve(
        &cli(&["--port", "1"]),
        &env(&[("HYPERFORK_BIND", "unix:/x")]),
    )
    .unwrap();
    // The host is the default: the port names where the address came from.
    assert_eq!(s.binds[0].source, Source::Cli("--port"));
    let s =
        Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_BIND", "1.2.3.4:5, unix:/x")])).unwrap();
    assert_eq!(s.binds.len(), 2);
    assert_eq!(s.binds[1].source, Source::Env("HYPERFORK_BIND"));
    let f = toml_file("bind = [\"unix:/y\"]\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(&cli(&["--config", path]), &env(&[("HYPERFORK_HOST", "h")])).unwrap();
    assert_eq!(
        s.binds[0].value,
        BindSpec::Tcp {
            host: "h".into(),
            port: 8000
        }
    );
    let e = file_error_of("bind = []\n");
    assert!(
        e.contains("key `bind`: expected at least one address"),
        "{e}"
    );
}

#[test]
fn an_empty_log_file_in_the_file_means_stderr() {
    let f = toml_file("log_file = \"\"\npid = \"/tmp/p\"\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(&cli(&["--config", path]), &env(&[])).unwrap();
    assert!(s.log_file.is_none());
    assert_eq!(s.pid_file.as_deref(), Some(std::path::Path::new("/tmp/p")));
}

#[test]
fn gunicorn_cmd_args_sit_between_the_command_line_and_the_environment() {
    let e = env(&[
        (
            "GUNICORN_CMD_ARGS",
            "--workers 3 -b '0.0.0.0:9001' --keep-alive 7",
        ),
        ("UVICORN_WORKERS", "5"),
        ("HYPERFORK_TIMEOUT_KEEP_ALIVE", "9"),
    ]);
    let s = Settings::resolve(&cli(&[]), &e).unwrap();
    let w = s.workers.unwrap();
    assert_eq!((w.value, w.source), (3, Source::CmdArgs("--workers")));
    assert_eq!(s.binds[0].source, Source::CmdArgs("-b"));
    assert_eq!(s.timeout_keep_alive, Duration::from_secs(7));
    let s = Settings::resolve(&cli(&["-w", "2"]), &e).unwrap();
    assert_eq!(s.workers.unwrap().source, Source::Cli("-w"));
    let bad = env(&[("GUNICORN_CMD_ARGS", "--workers 'unbalanced")]);
    let e = Settings::resolve(&cli(&[]), &bad).unwrap_err().to_string();
    assert!(e.starts_with("GUNICORN_CMD_ARGS: "), "{e}");
    let bad = env(&[("GUNICORN_CMD_ARGS", "--wrokers 2")]);
    let e = Settings::resolve(&cli(&[]), &bad).unwrap_err().to_string();
    assert!(
        e.contains("--wrokers") && e.contains("tip:") && e.contains("--workers"),
        "{e}"
    );
}

#[test]
fn port_is_gunicorns_last_resort_address() {
    let s = Settings::resolve(&cli(&[]), &env(&[("PORT", "5000")])).unwrap();
    let want = BindSpec::Tcp {
        host: "0.0.0.0".into(),
        port: 5000,
    };
    assert_eq!(
        (s.binds[0].value.clone(), s.binds[0].source.clone()),
        (want, Source::Env("PORT"))
    );
    // A host given keeps it; a port given anywhere wins over PORT.
    let s = Settings::resolve(&cli(&["--host", "127.0.0.1"]), &env(&[("PORT", "5000")])).unwrap();
    assert_eq!(s.binds[0].value.to_string(), "127.0.0.1:5000");
    let s = Settings::resolve(
        &cli(&[]),
        &env(&[("PORT", "5000"), ("UVICORN_PORT", "6000")]),
    )
    .unwrap();
    assert_eq!(s.binds[0].value.to_string(), "127.0.0.1:6000");
    let f = toml_file("bind = \"unix:/run/x.sock\"\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(&cli(&["-c", path]), &env(&[("PORT", "5000")])).unwrap();
    assert_eq!(s.binds[0].value.to_string(), "unix:/run/x.sock");
    let e = Settings::resolve(&cli(&[]), &env(&[("PORT", "http")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PORT") && e.contains("http"), "{e}");
}

#[test]
fn uds_and_fd_are_addresses() {
    let s = Settings::resolve(&cli(&["--uds", "/run/a.sock"]), &env(&[])).unwrap();
    assert_eq!(s.binds[0].value.to_string(), "unix:/run/a.sock");
    let s = Settings::resolve(&cli(&[]), &env(&[("UVICORN_FD", "3")])).unwrap();
    assert!(s.binds.is_empty());
    assert_eq!(
        (s.fds[0].value, s.fds[0].source.clone()),
        (3, Source::Env("UVICORN_FD"))
    );
    let e = Settings::resolve(&cli(&["--fd", "3", "--bind", "127.0.0.1:1"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be combined"), "{e}");
}

#[test]
fn foreign_options_are_rejected_or_noted_never_ignored() {
    let e = Settings::resolve(&cli(&["--loop", "uvloop"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--loop is not supported: ") && e.contains("tokio"),
        "{e}"
    );
    let e = Settings::resolve(&cli(&[]), &env(&[("UVICORN_LIFESPAN", "on")]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("UVICORN_LIFESPAN is not supported"), "{e}");
    let gc = env(&[("GUNICORN_CMD_ARGS", "-k uvicorn.workers.UvicornWorker")]);
    let e = Settings::resolve(&cli(&[]), &gc).unwrap_err().to_string();
    assert!(
        e.starts_with("GUNICORN_CMD_ARGS -k is not supported"),
        "{e}"
    );
    let s = Settings::resolve(
        &cli(&["--http2", "--worker-tmp-dir", "/dev/shm"]),
        &env(&[]),
    )
    .unwrap();
    assert_eq!(s.no_effect.len(), 2, "{:?}", s.no_effect);
    assert!(
        s.no_effect[0].starts_with("--http2 has no effect"),
        "{:?}",
        s.no_effect
    );
    let e = Settings::resolve(&cli(&[]), &env(&[("UVICORN_HTTP2", "false")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be turned off"), "{e}");
    let e = Settings::resolve(&cli(&[]), &env(&[("UVICORN_LOG_LEVL", "debug")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("UVICORN_LOG_LEVL") && e.contains("UVICORN_LOG_LEVEL"),
        "{e}"
    );
}

#[test]
fn uvicorn_variables_and_spellings_reach_their_settings() {
    let s = Settings::resolve(
        &cli(&[
            "--limit-max-requests",
            "100",
            "--timeout-graceful-shutdown",
            "12",
        ]),
        &env(&[
            ("UVICORN_LOG_LEVEL", "WARNING"),
            ("UVICORN_TIMEOUT_KEEP_ALIVE", "65"),
            ("UVICORN_HEADERS", "X-A:1 X-B:2"),
            ("UVICORN_SERVER_HEADER", "true"),
            ("UVICORN_DATE_HEADER", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(s.log_level, LogLevel::Warning);
    assert_eq!(s.timeout_keep_alive, Duration::from_secs(65));
    assert_eq!(
        (s.max_requests, s.graceful_timeout),
        (100, Duration::from_secs(12))
    );
    assert_eq!(s.headers.len(), 2);
    assert!(s.server_header && !s.date_header);
    let r = s.resolved.iter().find(|r| r.key == "log_level").unwrap();
    assert_eq!(
        (r.value.as_str(), r.source.as_str()),
        (Some("warning"), "env UVICORN_LOG_LEVEL")
    );
    let f = toml_file("log_level = \"ERROR\"\nbind = \"0.0.0.0:1\"\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(&cli(&["-c", path, "--log-level", "Critical"]), &env(&[])).unwrap();
    assert_eq!(s.log_level, LogLevel::Critical);
    assert_eq!(s.binds[0].value.to_string(), "0.0.0.0:1");
}

#[test]
fn a_python_config_file_is_named_as_such() {
    let e = Settings::resolve(&cli(&["-c", "gunicorn.conf.py"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gunicorn.conf.py") && e.contains("TOML"), "{e}");
}

#[test]
fn log_file_dash_is_stderr_and_access_logfile_dash_turns_the_access_log_on() {
    let s = Settings::resolve(&cli(&["--log-file", "-", "--no-access-log"]), &env(&[])).unwrap();
    assert!(s.log_file.is_none() && !s.access_log);
    let s = Settings::resolve(
        &cli(&["--error-logfile", "-", "--access-logfile", "-"]),
        &env(&[]),
    )
    .unwrap();
    assert!(s.log_file.is_none() && s.access_log);
    let e = Settings::resolve(&cli(&["--access-logfile", "/var/log/a.log"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/var/log/a.log") && e.contains("`-`"), "{e}");
}

#[test]
fn connections_per_worker_and_a_budget_are_one_or_the_other() {
    let e = Settings::resolve(
        &cli(&["--db-pool-per-worker", "10"]),
        &env(&[("HYPERFORK_DB_BUDGET", "50")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--db-pool-per-worker 10 and env HYPERFORK_DB_BUDGET 50: give one"),
        "{e}"
    );
    let s = Settings::resolve(&cli(&["--db-budget", "50"]), &env(&[])).unwrap();
    assert_eq!(s.db_budget.map(|b| b.value), Some(50));
    assert_eq!(s.memory_reserve, 64 * 1024 * 1024, "the default reserve");
    let e = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_MEMORY_RESERVE", "lots")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("HYPERFORK_MEMORY_RESERVE"), "{e}");
}

#[test]
fn shutdown_delay_and_readiness_path_layer_and_bad_values_are_named() {
    let s = Settings::resolve(&cli(&[]), &env(&[])).unwrap();
    assert_eq!(s.shutdown_delay, Duration::ZERO, "no delay by default");
    assert_eq!(s.readiness_path, None, "no readiness path by default");

    let f = toml_file("shutdown_delay = 15\nreadiness_path = \"/-/ready\"\n");
    let path = f.path().to_str().unwrap();
    let s = Settings::resolve(&cli(&["--config", path]), &env(&[])).unwrap();
    assert_eq!(s.shutdown_delay, Duration::from_secs(15));
    assert_eq!(s.readiness_path.as_deref(), Some("/-/ready"));
    let s = Settings::resolve(
        &cli(&["--config", path]),
        &env(&[
            ("HYPERFORK_SHUTDOWN_DELAY", "500ms"),
            ("HYPERFORK_READINESS_PATH", "/ready"),
        ]),
    )
    .unwrap();
    assert_eq!(s.shutdown_delay, Duration::from_millis(500));
    assert_eq!(s.readiness_path.as_deref(), Some("/ready"));
    let s = Settings::resolve(
        &cli(&[
            "--shutdown-delay",
            "2m",
            "--readiness-path",
            "/healthz/ready",
        ]),
        &env(&[("HYPERFORK_SHUTDOWN_DELAY", "500ms")]),
    )
    .unwrap();
    assert_eq!(s.shutdown_delay, Duration::from_secs(120));
    assert_eq!(s.readiness_path.as_deref(), Some("/healthz/ready"));

    let e = Settings::resolve(&cli(&["--readiness-path", "ready"]), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--readiness-path: expected a request path starting with /"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    let e = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_READINESS_PATH", "/r?x=1")]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("HYPERFORK_READINESS_PATH: expected"), "{e}");
    let e = Settings::resolve(&cli(&[]), &env(&[("HYPERFORK_SHUTDOWN_DELAY", "soon")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("HYPERFORK_SHUTDOWN_DELAY") && e.contains("duration"),
        "{e}"
    );
    let e = file_error_of("workers = 1\nshutdown_delay = \"later\"\n");
    assert!(e.contains(":2:") && e.contains("shutdown_delay"), "{e}");
    let e = file_error_of("readiness_path = \"ready\"\n");
    assert!(e.contains(":1:") && e.contains("starting with /"), "{e}");
}
