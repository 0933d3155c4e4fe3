//! The closed-loop load generator: a fixed number of client loops, each with one request in flight (as
//! wrk does), for a fixed time. In the keep-alive shape each loop keeps its connection; in the
//! connection-per-request shape each loop opens a connection, sends one request with `Connection:
//! close`, reads the whole response, closes, and starts over. It records every request's latency, and
//! counts responses per `x-worker` value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one run of the load generator saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Complete 200 responses.
    pub ok: u64,
    /// Responses with another status.
    pub non_200: u64,
    /// Those responses by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests (connect included) that took longer than [`REQUEST_TIMEOUT`]; counted in `errors`.
    pub timeouts: u64,
    /// Connections that failed to connect, or broke mid-response.
    pub errors: u64,
    /// Latency of each 200 response, in microseconds.
    pub latencies_us: Vec<u32>,
    /// 200 responses per `x-worker` header value.
    pub per_worker: BTreeMap<String, u64>,
    /// How long the run lasted.
    pub elapsed: Duration,
}

impl Outcome {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the latencies, in milliseconds.
    pub fn latency_ms(&mut self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// Adds the counts and latencies of `other` (another client loop of the same run).
    pub fn absorb(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.non_200 += other.non_200;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.per_worker {
            *self.per_worker.entry(k).or_default() += v;
        }
    }
}

/// How the client loops use their connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One connection per loop, requests one after another on it; latency from write to the end of
    /// the response.
    KeepAlive,
    /// A new connection for every request (`Connection: close`), closed by the client once the
    /// response is complete; latency from the start of `connect` to the end of the response.
    ConnectionPerRequest,
}

/// The longest a request may take (connect included) before it counts as an error: a server that
/// stops answering ends the run instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A run in progress on its own threads.
pub struct Running(JoinHandle<Outcome>);

impl Running {
    /// Waits for the run to end.
    pub fn finish(self) -> Outcome {
        self.0.join().unwrap_or_default()
    }
}

/// The request line and headers of `GET path`, with `Connection: close` when `close`.
pub fn request(addr: SocketAddr, path: &str, close: bool) -> &'static [u8] {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let text = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: hyperfork-bench\r\n{connection}\r\n"
    );
    // One per run, a few dozen bytes: leaked so that every task can borrow it.
    Box::leak(text.into_bytes().into_boxed_slice())
}

/// Starts `connections` client loops to `addr` sending `GET path` in `shape` for `duration`, on a
/// runtime of `threads` threads.
pub fn start(
    addr: SocketAddr,
    path: &str,
    shape: Shape,
    connections: usize,
    duration: Duration,
    threads: usize,
) -> Running {
    start_paths(addr, &[path], shape, connections, duration, threads)
}

/// Like [`start`], client loop `i` sending `GET paths[i % paths.len()]` (`/` when `paths` is empty).
pub fn start_paths(
    addr: SocketAddr,
    paths: &[&str],
    shape: Shape,
    connections: usize,
    duration: Duration,
    threads: usize,
) -> Running {
    let paths = if paths.is_empty() { &["/"][..] } else { paths };
    let requests: Vec<&'static [u8]> = paths
        .iter()
        .map(|p| request(addr, p, shape == Shape::ConnectionPerRequest))
        .collect();
    Running(std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .expect("build the load generator's runtime");
        runtime.block_on(async move {
            let start = Instant::now();
            let end = start + duration;
            let tasks: Vec<_> = (0..connections)
                .map(|i| {
                    let request = requests[i % requests.len()];
                    tokio::spawn(client_loop(addr, request, shape, end))
                })
                .collect();
            let mut total = Outcome::default();
            for t in tasks {
                if let Ok(o) = t.await {
                    total.absorb(o);
                }
            }
            total.elapsed = start.elapsed();
            total
        })
    }))
}

/// One client loop: connect, then request and response until `end`. It reconnects after `Connection:
/// close`, an error, or (connection per request) every response.
async fn client_loop(
    addr: SocketAddr,
    request: &'static [u8],
    shape: Shape,
    end: Instant,
) -> Outcome {
    let mut out = Outcome {
        latencies_us: Vec::with_capacity(1 << 14),
        ..Outcome::default()
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut worker = String::new();
    'connect: while Instant::now() < end {
        let connecting = Instant::now();
        let mut stream = match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await
        {
            Ok(Ok(s)) => s,
            timed_out => {
                out.errors += 1;
                out.timeouts += u64::from(timed_out.is_err());
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        loop {
            let sent = Instant::now();
            if sent >= end {
                break 'connect;
            }
            let started = match shape {
                Shape::KeepAlive => sent,
                Shape::ConnectionPerRequest => connecting,
            };
            let exchange = async {
                stream.write_all(request).await.ok()?;
                read_response(&mut stream, &mut buf, &mut worker).await
            };
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Some(resp)) => resp,
                timed_out => {
                    out.errors += 1;
                    out.timeouts += u64::from(timed_out.is_err());
                    continue 'connect;
                }
            };
            if resp.status == 200 {
                let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                out.latencies_us.push(us);
                out.ok += 1;
                if let Some(n) = out.per_worker.get_mut(worker.as_str()) {
                    *n += 1;
                } else {
                    out.per_worker.insert(worker.clone(), 1);
                }
            } else {
                out.non_200 += 1;
                *out.statuses.entry(resp.status).or_default() += 1;
            }
            if resp.close || shape == Shape::ConnectionPerRequest {
                // Dropping the stream closes it: the response is complete, so the client closes
                // whether or not the server's FIN has arrived yet.
                continue 'connect;
            }
        }
    }
    out
}

/// A parsed response head.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Whether the server said `Connection: close`.
    pub close: bool,
}

/// Reads one response with a `Content-Length` body; `None` on EOF, error or a body it cannot frame.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
    worker: &mut String,
) -> Option<Response> {
    let mut filled = 0;
    let header_end = loop {
        let n = stream.read(&mut buf[filled..]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
        if let Some(i) = find(&buf[..filled], b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return None;
        }
    };
    let head = std::str::from_utf8(&buf[..header_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut length = None;
    let mut close = false;
    worker.clear();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("x-worker") {
            worker.push_str(value);
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    let total = header_end + length?;
    if total > buf.len() {
        return None;
    }
    while filled < total {
        let n = stream.read(&mut buf[filled..total]).await.ok()?;
        if n == 0 {
            return None;
        }
        filled += n;
    }
    Some(Response { status, close })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One blocking `GET path` on a new connection; the status and body, or `None`.
pub fn get_once(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_nodelay(true).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
