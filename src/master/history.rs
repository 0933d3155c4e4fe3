//! The recent past, for the status page, `ctl status` and the tuning advice: about once a second the
//! master samples each slot's request counters (from shared memory, plus what the slot's exited
//! workers left behind), the listen queue and the workers' CPU time into fixed ring buffers, and keeps the last [`EVENTS`] worker exits, reloads and upgrades
//! with their wall-clock time.
//!
//! Rings are per slot, not per process, so a restarted worker's slot keeps its line. Each sample holds
//! the deltas since the previous one (requests, latency buckets, summed durations), so rates and
//! percentiles over the last minute are sums over samples. Memory is bounded: [`SAMPLES`] samples per
//! slot (allocated once, when the slot is first seen) and [`EVENTS`] events; taking a sample
//! allocates nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::shared::stats::{Counts, LATENCY_BOUNDS_US};

/// Samples kept per slot (and for the listen queue): two minutes at one a second.
pub(super) const SAMPLES: usize = 120;

/// Events kept.
pub(super) const EVENTS: usize = 50;

/// How often the master samples.
pub(super) const EVERY: Duration = Duration::from_secs(1);

/// The latency histogram's buckets, the last one unbounded.
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// What one slot did between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Sample {
    /// Milliseconds since the previous sample.
    pub interval_ms: u32,
    /// Responses sent.
    pub requests: u32,
    /// Responses by latency bucket.
    pub buckets: [u32; BUCKETS],
    /// Their durations' sum, microseconds.
    pub duration_us: u64,
    /// Requests in flight at the sample.
    pub in_flight: u32,
}

/// The whole pool at one sample: running totals, so a window's figure is a difference.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct PoolSample {
    /// Milliseconds since the previous sample.
    pub interval_ms: u32,
    /// The workers' CPU seconds (user + system), exited workers included.
    pub cpu_seconds: f64,
    /// 503s answered by `--limit-concurrency`, exited workers included.
    pub limited: u64,
    /// Connections waiting in the accept queues.
    pub queued: u32,
}

/// The pool's figures over a window, from the first sample in it to the newest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Recent {
    /// The window's length, seconds.
    pub seconds: f64,
    /// The workers' CPU time over it, seconds.
    pub cpu_seconds: f64,
    /// 503s from `--limit-concurrency` over it.
    pub limited: u64,
    /// The accept queue at its start, at its end, and the fewest seen.
    pub queue_first: u32,
    pub queue_last: u32,
    pub queue_min: u32,
}

/// A fixed ring of the last [`SAMPLES`] values, oldest first when read.
#[derive(Debug, Clone)]
pub(super) struct Ring<T> {
    items: Box<[T; SAMPLES]>,
    /// Where the next value goes.
    next: usize,
    len: usize,
}

impl<T: Copy + Default> Default for Ring<T> {
    fn default() -> Ring<T> {
        Ring {
            items: Box::new([T::default(); SAMPLES]),
            next: 0,
            len: 0,
        }
    }
}

impl<T: Copy> Ring<T> {
    /// Adds `v`, dropping the oldest value when full.
    pub fn push(&mut self, v: T) {
        self.items[self.next] = v;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// Every value, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + '_ {
        let start = (self.next + SAMPLES - self.len) % SAMPLES;
        (0..self.len).map(move |i| &self.items[(start + i) % SAMPLES])
    }
}

/// One slot's samples, and its counters' totals at the last sample.
#[derive(Debug, Clone, Default)]
pub(super) struct SlotHistory {
    pub samples: Ring<Sample>,
    last: Option<Counts>,
}

impl SlotHistory {
    /// Records the slot's counters now (`total`: every process that held it, exited ones included).
    fn record(&mut self, total: &Counts, interval: Duration) {
        let Some(last) = self.last.replace(*total) else {
            return;
        };
        let d = |now: u64, before: u64| now.saturating_sub(before);
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.samples.push(Sample {
            interval_ms: small(interval.as_millis() as u64).max(1),
            requests: small(d(total.requests(), last.requests())),
            buckets: std::array::from_fn(|i| small(d(total.buckets[i], last.buckets[i]))),
            duration_us: d(total.duration_us, last.duration_us),
            in_flight: small(total.in_flight),
        });
    }

