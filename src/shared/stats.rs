//! The workers' request counters, in shared memory: each worker adds to its own entry with relaxed
//! atomics on its serving path, and the master reads every entry when asked (a `/metrics` scrape, a
//! `ctl status`), so the figures are fresh at that moment and no worker is woken to answer.
//!
//! Entries belong to processes, not slots (during a reload the old and new worker of a slot both
//! have one). A worker claims a free entry right after `fork`; the master reads an entry one last
//! time when it reaps the process (its final counts, which it adds to the slot's totals so that a
//! slot's counters never go backwards) and frees it.
//!
//! Only the owning process writes an entry, so each counter's cache line stays in one core's cache
//! under load; a scrape costs the workers nothing.
//!
//! The other way, the master publishes one pool-wide flag in the same mapping: *draining*, set when a
//! shutdown starts (at `SIGTERM`, before any `--shutdown-delay`), never cleared. Each worker reads it
//! through its [`PoolState`] when asked for the `--readiness-path`, so every worker, a worker forked
//! during the delay included, answers 503 from that moment without being told one by one.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Entries in the table: workers beyond this many alive at once count into a private entry the
/// master cannot see (it logs that once).
pub const CAPACITY: usize = 1024;

/// The latency histogram's upper bounds, in microseconds (Prometheus `le`, as seconds: 0.5 ms to
/// 10 s); one more bucket counts everything slower.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Buckets, the last one unbounded.
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// One worker's counters.
#[repr(C)]
#[derive(Debug)]
pub struct Entry {
    /// The owning process; 0 when free.
    pid: AtomicU32,
    /// Responses by status class: 1xx to 5xx.
    status: [AtomicU64; 5],
    /// Responses by duration, from the request header's arrival to the response body's end
    /// (per bucket, not cumulative).
    buckets: [AtomicU64; BUCKETS],
    /// The sum of those durations, microseconds.
    duration_us: AtomicU64,
    /// Requests the app is handling now.
    in_flight: AtomicU64,
    /// Connections open now.
    open: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// 503s answered because `--limit-concurrency` was reached.
    limit_concurrency: AtomicU64,
    /// 4xx answered by hyperfork for a request limit or a bad request (400 bad `Host`, 413).
    rejected: AtomicU64,
    /// Handlers that panicked (each answered 500).
    panics: AtomicU64,
    /// Bytes read from clients and written to them, on the wire (headers included, TLS excluded).
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// TLS handshakes that failed or did not complete within the header deadline.
    tls_failures: AtomicU64,
}

/// A copy of an entry's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Responses by status class, 1xx to 5xx.
    pub status: [u64; 5],
    /// Responses by duration bucket (see [`LATENCY_BOUNDS_US`]), not cumulative.
    pub buckets: [u64; BUCKETS],
    /// The durations' sum, microseconds.
    pub duration_us: u64,
    /// Requests in progress.
    pub in_flight: u64,
    /// Connections open.
    pub open: u64,
    /// Connections accepted.
    pub connections: u64,
    /// 503s from `--limit-concurrency`.
    pub limit_concurrency: u64,
    /// 4xx answered by hyperfork (request limits, bad `Host`).
    pub rejected: u64,
    /// Handler panics.
    pub panics: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// TLS handshakes failed or timed out.
    pub tls_failures: u64,
}

impl Counts {
    /// Responses in all.
    pub fn requests(&self) -> u64 {
        self.status.iter().sum()
    }

    /// Adds the totals of `other` (its gauges too: used for the counts of exited workers, whose
    /// gauges are zero, and for sums over workers).
    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.duration_us += other.duration_us;
        self.in_flight += other.in_flight;
        self.open += other.open;
        self.connections += other.connections;
        self.limit_concurrency += other.limit_concurrency;
        self.rejected += other.rejected;
        self.panics += other.panics;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.tls_failures += other.tls_failures;
    }

    /// The same counts without the gauges (in-flight, open): what an exited worker leaves behind.
    pub fn totals(mut self) -> Counts {
        self.in_flight = 0;
        self.open = 0;
        self
    }
}

#[repr(C)]
#[derive(Debug)]
struct Shared {
    /// One past the highest entry ever claimed: readers scan no further.
    used: AtomicU32,
    /// 1 once the master started shutting the pool down (written by the master only).
    draining: AtomicU32,
    entries: [Entry; CAPACITY],
}

