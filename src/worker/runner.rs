//! The app as the master carries it across the fork: a factory called in each worker, after `fork`,
//! that returns the app ready to serve the worker's listeners.

use std::future::Future;
use std::pin::Pin;

use crate::app::{BoxError, Worker};
use crate::shared::listener::Listener;
use crate::worker::serve::ServeControl;

/// Serving one worker's listeners until it drains.
pub(crate) type ServeFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;
/// What an app factory returns: the app, ready to serve a worker's listeners.
pub(crate) type Runner = Box<dyn FnOnce(Vec<Listener>, ServeControl) -> ServeFuture>;
/// Builds the app in each worker, after `fork`.
pub(crate) type AppFactory = Box<dyn Fn(&Worker) -> Result<Runner, BoxError>>;
