//! The control pipe: workers tell the master they are ready, or why they failed to boot.
//!
//! One pipe is shared by all workers. Each message is one line shorter than `PIPE_BUF`, written with a
//! single `write`, so lines from different workers never interleave. Each line starts with the
//! sender's pid, which the master maps to a slot.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;

use crate::error::StartError;

/// Longest boot-error text sent; keeps every message far below `PIPE_BUF` (4096 on Linux).
const MAX_TEXT: usize = 1024;

/// A message from a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The worker is accepting connections.
    Ready {
        /// The worker's pid.
        pid: i32,
    },
    /// The worker's app failed to start; the worker exits with status 3.
    BootError {
        /// The worker's pid.
        pid: i32,
        /// The error, on one line.
        text: String,
    },
}

impl Message {
    fn encode(&self) -> String {
        match self {
            Message::Ready { pid } => format!("{pid} ready\n"),
            Message::BootError { pid, text } => {
                let mut t: String = text.replace(['\n', '\r'], " ");
                if t.len() > MAX_TEXT {
                    let mut cut = MAX_TEXT;
                    while !t.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    t.truncate(cut);
                    t.push('…');
                }
                format!("{pid} boot-error {t}\n")
            }
        }
    }

    fn decode(line: &str) -> Option<Message> {
        let (pid, rest) = line.split_once(' ')?;
        let pid = pid.parse().ok()?;
        if rest == "ready" {
            Some(Message::Ready { pid })
        } else {
            rest.strip_prefix("boot-error ")
                .map(|t| Message::BootError {
                    pid,
                    text: t.to_string(),
                })
        }
    }
}

/// The master's end of the pipe (it also keeps the write end to hand to new workers).
#[derive(Debug)]
pub struct ControlPipe {
    read: OwnedFd,
    write: OwnedFd,
    buf: Vec<u8>,
}

impl ControlPipe {
    /// Creates the pipe: close-on-exec both ends, the read end non-blocking.
    pub fn new() -> Result<ControlPipe, StartError> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| StartError::os("creating the control pipe", e))?;
        let flags = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| StartError::os("fcntl on the control pipe", e))?;
        nix::fcntl::fcntl(
            &read,
            nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(|e| StartError::os("fcntl on the control pipe", e))?;
        Ok(ControlPipe {
            read,
            write,
            buf: Vec::new(),
        })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The read end, for a forked worker to close.
    pub fn read_raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The write end a worker sends on.
    pub fn writer(&self) -> ControlWriter {
        ControlWriter {
            fd: self.write.as_raw_fd(),
        }
    }

    /// Reads every complete message available now.
    pub fn drain(&mut self) -> Vec<Message> {
        let mut chunk = [0u8; 4096];
        loop {
            match nix::unistd::read(&self.read, &mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            if let Some(m) = Message::decode(String::from_utf8_lossy(&line).trim_end()) {
                out.push(m);
            }
        }
        out
    }
}

/// A worker's handle on the pipe's write end.
#[derive(Debug, Clone, Copy)]
pub struct ControlWriter {
    fd: RawFd,
}

impl ControlWriter {
    /// Sends one message with a single `write`; errors are ignored (the master may be gone).
    pub fn send(&self, msg: &Message) {
        let line = msg.encode();
        // SAFETY: `fd` is the control pipe's write end, inherited from the master and kept open for
        // the whole life of the worker; the borrow does not outlive this call.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = nix::unistd::write(fd, line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut pipe = ControlPipe::new().unwrap();
        let w = pipe.writer();
        w.send(&Message::Ready { pid: 42 });
        w.send(&Message::BootError {
            pid: 43,
            text: "bad\nthing".into(),
        });
        assert_eq!(
            pipe.drain(),
            vec![
                Message::Ready { pid: 42 },
                Message::BootError {
                    pid: 43,
                    text: "bad thing".into()
                }
            ]
        );
        assert!(pipe.drain().is_empty());
    }

    #[test]
    fn long_errors_are_cut_below_pipe_buf() {
        let m = Message::BootError {
            pid: 1,
            text: "é".repeat(5000),
        };
        assert!(m.encode().len() < 4096);
    }
}