/// The shared table; mapped by the master before it forks, inherited by every worker.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    shared: &'static Shared,
}

impl Table {
    /// Maps a zeroed table (about 200 KiB of address space; pages are touched only as entries are
    /// used).
    pub fn new() -> std::io::Result<Table> {
        // SAFETY: `Shared` is atomics only (all-zero is valid), written only through atomics.
        let shared = unsafe { super::shm::map_zeroed::<Shared>()? };
        Ok(Table { shared })
    }

    fn in_use(&self) -> &'static [Entry] {
        let used = self.shared.used.load(Ordering::Acquire) as usize;
        &self.shared.entries[..used.min(CAPACITY)]
    }

    /// Claims a free entry for `pid` (a worker, right after its fork), starting the search at
    /// `hint`; `None` when the table is full.
    pub fn join(&self, pid: u32, hint: usize) -> Option<Counters> {
        (0..CAPACITY).map(|i| (hint + i) % CAPACITY).find_map(|i| {
            let e = &self.shared.entries[i];
            e.pid
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .ok()
                .map(|_| {
                    e.reset();
                    self.shared.used.fetch_max(i as u32 + 1, Ordering::AcqRel);
                    Counters { entry: e }
                })
        })
    }

    /// Marks the pool as draining: from now on every worker's readiness answers 503 (the master
    /// calls this when a shutdown starts).
    pub fn set_draining(&self) {
        self.shared.draining.store(1, Ordering::Release);
    }

    /// The pool-wide state the master publishes, as a worker reads it.
    pub fn pool(&self) -> PoolState {
        PoolState {
            draining: &self.shared.draining,
        }
    }

    /// The counters of `pid` now, if it has an entry.
    pub fn read(&self, pid: u32) -> Option<Counts> {
        self.entry_of(pid).map(Entry::read)
    }

    /// The final counters of `pid`, a process that has exited, and its entry freed (the master calls
    /// this when it reaps the process).
    pub fn release(&self, pid: u32) -> Option<Counts> {
        let e = self.entry_of(pid)?;
        let counts = e.read();
        e.pid.store(0, Ordering::Release);
        Some(counts)
    }

    fn entry_of(&self, pid: u32) -> Option<&'static Entry> {
        if pid == 0 {
            return None;
        }
        self.in_use()
            .iter()
            .find(|e| e.pid.load(Ordering::Acquire) == pid)
    }
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            pid: AtomicU32::new(0),
            status: [const { AtomicU64::new(0) }; 5],
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            duration_us: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            open: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            limit_concurrency: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
        }
    }

    /// Zeroes every counter (a previous owner's are still there).
    fn reset(&self) {
        let all = self.status.iter().chain(&self.buckets).chain([
            &self.duration_us,
            &self.in_flight,
            &self.open,
            &self.connections,
            &self.limit_concurrency,
            &self.rejected,
            &self.panics,
            &self.bytes_in,
            &self.bytes_out,
            &self.tls_failures,
        ]);
        for c in all {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn read(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            status: std::array::from_fn(|i| load(&self.status[i])),
            buckets: std::array::from_fn(|i| load(&self.buckets[i])),
            duration_us: load(&self.duration_us),
            in_flight: load(&self.in_flight),
            open: load(&self.open),
            connections: load(&self.connections),
            limit_concurrency: load(&self.limit_concurrency),
            rejected: load(&self.rejected),
            panics: load(&self.panics),
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            tls_failures: load(&self.tls_failures),
        }
    }
}

/// A worker's handle on its own entry; copied into every connection and request.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    entry: &'static Entry,
}

impl Counters {
    /// An entry no other process sees: for a worker that found the table full, and for tests.
    pub fn private() -> Counters {
        Counters {
            entry: Box::leak(Box::new(Entry::new())),
        }
    }

    /// A response completed (its body sent, or abandoned) with `status` after `elapsed`.
    pub fn responded(&self, status: u16, elapsed: Duration) {
        let e = self.entry;
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        e.status[class].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        e.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        e.duration_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A request reached the app; returns how many were in flight before it. The count drops when
    /// the returned guard does.
    pub fn request_started(&self) -> (u64, InFlight) {
        let before = self.entry.in_flight.fetch_add(1, Ordering::Relaxed);
        (before, InFlight(self.entry))
    }

    /// A connection was accepted; it counts as open until the guard drops.
    pub fn connection_opened(&self) -> OpenConnection {
        self.entry.connections.fetch_add(1, Ordering::Relaxed);
        self.entry.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.entry)
    }

