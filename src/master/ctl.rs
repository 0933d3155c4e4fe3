//! The master's side of `hyperfork ctl`: a unix socket, mode 0600, served from the master's own poll
//! loop like `/metrics` (see [`super::endpoint`]). The protocol is in [`crate::shared::ctl_wire`].
//!
//! Only the master's own user or root may connect: the file's mode keeps others from connecting, and
//! each accepted connection's peer is checked again with `SO_PEERCRED` (a mode widened by hand, or a
//! descriptor passed on, does not let anyone else in). At most [`MAX_CLIENTS`] connections are served
//! at once; each must send its request within [`REQUEST_DEADLINE`]. A `--wait` command keeps its
//! connection until the reload or upgrade ends; every other command is answered at once.
//!
//! Unlike signals, commands do not merge: `workers remove 2` removes exactly two workers. A command
//! that cannot run now (a reload while another runs) is answered with why, never left unanswered.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::census::Census;
use super::endpoint::{Conn, Input};
use super::reload::Replacement;
use super::{Master, Phase};
use crate::error::StartError;
use crate::shared::ctl_wire::{
    ListenerStatus, MAX_REQUEST, MemoryStatus, Reply, Request, Status, WorkerStatus,
};
use crate::shared::listener::{FileId, Listener};

/// Connections served at once; more wait in the socket's backlog.
pub(super) const MAX_CLIENTS: usize = 8;

/// How long a client has to send its request.
pub(super) const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How long a `--wait` command may wait (its client usually gives up first).
const WAIT_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// What a waiting client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Awaited {
    /// The end of a reload.
    Reload,
    /// The end of a binary upgrade.
    Upgrade,
}

/// One `ctl` connection.
#[derive(Debug)]
struct Client {
    /// Names the client while its request is handled.
    id: u64,
    conn: Conn<UnixStream>,
    /// Answered at the end of this, if it waits.
    waiting: Option<Awaited>,
    /// The request was read (whatever comes next on the connection is ignored).
    asked: bool,
}

/// The control socket and its connections.
#[derive(Debug)]
pub(super) struct CtlServer {
    /// `None` once handed over to a new master (its waiting clients are still answered).
    listener: Option<UnixListener>,
    path: PathBuf,
    /// The socket file as bound, removed on exit if the path still names it.
    file: Option<FileId>,
    clients: Vec<Client>,
    /// The next client's id.
    next_id: u64,
}

impl CtlServer {
    /// Binds the control socket at `path`, owner-only. `take_over`: a previous master of a binary
    /// upgrade still listens there; its file is replaced. Under `--user` it stays the master's
    /// (root's): the workers' account is not given it, so an app running as that account cannot
    /// reload, upgrade or stop the master.
    pub fn bind(path: &Path, take_over: bool) -> Result<CtlServer, StartError> {
        if take_over && FileId::of_socket(path).is_ok() {
            let _ = std::fs::remove_file(path);
        }
        match crate::shared::listener::bind_unix(path, 16, 0o600, None)? {
            Listener::Unix(listener, path, file) => Ok(CtlServer {
                listener: Some(listener),
                path,
                file,
                clients: Vec::new(),
                next_id: 0,
            }),
            Listener::Tcp(_) => unreachable!("bind_unix binds a unix socket"),
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting (a new master took the path over); waiting clients are still answered.
    pub fn hand_over(&mut self) {
        self.listener = None;
        self.file = None;
    }

    /// Removes the socket file if the path still names it.
    pub fn remove_file(&self) {
        if let Some(id) = self.file {
            if id.is_at(&self.path) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// What to poll: the listener while there is room, each connection whose request is still
    /// arriving, and each with an answer to write. A client that asked and waits is not polled (its
    /// end of file would wake the loop on every turn); it is answered when its command ends.
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut v: Vec<(BorrowedFd<'_>, bool)> = self
            .clients
            .iter()
            .filter(|c| !c.asked || c.conn.wants_write() || c.conn.lingering())
            .map(|c| (c.conn.fd(), c.conn.wants_write()))
            .collect();
        if let Some(l) = self
            .listener
            .as_ref()
            .filter(|_| self.clients.len() < MAX_CLIENTS)
        {
            v.push((l.as_fd(), false));
        }
        v
    }

    /// The earliest connection deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.conn.deadline).min()
    }

    /// Accepts what the room allows; a peer of another user is answered with a refusal.
    fn accept(&mut self, now: Instant) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        while self.clients.len() < MAX_CLIENTS {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let mut conn = Conn::new(stream, now + REQUEST_DEADLINE);
            if let Err(why) = permitted(conn.stream()) {
                tracing::warn!("control socket: refused a connection: {why}");
                conn.send_last(Reply::failed(format!("refused: {why}")).line().as_bytes());
            }
            self.next_id += 1;
            self.clients.push(Client {
                id: self.next_id,
                asked: conn.wants_write(),
                conn,
                waiting: None,
            });
        }
    }
}

/// Whether the peer of `stream` may control this master: its uid is the master's or root's.
fn permitted(stream: &UnixStream) -> Result<(), String> {
    let creds = getsockopt(stream, PeerCredentials)
        .map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    let uid = creds.uid();
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {uid} may not control this server (only uid {me} or root)"
        ))
    }
}

