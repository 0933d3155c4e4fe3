//! One connection's life after accept: hyper serves it until it ends; when the worker drains, it is
//! told to finish (an HTTP/1 connection answers its in-flight request and closes, an HTTP/2 one sends
//! GOAWAY and finishes its streams); and an HTTP/2 connection is closed once idle.
//!
//! hyper closes idle HTTP/1 connections through the stream's deadlines (`header_timeout`), but
//! HTTP/2 has no idle timeout of its own: an idle or half-sent HTTP/2 connection would hold a file
//! descriptor for as long as the client likes. Here, as in nginx, an HTTP/2 connection must complete
//! its first request within `--timeout-request-header` of being accepted, and one with no request in
//! progress for `--timeout-keep-alive` is sent GOAWAY. hyper's graceful close then waits for the
//! client to answer a PING; a client that does not answer within [`CLOSE_GRACE`], with no request in
//! progress, is disconnected.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::{Instant, sleep_until};

use crate::app::BoxError;
use crate::worker::deadlines::ConnRequests;

/// How long an HTTP/2 connection told to close for idleness may take to close with no request in
/// progress before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The worker's open connections: how many, and the signal that tells them all to finish.
#[derive(Debug)]
pub(crate) struct Registry {
    open: AtomicUsize,
    all_closed: Notify,
    finish: watch::Sender<bool>,
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        Arc::new(Registry {
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            finish: watch::Sender::new(false),
        })
    }

    /// Connections open now.
    pub(crate) fn count(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Tells every connection, open now or accepted later, to finish.
    pub(crate) fn finish_all(&self) {
        self.finish.send_replace(true);
    }

    /// Waits until no connection is open.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts one more open connection (from accept, so a TLS handshake in progress counts too).
    pub(crate) fn enter(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        Open(self.clone())
    }
}

/// Counts one open connection until dropped.
pub(crate) struct Open(Arc<Registry>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_closed.notify_waiters();
        }
    }
}

/// A served connection that can be asked to finish gracefully.
pub(crate) trait Served: Future<Output = Result<(), BoxError>> {
    /// Starts a graceful close: GOAWAY for HTTP/2, `Connection: close` after the in-flight request
    /// for HTTP/1.
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

/// The idle bounds of an HTTP/2 connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// No request in progress for this long: GOAWAY.
    pub(crate) keep_alive: Duration,
    /// The first request must reach the service this long after accept.
    pub(crate) first_request: Duration,
}

/// Drives `conn` to its end, counted open in its registry until then.
pub(crate) async fn drive<C: Served>(
    conn: C,
    requests: Arc<ConnRequests>,
    open: Open,
    idle: Idle,
) -> Result<(), BoxError> {
    let mut finish = open.0.finish.subscribe();
    let mut conn = pin!(conn);
    let accepted = Instant::now();
    let mut check = pin!(sleep_until(accepted + idle.first_request));
    let mut watching = true;
    let mut finishing = false;
    // Set once the connection was told to close for idleness.
    let mut closing_since: Option<Instant> = None;
    if *finish.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        finishing = true;
    }
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => return r,
            _ = finish.changed(), if !finishing => {
                conn.as_mut().graceful_shutdown();
                finishing = true;
            }
            _ = check.as_mut(), if watching => {
                let now = Instant::now();
                if !requests.is_http2() {
                    if requests.started() > 0 {
                        // HTTP/1: the stream's deadlines watch it.
                        watching = false;
                    } else {
                        // No protocol yet: the first-byte deadline closes it; look again later.
                        check.as_mut().reset(now + idle.keep_alive);
                    }
                    continue;
                }
                match (closing_since, requests.idle_since()) {
                    (Some(since), Some(_)) if now >= since + CLOSE_GRACE => {
                        tracing::debug!("HTTP/2 connection did not close after GOAWAY; dropping it");
                        return Ok(());
                    }
                    (Some(since), _) => {
                        check.as_mut().reset((since + CLOSE_GRACE).max(now + CLOSE_GRACE / 4));
                    }
                    (None, None) => check.as_mut().reset(now + idle.keep_alive),
                    (None, Some(since)) => {
                        let deadline = if requests.started() == 0 {
                            accepted + idle.first_request
                        } else {
                            since + idle.keep_alive
                        };
                        if now >= deadline {
                            tracing::debug!(
                                "HTTP/2 connection idle past its timeout; sending GOAWAY"
                            );
                            conn.as_mut().graceful_shutdown();
                            closing_since = Some(now);
                            check.as_mut().reset(now + CLOSE_GRACE);
                        } else {
                            check.as_mut().reset(deadline);
                        }
                    }
                }
            }
        }
    }
}
