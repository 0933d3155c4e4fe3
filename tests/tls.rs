//! TLS: HTTPS over HTTP/1.1 and HTTP/2 (ALPN, curl and a rustls client), client certificates, a
//! stalled handshake closed by the header deadline, a certificate swapped by `SIGHUP` under
//! keep-alive and connection-per-request load without a failed request, and bad certificates refused
//! at start (exit 2, naming the file) and at reload (the old certificate kept).
//!
//! Certificates are made at test time: a test CA (rcgen) signs the server and client certificates;
//! openssl encrypts a key and reads the serial a server presents.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// A test CA in a temporary directory, and the files of what it signs.
struct Ca {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

/// A certificate signed by the test CA.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hyperfork test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Ca {
            dir,
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ca.pem`.
    fn ca_file(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    /// A certificate for `localhost` and 127.0.0.1 with `serial`, written as `NAME.pem` and
    /// `NAME-key.pem`.
    fn leaf(&self, name: &str, serial: &[u8], purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    fn server(&self, name: &str, serial: &[u8]) -> Leaf {
        self.leaf(name, serial, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client configuration trusting the CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `contents` to `path` atomically (a rename), as a certificate deploy does.
fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A hyperfork command on a fresh port, none of the TLS variables inherited.
fn tls_command(args: &[&str]) -> (Command, u16) {
    let port = free_port();
    let mut cmd = command(&hyperfork_bin());
    for var in [
        "SSL_CERTFILE",
        "SSL_KEYFILE",
        "SSL_KEYFILE_PASSWORD",
        "SSL_CA_CERTS",
        "SSL_CERT_REQS",
        "TIMEOUT_REQUEST_HEADER",
        "TIMEOUT_KEEP_ALIVE",
    ] {
        cmd.env_remove(format!("HYPERFORK_{var}"))
            .env_remove(format!("UVICORN_{var}"));
    }
    cmd.arg("--port").arg(port.to_string()).args(args);
    (cmd, port)
}

/// hyperfork serving HTTPS with `args`, once `GET /` answers over TLS and the pool is up.
fn serve_tls(ca: &Ca, args: &[&str]) -> Proc {
    let (cmd, port) = tls_command(args);
    serve_tls_command(ca, cmd, port)
}

/// `cmd` started, once `GET /` answers over TLS on `port` and the pool is up.
fn serve_tls_command(ca: &Ca, cmd: Command, port: u16) -> Proc {
    let mut p = Proc::start(cmd, port);
    let config = ca.client(&[b"http/1.1"]);
    let ok = wait_until(Duration::from_secs(20), || {
        TlsConn::open(port, &config)
            .and_then(|mut c| c.get("/"))
            .is_ok_and(|r| r.status == 200)
            || p.child.try_wait().ok().flatten().is_some()
    });
    assert!(
        ok && p.child.try_wait().ok().flatten().is_none(),
        "no HTTPS answer:\n{}",
        p.stderr()
    );
    assert!(
        p.wait_log(" workers ready", Duration::from_secs(20)),
        "{}",
        p.stderr()
    );
    p
}

/// A client TLS connection speaking HTTP/1.1.
struct TlsConn {
    stream: BufReader<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsConn {
    /// Connects to 127.0.0.1 as `localhost` and completes the handshake.
    fn open(port: u16, config: &Arc<ClientConfig>) -> std::io::Result<TlsConn> {
        let tcp = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(5),
        )?;
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsConn {
            stream: BufReader::new(stream),
        })
    }

    /// The server's certificate.
    fn leaf(&self) -> Vec<u8> {
        let conn = &self.stream.get_ref().conn;
        conn.peer_certificates().expect("a server certificate")[0].to_vec()
    }

    /// The protocol ALPN chose.
    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream
            .get_ref()
            .conn
            .alpn_protocol()
            .map(<[u8]>::to_vec)
    }

    /// `GET path` (with `Connection: close` when `close`), and its response.
    fn request(&mut self, path: &str, close: bool) -> std::io::Result<Response> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{connection}\r\n");
        self.stream.get_mut().write_all(req.as_bytes())?;
        self.stream.get_mut().flush()?;
        read_response(&mut self.stream)
    }

    fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.request(path, false)
    }
}

/// Reads one response with a `Content-Length` body.
fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = std::collections::HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// curl on `https://localhost:PORT/PATH` (resolved to 127.0.0.1), trusting the CA; `extra` adds
/// options. Returns curl's output: the body, then the HTTP version after a space.
fn curl(ca: &Ca, port: u16, path: &str, extra: &[&str]) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(["--cacert", &ca.ca_file()])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", " %{http_version}"])
        .args(extra)
        .arg(format!("https://localhost:{port}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The serial of the certificate the server on `port` presents, as openssl prints it (`1AAA`).
fn openssl_serial(port: u16) -> String {
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run openssl s_client");
    let mut pem = String::new();
    s_client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut pem)
        .unwrap();
    let _ = s_client.wait();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl x509");
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    text(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

#[test]
fn https_serves_http1_and_http2_with_alpn_in_both_connection_shapes() {
    let ca = Ca::new();
    let leaf = ca.server("server", &[0x1A, 0xAA]);
    // Every listener serves TLS: a TCP address and a unix socket.
    let socket = ca.path("h.sock");
    let (mut cmd, port) = tls_command(&[
        "--workers",
        "2",
        "--ssl-certfile",
        path_str(&leaf.cert),
        "--ssl-keyfile",
        path_str(&leaf.key),
    ]);
    cmd.arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--bind")
        .arg(format!("unix:{}", socket.display()));
    let p = serve_tls_command(&ca, cmd, port);
    assert!(
        p.stderr()
            .contains(&format!("listening on https://127.0.0.1:{}", p.port)),
        "{}",
        p.stderr()
    );
    assert!(p.stderr().contains("serial 1A:AA"), "{}", p.stderr());

    // curl, HTTP/1.1 and HTTP/2 (ALPN h2).
    let h1 = curl(&ca, p.port, "/", &["--http1.1"]);
    assert_eq!(
        text(&h1.stdout),
        "Hello, world! 1.1",
        "{}",
        text(&h1.stderr)
    );
    let h2 = curl(&ca, p.port, "/", &["--http2"]);
    assert_eq!(text(&h2.stdout), "Hello, world! 2", "{}", text(&h2.stderr));
    // HTTP/2 keep-alive: the second request reuses the first one's connection (no new connect).
    let url = format!("https://localhost:{}/", p.port);
    let h2_twice = curl(
        &ca,
        p.port,
        "/",
        &[
            "--http2",
            "--write-out",
            " %{http_version}/%{num_connects}",
            &url,
        ],
    );
    assert_eq!(
        text(&h2_twice.stdout),
        "Hello, world! 2/1Hello, world! 2/0",
        "{}",
        text(&h2_twice.stderr)
    );

    // A rustls client: ALPN picks h2 when offered first, http/1.1 when alone.
    let both = TlsConn::open(p.port, &ca.client(&[b"h2", b"http/1.1"])).unwrap();
    assert_eq!(both.alpn().as_deref(), Some(&b"h2"[..]));
    assert_eq!(both.leaf(), leaf.der.to_vec());
    let h1_only = ca.client(&[b"http/1.1"]);
    // Keep-alive: requests one after another on one connection, all from one worker.
    let mut conn = TlsConn::open(p.port, &h1_only).unwrap();
    assert_eq!(conn.alpn().as_deref(), Some(&b"http/1.1"[..]));
    let pids: Vec<(u64, u64)> = (0..20)
        .map(|_| {
            let r = conn.get("/health").unwrap();
            assert_eq!(r.status, 200);
            health_identity(&r)
        })
        .collect();
    assert!(pids.iter().all(|p| *p == pids[0]));
    // Connection per request.
    for _ in 0..20 {
        let mut c = TlsConn::open(p.port, &h1_only).unwrap();
        let r = c.request("/health", true).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("close"));
    }
    let unix = curl(&ca, p.port, "/", &["--unix-socket", path_str(&socket)]);
    assert_eq!(
        text(&unix.stdout),
        "Hello, world! 2",
        "{}",
        text(&unix.stderr)
    );
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    assert!(!get(p.port, "/").is_ok_and(|r| r.status == 200));
}

#[test]
fn client_certificates_are_checked_against_the_ca() {
    let ca = Ca::new();
    let leaf = ca.server("server", &[0x01]);
    let client = ca.leaf("client", &[0x02], ExtendedKeyUsagePurpose::ClientAuth);
    let with_cert = [
        "--cert",
        path_str(&client.cert),
        "--key",
        path_str(&client.key),
    ];
    for reqs in ["2", "1"] {
        let (cmd, port) = tls_command(&[
            "--workers",
            "1",
            "--ssl-certfile",
            path_str(&leaf.cert),
            "--ssl-keyfile",
            path_str(&leaf.key),
            "--ssl-ca-certs",
            &ca.ca_file(),
            "--ssl-cert-reqs",
            reqs,
        ]);
        let p = Proc::start(cmd, port);
        assert!(
            wait_until(Duration::from_secs(20), || {
                text(&curl(&ca, port, "/", &with_cert).stdout) == "Hello, world! 2"
            }),
            "--ssl-cert-reqs {reqs}: a client with a certificate is refused:\n{}",
            p.stderr()
        );
        let without = curl(&ca, port, "/", &[]);
        if reqs == "2" {
            assert!(
                !without.status.success(),
                "--ssl-cert-reqs 2 served a client without a certificate: {}",
                text(&without.stdout)
            );
        } else {
            assert_eq!(text(&without.stdout), "Hello, world! 2");
        }
    }
}

/// The sum over workers of the master's `/metrics` sample `name`.
fn metric_sum(metrics: u16, name: &str) -> f64 {
    let Ok(r) = get(metrics, "/metrics") else {
        return 0.0;
    };
    r.body
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_stalled_handshake_is_closed_by_the_header_deadline() {
    let ca = Ca::new();
    let leaf = ca.server("server", &[0x01]);
    let metrics = free_port();
    let metrics_bind = format!("127.0.0.1:{metrics}");
    // The keep-alive timeout is far beyond the wait below: only the header deadline can close.
    let p = serve_tls(
        &ca,
        &[
            "--workers",
            "1",
            "--ssl-certfile",
            path_str(&leaf.cert),
            "--ssl-keyfile",
            path_str(&leaf.key),
            "--timeout-request-header",
            "1s",
            "--timeout-keep-alive",
            "120s",
            "--metrics-bind",
            &metrics_bind,
        ],
    );
    let before = metric_sum(metrics, "hyperfork_tls_handshake_failures_total");
    // One client sends the start of a TLS record (a handshake of 512 bytes) and stalls; another
    // sends nothing at all.
    let mut stalled = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let silent = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
    // Meanwhile a complete handshake is served.
    let mut good = TlsConn::open(p.port, &ca.client(&[b"http/1.1"])).unwrap();
    assert_eq!(good.get("/").unwrap().status, 200);
    for (name, mut s) in [("stalled", stalled), ("silent", silent)] {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 64];
        let closed = match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => s.read(&mut buf).map_or(true, |n| n == 0),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(
            closed,
            "the {name} handshake was not closed:\n{}",
            p.stderr()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || metric_sum(
            metrics,
            "hyperfork_tls_handshake_failures_total"
        ) >= before + 2.0),
        "the failed handshakes are not counted"
    );
    // The completed connection is unaffected.
    assert_eq!(good.get("/").unwrap().status, 200);
}

/// What one client connection of the load saw.
#[derive(Debug, Clone)]
struct Seen {
    /// When the connection was opened.
    opened: Instant,
    /// The server's certificate.
    leaf: Vec<u8>,
    /// 200s answered on it, and the last one's time.
    ok: u64,
    last_ok: Option<Instant>,
}

/// TLS clients sending `GET /health` back to back: keep-alive ones (reconnecting after `Connection:
/// close`) and connection-per-request ones.
struct TlsLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TlsLoad {
    fn start(
        port: u16,
        config: Arc<ClientConfig>,
        keep_alive: usize,
        per_request: usize,
    ) -> TlsLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..keep_alive + per_request)
            .map(|i| {
                let close = i >= keep_alive;
                let (stop, ok, failures, seen, config) = (
                    stop.clone(),
                    ok.clone(),
                    failures.clone(),
                    seen.clone(),
                    config.clone(),
                );
                std::thread::spawn(move || {
                    let mut conn: Option<(TlsConn, Seen)> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let (c, s) = match conn.as_mut() {
                            Some(c) => c,
                            None => {
                                let opened = Instant::now();
                                match TlsConn::open(port, &config) {
                                    Ok(c) => {
                                        let leaf = c.leaf();
                                        conn.insert((
                                            c,
                                            Seen {
                                                opened,
                                                leaf,
                                                ok: 0,
                                                last_ok: None,
                                            },
                                        ))
                                    }
                                    Err(e) => {
                                        failures.lock().unwrap().push(format!("connect: {e}"));
                                        std::thread::sleep(Duration::from_millis(10));
                                        continue;
                                    }
                                }
                            }
                        };
                        let ended = match c.request("/health", close) {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                s.ok += 1;
                                s.last_ok = Some(Instant::now());
                                close || r.header("connection") == Some("close")
                            }
                            Ok(r) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("status {}", r.status));
                                true
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("request: {e}"));
                                true
                            }
                        };
                        if ended {
                            if let Some((_, s)) = conn.take() {
                                seen.lock().unwrap().push(s);
                            }
                        }
                    }
                    if let Some((_, s)) = conn.take() {
                        seen.lock().unwrap().push(s);
                    }
                })
            })
            .collect();
        TlsLoad {
            stop,
            ok,
            failures,
            seen,
            threads,
        }
    }

    fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns the failures and every connection's record.
    fn finish(self) -> (Vec<String>, Vec<Seen>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failures = self.failures.lock().unwrap().clone();
        let seen = self.seen.lock().unwrap().clone();
        (failures, seen)
    }
}