    /// A 503 answered for `--limit-concurrency`.
    pub fn limited(&self) {
        self.entry.limit_concurrency.fetch_add(1, Ordering::Relaxed);
    }

    /// A 4xx answered by hyperfork (a request limit, a bad `Host`).
    pub fn rejected(&self) {
        self.entry.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A handler panicked.
    pub fn panicked(&self) {
        self.entry.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` bytes read from a client.
    pub fn read(&self, n: usize) {
        self.entry.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes written to a client.
    pub fn wrote(&self, n: usize) {
        self.entry.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A TLS handshake failed or did not complete in time.
    pub fn tls_failed(&self) {
        self.entry.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the counters.
    #[cfg(test)]
    pub fn counts(&self) -> Counts {
        self.entry.read()
    }
}

/// What the master tells every worker about the pool (see [`Table::set_draining`]).
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    draining: &'static AtomicU32,
}

impl PoolState {
    /// A state no master writes: for tests.
    #[cfg(test)]
    pub fn private() -> PoolState {
        PoolState {
            draining: Box::leak(Box::new(AtomicU32::new(0))),
        }
    }

    /// Whether the pool is shutting down (a shutdown delay or the drain itself).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire) != 0
    }

    /// Marks it draining, as the master does: for tests.
    #[cfg(test)]
    pub fn set_draining(&self) {
        self.draining.store(1, Ordering::Release);
    }
}

/// A request in flight, counted until dropped.
#[derive(Debug)]
pub struct InFlight(&'static Entry);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An open connection, counted until dropped.
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
    fn responses_land_in_their_class_and_bucket() {
        let c = Counters::private();
        c.responded(200, Duration::from_micros(400));
        c.responded(204, Duration::from_micros(500));
        c.responded(404, Duration::from_millis(3));
        c.responded(503, Duration::from_secs(60));
        let n = c.counts();
        assert_eq!(n.status, [0, 2, 0, 1, 1]);
        assert_eq!(n.requests(), 4);
        // 400 µs and 500 µs are both ≤ 0.5 ms; 3 ms ≤ 5 ms; 60 s is past the last bound.
        assert_eq!(n.buckets[0], 2);
        assert_eq!(n.buckets[3], 1);
        assert_eq!(n.buckets[BUCKETS - 1], 1);
        assert_eq!(n.duration_us, 400 + 500 + 3_000 + 60_000_000);
    }

    #[test]
    fn gauges_follow_their_guards() {
        let c = Counters::private();
        let (before, a) = c.request_started();
        let (second, b) = c.request_started();
        assert_eq!((before, second), (0, 1));
        let conn = c.connection_opened();
        assert_eq!((c.counts().in_flight, c.counts().open), (2, 1));
        drop((a, b, conn));
        let n = c.counts();
        assert_eq!((n.in_flight, n.open, n.connections), (0, 0, 1));
    }

    #[test]
    fn the_master_reads_a_workers_entry_and_frees_it_on_exit() {
        let t = Table::new().unwrap();
        let c = t.join(4242, 3).unwrap();
        c.responded(500, Duration::ZERO);
        c.panicked();
        assert_eq!(t.read(4242).map(|n| (n.status[4], n.panics)), Some((1, 1)));
        let last = t.release(4242).unwrap();
        assert_eq!(last.requests(), 1);
        assert_eq!(t.read(4242), None);
        // The next owner starts from zero.
        let again = t.join(77, 3).unwrap();
        assert_eq!(again.counts(), Counts::default());
        assert_eq!(t.read(0), None, "pid 0 marks free entries");
    }

    #[test]
    fn a_worker_sees_the_pool_draining_once_the_master_says_so() {
        let t = Table::new().unwrap();
        let pool = t.pool();
        assert!(!pool.draining());
        t.set_draining();
        assert!(pool.draining() && t.pool().draining());
    }

    #[test]
    fn the_totals_of_an_exited_worker_have_no_gauges() {
        let mut sum = Counts::default();
        let n = Counts {
            in_flight: 2,
            open: 3,
            connections: 5,
            ..Counts::default()
        };
        sum.add(&n.totals());
        assert_eq!((sum.in_flight, sum.open, sum.connections), (0, 0, 5));
    }
}
