//! The access log and the proxy headers, against `examples/faults.rs`: the default line for a 200, a
//! POST, a 404 and a 503; a custom format; `--no-access-log`; the log level hiding access lines and
//! `RUST_LOG` bringing them back; no line lost or split on a graceful stop (the built-in app, lines
//! batched); `X-Forwarded-For` believed from a trusted peer only (and seen by the app as
//! `ClientAddr`); a bad format refused at start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Conn, Proc, command, example_bin, free_port, get, hyperfork_bin, wait_until};

const WAIT: Duration = Duration::from_secs(10);

fn faults(args: &[&str]) -> Proc {
    Proc::serve(&example_bin("faults"), args, &[])
}

/// Sends `head` (the request line and headers, without the blank line) and `body` on a fresh
/// connection with `Connection: close`; returns the response's status and body.
fn raw(port: u16, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let req = format!(
        "{head}\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// The access-log line (after the `[worker N pid M] ` prefix) containing `needle`, waited for.
fn line(p: &Proc, needle: &str) -> String {
    assert!(
        p.wait_log(needle, WAIT),
        "no line with {needle}:\n{}",
        p.stderr()
    );
    let log = p.stderr();
    let line = log.lines().find(|l| l.contains(needle)).unwrap_or_default();
    assert!(line.contains(" INFO [worker "), "{line}");
    line.split_once("] ").map_or("", |(_, l)| l).to_string()
}

/// Checks a default line: `127.0.0.1:PORT - "REQUEST LINE" STATUS BYTES N.Nms`.
fn assert_default(line: &str, request: &str, status: u16, bytes: &str) {
    let (client, rest) = line.split_once(" - ").unwrap_or_default();
    assert!(client.starts_with("127.0.0.1:"), "{line}");
    let expected = format!("\"{request}\" {status} {bytes} ");
    assert!(rest.starts_with(&expected), "{line}: expected {expected}");
    let duration = &rest[expected.len()..];
    let ms = duration.strip_suffix("ms").unwrap_or("x");
    assert!(ms.parse::<f64>().is_ok() && ms.contains('.'), "{line}");
}

#[test]
fn default_lines_show_client_request_status_bytes_and_duration() {
    let p = faults(&["--workers", "1", "--limit-concurrency", "1"]);
    let port = p.port;
    assert_eq!(get(port, "/?t=get").unwrap().status, 200);
    assert_default(&line(&p, "/?t=get "), "GET /?t=get HTTP/1.1", 200, "13");

    let (status, body) = raw(port, "POST /sleep?ms=0&t=post HTTP/1.1", "some body");
    assert_eq!((status, body.as_str()), (200, "slept 0 ms\n"));
    let l = line(&p, "/sleep?ms=0&t=post ");
    assert_default(&l, "POST /sleep?ms=0&t=post HTTP/1.1", 200, "11");

    assert_eq!(get(port, "/missing").unwrap().status, 404);
    let l = line(&p, "\"GET /missing HTTP/1.1\"");
    assert_default(&l, "GET /missing HTTP/1.1", 404, "9");

    // One request in flight fills the limit: the next is answered 503, with no body (`-`).
    let slow = std::thread::spawn(move || get(port, "/sleep?ms=3000").map(|r| r.status));
    let mut tries = 0;
    let busy = wait_until(WAIT, || {
        tries += 1;
        get(port, &format!("/?t=busy{tries}")).is_ok_and(|r| r.status == 503)
    });
    assert!(busy, "never 503:\n{}", p.stderr());
    let request = format!("GET /?t=busy{tries} HTTP/1.1");
    assert_default(&line(&p, &format!("{request}\"")), &request, 503, "-");
    assert_eq!(slow.join().unwrap().unwrap(), 200);
    assert_default(
        &line(&p, "/sleep?ms=3000 "),
        "GET /sleep?ms=3000 HTTP/1.1",
        200,
        "14",
    );
}

#[test]
fn a_custom_format_gives_exactly_its_atoms() {
    let format = "%(h)s %(r)s %(s)s %({user-agent}i)s";
    let p = faults(&["--workers", "1", "--access-log-format", format]);
    raw(p.port, "GET /?t=fmt HTTP/1.1\r\nUser-Agent: probe/1.0", "");
    let l = line(&p, "/?t=fmt ");
    let (client, rest) = l.split_once(' ').unwrap_or_default();
    assert!(client.starts_with("127.0.0.1:"), "{l}");
    assert_eq!(rest, "GET /?t=fmt HTTP/1.1 200 probe/1.0");
}

#[test]
fn no_access_log_writes_none() {
    let p = faults(&["--workers", "1", "--no-access-log"]);
    assert_eq!(get(p.port, "/?t=quiet").unwrap().status, 200);
    assert_eq!(get(p.port, "/health").unwrap().status, 200);
    // The line would be written before the response's last byte was read; give it a moment anyway.
    std::thread::sleep(Duration::from_millis(300));
    let log = p.stderr();
    assert!(!log.contains("HTTP/1.1\""), "{log}");
}

#[test]
fn access_lines_follow_the_log_level() {
    let quiet = faults(&["--workers", "1", "--log-level", "warning"]);
    assert_eq!(get(quiet.port, "/?t=hidden").unwrap().status, 200);
    let env = [("RUST_LOG", "warn,hyperfork::access=info")];
    let shown = Proc::serve(
        &example_bin("faults"),
        &["--workers", "1", "--log-level", "warning"],
        &env,
    );
    assert_eq!(get(shown.port, "/?t=shown").unwrap().status, 200);
    assert_default(
        &line(&shown, "/?t=shown "),
        "GET /?t=shown HTTP/1.1",
        200,
        "13",
    );
    // Lines are written within 100 ms; `shown` waited for its own already.
    std::thread::sleep(Duration::from_millis(300));
    let log = quiet.stderr();
    assert!(!log.contains("/?t=hidden"), "{log}");
}

/// Whether `line` is one whole log line: a time stamp, a level, who wrote it, and for an access line
/// the whole default line, duration and all.
fn whole(line: &str) -> bool {
    let b = line.as_bytes();
    let stamp = b.len() > 27
        && b[..27].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    let who = line.contains(" [master pid ") || line.contains(" [worker ");
    let access = !line.contains(" HTTP/1.1\" ")
        || (line.contains(" INFO [worker ") && line.contains(" - \"GET /") && line.ends_with("ms"));
    stamp && who && access
}

#[test]
fn a_graceful_stop_loses_no_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = dir.path().join("hyperfork.log");
    let file = log.to_str().expect("UTF-8 path");
    let mut p = Proc::serve(
        &hyperfork_bin(),
        &["--workers", "2", "--log-file", file],
        &[],
    );
    // 4 keep-alive clients, 50 requests each, spread over both workers; the stop comes right after
    // the last answer, so lines are still in the workers' buffers.
    let port = p.port;
    let clients: Vec<_> = (0..4)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = Conn::open(port).expect("connect");
                for i in 0..50 {
                    let r = conn.get(&format!("/?n={}", c * 50 + i)).expect("GET");
                    assert_eq!(r.status, 200);
                }
                conn
            })
        })
        .collect();
    let conns: Vec<Conn> = clients
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    p.signal(libc::SIGTERM);
    drop(conns);
    assert!(
        p.wait_exit(WAIT).is_some_and(|s| s.success()),
        "no clean exit:\n{}",
        p.stderr()
    );
    let text = std::fs::read_to_string(&log).expect("read the log file");
    for n in 0..200 {
        let needle = format!(" \"GET /?n={n} HTTP/1.1\" 200 13 ");
        let count = text.matches(&needle).count();
        assert_eq!(count, 1, "{count} lines for request {n}:\n{text}");
    }
    let broken: Vec<&str> = text.lines().filter(|l| !whole(l)).collect();
    assert!(broken.is_empty(), "lines not whole: {broken:#?}");
    assert!(text.contains("all workers exited"), "{text}");
}

