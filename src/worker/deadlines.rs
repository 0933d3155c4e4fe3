//! Deadlines of an HTTP/1 connection that hyper does not enforce the way users expect:
//! - **keep-alive**: a connection with no request in progress and no byte of a next request is closed
//!   after `--timeout-keep-alive`; this covers a new connection that sends nothing, and the wait
//!   between two requests;
//! - **request header**: once the first byte of a request arrives, its header must be complete within
//!   `--timeout-request-header` (slowloris clients trickle a header forever).
//!
//! This is the split gunicorn, uvicorn and nginx users know (nginx: `keepalive_timeout` and
//! `client_header_timeout`): the idle wait and the header's arrival are bounded separately, so a
//! slow header gets the whole header timeout even when it is longer than the keep-alive timeout.
//! hyper's own `header_read_timeout`, which starts when a connection goes idle and so bounds idle
//! and header time together, is not used.
//!
//! [`Deadlines`] wraps the connection's stream. The service tells it, through [`ConnRequests`], when
//! a request reaches it (the header is complete) and when the request's response has been sent in
//! full. When a deadline passes, the next read fails and hyper closes the connection. HTTP/2
//! connections (recognised by their preface) only get the first-byte deadline: their frames flow
//! between requests by design, and their idle time is watched per connection (see `serve`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::shared::stats::Counters;

/// What the service tells the stream about one connection's requests.
#[derive(Debug)]
pub struct ConnRequests {
    /// Requests that reached the service.
    started: AtomicU64,
    /// Requests in progress: from the service getting the header until the response body is sent
    /// in full (or dropped).
    active: AtomicUsize,
    /// Whether the connection speaks HTTP/2 (set on its first bytes).
    http2: AtomicBool,
    /// When the connection was accepted.
    born: Instant,
    /// When the last request ended, in milliseconds since `born` (HTTP/2 only).
    idle_since_ms: AtomicU64,
}

impl Default for ConnRequests {
    fn default() -> ConnRequests {
        ConnRequests {
            started: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            http2: AtomicBool::new(false),
            born: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl ConnRequests {
    /// A request's header is complete and the service got it; the returned guard marks its end and
    /// is held until the response body is sent.
    pub fn start(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Whether the connection speaks HTTP/2.
    pub fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    /// Requests that reached the service so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Since when no request has been in progress; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Relaxed);
        Some(self.born + Duration::from_millis(ms))
    }
}

/// Marks the end of a request when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnRequests>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let c = &self.0;
        if c.http2.load(Ordering::Relaxed) {
            let ms = u64::try_from(c.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            c.idle_since_ms.store(ms, Ordering::Relaxed);
        }
        c.active.fetch_sub(1, Ordering::Release);
    }
}

/// Which deadline is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// No request in progress and no byte of a next one: the keep-alive timeout runs.
    Idle,
    /// A request header is arriving; `started` is the request count when it began.
    Header { started: u64 },
    /// A request is in progress (or the connection is HTTP/2): no deadline.
    Off,
}

/// A connection's stream with the keep-alive and header deadlines.
///
/// A request moves the armed deadline twice (header, then keep-alive); the timer is not re-armed
/// each time. It stays where it is while every new deadline is later than it, fires early, and is
/// then moved to the deadline in force: about one timer operation per connection per timeout
/// period instead of two per request. Deadlines are read from the coarse monotonic clock
/// ([`clock::now`]), which costs a few nanoseconds and is precise to a scheduler tick, far finer
/// than timeouts given in seconds.
pub struct Deadlines<S> {
    io: S,
    requests: Arc<ConnRequests>,
    keep_alive: Duration,
    header_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// When the timer is due, on [`clock::now`]'s scale.
    timer_due: Duration,
    /// Whether the timer was polled since it was last set (so it will wake this connection's task).
    timer_polled: bool,
    /// When the armed deadline passes, on [`clock::now`]'s scale.
    deadline: Duration,
    armed: Armed,
    first: bool,
    http2: bool,
    /// The worker's counters: bytes in and out.
    counters: Counters,
}

impl<S> Deadlines<S> {
    /// Wraps a freshly accepted stream: it must send a byte within `keep_alive`, each request header
    /// must be complete within `header_timeout` of its first byte, and the wait between two requests
    /// is bounded by `keep_alive`.
    pub fn new(
        io: S,
        requests: Arc<ConnRequests>,
        keep_alive: Duration,
        header_timeout: Duration,
        counters: Counters,
    ) -> Deadlines<S> {
        let due = clock::now() + keep_alive;
        Deadlines {
            counters,
            io,
            requests,
            keep_alive,
            header_timeout,
            timer: Box::pin(tokio::time::sleep(keep_alive)),
            timer_due: due,
            timer_polled: false,
            deadline: due,
            armed: Armed::Idle,
            first: true,
            http2: false,
        }
    }

