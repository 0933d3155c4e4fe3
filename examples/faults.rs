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
//! ```text
//! HYPERFORK_FAULT=boot-error cargo run --example faults -- --workers 2
//! ```

use std::process::ExitCode;

use hyperfork::Worker;
use hyperfork::app::BuiltinApp;

fn build(worker: &Worker) -> Result<BuiltinApp, String> {
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
        _ => Ok(BuiltinApp::new(worker)),
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
