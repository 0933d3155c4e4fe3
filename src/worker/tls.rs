//! TLS in a worker: the handshake of each accepted connection, on the connection's own task (the
//! accept loop never waits for a client), bounded by `--timeout-request-header`.
//!
//! A client that opens a connection and sends nothing, or stalls half-way through its handshake,
//! is closed when the deadline passes, like a slowloris client that trickles a request header; a
//! handshake is the first part of a request's header arriving. Once the handshake is done, the
//! connection is served like a plain one: the keep-alive and header deadlines (see
//! [`super::deadlines`]) watch the decrypted stream, so they see requests, and HTTP/2 (negotiated
//! with ALPN) is recognised by its preface as on a plain connection.
//!
//! A failed or timed-out handshake is logged at DEBUG (scanners and clients that refuse the
//! certificate would flood the log otherwise) and counted
//! (`hyperfork_tls_handshake_failures_total`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::tls::Tls;
use crate::shared::stats::Counters;

/// A decrypted stream, its type erased: hyper's connection code (generic over the stream) is then
/// compiled once more for TLS, not once per kind of socket. Without it the binary carried two extra
/// copies, and the plain path's hot code, spread among them, cost every worker about 0.5 MiB more
/// resident code pages. One allocation per TLS connection, none for plain ones.
pub(crate) type Decrypted = Box<dyn Stream>;

/// What hyper needs of a connection's stream.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Accepts the TLS handshake of a worker's connections.
#[derive(Clone)]
pub(crate) struct Acceptor {
    inner: tokio_rustls::TlsAcceptor,
    /// The handshake must be complete this long after accept.
    deadline: Duration,
    counters: Counters,
}

impl Acceptor {
    /// The acceptor of `tls`, whose handshakes must complete within `deadline`.
    pub(crate) fn new(tls: &Tls, deadline: Duration, counters: Counters) -> Acceptor {
        Acceptor {
            inner: tokio_rustls::TlsAcceptor::from(tls.server_config()),
            deadline,
            counters,
        }
    }

    /// Runs the server side of the handshake on `io`; `None` (the connection is dropped, so closed)
    /// when it fails or does not complete in time.
    pub(crate) async fn handshake<I>(&self, io: I) -> Option<Decrypted>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match tokio::time::timeout(self.deadline, self.inner.accept(io)).await {
            Ok(Ok(stream)) => Some(Box::new(stream)),
            Ok(Err(e)) => {
                tracing::debug!("closing a connection: TLS handshake failed: {e}");
                self.counters.tls_failed();
                None
            }
            Err(_) => {
                tracing::debug!(
                    "closing a connection: TLS handshake not complete within \
                     --timeout-request-header"
                );
                self.counters.tls_failed();
                None
            }
        }
    }
}
