//! uvicorn's and gunicorn's options as their users type them: every accepted spelling (flag, and
//! `UVICORN_` variable where uvicorn reads one; `PORT`, `GUNICORN_CMD_ARGS`, `--env-file`) through
//! `hyperfork plan --json`, checking the resolved value and its source; every Python-only option
//! through the binary, checking its one-line message and exit status 2; and what only a running
//! server shows (response headers, `-e` and the env file seen by the workers).

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Runs hyperfork to completion (bounded) with `args` and extra environment.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(&hyperfork_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hyperfork");
    let pid = child.id() as i32;
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().expect("wait"));
    while !waiter.is_finished() {
        if started.elapsed() > Duration::from_secs(20) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("hyperfork {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().expect("waiter")
}

/// `hyperfork plan --json ARGS` with `env`, parsed.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = vec!["plan", "--json"];
    all.extend_from_slice(args);
    let out = run(&all, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{args:?} {env:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Where a resolved setting is checked: a setting's key, or the first listening address.
enum At {
    Setting(&'static str),
    Listen,
}

/// One accepted spelling: what is given, and the value and source `plan --json` must show.
struct Case {
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    at: At,
    value: Value,
    source: &'static str,
}

fn flag(
    args: &'static [&'static str],
    key: &'static str,
    value: Value,
    source: &'static str,
) -> Case {
    Case {
        args,
        env: &[],
        at: At::Setting(key),
        value,
        source,
    }
}

fn var(
    env: &'static [(&'static str, &'static str)],
    key: &'static str,
    value: Value,
    source: &'static str,
) -> Case {
    Case {
        args: &[],
        env,
        at: At::Setting(key),
        value,
        source,
    }
}

fn listen(
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    address: &'static str,
    source: &'static str,
) -> Case {
    Case {
        args,
        env,
        at: At::Listen,
        value: json!(address),
        source,
    }
}

fn check(cases: Vec<Case>) {
    for c in cases {
        let p = plan(c.args, c.env);
        let (value, source) = match c.at {
            At::Setting(key) => (&p["settings"][key]["value"], &p["settings"][key]["source"]),
            At::Listen => (&p["listen"][0]["address"], &p["listen"][0]["source"]),
        };
        assert_eq!(
            value, &c.value,
            "{:?} {:?}: {}",
            c.args, c.env, p["settings"]
        );
        assert_eq!(source, &json!(c.source), "{:?} {:?}", c.args, c.env);
    }
}

#[test]
fn every_uvicorn_option_with_a_meaning_here_under_its_name_and_variable() {
    check(vec![
        flag(&["--host", "0.0.0.0"], "host", json!("0.0.0.0"), "--host"),
        var(
            &[("UVICORN_HOST", "::1")],
            "host",
            json!("::1"),
            "env UVICORN_HOST",
        ),
        flag(&["--port", "9001"], "port", json!(9001), "--port"),
        var(
            &[("UVICORN_PORT", "18530")],
            "port",
            json!(18530),
            "env UVICORN_PORT",
        ),
        listen(&["--uds", "/tmp/u.sock"], &[], "unix:/tmp/u.sock", "--uds"),
        listen(
            &[],
            &[("UVICORN_UDS", "/tmp/v.sock")],
            "unix:/tmp/v.sock",
            "env UVICORN_UDS",
        ),
        listen(&["--fd", "3"], &[], "fd://3", "--fd"),
        listen(&[], &[("UVICORN_FD", "4")], "fd://4", "env UVICORN_FD"),
        flag(&["--workers", "3"], "workers", json!(3), "--workers"),
        var(
            &[("UVICORN_WORKERS", "4")],
            "workers",
            json!(4),
            "env UVICORN_WORKERS",
        ),
        var(
            &[("WEB_CONCURRENCY", "5")],
            "workers",
            json!(5),
            "env WEB_CONCURRENCY",
        ),
        flag(
            &["--log-level", "WARNING"],
            "log_level",
            json!("warning"),
            "--log-level",
        ),
        var(
            &[("UVICORN_LOG_LEVEL", "Trace")],
            "log_level",
            json!("trace"),
            "env UVICORN_LOG_LEVEL",
        ),
        flag(
            &["--no-access-log"],
            "access_log",
            json!(false),
            "--no-access-log",
        ),
        flag(
            &["--no-access-log", "--access-log"],
            "access_log",
            json!(true),
            "--access-log",
        ),
        var(
            &[("UVICORN_ACCESS_LOG", "false")],
            "access_log",
            json!(false),
            "env UVICORN_ACCESS_LOG",
        ),
        flag(&["--use-colors"], "use_colors", json!(true), "--use-colors"),
        flag(
            &["--no-use-colors"],
            "use_colors",
            json!(false),
            "--no-use-colors",
        ),
        var(
            &[("UVICORN_USE_COLORS", "0")],
            "use_colors",
            json!(false),
            "env UVICORN_USE_COLORS",
        ),
        flag(
            &["--no-proxy-headers"],
            "proxy_headers",
            json!(false),
            "--no-proxy-headers",
        ),
        var(
            &[("UVICORN_PROXY_HEADERS", "no")],
            "proxy_headers",
            json!(false),
            "env UVICORN_PROXY_HEADERS",
        ),
        flag(
            &["--server-header"],
            "server_header",
            json!(true),
            "--server-header",
        ),
        flag(
            &["--no-server-header"],
            "server_header",
            json!(false),
            "--no-server-header",
        ),
        var(
            &[("UVICORN_SERVER_HEADER", "true")],
            "server_header",
            json!(true),
            "env UVICORN_SERVER_HEADER",
        ),
        flag(
            &["--no-date-header"],
            "date_header",
            json!(false),
            "--no-date-header",
        ),
        var(
            &[("UVICORN_DATE_HEADER", "false")],
            "date_header",
            json!(false),
            "env UVICORN_DATE_HEADER",
        ),
        flag(
            &["--forwarded-allow-ips", "10.0.0.0/8,*"],
            "forwarded_allow_ips",
            json!("*,10.0.0.0/8"),
            "--forwarded-allow-ips",
        ),
        var(
            &[("UVICORN_FORWARDED_ALLOW_IPS", "10.1.2.3")],
            "forwarded_allow_ips",
            json!("10.1.2.3"),
            "env UVICORN_FORWARDED_ALLOW_IPS",
        ),
        var(
            &[("FORWARDED_ALLOW_IPS", "10.1.2.4")],
            "forwarded_allow_ips",
            json!("10.1.2.4"),
            "env FORWARDED_ALLOW_IPS",
        ),
        flag(
            &["--limit-concurrency", "1000"],
            "limit_concurrency",
            json!(1000),
            "--limit-concurrency",
        ),
        var(
            &[("UVICORN_LIMIT_CONCURRENCY", "7")],
            "limit_concurrency",
            json!(7),
            "env UVICORN_LIMIT_CONCURRENCY",
        ),
        flag(&["--backlog", "4096"], "backlog", json!(4096), "--backlog"),
        var(
            &[("UVICORN_BACKLOG", "128")],
            "backlog",
            json!(128),
            "env UVICORN_BACKLOG",
        ),
        flag(
            &["--limit-max-requests", "1000"],
            "max_requests",
            json!(1000),
            "--limit-max-requests",
        ),
        var(
            &[("UVICORN_LIMIT_MAX_REQUESTS", "9")],
            "max_requests",
            json!(9),
            "env UVICORN_LIMIT_MAX_REQUESTS",
        ),
        flag(
            &["--limit-max-requests-jitter", "50"],
            "max_requests_jitter",
            json!(50),
            "--limit-max-requests-jitter",
        ),
        var(
            &[("UVICORN_LIMIT_MAX_REQUESTS_JITTER", "8")],
            "max_requests_jitter",
            json!(8),
            "env UVICORN_LIMIT_MAX_REQUESTS_JITTER",
        ),
        flag(
            &["--timeout-keep-alive", "65"],
            "timeout_keep_alive",
            json!("1m 5s"),
            "--timeout-keep-alive",
        ),
        var(
            &[("UVICORN_TIMEOUT_KEEP_ALIVE", "30")],
            "timeout_keep_alive",
            json!("30s"),
            "env UVICORN_TIMEOUT_KEEP_ALIVE",
        ),
        flag(
            &["--timeout-graceful-shutdown", "12"],
            "graceful_timeout",
            json!("12s"),
            "--timeout-graceful-shutdown",
        ),
        var(
            &[("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "13")],
            "graceful_timeout",
            json!("13s"),
            "env UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN",
        ),
        flag(
            &["--timeout-worker-healthcheck", "5"],
            "timeout",
            json!("5s"),
            "--timeout-worker-healthcheck",
        ),
        var(
            &[("UVICORN_TIMEOUT_WORKER_HEALTHCHECK", "6")],
            "timeout",
            json!("6s"),
            "env UVICORN_TIMEOUT_WORKER_HEALTHCHECK",
        ),
        flag(
            &["--header", "X-A: 1", "--header", "x-b:2"],
            "headers",
            json!(["x-a: 1", "x-b: 2"]),
            "--header",
        ),
        var(
            &[("UVICORN_HEADERS", "X-A:1 X-B:2")],
            "headers",
            json!(["x-a: 1", "x-b: 2"]),
            "env UVICORN_HEADERS",
        ),
        flag(
            &["--h11-max-incomplete-event-size", "16384"],
            "limit_request_header_size",
            json!(16384),
            "--h11-max-incomplete-event-size",
        ),
        var(
            &[("UVICORN_H11_MAX_INCOMPLETE_EVENT_SIZE", "32768")],
            "limit_request_header_size",
            json!(32768),
            "env UVICORN_H11_MAX_INCOMPLETE_EVENT_SIZE",
        ),
    ]);
}

#[test]
fn every_gunicorn_setting_with_a_meaning_here_under_its_name() {
    check(vec![
        listen(&["-b", "0.0.0.0:9002"], &[], "0.0.0.0:9002", "-b"),
        listen(
            &["--bind", "unix:/tmp/g.sock"],
            &[],
            "unix:/tmp/g.sock",
            "--bind",
        ),
        listen(&["--bind", "0.0.0.0"], &[], "0.0.0.0:8000", "--bind"),
        listen(&["--bind", "fd://5"], &[], "fd://5", "--bind"),
        flag(&["-w", "2"], "workers", json!(2), "-w"),
        flag(&["-t", "60"], "timeout", json!("1m"), "-t"),
        flag(
            &["--timeout", "90"],
            "timeout",
            json!("1m 30s"),
            "--timeout",
        ),
        flag(&["-p", "/tmp/g.pid"], "pid", json!("/tmp/g.pid"), "-p"),
        flag(
            &["--pid", "/tmp/h.pid"],
            "pid",
            json!("/tmp/h.pid"),
            "--pid",
        ),
        flag(
            &["--keep-alive", "2"],
            "timeout_keep_alive",
            json!("2s"),
            "--keep-alive",
        ),
        flag(
            &["--error-logfile", "/tmp/e.log"],
            "log_file",
            json!("/tmp/e.log"),
            "--error-logfile",
        ),
        flag(
            &["--log-file", "-"],
            "log_file",
            json!("stderr"),
            "--log-file",
        ),
        flag(
            &["--log-level", "CRITICAL"],
            "log_level",
            json!("critical"),
            "--log-level",
        ),
        flag(
            &["--limit-request-line", "8192"],
            "limit_request_header_size",
            json!(8192),
            "--limit-request-line",
        ),
        flag(
            &["--limit-request-field_size", "16380"],
            "limit_request_header_size",
            json!(16380),
            "--limit-request-field_size",
        ),
        flag(
            &["--limit-request-fields", "50"],
            "limit_request_fields",
            json!(50),
            "--limit-request-fields",
        ),
        flag(
            &["--max-requests", "1000"],
            "max_requests",
            json!(1000),
            "--max-requests",
        ),
        flag(
            &["--max-requests-jitter", "50"],
            "max_requests_jitter",
            json!(50),
            "--max-requests-jitter",
        ),
        flag(
            &["--graceful-timeout", "20"],
            "graceful_timeout",
            json!("20s"),
            "--graceful-timeout",
        ),
        flag(&["--backlog", "512"], "backlog", json!(512), "--backlog"),
        flag(&["--threads", "4"], "threads", json!(4), "--threads"),
        flag(
            &["--access-logfile", "-", "--no-access-log"],
            "access_log",
            json!(false),
            "--no-access-log",
        ),
        flag(
            &["--access-logformat", "%(h)s %(s)s"],
            "access_log_format",
            json!("%(h)s %(s)s"),
            "--access-logformat",
        ),
        flag(&["--umask", "027"], "umask", json!("0027"), "--umask"),
        flag(&["-m", "077"], "umask", json!("0077"), "-m"),
        flag(&["--chdir", "/tmp"], "chdir", json!("/tmp"), "--chdir"),
        flag(
            &["-e", "A=1", "--env", "B=x y"],
            "env",
            json!(["A=1", "B=x y"]),
            "--env",
        ),
        flag(&["-n", "api"], "name", json!("api"), "-n"),
        flag(&["--name", "web"], "name", json!("web"), "--name"),
        flag(
            &["--forwarded-allow-ips", "*"],
            "forwarded_allow_ips",
            json!("*"),
            "--forwarded-allow-ips",
        ),
        flag(
            &["--control-socket", "/tmp/g.ctl"],
            "control_socket",
            json!("/tmp/g.ctl"),
            "--control-socket",
        ),
        // PORT: gunicorn's default bind, below every other layer.
        listen(&[], &[("PORT", "5000")], "0.0.0.0:5000", "env PORT"),
        listen(
            &["--port", "5001"],
            &[("PORT", "5000")],
            "127.0.0.1:5001",
            "--port",
        ),
        listen(
            &["--host", "127.0.0.1"],
            &[("PORT", "5000")],
            "127.0.0.1:5000",
            "--host",
        ),
        // GUNICORN_CMD_ARGS: shell words, below the command line, above the environment.
        var(
            &[("GUNICORN_CMD_ARGS", "--workers=3 --keep-alive 4")],
            "workers",
            json!(3),
            "GUNICORN_CMD_ARGS --workers",
        ),
        var(
            &[("GUNICORN_CMD_ARGS", "-w 3"), ("UVICORN_WORKERS", "5")],
            "workers",
            json!(3),
            "GUNICORN_CMD_ARGS -w",
        ),
        listen(
            &[],
            &[("GUNICORN_CMD_ARGS", "--bind '0.0.0.0:9003' -w 2")],
            "0.0.0.0:9003",
            "GUNICORN_CMD_ARGS --bind",
        ),
        Case {
            args: &["-w", "7"],
            env: &[("GUNICORN_CMD_ARGS", "-w 3")],
            at: At::Setting("workers"),
            value: json!(7),
            source: "-w",
        },
    ]);
}

#[test]
fn precedence_is_command_line_then_gunicorn_cmd_args_then_environment_then_toml_then_default() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("h.toml");
    std::fs::write(
        &toml,
        "workers = 9\ntimeout_keep_alive = 11\nbind = \"0.0.0.0:9100\"\n",
    )
    .unwrap();
    let t = toml.to_str().unwrap();
    let p = plan(&["-c", t], &[("UVICORN_TIMEOUT_KEEP_ALIVE", "12")]);
    assert_eq!(p["settings"]["workers"]["value"], 9);
    assert_eq!(
        p["settings"]["workers"]["source"],
        format!("{t} key `workers`")
    );
    assert_eq!(
        p["settings"]["timeout_keep_alive"]["source"],
        "env UVICORN_TIMEOUT_KEEP_ALIVE"
    );
    assert_eq!(p["listen"][0]["address"], "0.0.0.0:9100");
    let p = plan(
        &["-c", t],
        &[("GUNICORN_CMD_ARGS", "-w 2"), ("UVICORN_WORKERS", "3")],
    );
    assert_eq!(p["settings"]["workers"]["value"], 2);
    let p = plan(&["-c", t, "-w", "1"], &[("GUNICORN_CMD_ARGS", "-w 2")]);
    assert_eq!(p["settings"]["workers"]["value"], 1);
    // The TOML file's bind (a string here) wins over PORT.
    let p = plan(&["-c", t], &[("PORT", "5000")]);
    assert_eq!(p["listen"][0]["address"], "0.0.0.0:9100");
    // Defaults say so.
    let p = plan(&[], &[]);
    assert_eq!(
        p["settings"]["backlog"],
        json!({"value": 2048, "source": "default"})
    );
    assert_eq!(
        p["listen"][0],
        json!({"address": "127.0.0.1:8000", "source": "default"})
    );
}

#[test]
fn env_file_feeds_settings_the_environment_wins_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join(".env");
    // As the seeds keep it: a comment after the value, an empty one meaning "computed".
    std::fs::write(
        &env_file,
        "# .env file\nUVICORN_WORKERS=4  # Use exactly 4 workers\nUVICORN_PORT=18530\nUVICORN_LOG_LEVEL=warning\nUVICORN_TIMEOUT_KEEP_ALIVE=\n",
    )
    .unwrap();
    let f = env_file.to_str().unwrap();
    let p = plan(&["--env-file", f], &[]);
    assert_eq!(p["settings"]["workers"]["value"], 4);
    assert_eq!(
        p["settings"]["workers"]["source"],
        format!("env UVICORN_WORKERS from {f}:2")
    );
    assert_eq!(p["settings"]["port"]["value"], 18530);
    assert_eq!(p["settings"]["log_level"]["value"], "warning");
    assert_eq!(p["settings"]["timeout_keep_alive"]["source"], "default");
    assert_eq!(
        p["settings"]["env_file"],
        json!({"value": f, "source": "--env-file"})
    );
    // UVICORN_ENV_FILE names it too; a variable already in the environment wins.
    let p = plan(&[], &[("UVICORN_ENV_FILE", f), ("UVICORN_WORKERS", "2")]);
    assert_eq!(p["settings"]["workers"]["value"], 2);
    assert_eq!(p["settings"]["workers"]["source"], "env UVICORN_WORKERS");
    assert_eq!(p["settings"]["port"]["value"], 18530);
    // -e wins over both.
    let p = plan(
        &["--env-file", f, "-e", "UVICORN_WORKERS=6"],
        &[("UVICORN_WORKERS", "2")],
    );
    assert_eq!(p["settings"]["workers"]["value"], 6);
    assert_eq!(
        p["settings"]["workers"]["source"],
        "env UVICORN_WORKERS from -e"
    );

    let out = run(&["--env-file", "/nonexistent/.env", "plan"], &[]);
    assert_one_line_error(&out, &["cannot read env file /nonexistent/.env"]);
    std::fs::write(&env_file, "A=1\nthis line is wrong\n").unwrap();
    let out = run(&["--env-file", f, "plan"], &[]);
    assert_one_line_error(&out, &[&format!("{f}:2:"), "this line is wrong"]);
}

/// Asserts exit status 2 and one line of stderr holding every needle.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {:?}", lines[0]);
    }
}

#[test]
fn every_python_only_option_is_rejected_with_a_reason() {
    // (what is given, what the line must say besides the option's name)
    let flags: &[(&[&str], &str)] = &[
        (&["--loop", "uvloop"], "tokio"),
        (&["--http", "httptools"], "hyper"),
        (&["--ws", "websockets"], "WebSocket"),
        (&["--ws-max-size", "100"], "WebSocket"),
        (&["--ws-max-queue", "3"], "WebSocket"),
        (&["--ws-ping-interval", "1.5"], "WebSocket"),
        (&["--ws-ping-timeout", "1.5"], "WebSocket"),
        (&["--ws-per-message-deflate", "true"], "WebSocket"),
        (&["--lifespan", "on"], "Server::state"),
        (&["--interface", "asgi3"], "Rust"),
        (&["--log-config", "log.yaml"], "RUST_LOG"),
        (&["--root-path", "/api"], "Router::nest"),
        (&["--app-dir", "src"], "compiled"),
        (&["--reset-contextvars"], "contextvars"),
        (&["--factory"], "factory"),
        (&["-k", "uvicorn.workers.UvicornWorker"], "tokio"),
        (&["--worker-class", "gthread"], "tokio"),
        (&["--worker-connections", "1000"], "--limit-concurrency"),
        (&["--preload"], "compiled"),
        (&["--spew"], "RUST_LOG"),
        (&["--print-config"], "hyperfork plan"),
        (&["--reuse-port"], "SIGUSR2"),
        (&["-D"], "systemd"),
        (&["--daemon"], "systemd"),
        (&["--logger-class", "x.Logger"], "tracing"),
        (&["--log-config-json", "l.json"], "RUST_LOG"),
        (&["--log-syslog"], "journald"),
        (&["--log-syslog-to", "udp://x:514"], "journald"),
        (&["--log-syslog-prefix", "x"], "journald"),
        (&["--log-syslog-facility", "user"], "journald"),
        (&["--disable-redirect-access-to-syslog"], "syslog"),
        (&["--capture-output"], "tracing"),
        (&["--statsd-host", "x:8125"], "--metrics-bind"),
        (&["--dogstatsd-tags", "a:b"], "--metrics-bind"),
        (&["--statsd-prefix", "x"], "--metrics-bind"),
        (&["--pythonpath", "src"], "compiled"),
        (&["--paste", "x.ini"], "PasteDeploy"),
        (&["--paster", "x.ini"], "PasteDeploy"),
        (&["--paste-global", "a=b"], "PasteDeploy"),
        (&["--proxy-protocol", "v1"], "X-Forwarded-For"),
        (&["--proxy-allow-from", "*"], "--forwarded-allow-ips"),
        (&["--protocol", "uwsgi"], "HTTP only"),
        (&["--uwsgi-allow-from", "*"], "HTTP only"),
        (&["--http-protocols", "h1"], "always"),
        (&["--http2-cleartext", "upgrade"], "prior knowledge"),
        (&["--http2-max-concurrent-streams", "10"], "200"),
        (&["--http2-initial-window-size", "65535"], "hyper"),
        (&["--http2-max-frame-size", "16384"], "hyper"),
        (
            &["--http2-max-header-list-size", "1"],
            "--limit-request-header-size",
        ),
        (&["--permit-obsolete-folding"], "hyper"),
        (&["--strip-header-spaces"], "hyper"),
        (&["--permit-unconventional-http-method"], "hyper"),
        (&["--permit-unconventional-http-version"], "hyper"),
        (&["--casefold-http-method"], "app"),
        (&["--forwarder-headers", "SCRIPT_NAME"], "WSGI"),
        (&["--header-map", "drop"], "WSGI"),
        (&["--asgi-loop", "uvloop"], "tokio"),
        (&["--asgi-lifespan", "on"], "Server::state"),
        (&["--asgi-disconnect-grace-period", "3"], "dropped"),
        (&["--websocket-max-message-size", "1"], "WebSocket"),
        (&["--http-parser", "fast"], "hyper"),
        (&["--dirty-app", "x:y"], "spawn_blocking"),
        (&["--dirty-workers", "2"], "dirty"),
        (&["--dirty-timeout", "2"], "dirty"),
        (&["--dirty-threads", "2"], "dirty"),
        (&["--dirty-graceful-timeout", "2"], "dirty"),
        (&["--control-socket-mode", "384"], "0600"),
        (&["--no-control-socket"], "cannot be turned off"),
    ];
    for (args, why) in flags {
        let mut line = args.to_vec();
        line.push("plan");
        let out = run(&line, &[]);
        assert_one_line_error(&out, &[&format!("{} is not supported: ", args[0]), why]);
        // After the subcommand, and in GUNICORN_CMD_ARGS, the same.
        let out = run(&[&["plan"][..], *args].concat(), &[]);
        assert_one_line_error(&out, &[args[0], why]);
        let out = run(&["plan"], &[("GUNICORN_CMD_ARGS", &args.join(" "))]);
        assert_one_line_error(
            &out,
            &[&format!("GUNICORN_CMD_ARGS {} is not supported", args[0])],
        );
    }
    let variables: &[(&str, &str, &str)] = &[
        ("UVICORN_APP", "apps.api.main:app", "compiled"),
        ("UVICORN_LOOP", "uvloop", "tokio"),
        ("UVICORN_HTTP", "h11", "hyper"),
        ("UVICORN_WS", "wsproto", "WebSocket"),
        ("UVICORN_WS_MAX_SIZE", "1", "WebSocket"),
        ("UVICORN_WS_MAX_QUEUE", "1", "WebSocket"),
        ("UVICORN_WS_PING_INTERVAL", "1", "WebSocket"),
        ("UVICORN_WS_PING_TIMEOUT", "1", "WebSocket"),
        ("UVICORN_WS_PER_MESSAGE_DEFLATE", "false", "WebSocket"),
        ("UVICORN_LIFESPAN", "off", "Server::state"),
        ("UVICORN_INTERFACE", "wsgi", "Rust"),
        ("UVICORN_LOG_CONFIG", "log.ini", "RUST_LOG"),
        ("UVICORN_ROOT_PATH", "/api", "Router::nest"),
        ("UVICORN_APP_DIR", "src", "compiled"),
        ("UVICORN_RESET_CONTEXTVARS", "true", "contextvars"),
        ("UVICORN_FACTORY", "true", "factory"),
    ];
    for (name, value, why) in variables {
        let out = run(&["plan"], &[(name, value)]);
        assert_one_line_error(&out, &[&format!("{name} is not supported: "), why]);
    }
    // A UVICORN_ variable nobody reads is not ignored either.
    let out = run(&["plan"], &[("UVICORN_WORKRES", "4")]);
    assert_one_line_error(&out, &["UVICORN_WORKRES", "UVICORN_WORKERS"]);
    // A gunicorn Python config file.
    let out = run(&["-c", "gunicorn.conf.py", "plan"], &[]);
    assert_one_line_error(&out, &["gunicorn.conf.py", "Python", "TOML"]);
    // A gunicorn access log file.
    let out = run(&["--access-logfile", "/var/log/access.log", "plan"], &[]);
    assert_one_line_error(&out, &["/var/log/access.log", "`-`"]);
}

#[test]
fn options_already_so_are_accepted_listed_and_logged() {
    let p = plan(
        &[
            "--http2",
            "--no-sendfile",
            "--worker-tmp-dir",
            "/dev/shm",
            "-R",
            "--enable-backlog-metric",
        ],
        &[("UVICORN_HTTP2", "true")],
    );
    let notes: Vec<&str> = p["no_effect"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "--http2",
        "--no-sendfile",
        "--worker-tmp-dir",
        "-R",
        "--enable-backlog-metric",
        "UVICORN_HTTP2",
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with(&format!("{name} has no effect: "))),
            "{name}: {notes:?}"
        );
    }
    let out = run(&["plan"], &[("UVICORN_HTTP2", "false")]);
    assert_one_line_error(&out, &["UVICORN_HTTP2=false", "cannot be turned off"]);
    let out = run(&["plan", "--http2"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("accepted:  --http2 has no effect"), "{text}");
}

