//! Load-aware accept: spreading connections evenly over the workers that share one listening socket.
//!
//! With a plain shared socket every idle worker is woken for a new connection and the first to run
//! takes it, so a burst of connections can land on one or two workers; with keep-alive, that worker
//! then serves those connections for their whole life (measured: a pool of 5 under 64 connections
//! left one worker with none). Here each worker publishes, in a small table of shared memory the
//! master maps before forking:
//! - how many connections it has open;
//! - for each listener, whether its accept loop is *parked*: waiting for a connection, ready to take
//!   the next one the moment its event loop sees it;
//! - how many connections it accepted and how many it left to a peer (deferrals).
//!
//! A worker woken for a new connection leaves it to a peer only when that peer is parked on the same
//! listener and has at least [`MARGIN`] fewer connections open. The kernel wakes every worker waiting
//! on the socket for each new connection, so the parked peer was woken too and takes it; the deferring
//! worker does not sleep, it goes back to its own connections and to the listener. A worker stops
//! being parked the moment it wakes, before it looks at its peers, so two workers never defer to each
//! other for the same connection (each clears its flag, then reads the other's). Only if the
//! connection is still queued [`MAX_WAIT`] later (the peer's event loop is blocked) does the deferring
//! worker take it, and it then defers to that peer no more until the peer accepts again.
//!
//! The margin keeps short connections from deferring at all: a sequential client that opens a new
//! connection per request finds every worker at 0 or 1 open (the previous connection may still be
//! closing), and one connection of difference is noise, not load.
//!
//! ## Packed accept
//!
//! With `--accept packed` a woken worker first looks for a peer *earlier in the pool* (lower slot) that
//! keeps up: parked on the same listener, and whose event loop is idle or became busy less than
//! [`KEEPING_UP`] ago (it was woken by this very connection). If there is one, the connection is left
//! to it. So connections gather on the first workers for as long as their loops keep up, and the
//! others stay asleep: fewer runnable event loops than cores' worth of idle capacity, less switching.
//! A loop that has been busy without a pause for longer than that is lagging (a CPU-bound handler, a
//! blocking call, or simply full): new connections go past it to the next worker that keeps up; when
//! none does, the balanced rule above applies. Whether a loop is idle comes from the runtime itself
//! (its thread parks when it has nothing to do), published in the entry with the time it last woke.
//!
//! Keep-alive connections stay on the worker that accepted them. So that a worker which starts lagging
//! under connections it accepted while it kept up does not keep them all, it sheds: while its loop has
//! been busy for longer than [`SHED_AFTER`] and some peer's loop is idle, its HTTP/1 responses carry
//! `Connection: close` (at most one per [`SHED_EVERY`]); the client reconnects, and the new connection
//! goes to a worker that keeps up.
//!
//! Entries belong to processes, not slots: during a reload the old and new worker of a slot both
//! have one. A worker claims a free entry when it starts serving, marks it not accepting when it
//! drains, and the master frees it when it reaps the process.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// How long a deferred connection may stay queued before the deferring worker takes it itself.
pub const MAX_WAIT: Duration = Duration::from_millis(5);

/// A worker defers only to a peer with at least this many fewer connections open.
pub const MARGIN: u32 = 2;

/// Entries in a table: more workers than this serve unbalanced.
pub const CAPACITY: usize = 1024;

/// Listeners per worker that can be balanced (one parked bit each); later ones accept unbalanced.
pub const MAX_LISTENERS: usize = 32;

/// Packed accept: a peer whose loop became busy less than this long ago still keeps up.
pub const KEEPING_UP: Duration = Duration::from_millis(2);

/// Packed accept: a loop busy without a pause for longer than this sheds keep-alive connections.
pub const SHED_AFTER: Duration = Duration::from_millis(2);

/// Packed accept: at most one connection shed per this long.
pub const SHED_EVERY: Duration = Duration::from_millis(2);

/// Microseconds of the monotonic clock, the same in every process of the machine.
pub fn now_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the local it is given; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// This process's entry, for the runtime's park and unpark hooks (set when the worker joins).
static LOOP: std::sync::OnceLock<&'static Entry> = std::sync::OnceLock::new();

/// The runtime's thread is about to wait for work (installed as tokio's `on_thread_park`).
pub fn loop_parked() {
    if let Some(e) = LOOP.get() {
        e.idle.fetch_add(1, Ordering::SeqCst);
    }
}

