//! `plan --measure`: the master boots the real pool on an ephemeral loopback port, and once every
//! worker is ready it sends the pool a warm-up load, reads the memory of itself and each worker
//! (`/proc/PID/smaps_rollup`), and shuts down.
//!
//! The warm-up is plain HTTP/1.1 from this process, a connection per request (`Connection: close`,
//! so a response is read to its end without parsing its framing), several connections at a time so
//! that each worker takes some; it goes on until every worker has answered its share (read from the
//! shared request counters) or a time limit passes. The pool runs with balanced accept, which spreads
//! simultaneous connections over the workers. The master blocks while it sends: nothing else needs it
//! then, and its signals wait in the signalfd.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Master;
use crate::config::footprint::{Cost, Footprint, PoolFootprint, Warmup, WorkerFootprint};
use crate::shared::listener::Listener;

/// Requests each worker answers before it is measured.
pub(crate) const REQUESTS_PER_WORKER: u64 = 200;
/// The longest the warm-up goes on.
const WARMUP_LIMIT: Duration = Duration::from_secs(30);
/// The longest one connection may take to connect, or to answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The path the warm-up requests (`--warmup-path`).
    pub path: String,
}

impl Master<'_> {
    /// Once the first pool is whole: warm it up, measure it, and shut down. Does nothing unless
    /// `plan --measure` started this master, or after it measured once.
    pub(super) fn measure_if_asked(&mut self) {
        if self.measured.is_some() || self.is_stopping() || !self.all_ready() {
            return;
        }
        let Some(spec) = self.args.measure.clone() else {
            return;
        };
        let addr = self.args.listeners.iter().find_map(|l| match l {
            Listener::Tcp(t) => t.local_addr().ok(),
            Listener::Unix(..) => None,
        });
        let serving = self.serving();
        let mut warmup = Warmup {
            path: spec.path.clone(),
            ..Warmup::default()
        };
        if let Some(addr) = addr {
            let started = Instant::now();
            let per_round = (serving.len() * 4).clamp(4, 64);
            loop {
                let behind = serving.iter().any(|(_, pid)| {
                    self.stats
                        .read(pid.as_raw() as u32)
                        .is_none_or(|c| c.requests() < REQUESTS_PER_WORKER)
                });
                if !behind || started.elapsed() > WARMUP_LIMIT {
                    break;
                }
                let answered = warmup.answered();
                round(addr, &spec.path, per_round, &mut warmup);
                if warmup.answered() == answered {
                    break; // nothing answers: measure what there is
                }
            }
        }
        let workers: Vec<WorkerFootprint> = serving
            .iter()
            .map(|(slot, pid)| WorkerFootprint {
                slot: *slot,
                pid: pid.as_raw(),
                requests: self
                    .stats
                    .read(pid.as_raw() as u32)
                    .map_or(0, |c| c.requests()),
                memory: Footprint::of(pid.as_raw()).unwrap_or_default(),
            })
            .collect();
        let master = Footprint::of(self.pid.as_raw()).unwrap_or_default();
        let prints: Vec<Footprint> = workers.iter().map(|w| w.memory).collect();
        let cost = Cost::of(master, &prints).unwrap_or(Cost {
            fixed: master.pss,
            per_worker: 0,
            measured: 0,
        });
        self.measured = Some(PoolFootprint {
            master_pid: self.pid.as_raw(),
            master,
            workers,
            warmup,
            cost,
            guard: self.guard.decision.clone(),
        });
        // No --shutdown-delay: the pool served no one but the warm-up.
        self.drain(true, "plan --measure: measured");
    }
}

/// One round: `n` connections opened together, a request written on each, each answer read to its
/// end.
fn round(addr: SocketAddr, path: &str, n: usize, warmup: &mut Warmup) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hyperfork-plan\r\nConnection: close\r\n\r\n"
    );
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).and_then(|mut s| {
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.write_all(request.as_bytes())?;
            Ok(s)
        });
        match stream {
            Ok(s) => open.push(s),
            Err(_) => warmup.failed += 1,
        }
    }
    let mut buf = Vec::new();
    for mut s in open {
        buf.clear();
        match s.read_to_end(&mut buf).ok().and_then(|_| status(&buf)) {
            Some(code) => *warmup.statuses.entry(code).or_default() += 1,
            None => warmup.failed += 1,
        }
    }
}

/// The status code of an HTTP/1.x response.
fn status(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\r').next()?;
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split(' ');
    parts
        .next()
        .filter(|v| v.starts_with("HTTP/1."))
        .and(parts.next())
        .and_then(|c| c.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_gives_its_code() {
        assert_eq!(
            status(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            Some(200)
        );
        assert_eq!(status(b"HTTP/1.0 404 Not Found\r\n\r\n"), Some(404));
        assert_eq!(status(b""), None);
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
    }
}
