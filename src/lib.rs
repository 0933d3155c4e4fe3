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
//!         .hyper_app(|worker: &hyperfork::Worker| hyperfork::app::BuiltinApp::new(worker))
//!         .run()
//! }
//! ```
#![deny(missing_docs)]
#![cfg(target_os = "linux")]

mod accept;
pub mod app;
pub mod balance;
pub mod cli;
pub mod config;
mod connection;
pub mod control;
pub mod cores;
pub mod error;
mod guard;
pub mod header_timeout;
pub mod health;
mod job_command;
pub mod jobs;
pub mod lease;
pub mod listener;
pub mod logging;
mod master;
pub mod pidfile;
pub mod pool;
pub mod proctitle;
mod run_set;
pub mod schedule;
pub mod scheduler;
pub mod serve;
mod server;
pub mod signals;
pub mod sizing;
pub mod systemd;
pub mod upgrade;
mod worker;

pub use config::Settings;
pub use error::{ConfigError, StartError};
pub use jobs::{Job, JobContext, JobResult};
pub use master::Outcome;
pub use schedule::{Cron, Every, Schedule, ScheduleError};
pub use scheduler::SchedulerStatus;
pub use server::{AppError, EXIT_BOOT, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, Server};
pub use sizing::Plan;
pub use worker::{EXIT_BOOT_FAILURE, Worker};
