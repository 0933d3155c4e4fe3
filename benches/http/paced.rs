//! The paced keep-alive generator of the CPU-bound scenario: a fixed set of keep-alive connections,
//! all opened at the start (a burst, as a proxy's connection pool or wrk opens them), sharing a steady
//! total rate of requests (open loop). Connection `c` of `n` sends its `k`-th request at
//! `start + (c + k × n) / rate`, one request in flight per connection.
//!
//! A request due while its connection still waits for the previous answer goes out right after that
//! answer, and its latency counts from when it was due: the time it waited behind its predecessor is
//! the server's doing (a closed loop would hide it). Otherwise its latency counts from when it was
//! written: the generator's timer (1 ms granular in tokio) is not the server's doing. Requests still
//! due when the run ends, because their connection was waiting for an earlier answer, count as
//! unsent (the server fell behind the rate).

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::load::{self, Outcome};

/// What a paced run saw over its measured window.
#[derive(Debug, Default)]
pub struct PacedOutcome {
    /// Answers, errors and latencies of the requests due in the measured window.
    pub load: Outcome,
    /// Requests due in the measured window.
    pub offered: u64,
    /// Of those, requests never sent: their connection was still waiting for an earlier answer
    /// when the run ended.
    pub unsent: u64,
}

/// A run in progress on its own threads.
pub struct Running(JoinHandle<PacedOutcome>);

impl Running {
    /// Waits for the run to end.
    pub fn finish(self) -> PacedOutcome {
        self.0.join().unwrap_or_default()
    }
}

/// The schedule shared by every connection.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    /// Requests due before this are not measured (warm-up).
    measured_from: Instant,
    end: Instant,
    /// Between two requests of the whole run.
    interval: Duration,
    /// Between two requests of one connection.
    period: Duration,
}

/// Opens `connections` keep-alive connections to `addr` and sends `GET path` on them at `rate`
/// requests per second in all, for `warm` (not measured) then `measure`, on a runtime of `threads`
/// threads.
pub fn start(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    rate: f64,
    warm: Duration,
    measure: Duration,
    threads: usize,
) -> Running {
    let request = load::request(addr, path, false);
    let connections = connections.max(1);
    Running(std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .expect("build the paced generator's runtime");
        runtime.block_on(async move {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
            let start = Instant::now();
            let schedule = Schedule {
                start,
                measured_from: start + warm,
                end: start + warm + measure,
                interval,
                period: interval * u32::try_from(connections).unwrap_or(u32::MAX),
            };
            let tasks: Vec<_> = (0..connections)
                .map(|c| tokio::spawn(connection(addr, request, c, schedule)))
                .collect();
            let mut total = PacedOutcome::default();
            for t in tasks {
                if let Ok(o) = t.await {
                    total.offered += o.offered;
                    total.unsent += o.unsent;
                    total.load.ok += o.load.ok;
                    total.load.non_200 += o.load.non_200;
                    total.load.errors += o.load.errors;
                    total.load.latencies_us.extend(o.load.latencies_us);
                    for (k, v) in o.load.per_worker {
                        *total.load.per_worker.entry(k).or_default() += v;
                    }
                }
            }
            total.load.elapsed = measure;
            total
        })
    }))
}

/// Connection `c`: connects at once, then sends its requests on schedule until the run ends,
/// reconnecting after an error or `Connection: close`.
async fn connection(
    addr: SocketAddr,
    request: &'static [u8],
    c: usize,
    s: Schedule,
) -> PacedOutcome {
    let mut out = PacedOutcome::default();
    let mut buf = vec![0u8; 16 * 1024];
    let mut worker = String::new();
    let mut stream = connect(addr).await;
    let mut due = s.start + s.interval * u32::try_from(c).unwrap_or(u32::MAX);
    // When the previous answer on this connection ended.
    let mut free_since = Instant::now();
    while due < s.end {
        let measured = due >= s.measured_from;
        out.offered += u64::from(measured);
        if Instant::now() >= s.end {
            // Still behind schedule when the run ends: this request and the later ones due before
            // the end are never sent.
            out.unsent += u64::from(measured);
            due += s.period;
            continue;
        }
        tokio::time::sleep_until(due.into()).await;
        let from = if free_since > due {
            due
        } else {
            Instant::now()
        };
        due += s.period;
        let stream_now = match stream.as_mut() {
            Some(st) => st,
            None => match connect(addr).await {
                Some(st) => stream.insert(st),
                None => {
                    out.load.errors += u64::from(measured);
                    free_since = Instant::now();
                    continue;
                }
            },
        };
        let exchange = async {
            stream_now.write_all(request).await.ok()?;
            load::read_response(stream_now, &mut buf, &mut worker).await
        };
        let answer = tokio::time::timeout(load::REQUEST_TIMEOUT, exchange).await;
        free_since = Instant::now();
        let Ok(Some(resp)) = answer else {
            out.load.errors += u64::from(measured);
            stream = None;
            continue;
        };
        if resp.close {
            stream = None;
        }
        if !measured {
            continue;
        }
        if resp.status == 200 {
            let us = free_since.duration_since(from).as_micros();
            out.load
                .latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
            out.load.ok += 1;
            *out.load.per_worker.entry(worker.clone()).or_default() += 1;
        } else {
            out.load.non_200 += 1;
        }
    }
    out
}

async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let s = tokio::time::timeout(load::REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = s.set_nodelay(true);
    Some(s)
}
