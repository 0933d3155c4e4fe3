//! `/metrics` in the Prometheus text format, served by the master itself on `--metrics-bind`, never on
//! the app's port; the same socket serves the status page (`/`, `/status`, `/status.json`: see
//! [`super::status_page`]).
//!
//! The master stays one thread with one poll loop: the metrics socket is one more file descriptor in
//! its poll set. One scrape is served at a time (others wait in the socket's small backlog); the
//! scrape's request must arrive within [`SCRAPE_DEADLINE`] and be at most [`MAX_REQUEST`] bytes, and
//! the answer is written as the socket takes it, a turn at a time, within the same deadline. A slow or
//! hostile scraper therefore never makes the loop wait.
//!
//! Every figure is read at scrape time: the workers' counters from shared memory, memory and CPU from
//! `/proc`, the accept queues from `TCP_INFO`. Labels: `worker` (the slot); a slot's counters add up
//! every process that held it, so they never go backwards when a worker is replaced.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Master;
use super::census::Census;
use super::endpoint::{Conn, Input};
use super::exposition::{CONTENT_TYPE, Page, Type};
use super::tally::{Cause, Outcome};
use crate::error::StartError;
use crate::shared::stats::{Counts, LATENCY_BOUNDS_US};

/// How long a scrape may take, from accept to the last byte of the answer.
pub(super) const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// The longest scrape request read (request line and headers).
const MAX_REQUEST: usize = 8192;

/// Connections waiting while a scrape is served.
const BACKLOG: i32 = 16;

/// The metrics socket and the scrape being served.
#[derive(Debug)]
pub(super) struct MetricsServer {
    listener: TcpListener,
    scrape: Option<Conn<TcpStream>>,
}

