//! The command line shared by the `hyperfork` binary and every binary built on the library.
//!
//! Every flag is optional here: defaults live in [`crate::config`], so that a flag that was not given
//! can fall back to the environment and then to the TOML file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

pub use super::values::{Accept, LogLevel};
use super::values::{
    non_negative_u64, parse_duration, parse_mode, parse_size, positive_u32, positive_usize,
};

/// Flags accepted by every hyperfork binary.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "hyperfork",
    version,
    about = "A pre-fork master for Rust HTTP services",
    long_about = "Binds the listening socket once, forks a pool of workers that share it, restarts any worker \
                  that dies into the same slot, and shuts down gracefully on SIGTERM."
)]
pub struct Cli {
    /// Host to listen on (env HYPERFORK_HOST) [default: 127.0.0.1]
    #[arg(long, global = true, value_name = "HOST")]
    pub host: Option<String>,

    /// TCP port to listen on (env HYPERFORK_PORT) [default: 8000]
    #[arg(long, global = true, value_name = "PORT")]
    pub port: Option<u16>,

    /// Address to listen on, repeatable: HOST:PORT, [IPv6]:PORT or unix:/path (env HYPERFORK_BIND,
    /// comma-separated). Replaces --host/--port.
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub bind: Vec<String>,

    /// Listen backlog: connections the kernel queues before a worker accepts them (env HYPERFORK_BACKLOG)
    /// [default: 2048]
    #[arg(long, global = true, value_name = "N", value_parser = positive_u32)]
    pub backlog: Option<u32>,

    /// Mode of unix socket files, in octal: 660, 0660 or 0o660 (env HYPERFORK_SOCKET_MODE)
    /// [default: 0660, or 0666 minus --umask when that is given]
    #[arg(long, global = true, value_name = "MODE", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,

    /// The master's umask, in octal (e.g. 027): governs the pid file, the log file and, without
    /// --socket-mode, the socket mode (env HYPERFORK_UMASK) [default: inherited]
    #[arg(long, global = true, value_name = "MASK", value_parser = parse_mode)]
    pub umask: Option<u32>,

    /// Number of workers; overrides the computed size (env UVICORN_WORKERS, WEB_CONCURRENCY)
    #[arg(long, short = 'w', global = true, value_name = "N", value_parser = positive_usize)]
    pub workers: Option<usize>,

    /// Upper bound of the computed worker count (env HYPERFORK_MAX_WORKERS) [default: 8]
    #[arg(long, global = true, value_name = "N", value_parser = positive_usize)]
    pub max_workers: Option<usize>,

    /// Development mode: exactly one worker and debug logging (env HYPERFORK_DEBUG)
    #[arg(long, global = true)]
    pub debug: bool,

    /// Runtime threads per worker: 1 = current-thread runtime, more = multi-thread runtime
    /// (env HYPERFORK_THREADS) [default: 1]
    #[arg(long, global = true, value_name = "N", value_parser = positive_usize)]
    pub threads: Option<usize>,

    /// How long SIGTERM waits for in-flight requests before killing workers, e.g. 30s, 2m, 500ms
    /// (env HYPERFORK_GRACEFUL_TIMEOUT) [default: 30s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub graceful_timeout: Option<Duration>,

    /// Log level (env HYPERFORK_LOG_LEVEL; RUST_LOG, when set, takes precedence) [default: info]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,

    /// How workers share new connections (env HYPERFORK_ACCEPT) [default: balanced]
    #[arg(long, global = true, value_name = "STRATEGY")]
    pub accept: Option<Accept>,

    /// Append logs to this file instead of stderr; SIGUSR1 reopens it (env HYPERFORK_LOG_FILE)
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,

    /// Write the master's pid to this file (atomically), removed on exit (env HYPERFORK_PID)
    #[arg(long, global = true, value_name = "FILE")]
    pub pid: Option<PathBuf>,

    /// Close keep-alive connections idle for this long, e.g. 5, 65s (env HYPERFORK_TIMEOUT_KEEP_ALIVE)
    /// [default: 5s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout_keep_alive: Option<Duration>,

    /// Most requests a worker serves at once; beyond it, 503 at once (env HYPERFORK_LIMIT_CONCURRENCY)
    /// [default: no limit]
    #[arg(long, global = true, value_name = "N", value_parser = positive_usize)]
    pub limit_concurrency: Option<usize>,

    /// Kill and replace a worker whose event loop is silent this long; 0 turns it off
    /// (env HYPERFORK_TIMEOUT) [default: 30s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,

    /// Replace a worker after it served this many requests; 0 turns it off
    /// (env HYPERFORK_MAX_REQUESTS) [default: 0]
    #[arg(long, global = true, value_name = "N", value_parser = non_negative_u64)]
    pub max_requests: Option<u64>,

    /// Add a random 0..=J to each worker's --max-requests, so they do not all restart at once
    /// (env HYPERFORK_MAX_REQUESTS_JITTER) [default: 0]
    #[arg(long, global = true, value_name = "J", value_parser = non_negative_u64)]
    pub max_requests_jitter: Option<u64>,

    /// Replace a worker whose resident memory exceeds this, e.g. 256MiB; 0 turns it off
    /// (env HYPERFORK_MAX_WORKER_MEMORY) [default: 0]
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub max_worker_memory: Option<u64>,

    /// Close a connection whose request header is not complete this long after its first byte
    /// (env HYPERFORK_TIMEOUT_REQUEST_HEADER) [default: 10s]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout_request_header: Option<Duration>,

    /// Answer 413 to a request whose declared body is larger, e.g. 10MiB; 0 turns it off
    /// (env HYPERFORK_LIMIT_REQUEST_BODY) [default: 0]
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub limit_request_body: Option<u64>,

    /// Answer 431 to a request with more header fields (env HYPERFORK_LIMIT_REQUEST_FIELDS)
    /// [default: 100]
    #[arg(long, global = true, value_name = "N", value_parser = positive_usize)]
    pub limit_request_fields: Option<usize>,

    /// Answer 431 to a request whose request line and headers are larger, at least 8KiB
    /// (env HYPERFORK_LIMIT_REQUEST_HEADER_SIZE) [default: 64KiB]
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub limit_request_header_size: Option<u64>,

    /// TOML configuration file (env HYPERFORK_CONFIG)
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do; without a subcommand the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Print the worker-count decision, every input it used, and exit.
    Plan {
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal() {
        let cli =
            Cli::try_parse_from(["hyperfork", "--socket-mode", "0o600", "--umask", "027"]).unwrap();
        assert_eq!((cli.socket_mode, cli.umask), (Some(0o600), Some(0o027)));
        let e = Cli::try_parse_from(["hyperfork", "--socket-mode", "9x9"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("9x9") && e.contains("--socket-mode"), "{e}");
    }

    #[test]
    fn every_flag_is_global_so_it_works_after_the_subcommand() {
        let cli = Cli::try_parse_from(["hyperfork", "plan", "--workers", "3", "--json"]).unwrap();
        assert_eq!(cli.workers, Some(3));
        assert!(matches!(cli.command, Some(Command::Plan { json: true })));
    }
}