#[test]
fn usage_errors_keep_clap_details_on_one_line() {
    let out = run(&["--wrokers", "2"], &[]);
    assert_one_line_error(&out, &["--wrokers", "tip:", "--workers"]);
    let out = run(&["--workers", "-1"], &[]);
    assert_one_line_error(&out, &["--workers", "-1", "positive integer"]);
    let out = run(&["-w", "-1"], &[]);
    assert_one_line_error(&out, &["-w", "-1"]);
    // gunicorn's line limit is hyper's whole-header limit, at least 8 KiB: named, not rounded.
    let out = run(&["--limit-request-line", "4094", "plan"], &[]);
    assert_one_line_error(
        &out,
        &["--limit-request-line", "at least 8.0 KiB", "together"],
    );
    let out = run(&["--log-level", "LOUD"], &[]);
    assert_one_line_error(
        &out,
        &["--log-level", "LOUD", "expected one of:", "warning"],
    );
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("h.toml");
    std::fs::write(&toml, "port = 8000\nmax_wrokers = 4\n").unwrap();
    let out = run(&["-c", toml.to_str().unwrap(), "plan"], &[]);
    assert_one_line_error(&out, &[":2:", "max_wrokers", "did you mean `max_workers`?"]);
    std::fs::write(&toml, "log_level = \"WARNING\"\n").unwrap();
    let p = plan(&["-c", toml.to_str().unwrap()], &[]);
    assert_eq!(p["settings"]["log_level"]["value"], "warning");
}

