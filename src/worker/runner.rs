//! The app as the master carries it across the fork: an async start hook that builds the app state, a
//! factory that returns the app ready to serve the worker's listeners, and an async stop hook. All
//! three run in each worker, after `fork`, inside its runtime.
//!
//! They are stored with the state's type erased (`AnyState`); `Server<S>` builds all three from
//! closures typed with the same `S`, so turning the state back into an `Arc<S>` cannot fail.

use std::future::Future;
use std::pin::Pin;

use crate::app::state::AnyState;
use crate::app::{BoxError, Worker};
use crate::shared::listener::Listener;
use crate::worker::serve::ServeControl;

/// Serving one worker's listeners until it drains.
pub(crate) type ServeFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;
/// What an app factory returns: the app, ready to serve a worker's listeners.
pub(crate) type Runner = Box<dyn FnOnce(Vec<Listener>, ServeControl) -> ServeFuture>;
/// Builds the app in each worker, after the start hook.
pub(crate) type AppFactory = Box<dyn Fn(&Worker, &AnyState) -> Result<Runner, BoxError>>;
/// A hook's future.
pub(crate) type HookFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>>>>;
/// Builds the app state, before the worker reports ready.
pub(crate) type StartHook = Box<dyn Fn(&Worker) -> HookFuture<AnyState>>;
/// Runs after the drain, before the worker exits.
pub(crate) type StopHook = Box<dyn Fn(&Worker, &AnyState) -> HookFuture<()>>;

/// Everything a worker runs of the app.
pub(crate) struct App {
    /// Builds the state; without one the state is `()`.
    pub start: Option<StartHook>,
    /// Builds the service.
    pub factory: AppFactory,
    /// Runs after the drain.
    pub stop: Option<StopHook>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("start", &self.start.is_some())
            .field("stop", &self.stop.is_some())
            .finish_non_exhaustive()
    }
}