impl Master<'_> {
    /// Binds the control socket, if one is configured. An explicit path that cannot be bound is
    /// fatal; a default one only costs `ctl` (logged).
    pub(super) fn open_ctl(&mut self, take_over: bool) -> Result<(), StartError> {
        let Some((path, explicit)) = self.args.control_socket.clone() else {
            return Ok(());
        };
        match CtlServer::bind(&path, take_over) {
            Ok(server) => {
                tracing::debug!("control socket at {}", server.path().display());
                self.ctl = Some(server);
                Ok(())
            }
            Err(e) if explicit => Err(e),
            Err(e) => {
                tracing::warn!("no control socket, `ctl` will not reach this master: {e}");
                Ok(())
            }
        }
    }

    /// A turn of the control socket: accept, read requests, act on them, write answers, drop what
    /// is finished or past its deadline.
    pub(super) fn serve_ctl(&mut self, now: Instant) {
        let Some(server) = self.ctl.as_mut() else {
            return;
        };
        server.accept(now);
        let mut requests = Vec::new();
        server.clients.retain_mut(|c| {
            if c.conn.expired(now) {
                return false;
            }
            if !c.asked {
                match c.conn.read(MAX_REQUEST) {
                    Input::Closed => return false,
                    Input::TooLong => {
                        c.asked = true;
                        c.conn.discard();
                        let r = Reply::failed(format!(
                            "the request is longer than {MAX_REQUEST} bytes"
                        ));
                        c.conn.send_last(r.line().as_bytes());
                    }
                    Input::Waiting => {
                        if let Some(end) = c.conn.input.iter().position(|&b| b == b'\n') {
                            c.asked = true;
                            let line = String::from_utf8_lossy(&c.conn.input[..end]).into_owned();
                            c.conn.input.clear();
                            requests.push((c.id, line));
                        }
                    }
                }
            }
            true
        });
        for (id, line) in requests {
            self.ctl_request(id, &line, now);
        }
        if let Some(server) = self.ctl.as_mut() {
            server.clients.retain_mut(|c| c.conn.write());
        }
    }

    /// Acts on one request from client `id`.
    fn ctl_request(&mut self, id: u64, line: &str, now: Instant) {
        let request = match serde_json::from_str::<Request>(line) {
            Ok(r) => r,
            Err(e) => {
                return self.ctl_reply(id, Reply::failed(format!("bad request: {e}")));
            }
        };
        tracing::info!("control socket: {}", describe(&request));
        let reply = match request {
            Request::Status => {
                let status = self.ctl_status();
                Reply::Done {
                    ok: true,
                    message: "status".into(),
                    data: Some(Box::new(status)),
                }
            }
            Request::Workers { change } => self.ctl_workers(change),
            Request::ReopenLogs => match self.reopen_logs("ctl") {
                Ok(m) => Reply::ok(m),
                Err(m) => Reply::failed(m),
            },
            // During a shutdown delay, a stop skips the rest of it, as a second SIGTERM does.
            Request::Stop { fast } => {
                if self.is_stopping() {
                    Reply::failed("the server is shutting down")
                } else {
                    let delay = self.args.shutdown_delay;
                    let message = if fast {
                        "fast shutdown started".to_string()
                    } else if self.delayed.is_some() {
                        "shutdown delay skipped; graceful shutdown started".to_string()
                    } else if !delay.is_zero() && !self.upgrading() {
                        format!(
                            "graceful shutdown started: draining in {}, still serving meanwhile",
                            humantime::format_duration(delay)
                        )
                    } else {
                        "graceful shutdown started".to_string()
                    };
                    self.ctl_reply(id, Reply::ok(message));
                    self.stop(!fast);
                    return;
                }
            }
            Request::Reload { wait } => {
                if let Some(r) = self.busy_stopping().or_else(|| self.busy_changing()) {
                    self.tally.reload(super::tally::Outcome::Rejected);
                    r
                } else {
                    self.wait_on(id, Awaited::Reload, now);
                    self.begin_reload();
                    if self.still_waiting(id) && !wait {
                        let generation = self.generation;
                        self.ctl_reply(
                            id,
                            Reply::ok(format!("reload started (generation {generation})")),
                        );
                    }
                    return;
                }
            }
            Request::Upgrade { wait } => {
                if let Some(r) = self.busy_stopping() {
                    r
                } else {
                    self.wait_on(id, Awaited::Upgrade, now);
                    self.begin_upgrade();
                    if self.still_waiting(id) && !wait {
                        self.ctl_reply(id, Reply::ok("binary upgrade started"));
                    }
                    return;
                }
            }
        };
        self.ctl_reply(id, reply);
    }

    /// A refusal while shutting down.
    fn busy_stopping(&self) -> Option<Reply> {
        self.shutting_down()
            .then(|| Reply::failed("the server is shutting down"))
    }

    /// A refusal while a reload, a recycle, a resize or an upgrade runs.
    fn busy_changing(&self) -> Option<Reply> {
        if self.upgrading() {
            return Some(Reply::failed(
                "a binary upgrade is in progress; try again after it",
            ));
        }
        self.replacement().map(|r| {
            Reply::failed(format!(
                "{} is in progress; try again after it",
                r.describe()
            ))
        })
    }

    /// `workers add N` / `workers remove N`.
    fn ctl_workers(&mut self, change: i64) -> Reply {
        if let Some(r) = self.busy_stopping().or_else(|| self.busy_changing()) {
            return r;
        }
        let size = self.pool.size();
        if change == 0 {
            return Reply::failed("the change must be at least 1 worker");
        }
        let Ok(n) = usize::try_from(change.unsigned_abs()) else {
            return Reply::failed(format!("cannot change the pool by {change} workers"));
        };
        if change < 0 {
            if n >= size {
                return Reply::failed(format!(
                    "cannot remove {n} of {size} workers: the pool keeps at least 1"
                ));
            }
            let to = size - n;
            tracing::info!("ctl: workers {size} -> {to}, stopping slots {to}..{size}");
            self.shrink_pool(to, super::tally::Cause::Resize);
            self.pool_announced = false;
            return Reply::ok(format!("workers {size} -> {to}"));
        }
        let to = size.saturating_add(n);
        if to > crate::shared::stats::CAPACITY {
            return Reply::failed(format!(
                "cannot grow the pool to {to} workers (at most {})",
                crate::shared::stats::CAPACITY
            ));
        }
        tracing::info!(
            "ctl: workers {size} -> {to}; replacing the workers for the larger pool first, then \
             adding slots {size}..{to}"
        );
        let during_start = matches!(self.phase, Phase::Starting);
        self.phase = Phase::Replacing(Replacement::grow(size, to, during_start));
        self.pool_announced = false;
        self.step_replacement();
        Reply::ok(format!(
            "workers {size} -> {to} (the existing workers are replaced for the larger pool first)"
        ))
    }

    /// Marks client `id` as waiting for `what`.
    fn wait_on(&mut self, id: u64, what: Awaited, now: Instant) {
        if let Some(c) = self.client_of(id) {
            c.waiting = Some(what);
            c.conn.deadline = now + WAIT_DEADLINE;
        }
    }

    /// Whether client `id` still waits (its command has not ended yet).
    fn still_waiting(&mut self, id: u64) -> bool {
        self.client_of(id).is_some_and(|c| c.waiting.is_some())
    }

    fn client_of(&mut self, id: u64) -> Option<&mut Client> {
        self.ctl.as_mut()?.clients.iter_mut().find(|c| c.id == id)
    }

    /// Sends `reply` to client `id`; a `Done` reply ends its connection.
    fn ctl_reply(&mut self, id: u64, reply: Reply) {
        if let Some(c) = self.client_of(id) {
            c.waiting = None;
            let line = reply.line();
            match reply {
                Reply::Done { .. } => c.conn.send_last(line.as_bytes()),
                Reply::Progress { .. } => c.conn.send(line.as_bytes()),
            }
            c.conn.write();
        }
    }

    /// A reload or an upgrade ended: answer every client waiting for it.
    pub(super) fn answer_waiters(&mut self, what: Awaited, ok: bool, message: &str) {
        let Some(server) = self.ctl.as_mut() else {
            return;
        };
        for c in server
            .clients
            .iter_mut()
            .filter(|c| c.waiting == Some(what))
        {
            c.waiting = None;
            let reply = if ok {
                Reply::ok(message)
            } else {
                Reply::failed(message)
            };
            c.conn.send_last(reply.line().as_bytes());
            c.conn.write();
        }
    }

    /// Tells every client waiting for `what` how it goes.
    pub(super) fn progress(&mut self, what: Awaited, message: &str) {
        let Some(server) = self.ctl.as_mut() else {
            return;
        };
        let line = Reply::Progress {
            message: message.to_string(),
        }
        .line();
        for c in server
            .clients
            .iter_mut()
            .filter(|c| c.waiting == Some(what))
        {
            c.conn.send(line.as_bytes());
            c.conn.write();
        }
    }

    /// The pool's memory now: what one more worker costs and what the whole pool holds.
    pub(super) fn memory_status(&self, rows: &[super::census::Row]) -> Option<MemoryStatus> {
        use crate::config::footprint::Footprint;
        let master = Footprint::of(self.pid.as_raw())?;
        let all: Vec<(bool, Footprint)> = rows
            .iter()
            .filter_map(|r| Footprint::of(r.pid.as_raw()).map(|f| (r.state == "ready", f)))
            .collect();
        let per_worker = all
            .iter()
            .filter(|(ready, _)| *ready)
            .map(|(_, f)| f.uss)
            .max()?;
        Some(MemoryStatus {
            per_worker,
            total: master.pss + all.iter().map(|(_, f)| f.pss).sum::<u64>(),
            processes: all.len(),
            guard: self.guard.decision.as_ref().and_then(|d| d.message.clone()),
        })
    }

    /// The tuning advice (see [`super::advice`]) from the history's last minute, the workers now
    /// (`rows`) and the pool's memory now.
    pub(super) fn advice(
        &self,
        rows: &[super::census::Row],
        memory: Option<&MemoryStatus>,
    ) -> Vec<String> {
        let window = Duration::from_secs_f64(super::advice::WINDOW_SECONDS);
        let Some(recent) = self.history.recent(window) else {
            return Vec::new();
        };
        let serving = rows.iter().filter(|r| r.in_pool);
        super::advice::advise(&super::advice::Window {
            seconds: recent.seconds,
            cores: self.args.cores,
            cpu_seconds: recent.cpu_seconds,
            queue_first: recent.queue_first,
            queue_last: recent.queue_last,
            queue_min: recent.queue_min,
            workers: serving.clone().count(),
            busy_workers: serving.filter(|r| r.counts.in_flight > 0).count(),
            memory_used: memory.map(|m| m.total),
            budget: self.args.budget.clone(),
            limit_concurrency: self.args.limits.limit_concurrency,
            limit_503s: recent.limited,
        })
    }

    /// Where the master is: `starting`, `running`, `reloading`, `upgrading`, `stopping in Ns` or
    /// `stopping`.
    pub(super) fn phase_name(&self) -> String {
        match (&self.phase, self.delayed) {
            (Phase::Stopping { .. }, _) => "stopping".to_string(),
            (_, Some(d)) => format!("stopping in {}s", d.seconds_left(Instant::now())),
            (Phase::Replacing(_), _) => "reloading".to_string(),
            _ if self.upgrading() => "upgrading".to_string(),
            (Phase::Starting, _) => "starting".to_string(),
            (Phase::Running, _) => "running".to_string(),
        }
    }

    /// `ctl status`.
    fn ctl_status(&mut self) -> Status {
        let Census { rows, sockets } = self.census();
        let memory = self.memory_status(&rows);
        let advice = self.advice(&rows, memory.as_ref());
        let phase = self.phase_name();
        Status {
            master_pid: self.pid.as_raw(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            generation: self.generation,
            phase,
            pool_size: self.pool.size(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            scheduler_holder: self.lease.holder().map(|p| p.as_raw()),
            listeners: sockets
                .into_iter()
                .map(|s| ListenerStatus {
                    address: s.address,
                    queued: s.queued,
                    backlog: s.backlog,
                })
                .collect(),
            workers: rows
                .into_iter()
                .map(|r| WorkerStatus {
                    slot: r.slot,
                    pid: r.pid.as_raw(),
                    state: r.state.to_string(),
                    age_seconds: r.age.as_secs_f64(),
                    generation: r.generation,
                    requests: r.counts.requests(),
                    in_flight: r.counts.in_flight,
                    open_connections: r.counts.open,
                    rss_bytes: r.rss,
                    cpu_seconds: r.cpu,
                    cpu_percent: r.cpu_percent,
                    heartbeat_age_seconds: r.heartbeat_age.map(|a| a.as_secs_f64()),
                    scheduler: r.scheduler,
                })
                .collect(),
            memory,
            advice,
        }
    }
}

/// A request, for the log.
fn describe(r: &Request) -> String {
    match r {
        Request::Status => "status".into(),
        Request::Workers { change } if *change < 0 => format!("workers remove {}", -change),
        Request::Workers { change } => format!("workers add {change}"),
        Request::Reload { wait } => format!("reload{}", if *wait { " --wait" } else { "" }),
        Request::Upgrade { wait } => format!("upgrade{}", if *wait { " --wait" } else { "" }),
        Request::ReopenLogs => "reopen-logs".into(),
        Request::Stop { fast } => format!("stop{}", if *fast { " --fast" } else { "" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_may_connect() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(permitted(&a), Ok(()));
    }

    #[test]
    fn requests_are_logged_as_typed() {
        assert_eq!(
            describe(&Request::Workers { change: -2 }),
            "workers remove 2"
        );
        assert_eq!(describe(&Request::Reload { wait: true }), "reload --wait");
    }
}