    /// The samples of the last `window`, newest last.
    fn recent(&self, window: Duration) -> impl Iterator<Item = &Sample> + '_ {
        let mut left = window.as_millis() as u64;
        let newest_first: Vec<&Sample> = self
            .samples
            .iter()
            .rev()
            .take_while(|s| {
                let keep = left > 0;
                left = left.saturating_sub(u64::from(s.interval_ms));
                keep
            })
            .collect();
        newest_first.into_iter().rev()
    }

    /// Requests per second over the last `window`.
    pub fn rate(&self, window: Duration) -> f64 {
        let (n, ms) = self.recent(window).fold((0u64, 0u64), |(n, ms), s| {
            (n + u64::from(s.requests), ms + u64::from(s.interval_ms))
        });
        if ms == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / ms as f64
        }
    }

    /// The `q` quantile (0..1) of the latencies over the last `window`, seconds; `None` without
    /// requests.
    pub fn quantile(&self, q: f64, window: Duration) -> Option<f64> {
        let mut buckets = [0u64; BUCKETS];
        for s in self.recent(window) {
            for (b, n) in buckets.iter_mut().zip(s.buckets) {
                *b += u64::from(n);
            }
        }
        quantile(&buckets, q)
    }
}

/// The `q` quantile of a latency histogram (per bucket, not cumulative), seconds, interpolated
/// linearly inside its bucket like Prometheus' `histogram_quantile`; the unbounded bucket answers
/// the highest bound.
pub(super) fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = LATENCY_BOUNDS_US.get(i) else {
                break;
            };
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_US[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower as f64 + (upper - lower) as f64 * within) / 1e6);
        }
        below += n;
    }
    LATENCY_BOUNDS_US.last().map(|&b| b as f64 / 1e6)
}

/// What happened, for the event list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum EventKind {
    /// A worker process ended.
    Exit {
        slot: usize,
        pid: i32,
        cause: super::tally::Cause,
    },
    /// A reload ended.
    Reload(super::tally::Outcome),
    /// A binary upgrade ended.
    Upgrade(super::tally::Outcome),
}

/// One event, with its wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
}

/// The last [`EVENTS`] events, oldest first.
#[derive(Debug, Default)]
pub(super) struct EventLog {
    events: VecDeque<Event>,
}

impl EventLog {
    /// Records `kind`, now.
    pub fn push(&mut self, kind: EventKind) {
        if self.events.len() == EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            at: SystemTime::now(),
            kind,
        });
    }

    /// Every event kept, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Event> + '_ {
        self.events.iter()
    }
}

/// Every slot's history and the listen queue's.
#[derive(Debug, Default)]
pub(super) struct History {
    /// By slot; a slot keeps its history when its worker is replaced or the pool shrinks.
    pub slots: Vec<SlotHistory>,
    /// Connections waiting in the accept queues (summed over the TCP listeners).
    pub queue: Ring<u32>,
    /// The whole pool's running totals, for the tuning advice.
    pub pool: Ring<PoolSample>,
    last_at: Option<Instant>,
    next_at: Option<Instant>,
    /// Each slot's totals, reused from sample to sample.
    scratch: Vec<(usize, Counts)>,
}

impl History {
    /// When the next sample is due (`None`: now).
    pub fn next_at(&self) -> Option<Instant> {
        self.next_at
    }