#[test]
fn check_config_exits_0_when_valid_and_2_with_the_error() {
    let out = run(&["--check-config", "--workers", "2"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let out = run(&["--check-config"], &[("UVICORN_WORKERS", "zero")]);
    assert_one_line_error(&out, &["UVICORN_WORKERS", "zero"]);
    let out = run(&["--check-config", "--chdir", "/nonexistent-dir"], &[]);
    assert_one_line_error(&out, &["--chdir", "/nonexistent-dir"]);
}

/// A file a job writes in worker 0, to read what the workers see.
fn jobs_toml(dir: &std::path::Path, out: &std::path::Path) -> std::path::PathBuf {
    let toml = dir.join("jobs.toml");
    let script = format!(
        "echo \"$FROM_FILE|$FROM_FLAG|$KEPT|$(pwd)\" > {}",
        out.display()
    );
    std::fs::write(
        &toml,
        format!(
            "[[jobs]]\nname = \"env\"\nevery = \"1s\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    )
    .unwrap();
    toml
}

#[test]
fn workers_see_the_env_file_and_e_and_run_in_chdir() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let toml = jobs_toml(dir.path(), &seen);
    let env_file = dir.path().join("app.env");
    std::fs::write(&env_file, "FROM_FILE=\"file value\"\nKEPT='from file'\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "-c",
            toml.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "FROM_FLAG=flag value",
            "--chdir",
            work.path().to_str().unwrap(),
        ],
        &[("KEPT", "from the environment")],
    );
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_to_string(&seen)
            .is_ok_and(|s| s.ends_with('\n'))),
        "{}",
        p.stderr()
    );
    let line = std::fs::read_to_string(&seen).unwrap();
    let want = format!(
        "file value|flag value|from the environment|{}\n",
        work.path().canonicalize().unwrap().display()
    );
    assert_eq!(line, want);
}

