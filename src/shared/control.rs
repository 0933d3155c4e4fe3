//! The control pipe: workers tell the master they are ready, why they failed to boot, which scheduled
//! tick they start, and that they released the scheduler lease. A second, per-worker pipe carries the
//! master's orders the other way ([`Order`]: grant the scheduler lease); a worker that reads
//! end-of-file on it knows the master is gone.
//!
//! One control pipe is shared by all workers. Each message is one line shorter than `PIPE_BUF`, written with a
//! single `write`, so lines from different workers never interleave. Each line starts with the
//! sender's pid, which the master maps to a slot.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;

use crate::error::StartError;

/// Longest boot-error text sent; keeps every message far below `PIPE_BUF` (4096 on Linux).
const MAX_TEXT: usize = 1024;

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The worker is accepting connections.
    Ready {
        /// The worker's pid.
        pid: i32,
    },
    /// The worker's app failed to start; the worker exits with status 3.
    BootError {
        /// The worker's pid.
        pid: i32,
        /// The error, on one line.
        text: String,
    },
    /// The lease holder is starting the run of a scheduled tick.
    JobStart {
        /// The worker's pid.
        pid: i32,
        /// The tick, in milliseconds since the Unix epoch.
        tick_ms: i64,
        /// The job's name (one line, at most 200 bytes).
        job: String,
    },
    /// The lease holder finished a run of a job.
    JobEnd {
        /// The worker's pid.
        pid: i32,
        /// Whether the run succeeded.
        ok: bool,
        /// How long it took, milliseconds.
        duration_ms: u64,
        /// The job's name.
        job: String,
    },
    /// The lease holder did not run ticks of a job: skipped (see [`Skip`]), or run by another host.
    JobSkip {
        /// The worker's pid.
        pid: i32,
        /// Ticks skipped.
        count: u64,
        /// Why.
        why: Skip,
        /// The job's name.
        job: String,
    },
    /// The lease holder stopped scheduling and every run it started has ended.
    Released {
        /// The worker's pid.
        pid: i32,
    },
    /// Heartbeat: the worker's event loop is running.
    Alive {
        /// The worker's pid.
        pid: i32,
    },
    /// The worker reached its request limit and asks to be replaced.
    Recycle {
        /// The worker's pid.
        pid: i32,
        /// Requests it has served.
        served: u64,
    },
}

/// Why the lease holder did not run a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Missed beyond the misfire grace.
    Late,
    /// The previous run still going (on this host, or on another one with a job store).
    Overlap,
    /// The job store could not confirm the claim (unreachable, an error, no answer in time).
    Store,
    /// Another host claimed the tick (job store): run elsewhere, not skipped.
    Elsewhere,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::Late => "late",
            Skip::Overlap => "overlap",
            Skip::Store => "store",
            Skip::Elsewhere => "elsewhere",
        }
    }

    fn parse(s: &str) -> Option<Skip> {
        [Skip::Late, Skip::Overlap, Skip::Store, Skip::Elsewhere]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

impl Message {
    fn encode(&self) -> String {
        match self {
            Message::Ready { pid } => format!("{pid} ready\n"),
            Message::BootError { pid, text } => {
                let mut t: String = text.replace(['\n', '\r'], " ");
                if t.len() > MAX_TEXT {
                    let mut cut = MAX_TEXT;
                    while !t.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    t.truncate(cut);
                    t.push('…');
                }
                format!("{pid} boot-error {t}\n")
            }
            Message::JobStart { pid, tick_ms, job } => {
                format!(
                    "{pid} job-start {tick_ms} {}\n",
                    job.replace(['\n', '\r'], " ")
                )
            }
            Message::JobEnd {
                pid,
                ok,
                duration_ms,
                job,
            } => format!(
                "{pid} job-end {} {duration_ms} {}\n",
                if *ok { "ok" } else { "failed" },
                job.replace(['\n', '\r'], " ")
            ),
            Message::JobSkip {
                pid,
                count,
                why,
                job,
            } => {
                format!(
                    "{pid} job-skip {count} {} {}\n",
                    why.as_str(),
                    job.replace(['\n', '\r'], " ")
                )
            }
            Message::Released { pid } => format!("{pid} released\n"),
            Message::Alive { pid } => format!("{pid} alive\n"),
            Message::Recycle { pid, served } => format!("{pid} recycle {served}\n"),
        }
    }

    fn decode(line: &str) -> Option<Message> {
        let (pid, rest) = line.split_once(' ')?;
        let pid = pid.parse().ok()?;
        if rest == "ready" {
            Some(Message::Ready { pid })
        } else if rest == "released" {
            Some(Message::Released { pid })
        } else if rest == "alive" {
            Some(Message::Alive { pid })
        } else if let Some(n) = rest.strip_prefix("recycle ") {
            Some(Message::Recycle {
                pid,
                served: n.parse().ok()?,
            })
        } else if let Some(r) = rest.strip_prefix("job-end ") {
            let (ok, r) = r.split_once(' ')?;
            let (ms, job) = r.split_once(' ')?;
            Some(Message::JobEnd {
                pid,
                ok: ok == "ok",
                duration_ms: ms.parse().ok()?,
                job: job.to_string(),
            })
        } else if let Some(r) = rest.strip_prefix("job-skip ") {
            let (n, r) = r.split_once(' ')?;
            let (why, job) = r.split_once(' ')?;
            Some(Message::JobSkip {
                pid,
                count: n.parse().ok()?,
                why: Skip::parse(why)?,
                job: job.to_string(),
            })
        } else if let Some(r) = rest.strip_prefix("job-start ") {
            let (tick, job) = r.split_once(' ')?;
            Some(Message::JobStart {
                pid,
                tick_ms: tick.parse().ok()?,
                job: job.to_string(),
            })
        } else {
            rest.strip_prefix("boot-error ")
                .map(|t| Message::BootError {
                    pid,
                    text: t.to_string(),
                })
        }
    }
}

/// The master's end of the pipe (it also keeps the write end to hand to new workers).
#[derive(Debug)]
pub struct ControlPipe {
    read: OwnedFd,
    write: OwnedFd,
    buf: Vec<u8>,
}

impl ControlPipe {
    /// Creates the pipe: close-on-exec both ends, the read end non-blocking.
    pub fn new() -> Result<ControlPipe, StartError> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartError::os("creating the control pipe", e))?;
        set_nonblocking(&read).map_err(|e| StartError::os("fcntl on the control pipe", e))?;
        Ok(ControlPipe {
            read,
            write,
            buf: Vec::new(),
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The read end, for a forked worker to close.
    pub fn read_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The write end a worker sends on.
    pub fn writer(&self) -> ControlWriter {
        ControlWriter {
            fd: self.write.as_raw_fd(),
        }
    }

    /// Reads every complete message available now.
    pub fn drain(&mut self) -> Vec<Message> {
        let mut chunk = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.read, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            if let Some(m) = Message::decode(String::from_utf8_lossy(&line).trim_end()) {
                out.push(m);
            }
        }
        out
    }
}

/// A worker's handle on the pipe's write end.
#[derive(Debug, Clone, Copy)]
pub struct ControlWriter {
    fd: RawFd,
}

impl ControlWriter {
    /// Sends one message with a single `write`; errors are ignored (the master may be gone).
    pub fn send(&self, msg: &Message) {
        let line = msg.encode();
        // SAFETY: `fd` is the control pipe's write end, inherited from the master and kept open for
        // the whole life of the worker; the borrow does not outlive this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::unistd::write(fd, line.as_bytes());
    }
}

/// An order from the master to one worker.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "order", rename_all = "kebab-case")]
pub enum Order {
    /// The worker now holds the scheduler lease.
    Grant {
        /// Origin of interval ticks, in milliseconds since the Unix epoch.
        anchor_ms: i64,
        /// For each job, the last tick a holder started.
        last_ticks: std::collections::BTreeMap<String, i64>,
    },
}

impl Order {
    /// One line of JSON.
    pub fn encode(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one line.
    pub fn decode(line: &str) -> Option<Order> {
        serde_json::from_str(line.trim()).ok()
    }
}

/// Creates a worker's order pipe: `(read end for the worker, write end for the master)`, both
/// close-on-exec, the write end non-blocking so the master never waits on a worker.
pub fn order_pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| StartError::os("creating an order pipe", e))?;
    set_nonblocking(&write).map_err(|e| StartError::os("fcntl on an order pipe", e))?;
    Ok((read, write))
}

