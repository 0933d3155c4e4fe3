//! Serving HTTP in a worker: one accept loop per listener, one task per connection, graceful drain.
//!
//! Connections are served by hyper-util's auto builder (HTTP/1.1 and HTTP/2, with upgrades). On a
//! graceful stop the accept loops end first (the socket stays open in the master and the other workers,
//! so queued connections go to them), then every open connection is told to finish: an HTTP/1
//! connection answers its in-flight request with `Connection: close` and closes, an HTTP/2 connection
//! sends GOAWAY. The drain is bounded by the graceful timeout.
//!
//! Closing an idle keep-alive connection races with a client that is sending its next request on it;
//! that request would be lost. So a draining worker first answers every HTTP/1 request with
//! `Connection: close` and waits (up to [`KEEPALIVE_DRAIN`]) for clients to close their connections
//! after their next response; only the connections still idle after that are closed by the server.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;

use crate::app::BoxError;
use crate::config::health::Limits;
use crate::shared::balance::{Balancer, Member};
use crate::shared::listener::Listener;
use crate::shared::stats::{Counters, OpenConnection, PoolState};
use crate::worker::accept::{AcceptErrors, AsyncListener, Stream, is_connection_error};
use crate::worker::access::Peer;
use crate::worker::connection::{self, Idle, Open, Registry, Served};
use crate::worker::deadlines::{ConnRequests, Deadlines};
use crate::worker::guard::Guarded;
pub(crate) use crate::worker::guard::OnMaxRequests;
use crate::worker::readiness::Readiness;
use crate::worker::response_headers;
use crate::worker::tls::Acceptor;

/// How a worker is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep serving.
    Run,
    /// Stop accepting, finish in-flight requests, exit.
    Graceful,
}

/// What the worker hands to a serving loop.
pub struct ServeControl {
    /// Called once every listener is accepting.
    pub ready: Box<dyn FnOnce()>,
    /// Turns to [`Stop::Graceful`] when the worker must drain.
    pub stop: watch::Receiver<Stop>,
    /// Upper bound of the drain.
    pub graceful_timeout: Duration,
    /// Connection and request limits.
    pub limits: Limits,
    /// The request limit, and what to call (once) with the count when it is reached.
    pub max_requests: Option<(u64, OnMaxRequests)>,
    /// This worker's entry in the accept-balancing table; `None`: plain shared accept.
    pub balance: Option<Member>,
    /// This worker's counters in shared memory, read by the master for metrics and `ctl status`.
    pub counters: Counters,
    /// The pool's state as the master publishes it (draining), for the readiness path.
    pub pool: PoolState,
    /// The TLS configuration, with `--ssl-certfile`: every listener serves HTTPS.
    pub tls: Option<crate::config::tls::Tls>,
}

impl std::fmt::Debug for ServeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeControl")
            .field("graceful_timeout", &self.graceful_timeout)
            .finish_non_exhaustive()
    }
}

/// The peer of a TCP connection whose address cannot be read (it closed at once).
const UNKNOWN_PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// The header-field limit hyper applies when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// How long a draining worker lets keep-alive clients finish their next request before closing their
/// connections.
pub const KEEPALIVE_DRAIN: Duration = Duration::from_secs(2);

/// Most concurrent streams (requests) on one HTTP/2 connection; a client opening more is told to
/// wait (hyper's default, set here so it cannot change unnoticed).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 200;

/// An HTTP/2 connection with no frame from the client for this long is sent a PING; one that does not
/// answer within [`H2_PING_TIMEOUT`] is closed (a client gone without a FIN, mid-stream).
pub const H2_PING_INTERVAL: Duration = Duration::from_secs(20);

/// How long an HTTP/2 client has to answer a liveness PING.
pub const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

pub(crate) use crate::worker::guard::panic_message;

/// A hyper service hyperfork can serve: cloned for each connection, usable from any runtime thread.
pub trait HttpService<B>:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// A response body hyperfork can send.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
}