    /// Arms `armed`, passing `timeout` from now. The timer moves only if it would fire after the
    /// new deadline or has already fired.
    fn arm(&mut self, armed: Armed, timeout: Duration) {
        let now = clock::now();
        self.armed = armed;
        self.deadline = now + timeout;
        if self.deadline < self.timer_due || self.timer.is_elapsed() {
            self.set_timer(now);
        }
    }

    /// Sets the timer to the armed deadline; `now` on [`clock::now`]'s scale.
    fn set_timer(&mut self, now: Duration) {
        let left = self.deadline.saturating_sub(now);
        self.timer.as_mut().reset(Instant::now() + left);
        self.timer_due = self.deadline;
        self.timer_polled = false;
    }

    fn after_read(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        if self.first {
            self.first = false;
            self.http2 = new.starts_with(b"PRI ");
            if self.http2 {
                self.requests.http2.store(true, Ordering::Relaxed);
                self.armed = Armed::Off;
                return;
            }
        }
        if self.http2 {
            return;
        }
        let started = self.requests.started.load(Ordering::Relaxed);
        if let Armed::Header { started: at } = self.armed {
            if at != started {
                self.armed = Armed::Off;
            }
        }
        let idle = self.requests.active.load(Ordering::Relaxed) == 0;
        if idle && matches!(self.armed, Armed::Off | Armed::Idle) {
            self.arm(Armed::Header { started }, self.header_timeout);
        }
    }

    /// Arms the keep-alive deadline if the last request is over (its response sent) and nothing new
    /// has arrived; returns whether a deadline is armed.
    fn arm_if_idle(&mut self) -> bool {
        if let Armed::Header { started } = self.armed {
            if self.requests.started.load(Ordering::Relaxed) != started {
                self.armed = Armed::Off;
            }
        }
        if self.armed == Armed::Off {
            if self.http2 || self.requests.active.load(Ordering::Relaxed) > 0 {
                return false;
            }
            self.arm(Armed::Idle, self.keep_alive);
        }
        true
    }

    /// Registers this task's waker with the timer unless it already is.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer_polled && !self.timer.is_elapsed() {
            return Poll::Pending;
        }
        self.timer_polled = true;
        self.timer.as_mut().poll(cx)
    }

    /// After a write: once the response is out, the idle wait starts. hyper may not read again until
    /// the client sends something, so the timer is registered here, with the connection task's waker;
    /// when it fires, the task polls its read, which fails.
    fn after_write(&mut self, cx: &mut Context<'_>) {
        if self.armed == Armed::Off && self.arm_if_idle() {
            let _ = self.poll_timer(cx);
        }
    }

    /// Whether the armed deadline passed (registers the waker otherwise). Called when a read finds
    /// nothing to read.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        if !self.arm_if_idle() {
            return None;
        }
        if self.poll_timer(cx).is_pending() {
            return None;
        }
        // The timer fired: at the deadline in force, or early, at one since moved later.
        let now = clock::now();
        if now < self.deadline {
            self.set_timer(now);
            return match self.poll_timer(cx) {
                Poll::Pending => None,
                Poll::Ready(()) => Some(self.what()),
            };
        }
        Some(self.what())
    }

    /// What the armed deadline bounds, for the log line.
    fn what(&self) -> &'static str {
        match self.armed {
            Armed::Header { .. } => "request header not complete within --timeout-request-header",
            _ if self.first => "no request on a new connection within --timeout-keep-alive",
            _ => "idle keep-alive connection past --timeout-keep-alive",
        }
    }
}

