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

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use http_body_util::{Either, Empty};
use std::time::Duration;

use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderValue, RETRY_AFTER};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::balance::{self, Member};
use crate::header_timeout::{ConnRequests, Deadlines};
use crate::listener::Listener;

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
}

/// Called with the request count when a worker reaches its request limit.
pub type OnMaxRequests = Arc<dyn Fn(u64) + Send + Sync>;

/// Connection and request limits a worker enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Idle keep-alive connections (no complete request header within it) are closed.
    pub timeout_keep_alive: Duration,
    /// Most requests served at once; beyond it, 503 at once.
    pub limit_concurrency: Option<usize>,
    /// A request header not complete this long after its first byte closes the connection.
    pub timeout_request_header: Duration,
    /// Requests declaring a larger body (`Content-Length`, bytes) get 413; zero: no limit.
    pub limit_request_body: u64,
    /// Requests with more header fields get 431.
    pub limit_request_fields: usize,
    /// Requests whose request line and headers are larger (bytes) get 431.
    pub limit_request_header_size: u64,
}

impl std::fmt::Debug for ServeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeControl")
            .field("graceful_timeout", &self.graceful_timeout)
            .finish_non_exhaustive()
    }
}

/// The header-field limit hyper applies when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// How long a draining worker lets keep-alive clients finish their next request before closing their
/// connections.
pub const KEEPALIVE_DRAIN: Duration = Duration::from_secs(2);

/// Wraps a service: answers 503 at once beyond the concurrency limit, and once draining, HTTP/1
/// responses carry `Connection: close`.
#[derive(Clone)]
struct Guarded<S> {
    inner: S,
    draining: Arc<AtomicBool>,
    inflight: Arc<AtomicUsize>,
    limit: Option<usize>,
    /// Largest declared body; zero: no limit.
    limit_body: u64,
    /// Requests accepted so far (counted only with a request limit).
    served: Arc<AtomicU64>,
    /// The request limit and what to call when it is reached.
    max_requests: Option<(u64, OnMaxRequests)>,
    /// This connection's requests, for its header deadline (set per connection).
    conn: Option<Arc<ConnRequests>>,
}

impl<S: Clone> Guarded<S> {
    /// A copy for one connection.
    fn for_connection(&self, conn: Arc<ConnRequests>) -> Guarded<S> {
        Guarded {
            conn: Some(conn),
            ..self.clone()
        }
    }
}

