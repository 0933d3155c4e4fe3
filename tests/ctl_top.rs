//! `hyperfork ctl top` against a real master: in a pseudo-terminal (util-linux `script`) it draws
//! every worker's row, quits with exit status 0 on `q` and on Ctrl-C (the byte 0x03 in raw mode) and
//! leaves the terminal as it found it; it says so on its bottom line when the master goes away; with
//! stdout not a terminal it prints one snapshot, requests per second included.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{CtlServer as Server, command, get, hyperfork_bin, wait_until};

fn start(workers: usize) -> Server {
    Server::start(&hyperfork_bin(), &["--workers", &workers.to_string()], &[])
}

impl Server {
    /// The worker pids `ctl status --json` lists, once all `n` are ready.
    fn ready_pids(&self, n: usize) -> Vec<i64> {
        let mut pids = Vec::new();
        let ok = wait_until(Duration::from_secs(30), || {
            let o = command(&hyperfork_bin())
                .args(["ctl", "status", "--json", "--control-socket"])
                .arg(&self.socket)
                .output()
                .expect("run hyperfork ctl status");
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else {
                return false;
            };
            let workers = v["workers"].as_array().cloned().unwrap_or_default();
            pids = workers.iter().filter_map(|w| w["pid"].as_i64()).collect();
            workers.len() == n && workers.iter().all(|w| w["state"] == "ready")
        });
        assert!(ok, "{n} ready workers: {pids:?}");
        pids
    }
}

fn quote(p: &Path) -> String {
    shlex::try_quote(p.to_str().expect("UTF-8 path"))
        .expect("quotable path")
        .into_owned()
}