    /// Whether a sample is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.next_at.is_none_or(|t| now >= t)
    }

    /// Records one sample: `totals` holds each slot's counters (every process that held it), `queued`
    /// the listen queue, `cpu_seconds` the workers' CPU time (exited ones included).
    pub fn record(
        &mut self,
        now: Instant,
        totals: &[(usize, Counts)],
        queued: u32,
        cpu_seconds: f64,
    ) {
        let interval = self
            .last_at
            .map_or(EVERY, |t| now.saturating_duration_since(t));
        self.last_at = Some(now);
        self.next_at = Some(now + EVERY);
        for (slot, total) in totals {
            if self.slots.len() <= *slot {
                self.slots.resize_with(slot + 1, SlotHistory::default);
            }
            self.slots[*slot].record(total, interval);
        }
        self.queue.push(queued);
        self.pool.push(PoolSample {
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            cpu_seconds,
            limited: totals.iter().map(|(_, c)| c.limit_concurrency).sum(),
            queued,
        });
    }

    /// The pool's figures over the last `window` (less if fewer samples were taken); `None` before
    /// two samples.
    pub fn recent(&self, window: Duration) -> Option<Recent> {
        let samples: Vec<&PoolSample> = self.pool.iter().collect();
        let newest = samples.len().checked_sub(1)?;
        let want = window.as_millis() as u64;
        let (mut first, mut ms) = (newest, 0u64);
        while first > 0 && ms < want {
            ms += u64::from(samples[first].interval_ms);
            first -= 1;
        }
        if first == newest {
            return None;
        }
        let (a, b) = (samples[first], samples[newest]);
        Some(Recent {
            seconds: ms as f64 / 1000.0,
            cpu_seconds: (b.cpu_seconds - a.cpu_seconds).max(0.0),
            limited: b.limited.saturating_sub(a.limited),
            queue_first: a.queued,
            queue_last: b.queued,
            queue_min: samples[first..].iter().map(|s| s.queued).min().unwrap_or(0),
        })
    }

    /// The history of `slot`, if it was ever sampled.
    pub fn slot(&self, slot: usize) -> Option<&SlotHistory> {
        self.slots.get(slot)
    }
}

