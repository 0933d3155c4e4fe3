//! The app state with its type erased, as the master's machinery carries it: `Server<S>` builds the
//! start hook, the app factory, the jobs and the stop hook from closures typed with the same `S`, so
//! turning the state back into an `Arc<S>` cannot fail.

use std::any::Any;
use std::sync::Arc;

use crate::app::BoxError;

/// The app state, type erased.
pub(crate) type AnyState = Arc<dyn Any + Send + Sync>;

/// The typed state behind `state`, or the error a mismatch (a bug in hyperfork) would be.
pub(crate) fn typed<S: Send + Sync + 'static>(state: &AnyState) -> Result<Arc<S>, BoxError> {
    state.clone().downcast::<S>().map_err(|_| {
        BoxError::from(format!(
            "internal error: the app state is not a {}",
            std::any::type_name::<S>()
        ))
    })
}

/// The state of an app without one.
pub(crate) fn no_state() -> AnyState {
    Arc::new(())
}
