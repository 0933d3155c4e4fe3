//! The baseline: a single-process hyper server on a multi-thread tokio runtime, one thread per core,
//! answering `GET /` with the same response the hyperfork binary sends (status, headers, 13-byte body).
//! It runs as this benchmark's own executable, started with [`ROLE_VAR`] set.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Set to `baseline` (with `HYPERFORK_BENCH_ADDR` and `HYPERFORK_BENCH_THREADS`) to run the baseline,
/// or to `bare` (with `HYPERFORK_BENCH_ADDR` and `HYPERFORK_BENCH_WORKERS`) to run the bare fork pool
/// ([`crate::bare`]).
pub const ROLE_VAR: &str = "HYPERFORK_BENCH_ROLE";

/// The address the role serves on, from `HYPERFORK_BENCH_ADDR`.
pub fn role_addr(role: &str) -> Result<SocketAddr, String> {
    match std::env::var("HYPERFORK_BENCH_ADDR").map(|a| a.parse()) {
        Ok(Ok(a)) => Ok(a),
        _ => Err(format!(
            "{role}: HYPERFORK_BENCH_ADDR must be an address such as 127.0.0.1:8000"
        )),
    }
}

/// The answer every server of the comparison gives to `GET /`: 200, `content-type: text/plain;
/// charset=utf-8`, `x-worker`, and the 13-byte body.
pub fn hello(worker: &HeaderValue) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"Hello, world!")));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert("x-worker", worker.clone());
    resp
}

/// Serves until killed.
pub fn run() -> std::process::ExitCode {
    let addr = match role_addr("baseline") {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let threads = std::env::var("HYPERFORK_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1usize);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baseline: cannot build the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baseline: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(hello(&HeaderValue::from_static("0")))
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
