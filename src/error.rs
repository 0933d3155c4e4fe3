//! Error types of the library.
//!
//! Every error a user or the operating system can cause is a variant here, with a message that names the
//! input and what was expected. The binary (and [`crate::Server::run`]) turns them into one line on stderr
//! and an exit code: [`ConfigError`] exits 2 (usage), [`StartError`] exits 1, a worker boot failure exits 3.

use std::io;
use std::path::PathBuf;

/// Exit status for a clean shutdown.
pub const EXIT_OK: u8 = 0;
/// Exit status for a runtime failure (a socket that cannot be bound, an OS call that fails).
pub const EXIT_RUNTIME: u8 = 1;
/// Exit status for a usage error (bad flag, environment variable or config file).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when every worker failed to boot; also a worker's own status when its app failed to
/// boot (gunicorn's and uvicorn's convention).
pub const EXIT_BOOT: u8 = 3;

/// A problem with the command line, an environment variable or the configuration file. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line could not be parsed (unknown flag, bad value).
    #[error("{0}")]
    Cli(String),
    /// An environment variable holds a value of the wrong form.
    #[error("invalid value {value:?} for environment variable {name}: expected {expected}")]
    Env {
        /// The variable's name, e.g. `UVICORN_WORKERS`.
        name: &'static str,
        /// The value found.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file named by `--config` or `HYPERFORK_CONFIG`.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The env file (`--env-file`) could not be read.
    #[error("cannot read env file {path}: {source}")]
    ReadEnvFile {
        /// The file named by `--env-file`, `HYPERFORK_ENV_FILE` or `UVICORN_ENV_FILE`.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The configuration file is not valid TOML or has a wrong key or type.
    #[error("{path}:{line}: {message}")]
    File {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending key.
        line: usize,
        /// What is wrong, naming the key and what was expected.
        message: String,
    },
    /// A `--bind` / `bind` value is not a recognised address.
    #[error(
        "invalid bind address {value:?} (from {source_name}): expected HOST:PORT, [IPv6]:PORT, HOST, unix:/path or fd://N"
    )]
    Bind {
        /// The value given.
        value: String,
        /// Where it came from, e.g. `--bind`.
        source_name: String,
    },
    /// Settings that cannot hold together.
    #[error("{0}")]
    Invalid(String),
}

/// Why the workers cannot run as the account `--user` and `--group` ask for. Exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// No user of that name in the user database.
    #[error(
        "unknown user {name:?} (from {from}): expected a user name or numeric uid from the user \
         database"
    )]
    UnknownUser {
        /// The name given.
        name: String,
        /// Where it came from, e.g. `--user`.
        from: String,
    },
    /// No group of that name in the group database.
    #[error(
        "unknown group {name:?} (from {from}): expected a group name or numeric gid from the group \
         database"
    )]
    UnknownGroup {
        /// The name given.
        name: String,
        /// Where it came from, e.g. `--group`.
        from: String,
    },
    /// A numeric uid without an entry in the user database, and no `--group`.
    #[error(
        "uid {uid} (from {from}) has no entry in the user database, so no primary group: give \
         --group too"
    )]
    NoPrimaryGroup {
        /// The uid given.
        uid: u32,
        /// Where it came from.
        from: String,
    },
    /// The user or group database could not be read.
    #[error("cannot look up {what} {name:?} (from {from}): {source}")]
    Lookup {
        /// `user`, `group`, or `the groups of user`.
        what: &'static str,
        /// The name or id.
        name: String,
        /// Where it came from.
        from: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another account was asked for, and this process is not root.
    #[error(
        "{what} {name:?} (from {from}): switching the workers to another {what} needs root; this \
         process runs as {current}: run it as root, or leave out the setting (under systemd, set \
         User= and Group= in the unit instead)"
    )]
    NotRoot {
        /// `user` or `group`.
        what: &'static str,
        /// The name given.
        name: String,
        /// Where it came from.
        from: String,
        /// The process's user, e.g. `uid 1000 (alice)`.
        current: String,
    },
}

/// A failure while the master sets itself up (before or while forking). Exit code 1.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A host name could not be resolved to an address.
    #[error("cannot resolve host {host:?}: {source}")]
    Resolve {
        /// The host as given.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// A listening socket could not be created, bound or put in listening state.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address as the user would write it.
        address: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The directory meant to hold a unix socket does not exist.
    #[error("cannot listen on unix:{path}: directory {dir} does not exist")]
    UnixDirMissing {
        /// The socket path.
        path: PathBuf,
        /// Its parent directory.
        dir: PathBuf,
    },
    /// A unix socket path is taken by a live server or by something that is not a socket.
    #[error("cannot listen on unix:{path}: {reason}")]
    UnixPathTaken {
        /// The socket path.
        path: PathBuf,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// The pid file could not be written.
    #[error("cannot write pid file {path}: {source}")]
    PidFile {
        /// The path given with `--pid`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The log file could not be opened for appending.
    #[error("cannot open the log file {path}: {source}")]
    LogFile {
        /// The path given with `--log-file`.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An operating-system call the master relies on failed (signal mask, signalfd, pipe, fork).
    #[error("{what} failed: {source}")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl StartError {
    /// Wraps an errno from a nix call.
    pub(crate) fn os(what: &'static str, errno: nix::errno::Errno) -> Self {
        StartError::Os {
            what,
            source: io::Error::from(errno),
        }
    }
}