impl MetricsServer {
    /// Binds `addr` (`SO_REUSEPORT`, so a new master of a binary upgrade can bind it while this one
    /// still runs).
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer, StartError> {
        let fail = |source| StartError::Bind {
            address: format!("{addr} (--metrics-bind)"),
            source,
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.set_reuse_port(true).map_err(fail)?;
        socket.set_cloexec(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        socket.listen(BACKLOG).map_err(fail)?;
        socket.set_nonblocking(true).map_err(fail)?;
        let listener: TcpListener = socket.into();
        Ok(MetricsServer {
            listener,
            scrape: None,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// What to poll: the listener while no scrape is served, else the scrape (for reading or
    /// writing).
    pub fn poll_fd(&self) -> (std::os::fd::BorrowedFd<'_>, bool) {
        use std::os::fd::AsFd;
        match &self.scrape {
            Some(c) => (c.fd(), c.wants_write()),
            None => (self.listener.as_fd(), false),
        }
    }

    /// When the scrape being served is dropped.
    pub fn deadline(&self) -> Option<Instant> {
        self.scrape.as_ref().map(|c| c.deadline)
    }
}

/// A per-worker metric read from the counters: name, type, help, and how to read it.
type Field = (&'static str, Type, &'static str, fn(&Counts) -> u64);

/// The answer to a scrape's request.
enum Answer {
    Metrics {
        head: bool,
    },
    /// The status page (`/`, `/status`).
    Page {
        head: bool,
    },
    /// The status page's figures (`/status.json`).
    Json {
        head: bool,
    },
    Status(&'static str, &'static str),
}

/// Reads a request's first line: `GET /metrics` (or `HEAD`) gets the metrics.
fn answer_to(request: &[u8]) -> Answer {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Answer::Metrics {
            head: method == "HEAD",
        },
        ("GET" | "HEAD", "/" | "/status") => Answer::Page {
            head: method == "HEAD",
        },
        ("GET" | "HEAD", "/status.json") => Answer::Json {
            head: method == "HEAD",
        },
        ("GET" | "HEAD", _) => Answer::Status(
            "404 Not Found",
            "not found; try /metrics, /status or /status.json\n",
        ),
        _ => Answer::Status("405 Method Not Allowed", "only GET\n"),
    }
}

/// A whole HTTP/1.1 response that closes the connection.
fn response(status: &str, content_type: &str, body: &str, head: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        r.extend_from_slice(body.as_bytes());
    }
    r
}

impl Master<'_> {
    /// A turn of the metrics server: accept a scrape if none is served, read its request, answer it,
    /// write what the socket takes; drop it at its deadline.
    pub(super) fn serve_metrics(&mut self, now: Instant) {
        let Some(server) = self.metrics.as_mut() else {
            return;
        };
        if server.scrape.is_none() {
            match server.listener.accept() {
                Ok((stream, _)) if stream.set_nonblocking(true).is_ok() => {
                    server.scrape = Some(Conn::new(stream, now + SCRAPE_DEADLINE));
                }
                _ => return,
            }
        }
        let Some(scrape) = server.scrape.as_mut() else {
            return;
        };
        if scrape.expired(now) {
            tracing::debug!("metrics: a scrape took longer than {SCRAPE_DEADLINE:?}; dropped");
            server.scrape = None;
            return;
        }
        // Still reading the request (not answering, nor waiting for the scraper to close).
        if !scrape.wants_write() && !scrape.lingering() {
            match scrape.read(MAX_REQUEST) {
                Input::Closed => {
                    server.scrape = None;
                    return;
                }
                Input::TooLong => {
                    scrape.discard();
                    let r = response(
                        "431 Request Header Fields Too Large",
                        "text/plain",
                        "",
                        false,
                    );
                    scrape.send_last(&r);
                }
                Input::Waiting if !scrape.input.windows(4).any(|w| w == b"\r\n\r\n") => return,
                Input::Waiting => {
                    let r = match answer_to(&scrape.input) {
                        Answer::Metrics { head } => {
                            let page = self.metrics_page();
                            response("200 OK", CONTENT_TYPE, &page, head)
                        }
                        Answer::Page { head } => {
                            let page = self.status_page();
                            let html = super::status_page::html(&page);
                            response("200 OK", "text/html; charset=utf-8", &html, head)
                        }
                        Answer::Json { head } => {
                            let page = self.status_page();
                            let json = super::status_page::json(&page);
                            response("200 OK", "application/json", &json, head)
                        }
                        Answer::Status(status, body) => response(status, "text/plain", body, false),
                    };
                    if let Some(c) = self.metrics.as_mut().and_then(|s| s.scrape.as_mut()) {
                        c.send_last(&r);
                    }
                }
            }
        }
        if let Some(server) = self.metrics.as_mut() {
            if server.scrape.as_mut().is_some_and(|c| !c.write()) {
                server.scrape = None;
            }
        }
    }

    /// Every metric, now.
    pub(super) fn metrics_page(&mut self) -> String {
        let census = self.census();
        let mut p = Page::default();
        self.master_metrics(&mut p, &census);
        self.worker_metrics(&mut p, &census);
        self.job_metrics(&mut p);
        p.finish()
    }

    fn master_metrics(&self, p: &mut Page, census: &Census) {
        p.family(
            "hyperfork_build_info",
            Type::Gauge,
            "hyperfork's version (always 1).",
        );
        p.sample(
            "hyperfork_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1u64,
        );
        p.family(
            "hyperfork_master_start_time_seconds",
            Type::Gauge,
            "When the master started, Unix time.",
        );
        p.sample(
            "hyperfork_master_start_time_seconds",
            &[],
            unix_time_of(self.started),
        );
        p.family(
            "hyperfork_generation",
            Type::Gauge,
            "The configuration generation: 1 at start, +1 per reload.",
        );
        p.sample("hyperfork_generation", &[], self.generation);
        p.family(
            "hyperfork_pool_size",
            Type::Gauge,
            "Slots the master keeps filled with a worker.",
        );
        p.sample("hyperfork_pool_size", &[], self.pool.size());
        p.family(
            "hyperfork_workers",
            Type::Gauge,
            "Worker processes by state: booting, ready, replaced (serving until its replacement is \
             ready), draining.",
        );
        for state in ["booting", "ready", "replaced", "draining"] {
            let n = census.rows.iter().filter(|r| r.state == state).count();
            p.sample("hyperfork_workers", &[("state", state)], n);
        }
        p.family(
            "hyperfork_reloads_total",
            Type::Counter,
            "Reloads by result: completed, aborted (a new worker kept failing to boot), rejected \
             (the configuration or an address was refused, or another reload was running).",
        );
        for o in Outcome::ALL {
            let n = self.tally.reloads.get(&o).copied().unwrap_or(0);
            p.sample("hyperfork_reloads_total", &[("result", o.label())], n);
        }
        p.family(
            "hyperfork_upgrades_total",
            Type::Counter,
            "Binary upgrades by result: completed (the new master took over), aborted, rejected.",
        );
        for o in Outcome::ALL {
            let n = self.tally.upgrades.get(&o).copied().unwrap_or(0);
            p.sample("hyperfork_upgrades_total", &[("result", o.label())], n);
        }
        p.family(
            "hyperfork_listen_queue",
            Type::Gauge,
            "Connections waiting to be accepted on a TCP listening socket: above 0 for long, every \
             worker is busy.",
        );
        for s in &census.sockets {
            if let Some(q) = s.queued {
                p.sample(
                    "hyperfork_listen_queue",
                    &[("listener", &s.address)],
                    u64::from(q),
                );
            }
        }
        p.family(
            "hyperfork_listen_queue_limit",
            Type::Gauge,
            "The accept queue's limit (--backlog, capped by net.core.somaxconn).",
        );
        for s in &census.sockets {
            if let Some(b) = s.backlog {
                p.sample(
                    "hyperfork_listen_queue_limit",
                    &[("listener", &s.address)],
                    u64::from(b),
                );
            }
        }
    }

    fn worker_metrics(&self, p: &mut Page, census: &Census) {
        let slots: BTreeSet<usize> = (0..self.pool.size())
            .chain(census.rows.iter().map(|r| r.slot))
            .chain(self.tally.spawns.keys().copied())
            .collect();
        // Per slot: the counters of every process that held it.
        let totals: Vec<(String, Counts)> = slots
            .iter()
            .map(|&slot| {
                let mut c = self.tally.retired.get(&slot).copied().unwrap_or_default();
                for r in census.rows.iter().filter(|r| r.slot == slot) {
                    c.add(&r.counts);
                }
                (slot.to_string(), c)
            })
            .collect();
        let holder = |slot: usize| census.rows.iter().find(|r| r.slot == slot && r.in_pool);

        p.family(
            "hyperfork_requests_total",
            Type::Counter,
            "Responses sent, by status class.",
        );
        for (w, c) in &totals {
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                p.sample(
                    "hyperfork_requests_total",
                    &[("worker", w), ("class", class)],
                    c.status[i],
                );
            }
        }
        p.family(
            "hyperfork_request_duration_seconds",
            Type::Histogram,
            "From the request header's arrival to the response body's end.",
        );
        for (w, c) in &totals {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
                cumulative += c.buckets[i];
                let le = (*bound as f64 / 1e6).to_string();
                p.sample(
                    "hyperfork_request_duration_seconds_bucket",
                    &[("worker", w), ("le", &le)],
                    cumulative,
                );
            }
            p.sample(
                "hyperfork_request_duration_seconds_bucket",
                &[("worker", w), ("le", "+Inf")],
                c.requests(),
            );
            p.sample(
                "hyperfork_request_duration_seconds_sum",
                &[("worker", w)],
                c.duration_us as f64 / 1e6,
            );
            p.sample(
                "hyperfork_request_duration_seconds_count",
                &[("worker", w)],
                c.requests(),
            );
        }
        let counters: [Field; 9] = [
            (
                "hyperfork_requests_in_flight",
                Type::Gauge,
                "Requests the app is handling now.",
                |c| c.in_flight,
            ),
            (
                "hyperfork_connections_open",
                Type::Gauge,
                "Client connections open now.",
                |c| c.open,
            ),
            (
                "hyperfork_connections_total",
                Type::Counter,
                "Client connections accepted.",
                |c| c.connections,
            ),
            (
                "hyperfork_limit_concurrency_rejections_total",
                Type::Counter,
                "503s answered because --limit-concurrency requests were in progress.",
                |c| c.limit_concurrency,
            ),
            (
                "hyperfork_request_rejections_total",
                Type::Counter,
                "4xx answered by hyperfork for a request limit or a bad request (400 for a bad \
                 Host, 413 for --limit-request-body).",
                |c| c.rejected,
            ),
            (
                "hyperfork_handler_panics_total",
                Type::Counter,
                "Handlers that panicked (each answered 500).",
                |c| c.panics,
            ),
            (
                "hyperfork_received_bytes_total",
                Type::Counter,
                "Bytes read from clients, headers included.",
                |c| c.bytes_in,
            ),
            (
                "hyperfork_sent_bytes_total",
                Type::Counter,
                "Bytes written to clients, headers included.",
                |c| c.bytes_out,
            ),
            (
                "hyperfork_tls_handshake_failures_total",
                Type::Counter,
                "TLS handshakes that failed or did not complete within --timeout-request-header.",
                |c| c.tls_failures,
            ),
        ];
        for (name, kind, help, get) in counters {
            p.family(name, kind, help);
            for (w, c) in &totals {
                p.sample(name, &[("worker", w)], get(c));
            }
        }
        p.family(
            "hyperfork_worker_spawns_total",
            Type::Counter,
            "Workers forked into the slot.",
        );
        for &slot in &slots {
            let n = self.tally.spawns.get(&slot).copied().unwrap_or(0);
            p.sample(
                "hyperfork_worker_spawns_total",
                &[("worker", &slot.to_string())],
                n,
            );
        }
        p.family(
            "hyperfork_worker_exits_total",
            Type::Counter,
            "Worker exits by cause: crash, signal, heartbeat, boot_failure, boot_timeout, \
             max_requests, memory, reload, upgrade, resize, shutdown.",
        );
        for &slot in &slots {
            let w = slot.to_string();
            for cause in Cause::ALL {
                p.sample(
                    "hyperfork_worker_exits_total",
                    &[("worker", &w), ("cause", cause.label())],
                    self.tally.exits_of(slot, cause),
                );
            }
        }
        p.family(
            "hyperfork_worker_cpu_seconds_total",
            Type::Counter,
            "User and system CPU time of the slot's processes, exited ones included.",
        );
        for &slot in &slots {
            let live: f64 = census
                .rows
                .iter()
                .filter(|r| r.slot == slot)
                .filter_map(|r| r.cpu)
                .sum();
            let retired = self.tally.retired_cpu.get(&slot).copied().unwrap_or(0.0);
            p.sample(
                "hyperfork_worker_cpu_seconds_total",
                &[("worker", &slot.to_string())],
                live + retired,
            );
        }
        p.family(
            "hyperfork_worker_resident_memory_bytes",
            Type::Gauge,
            "Resident memory of the slot's live processes (RSS, shared pages counted in each).",
        );
        for &slot in &slots {
            let rss: u64 = census
                .rows
                .iter()
                .filter(|r| r.slot == slot)
                .filter_map(|r| r.rss)
                .sum();
            p.sample(
                "hyperfork_worker_resident_memory_bytes",
                &[("worker", &slot.to_string())],
                rss,
            );
        }
        let gauges: [(&str, &str); 4] = [
            (
                "hyperfork_worker_start_time_seconds",
                "When the slot's current worker was forked, Unix time.",
            ),
            (
                "hyperfork_worker_boot_seconds",
                "How long the slot's last worker took from fork to ready.",
            ),
            (
                "hyperfork_worker_heartbeat_age_seconds",
                "Seconds since the slot's worker last proved its event loop runs.",
            ),
            (
                "hyperfork_worker_generation",
                "The configuration generation the slot's worker was forked with.",
            ),
        ];
        for (i, (name, help)) in gauges.iter().enumerate() {
            p.family(name, Type::Gauge, help);
            for &slot in &slots {
                let w = slot.to_string();
                let value = match i {
                    0 => holder(slot).map(|r| unix_time_of(Instant::now() - r.age)),
                    1 => self.tally.boot.get(&slot).map(Duration::as_secs_f64),
                    2 => holder(slot)
                        .and_then(|r| r.heartbeat_age)
                        .map(|a| a.as_secs_f64()),
                    _ => holder(slot).map(|r| r.generation as f64),
                };
                if let Some(v) = value {
                    p.sample(name, &[("worker", &w)], v);
                }
            }
        }
        p.family(
            "hyperfork_scheduler_holder",
            Type::Gauge,
            "1 for the slot whose worker holds the scheduler lease (runs the jobs).",
        );
        for r in census.rows.iter().filter(|r| r.scheduler) {
            p.sample(
                "hyperfork_scheduler_holder",
                &[("worker", &r.slot.to_string())],
                1u64,
            );
        }
    }

