//! Connection-level defences, from outside, against the real binary: the `Host` rules of RFC 9112,
//! the split between the keep-alive and request-header timeouts on HTTP/1, idle and half-sent HTTP/2
//! connections, and the report of failing accepts when the worker runs out of file descriptors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn faults(args: &[&str]) -> Proc {
    Proc::serve(&example_bin("faults"), args, &[])
}

/// Sends `bytes` on a new connection and returns the status of the first response, or `None` if the
/// connection closed first.
fn status_of(port: u16, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[test]
fn missing_duplicate_or_invalid_host_gets_400_before_the_app() {
    let p = faults(&["--workers", "1"]);
    let cases: [(&[u8], u16); 9] = [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        // The app is not called: its handler that panics is never reached.
        (b"GET /panic HTTP/1.1\r\n\r\n", 400),
        // What stays valid.
        (b"GET / HTTP/1.1\r\nHost: example.com:8000\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 200),
        (b"GET / HTTP/1.0\r\n\r\n", 200),
    ];
    for (request, want) in cases {
        assert_eq!(
            status_of(p.port, request),
            Some(want),
            "{}",
            String::from_utf8_lossy(request)
        );
    }
    assert!(
        !p.stderr().contains("panicked"),
        "the app saw a rejected request:\n{}",
        p.stderr()
    );
}

#[test]
fn a_slow_header_gets_the_header_timeout_and_an_idle_connection_the_keep_alive_one() {
    let p = faults(&[
        "--workers",
        "1",
        "--timeout-keep-alive",
        "1",
        "--timeout-request-header",
        "8",
    ]);
    let port = p.port;
    // A header that takes 3 s, with pauses longer than the keep-alive timeout, is served.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for part in [
        &b"GET /health HTTP/1.1\r\n"[..],
        b"Host: t\r\n",
        b"X-Slow: 1\r\n",
        b"\r\n",
    ] {
        s.write_all(part).expect("the server kept the connection");
        std::thread::sleep(Duration::from_millis(1000));
    }
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("a response");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then, idle: closed by the keep-alive timeout (1 s), well before the header timeout (8 s).
    let idle_from = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let idle = idle_from.elapsed();
    assert!(
        idle < Duration::from_secs(7),
        "an idle connection lasted {idle:?}"
    );
}

// --- HTTP/2, spoken by hand ---

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields (no indexing, no Huffman), each name and value shorter than 127.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HTTP/2 client connection that has sent its preface and SETTINGS.
fn h2_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    s
}

/// Sends a complete `GET path` on stream `stream`.
fn h2_get(s: &mut TcpStream, stream: u32, path: &str) {
    let block = header_block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "t"),
        (":path", path),
    ]);
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, stream, &block))
        .expect("send a request");
}

/// Frames read until the server closes the connection or `limit` passes: (type, flags, stream).
/// PINGs are not answered. Returns the frames and whether the connection closed.
fn h2_frames_until_close(s: &mut TcpStream, limit: Duration) -> (Vec<(u8, u8, u32)>, bool) {
    let until = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut frames = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (frames, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (frames, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (frames, false);
            }
            Err(_) => return (frames, true),
        }
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            frames.push((buf[3], buf[4], stream));
            buf.drain(..9 + len);
        }
    }
}

#[test]
fn idle_and_half_sent_http2_connections_are_closed_after_the_timeout() {
    let p = faults(&[
        "--workers",
        "1",
        "--timeout-keep-alive",
        "1",
        "--timeout-request-header",
        "2",
    ]);
    let port = p.port;
    // Idle from the start: no request ever.
    let idle = std::thread::spawn(move || {
        let mut s = h2_open(port);
        h2_frames_until_close(&mut s, Duration::from_secs(30))
    });
    // Half-sent: a HEADERS frame whose block never ends (no END_HEADERS, no CONTINUATION).
    let half = std::thread::spawn(move || {
        let mut s = h2_open(port);
        let block = header_block(&[(":method", "GET"), (":path", "/")]);
        s.write_all(&frame(HEADERS, END_STREAM, 1, &block)).unwrap();
        h2_frames_until_close(&mut s, Duration::from_secs(30))
    });
    // Idle after a request: served, then closed.
    let after = std::thread::spawn(move || {
        let mut s = h2_open(port);
        h2_get(&mut s, 1, "/health");
        h2_frames_until_close(&mut s, Duration::from_secs(30))
    });
    for (name, t) in [
        ("idle", idle),
        ("half-sent", half),
        ("after a request", after),
    ] {
        let (frames, closed) = t.join().unwrap();
        assert!(closed, "{name}: the connection stayed open: {frames:?}");
        assert!(
            frames.iter().any(|f| f.0 == GOAWAY),
            "{name}: closed without GOAWAY: {frames:?}"
        );
        if name == "after a request" {
            assert!(
                frames
                    .iter()
                    .any(|f| f.2 == 1 && (f.0 == HEADERS || f.0 == DATA)),
                "{name}: no response: {frames:?}"
            );
        }
    }
}

#[test]
fn an_http2_request_longer_than_the_keep_alive_timeout_completes() {
    let p = faults(&["--workers", "1", "--timeout-keep-alive", "1"]);
    let mut s = h2_open(p.port);
    h2_get(&mut s, 1, "/sleep?ms=3000");
    let (frames, _closed) = h2_frames_until_close(&mut s, Duration::from_secs(30));
    assert!(
        frames
            .iter()
            .any(|f| f.2 == 1 && f.1 & END_STREAM != 0 && (f.0 == DATA || f.0 == HEADERS)),
        "the response never completed: {frames:?}"
    );
}

/// Sets the soft and hard limit on open files of the process about to be exec'd.
fn limit_files(cmd: &mut std::process::Command, n: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn failing_accepts_are_logged_once_per_period_with_a_count() {
    let port = free_port();
    let mut cmd = command(&hyperfork_bin());
    cmd.args([
        "--workers",
        "1",
        "--port",
        &port.to_string(),
        "--timeout-keep-alive",
        "60",
    ]);
    limit_files(&mut cmd, 40);
    let mut p = Proc::start(cmd, port);
    p.wait_serving();
    // More idle connections than the worker has descriptors: the rest stay queued and every accept
    // fails with EMFILE, ten times a second.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            held.push(s);
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || p
            .stderr()
            .contains("Too many open files")),
        "no accept failed:\n{}",
        p.stderr()
    );
    std::thread::sleep(Duration::from_secs(3));
    let log = p.stderr();
    let lines = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        lines <= 2,
        "{lines} lines in 3 s of failing accepts (one report per 10 s expected):\n{log}"
    );
    // Freeing descriptors lets accepts succeed again, and that is said.
    drop(held);
    assert!(
        wait_until(Duration::from_secs(20), || p
            .stderr()
            .contains("accepting connections again after")),
        "recovery not reported:\n{}",
        p.stderr()
    );
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).is_some());
}
