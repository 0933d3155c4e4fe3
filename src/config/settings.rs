//! Every setting, declared once: its flag, environment variables (the first set one wins), TOML key,
//! default, kind (its parser, see [`super::kinds`]) and help text (the doc comment). The command line,
//! `--help`, the TOML key check, the layering and the reference table in `docs/configuration.md` are
//! all generated from this list; its order is the order of `--help` and of the table.
//!
//! To add a setting, add one entry to `fields` (see [`super::declare::settings!`] for the forms) and
//! use the new `Settings` field where it matters; add the key, commented out, to
//! `config/hyperfork.toml` and regenerate the docs table. Tests check both.
//!
//! uvicorn's and gunicorn's names for a setting go in its entry: their flags in `aliases` (`"--keep-alive"`,
//! a short one as `"-b"`), their variables in `env` (uvicorn's `UVICORN_<OPTION>`, after
//! `HYPERFORK_<SETTING>`); `docs/migrating.md` must name each (a test checks). Their options that have no
//! setting here are entries of [`super::foreign`]. A switch gets its `--no-` flag by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::access::{AccessFormat, LogFormat, Trusted, TrustedIps};
use super::declare::settings;
use super::job_tables::jobs;
use super::jobs_store::{JobsStore, lease_at_least_a_second};
use super::kinds::{
    Addresses, Assignments, Backlog, Bytes, Choice, Delay, Globs, Mode, NameOrId, NonNegative,
    Path, Paths, Port, Positive, Seconds, Switch, Tables, TcpAddress, Text,
};
use super::layers::Sourced;
use super::response::Headers;
use super::rules::{Resolved, binds, fds, no_effect, resolved};
use super::tls::{CertReqs, ClientAuth, Password, Secret};
use super::values::{Accept, LogLevel, header_size_at_least_8kib, readiness_path};
use crate::jobs::Job;
use crate::jobs::store::StoreUrl;
use crate::shared::listener::BindSpec;
use hyper::header::{HeaderName, HeaderValue};

