//! The service wrapper every request passes through before the app: the readiness path (see
//! [`crate::worker::readiness`]), request checks that answer on the app's behalf (400 for a bad
//! `Host`, 413, 503 beyond the concurrency limit), a panicking handler
//! turned into a 500, `Connection: close` once the worker drains, and the request's life reported to
//! the connection's deadlines (from the header's arrival until the response body is sent).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::{Either, Empty};
use hyper::body::{Body, Buf, Frame, Incoming, SizeHint};
use hyper::header::{
    ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, HOST, HeaderValue, RETRY_AFTER,
};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use crate::app::BoxError;
use crate::config::access::AccessSettings;
use crate::shared::balance::Member;
use crate::shared::stats::{Counters, InFlight};
use crate::worker::access::{self, Peer, Record};
use crate::worker::deadlines::{ConnRequests, RequestGuard};
use crate::worker::readiness::Readiness;
use crate::worker::response_headers::Extra;

/// Called with the request count when a worker reaches its request limit.
pub(crate) type OnMaxRequests = Arc<dyn Fn(u64) + Send + Sync>;

/// Wraps a service: answers 400/413/503 on the app's behalf, and once draining, HTTP/1 responses
/// carry `Connection: close`.
#[derive(Clone)]
pub(crate) struct Guarded<S> {
    pub(crate) inner: S,
    pub(crate) draining: Arc<AtomicBool>,
    /// The worker's counters in shared memory (in-flight requests, responses, rejections).
    pub(crate) counters: Counters,
    pub(crate) limit: Option<usize>,
    /// Largest declared body; zero: no limit.
    pub(crate) limit_body: u64,
    /// Requests accepted so far (counted only with a request limit).
    pub(crate) served: Arc<AtomicU64>,
    /// The request limit and what to call when it is reached.
    pub(crate) max_requests: Option<(u64, OnMaxRequests)>,
    /// This connection's requests, for its deadlines (set per connection).
    pub(crate) conn: Option<Arc<ConnRequests>>,
    /// The access log and proxy-header settings.
    pub(crate) access: Arc<AccessSettings>,
    /// This connection's peer (set per connection).
    pub(crate) peer: Peer,
    /// Whether the peer may set proxy headers (unix-socket peers may).
    pub(crate) peer_trusted: bool,
    /// Packed accept's shedding: this worker's balance entry, and when it last shed a connection.
    pub(crate) shed: Option<(crate::shared::balance::Member, Arc<AtomicU64>)>,
    /// Headers added to every response (`--header`, `--server-header`); `None`: none.
    pub(crate) headers: Option<&'static Extra>,
    /// The readiness path, answered before the app (`--readiness-path`); `None`: off.
    pub(crate) readiness: Option<Readiness>,
}

impl<S: Clone> Guarded<S> {
    /// A copy for one connection, from `peer`.
    pub(crate) fn for_connection(&self, conn: Arc<ConnRequests>, peer: Peer) -> Guarded<S> {
        let peer_trusted = match peer {
            Peer::Tcp(addr) => self.access.trusted.contains(addr.ip()),
            Peer::Unix => true,
        };
        Guarded {
            conn: Some(conn),
            peer,
            peer_trusted,
            ..self.clone()
        }
    }
}

/// The response body: the app's, or an empty one hyperfork answered with, tracked until sent.
pub(crate) type GuardedBody<B> = Tracked<Inner<B>>;

/// The app's body or hyperfork's empty one.
pub(crate) type Inner<B> = Either<B, Empty<<B as Body>::Data>>;

pin_project_lite::pin_project! {
    /// A response body with what ends when it is sent in full or dropped: its request's guard (the
    /// connection knows a response is still going out) and its access-log record (the bytes sent
    /// are counted, the line written at the end).
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        request: Option<RequestGuard>,
        record: Option<Box<Record>>,
        counted: Option<Counted>,
    }

    impl<B> PinnedDrop for Tracked<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(counted) = this.counted.take() {
                counted.done();
            }
            if let Some(record) = this.record.take() {
                record.emit();
            }
        }
    }
}

/// A response to count once it is sent in full (or abandoned): its status and when its request
/// arrived.
struct Counted {
    counters: Counters,
    start: Instant,
    status: u16,
}