/// The runtime's thread has work again (installed as tokio's `on_thread_unpark`).
pub fn loop_unparked() {
    if let Some(e) = LOOP.get() {
        e.busy_since_us.store(now_us(), Ordering::Relaxed);
        // Saturating: a thread of a multi-thread runtime may have parked before the entry was
        // published; from its first wake on, its parks and wakes pair up.
        let _ = e
            .idle
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

#[repr(C)]
#[derive(Debug)]
struct Entry {
    /// The process owning this entry; 0 when free.
    pid: AtomicU32,
    /// 1 while the process accepts connections.
    accepting: AtomicU32,
    /// Connections the process has open.
    open: AtomicU32,
    /// Bit `i` set while the accept loop of listener `i` is parked, waiting for a connection.
    parked: AtomicU32,
    /// Connections accepted.
    accepted: AtomicU64,
    /// Connections left to a less loaded peer.
    deferred: AtomicU64,
    /// The slot, for packed accept's order.
    rank: AtomicU32,
    /// Runtime threads parked (waiting for work); 0: every thread is busy.
    idle: AtomicU32,
    /// When a runtime thread last woke ([`now_us`]).
    busy_since_us: AtomicU64,
}

impl Entry {
    /// Whether this worker's loop keeps up at `now`: idle, or busy for less than `within`.
    fn keeps_up(&self, now: u64, within: Duration) -> bool {
        self.idle.load(Ordering::SeqCst) > 0
            || now.saturating_sub(self.busy_since_us.load(Ordering::Relaxed))
                < within.as_micros() as u64
    }
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
    /// Packed accept (else balanced).
    packed: bool,
}

impl Table {
    /// Maps a zeroed table shared with every process forked from this one after the call; `packed`:
    /// the workers use packed accept, else balanced.
    pub fn new(packed: bool) -> std::io::Result<Table> {
        // SAFETY: `Shared` is atomics only (all-zero is valid), written only through atomics.
        let shared = unsafe { super::shm::map_zeroed::<Shared>()? };
        Ok(Table { shared, packed })
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
                    e.parked.store(0, Ordering::SeqCst);
                    e.accepted.store(0, Ordering::Relaxed);
                    e.deferred.store(0, Ordering::Relaxed);
                    e.rank.store(hint as u32, Ordering::Relaxed);
                    e.idle.store(0, Ordering::SeqCst);
                    e.busy_since_us.store(now_us(), Ordering::Relaxed);
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
                e.parked.store(0, Ordering::SeqCst);
                e.open.store(0, Ordering::Relaxed);
                e.pid.store(0, Ordering::Release);
                return;
            }
        }
    }
}

/// One worker's entry in the table.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    table: Table,
    me: usize,
}

/// A peer a connection was left to, and how many connections that peer had accepted then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    index: usize,
    accepted: u64,
}

impl Member {
    fn entry(&self) -> &'static Entry {
        &self.table.shared.entries[self.me]
    }

    /// Whether the workers use packed accept.
    pub fn packed(&self) -> bool {
        self.table.packed
    }

    /// Publishes this process's event loop in the entry: its runtime's park and unpark hooks
    /// ([`loop_parked`], [`loop_unparked`]) write there from now on. The caller is the runtime's
    /// thread, running, so it counts as busy.
    pub fn publish_loop(&self) {
        let _ = LOOP.set(self.entry());
    }

    /// Packed accept: whether this worker should shed a keep-alive connection now (see the module
    /// documentation); `last_shed` is when it last did, and is updated when it says yes.
    pub fn should_shed(&self, last_shed: &AtomicU64) -> bool {
        if !self.table.packed {
            return false;
        }
        let now = now_us();
        let me = self.entry();
        if me.keeps_up(now, SHED_AFTER) {
            return false;
        }
        let last = last_shed.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SHED_EVERY.as_micros() as u64 {
            return false;
        }
        let peer_idle = self.table.in_use().iter().enumerate().any(|(i, e)| {
            i != self.me
                && e.pid.load(Ordering::Relaxed) != 0
                && e.accepting.load(Ordering::Relaxed) == 1
                && e.idle.load(Ordering::SeqCst) > 0
        });
        peer_idle
            && last_shed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn opened(&self) -> OpenConnection {
        let entry = self.entry();
        entry.open.fetch_add(1, Ordering::Relaxed);
        entry.accepted.fetch_add(1, Ordering::Relaxed);
        OpenConnection(entry)
    }

    /// Marks this worker as no longer accepting (it is draining): peers stop deferring to it.
    pub fn stop_accepting(&self) {
        self.entry().accepting.store(0, Ordering::Relaxed);
    }

    /// Connections this worker accepted and connections it left to a peer.
    pub fn counts(&self) -> (u64, u64) {
        let e = self.entry();
        (
            e.accepted.load(Ordering::Relaxed),
            e.deferred.load(Ordering::Relaxed),
        )
    }

    /// This worker's accept state for listener number `listener` (its position in the worker's list).
    pub fn for_listener(self, listener: usize) -> Balancer {
        Balancer {
            member: self,
            bit: (listener < MAX_LISTENERS).then(|| 1u32 << listener),
            unresponsive: None,
            leftover: false,
        }
    }
}