    fn job_metrics(&self, p: &mut Page) {
        let jobs = &self.tally.jobs;
        let families: [(&str, Type, &str); 8] = [
            (
                "hyperfork_job_runs_total",
                Type::Counter,
                "Runs of the job started.",
            ),
            (
                "hyperfork_job_failures_total",
                Type::Counter,
                "Runs of the job that failed (an error, a panic, a timeout).",
            ),
            (
                "hyperfork_job_skips_total",
                Type::Counter,
                "Ticks of the job skipped: the previous run still going, or missed beyond the \
                 misfire grace.",
            ),
            (
                "hyperfork_job_store_skips_total",
                Type::Counter,
                "Ticks of the job skipped because the job store could not confirm the claim \
                 (unreachable, an error, no answer in time); also in hyperfork_job_skips_total.",
            ),
            (
                "hyperfork_job_run_elsewhere_total",
                Type::Counter,
                "Ticks of the job another host claimed in the job store (--jobs-store).",
            ),
            (
                "hyperfork_job_running",
                Type::Gauge,
                "Runs of the job going on now.",
            ),
            (
                "hyperfork_job_last_success_time_seconds",
                Type::Gauge,
                "When the job's last successful run ended, Unix time.",
            ),
            (
                "hyperfork_job_last_duration_seconds",
                Type::Gauge,
                "How long the job's last finished run took.",
            ),
        ];
        for (i, (name, kind, help)) in families.iter().enumerate() {
            p.family(name, *kind, help);
            for (job, t) in jobs {
                let labels = [("job", job.as_str())];
                match i {
                    0 => p.sample(name, &labels, t.runs),
                    1 => p.sample(name, &labels, t.failures),
                    2 => p.sample(name, &labels, t.skips),
                    3 => p.sample(name, &labels, t.store_skips),
                    4 => p.sample(name, &labels, t.elsewhere),
                    5 => p.sample(name, &labels, t.running),
                    6 => {
                        if let Some(at) = t.last_success {
                            let secs = at
                                .duration_since(UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64());
                            p.sample(name, &labels, secs);
                        }
                    }
                    _ => {
                        if let Some(d) = t.last_duration {
                            p.sample(name, &labels, d.as_secs_f64());
                        }
                    }
                }
            }
        }
    }
}

/// The Unix time of a monotonic instant in the past.
fn unix_time_of(at: Instant) -> f64 {
    let ago = Instant::now().saturating_duration_since(at);
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_gets_the_metrics() {
        assert!(matches!(
            answer_to(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Answer::Metrics { head: false }
        ));
        assert!(matches!(
            answer_to(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Answer::Metrics { head: true }
        ));
        assert!(matches!(
            answer_to(b"GET / HTTP/1.1\r\n\r\n"),
            Answer::Page { head: false }
        ));
        assert!(matches!(
            answer_to(b"GET /status.json?x HTTP/1.1\r\n\r\n"),
            Answer::Json { head: false }
        ));
        assert!(matches!(
            answer_to(b"GET /nope HTTP/1.1\r\n\r\n"),
            Answer::Status("404 Not Found", _)
        ));
        assert!(matches!(
            answer_to(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::Status("405 Method Not Allowed", _)
        ));
    }

    #[test]
    fn a_response_has_its_length_and_closes() {
        let r = String::from_utf8(response("200 OK", "text/plain", "abc", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 3\r\nConnection: close\r\n\r\nabc"));
        let head = String::from_utf8(response("200 OK", "text/plain", "abc", true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