impl Counted {
    fn done(self) {
        self.counters.responded(self.status, self.start.elapsed());
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        match &frame {
            Poll::Ready(Some(Ok(f))) => {
                if let (Some(record), Some(data)) = (this.record.as_mut(), f.data_ref()) {
                    record.sent(data.remaining());
                }
            }
            Poll::Ready(None) => {
                this.request.take();
                if let Some(counted) = this.counted.take() {
                    counted.done();
                }
                if let Some(record) = this.record.take() {
                    record.emit();
                }
            }
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request's `Host` header is unacceptable (RFC 9112 §3.2), if it is.
fn bad_host(req: &Request<Incoming>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    match first {
        None if req.version() == Version::HTTP_11 => Some("no Host header"),
        None => None,
        Some(v) => (!v.as_bytes().iter().all(|&b| is_host_byte(b))).then_some("an invalid Host"),
    }
}

/// Whether `b` may appear in a Host value: a reg-name, an IP literal in brackets, a port.
fn is_host_byte(b: u8) -> bool {
    HOST_BYTES[usize::from(b)]
}

/// [`is_host_byte`] as a table, built at compile time: one load per byte of every request's `Host`.
static HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~%!$&'()*+,;=:[]";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

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
    type Future = Answer<S::Future, B>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let start = Instant::now();
        let (client, proto) = access::client(&req, self.peer, self.peer_trusted, &self.access);
        let record = self
            .access
            .format
            .as_ref()
            .map(|format| Box::new(Record::new(format, &req, client.clone(), start)));
        let extensions = req.extensions_mut();
        extensions.insert(client);
        if let Some(proto) = proto {
            extensions.insert(proto);
        }
        let headers = self.headers;
        self.answer(
            req,
            Finish {
                start,
                record,
                headers,
            },
        )
    }
}

impl<S, B> Guarded<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
{
    /// The checks, then the app's answer; `finish` counts it and logs it once it is sent.
    fn answer(&self, req: Request<Incoming>, finish: Finish) -> Answer<S::Future, B> {
        let counters = self.counters;
        let http1 = req.version() <= Version::HTTP_11;
        let draining = self.draining.clone();
        // The header is complete: the connection's header deadline no longer applies.
        let request = self.conn.as_ref().map(|c| c.start());
        // Before the Host check: a health checker speaking HTTP/1.0 without one gets its answer.
        if let Some(status) = self
            .readiness
            .and_then(|r| r.status(req.method(), req.uri().path()))
        {
            return ready(readiness(status, http1, &draining), counters, finish);
        }
        if http1 {
            if let Some(why) = bad_host(&req) {
                tracing::debug!("{} {}: {why}; answered 400", req.method(), req.uri().path());
                counters.rejected();
                return ready(closing(StatusCode::BAD_REQUEST), counters, finish);
            }
        }
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
                let mut resp = empty(StatusCode::PAYLOAD_TOO_LARGE);
                if http1 {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                counters.rejected();
                return ready(resp, counters, finish);
            }
        }
        let (now, guard) = counters.request_started();
        if self.limit.is_some_and(|limit| now >= limit as u64) {
            drop(guard);
            counters.limited();
            let mut resp = empty(StatusCode::SERVICE_UNAVAILABLE);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            if http1 && draining.load(Ordering::Relaxed) {
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            return ready(resp, counters, finish);
        }
        let (method, uri) = (req.method().clone(), req.uri().clone());
        // A panicking handler costs its request a 500, not the worker or the connection.
        let call = catch_unwind(AssertUnwindSafe(|| self.inner.call(req)));
        let (fut, panic) = match call {
            Ok(fut) => (Some(fut), None),
            Err(panic) => (None, Some(panic)),
        };
        Answer::App {
            fut,
            app: Some(AppCall {
                panic,
                guard,
                request,
                counters,
                finish,
                method,
                uri,
                http1,
                draining,
                shed: self.shed.clone(),
            }),
        }
    }
}

/// What an app's answer needs once its future is done.
pub(crate) struct AppCall {
    /// A panic of the app's `call` itself (before any future).
    panic: Option<Box<dyn std::any::Any + Send>>,
    /// The in-flight count, held while the app works.
    guard: InFlight,
    request: Option<RequestGuard>,
    counters: Counters,
    finish: Finish,
    method: Method,
    uri: Uri,
    http1: bool,
    draining: Arc<AtomicBool>,
    shed: Option<(Member, Arc<AtomicU64>)>,
}

impl AppCall {
    /// The response to send for the app's result (or its panic).
    fn finish<B: Body>(
        self,
        result: Result<Result<Response<B>, BoxError>, Box<dyn std::any::Any + Send>>,
    ) -> Result<Response<GuardedBody<B>>, BoxError> {
        drop(self.guard);
        let counters = self.counters;
        let mut resp = match result {
            Ok(resp) => resp?.map(Either::Left),
            Err(panic) => {
                counters.panicked();
                tracing::error!(
                    "handler for {} {} panicked ({}); answered 500",
                    self.method,
                    self.uri.path(),
                    panic_message(&panic)
                );
                empty(StatusCode::INTERNAL_SERVER_ERROR)
            }
        };
        let http1 = self.http1;
        let shed = http1 && self.shed.is_some_and(|(m, last)| m.should_shed(&last));
        if http1 && (shed || self.draining.load(Ordering::Relaxed)) {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Ok(tracked(resp, self.request, counters, self.finish))
    }
}

pin_project_lite::pin_project! {
    /// The guard's future: a response hyperfork gave on the app's behalf, or the app's future,
    /// polled under `catch_unwind`. A concrete type, not a boxed future: no allocation per request.
    #[project = AnswerProj]
    pub(crate) enum Answer<F, B: Body> {
        /// Answered by hyperfork (or already taken).
        Ready { resp: Option<Response<GuardedBody<B>>> },
        /// The app's answer; `fut` is `None` when its `call` panicked.
        App {
            #[pin]
            fut: Option<F>,
            app: Option<AppCall>,
        },
    }
}

impl<F, B, E> Future for Answer<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: Body,
{
    type Output = Result<Response<GuardedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const AFTER_END: &str = "the guard's answer was polled after it ended";
        match self.project() {
            AnswerProj::Ready { resp } => Poll::Ready(resp.take().ok_or_else(|| AFTER_END.into())),
            AnswerProj::App { fut, app } => {
                let result = match fut.as_pin_mut() {
                    Some(fut) => match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(r)) => Ok(r.map_err(Into::into)),
                        Err(panic) => Err(panic),
                    },
                    None => Err(app
                        .as_mut()
                        .and_then(|a| a.panic.take())
                        .unwrap_or_else(|| Box::new(AFTER_END))),
                };
                match app.take() {
                    Some(app) => Poll::Ready(app.finish(result)),
                    None => Poll::Ready(Err(AFTER_END.into())),
                }
            }
        }
    }
}