/// Serves `service` on every listener until a graceful stop, then drains.
pub async fn serve<S, B>(
    listeners: Vec<Listener>,
    service: S,
    control: ServeControl,
) -> io::Result<()>
where
    S: HttpService<B>,
    B: ResponseBody,
{
    let ServeControl {
        ready,
        stop,
        graceful_timeout,
        limits,
        max_requests,
        balance,
        counters,
        pool,
        tls,
    } = control;
    let draining = Arc::new(AtomicBool::new(false));
    let service = Guarded {
        inner: service,
        draining: draining.clone(),
        counters,
        limit: limits.limit_concurrency,
        limit_body: limits.limit_request_body,
        served: Arc::new(AtomicU64::new(0)),
        max_requests,
        conn: None,
        access: Arc::new(limits.access.clone()),
        peer: Peer::Unix,
        peer_trusted: true,
        shed: balance
            .filter(|m| m.packed())
            .map(|m| (m, Arc::new(AtomicU64::new(0)))),
        headers: response_headers::Extra::for_worker(&limits.response),
        readiness: Readiness::for_worker(limits.readiness_path.as_deref(), pool),
    };
    let timing = Timing {
        keep_alive: limits.timeout_keep_alive,
        header: limits.timeout_request_header,
    };
    let registry = Registry::new();
    let builder = http_builder(&limits);
    let tls = tls.map(|t| Acceptor::new(&t, limits.timeout_request_header, counters));
    let mut accept_loops = tokio::task::JoinSet::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let listener = AsyncListener::adopt(l)?;
        accept_loops.spawn(accept_loop(
            listener,
            Conns {
                service: service.clone(),
                builder: builder.clone(),
                registry: registry.clone(),
                timing,
                tls: tls.clone(),
            },
            stop.clone(),
            balance.map(|m| m.for_listener(i)),
            balance,
        ));
    }
    ready();
    let mut watch_stop = stop.clone();
    let _ = watch_stop.wait_for(|s| *s != Stop::Run).await;
    draining.store(true, Ordering::Relaxed);
    if let Some(member) = &balance {
        member.stop_accepting();
    }
    while accept_loops.join_next().await.is_some() {}
    if let Some(member) = &balance {
        let (accepted, deferred) = member.counts();
        tracing::info!("accepted {accepted} connection(s); left {deferred} to less loaded workers");
    }

    drain(&registry, graceful_timeout).await;
    Ok(())
}

/// hyper's connection builder, HTTP/1 and HTTP/2, with the worker's limits.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No `header_read_timeout`: it would bound idle and header time together. The stream's deadlines
    // bound each on its own (see `deadlines`).
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(
            usize::try_from(limits.limit_request_header_size)
                .unwrap_or(usize::MAX)
                .max(8192),
        );
    // hyper's own limit is the same 100 fields; setting it, even to 100, moves the header table of
    // every request from the stack to a heap buffer filled per request (measured: 1.5 % of a
    // worker's CPU under load).
    if limits.limit_request_fields != HYPER_MAX_HEADERS {
        builder.http1().max_headers(limits.limit_request_fields);
    }
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    response_headers::configure(&mut builder, &limits.response);
    builder
}

/// Lets the open connections finish once accepting has stopped. One deadline, `graceful_timeout`,
/// bounds the whole drain: the keep-alive linger (clients close after their next response, which
/// carries `Connection: close`) and then the graceful close of whatever is left.
async fn drain(registry: &Registry, graceful_timeout: Duration) {
    let deadline = tokio::time::Instant::now() + graceful_timeout;
    let open = registry.count();
    if open > 0 {
        tracing::info!("draining {open} open connection(s)");
        let linger_until = tokio::time::Instant::now() + KEEPALIVE_DRAIN.min(graceful_timeout);
        let _ = tokio::time::timeout_at(linger_until, registry.closed()).await;
    }
    registry.finish_all();
    if tokio::time::timeout_at(deadline, registry.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "graceful timeout ({}) reached with connections still open; closing them",
            humantime::format_duration(graceful_timeout)
        );
    }
}

