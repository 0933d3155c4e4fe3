//! Accepting connections in a worker: one loop per listening socket, with load-aware deferral to a
//! less loaded peer (see [`crate::shared::balance`]) and a rate-limited report of failing accepts.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use crate::shared::balance::{self, Balancer, Peer};
use crate::shared::listener::Listener;

/// A listening socket registered with the worker's runtime.
pub(crate) enum AsyncListener {
    Tcp(AsyncFd<std::net::TcpListener>),
    Unix(AsyncFd<std::os::unix::net::UnixListener>),
}

/// An accepted connection.
pub(crate) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl AsyncListener {
    /// Registers an inherited listening socket with the current runtime.
    pub(crate) fn adopt(l: Listener) -> io::Result<AsyncListener> {
        Ok(match l {
            Listener::Tcp(s) => {
                s.set_nonblocking(true)?;
                AsyncListener::Tcp(register(s)?)
            }
            Listener::Unix(s, ..) => {
                s.set_nonblocking(true)?;
                AsyncListener::Unix(register(s)?)
            }
        })
    }

    /// Waits for the next connection and accepts it.
    pub(crate) async fn accept(&self, balance: Option<&mut Balancer>) -> io::Result<Stream> {
        Ok(match self {
            AsyncListener::Tcp(fd) => Stream::Tcp(tokio::net::TcpStream::from_std(
                std::net::TcpStream::from(accept_fd(fd, balance).await?),
            )?),
            AsyncListener::Unix(fd) => Stream::Unix(tokio::net::UnixStream::from_std(
                std::os::unix::net::UnixStream::from(accept_fd(fd, balance).await?),
            )?),
        })
    }
}

/// Registers a non-blocking listener with the current runtime, for readability.
fn register<T: AsRawFd>(listener: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `listener` owns its descriptor, and the AsyncFd owns `listener`: the descriptor stays
    // open, and is the same one, until the AsyncFd is dropped, which deregisters it first.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Errors from `accept` that concern one connection only, not the listener.
pub(crate) fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// One non-blocking `accept4` (close-on-exec, non-blocking connection).
fn accept_now(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: accept4 with null address pointers only reads the listening descriptor, which `fd`
    // keeps open for the call.
    let conn = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if conn < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(conn) })
    }
}

/// A connection left to a peer: which one, and until when this worker leaves it queued.
struct Deferral {
    peer: Peer,
    until: Instant,
}

/// Waits for a connection on `listener` and accepts it. With a balancer, a worker woken for a new
/// connection leaves it to a parked, less loaded peer, and takes it itself only if it is still
/// queued [`balance::MAX_WAIT`] later.
async fn accept_fd<T: AsRawFd>(
    listener: &AsyncFd<T>,
    mut balance: Option<&mut Balancer>,
) -> io::Result<OwnedFd> {
    if let Some(b) = balance.as_deref_mut() {
        if b.take_leftover() {
            // Connections queued behind one taken past the readiness have no event of their own.
            match accept_now(listener.get_ref()) {
                Ok(fd) => {
                    b.took_past_readiness();
                    return Ok(fd);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    // Still possibly queued: try the socket again first next time.
                    b.took_past_readiness();
                    return Err(e);
                }
            }
        }
    }
    let mut deferral: Option<Deferral> = None;
    loop {
        let mut ready = match (&mut balance, &deferral) {
            (_, Some(d)) => match tokio::time::timeout_at(d.until, listener.readable()).await {
                Ok(ready) => ready?,
                Err(_elapsed) => {
                    // The peer did not take it in time (or someone did): look once more, ourselves.
                    let missed = deferral.take().map(|d| d.peer);
                    match accept_now(listener.get_ref()) {
                        Ok(fd) => {
                            if let Some(b) = balance.as_deref_mut() {
                                if let Some(peer) = missed {
                                    b.peer_missed(peer);
                                }
                                b.took_past_readiness();
                            }
                            return Ok(fd);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
            },
            (Some(b), None) => {
                let parked = b.park();
                let ready = listener.readable().await;
                // Awake: no longer parked, before looking at the peers.
                drop(parked);
                ready?
            }
            (None, None) => listener.readable().await?,
        };
        if let Some(b) = balance.as_deref_mut() {
            if let Some(peer) = b.defer_to() {
                // The peer was woken for this connection too; wait for the next one (or the deadline).
                ready.clear_ready();
                let until = match &deferral {
                    Some(d) => d.until,
                    None => {
                        b.deferred();
                        Instant::now() + balance::MAX_WAIT
                    }
                };
                deferral = Some(Deferral { peer, until });
                continue;
            }
        }
        match ready.try_io(accept_now) {
            Ok(result) => return result,
            // Another worker took it; readiness was cleared, wait for the next one.
            Err(_would_block) => continue,
        }
    }
}

/// Reports failing accepts (EMFILE, ENFILE, ENOBUFS) at most once per [`AcceptErrors::EVERY`], with
/// how many failed in between, and says when accepting works again.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    /// Failures not yet reported, and when the last report was written.
    unreported: u64,
    last_report: Option<Instant>,
    /// Failures since accepting last worked.
    failing: u64,
}

impl AcceptErrors {
    /// The shortest time between two reports.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    /// How long to wait before accepting again after a failure.
    pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

    /// Records a failed accept; logs it unless a report was written less than [`Self::EVERY`] ago.
    pub(crate) fn failed(&mut self, e: &io::Error) {
        self.failing += 1;
        self.unreported += 1;
        let now = Instant::now();
        if self.last_report.is_some_and(|t| now < t + Self::EVERY) {
            return;
        }
        if self.unreported == 1 {
            tracing::error!(
                "accept failed: {e}; retrying every {} ms",
                Self::BACKOFF.as_millis()
            );
        } else {
            tracing::error!(
                "accept failed {} time(s) in the last {} s: {e}; still retrying",
                self.unreported,
                Self::EVERY.as_secs()
            );
        }
        self.unreported = 0;
        self.last_report = Some(now);
    }

    /// Records a successful accept; says so if accepts had been failing.
    pub(crate) fn succeeded(&mut self) {
        if self.failing > 0 {
            tracing::warn!(
                "accepting connections again after {} failed accept(s)",
                self.failing
            );
            self.failing = 0;
            self.unreported = 0;
            self.last_report = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_reported_once_per_period() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut errs = AcceptErrors::default();
            let e = io::Error::from_raw_os_error(libc::EMFILE);
            let mut reports = 0;
            for _ in 0..150 {
                let before = errs.last_report;
                errs.failed(&e);
                if errs.last_report != before {
                    reports += 1;
                }
                tokio::time::sleep(AcceptErrors::BACKOFF).await;
            }
            // 150 failures over 15 s: the first, and one summary 10 s later.
            assert_eq!(reports, 2);
            assert_eq!(errs.failing, 150);
            errs.succeeded();
            assert_eq!(errs.failing, 0);
        });
    }
}
