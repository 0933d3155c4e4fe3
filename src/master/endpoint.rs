//! A connection the master serves from its own loop, without blocking and without a thread: a
//! `/metrics` scrape or a `ctl` client. Its socket is non-blocking; each turn of the loop reads what
//! has arrived and writes what the socket takes, and a connection past its deadline or its input limit
//! is dropped. So a slow or hostile client costs the master a few system calls per turn, never a wait.
//!
//! After its last answer a connection is shut down for writing and kept until the peer closes (at most
//! [`LINGER`]), reading and dropping whatever the peer still sends: closing a socket with unread input
//! resets the connection, and a reset can discard the answer before the peer reads it.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long a connection waits for its peer to close after the last answer.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// A stream the master serves.
pub(super) trait Socket: Read + Write + AsFd {
    /// Shuts the writing side down (sends FIN).
    fn shutdown_write(&self);
}

impl Socket for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl Socket for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// What reading found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Input {
    /// Nothing more for now; the connection is open.
    Waiting,
    /// The peer closed its side (or the connection failed).
    Closed,
    /// More than the limit arrived without what the caller looks for.
    TooLong,
}

/// A non-blocking connection with its input and output buffers and a deadline.
#[derive(Debug)]
pub(super) struct Conn<S> {
    stream: S,
    /// What arrived so far.
    pub input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    /// When the connection is dropped, whatever its state.
    pub deadline: Instant,
    /// Close once the output is sent.
    closing: bool,
    /// The last answer is sent: waiting for the peer to close.
    lingering: bool,
}

impl<S: Socket> Conn<S> {
    /// Wraps `stream`, which must already be non-blocking.
    pub fn new(stream: S, deadline: Instant) -> Conn<S> {
        Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            sent: 0,
            deadline,
            closing: false,
            lingering: false,
        }
    }

    /// Whether the last answer is sent and the connection waits for the peer to close.
    pub fn lingering(&self) -> bool {
        self.lingering
    }

    /// The socket, to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Whether output is waiting to be written.
    pub fn wants_write(&self) -> bool {
        self.sent < self.output.len()
    }

    /// Reads what has arrived, keeping at most `limit` bytes of input.
    pub fn read(&mut self, limit: usize) -> Input {
        let mut buf = [0u8; 4096];
        loop {
            if self.input.len() > limit {
                return Input::TooLong;
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Input::Closed,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Input::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Input::Closed,
            }
        }
    }

    /// Reads and drops what has arrived (at most 64 KiB), so that closing after an error answer does
    /// not reset the connection before the peer reads the answer.
    pub fn discard(&mut self) {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Queues `bytes` to send.
    pub fn send(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Queues `bytes` as the last output: the connection closes once they are sent.
    pub fn send_last(&mut self, bytes: &[u8]) {
        self.send(bytes);
        self.closing = true;
    }

    /// Writes what the socket takes now. Returns `false` once the connection is finished: its last
    /// output sent and the peer closed (or [`LINGER`] passed), or the peer gone.
    pub fn write(&mut self) -> bool {
        if self.lingering {
            return self.read_to_close();
        }
        while self.wants_write() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.output.clear();
        self.sent = 0;
        if !self.closing {
            return true;
        }
        self.stream.shutdown_write();
        self.lingering = true;
        self.deadline = self.deadline.min(Instant::now() + LINGER);
        self.read_to_close()
    }

    /// Reads and drops input; `false` once the peer closed.
    fn read_to_close(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Whether the deadline passed.
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// The stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn pair() -> (Conn<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, Instant::now() + Duration::from_secs(5)), b)
    }

    #[test]
    fn reads_what_arrived_without_blocking() {
        let (mut c, mut peer) = pair();
        assert_eq!(c.read(100), Input::Waiting);
        peer.write_all(b"hello").unwrap();
        assert_eq!(c.read(100), Input::Waiting);
        assert_eq!(c.input, b"hello");
        drop(peer);
        assert_eq!(c.read(100), Input::Closed);
    }

    #[test]
    fn input_beyond_the_limit_is_refused() {
        let (mut c, mut peer) = pair();
        peer.write_all(&[b'x'; 64]).unwrap();
        assert_eq!(c.read(10), Input::TooLong);
    }

    #[test]
    fn a_peer_that_does_not_read_never_blocks_the_writer() {
        let (mut c, peer) = pair();
        let big = vec![b'y'; 4 << 20];
        c.send_last(&big);
        assert!(
            c.write(),
            "the socket buffer fills: still open, output pending"
        );
        assert!(c.wants_write());
        drop(peer);
        assert!(!c.write(), "the peer is gone");
    }

    #[test]
    fn the_connection_ends_once_its_last_output_is_read_and_the_peer_closed() {
        let (mut c, mut peer) = pair();
        c.send(b"progress\n");
        assert!(c.write());
        c.send_last(b"done\n");
        assert!(c.write(), "sent; waiting for the peer to close");
        assert!(c.lingering());
        // The peer's late input is read and dropped, not left to reset the connection.
        peer.write_all(b"late").unwrap();
        assert!(c.write());
        let mut got = String::new();
        peer.read_to_string(&mut got).unwrap();
        assert_eq!(got, "progress\ndone\n", "the answer, then end of file");
        drop(peer);
        assert!(!c.write(), "finished once the peer closed");
    }
}