/// The connection deadlines.
#[derive(Debug, Clone, Copy)]
struct Timing {
    keep_alive: Duration,
    header: Duration,
}

/// What an accept loop needs to serve the connections it accepts.
#[derive(Clone)]
struct Conns<S> {
    service: Guarded<S>,
    builder: auto::Builder<TokioExecutor>,
    registry: Arc<Registry>,
    timing: Timing,
    /// The TLS handshake each connection starts with (`--ssl-certfile`).
    tls: Option<Acceptor>,
}

impl<S> Conns<S> {
    /// Serves one accepted connection on its own task, after its TLS handshake with TLS on.
    fn spawn<B, I>(&self, io: I, peer: Peer, open: Option<crate::shared::balance::OpenConnection>)
    where
        S: HttpService<B>,
        B: ResponseBody,
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let held = (
            self.registry.enter(),
            open,
            self.service.counters.connection_opened(),
        );
        if let Some(tls) = &self.tls {
            let (tls, conns) = (tls.clone(), self.clone());
            tokio::spawn(async move {
                if let Some(io) = tls.handshake(io).await {
                    conns.serve::<B, _>(io, peer, held).await;
                }
            });
            return;
        }
        // Spawned as it is: a future awaited inside another async block would be stored twice in
        // the task (the block's captured copy and the awaited one).
        tokio::spawn(self.serve::<B, _>(io, peer, held));
    }

    /// Serves `io` (plain, or decrypted) until the connection ends, holding what counts it open.
    fn serve<B, I>(
        &self,
        io: I,
        peer: Peer,
        held: (
            Open,
            Option<crate::shared::balance::OpenConnection>,
            OpenConnection,
        ),
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        S: HttpService<B>,
        B: ResponseBody,
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let requests = Arc::new(ConnRequests::default());
        let service = self.service.for_connection(requests.clone(), peer);
        let io = Deadlines::new(
            io,
            requests.clone(),
            self.timing.keep_alive,
            self.timing.header,
            self.service.counters,
        );
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let idle = Idle {
            keep_alive: self.timing.keep_alive,
            first_request: self.timing.header.max(self.timing.keep_alive),
        };
        async move {
            let (entered, open, counted) = held;
            if let Err(e) = connection::drive(conn, requests, entered, idle).await {
                tracing::debug!("connection ended with an error: {e}");
            }
            drop((open, counted));
        }
    }
}

impl<I, S, B> Served for auto::UpgradeableConnection<'static, I, Guarded<S>, TokioExecutor>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + HttpService<B>,
    B: ResponseBody,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

async fn accept_loop<S, B>(
    listener: AsyncListener,
    conns: Conns<S>,
    mut stop: watch::Receiver<Stop>,
    mut balancer: Option<Balancer>,
    member: Option<Member>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    let mut errors = AcceptErrors::default();
    loop {
        if *stop.borrow() != Stop::Run {
            return;
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = listener.accept(balancer.as_mut()) => r,
        };
        match accepted {
            Ok(io) => {
                errors.succeeded();
                let open = member.as_ref().map(Member::opened);
                match io {
                    Stream::Tcp(s) => {
                        let _ = s.set_nodelay(true);
                        // A peer gone already fails its first read; it is logged as the wildcard.
                        let peer = s.peer_addr().unwrap_or(UNKNOWN_PEER);
                        conns.spawn::<B, _>(s, Peer::Tcp(peer), open);
                    }
                    Stream::Unix(s) => conns.spawn::<B, _>(s, Peer::Unix, open),
                }
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: back off instead of spinning.
                errors.failed(&e);
                tokio::time::sleep(AcceptErrors::BACKOFF).await;
            }
        }
    }
}
