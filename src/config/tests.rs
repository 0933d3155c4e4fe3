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
    assert!(Settings::resolve(&cli(&["--bind", "nonsense"]), &env(&[])).is_err());
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
    assert_eq!(s.binds[0].source, Source::Default);
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