settings! {
    inputs {
        /// Host to listen on
        HOST: Text {
            flag: "--host",
            env: ["HYPERFORK_HOST", "UVICORN_HOST"],
            toml: "host",
            default: "127.0.0.1",
            value_name: "HOST",
        }

        /// TCP port to listen on; 0 lets the kernel pick a free port. Without a port, host or address
        /// anywhere else, PORT (as gunicorn reads it) gives 0.0.0.0:$PORT
        PORT: Port {
            flag: "--port",
            env: ["HYPERFORK_PORT", "UVICORN_PORT"],
            toml: "port",
            default: "8000",
            value_name: "PORT",
        }

        /// Address to listen on, repeatable: HOST:PORT, \[IPv6\]:PORT, unix:/path or fd://N (an
        /// inherited listening socket). Replaces --host and --port
        BIND: Addresses {
            flag: "--bind",
            aliases: ["-b"],
            env: ["HYPERFORK_BIND"],
            toml: "bind",
            value_name: "ADDRESS",
        }

        /// Unix socket to listen on, like --bind unix:PATH (uvicorn's)
        UDS: Path {
            flag: "--uds",
            env: ["UVICORN_UDS"],
            value_name: "PATH",
        }

        /// Listen on this inherited socket descriptor, like --bind fd://N (uvicorn's); it is never
        /// bound or removed by hyperfork
        FD: NonNegative {
            flag: "--fd",
            env: ["UVICORN_FD"],
            value_name: "N",
        }

        /// gunicorn's access log destination: `-` turns the access log on (it goes where the other log
        /// lines go); a file is not supported
        ACCESS_LOGFILE: Text {
            flag: "--access-logfile",
            value_name: "-",
        }

        /// Scheduled commands, one `[[jobs]]` table each, run in worker 0 (see config/hyperfork.toml)
        JOBS: Tables {
            toml: "jobs",
        }
    }

    fields {
        /// Listen backlog: connections the kernel queues before a worker accepts them
        pub backlog: u32 = BACKLOG: Backlog {
            flag: "--backlog",
            env: ["HYPERFORK_BACKLOG", "UVICORN_BACKLOG"],
            toml: "backlog",
            default: "2048",
            value_name: "N",
        }

        /// Mode of unix socket files, in octal: 660, 0660 or 0o660; when only --umask is given, 0666
        /// minus the umask
        pub socket_mode: u32 = SOCKET_MODE: Mode {
            flag: "--socket-mode",
            env: ["HYPERFORK_SOCKET_MODE"],
            toml: "socket_mode",
            default: "0660",
            value_name: "MODE",
        }

        /// The master's umask, in octal (e.g. 027): governs the pid file, the log file and, without
        /// --socket-mode, the socket mode
        pub umask: Option<u32> = UMASK: Mode {
            flag: "--umask",
            aliases: ["-m"],
            env: ["HYPERFORK_UMASK"],
            toml: "umask",
            unset: "inherited",
            value_name: "MASK",
        }

        /// Run the workers and their jobs as this user, a name or a numeric uid: the master binds
        /// and opens its files as root, then each worker switches right after its fork; needs root
        /// (see docs/operations.md)
        pub user: Option<Sourced<String>> = USER: NameOrId {
            flag: "--user",
            short: 'u',
            env: ["HYPERFORK_USER"],
            toml: "user",
            unset: "the master's user",
            value_name: "USER",
        }

        /// The workers' group, a name or a numeric gid; their supplementary groups are the user's
        pub group: Option<Sourced<String>> = GROUP: NameOrId {
            flag: "--group",
            short: 'g',
            env: ["HYPERFORK_GROUP"],
            toml: "group",
            unset: "the user's primary group",
            value_name: "GROUP",
        }

        /// Number of workers; overrides the computed size
        pub workers: Option<Sourced<usize>> = WORKERS: Positive {
            flag: "--workers",
            aliases: ["-w"],
            env: ["UVICORN_WORKERS", "WEB_CONCURRENCY", "HYPERFORK_WORKERS"],
            toml: "workers",
            unset: "2 × cores + 1, at most --max-workers",
            value_name: "N",
        }

        /// Upper bound of the computed worker count
        pub max_workers: Sourced<usize> = MAX_WORKERS: Positive {
            flag: "--max-workers",
            env: ["HYPERFORK_MAX_WORKERS"],
            toml: "max_workers",
            default: "8",
            value_name: "N",
        }

        /// Development mode: exactly one worker and debug logging
        pub debug: Sourced<bool> = DEBUG: Switch {
            flag: "--debug",
            env: ["HYPERFORK_DEBUG"],
            toml: "debug",
            default: "false",
        }

        /// Development: watch the executable, the config file and any --reload-dir; a new build is
        /// swapped in by a binary upgrade, another change by a reload. One worker unless a count is
        /// given
        pub reload: Sourced<bool> = RELOAD: Switch {
            flag: "--reload",
            env: ["UVICORN_RELOAD", "HYPERFORK_RELOAD"],
            toml: "reload",
            default: "false",
        }

        /// With --reload: a directory (watched recursively) whose files' changes reload the workers;
        /// repeatable, or separated by commas or spaces
        pub reload_dirs: Option<Vec<PathBuf>> = RELOAD_DIR: Paths {
            flag: "--reload-dir",
            env: ["UVICORN_RELOAD_DIRS", "HYPERFORK_RELOAD_DIRS"],
            toml: "reload_dirs",
            unset: "none",
            value_name: "DIR",
        }

        /// With --reload: only files matching one of these glob patterns count in the --reload-dir
        /// directories, e.g. '*.html'; an existing file or directory is watched as such; repeatable
        pub reload_includes: Option<Vec<String>> = RELOAD_INCLUDE: Globs {
            flag: "--reload-include",
            env: ["UVICORN_RELOAD_INCLUDES", "HYPERFORK_RELOAD_INCLUDES"],
            toml: "reload_includes",
            unset: "every file",
            value_name: "PATTERN",
        }

        /// With --reload: files and directories matching these glob patterns do not count, besides
        /// the defaults .* *~ #*# 4913 target (one also given to --reload-include is dropped);
        /// repeatable
        pub reload_excludes: Option<Vec<String>> = RELOAD_EXCLUDE: Globs {
            flag: "--reload-exclude",
            env: ["UVICORN_RELOAD_EXCLUDES", "HYPERFORK_RELOAD_EXCLUDES"],
            toml: "reload_excludes",
            unset: "the defaults only",
            value_name: "PATTERN",
        }

        /// With --reload: how long a changed file must stay unchanged before the swap, e.g. 0.25,
        /// 500ms
        pub reload_delay: Sourced<Duration> = RELOAD_DELAY: Delay {
            flag: "--reload-delay",
            env: ["UVICORN_RELOAD_DELAY", "HYPERFORK_RELOAD_DELAY"],
            toml: "reload_delay",
            default: "0.25",
            value_name: "SECONDS",
        }

        /// Runtime threads per worker: 1 = current-thread runtime, more = multi-thread runtime
        pub threads: usize = THREADS: Positive {
            flag: "--threads",
            env: ["HYPERFORK_THREADS"],
            toml: "threads",
            default: "1",
            value_name: "N",
        }

        /// How long SIGTERM waits for in-flight requests before killing workers, e.g. 30s, 2m, 500ms
        pub graceful_timeout: Duration = GRACEFUL_TIMEOUT: Seconds {
            flag: "--graceful-timeout",
            aliases: ["--timeout-graceful-shutdown"],
            env: ["HYPERFORK_GRACEFUL_TIMEOUT", "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"],
            toml: "graceful_timeout",
            default: "30s",
            value_name: "DURATION",
        }

        /// On SIGTERM, keep serving this long before the graceful shutdown starts, with the pool
        /// marked draining (--readiness-path answers 503), so that load balancers stop sending new
        /// connections first, e.g. 10s; a second SIGTERM starts the drain at once; 0: drain at once
        pub shutdown_delay: Duration = SHUTDOWN_DELAY: Seconds {
            flag: "--shutdown-delay",
            env: ["HYPERFORK_SHUTDOWN_DELAY"],
            toml: "shutdown_delay",
            default: "0s",
            value_name: "DURATION",
        }

        /// A path every worker answers itself, before the app: 200 while serving, 503 once the server
        /// is shutting down (during --shutdown-delay and the drain), for load balancers' readiness
        /// checks, e.g. /ready
        pub readiness_path: Option<String> = READINESS_PATH: Text {
            flag: "--readiness-path",
            env: ["HYPERFORK_READINESS_PATH"],
            toml: "readiness_path",
            unset: "off",
            value_name: "PATH",
            check: readiness_path,
        }

        /// Most extra workers a reload, recycle or SIGTTIN keeps alive beside the pool, draining ones
        /// included: a slot's new worker starts only when fewer than workers + N are alive
        pub max_surge: usize = MAX_SURGE: Positive {
            flag: "--max-surge",
            env: ["HYPERFORK_MAX_SURGE"],
            toml: "max_surge",
            default: "1",
            value_name: "N",
        }

        /// Log level, in any case; RUST_LOG, when set, takes precedence
        pub log_level: LogLevel = LOG_LEVEL: Choice<LogLevel> {
            flag: "--log-level",
            env: ["HYPERFORK_LOG_LEVEL", "UVICORN_LOG_LEVEL"],
            toml: "log_level",
            default: "info",
            value_name: "LEVEL",
        }

        /// How workers share new connections
        pub accept: Accept = ACCEPT: Choice<Accept> {
            flag: "--accept",
            env: ["HYPERFORK_ACCEPT"],
            toml: "accept",
            default: "packed",
            value_name: "STRATEGY",
        }

        /// Append logs to this file instead of stderr (`-`: stderr, as in gunicorn); SIGUSR1 reopens it
        pub log_file: Option<PathBuf> = LOG_FILE: Path {
            flag: "--log-file",
            aliases: ["--error-logfile"],
            env: ["HYPERFORK_LOG_FILE"],
            toml: "log_file",
            unset: "stderr",
            value_name: "FILE",
        }

        /// Log one line per request (INFO, target hyperfork::access); --no-access-log turns it off
        pub access_log: bool = ACCESS_LOG: Switch {
            flag: "--access-log",
            env: ["HYPERFORK_ACCESS_LOG", "UVICORN_ACCESS_LOG"],
            toml: "access_log",
            default: "true",
        }

        /// The access-log line, with gunicorn's atoms such as %(h)s %(r)s %(s)s %(b)s %(D)s
        /// %({header}i)s (see docs/operations.md)
        pub access_log_format: Option<Arc<AccessFormat>> = ACCESS_LOG_FORMAT: LogFormat {
            flag: "--access-log-format",
            aliases: ["--access-logformat"],
            env: ["HYPERFORK_ACCESS_LOG_FORMAT"],
            toml: "access_log_format",
            unset: "CLIENT - \"REQUEST LINE\" STATUS BYTES 0.4ms",
            value_name: "FORMAT",
        }

        /// Serve Prometheus metrics at http://ADDRESS/metrics from the master, e.g. 127.0.0.1:9100;
        /// never on the app's port
        pub metrics_bind: Option<std::net::SocketAddr> = METRICS_BIND: TcpAddress {
            flag: "--metrics-bind",
            env: ["HYPERFORK_METRICS_BIND"],
            toml: "metrics_bind",
            unset: "off",
            value_name: "ADDRESS",
        }

        /// Believe X-Forwarded-For and X-Forwarded-Proto from the --forwarded-allow-ips peers;
        /// --no-proxy-headers turns it off
        pub proxy_headers: bool = PROXY_HEADERS: Switch {
            flag: "--proxy-headers",
            env: ["HYPERFORK_PROXY_HEADERS", "UVICORN_PROXY_HEADERS"],
            toml: "proxy_headers",
            default: "true",
        }

        /// Peers trusted to send proxy headers: comma-separated IPs, CIDRs or *; unix-socket peers
        /// are always trusted
        pub forwarded_allow_ips: Trusted = FORWARDED_ALLOW_IPS: TrustedIps {
            flag: "--forwarded-allow-ips",
            env: ["HYPERFORK_FORWARDED_ALLOW_IPS", "UVICORN_FORWARDED_ALLOW_IPS", "FORWARDED_ALLOW_IPS"],
            toml: "forwarded_allow_ips",
            default: "127.0.0.1",
            value_name: "IPS",
        }

        /// Write the master's pid to this file (atomically), removed on exit
        pub pid_file: Option<PathBuf> = PID: Path {
            flag: "--pid",
            aliases: ["-p"],
            env: ["HYPERFORK_PID"],
            toml: "pid",
            unset: "no pid file",
            value_name: "FILE",
        }

        /// The unix socket `hyperfork ctl` talks to the master through (mode 0600: the server's user
        /// or root); see docs/operations.md
        pub control_socket: Option<PathBuf> = CONTROL_SOCKET: Path {
            flag: "--control-socket",
            env: ["HYPERFORK_CONTROL_SOCKET"],
            toml: "control_socket",
            unset: "$RUNTIME_DIRECTORY/hyperfork.ctl, else the pid file's path with .ctl, else in $XDG_RUNTIME_DIR or /tmp",
            value_name: "PATH",
        }

        /// Close keep-alive connections idle for this long, e.g. 5, 65s
        pub timeout_keep_alive: Duration = TIMEOUT_KEEP_ALIVE: Seconds {
            flag: "--timeout-keep-alive",
            aliases: ["--keep-alive"],
            env: ["HYPERFORK_TIMEOUT_KEEP_ALIVE", "UVICORN_TIMEOUT_KEEP_ALIVE"],
            toml: "timeout_keep_alive",
            default: "5s",
            value_name: "DURATION",
        }

        /// Most requests a worker serves at once; beyond it, 503 at once
        pub limit_concurrency: Option<usize> = LIMIT_CONCURRENCY: Positive {
            flag: "--limit-concurrency",
            env: ["HYPERFORK_LIMIT_CONCURRENCY", "UVICORN_LIMIT_CONCURRENCY"],
            toml: "limit_concurrency",
            unset: "no limit",
            value_name: "N",
        }

        /// Kill and replace a worker whose event loop is silent this long; 0 turns it off
        pub timeout: Duration = TIMEOUT: Seconds {
            flag: "--timeout",
            aliases: ["-t", "--timeout-worker-healthcheck"],
            env: ["HYPERFORK_TIMEOUT", "UVICORN_TIMEOUT_WORKER_HEALTHCHECK"],
            toml: "timeout",
            default: "30s",
            value_name: "DURATION",
        }

        /// Kill a worker not ready this long after its fork (its start hook and app factory), and
        /// count it as a boot failure; 0 turns it off
        pub boot_timeout: Duration = BOOT_TIMEOUT: Seconds {
            flag: "--boot-timeout",
            env: ["HYPERFORK_BOOT_TIMEOUT"],
            toml: "boot_timeout",
            default: "30s",
            value_name: "DURATION",
        }

        /// Replace a worker after it served this many requests; 0 turns it off
        pub max_requests: u64 = MAX_REQUESTS: NonNegative {
            flag: "--max-requests",
            aliases: ["--limit-max-requests"],
            env: ["HYPERFORK_MAX_REQUESTS", "UVICORN_LIMIT_MAX_REQUESTS"],
            toml: "max_requests",
            default: "0",
            value_name: "N",
        }

        /// Add a random 0..=J to each worker's --max-requests, so they do not all restart at once
        pub max_requests_jitter: u64 = MAX_REQUESTS_JITTER: NonNegative {
            flag: "--max-requests-jitter",
            aliases: ["--limit-max-requests-jitter"],
            env: ["HYPERFORK_MAX_REQUESTS_JITTER", "UVICORN_LIMIT_MAX_REQUESTS_JITTER"],
            toml: "max_requests_jitter",
            default: "0",
            value_name: "J",
        }

        /// Replace a worker whose resident memory exceeds this, e.g. 256MiB; 0 turns it off
        pub max_worker_memory: u64 = MAX_WORKER_MEMORY: Bytes {
            flag: "--max-worker-memory",
            env: ["HYPERFORK_MAX_WORKER_MEMORY"],
            toml: "max_worker_memory",
            default: "0",
            value_name: "SIZE",
        }

        /// Memory kept for what shares the host or cgroup with the pool (database, cache, system):
        /// a computed worker count stops where the pool would pass the cgroup memory limit minus this
        pub memory_reserve: u64 = MEMORY_RESERVE: Bytes {
            flag: "--memory-reserve",
            env: ["HYPERFORK_MEMORY_RESERVE"],
            toml: "memory_reserve",
            default: "64MiB",
            value_name: "SIZE",
        }

        /// Database connections each worker's pool opens at most (for `plan` and the start-up
        /// check against --db-max-connections)
        pub db_pool_per_worker: Option<Sourced<usize>> = DB_POOL_PER_WORKER: Positive {
            flag: "--db-pool-per-worker",
            env: ["HYPERFORK_DB_POOL_PER_WORKER"],
            toml: "db_pool_per_worker",
            unset: "not given",
            value_name: "N",
        }

        /// Database connections the whole pool shares, each worker taking Worker::share_of(N)
        /// (for `plan` and the start-up check against --db-max-connections)
        pub db_budget: Option<Sourced<usize>> = DB_BUDGET: Positive {
            flag: "--db-budget",
            env: ["HYPERFORK_DB_BUDGET"],
            toml: "db_budget",
            unset: "not given",
            value_name: "N",
        }

        /// The database's max_connections, to check the pool's connections against, reload surge
        /// included
        pub db_max_connections: Option<Sourced<usize>> = DB_MAX_CONNECTIONS: Positive {
            flag: "--db-max-connections",
            env: ["HYPERFORK_DB_MAX_CONNECTIONS"],
            toml: "db_max_connections",
            unset: "not checked",
            value_name: "N",
        }

        /// Close a connection whose request header is not complete this long after its first byte
        pub timeout_request_header: Duration = TIMEOUT_REQUEST_HEADER: Seconds {
            flag: "--timeout-request-header",
            env: ["HYPERFORK_TIMEOUT_REQUEST_HEADER"],
            toml: "timeout_request_header",
            default: "10s",
            value_name: "DURATION",
        }

        /// Answer 413 to a request whose declared body is larger, e.g. 10MiB; 0 turns it off
        pub limit_request_body: u64 = LIMIT_REQUEST_BODY: Bytes {
            flag: "--limit-request-body",
            env: ["HYPERFORK_LIMIT_REQUEST_BODY"],
            toml: "limit_request_body",
            default: "0",
            value_name: "SIZE",
        }

        /// Answer 431 to a request with more header fields
        pub limit_request_fields: usize = LIMIT_REQUEST_FIELDS: Positive {
            flag: "--limit-request-fields",
            env: ["HYPERFORK_LIMIT_REQUEST_FIELDS"],
            toml: "limit_request_fields",
            default: "100",
            value_name: "N",
        }

        /// Answer 431 to a request whose request line and headers together are larger, at least 8KiB
        /// (gunicorn's line and field limits and h11's incomplete-event size name this one limit)
        pub limit_request_header_size: u64 = LIMIT_REQUEST_HEADER_SIZE: Bytes {
            flag: "--limit-request-header-size",
            aliases: ["--limit-request-line", "--limit-request-field_size", "--limit-request-field-size", "--h11-max-incomplete-event-size"],
            env: ["HYPERFORK_LIMIT_REQUEST_HEADER_SIZE", "UVICORN_H11_MAX_INCOMPLETE_EVENT_SIZE"],
            toml: "limit_request_header_size",
            default: "64KiB",
            value_name: "SIZE",
            check: header_size_at_least_8kib,
        }

        /// Serve HTTPS on every listener with this PEM certificate chain (the server's certificate
        /// first, then its intermediates); SIGHUP reloads it (see docs/tls.md)
        pub ssl_certfile: Option<PathBuf> = SSL_CERTFILE: Path {
            flag: "--ssl-certfile",
            aliases: ["--certfile"],
            env: ["HYPERFORK_SSL_CERTFILE", "UVICORN_SSL_CERTFILE"],
            toml: "ssl_certfile",
            unset: "plain HTTP",
            value_name: "FILE",
        }

        /// The PEM private key of --ssl-certfile (PKCS#8, RSA or EC), read by the master before it
        /// forks
        pub ssl_keyfile: Option<PathBuf> = SSL_KEYFILE: Path {
            flag: "--ssl-keyfile",
            aliases: ["--keyfile"],
            env: ["HYPERFORK_SSL_KEYFILE", "UVICORN_SSL_KEYFILE"],
            toml: "ssl_keyfile",
            unset: "the key in --ssl-certfile",
            value_name: "FILE",
        }

        /// The password of an encrypted PKCS#8 --ssl-keyfile (`-----BEGIN ENCRYPTED PRIVATE
        /// KEY-----`)
        pub ssl_keyfile_password: Option<Password> = SSL_KEYFILE_PASSWORD: Secret {
            flag: "--ssl-keyfile-password",
            env: ["HYPERFORK_SSL_KEYFILE_PASSWORD", "UVICORN_SSL_KEYFILE_PASSWORD"],
            toml: "ssl_keyfile_password",
            unset: "an unencrypted key",
            value_name: "PASSWORD",
        }

        /// PEM CA certificates that client certificates must chain to (with --ssl-cert-reqs 1 or 2)
        pub ssl_ca_certs: Option<PathBuf> = SSL_CA_CERTS: Path {
            flag: "--ssl-ca-certs",
            aliases: ["--ca-certs"],
            env: ["HYPERFORK_SSL_CA_CERTS", "UVICORN_SSL_CA_CERTS"],
            toml: "ssl_ca_certs",
            unset: "none",
            value_name: "FILE",
        }

        /// Client certificates: 0 not asked for, 1 optional (verified when sent), 2 required
        pub ssl_cert_reqs: ClientAuth = SSL_CERT_REQS: CertReqs {
            flag: "--ssl-cert-reqs",
            aliases: ["--cert-reqs"],
            env: ["HYPERFORK_SSL_CERT_REQS", "UVICORN_SSL_CERT_REQS"],
            toml: "ssl_cert_reqs",
            default: "0",
            value_name: "0|1|2",
        }

        /// Add this header to every response the app's response lacks, NAME:VALUE, repeatable
        pub headers: Vec<(HeaderName, HeaderValue)> = HEADERS: Headers {
            flag: "--header",
            env: ["HYPERFORK_HEADERS", "UVICORN_HEADERS"],
            toml: "headers",
            default: "",
            value_name: "NAME:VALUE",
        }

        /// Add `Server: hyperfork` to responses without a Server header; --no-server-header: none
        pub server_header: bool = SERVER_HEADER: Switch {
            flag: "--server-header",
            env: ["HYPERFORK_SERVER_HEADER", "UVICORN_SERVER_HEADER"],
            toml: "server_header",
            default: "false",
        }

        /// Add a Date header to responses without one; --no-date-header: none
        pub date_header: bool = DATE_HEADER: Switch {
            flag: "--date-header",
            env: ["HYPERFORK_DATE_HEADER", "UVICORN_DATE_HEADER"],
            toml: "date_header",
            default: "true",
        }

        /// Colour log lines; --no-use-colors: never
        pub use_colors: Option<bool> = USE_COLORS: Switch {
            flag: "--use-colors",
            env: ["HYPERFORK_USE_COLORS", "UVICORN_USE_COLORS"],
            toml: "use_colors",
            unset: "when stderr is a terminal",
        }

        /// Claim every scheduled tick in this PostgreSQL database, postgres://USER:PASSWORD@HOST/DB,
        /// so that the hosts running this service run each tick once between them (see
        /// docs/jobs.md)
        pub jobs_store: Option<StoreUrl> = JOBS_STORE: JobsStore {
            flag: "--jobs-store",
            env: ["HYPERFORK_JOBS_STORE"],
            toml: "jobs_store",
            unset: "none: every host runs every tick",
            value_name: "URL",
        }

        /// With --jobs-store: how long a tick's claim stays its host's without a renewal (renewed at
        /// half of it while the run goes on); a run lost with its host holds the job this long
        pub jobs_lease: Duration = JOBS_LEASE: Seconds {
            flag: "--jobs-lease",
            env: ["HYPERFORK_JOBS_LEASE"],
            toml: "jobs_lease",
            default: "30s",
            value_name: "DURATION",
            check: lease_at_least_a_second,
        }

        /// With --jobs-store: how long claims are kept in the database; each job's latest stays
        pub jobs_retention: Duration = JOBS_RETENTION: Seconds {
            flag: "--jobs-retention",
            env: ["HYPERFORK_JOBS_RETENTION"],
            toml: "jobs_retention",
            default: "7days",
            value_name: "DURATION",
        }

        /// The base of the process titles (`NAME: master`, `NAME: worker 3`), gunicorn's proc_name
        pub name: Option<String> = NAME: Text {
            flag: "--name",
            aliases: ["-n"],
            env: ["HYPERFORK_NAME"],
            toml: "name",
            unset: "the executable's name",
            value_name: "NAME",
        }

        /// Workers change to this directory after the fork, before the app starts; the master stays
        /// (so relative paths in the settings keep their meaning)
        pub chdir: Option<PathBuf> = CHDIR: Path {
            flag: "--chdir",
            env: ["HYPERFORK_CHDIR"],
            toml: "chdir",
            unset: "the working directory",
            value_name: "DIR",
        }

        /// Load environment variables from this dotenv file before any setting is read; variables
        /// already in the environment win
        pub env_file: Option<PathBuf> = ENV_FILE: Path {
            flag: "--env-file",
            env: ["HYPERFORK_ENV_FILE", "UVICORN_ENV_FILE"],
            unset: "none",
            value_name: "FILE",
        }

        /// Set an environment variable, repeatable; it overrides the environment and the env file
        pub env_vars: Vec<(String, String)> = ENV: Assignments {
            flag: "--env",
            aliases: ["-e"],
            default: "",
            value_name: "NAME=VALUE",
        }

        /// TOML configuration file
        pub config_file: Option<PathBuf> = CONFIG: Path {
            flag: "--config",
            aliases: ["-c"],
            env: ["HYPERFORK_CONFIG"],
            value_name: "FILE",
        }
    }

    computed {
        /// Addresses to listen on: `bind` (or `--uds`), else `host` and `port`; none with `--fd`.
        pub binds: Vec<Sourced<BindSpec>> = binds;

        /// Inherited listening sockets (`--fd N`, `--bind fd://N`).
        pub fds: Vec<Sourced<i32>> = fds;

        /// uvicorn's and gunicorn's options given that have no effect here, each with why.
        pub no_effect: Vec<String> = no_effect;

        /// Every declared setting's resolved value and where it came from, for `plan`.
        pub resolved: Vec<Resolved> = resolved;

        /// Command jobs from the file's `[[jobs]]` tables.
        pub jobs: Vec<Job> = jobs;
    }
}
