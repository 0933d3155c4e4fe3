//! The built-in app the `hyperfork` binary serves; the reference app for tests and benchmarks.
//!
//! `GET /` answers `Hello, world!`, `GET /health` answers
//! `{"status":"ok","worker":SLOT,"pid":PID,"scheduler":false}`, anything else 404. On the worker
//! holding the scheduler lease, `/health` says `"scheduler":true` and adds each job's last run. Every response carries `x-worker: SLOT`.

use std::convert::Infallible;
use std::future::{Ready, ready};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::app::Worker;

/// The built-in hyper service. Cheap to clone: its bodies are reference-counted.
#[derive(Debug, Clone)]
pub struct BuiltinApp {
    slot: HeaderValue,
    health: Bytes,
    worker: Worker,
}

impl BuiltinApp {
    /// Builds the app for one worker (whatever its app state).
    pub fn new<S>(worker: &Worker<S>) -> BuiltinApp {
        BuiltinApp {
            slot: HeaderValue::from(worker.slot()),
            health: Bytes::from(format!(
                "{{\"status\":\"ok\",\"worker\":{},\"pid\":{},\"scheduler\":false}}",
                worker.slot(),
                worker.pid()
            )),
            worker: worker.identity(),
        }
    }

    fn health(&self) -> Bytes {
        let status = self.worker.scheduler_status();
        if !status.is_holder() {
            return self.health.clone();
        }
        let body = serde_json::json!({
            "status": "ok",
            "worker": self.worker.slot(),
            "pid": self.worker.pid(),
            "scheduler": true,
            "jobs": status.jobs(),
        });
        Bytes::from(body.to_string())
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, ctype, body) = match (req.method(), req.uri().path()) {
            (&Method::GET | &Method::HEAD, "/") => (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"Hello, world!"),
            ),
            (&Method::GET | &Method::HEAD, "/health") => {
                (StatusCode::OK, "application/json", self.health())
            }
            (_, "/" | "/health") => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"Method Not Allowed"),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"Not Found"),
            ),
        };
        let mut resp = Response::new(Full::new(body));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert("x-worker", self.slot.clone());
        resp
    }
}

impl hyper::service::Service<Request<Incoming>> for BuiltinApp {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}