/// The balancing state of one accept loop (one listener of one worker).
#[derive(Debug)]
pub struct Balancer {
    member: Member,
    /// This listener's parked bit; `None`: the listener is not balanced.
    bit: Option<u32>,
    /// A peer that let a deferred connection wait out [`MAX_WAIT`], with its accept count then: not
    /// deferred to again until it accepts a connection.
    unresponsive: Option<Peer>,
    /// This worker took a deferred connection itself after [`MAX_WAIT`], past the runtime's
    /// readiness (which the deferral cleared): more connections may be queued behind it, and with
    /// edge-triggered readiness no new event will announce them. The next accept tries the socket
    /// before waiting.
    leftover: bool,
}

impl Balancer {
    /// A deferred connection was taken past the runtime's readiness: look at the socket again before
    /// waiting for it to become readable.
    pub fn took_past_readiness(&mut self) {
        self.leftover = true;
    }

    /// Whether the socket should be tried before waiting (see [`Balancer::took_past_readiness`]);
    /// clears the mark.
    pub fn take_leftover(&mut self) -> bool {
        std::mem::take(&mut self.leftover)
    }

    /// Marks the accept loop as parked (waiting for a connection) until the guard is dropped.
    pub fn park(&self) -> Parked {
        if let Some(bit) = self.bit {
            self.member.entry().parked.fetch_or(bit, Ordering::SeqCst);
        }
        Parked {
            entry: self.member.entry(),
            bit: self.bit.unwrap_or(0),
        }
    }

    /// The peer to leave a new connection to, if any: accepting, parked on this listener, and with
    /// at least [`MARGIN`] fewer connections open than this worker. Call it only while not parked, so
    /// that two workers never defer to each other; count a deferral with [`Balancer::deferred`].
    pub fn defer_to(&mut self) -> Option<Peer> {
        let bit = self.bit?;
        if self.member.table.packed {
            if let Some(peer) = self.earlier_keeping_up(bit) {
                return Some(peer);
            }
        }
        let me = self.member.me;
        let mine = self.member.entry().open.load(Ordering::Relaxed);
        if mine < MARGIN {
            return None;
        }
        if let Some(p) = self.unresponsive {
            let e = &self.member.table.shared.entries[p.index];
            if e.accepted.load(Ordering::Relaxed) != p.accepted {
                self.unresponsive = None;
            }
        }
        let skip = self.unresponsive.map(|p| p.index);
        let peer = self
            .member
            .table
            .in_use()
            .iter()
            .enumerate()
            .filter(|&(i, e)| {
                i != me
                    && Some(i) != skip
                    && e.parked.load(Ordering::SeqCst) & bit != 0
                    && e.pid.load(Ordering::Relaxed) != 0
                    && e.accepting.load(Ordering::Relaxed) == 1
            })
            .map(|(i, e)| (e.open.load(Ordering::Relaxed), i, e))
            .filter(|&(open, _, _)| open + MARGIN <= mine)
            .min_by_key(|&(open, _, _)| open)
            .map(|(_, index, e)| Peer {
                index,
                accepted: e.accepted.load(Ordering::Relaxed),
            })?;
        Some(peer)
    }

    /// Packed accept: the first peer in pool order (slot, then entry) before this worker that is
    /// accepting and keeping up, and either parked on this listener or busy (woken less than
    /// [`KEEPING_UP`] ago, so it reaches the listener within that time). The order is strict, so two workers never
    /// leave a connection to each other.
    fn earlier_keeping_up(&mut self, bit: u32) -> Option<Peer> {
        let me = self.member.me;
        let entries = self.member.table.in_use();
        let my_key = (entries[me].rank.load(Ordering::Relaxed), me);
        let now = now_us();
        let skip = self.unresponsive.map(|p| p.index);
        entries
            .iter()
            .enumerate()
            .filter(|&(i, e)| {
                (e.rank.load(Ordering::Relaxed), i) < my_key
                    && Some(i) != skip
                    // Parked on this listener, or woken a moment ago and so about to look at it (it
                    // may have cleared its parked bit already, on its way to accept this connection).
                    && (e.parked.load(Ordering::SeqCst) & bit != 0 || e.idle.load(Ordering::SeqCst) == 0)
                    && e.pid.load(Ordering::Relaxed) != 0
                    && e.accepting.load(Ordering::Relaxed) == 1
                    && e.keeps_up(now, KEEPING_UP)
            })
            .min_by_key(|&(i, e)| (e.rank.load(Ordering::Relaxed), i))
            .map(|(index, e)| Peer {
                index,
                accepted: e.accepted.load(Ordering::Relaxed),
            })
    }