#[test]
fn a_certificate_swapped_with_sighup_under_load_fails_no_request() {
    let ca = Ca::new();
    let old = ca.server("old", &[0x1A, 0xAA]);
    let new = ca.server("new", &[0x2B, 0xBB]);
    let live_cert = ca.path("live.pem");
    let live_key = ca.path("live-key.pem");
    std::fs::copy(&old.cert, &live_cert).unwrap();
    std::fs::copy(&old.key, &live_key).unwrap();
    let p = serve_tls(
        &ca,
        &[
            "--workers",
            "2",
            "--ssl-certfile",
            path_str(&live_cert),
            "--ssl-keyfile",
            path_str(&live_key),
        ],
    );
    assert_eq!(openssl_serial(p.port), "1AAA");
    let old_workers = p.worker_pids();
    let load = TlsLoad::start(p.port, ca.client(&[b"http/1.1"]), 4, 2);
    assert!(wait_until(Duration::from_secs(20), || load.ok_count() > 50));

    // The deploy: the new key first, then the certificate (each file replaced atomically), then
    // the reload. Between the two renames the files do not match; no reload happens then.
    replace(&live_key, &std::fs::read(&new.key).unwrap());
    replace(&live_cert, &std::fs::read(&new.cert).unwrap());
    let hup = Instant::now();
    p.reload(1);
    // Once every old worker has exited, no connection can reach the old certificate.
    assert!(
        wait_until(Duration::from_secs(30), || old_workers
            .iter()
            .all(|&w| !alive(w))),
        "{}",
        p.stderr()
    );
    let swapped = Instant::now();
    let at_swap = load.ok_count();
    assert!(wait_until(Duration::from_secs(20), || load.ok_count() > at_swap + 50));
    let (failures, seen) = load.finish();
    let log = p.stderr();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}\n{log}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(log.contains("TLS certificate"), "{log}");
    assert!(log.contains("serial 2B:BB"), "{log}");
    // New connections see the new certificate.
    let after: Vec<&Seen> = seen.iter().filter(|s| s.opened > swapped).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.leaf == new.der.to_vec()),
        "a connection opened after the reload got the old certificate"
    );
    assert_eq!(openssl_serial(p.port), "2BBB");
    // Connections made with the old certificate kept being served after the SIGHUP, on the old
    // workers, until those drained.
    assert!(
        seen.iter()
            .any(|s| s.leaf == old.der.to_vec() && s.last_ok.is_some_and(|t| t > hup)),
        "no connection with the old certificate was served after the SIGHUP"
    );
}

