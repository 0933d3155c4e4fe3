//! The control socket's protocol, shared by the master (which serves it) and `hyperfork ctl` (which
//! sends to it).
//!
//! A unix stream socket. The client writes one request: a JSON object on one line, at most
//! [`MAX_REQUEST`] bytes. The master answers with JSON lines: zero or more [`Reply::Progress`] (a
//! `--wait` command reports its steps), then exactly one [`Reply::Done`], then closes the connection.
//! A connection closed without a `Done` line is a failure (the master went away).

use serde::{Deserialize, Serialize};

/// The longest request line the master reads, newline included.
pub const MAX_REQUEST: usize = 4096;

/// A command to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// The pool, each worker, the listeners: answered with [`Status`] as the `Done`'s `data`.
    Status,
    /// Change the pool's size by `change` workers (positive adds, negative removes), exactly.
    Workers {
        /// Workers to add (positive) or remove (negative).
        change: i64,
    },
    /// Reload: re-read the configuration and replace every worker.
    Reload {
        /// Answer only once the reload completed or was aborted.
        wait: bool,
    },
    /// Binary upgrade: start a new master from the executable on disk and hand over to it.
    Upgrade {
        /// Answer only once the new master took over, or the upgrade failed.
        wait: bool,
    },
    /// Reopen the log file (log rotation), in the master and every worker.
    ReopenLogs,
    /// Shut down: gracefully (`SIGTERM`), or fast (`SIGINT`).
    Stop {
        /// Fast shutdown: in-flight requests get 2 seconds, not the graceful timeout.
        fast: bool,
    },
}

/// One line of the master's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// A step of a command still running.
    Progress {
        /// What happened, one line.
        message: String,
    },
    /// The command's result; the last line.
    Done {
        /// Whether the command succeeded.
        ok: bool,
        /// What happened (on failure: why), one line.
        message: String,
        /// The status, for [`Request::Status`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<Status>>,
    },
}

impl Reply {
    /// A successful result.
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply::Done {
            ok: true,
            message: message.into(),
            data: None,
        }
    }

    /// A failure, and why.
    pub fn failed(message: impl Into<String>) -> Reply {
        Reply::Done {
            ok: false,
            message: message.into(),
            data: None,
        }
    }

    /// The line to send: the JSON object and a newline.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"reply":"done","ok":false,"message":"{e}"}}"#));
        s.push('\n');
        s
    }
}

/// What `ctl status` shows: the master, its listeners and every worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The master's pid.
    pub master_pid: i32,
    /// hyperfork's version.
    pub version: String,
    /// The configuration generation (1 at start, +1 per reload).
    pub generation: u64,
    /// `starting`, `running`, `reloading`, `upgrading`, `stopping in Ns` (a shutdown delay: still
    /// serving, draining in N seconds) or `stopping`.
    pub phase: String,
    /// The pool's size: slots the master keeps filled.
    pub pool_size: usize,
    /// Seconds since the master started.
    pub uptime_seconds: f64,
    /// The pid of the worker holding the scheduler lease, if one does.
    pub scheduler_holder: Option<i32>,
    /// Every listening socket.
    pub listeners: Vec<ListenerStatus>,
    /// Every live worker process, by slot then pid: old and new ones of a slot during a reload.
    pub workers: Vec<WorkerStatus>,
    /// The pool's memory, measured now (absent from a master that does not report it).
    #[serde(default)]
    pub memory: Option<MemoryStatus>,
    /// Tuning advice from the last minute's figures, one line per rule that applies, or one
    /// `no advice: …` line with the figures looked at (empty from a master too young, or too old,
    /// to say).
    #[serde(default)]
    pub advice: Vec<String>,
}

/// The pool's memory, from `/proc/PID/smaps_rollup` of the master and every worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryStatus {
    /// What one more worker costs: the largest private memory (USS) among the ready workers, bytes.
    pub per_worker: u64,
    /// What the master and all its workers hold, shared pages counted once (their PSS), bytes.
    pub total: u64,
    /// The worker processes counted in `total`.
    pub processes: usize,
    /// The memory guard's last decision, when it reduced or warned about the count.
    pub guard: Option<String>,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// The address, as the log shows it (`127.0.0.1:8000`, `unix:/run/app.sock`).
    pub address: String,
    /// Connections waiting to be accepted now (TCP only).
    pub queued: Option<u32>,
    /// The queue's limit (TCP only).
    pub backlog: Option<u32>,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its slot.
    pub slot: usize,
    /// Its pid.
    pub pid: i32,
    /// `booting`, `ready`, `replaced` (serving until its replacement is ready) or `draining`.
    pub state: String,
    /// Seconds since it was forked.
    pub age_seconds: f64,
    /// The configuration generation it was forked with.
    pub generation: u64,
    /// Requests it answered.
    pub requests: u64,
    /// Requests in progress now.
    pub in_flight: u64,
    /// Connections open now.
    pub open_connections: u64,
    /// Resident memory, bytes (from `/proc`); `None` if unreadable.
    pub rss_bytes: Option<u64>,
    /// CPU time used (user + system), seconds.
    pub cpu_seconds: Option<f64>,
    /// CPU use since the previous status or scrape, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Seconds since its last heartbeat; `None` before its first.
    pub heartbeat_age_seconds: Option<f64>,
    /// Whether it holds the scheduler lease.
    pub scheduler: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_object_each() {
        let cases = [
            (Request::Status, r#"{"command":"status"}"#),
            (
                Request::Workers { change: -2 },
                r#"{"command":"workers","change":-2}"#,
            ),
            (
                Request::Reload { wait: true },
                r#"{"command":"reload","wait":true}"#,
            ),
            (
                Request::Upgrade { wait: false },
                r#"{"command":"upgrade","wait":false}"#,
            ),
            (Request::ReopenLogs, r#"{"command":"reopen-logs"}"#),
            (
                Request::Stop { fast: true },
                r#"{"command":"stop","fast":true}"#,
            ),
        ];
        for (req, text) in cases {
            assert_eq!(serde_json::to_string(&req).unwrap(), text);
            assert_eq!(serde_json::from_str::<Request>(text).unwrap(), req);
        }
    }

    #[test]
    fn replies_are_lines() {
        let line = Reply::failed("a reload is in progress").line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let back: Reply = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(back, Reply::failed("a reload is in progress"));
        let p = Reply::Progress {
            message: "x".into(),
        };
        assert_eq!(p.line(), "{\"reply\":\"progress\",\"message\":\"x\"}\n");
    }
}
