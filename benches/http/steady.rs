//! The open-loop load generator: new connections at a steady rate, each carrying one `GET` with
//! `Connection: close`, whatever the server's pace (a lone proxy opening a connection per request).
//! A closed loop waits for each answer before asking again, so a server that is slow to accept
//! slows the client down and hides in the throughput; here the connections keep coming on schedule,
//! and a delayed accept shows up in the latency of every connection it delays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::load::{self, Outcome};

/// Connections open at once above which a due connection is not started but counted as an error:
/// a server that stops answering costs the client file descriptors, not the whole machine.
pub const MAX_IN_FLIGHT: usize = 1000;

/// A connection that starts this much after its due time counts as late: the generator, not the
/// server, fell behind (both share the machine's cores).
pub const LATE: Duration = Duration::from_millis(1);

/// What a steady-rate run saw.
#[derive(Debug, Default)]
pub struct SteadyOutcome {
    /// Answers, errors and latencies (from the start of `connect` to the end of the response).
    pub load: Outcome,
    /// Connections due over the run.
    pub offered: u64,
    /// Connections started [`LATE`] or more after they were due.
    pub late: u64,
}

/// A run in progress on its own threads.
pub struct Running(JoinHandle<SteadyOutcome>);

impl Running {
    /// Waits for the run to end (and for its last connections to finish).
    pub fn finish(self) -> SteadyOutcome {
        self.0.join().unwrap_or_default()
    }
}

/// How one connection ended.
enum Ended {
    /// A 200, after this many microseconds.
    Ok(u32),
    /// Another status.
    Non200,
    /// Connect failed, the connection broke, timed out, or was never started.
    Error,
}

/// Opens `rate` connections per second to `addr` for `duration`, each sending `GET path` with
/// `Connection: close`; the connections run on a runtime of `threads` threads, paced by a thread of
/// their own that sleeps until each one is due.
pub fn start(
    addr: SocketAddr,
    path: &str,
    rate: f64,
    duration: Duration,
    threads: usize,
) -> Running {
    let request = load::request(addr, path, true);
    Running(std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .expect("build the steady-rate generator's runtime");
        let in_flight = Arc::new(AtomicUsize::new(0));
        let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
        let start = Instant::now();
        let mut out = SteadyOutcome::default();
        let mut tasks = Vec::new();
        let mut due = start;
        while due < start + duration {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            out.offered += 1;
            if Instant::now().saturating_duration_since(due) >= LATE {
                out.late += 1;
            }
            if in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
                in_flight.fetch_sub(1, Ordering::AcqRel);
                out.load.errors += 1;
            } else {
                let in_flight = Arc::clone(&in_flight);
                tasks.push(runtime.spawn(async move {
                    let ended = one_connection(addr, request).await;
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    ended
                }));
            }
            due += interval;
        }
        out.load.elapsed = start.elapsed();
        runtime.block_on(async {
            for t in tasks {
                match t.await {
                    Ok(Ended::Ok(us)) => {
                        out.load.ok += 1;
                        out.load.latencies_us.push(us);
                    }
                    Ok(Ended::Non200) => out.load.non_200 += 1,
                    Ok(Ended::Error) | Err(_) => out.load.errors += 1,
                }
            }
        });
        out
    }))
}

/// Connect, one request, the whole response, close (the client closes once the response is
/// complete).
async fn one_connection(addr: SocketAddr, request: &'static [u8]) -> Ended {
    let started = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        stream.write_all(request).await.ok()?;
        let mut buf = [0u8; 4096];
        let mut worker = String::new();
        load::read_response(&mut stream, &mut buf, &mut worker).await
    };
    match tokio::time::timeout(load::REQUEST_TIMEOUT, exchange).await {
        Ok(Some(r)) if r.status == 200 => {
            Ended::Ok(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
        }
        Ok(Some(_)) => Ended::Non200,
        _ => Ended::Error,
    }
}