impl super::Master<'_> {
    /// Takes a sample when one is due (always: `ctl status` and the advice read it too). Reads each
    /// worker's counters from shared memory, its CPU time from `/proc`, and each TCP listener's
    /// queue: a few system calls per worker, once a second.
    pub(super) fn sample_history(&mut self, now: Instant) {
        if !self.history.due(now) {
            return;
        }
        let slots = self
            .children
            .values()
            .map(|c| c.slot + 1)
            .chain([self.pool.size()])
            .max()
            .unwrap_or(0);
        let cpu: f64 = self.tally.retired_cpu.values().sum::<f64>()
            + self
                .children
                .keys()
                .filter_map(|pid| super::tally::cpu_seconds(pid.as_raw()))
                .sum::<f64>();
        let mut totals = std::mem::take(&mut self.history.scratch);
        totals.clear();
        totals.extend(
            (0..slots).map(|s| (s, self.tally.retired.get(&s).copied().unwrap_or_default())),
        );
        for (pid, c) in &self.children {
            if let (Some(counts), Some(t)) =
                (self.stats.read(pid.as_raw() as u32), totals.get_mut(c.slot))
            {
                t.1.add(&counts);
            }
        }
        let queued = self
            .args
            .listeners
            .iter()
            .filter_map(|l| l.queue())
            .map(|q| q.0)
            .sum();
        self.history.record(now, &totals, queued, cpu);
        self.history.scratch = totals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(requests_in_bucket: &[(usize, u64)]) -> Counts {
        let mut c = Counts::default();
        for &(b, n) in requests_in_bucket {
            c.buckets[b] += n;
            c.status[1] += n;
        }
        c
    }

    #[test]
    fn a_ring_keeps_the_last_values_oldest_first() {
        let mut r = Ring::<u32>::default();
        for i in 0..(SAMPLES as u32 + 5) {
            r.push(i);
        }
        assert_eq!(r.iter().count(), SAMPLES);
        let v: Vec<u32> = r.iter().copied().collect();
        assert_eq!(v.first(), Some(&5));
        assert_eq!(v.last(), Some(&(SAMPLES as u32 + 4)));
    }

    #[test]
    fn rates_and_percentiles_come_from_the_deltas() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(t0, &[(1, counts(&[(0, 1000)]))], 0, 0.0);
        assert_eq!(
            h.slot(1).map(|s| s.samples.iter().count()),
            Some(0),
            "a baseline"
        );
        // 99 fast requests and 1 slow one in a second.
        h.record(
            t0 + Duration::from_secs(1),
            &[(1, counts(&[(0, 1099), (10, 1)]))],
            3,
            0.0,
        );
        let s = h.slot(1).unwrap();
        assert_eq!(s.rate(Duration::from_secs(60)), 100.0);
        let p50 = s.quantile(0.5, Duration::from_secs(60)).unwrap();
        assert!(p50 > 0.0 && p50 <= 0.0005, "{p50}");
        let p99 = s.quantile(0.99, Duration::from_secs(60)).unwrap();
        assert!(p99 <= 0.0005, "{p99}: the 99th of 100 is still fast");
        let p100 = s.quantile(1.0, Duration::from_secs(60)).unwrap();
        assert!(p100 > 0.5 && p100 <= 1.0, "{p100}: the slow one's bucket");
        assert_eq!(h.slots.len(), 2, "slot 0 exists, never sampled");
        assert_eq!(h.queue.iter().copied().collect::<Vec<_>>(), [0, 3]);
    }

    #[test]
    fn counters_that_go_backwards_count_nothing() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(t0, &[(0, counts(&[(0, 10)]))], 0, 0.0);
        h.record(t0 + EVERY, &[(0, counts(&[(0, 4)]))], 0, 0.0);
        assert_eq!(h.slot(0).unwrap().rate(Duration::from_secs(60)), 0.0);
    }

    #[test]
    fn the_window_ends_at_the_newest_sample() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.record(t0, &[(0, counts(&[]))], 0, 0.0);
        h.record(t0 + EVERY, &[(0, counts(&[(3, 60)]))], 0, 0.0);
        for i in 2..=61 {
            h.record(t0 + EVERY * i, &[(0, counts(&[(3, 60)]))], 0, 0.0);
        }
        let s = h.slot(0).unwrap();
        assert_eq!(
            s.rate(Duration::from_secs(60)),
            0.0,
            "idle for the last minute"
        );
        assert_eq!(s.quantile(0.5, Duration::from_secs(60)), None);
        assert!(s.rate(Duration::from_secs(120)) > 0.0);
    }

    #[test]
    fn the_pools_window_is_a_difference_of_totals() {
        let mut h = History::default();
        let t0 = Instant::now();
        assert_eq!(h.recent(Duration::from_secs(60)), None);
        let limited = |n| Counts {
            limit_concurrency: n,
            ..Counts::default()
        };
        h.record(t0, &[(0, limited(2))], 0, 10.0);
        assert_eq!(h.recent(Duration::from_secs(60)), None, "one sample");
        for i in 1..=90u32 {
            h.record(
                t0 + EVERY * i,
                &[(0, limited(2 + u64::from(i)))],
                i,
                10.0 + f64::from(i),
            );
        }
        let r = h.recent(Duration::from_secs(60)).unwrap();
        assert_eq!(r.seconds, 60.0);
        assert_eq!(r.cpu_seconds, 60.0);
        assert_eq!(r.limited, 60);
        assert_eq!((r.queue_first, r.queue_last, r.queue_min), (30, 90, 30));
        let short = h.recent(Duration::from_secs(5)).unwrap();
        assert_eq!((short.seconds, short.queue_first), (5.0, 85));
    }

    #[test]
    fn the_event_log_is_bounded() {
        let mut log = EventLog::default();
        for i in 0..(EVENTS + 3) {
            log.push(EventKind::Exit {
                slot: 0,
                pid: i as i32,
                cause: super::super::tally::Cause::Signal,
            });
        }
        let pids: Vec<i32> = log
            .iter()
            .map(|e| match e.kind {
                EventKind::Exit { pid, .. } => pid,
                _ => -1,
            })
            .collect();
        assert_eq!(pids.len(), EVENTS);
        assert_eq!(pids[0], 3);
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
        let mut slow = [0; BUCKETS];
        slow[BUCKETS - 1] = 5;
        assert_eq!(quantile(&slow, 0.5), Some(10.0));
    }
}
