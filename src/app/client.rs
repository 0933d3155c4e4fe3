//! What an app learns about who sent a request: [`ClientAddr`] and [`ForwardedProto`], inserted into
//! every request's extensions by the worker.

use std::fmt;
use std::net::SocketAddr;

/// The client of a request, in its extensions: the TCP peer, or, when the peer is a trusted proxy
/// (`--forwarded-allow-ips`) and `--proxy-headers` is on, the rightmost untrusted address of its
/// `X-Forwarded-For`.
///
/// An axum handler reads it with the `Extension` extractor:
///
/// ```ignore
/// async fn handler(axum::Extension(client): axum::Extension<hyperfork::ClientAddr>) -> String {
///     client.to_string()
/// }
/// ```
///
/// A hyper service reads `req.extensions().get::<hyperfork::ClientAddr>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAddr {
    /// The TCP peer's address.
    Peer(SocketAddr),
    /// The address a trusted proxy named in `X-Forwarded-For`, as it wrote it.
    Forwarded(String),
    /// A peer on a unix socket (no address).
    Unix,
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientAddr::Peer(addr) => write!(f, "{addr}"),
            ClientAddr::Forwarded(host) => f.write_str(host),
            ClientAddr::Unix => f.write_str("unix"),
        }
    }
}

/// The scheme a trusted proxy named in `X-Forwarded-Proto` (e.g. `https`), in the request's
/// extensions when it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardedProto(pub String);