#[test]
fn forwarded_for_is_believed_from_a_trusted_peer_only() {
    let header = "GET /client HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7";
    let trusted = faults(&["--workers", "1"]);
    let (status, body) = raw(trusted.port, header, "");
    assert_eq!((status, body.as_str()), (200, "203.0.113.7"));
    let l = line(&trusted, "/client ");
    assert!(
        l.starts_with("203.0.113.7 - \"GET /client HTTP/1.1\" 200 11 "),
        "{l}"
    );

    let untrusted = faults(&["--workers", "1", "--forwarded-allow-ips", "10.0.0.1"]);
    let (status, body) = raw(untrusted.port, header, "");
    assert_eq!(status, 200);
    assert!(body.starts_with("127.0.0.1:"), "{body}");
    let l = line(&untrusted, "/client ");
    assert!(l.starts_with("127.0.0.1:"), "{l}");
    assert!(!untrusted.stderr().contains("203.0.113.7"));
}

#[test]
fn a_bad_format_is_a_usage_error_in_one_line() {
    let mut cmd = command(&hyperfork_bin());
    cmd.args([
        "--port",
        &free_port().to_string(),
        "--access-log-format",
        "%(h)s %(z)s",
    ]);
    let out = cmd.output().expect("run hyperfork");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--access-log-format") && err.contains("%(z)s"),
        "{err}"
    );
}
