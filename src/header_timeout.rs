//! Deadlines hyper does not enforce on its own: a new connection must send its first byte within the
//! keep-alive timeout, and a request header must be complete within `--timeout-request-header` of its
//! first byte (slowloris clients trickle a header forever).
//!
//! hyper's own `header_read_timeout` (set to the keep-alive timeout) starts when a connection is idle
//! between requests, so it bounds idle keep-alive connections; it does not start before the first
//! byte of a new connection. [`Deadlines`] wraps the connection's stream: it arms a timer when bytes
//! arrive while no request of the connection is being handled, and disarms it when the request
//! reaches the service (the header is complete). When the timer fires, the next read fails and hyper
//! closes the connection. HTTP/2 connections (recognised by their preface) only get the first-byte
//! deadline: their frames flow between requests by design.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What the service tells the stream about one connection's requests.
#[derive(Debug, Default)]
pub struct ConnRequests {
    /// Requests that reached the service.
    started: AtomicU64,
    /// Requests being handled now.
    active: AtomicUsize,
}

impl ConnRequests {
    /// A request's header is complete and the service got it; the returned guard marks its end.
    pub fn start(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }
}

/// Marks the end of a request when dropped.
#[derive(Debug)]
pub struct RequestGuard(Arc<ConnRequests>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the timer is armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// A new connection that has not sent a byte.
    FirstByte,
    /// A request header is arriving; `started` is the request count when it began.
    Header { started: u64 },
    /// Not armed.
    Off,
}

/// A connection's stream with the first-byte and header deadlines.
pub struct Deadlines<S> {
    io: S,
    requests: Arc<ConnRequests>,
    header_timeout: Duration,
    timer: Pin<Box<Sleep>>,
    armed: Armed,
    first: bool,
    http2: bool,
}

impl<S> Deadlines<S> {
    /// Wraps a freshly accepted stream: it must send a byte within `first_byte`, and each request
    /// header within `header_timeout` of its first byte.
    pub fn new(
        io: S,
        requests: Arc<ConnRequests>,
        first_byte: Duration,
        header_timeout: Duration,
    ) -> Deadlines<S> {
        Deadlines {
            io,
            requests,
            header_timeout,
            timer: Box::pin(tokio::time::sleep(first_byte)),
            armed: Armed::FirstByte,
            first: true,
            http2: false,
        }
    }

    fn after_read(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        if self.first {
            self.first = false;
            self.http2 = new.starts_with(b"PRI ");
            self.armed = Armed::Off;
        }
        let started = self.requests.started.load(Ordering::Relaxed);
        if let Armed::Header { started: at } = self.armed {
            if at != started {
                self.armed = Armed::Off;
            }
        }
        let idle = self.requests.active.load(Ordering::Relaxed) == 0;
        if !self.http2 && idle && self.armed == Armed::Off {
            self.timer
                .as_mut()
                .reset(Instant::now() + self.header_timeout);
            self.armed = Armed::Header { started };
        }
    }

    /// Whether the armed deadline passed (registers the waker otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let what = match self.armed {
            Armed::Off => return None,
            Armed::Header { started } => {
                if self.requests.started.load(Ordering::Relaxed) != started {
                    self.armed = Armed::Off;
                    return None;
                }
                "request header not complete within --timeout-request-header"
            }
            Armed::FirstByte => "no request on a new connection within --timeout-keep-alive",
        };
        self.timer.as_mut().poll(cx).is_ready().then_some(what)
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
                this.after_read(&buf.filled()[before..]);
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
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
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
    fn a_silent_new_connection_times_out_but_http2_frames_do_not() {
        runtime().block_on(async {
            let (_client, server) = tokio::io::duplex(1024);
            let mut conn = Deadlines::new(
                server,
                Arc::default(),
                Duration::from_secs(5),
                Duration::from_secs(2),
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
