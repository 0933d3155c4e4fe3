//! The TLS scenario: hyperfork and nginx serving `GET /` over HTTPS with the same certificate (an
//! ECDSA P-256 certificate signed by a CA made for the run, as rcgen makes them), one worker per
//! core each. Two shapes, HTTP/1.1 over TLS 1.3: keep-alive connections (the cost of encryption
//! alone), and a new connection per request with a full handshake each time (client-side session
//! resumption off: the cost of the handshake, the worst case). Figures: requests per second, p99,
//! and the server's CPU per request (its process tree's user + system time over the measured run).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::load::{self, Outcome};
use crate::report::median;
use crate::{Options, procs, servers};

/// The certificate both servers use, and the client configurations that trust it.
struct Pki {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// Trusts the CA; ALPN http/1.1; resumption as rustls does it by default (keep-alive shape).
    client: Arc<rustls::ClientConfig>,
    /// The same without session resumption: every connection a full handshake.
    full_handshake: Arc<rustls::ClientConfig>,
}

impl Pki {
    fn new() -> Result<Pki, String> {
        let e = |e: rcgen::Error| e.to_string();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().map_err(e)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(e)?;
        let key = rcgen::KeyPair::generate().map_err(e)?;
        let leaf = params.signed_by(&key, &issuer).map_err(e)?;
        let cert = dir.path().join("cert.pem");
        let key_file = dir.path().join("key.pem");
        // The chain as servers are given it: the leaf, then the CA.
        std::fs::write(&cert, leaf.pem() + &ca_cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(&key_file, key.serialize_pem()).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_cert.der().clone())
            .map_err(|e| e.to_string())?;
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut full = client.clone();
        full.resumption = rustls::client::Resumption::disabled();
        Ok(Pki {
            dir,
            cert,
            key: key_file,
            client: Arc::new(client),
            full_handshake: Arc::new(full),
        })
    }
}

/// A server of the TLS scenario.
#[derive(Debug, Clone)]
enum Server {
    Hyperfork,
    Nginx(PathBuf),
}

impl Server {
    fn label(&self, workers: usize) -> String {
        match self {
            Server::Hyperfork => format!("hyperfork, {workers} worker(s), TLS"),
            Server::Nginx(_) => format!("nginx, {workers} worker(s), TLS"),
        }
    }
}

/// One server's figures in one round.
#[derive(Debug, Clone, Default)]
struct Sample {
    rate: f64,
    p99: f64,
    cpu_us: f64,
    failures: u64,
    short_rate: f64,
    short_p99: f64,
    short_cpu_us: f64,
    short_failures: u64,
    /// The cipher suite and key exchange group the client got.
    negotiated: String,
}

