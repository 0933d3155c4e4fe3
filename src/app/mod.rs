//! What an app sees of hyperfork: the [`Worker`] handle it is built with, the built-in app, the
//! scheduler status, a worker's share of a budget ([`ShareError`]), and the error type.

mod builtin;
mod client;
pub(crate) mod share;
pub(crate) mod state;
pub(crate) mod status;
mod worker;

pub use builtin::BuiltinApp;
pub use client::{ClientAddr, ForwardedProto};
pub use share::ShareError;
pub use status::{JobStatus, SchedulerStatus};
pub use worker::Worker;

/// The error type of app factories, handlers and jobs: any error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