/// Decrements the in-flight count when a request's response is ready (or abandoned).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type GuardedBody<B> = Either<B, Empty<<B as Body>::Data>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Guarded<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<GuardedBody<B>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() <= hyper::Version::HTTP_11;
        let draining = self.draining.clone();
        // The header is complete: the connection's header deadline no longer applies.
        let request = self.conn.as_ref().map(|c| c.start());
        if let Some((max, on_max)) = &self.max_requests {
            let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
            if served == *max {
                on_max(served);
            }
        }
        if self.limit_body > 0 {
            let declared = req
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_some_and(|n| n > self.limit_body) {
                // The body is not read; the connection cannot be reused after it.
                let mut resp = empty(hyper::StatusCode::PAYLOAD_TOO_LARGE);
                if http1 {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                return Box::pin(async move { Ok(resp) });
            }
        }
        let now = self.inflight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.inflight.clone());
        if self.limit.is_some_and(|limit| now >= limit) {
            drop(guard);
            let mut resp = empty(hyper::StatusCode::SERVICE_UNAVAILABLE);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            if http1 && draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            return Box::pin(async move { Ok(resp) });
        }
        let (method, uri) = (req.method().clone(), req.uri().clone());
        // A panicking handler costs its request a 500, not the worker or the connection.
        let fut = catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        Box::pin(async move {
            let resp = match fut {
                Ok(fut) => CatchPanic(std::pin::pin!(fut)).await,
                Err(panic) => Err(panic),
            };
            drop(guard);
            drop(request);
            let mut resp = match resp {
                Ok(resp) => resp.map_err(Into::into)?.map(Either::Left),
                Err(panic) => {
                    tracing::error!(
                        "handler for {method} {} panicked ({}); answered 500",
                        uri.path(),
                        panic_message(&panic)
                    );
                    empty(hyper::StatusCode::INTERNAL_SERVER_ERROR)
                }
            };
            if http1 && draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

/// An empty response with `status`.
fn empty<B: Body>(status: hyper::StatusCode) -> Response<GuardedBody<B>> {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = status;
    resp
}

/// Polls a future, turning a panic into an error carrying the panic's payload.
struct CatchPanic<F>(F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Errors a service or body may return.
pub type BoxError = Box<dyn StdError + Send + Sync>;

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

/// A listening socket registered with the worker's runtime; accepted through [`accept`].
enum AsyncListener {
    Tcp(AsyncFd<std::net::TcpListener>),
    Unix(AsyncFd<std::os::unix::net::UnixListener>),
}

fn adopt(l: Listener) -> io::Result<AsyncListener> {
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

/// Registers a non-blocking listener with the current runtime, for readability.
fn register<T: AsRawFd>(listener: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `listener` owns its descriptor, and the AsyncFd owns `listener`: the descriptor stays
    // open, and is the same one, until the AsyncFd is dropped, which deregisters it first.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// Errors from `accept` that concern one connection only, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
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
    } = control;
    let draining = Arc::new(AtomicBool::new(false));
    let service = Guarded {
        inner: service,
        draining: draining.clone(),
        inflight: Arc::new(AtomicUsize::new(0)),
        limit: limits.limit_concurrency,
        limit_body: limits.limit_request_body,
        served: Arc::new(AtomicU64::new(0)),
        max_requests,
        conn: None,
    };
    let deadlines = (limits.timeout_keep_alive, limits.timeout_request_header);
    let graceful = Arc::new(GracefulShutdown::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.timeout_keep_alive)
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
    let mut accept_loops = tokio::task::JoinSet::new();
    for l in listeners {
        let listener = adopt(l)?;
        accept_loops.spawn(accept_loop(
            listener,
            service.clone(),
            builder.clone(),
            graceful.clone(),
            stop.clone(),
            deadlines,
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

    // One deadline bounds the whole drain: the keep-alive linger and the final shutdown.
    let deadline = tokio::time::Instant::now() + graceful_timeout;
    let open = graceful.count();
    if open > 0 {
        tracing::info!("draining {open} open connection(s)");
        let linger_until = tokio::time::Instant::now() + KEEPALIVE_DRAIN.min(graceful_timeout);
        while graceful.count() > 0 && tokio::time::Instant::now() < linger_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    match Arc::try_unwrap(graceful) {
        Ok(g) => {
            if tokio::time::timeout_at(deadline, g.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(
                    "graceful timeout ({}) reached with connections still open; closing them",
                    humantime::format_duration(graceful_timeout)
                );
            }
        }
        Err(_) => tracing::warn!("accept loops still hold the drain handle; not waiting"),
    }
    Ok(())
}

async fn accept_loop<S, B>(
    listener: AsyncListener,
    service: Guarded<S>,
    builder: auto::Builder<TokioExecutor>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<Stop>,
    (first_byte, header_timeout): (Duration, Duration),
    balance: Option<Member>,
) where
    S: HttpService<B>,
    B: ResponseBody,
{
    loop {
        if *stop.borrow() != Stop::Run {
            return;
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = accept(&listener, balance.as_ref()) => r,
        };
        match accepted {
            Ok(io) => {
                let open = balance.as_ref().map(Member::opened);
                let requests = Arc::new(ConnRequests::default());
                let service = service.for_connection(requests.clone());
                let conn = match io {
                    Stream::Tcp(s) => {
                        let _ = s.set_nodelay(true);
                        let io = Deadlines::new(s, requests, first_byte, header_timeout);
                        graceful.watch(
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(io), service)
                                .into_owned(),
                        )
                    }
                    .boxed(),
                    Stream::Unix(s) => {
                        let io = Deadlines::new(s, requests, first_byte, header_timeout);
                        graceful.watch(
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(io), service)
                                .into_owned(),
                        )
                    }
                    .boxed(),
                };
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended with an error: {e}");
                    }
                    drop(open);
                });
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS: back off instead of spinning.
                tracing::error!("accept failed: {e}; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &AsyncListener, balance: Option<&Member>) -> io::Result<Stream> {
    Ok(match l {
        AsyncListener::Tcp(fd) => Stream::Tcp(tokio::net::TcpStream::from_std(
            std::net::TcpStream::from(accept_fd(fd, balance).await?),
        )?),
        AsyncListener::Unix(fd) => Stream::Unix(tokio::net::UnixStream::from_std(
            std::os::unix::net::UnixStream::from(accept_fd(fd, balance).await?),
        )?),
    })
}

/// Waits for a connection on `listener` and accepts it (non-blocking, close-on-exec). With a balance
/// member, a worker busier than its least loaded peer first gives that peer up to
/// [`balance::MAX_WAIT`] to take the connection.
async fn accept_fd<T: AsRawFd>(
    listener: &AsyncFd<T>,
    balance: Option<&Member>,
) -> io::Result<OwnedFd> {
    let mut waited = Duration::ZERO;
    loop {
        let mut ready = listener.readable().await?;
        if let Some(member) = balance {
            if waited < balance::MAX_WAIT && member.should_wait() {
                // Readiness stays set: the next `readable` returns at once, to look again.
                drop(ready);
                tokio::time::sleep(balance::WAIT_STEP).await;
                waited += balance::WAIT_STEP;
                continue;
            }
        }
        match ready.try_io(|fd| {
            // SAFETY: accept4 with null address pointers only reads the listening descriptor, which
            // `fd` keeps open for the call.
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
        }) {
            Ok(result) => return result,
            // Another worker took it; readiness was cleared, wait for the next one.
            Err(_would_block) => continue,
        }
    }
}

type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

trait BoxedConn {
    fn boxed(self) -> ConnFuture;
}

impl<F> BoxedConn for F
where
    F: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn boxed(self) -> ConnFuture {
        Box::pin(self)
    }
}