/// `hyperfork ctl top` in an 80×24 pseudo-terminal (util-linux `script`), its output collected;
/// `stty -a` runs after it in the same terminal, to show the modes it left. Killed on drop (the
/// terminal's hang-up ends `ctl top`).
struct Top {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Top {
    fn start(socket: &Path) -> Top {
        let inner = format!(
            "stty cols 80 rows 24 && {} ctl top --interval 0.3 --control-socket {}; rc=$?; \
             echo; echo AFTER; stty -a; exit $rc",
            quote(&hyperfork_bin()),
            quote(socket)
        );
        let mut cmd = command(&PathBuf::from("script"));
        cmd.args(["-qfec", &inner, "/dev/null"])
            .env("SHELL", "/bin/sh")
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("run script (util-linux)");
        let stdin = child.stdin.take().expect("stdin piped");
        let mut pipe = child.stdout.take().expect("stdout piped");
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Top { child, stdin, out }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the output holds every one of `needles`.
    fn wait_for(&self, needles: &[String]) {
        let ok = wait_until(Duration::from_secs(30), || {
            let text = self.output();
            needles.iter().all(|n| text.contains(n.as_str()))
        });
        assert!(ok, "waiting for {needles:?}; output:\n{}", self.output());
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (bounded) for the exit.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "ctl top did not exit; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What `stty -a` said after `ctl top` ended.
    fn modes_after(&self) -> String {
        let text = self.output();
        text.rsplit_once("AFTER")
            .map(|(_, after)| after.to_string())
            .unwrap_or_else(|| panic!("no stty output:\n{text}"))
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rows of `pids`, as drawn (right-aligned pid, then the state), and the second refresh's
/// requests per second.
fn drawn(pids: &[i64]) -> Vec<String> {
    let mut needles: Vec<String> = pids.iter().map(|p| format!(" {p}  ready")).collect();
    needles.push("req/s over".to_string());
    needles
}

/// The terminal is back as it was: the main screen, the cursor shown, raw mode off.
fn assert_restored(top: &Top) {
    let text = top.output();
    let left = text
        .rfind("\x1b[?1049l")
        .expect("left the alternate screen");
    assert!(
        text.rfind("\x1b[?1049h").unwrap() < left,
        "entered then left the alternate screen"
    );
    assert!(text[..left].contains("\x1b[?25h"), "cursor shown again");
    let modes = top.modes_after();
    assert!(
        modes.contains(" icanon") && modes.contains(" echo") && !modes.contains("-icanon"),
        "raw mode off: {modes}"
    );
}

#[test]
fn top_draws_every_worker_and_quits_on_q() {
    let s = start(3);
    let pids = s.ready_pids(3);
    let mut top = Top::start(&s.socket);
    top.wait_for(&drawn(&pids));
    let text = top.output();
    assert!(text.contains("\x1b[?1049h") && text.contains("\x1b[?25l"));
    assert!(text.contains("refreshing every 0.3s; q quits"), "{text}");
    assert!(
        text.contains(&format!("master:   pid {},", s.proc.pid())),
        "{text}"
    );
    top.send(b"q");
    assert_eq!(top.wait_exit().code(), Some(0), "{}", top.output());
    assert_restored(&top);
}

#[test]
fn top_quits_on_ctrl_c() {
    let s = start(2);
    let pids = s.ready_pids(2);
    let mut top = Top::start(&s.socket);
    top.wait_for(&drawn(&pids));
    top.send(&[0x03]);
    assert_eq!(top.wait_exit().code(), Some(0), "{}", top.output());
    assert_restored(&top);
}

#[test]
fn top_says_when_the_master_goes_away_and_q_still_quits() {
    let mut s = start(1);
    let pids = s.ready_pids(1);
    let mut top = Top::start(&s.socket);
    top.wait_for(&drawn(&pids));
    s.proc.signal(libc::SIGTERM);
    assert!(s.proc.wait_exit(Duration::from_secs(30)).is_some());
    // The bottom row (24) says so, and the last status stays on the screen above it.
    top.wait_for(&["\x1b[24;1Hmaster not reachable: ".to_string()]);
    let text = top.output();
    let at = text.rfind("master not reachable").unwrap();
    assert!(
        text[..at].contains(&format!(" {}  ready", pids[0])),
        "{text}"
    );
    top.send(b"q");
    assert_eq!(top.wait_exit().code(), Some(0), "{}", top.output());
    assert_restored(&top);
}

#[test]
fn without_a_terminal_top_prints_one_snapshot_with_the_rate() {
    let s = start(2);
    let pids = s.ready_pids(2);
    // Requests all through the interval, so that the rate is above zero.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = Arc::clone(&stop);
        let port = s.proc.port;
        std::thread::spawn(move || {
            let mut ok = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if get(port, "/").is_ok_and(|r| r.status == 200) {
                    ok += 1;
                }
            }
            ok
        })
    };
    let o = command(&hyperfork_bin())
        .args(["ctl", "top", "--interval", "2", "--control-socket"])
        .arg(&s.socket)
        .stdin(Stdio::null())
        .output()
        .expect("run hyperfork ctl top");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains('\x1b'), "no escape sequences: {out:?}");
    assert!(out.starts_with("master:   pid "), "{out}");
    for p in &pids {
        assert!(out.contains(&format!(" {p}  ready")), "{out}");
    }
    let total = out
        .lines()
        .find(|l| l.starts_with("total:"))
        .unwrap_or_else(|| panic!("{out}"));
    let rate: f64 = total["total:".len()..]
        .trim()
        .split(' ')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{total}"));
    assert!(rate > 0.0 && total.contains("req/s over 2."), "{total}");
    let title = out.lines().find(|l| l.starts_with("slot")).unwrap();
    assert!(
        title.contains("req/s") && title.contains("in-flight"),
        "{title}"
    );
}

#[test]
fn top_without_a_master_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.ctl");
    let o = command(&hyperfork_bin())
        .args(["ctl", "top", "--control-socket"])
        .arg(&socket)
        .output()
        .expect("run hyperfork ctl top");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("hyperfork ctl: control socket "), "{err}");
    let o = command(&hyperfork_bin())
        .args(["ctl", "top", "-d", "fast"])
        .output()
        .expect("run hyperfork ctl top");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("expected a refresh interval of 0.1s or more"),
        "{err}"
    );
}