/// hyperfork run with `args` until it exits (bounded).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (mut cmd, port) = tls_command(args);
    cmd.envs(env.iter().copied());
    let mut p = Proc::start(cmd, port);
    let status = p.wait_exit(Duration::from_secs(20));
    (status.and_then(|s| s.code()), p.stderr())
}

/// An encrypted PKCS#8 copy of `key`, made by openssl, with `password`.
fn encrypt_key(key: &Path, out: &Path, password: &str) {
    let status = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
        .arg(key)
        .arg("-out")
        .arg(out)
        .args(["-passout", &format!("pass:{password}")])
        .status()
        .expect("run openssl pkcs8");
    assert!(status.success());
}

#[test]
fn a_bad_certificate_or_key_is_refused_at_start_with_exit_2_naming_the_file() {
    let ca = Ca::new();
    let a = ca.server("a", &[0x0A]);
    let b = ca.server("b", &[0x0B]);
    let missing = ca.path("missing.pem");
    let garbage = ca.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let encrypted = ca.path("a-encrypted.pem");
    encrypt_key(&a.key, &encrypted, "s3cret");
    // Arguments, environment, and the message expected on stderr's last line.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            vec![
                "--ssl-certfile",
                path_str(&missing),
                "--ssl-keyfile",
                path_str(&a.key),
            ],
            vec![],
            format!("--ssl-certfile {}: cannot read it", missing.display()),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&garbage),
                "--ssl-keyfile",
                path_str(&a.key),
            ],
            vec![],
            format!("--ssl-certfile {}: not valid PEM", garbage.display()),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&a.key),
                "--ssl-keyfile",
                path_str(&a.key),
            ],
            vec![],
            format!("--ssl-certfile {}: no certificate in it", a.key.display()),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&a.cert),
                "--ssl-keyfile",
                path_str(&b.key),
            ],
            vec![],
            format!(
                "--ssl-keyfile {}: the private key does not match the certificate in {}",
                b.key.display(),
                a.cert.display()
            ),
        ),
        (
            vec!["--ssl-certfile", path_str(&a.cert)],
            vec![],
            format!("--ssl-certfile {}: no private key in it", a.cert.display()),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&a.cert),
                "--ssl-keyfile",
                path_str(&encrypted),
            ],
            vec![],
            format!(
                "--ssl-keyfile {}: the key is encrypted: give its password with \
                 --ssl-keyfile-password",
                encrypted.display()
            ),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&a.cert),
                "--ssl-keyfile",
                path_str(&encrypted),
            ],
            vec![("UVICORN_SSL_KEYFILE_PASSWORD", "wrong")],
            format!(
                "--ssl-keyfile {}: cannot decrypt the key: wrong --ssl-keyfile-password",
                encrypted.display()
            ),
        ),
        (
            vec!["--ssl-keyfile", path_str(&a.key)],
            vec![],
            "--ssl-keyfile needs --ssl-certfile".to_string(),
        ),
        (
            vec![
                "--ssl-certfile",
                path_str(&a.cert),
                "--ssl-keyfile",
                path_str(&a.key),
                "--ssl-cert-reqs",
                "2",
            ],
            vec![],
            "--ssl-cert-reqs 2 (required) needs --ssl-ca-certs".to_string(),
        ),
    ];
    for (args, env, expected) in cases {
        let (code, stderr) = run_to_exit(&args, &env);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("hyperfork: ") && last.contains(&expected),
            "{args:?}: expected {expected:?} on one line, got:\n{stderr}"
        );
    }

    // The right password, from the environment (uvicorn's name), decrypts the key.
    let (cmd, port) = tls_command(&[
        "--workers",
        "1",
        "--ssl-certfile",
        path_str(&a.cert),
        "--ssl-keyfile",
        path_str(&encrypted),
    ]);
    let mut cmd = cmd;
    cmd.env("UVICORN_SSL_KEYFILE_PASSWORD", "s3cret");
    let p = Proc::start(cmd, port);
    let config = ca.client(&[b"http/1.1"]);
    assert!(
        wait_until(Duration::from_secs(20), || TlsConn::open(port, &config)
            .and_then(|mut c| c.get("/"))
            .is_ok_and(|r| r.status == 200)),
        "{}",
        p.stderr()
    );
    assert!(!p.stderr().contains("s3cret"));
}