/// What happens once a response is sent: it is counted, and logged if the access log is on.
struct Finish {
    /// When the request's header arrived.
    start: Instant,
    /// The request's access-log line, if logged.
    record: Option<Box<Record>>,
    /// Headers every response gets.
    headers: Option<&'static Extra>,
}

/// A response hyperfork gives on the app's behalf, as the service's future.
fn ready<F, B: Body>(resp: Response<Inner<B>>, counters: Counters, finish: Finish) -> Answer<F, B> {
    Answer::Ready {
        resp: Some(tracked(resp, None, counters, finish)),
    }
}

/// `resp` with its body tracked: holding `request`, counted, and logged by the record, if any.
fn tracked<B: Body>(
    mut resp: Response<Inner<B>>,
    request: Option<RequestGuard>,
    counters: Counters,
    finish: Finish,
) -> Response<GuardedBody<B>> {
    let Finish {
        start,
        mut record,
        headers,
    } = finish;
    if let Some(extra) = headers {
        extra.apply(resp.headers_mut());
    }
    if let Some(record) = record.as_mut() {
        record.respond(&resp);
    }
    let counted = Some(Counted {
        counters,
        start,
        status: resp.status().as_u16(),
    });
    resp.map(|inner| Tracked {
        inner,
        request,
        record,
        counted,
    })
}

/// An empty response with `status`.
fn empty<B: Body>(status: StatusCode) -> Response<Inner<B>> {
    let mut resp = Response::new(Either::Right(Empty::new()));
    *resp.status_mut() = status;
    resp
}

/// The readiness path's answer: empty, never cached. A `503` closes an HTTP/1 connection (the server
/// is going away; the checker's next request opens a new one), and so does any answer of a draining
/// worker, like every other response.
fn readiness<B: Body>(
    status: StatusCode,
    http1: bool,
    draining: &AtomicBool,
) -> Response<Inner<B>> {
    let mut resp = empty(status);
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if http1 && (status == StatusCode::SERVICE_UNAVAILABLE || draining.load(Ordering::Relaxed)) {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// An empty response with `status` after which the connection closes.
fn closing<B: Body>(status: StatusCode) -> Response<Inner<B>> {
    let mut resp = empty(status);
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Polls a future, turning a panic into an error carrying the panic's payload.
pub(crate) struct CatchPanic<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(fut).poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bytes() {
        for ok in [
            "example.com",
            "example.com:8080",
            "[::1]:80",
            "127.0.0.1",
            "xn--bcher-kva.de",
            "",
        ] {
            assert!(ok.bytes().all(is_host_byte), "{ok}");
        }
        for bad in ["a b", "a/b", "a@b", "a\\b", "a?b", "a#b", "a\"b"] {
            assert!(!bad.bytes().all(is_host_byte), "{bad}");
        }
    }
}
