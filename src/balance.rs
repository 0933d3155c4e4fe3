//! Load-aware accept: spreading connections evenly over the workers that share one listening socket.
//!
//! With a plain shared socket every idle worker is woken for a new connection and the first to run
//! takes it, so a burst of connections can land on one or two workers; with keep-alive, that worker
//! then serves those connections for their whole life (measured: a pool of 5 under 64 connections
//! left one worker with none). Here each worker publishes how many connections it has open, in a
//! small table of shared memory the master maps before forking. A worker woken for a new connection
//! that has more open than the least loaded peer still accepting waits a little (up to
//! [`MAX_WAIT`]) so that peer can take it; after that wait it accepts anyway, so a busy or stuck peer
//! never leaves a connection queued for long. This is Puma's wait-before-accept, made relative to the
//! peers rather than to the worker alone.
//!
//! Entries belong to processes, not slots: during a reload the old and new worker of a slot both
//! have one. A worker claims a free entry when it starts serving, marks it not accepting when it
//! drains, and the master frees it when it reaps the process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The longest a worker waits for a less loaded peer before accepting a connection itself.
pub const MAX_WAIT: Duration = Duration::from_millis(5);

/// How long one wait step lasts.
pub const WAIT_STEP: Duration = Duration::from_millis(1);

/// Entries in a table: more workers than this serve unbalanced.
pub const CAPACITY: usize = 1024;

#[repr(C)]
#[derive(Debug)]
struct Entry {
    /// The process owning this entry; 0 when free.
    pid: AtomicU32,
    /// 1 while the process accepts connections.
    accepting: AtomicU32,
    /// Connections the process has open.
    open: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
struct Shared {
    /// One past the highest entry ever claimed: readers scan no further.
    used: AtomicU32,
    entries: [Entry; CAPACITY],
}

/// The shared table; created by the master before it forks, inherited by every worker.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    shared: &'static Shared,
}

impl Table {
    /// Maps a zeroed table shared with every process forked from this one after the call.
    pub fn new() -> std::io::Result<Table> {
        let len = std::mem::size_of::<Shared>();
        // SAFETY: an anonymous shared mapping with no address hint has no preconditions; the result is
        // checked for MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the mapping is `len` bytes, page-aligned (so aligned for `Shared`), zero-filled by
        // the kernel (all-zero bytes are valid `AtomicU32`s), and never unmapped, so the reference is
        // valid for 'static. Other processes write it only through atomics, as this one does.
        let shared = unsafe { &*ptr.cast::<Shared>() };
        Ok(Table { shared })
    }

    /// The entries that may be in use.
    fn in_use(&self) -> &'static [Entry] {
        let used = self.shared.used.load(Ordering::Acquire) as usize;
        &self.shared.entries[..used.min(CAPACITY)]
    }

    /// Claims a free entry for `pid`, starting the search at `hint`; `None` if the table is full.
    pub fn join(&self, pid: u32, hint: usize) -> Option<Member> {
        let n = CAPACITY;
        (0..n).map(|i| (hint + i) % n).find_map(|i| {
            let e = &self.shared.entries[i];
            e.pid
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .ok()
                .map(|_| {
                    self.shared.used.fetch_max(i as u32 + 1, Ordering::AcqRel);
                    e.open.store(0, Ordering::Relaxed);
                    e.accepting.store(1, Ordering::Release);
                    Member {
                        table: *self,
                        me: i,
                    }
                })
        })
    }

    /// Frees the entry of `pid`, a process that has exited (called by the master when reaping it).
    pub fn release(&self, pid: u32) {
        for e in self.in_use() {
            if e.pid.load(Ordering::Acquire) == pid {
                e.accepting.store(0, Ordering::Relaxed);
                e.open.store(0, Ordering::Relaxed);
                e.pid.store(0, Ordering::Release);
                return;
            }
        }
    }

    /// The least number of open connections among accepting processes other than `me`.
    fn least_open_besides(&self, me: usize) -> Option<u32> {
        self.in_use()
            .iter()
            .enumerate()
            .filter(|(i, e)| {
                *i != me
                    && e.pid.load(Ordering::Relaxed) != 0
                    && e.accepting.load(Ordering::Relaxed) == 1
            })
            .map(|(_, e)| e.open.load(Ordering::Relaxed))
            .min()
    }
}

/// One worker's entry in the table.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    table: Table,
    me: usize,
}

impl Member {
    fn entry(&self) -> &'static Entry {
        &self.table.shared.entries[self.me]
    }

    /// Whether this worker should leave a new connection to a less loaded peer.
    pub fn should_wait(&self) -> bool {
        let mine = self.entry().open.load(Ordering::Relaxed);
        self.table
            .least_open_besides(self.me)
            .is_some_and(|least| mine > least)
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn opened(&self) -> OpenConnection {
        let entry = self.entry();
        entry.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(entry)
    }

    /// Marks this worker as no longer accepting (it is draining): peers stop deferring to it.
    pub fn stop_accepting(&self) {
        self.entry().accepting.store(0, Ordering::Relaxed);
    }
}

/// One open connection of a worker; dropping it closes the count.
#[derive(Debug)]
pub struct OpenConnection(&'static Entry);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_busier_worker_waits_for_the_idle_one() {
        let t = Table::new().unwrap();
        let a = t.join(101, 0).unwrap();
        let b = t.join(102, 0).unwrap();
        assert!(!a.should_wait() && !b.should_wait());
        let conn = a.opened();
        assert!(a.should_wait(), "a has 1 open, b has 0");
        assert!(!b.should_wait());
        let _b1 = b.opened();
        assert!(!a.should_wait(), "even again");
        drop(conn);
        assert!(b.should_wait());
    }

    #[test]
    fn draining_and_released_peers_are_not_waited_for() {
        let t = Table::new().unwrap();
        let a = t.join(201, 3).unwrap();
        let b = t.join(202, 3).unwrap();
        let _c = a.opened();
        assert!(a.should_wait());
        b.stop_accepting();
        assert!(!a.should_wait(), "b no longer accepts");
        t.release(202);
        assert!(!a.should_wait());
        let c = t.join(203, 3).unwrap();
        assert!(
            a.should_wait(),
            "a fresh worker in the freed entry starts at 0"
        );
        assert!(!c.should_wait());
    }

    #[test]
    fn the_table_is_shared_with_forked_children() {
        let t = Table::new().unwrap();
        let parent = t.join(std::process::id(), 0).unwrap();
        // SAFETY: the child only touches the shared table with atomics and then calls _exit, so no
        // state of the test harness's other threads is used.
        match unsafe { libc::fork() } {
            0 => {
                let child = t.join(1, 0);
                if let Some(c) = child {
                    std::mem::forget(c.opened());
                    std::mem::forget(c.opened());
                }
                // SAFETY: _exit ends the child without running the parent's destructors.
                unsafe { libc::_exit(0) };
            }
            -1 => panic!("fork failed"),
            pid => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        assert!(!parent.should_wait(), "the child has 2 open, the parent 0");
        let _p = parent.opened();
        let _q = parent.opened();
        let _r = parent.opened();
        assert!(parent.should_wait(), "3 open here, 2 in the child");
    }
}
