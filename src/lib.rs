//! hyperfork: a pre-fork master for Rust HTTP services.
//!
//! The master binds the listening socket(s) once, forks a pool of workers that inherit them, restarts
//! any worker that dies into the same slot (with back-off when it keeps dying), and shuts down
//! gracefully on `SIGTERM`. Each worker builds its own tokio runtime and serves a hyper or tower app.
//!
//! Use it as the `hyperfork` binary, or wrap your own app:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     hyperfork::Server::from_env_and_args()
//!         .hyper_app(|worker: &hyperfork::Worker| hyperfork::BuiltinApp::new(worker))
//!         .run()
//! }
//! ```
#![deny(missing_docs)]
#![cfg(target_os = "linux")]

mod app;
mod config;
mod ctl;
mod error;
mod jobs;
mod logging;
mod master;
mod server;
mod shared;
mod worker;

// The public API: the server builder, what an app and its jobs are given, and the exit codes.
pub use app::{
    BoxError, BuiltinApp, ClientAddr, ForwardedProto, JobStatus, SchedulerStatus, ShareError,
    Worker,
};
pub use error::{EXIT_BOOT, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
pub use jobs::schedule::{Cron, Every, Schedule, ScheduleError};
pub use jobs::{Delivery, Fence, Job, JobContext, JobResult};
pub use server::Server;
