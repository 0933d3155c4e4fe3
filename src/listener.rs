//! Listening sockets: parsed from `--bind`/`--host`/`--port`, bound once by the master, inherited by
//! every worker across `fork`.
//!
//! Sockets are created with `SO_REUSEADDR` (so a restart does not wait out `TIME_WAIT`), put in listening
//! state with the configured backlog, and made non-blocking so a worker's tokio runtime can adopt them.
//! All workers accept from the same kernel queue.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::StartError;

/// One address to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindSpec {
    /// A TCP host (name or IP) and port.
    Tcp {
        /// Host name or IP address, without brackets.
        host: String,
        /// Port; 0 asks the kernel for a free one.
        port: u16,
    },
    /// A unix domain socket path.
    Unix(PathBuf),
}

impl BindSpec {
    /// Parses `HOST:PORT`, `[IPv6]:PORT` or `unix:/path`. Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<BindSpec> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            return (!path.is_empty()).then(|| BindSpec::Unix(PathBuf::from(path)));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest.split_once("]:")?;
            h.parse::<std::net::Ipv6Addr>().ok()?;
            (h, p)
        } else {
            let (h, p) = s.rsplit_once(':')?;
            if h.contains(':') {
                return None;
            }
            (h, p)
        };
        if host.is_empty() {
            return None;
        }
        let port = port.parse::<u16>().ok()?;
        Some(BindSpec::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindSpec::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            BindSpec::Tcp { host, port } => write!(f, "{host}:{port}"),
            BindSpec::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A unix domain socket and its path (removed by the master on exit).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The address as a user would write it (with the real port when 0 was asked for).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(_) => "tcp socket".into(),
            },
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// Whether this socket serves `spec`: same path for unix sockets; for TCP the same port (any, when
    /// `spec` asks for port 0) and, when `spec`'s host is an IP address, the same address.
    pub fn serves(&self, spec: &BindSpec) -> bool {
        match (self, spec) {
            (Listener::Unix(_, p), BindSpec::Unix(q)) => p == q,
            (Listener::Tcp(t), BindSpec::Tcp { host, port }) => t.local_addr().is_ok_and(|a| {
                (*port == 0 || a.port() == *port)
                    && host
                        .parse::<std::net::IpAddr>()
                        .map_or(true, |ip| ip == a.ip())
            }),
            _ => false,
        }
    }

    /// Takes ownership of an inherited listening socket (from systemd or from the master that started
    /// this one), makes it close-on-exec and non-blocking. `what` names it in errors.
    ///
    /// # Safety
    ///
    /// `fd` must be an open descriptor that nothing else in this process owns or will close.
    pub unsafe fn adopt(fd: RawFd, what: &str) -> Result<Listener, StartError> {
        use std::os::fd::FromRawFd;
        let err = |source| StartError::Bind {
            address: what.to_string(),
            source,
        };
        // Check the descriptor is open before taking ownership of it.
        // SAFETY: F_GETFD only reads the descriptor's flags; an invalid number fails with EBADF.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: the caller guarantees `fd` is open and owned by nobody else.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        socket.set_cloexec(true).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        let addr = socket.local_addr().map_err(err)?;
        if let Some(path) = addr.as_pathname() {
            let path = path.to_path_buf();
            Ok(Listener::Unix(socket.into(), path))
        } else if addr.as_socket().is_some() {
            Ok(Listener::Tcp(socket.into()))
        } else {
            Err(err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a TCP or unix stream socket",
            )))
        }
    }

    /// A second handle to the same socket (a `dup` of the descriptor).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l, p) => Listener::Unix(l.try_clone()?, p.clone()),
        })
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

/// For each address, the inherited socket that serves it, or a newly bound one; inherited sockets no
/// address needs are closed. Used by a new master in a binary upgrade, whose configuration may differ.
pub fn reuse_or_bind(
    specs: &[BindSpec],
    mut inherited: Vec<Listener>,
    backlog: u32,
) -> Result<Vec<Listener>, StartError> {
    let mut out = Vec::new();
    for spec in specs {
        match inherited.iter().position(|l| l.serves(spec)) {
            Some(i) => out.push(inherited.remove(i)),
            None => {
                let fresh = bind_all(std::slice::from_ref(spec), backlog)?;
                tracing::info!("binary upgrade: {spec} is a new address");
                out.extend(fresh);
            }
        }
    }
    for l in inherited {
        tracing::info!(
            "binary upgrade: no longer listening on {} (closed once the previous master exits)",
            l.describe()
        );
    }
    Ok(out)
}