/// The clock of the deadlines: the coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, served by the
/// vDSO without reading the CPU's time counter); in unit tests, tokio's clock, which they pause.
mod clock {
    use std::time::Duration;

    /// Time since an arbitrary fixed point.
    #[cfg(not(test))]
    pub(super) fn now() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on every Linux
        // since 2.6.32, and clock_gettime writes nothing else.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc != 0 {
            // Unreachable on Linux; a zero would only make deadlines fire early and re-arm.
            return Duration::ZERO;
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Time since this thread's first call, on tokio's clock, which the tests pause (each test runs
    /// on a thread of its own, and a paused clock only moves forward).
    #[cfg(test)]
    pub(super) fn now() -> Duration {
        thread_local! {
            static EPOCH: tokio::time::Instant = tokio::time::Instant::now();
        }
        EPOCH.with(|epoch| tokio::time::Instant::now().duration_since(*epoch))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                this.counters.read(new.len());
                this.after_read(new);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.expired(cx) {
                Some(what) => {
                    tracing::debug!("closing a connection: {what}");
                    this.armed = Armed::Off;
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.counters.wrote(n);
        }
        this.after_write(cx);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.counters.wrote(n);
        }
        this.after_write(cx);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.after_write(cx);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_trickled_header_times_out_and_a_handled_request_does_not() {
        runtime().block_on(async {
            let (mut client, server) = tokio::io::duplex(1024);
            let requests = Arc::new(ConnRequests::default());
            let mut conn = Deadlines::new(
                server,
                requests.clone(),
                Duration::from_secs(5),
                Duration::from_secs(2),
                Counters::private(),
            );
            let mut buf = [0u8; 64];
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert!(conn.read(&mut buf).await.is_ok());
            // The header is complete and handled: no deadline while the request runs.
            let guard = requests.start();
            client.write_all(b"body").await.unwrap();
            assert!(conn.read(&mut buf).await.is_ok());
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(guard);
            // The next header trickles in and stops: the read fails after 2 s.
            client.write_all(b"GET /next HTTP/1.1\r\n").await.unwrap();
            assert!(conn.read(&mut buf).await.is_ok());
            let e = conn.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
    }

    #[test]
    fn a_slow_header_gets_the_header_timeout_and_idleness_the_keep_alive_one() {
        runtime().block_on(async {
            let (mut client, server) = tokio::io::duplex(1024);
            let requests = Arc::new(ConnRequests::default());
            let mut conn = Deadlines::new(
                server,
                requests.clone(),
                Duration::from_secs(1),
                Duration::from_secs(8),
                Counters::private(),
            );
            let mut buf = [0u8; 64];
            let start = Instant::now();
            // Pauses longer than the keep-alive timeout inside a header are fine.
            for part in [&b"GET / HTTP/1.1\r\n"[..], b"Host: t\r\n", b"X: y\r\n"] {
                client.write_all(part).await.unwrap();
                assert!(conn.read(&mut buf).await.is_ok());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            client.write_all(b"\r\n").await.unwrap();
            assert!(conn.read(&mut buf).await.is_ok());
            let guard = requests.start();
            drop(guard);
            // The response is out; the connection is idle: closed after the keep-alive timeout.
            conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            let idle_from = Instant::now();
            let e = conn.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert_eq!(idle_from.elapsed(), Duration::from_secs(1));
            assert!(start.elapsed() > Duration::from_secs(6));
        });
    }

    #[test]
    fn a_silent_new_connection_times_out_but_http2_frames_do_not() {
        runtime().block_on(async {
            let (_client, server) = tokio::io::duplex(1024);
            let mut conn = Deadlines::new(
                server,
                Arc::default(),
                Duration::from_secs(5),
                Duration::from_secs(2),
                Counters::private(),
            );
            let mut buf = [0u8; 64];
            let e = conn.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);

            let (mut client, server) = tokio::io::duplex(1024);
            let mut conn = Deadlines::new(
                server,
                Arc::default(),
                Duration::from_secs(5),
                Duration::from_secs(2),
                Counters::private(),
            );
            client
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            assert!(conn.read(&mut buf).await.is_ok());
            let read = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await;
            assert!(read.is_err(), "an idle HTTP/2 connection is left to hyper");
        });
    }
}