#[test]
fn a_bad_certificate_at_reload_is_rejected_and_the_old_one_kept() {
    let ca = Ca::new();
    let a = ca.server("a", &[0x0A, 0xAA]);
    let b = ca.server("b", &[0x0B, 0xBB]);
    let live_cert = ca.path("live.pem");
    let live_key = ca.path("live-key.pem");
    std::fs::copy(&a.cert, &live_cert).unwrap();
    std::fs::copy(&a.key, &live_key).unwrap();
    let control = ca.path("h.ctl");
    let args = [
        "--workers",
        "1",
        "--ssl-certfile",
        path_str(&live_cert),
        "--ssl-keyfile",
        path_str(&live_key),
        "--control-socket",
        path_str(&control),
    ];
    let p = serve_tls(&ca, &args);
    let workers = p.worker_pids();
    let config = ca.client(&[b"http/1.1"]);
    // A keep-alive connection open across the rejected reloads.
    let mut kept = TlsConn::open(p.port, &config).unwrap();
    assert_eq!(kept.get("/").unwrap().status, 200);

    // A certificate that does not match the key: `ctl reload --wait` fails and says why.
    replace(&live_cert, &std::fs::read(&b.cert).unwrap());
    let ctl = command(&hyperfork_bin())
        .args([
            "ctl",
            "reload",
            "--wait",
            "--control-socket",
            path_str(&control),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = format!("{}{}", text(&ctl.stdout), text(&ctl.stderr));
    assert_eq!(ctl.status.code(), Some(1), "{said}");
    assert!(
        said.contains("reload rejected")
            && said.contains(&format!("--ssl-keyfile {}", live_key.display())),
        "{said}"
    );
    // A damaged certificate file: SIGHUP is rejected too.
    replace(&live_cert, b"-----BEGIN CERTIFICATE-----\n");
    p.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(20), || p
            .stderr()
            .matches("reload rejected, the current workers keep serving: --ssl-certfile")
            .count()
            >= 1),
        "{}",
        p.stderr()
    );
    // The old certificate is still served, by the same worker, on old and new connections.
    assert_eq!(p.worker_pids(), workers);
    assert_eq!(kept.get("/").unwrap().status, 200);
    let fresh = TlsConn::open(p.port, &config).unwrap();
    assert_eq!(fresh.leaf(), a.der.to_vec());
    assert_eq!(openssl_serial(p.port), "0AAA");
    assert!(!p.stderr().contains("reload complete"));
}