    /// Counts a connection left to a peer (once per connection, however often it is looked at).
    pub fn deferred(&self) {
        self.member.entry().deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection left to `peer` was still queued after [`MAX_WAIT`] and this worker took it: the
    /// peer is not taking connections now, so it is not deferred to until it accepts one.
    pub fn peer_missed(&mut self, peer: Peer) {
        let e = &self.member.table.shared.entries[peer.index];
        if e.accepted.load(Ordering::Relaxed) == peer.accepted {
            tracing::debug!(
                "a connection left to worker pid {} waited {} ms; taking it, and not deferring to \
                 that worker until it accepts again",
                e.pid.load(Ordering::Relaxed),
                MAX_WAIT.as_millis()
            );
            self.unresponsive = Some(peer);
        }
    }
}

/// An accept loop parked on its listener; dropping it clears the parked bit.
#[derive(Debug)]
pub struct Parked {
    entry: &'static Entry,
    bit: u32,
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.bit != 0 {
            self.entry.parked.fetch_and(!self.bit, Ordering::SeqCst);
        }
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

    /// `n` open connections on `m`, kept until the returned guards drop.
    fn open(m: &Member, n: usize) -> Vec<OpenConnection> {
        (0..n).map(|_| m.opened()).collect()
    }

    #[test]
    fn equal_or_nearly_equal_workers_never_defer() {
        let t = Table::new(false).unwrap();
        let a = t.join(101, 0).unwrap();
        let b = t.join(102, 0).unwrap();
        let (mut ba, bb) = (a.for_listener(0), b.for_listener(0));
        let _parked = bb.park();
        assert_eq!(ba.defer_to(), None, "0 and 0 open");
        let _one = open(&a, 1);
        assert_eq!(ba.defer_to(), None, "1 and 0 open: a closing connection");
        assert_eq!(a.counts(), (1, 0));
    }

    #[test]
    fn a_busier_worker_defers_only_to_a_parked_peer() {
        let t = Table::new(false).unwrap();
        let a = t.join(111, 0).unwrap();
        let b = t.join(112, 0).unwrap();
        let mut ba = a.for_listener(0);
        let bb = b.for_listener(0);
        let _two = open(&a, 2);
        assert_eq!(
            ba.defer_to(),
            None,
            "b is not parked: it is not going to take it"
        );
        let parked = bb.park();
        assert!(ba.defer_to().is_some(), "2 open against 0, b parked");
        ba.deferred();
        assert_eq!(a.counts(), (2, 1));
        drop(parked);
        assert_eq!(ba.defer_to(), None, "b woke up: it is no longer waiting");
        // Parked on another listener only.
        let _other = b.for_listener(1).park();
        assert_eq!(ba.defer_to(), None);
    }

    #[test]
    fn two_workers_never_defer_to_each_other() {
        let t = Table::new(false).unwrap();
        let a = t.join(121, 0).unwrap();
        let b = t.join(122, 0).unwrap();
        let (mut ba, mut bb) = (a.for_listener(0), b.for_listener(0));
        let _a_open = open(&a, 3);
        // Both parked; a connection wakes both. Each drops its parked flag before looking.
        let (pa, pb) = (ba.park(), bb.park());
        drop(pa);
        drop(pb);
        assert_eq!(ba.defer_to(), None);
        assert_eq!(bb.defer_to(), None);
    }

    #[test]
    fn a_peer_that_missed_a_deferred_connection_is_skipped_until_it_accepts() {
        let t = Table::new(false).unwrap();
        let a = t.join(131, 0).unwrap();
        let b = t.join(132, 0).unwrap();
        let mut ba = a.for_listener(0);
        let bb = b.for_listener(0);
        let _a_open = open(&a, 4);
        let _parked = bb.park();
        let peer = ba.defer_to().expect("b is parked and idle");
        ba.peer_missed(peer);
        assert_eq!(ba.defer_to(), None, "b let the connection wait");
        let _b_open = b.opened();
        assert!(ba.defer_to().is_some(), "b accepted again");
    }

