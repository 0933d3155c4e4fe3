//! What an app sees of hyperfork: the [`Worker`] handle it is built with, the factory types the master
//! forks with, the built-in app, and the scheduler status.

mod builtin;
pub(crate) mod status;
mod worker;

use std::future::Future;
use std::pin::Pin;

pub use builtin::BuiltinApp;
pub use status::{JobStatus, SchedulerStatus};
pub use worker::Worker;

use crate::shared::listener::Listener;
use crate::worker::serve::ServeControl;

/// The error type of app factories, handlers and jobs: any error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serving one worker's listeners until it drains.
pub(crate) type ServeFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;
/// What an app factory returns: the app, ready to serve a worker's listeners.
pub(crate) type Runner = Box<dyn FnOnce(Vec<Listener>, ServeControl) -> ServeFuture>;
/// Builds the app in each worker, after `fork`.
pub(crate) type AppFactory = Box<dyn Fn(&Worker) -> Result<Runner, BoxError>>;
