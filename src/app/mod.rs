//! What an app sees of hyperfork: the [`Worker`] handle it is built with, the built-in app, the
//! scheduler status, and the error type.

mod builtin;
pub(crate) mod state;
pub(crate) mod status;
mod worker;

pub use builtin::BuiltinApp;
pub use status::{JobStatus, SchedulerStatus};
pub use worker::Worker;

/// The error type of app factories, handlers and jobs: any error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