    #[test]
    fn draining_and_released_peers_are_not_deferred_to() {
        let t = Table::new(false).unwrap();
        let a = t.join(201, 3).unwrap();
        let b = t.join(202, 3).unwrap();
        let mut ba = a.for_listener(0);
        let _a_open = open(&a, 2);
        let parked = b.for_listener(0).park();
        assert!(ba.defer_to().is_some());
        b.stop_accepting();
        assert_eq!(ba.defer_to(), None, "b no longer accepts");
        std::mem::forget(parked);
        t.release(202);
        assert_eq!(ba.defer_to(), None, "b exited");
        let c = t.join(203, 3).unwrap();
        let _pc = c.for_listener(0).park();
        assert!(
            ba.defer_to().is_some(),
            "a fresh worker in the freed entry starts at 0"
        );
    }

    #[test]
    fn packed_accept_leaves_a_connection_to_the_first_worker_that_keeps_up() {
        let t = Table::new(true).unwrap();
        let (a, b, c) = (
            t.join(301, 0).unwrap(),
            t.join(302, 1).unwrap(),
            t.join(303, 2).unwrap(),
        );
        let (la, mut lb, mut lc) = (a.for_listener(0), b.for_listener(0), c.for_listener(0));
        let (_pa, _pb) = (la.park(), lb.park());
        // a's and b's loops are idle; c, woken, leaves the connection to a (first in the pool).
        a.entry().idle.store(1, Ordering::SeqCst);
        b.entry().idle.store(1, Ordering::SeqCst);
        assert_eq!(lc.defer_to().map(|p| p.index), Some(a.me));
        assert_eq!(lb.defer_to().map(|p| p.index), Some(a.me));
        // a's loop has been busy for 10 ms: it lags; the next that keeps up is b.
        a.entry().idle.store(0, Ordering::SeqCst);
        a.entry()
            .busy_since_us
            .store(now_us() - 10_000, Ordering::Relaxed);
        assert_eq!(lc.defer_to().map(|p| p.index), Some(b.me));
        // b lags too: nobody earlier keeps up, and c has no more connections than they do: c takes it.
        b.entry().idle.store(0, Ordering::SeqCst);
        b.entry()
            .busy_since_us
            .store(now_us() - 10_000, Ordering::Relaxed);
        assert_eq!(lc.defer_to(), None);
        // A worker woken a moment ago (by this very connection) still keeps up.
        a.entry().busy_since_us.store(now_us(), Ordering::Relaxed);
        assert_eq!(lc.defer_to().map(|p| p.index), Some(a.me));
    }

    #[test]
    fn packed_accept_never_leaves_a_connection_to_a_later_worker() {
        let t = Table::new(true).unwrap();
        let (a, b) = (t.join(311, 0).unwrap(), t.join(312, 1).unwrap());
        let mut la = a.for_listener(0);
        let _pb = b.for_listener(0).park();
        b.entry().idle.store(1, Ordering::SeqCst);
        assert_eq!(la.defer_to(), None, "b comes after a");
    }

    #[test]
    fn a_lagging_packed_worker_sheds_only_while_a_peer_is_idle() {
        let t = Table::new(true).unwrap();
        let (a, b) = (t.join(321, 0).unwrap(), t.join(322, 1).unwrap());
        let last = AtomicU64::new(0);
        a.entry().busy_since_us.store(now_us(), Ordering::Relaxed);
        assert!(!a.should_shed(&last), "a keeps up");
        a.entry()
            .busy_since_us
            .store(now_us() - 20_000, Ordering::Relaxed);
        assert!(!a.should_shed(&last), "a lags but no peer is idle");
        b.entry().idle.store(1, Ordering::SeqCst);
        assert!(a.should_shed(&last));
        assert!(!a.should_shed(&last), "at most one per SHED_EVERY");
        let balanced = Table::new(false).unwrap();
        let c = balanced.join(331, 0).unwrap();
        c.entry().busy_since_us.store(0, Ordering::Relaxed);
        assert!(
            !c.should_shed(&AtomicU64::new(0)),
            "only packed accept sheds"
        );
    }

    #[test]
    fn the_table_is_shared_with_forked_children() {
        let t = Table::new(false).unwrap();
        let parent = t.join(std::process::id(), 0).unwrap();
        let mut pb = parent.for_listener(0);
        // SAFETY: the child only touches the shared table with atomics and then calls _exit, so no
        // state of the test harness's other threads is used.
        match unsafe { libc::fork() } {
            0 => {
                if let Some(c) = t.join(1, 0) {
                    std::mem::forget(c.for_listener(0).park());
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
        let _p = open(&parent, 2);
        assert!(
            pb.defer_to().is_some(),
            "the child is parked with 0 open, the parent has 2"
        );
    }
}
