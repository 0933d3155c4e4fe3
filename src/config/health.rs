//! What the settings ask of workers: health (the heartbeat that proves a worker's event loop runs, and
//! the limits past which a worker is recycled, replaced the zero-downtime way: its successor is ready
//! before it stops), and the connection and request [`Limits`] each worker enforces.
//!
//! - **Heartbeat.** Every worker sends an `alive` message to the master from a task on its own
//!   runtime, every [`Health::beat_interval`]; a blocked runtime stops it. The master sends `SIGTERM`
//!   to a ready worker silent for longer than the timeout, `SIGKILL` [`KILL_GRACE`] later, and starts
//!   its replacement at once.
//! - **Requests.** A worker counts the requests it accepted; at its limit (`max_requests` plus its own
//!   random share of the jitter) it asks the master to replace it. The master replaces one worker at a
//!   time and queues the others' requests.
//! - **Memory.** The master reads each ready worker's resident set size every [`MEMORY_SAMPLE`] and
//!   replaces a worker past the limit.

use std::time::Duration;

/// How often the master samples workers' memory.
pub const MEMORY_SAMPLE: Duration = Duration::from_secs(2);
/// How long a worker killed for silence gets between `SIGTERM` and `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// The health settings, as the master and the workers use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Silence after which a worker is replaced; zero: never.
    pub timeout: Duration,
    /// Requests after which a worker is recycled; zero: never.
    pub max_requests: u64,
    /// Each worker adds a random `0..=max_requests_jitter` to `max_requests`.
    pub max_requests_jitter: u64,
    /// Resident memory in bytes past which a worker is recycled; zero: never.
    pub max_worker_memory: u64,
    /// A worker not ready this long after its fork is killed (a boot failure); zero: never.
    pub boot_timeout: Duration,
}

impl Health {
    /// How often a worker sends its heartbeat: a quarter of the timeout, between 50 ms and 1 s;
    /// `None` when the timeout is off (no heartbeat at all).
    pub fn beat_interval(&self) -> Option<Duration> {
        (!self.timeout.is_zero())
            .then(|| (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
    }

    /// This worker's request limit, with its share of the jitter drawn from `seed`.
    pub fn request_limit(&self, seed: u64) -> Option<u64> {
        if self.max_requests == 0 {
            return None;
        }
        let jitter = match self.max_requests_jitter {
            0 => 0,
            j => splitmix64(seed) % (j.saturating_add(1)).max(1),
        };
        Some(self.max_requests.saturating_add(jitter))
    }
}

/// A well-mixed 64-bit hash of `x` (SplitMix64's finalizer); enough to spread limits across workers.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The resident set size of `pid` in bytes, from `/proc/PID/statm`; `None` if it cannot be read.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

/// A size in MiB with one decimal, for log lines.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Connection and request limits a worker enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Idle keep-alive connections (no complete request header within it) are closed.
    pub timeout_keep_alive: Duration,
    /// Most requests served at once; beyond it, 503 at once.
    pub limit_concurrency: Option<usize>,
    /// A request header not complete this long after its first byte closes the connection.
    pub timeout_request_header: Duration,
    /// Requests declaring a larger body (`Content-Length`, bytes) get 413; zero: no limit.
    pub limit_request_body: u64,
    /// Requests with more header fields get 431.
    pub limit_request_fields: usize,
    /// Requests whose request line and headers are larger (bytes) get 431.
    pub limit_request_header_size: u64,
    /// The access log and the proxy headers.
    pub access: crate::config::access::AccessSettings,
    /// The headers every response gets (`--header`, `--server-header`, `--date-header`).
    pub response: crate::config::response::ResponseHeaders,
    /// The path the worker answers itself with the pool's readiness (`--readiness-path`).
    pub readiness_path: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_stay_within_the_jitter_and_differ_between_workers() {
        let h = Health {
            max_requests: 50,
            max_requests_jitter: 10,
            ..Health::default()
        };
        let limits: Vec<u64> = (0..100)
            .map(|seed| h.request_limit(seed).unwrap())
            .collect();
        assert!(limits.iter().all(|l| (50..=60).contains(l)));
        assert!(limits.iter().any(|l| *l != limits[0]));
        assert_eq!(Health::default().request_limit(1), None);
        let no_jitter = Health {
            max_requests: 7,
            ..Health::default()
        };
        assert_eq!(no_jitter.request_limit(99), Some(7));
    }

    #[test]
    fn the_beat_is_a_quarter_of_the_timeout_within_bounds() {
        let at = |secs| Health {
            timeout: Duration::from_secs(secs),
            ..Health::default()
        };
        assert_eq!(at(2).beat_interval(), Some(Duration::from_millis(500)));
        assert_eq!(at(30).beat_interval(), Some(Duration::from_secs(1)));
        assert_eq!(at(0).beat_interval(), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(rss_bytes(std::process::id() as i32).is_some_and(|b| b > 0));
    }
}