/// Binds every address, in order. Fails on the first address that cannot be bound.
pub fn bind_all(specs: &[BindSpec], backlog: u32) -> Result<Vec<Listener>, StartError> {
    let mut out = Vec::new();
    for spec in specs {
        match spec {
            BindSpec::Tcp { host, port } => {
                for addr in resolve(host, *port)? {
                    out.push(Listener::Tcp(bind_tcp(addr, backlog).map_err(
                        |source| StartError::Bind {
                            address: spec.to_string(),
                            source,
                        },
                    )?));
                }
            }
            BindSpec::Unix(path) => out.push(bind_unix(path, backlog)?),
        }
    }
    Ok(out)
}

/// Removes the socket files of unix listeners; the master calls this on exit.
pub fn remove_unix_files(listeners: &[Listener]) {
    for l in listeners {
        if let Listener::Unix(_, path) = l {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Resolves a host to addresses; an IP literal resolves to itself. Duplicates are dropped.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, StartError> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|source| StartError::Resolve {
            host: host.to_string(),
            source,
        })?;
    let mut v: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    if v.is_empty() {
        return Err(StartError::Resolve {
            host: host.to_string(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    // With port 0 every address would get a different port; keep the first so there is one port.
    if port == 0 {
        v.truncate(1);
    }
    Ok(v)
}

fn backlog_i32(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

fn bind_tcp(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog_i32(backlog))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn bind_unix(path: &Path, backlog: u32) -> Result<Listener, StartError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(StartError::UnixDirMissing {
            path: path.to_path_buf(),
            dir,
        });
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StartError::UnixPathTaken {
                path: path.to_path_buf(),
                reason: "the path exists and is not a socket",
            });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(StartError::UnixPathTaken {
                path: path.to_path_buf(),
                reason: "another server is listening on it",
            });
        }
        // A socket nobody listens on: left behind by a previous run.
        std::fs::remove_file(path).map_err(|source| StartError::Bind {
            address: format!("unix:{}", path.display()),
            source,
        })?;
    }
    let err = |source| StartError::Bind {
        address: format!("unix:{}", path.display()),
        source,
    };
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(err)?;
    let addr = SockAddr::unix(path).map_err(err)?;
    socket.bind(&addr).map_err(err)?;
    socket.listen(backlog_i32(backlog)).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(Listener::Unix(socket.into(), path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bind_forms() {
        assert_eq!(
            BindSpec::parse("0.0.0.0:80"),
            Some(BindSpec::Tcp {
                host: "0.0.0.0".into(),
                port: 80
            })
        );
        assert_eq!(
            BindSpec::parse("[::1]:8080"),
            Some(BindSpec::Tcp {
                host: "::1".into(),
                port: 8080
            })
        );
        assert_eq!(
            BindSpec::parse("unix:/run/app.sock"),
            Some(BindSpec::Unix("/run/app.sock".into()))
        );
        for bad in [
            "",
            "8000",
            ":80",
            "host:",
            "host:99999",
            "::1:80",
            "[nope]:80",
            "unix:",
        ] {
            assert_eq!(BindSpec::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn port_in_use_is_an_error_naming_the_address() {
        let first = bind_all(
            &[BindSpec::Tcp {
                host: "127.0.0.1".into(),
                port: 0,
            }],
            16,
        )
        .unwrap();
        let taken = first[0].describe();
        let spec = BindSpec::parse(&taken).unwrap();
        let err = bind_all(&[spec], 16).unwrap_err().to_string();
        assert!(err.contains(&taken), "{err}");
    }

    #[test]
    fn unix_socket_in_missing_dir() {
        let err = bind_all(&[BindSpec::Unix("/nonexistent-dir/x.sock".into())], 16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent-dir"), "{err}");
    }

    #[test]
    fn stale_unix_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind_all(&[BindSpec::Unix(path.clone())], 16).unwrap();
        let again = bind_all(&[BindSpec::Unix(path.clone())], 16);
        assert!(again.is_err(), "a live socket must not be taken over");
        drop(first);
        assert!(bind_all(&[BindSpec::Unix(path)], 16).is_ok());
    }
}