#[test]
fn response_headers_as_uvicorn_adds_them() {
    let p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "--header",
            "X-Frame-Options: DENY",
            "--header",
            "X-Worker: not the app's",
            "--server-header",
        ],
        &[],
    );
    let r = get(p.port, "/").unwrap();
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("server"), Some("hyperfork"));
    assert!(r.header("date").is_some());
    // The app's own header wins.
    assert_eq!(r.header("x-worker"), Some("0"));
    // hyperfork's own answers get them too.
    let r = get(p.port, "/missing").unwrap();
    assert_eq!((r.status, r.header("x-frame-options")), (404, Some("DENY")));
    drop(p);

    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--no-date-header"],
        &[],
    );
    let r = get(p.port, "/").unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("date").is_none() && r.header("server").is_none(),
        "{:?}",
        r.headers
    );
    drop(p);

    // The default: Date, no Server, nothing else added.
    let p = Proc::serve(&hyperfork_bin(), &["--workers", "1"], &[]);
    let r = get(p.port, "/").unwrap();
    assert!(r.header("date").is_some() && r.header("server").is_none());
}

#[test]
fn response_headers_over_http2() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is missing; skipped");
        return;
    }
    let p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "1", "--header", "X-A: 1", "--no-date-header"],
        &[],
    );
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--http2-prior-knowledge",
        ])
        .arg(format!("http://127.0.0.1:{}/", p.port))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("x-a: 1") && !head.contains("date:"), "{head}");
}