/// A running server, killed with its tree when dropped.
struct Running {
    child: std::process::Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let pids = procs::tree(self.child.id());
        servers::signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in pids {
            servers::signal(p, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

fn start(server: &Server, addr: SocketAddr, workers: usize, pki: &Pki) -> Result<Running, String> {
    let (mut cmd, dir) = match server {
        Server::Hyperfork => {
            let mut c = servers::hyperfork_command(addr, workers, None);
            c.arg("--ssl-certfile")
                .arg(&pki.cert)
                .arg("--ssl-keyfile")
                .arg(&pki.key);
            (c, None)
        }
        Server::Nginx(binary) => {
            let d = tempfile::tempdir().map_err(|e| e.to_string())?;
            let conf = d.path().join("nginx.conf");
            std::fs::write(
                &conf,
                servers::nginx_conf(addr, workers, d.path(), Some((&pki.cert, &pki.key))),
            )
            .map_err(|e| e.to_string())?;
            let mut c = Command::new(binary);
            c.arg("-p")
                .arg(d.path())
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr"]);
            (c, Some(d))
        }
    };
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.label(workers)))?;
    let mut running = Running { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    let rt = runtime(1);
    loop {
        if rt.block_on(probe(addr, pki.client.clone())) {
            // Every worker up, as in the plain scenario.
            std::thread::sleep(crate::SETTLE);
            return Ok(running);
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(format!(
                "{} exited during start-up: {status}",
                server.label(workers)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer over TLS within 30 s",
                server.label(workers)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("build the TLS load generator's runtime")
}

/// `connections` client loops on `addr` for `duration`: keep-alive, or (`per_request`) a new TLS
/// connection for each request.
async fn run(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    connections: usize,
    duration: Duration,
    per_request: bool,
) -> Outcome {
    let start = Instant::now();
    let end = start + duration;
    let request = load::request(addr, "/", per_request);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client_loop(addr, config.clone(), request, per_request, end)))
        .collect();
    let mut total = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            total.absorb(o);
        }
    }
    total.elapsed = start.elapsed();
    total
}

async fn client_loop(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &'static [u8],
    per_request: bool,
    end: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("a valid name");
    let mut buf = vec![0u8; 16 * 1024];
    let mut worker = String::new();
    'connect: while Instant::now() < end {
        let connecting = Instant::now();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let _ = tcp.set_nodelay(true);
            connector.connect(name.clone(), tcp).await.ok()
        };
        let mut stream = match tokio::time::timeout(load::REQUEST_TIMEOUT, connect).await {
            Ok(Some(s)) => s,
            _ => {
                out.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if sent >= end {
                break 'connect;
            }
            let started = if per_request { connecting } else { sent };
            let exchange = async {
                stream.write_all(request).await.ok()?;
                load::read_response(&mut stream, &mut buf, &mut worker).await
            };
            match tokio::time::timeout(load::REQUEST_TIMEOUT, exchange).await {
                Ok(Some(r)) if r.status == 200 => {
                    let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    out.latencies_us.push(us);
                    out.ok += 1;
                    if r.close || per_request {
                        continue 'connect;
                    }
                }
                Ok(Some(_)) => {
                    out.non_200 += 1;
                    continue 'connect;
                }
                _ => {
                    out.errors += 1;
                    continue 'connect;
                }
            }
        }
    }
    out
}

/// Measures one server: keep-alive, then connection per request, each after a warm-up.
fn measure(server: &Server, o: &Options, workers: usize, pki: &Pki) -> Result<Sample, String> {
    let addr = servers::free_addr();
    let running = start(server, addr, workers, pki)?;
    let rt = runtime(o.client_threads);
    let pids = procs::tree(running.child.id());
    let shape = |config: &Arc<rustls::ClientConfig>, conns: usize, per_request: bool| {
        rt.block_on(run(addr, config.clone(), conns, o.warm, per_request));
        let before = procs::cpu_time(&pids);
        let mut out = rt.block_on(run(addr, config.clone(), conns, o.measure, per_request));
        let cpu = procs::cpu_time(&pids).saturating_sub(before);
        if out.ok == 0 {
            return Err(format!(
                "{}: no request got a 200 over TLS ({} other statuses, {} errors)",
                server.label(workers),
                out.non_200,
                out.errors
            ));
        }
        let cpu_us = cpu.as_secs_f64() * 1e6 / out.ok as f64;
        Ok((
            out.rate(),
            out.latency_ms(0.99),
            cpu_us,
            out.non_200 + out.errors,
        ))
    };
    let negotiated = rt.block_on(negotiated(addr, pki.client.clone()));
    let (rate, p99, cpu_us, failures) = shape(&pki.client, o.connections, false)?;
    let (short_rate, short_p99, short_cpu_us, short_failures) =
        shape(&pki.full_handshake, o.short_connections, true)?;
    drop(running);
    Ok(Sample {
        rate,
        p99,
        cpu_us,
        failures,
        short_rate,
        short_p99,
        short_cpu_us,
        short_failures,
        negotiated,
    })
}

/// Whether one `GET /` over a new TLS connection to `addr` gets a 200 within 2 s.
async fn probe(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let name = ServerName::try_from("localhost").ok()?;
        let mut stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .ok()?;
        stream
            .write_all(load::request(addr, "/", true))
            .await
            .ok()?;
        let mut buf = vec![0u8; 16 * 1024];
        load::read_response(&mut stream, &mut buf, &mut String::new()).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), exchange).await,
        Ok(Some(r)) if r.status == 200
    )
}

