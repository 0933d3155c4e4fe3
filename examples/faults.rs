//! The built-in app with injectable faults, for tests and for trying the master's recovery by hand.
//!
//! `HYPERFORK_FAULT` selects the fault:
//! - `boot-panic`: the app factory panics in every worker;
//! - `boot-error`: the app factory returns an error in every worker;
//! - `boot-panic-slot0`: only the worker in slot 0 panics at boot.
//!
//! ```text
//! HYPERFORK_FAULT=boot-error cargo run --example faults -- --workers 2
//! ```

use std::process::ExitCode;

use hyperfork::Worker;
use hyperfork::app::BuiltinApp;

fn build(worker: &Worker) -> Result<BuiltinApp, String> {
    match std::env::var("HYPERFORK_FAULT").as_deref() {
        Ok("boot-panic") => panic!("injected boot panic in worker {}", worker.slot()),
        Ok("boot-panic-slot0") if worker.slot() == 0 => panic!("injected boot panic in slot 0"),
        Ok("boot-error") => Err(format!(
            "injected boot error: database unreachable (worker {})",
            worker.slot()
        )),
        _ => Ok(BuiltinApp::new(worker)),
    }
}

fn main() -> ExitCode {
    hyperfork::Server::from_env_and_args()
        .try_hyper_app(build)
        .run()
}