#[test]
fn gunicorn_port_and_cmd_args_serve() {
    let port = free_port();
    let mut cmd = command(&hyperfork_bin());
    cmd.env("PORT", port.to_string())
        .env("GUNICORN_CMD_ARGS", "-w 1 --keep-alive 2 --log-level DEBUG");
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    assert_eq!(get(port, "/").unwrap().status, 200);
    assert!(
        p.stderr().contains("listening on http://0.0.0.0:"),
        "{}",
        p.stderr()
    );
}

#[test]
fn a_reload_reads_the_env_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let toml = jobs_toml(dir.path(), &seen);
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, "FROM_FILE=one\nKEPT=kept\n").unwrap();
    let p = Proc::serve(
        &hyperfork_bin(),
        &[
            "--workers",
            "1",
            "-c",
            toml.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
        ],
        &[],
    );
    let read = || std::fs::read_to_string(&seen).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(20), || read().starts_with("one||kept|")),
        "{:?}\n{}",
        read(),
        p.stderr()
    );
    // A changed line takes effect, a removed one is gone.
    std::fs::write(&env_file, "FROM_FILE=two\n").unwrap();
    p.reload(1);
    assert!(
        wait_until(Duration::from_secs(20), || read().starts_with("two|||")),
        "{:?}\n{}",
        read(),
        p.stderr()
    );
}
