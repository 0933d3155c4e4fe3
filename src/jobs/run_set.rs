//! The job runs a scheduler has going: each run is a task that leaves the set the moment it ends, so
//! the set holds exactly the runs in progress however many have run before (a set that kept finished
//! runs until the scheduler stopped grew by every run, about 1 KiB each).

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The runs in progress.
#[derive(Debug, Default)]
pub(crate) struct RunSet {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    running: HashMap<u64, AbortHandle>,
}

/// Removes its run from the set when the run's task ends, completed or aborted.
struct Leave {
    set: Arc<RunSet>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.set.lock().running.remove(&self.id);
        self.set.changed.notify_waiters();
    }
}

impl RunSet {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the map consistent: recover it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `run` as a task in the set.
    pub(crate) fn spawn<F>(self: &Arc<Self>, run: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Holding the lock across the spawn: the task cannot leave before it is entered.
        let mut state = self.lock();
        let id = state.next;
        state.next += 1;
        let leave = Leave {
            set: self.clone(),
            id,
        };
        let task = tokio::spawn(async move {
            let _leave = leave;
            run.await;
        });
        state.running.insert(id, task.abort_handle());
    }

    /// Runs in progress.
    pub(crate) fn len(&self) -> usize {
        self.lock().running.len()
    }

    /// Waits until no run is in progress.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Cancels every run in progress (each leaves the set as its task is dropped).
    pub(crate) fn abort_all(&self) {
        for task in self.lock().running.values() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finished_runs_leave_the_set_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let set = Arc::new(RunSet::default());
            for _ in 0..1000 {
                let (tx, rx) = tokio::sync::oneshot::channel();
                set.spawn(async move {
                    let _ = tx.send(());
                });
                let _ = rx.await;
                tokio::time::timeout(Duration::from_secs(5), set.wait_empty())
                    .await
                    .expect("the finished run left the set");
                assert_eq!(set.len(), 0);
            }
            // Two long runs are counted, then aborted.
            set.spawn(std::future::pending());
            set.spawn(std::future::pending());
            tokio::task::yield_now().await;
            assert_eq!(set.len(), 2);
            set.abort_all();
            tokio::time::timeout(Duration::from_secs(5), set.wait_empty())
                .await
                .expect("aborted runs leave the set");
        });
    }
}
