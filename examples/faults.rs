//! The built-in app with injectable faults, for tests and for trying the master's recovery by hand.
//!
//! `HYPERFORK_FAULT` selects the fault:
//! - `boot-panic`: the app factory panics in every worker;
//! - `boot-error`: the app factory returns an error in every worker;
//! - `boot-panic-slot0`: only the worker in slot 0 panics at boot;
//! - `file:PATH`: the fault named in the file PATH (read at each worker's boot, so a test can break
//!   the next generation of a reload);
//! - `job-panic`: a scheduled job `flaky` runs every second and panics on every other run (the worker
//!   must survive it and run the next tick).
//!
//! `HYPERFORK_BOOT_ALLOC_MIB=N` makes every worker allocate N MiB at boot, touch every page and keep
//! it: a worker that weighs N MiB more, for the sizing tests.
//!
//! Routes on top of the built-in app's (`/`, `/health`), every response naming the worker
//! (`x-worker: SLOT`, `x-pid: PID`):
//! - `/sleep?ms=N`: answers after N ms, without blocking the worker;
//! - `/block?ms=N`: blocks the worker's runtime thread for N ms (a stuck event loop);
//! - `/work?us=N`: burns N µs of CPU on the worker's runtime thread (a spin loop reading the clock,
//!   not a sleep), then answers 200: a CPU-bound handler (the benchmark's CPU-bound scenario drives
//!   it, `benches/README.md`);
//! - `/panic`: the handler panics;
//! - `/alloc?mb=N`: allocates N MiB, touches every page, and keeps it for the worker's life;
//! - `/share?total=N`: this worker's `share_of(N)`, generation, pool size, surge and pid, as JSON
//!   (`{"share":7,"generation":1,"pool_size":3,"max_surge":1,"pid":PID}`); `500` with the error when
//!   N is too small;
//! - `/client`: the request's `hyperfork::ClientAddr` (the peer, or the trusted proxy's
//!   `X-Forwarded-For` client), as text.
//!
//! ```text
//! HYPERFORK_FAULT=boot-error cargo run --example faults -- --workers 2
//! cargo run --example faults -- --workers 2 --timeout 2 &  curl 'localhost:8000/block?ms=10000'
//! cargo run --release --example faults -- --workers 2 &  curl -i 'localhost:8000/work?us=500'
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::Service;
use hyper::{Request, Response};
use hyperfork::Worker;
use hyperfork::{BuiltinApp, ClientAddr};

/// Memory `/alloc` and `HYPERFORK_BOOT_ALLOC_MIB` keep.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The built-in app plus the fault routes.
#[derive(Clone)]
struct Faults {
    builtin: BuiltinApp,
    slot: HeaderValue,
    pid: HeaderValue,
    worker: Worker,
}

/// The number after `NAME=` in the query, if any.
fn param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

fn text(body: String) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from(body)))
}

/// Keeps the calling thread busy for `time`: a CPU-bound handler's work, without sleeping.
fn spin(time: Duration) {
    let start = Instant::now();
    while start.elapsed() < time {
        std::hint::spin_loop();
    }
}

/// `/share?total=N`: what `share_of(N)` gives this worker, with what it was computed from.
fn share(worker: &Worker, total: u64) -> Response<Full<Bytes>> {
    match worker.share_of(usize::try_from(total).unwrap_or(usize::MAX)) {
        Ok(share) => text(format!(
            "{{\"share\":{share},\"generation\":{},\"pool_size\":{},\"max_surge\":{},\"pid\":{}}}\n",
            worker.generation(),
            worker.pool_size(),
            worker.max_surge(),
            worker.pid()
        )),
        Err(e) => {
            let mut resp = text(format!("{e}\n"));
            *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            resp
        }
    }
}

impl Service<Request<Incoming>> for Faults {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (slot, pid) = (self.slot.clone(), self.pid.clone());
        let ms = param(&req, "ms").unwrap_or(0);
        let us = param(&req, "us").unwrap_or(0);
        let mb = param(&req, "mb").unwrap_or(0);
        let total = param(&req, "total").unwrap_or(0);
        let worker = self.worker.clone();
        let path = req.uri().path().to_string();
        let client = req.extensions().get::<ClientAddr>().cloned();
        let builtin = self.builtin.call(req);
        Box::pin(async move {
            let mut resp = match path.as_str() {
                "/sleep" => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    text(format!("slept {ms} ms\n"))
                }
                "/block" => {
                    tracing::info!("blocking the runtime for {ms} ms");
                    std::thread::sleep(Duration::from_millis(ms));
                    text(format!("blocked {ms} ms\n"))
                }
                "/work" => {
                    spin(Duration::from_micros(us));
                    text(format!("worked {us} us\n"))
                }
                "/panic" => panic!("injected handler panic"),
                "/alloc" => {
                    let size = usize::try_from(mb).unwrap_or(0) * 1024 * 1024;
                    // Touch every page so the memory counts in the worker's RSS.
                    let block = vec![1u8; size];
                    HELD.lock().unwrap_or_else(|e| e.into_inner()).push(block);
                    text(format!("holding {mb} MiB more\n"))
                }
                "/share" => share(&worker, total),
                "/client" => text(client.map_or_else(|| "none".into(), |c| c.to_string())),
                _ => builtin.await?,
            };
            resp.headers_mut().insert("x-worker", slot);
            resp.headers_mut().insert("x-pid", pid);
            Ok(resp)
        })
    }
}

fn build(worker: &Worker) -> Result<Faults, String> {
    if let Ok(text) = std::env::var("HYPERFORK_BOOT_ALLOC_MIB") {
        let mib: usize = text.trim().parse().map_err(|_| {
            format!("HYPERFORK_BOOT_ALLOC_MIB: expected a number of MiB, got {text:?}")
        })?;
        // Written, not only reserved: every page counts in the worker's RSS.
        let block = vec![1u8; mib * 1024 * 1024];
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(block);
    }
    let mut fault = std::env::var("HYPERFORK_FAULT").unwrap_or_default();
    if let Some(path) = fault.strip_prefix("file:") {
        fault = std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    match fault.as_str() {
        "boot-panic" => panic!("injected boot panic in worker {}", worker.slot()),
        "boot-panic-slot0" if worker.slot() == 0 => panic!("injected boot panic in slot 0"),
        "boot-error" => Err(format!(
            "injected boot error: database unreachable (worker {})",
            worker.slot()
        )),
        _ => Ok(Faults {
            builtin: BuiltinApp::new(worker),
            slot: HeaderValue::from(worker.slot()),
            pid: HeaderValue::from(worker.pid()),
            worker: worker.clone(),
        }),
    }
}

fn main() -> ExitCode {
    let server = hyperfork::Server::from_env_and_args().try_hyper_app(build);
    if std::env::var("HYPERFORK_FAULT").as_deref() == Ok("job-panic") {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        return server
            .job("flaky", hyperfork::Every::seconds(1), move |ctx| {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    if n % 2 == 0 {
                        panic!("injected job panic (run {n})");
                    }
                    tracing::info!("flaky job run {n} for tick {} ok", ctx.scheduled_at);
                }
            })
            .run();
    }
    server.run()
}