/// Sets `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking<F: AsFd>(fd: &F) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Writes an order to a worker; `false` if it could not be written whole.
pub fn send_order<F: AsFd>(fd: &F, order: &Order) -> bool {
    let line = order.encode();
    matches!(nix::unistd::write(fd, line.as_bytes()), Ok(n) if n == line.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut pipe = ControlPipe::new().unwrap();
        let w = pipe.writer();
        w.send(&Message::Ready { pid: 42 });
        w.send(&Message::BootError {
            pid: 43,
            text: "bad\nthing".into(),
        });
        assert_eq!(
            pipe.drain(),
            vec![
                Message::Ready { pid: 42 },
                Message::BootError {
                    pid: 43,
                    text: "bad thing".into()
                }
            ]
        );
        assert!(pipe.drain().is_empty());
        w.send(&Message::JobStart {
            pid: 7,
            tick_ms: 1_700_000_000_000,
            job: "daily reset".into(),
        });
        w.send(&Message::Released { pid: 7 });
        w.send(&Message::Alive { pid: 7 });
        w.send(&Message::Recycle { pid: 7, served: 51 });
        let end = Message::JobEnd {
            pid: 7,
            ok: false,
            duration_ms: 12,
            job: "expire users".into(),
        };
        let skip = Message::JobSkip {
            pid: 7,
            count: 3,
            why: Skip::Late,
            job: "record usage".into(),
        };
        let elsewhere = Message::JobSkip {
            pid: 7,
            count: 1,
            why: Skip::Elsewhere,
            job: "record usage".into(),
        };
        w.send(&end);
        w.send(&skip);
        w.send(&elsewhere);
        assert_eq!(
            pipe.drain(),
            vec![
                Message::JobStart {
                    pid: 7,
                    tick_ms: 1_700_000_000_000,
                    job: "daily reset".into()
                },
                Message::Released { pid: 7 },
                Message::Alive { pid: 7 },
                Message::Recycle { pid: 7, served: 51 },
                end,
                skip,
                elsewhere,
            ]
        );
    }

    #[test]
    fn orders_round_trip() {
        let mut last_ticks = std::collections::BTreeMap::new();
        last_ticks.insert("a job".to_string(), 5);
        let o = Order::Grant {
            anchor_ms: 1,
            last_ticks,
        };
        assert_eq!(Order::decode(&o.encode()), Some(o));
    }

    #[test]
    fn long_errors_are_cut_below_pipe_buf() {
        let m = Message::BootError {
            pid: 1,
            text: "é".repeat(5000),
        };
        assert!(m.encode().len() < 4096);
    }
}