/// The cipher suite and key exchange group a client and the server at `addr` agree on.
async fn negotiated(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").expect("a valid name");
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return "?".into();
    };
    let Ok(stream) = connector.connect(name, tcp).await else {
        return "?".into();
    };
    let conn = stream.get_ref().1;
    format!(
        "{}, {}",
        conn.negotiated_cipher_suite()
            .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite())),
        conn.negotiated_key_exchange_group()
            .map_or_else(|| "?".to_string(), |g| format!("{:?}", g.name()))
    )
}

/// Runs the scenario over `o.rounds` rounds (servers interleaved, order rotated) and renders its
/// section of the report.
pub fn run_scenario(o: &Options, workers: usize) -> Result<String, String> {
    let pki = Pki::new()?;
    let mut servers_run = vec![Server::Hyperfork];
    let mut note = String::new();
    match servers::find_nginx() {
        Some(binary) => servers_run.push(Server::Nginx(binary)),
        None => note.push_str("nginx is not installed: its row is missing.\n\n"),
    }
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); servers_run.len()];
    for round in 0..o.rounds {
        for k in 0..servers_run.len() {
            let i = (k + round) % servers_run.len();
            eprintln!(
                "bench: round {}/{}: {}",
                round + 1,
                o.rounds,
                servers_run[i].label(workers)
            );
            let s = measure(&servers_run[i], o, workers, &pki)?;
            eprintln!(
                "bench:   keep-alive {:.0} req/s, p99 {:.2} ms, {:.1} µs CPU/request, {} failures; \
                 full handshake per request {:.0} req/s, p99 {:.2} ms, {:.0} µs CPU/request, {} \
                 failures",
                s.rate,
                s.p99,
                s.cpu_us,
                s.failures,
                s.short_rate,
                s.short_p99,
                s.short_cpu_us,
                s.short_failures
            );
            samples[i].push(s);
        }
    }
    drop(pki.dir);
    Ok(render(o, workers, &servers_run, &samples, &note))
}

fn render(
    o: &Options,
    workers: usize,
    servers_run: &[Server],
    samples: &[Vec<Sample>],
    note: &str,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "\n## TLS\n");
    let _ = writeln!(
        s,
        "hyperfork and nginx with the same ECDSA P-256 certificate (chain: leaf and CA), {workers} \
         worker(s) each, HTTP/1.1 over TLS 1.3 from a rustls client (the suite and group each \
         server picked are in its row). Keep-alive: {} connections; connection per request: {} client loops, \
         each connection a full handshake (resumption off). CPU per request: the server's processes, \
         user + system. Medians over {} round(s).\n",
        o.connections, o.short_connections, o.rounds
    );
    s.push_str(note);
    let _ = writeln!(
        s,
        "| Server | keep-alive req/s | p99 ms | CPU µs/request | failures | new TLS connection per \
         request: req/s | p99 ms | CPU µs/request | failures |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (server, rounds) in servers_run.iter().zip(samples) {
        let m = |f: fn(&Sample) -> f64| median(rounds.iter().map(f));
        let failures = |f: fn(&Sample) -> u64| rounds.iter().map(f).sum::<u64>();
        let _ = writeln!(
            s,
            "| {} ({}) | {:.0} | {:.2} | {:.1} | {} | {:.0} | {:.2} | {:.0} | {} |",
            server.label(workers),
            rounds.first().map_or("", |x| x.negotiated.as_str()),
            m(|x| x.rate),
            m(|x| x.p99),
            m(|x| x.cpu_us),
            failures(|x| x.failures),
            m(|x| x.short_rate),
            m(|x| x.short_p99),
            m(|x| x.short_cpu_us),
            failures(|x| x.short_failures),
        );
    }
    if let [hf, nginx] = samples {
        let ratio = |f: fn(&Sample) -> f64| median(hf.iter().map(f)) / median(nginx.iter().map(f));
        let _ = writeln!(
            s,
            "\nhyperfork / nginx: keep-alive {:.2}× the throughput at {:.2}× the CPU per request; \
             connection per request {:.2}× the throughput at {:.2}× the CPU per request.",
            ratio(|x| x.rate),
            ratio(|x| x.cpu_us),
            ratio(|x| x.short_rate),
            ratio(|x| x.short_cpu_us),
        );
    }
    s.push('\n');
    s
}
