//! Listening sockets: parsed from `--bind`/`--host`/`--port`, bound once by the master, inherited by
//! every worker across `fork`.
//!
//! Sockets are created with `SO_REUSEADDR` (so a restart does not wait out `TIME_WAIT`), put in listening
//! state with the configured backlog, and made non-blocking so a worker's tokio runtime can adopt them.
//! All workers accept from the same kernel queue.
//!
//! A unix socket file gets exactly the configured mode (`--socket-mode`, 0660 by default): it is bound
//! while the umask is 0o177, so it is never more open than owner-only, then `chmod`ed. Its identity
//! (device and inode of the path right after binding) is recorded, and on exit the master removes the
//! path only if it still names that same socket file ([`remove_unix_files`]): a file someone else put
//! there since is left alone. Sockets passed by systemd have no recorded identity and are never removed.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::error::StartError;
use crate::shared::privileges::Account;

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

/// The umask in force while a unix socket is bound: the file is created owner-only (0600), then
/// `chmod`ed to the configured mode, so it is never more open than asked for.
const BIND_UMASK: u32 = 0o177;

/// Parses a file mode or umask written in octal: `660`, `0660` or `0o660`, at most `0777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t
        .strip_prefix("0o")
        .or_else(|| t.strip_prefix("0O"))
        .unwrap_or(t);
    let bad =
        || format!("expected an octal mode such as 660, 0660 or 0o660 (at most 0777), got {s:?}");
    // `from_str_radix` alone would also take a sign.
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    match u32::from_str_radix(digits, 8) {
        Ok(n) if n <= 0o777 => Ok(n),
        _ => Err(bad()),
    }
}

/// Where a unix socket file is on disk: its device and inode, read from the path right after binding.
///
/// The master removes a socket's path on exit only if the path still has this identity and is a
/// socket, so a file that another server (or anyone) put in its place is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// `st_dev` of the path.
    pub dev: u64,
    /// `st_ino` of the path.
    pub ino: u64,
}

impl FileId {
    /// The identity of the socket file now at `path` (not following a symbolic link); an error if
    /// the path is missing or is not a socket.
    pub fn of_socket(path: &Path) -> io::Result<FileId> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the path is not a socket",
            ));
        }
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `path` is still this socket file: a socket with the same device and inode.
    pub fn is_at(self, path: &Path) -> bool {
        FileId::of_socket(path).is_ok_and(|now| now == self)
    }

    /// Parses the form [`fmt::Display`] writes, `DEV:INO`.
    pub fn parse(s: &str) -> Option<FileId> {
        let (dev, ino) = s.trim().split_once(':')?;
        Some(FileId {
            dev: dev.parse().ok()?,
            ino: ino.parse().ok()?,
        })
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// A bound, listening, non-blocking socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP socket.
    Tcp(TcpListener),
    /// A unix domain socket, its path, and the identity of the socket file when this process (or the
    /// master it took over from) created it: only such a file is removed on exit, and only if the path
    /// still names it. `None` for a socket whose file belongs to someone else (systemd).
    Unix(UnixListener, PathBuf, Option<FileId>),
}

impl Listener {
    /// The address as a user would write it (with the real port when 0 was asked for).
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => a.to_string(),
                Err(_) => "tcp socket".into(),
            },
            Listener::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }

    /// A TCP socket's accept queue: connections waiting to be accepted now, and the queue's limit
    /// (from `TCP_INFO`: `tcpi_unacked` and `tcpi_sacked` on a listening socket). `None` for unix
    /// sockets, which do not report it.
    pub fn queue(&self) -> Option<(u32, u32)> {
        let Listener::Tcp(l) = self else {
            return None;
        };
        // SAFETY: an all-zero `tcp_info` is a valid value of the plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the fd is this listener's, open for its life; the kernel writes at most `len` bytes
        // into `info` and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some((info.tcpi_unacked, info.tcpi_sacked))
    }

    /// Whether this socket serves `spec`: same path for unix sockets; for TCP the same port (any, when
    /// `spec` asks for port 0) and, when `spec`'s host is an IP address, the same address.
    pub fn serves(&self, spec: &BindSpec) -> bool {
        match (self, spec) {
            (Listener::Unix(_, p, _), BindSpec::Unix(q)) => p == q,
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
    /// A unix socket adopted here has no [`FileId`], so its file is never removed; a new master of a
    /// binary upgrade sets the identity its predecessor recorded with [`Listener::set_file_id`].
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
            Ok(Listener::Unix(socket.into(), path, None))
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
            Listener::Unix(l, p, id) => Listener::Unix(l.try_clone()?, p.clone(), *id),
        })
    }

    /// The identity of the socket file this process is responsible for removing; `None` for TCP and
    /// for a unix socket whose file is someone else's.
    pub fn file_id(&self) -> Option<FileId> {
        match self {
            Listener::Unix(_, _, id) => *id,
            Listener::Tcp(_) => None,
        }
    }

    /// Records the identity of a unix socket's file (a binary upgrade's new master takes over the
    /// files of the sockets it inherited). Does nothing for TCP.
    pub fn set_file_id(&mut self, file: Option<FileId>) {
        if let Listener::Unix(_, _, id) = self {
            *id = file;
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _, _) => l.as_raw_fd(),
        }
    }
}

/// For each address, the inherited socket that serves it, or a newly bound one; inherited sockets no
/// address needs are closed. Used by a new master in a binary upgrade, whose configuration may differ.
pub fn reuse_or_bind(
    specs: &[BindSpec],
    mut inherited: Vec<Listener>,
    backlog: u32,
    socket_mode: u32,
    owner: Option<&Account>,
) -> Result<Vec<Listener>, StartError> {
    let mut out = Vec::new();
    for spec in specs {
        match inherited.iter().position(|l| l.serves(spec)) {
            Some(i) => out.push(inherited.remove(i)),
            None => {
                let fresh = bind_all(std::slice::from_ref(spec), backlog, socket_mode, owner)?;
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

/// Binds every address, in order; unix socket files get exactly `socket_mode`, and belong to `owner`
/// when given (the workers' account, `--user`). Fails on the first address that cannot be bound.
pub fn bind_all(
    specs: &[BindSpec],
    backlog: u32,
    socket_mode: u32,
    owner: Option<&Account>,
) -> Result<Vec<Listener>, StartError> {
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
            BindSpec::Unix(path) => out.push(bind_unix(path, backlog, socket_mode, owner)?),
        }
    }
    Ok(out)
}

/// Removes the socket files of unix listeners; the master calls this on exit.
///
/// A path is removed only if it still names the socket file that was bound there (same device and
/// inode, and a socket): a file another server or a person put in its place since is left alone, and
/// so is the file of a socket passed by systemd (no recorded identity).
pub fn remove_unix_files(listeners: &[Listener]) {
    for l in listeners {
        let Listener::Unix(_, path, Some(id)) = l else {
            continue;
        };
        // Between this check and the unlink the path could still be swapped; the window is a few
        // microseconds at exit, and there is no unlink-if-inode call to close it.
        if id.is_at(path) {
            let _ = std::fs::remove_file(path);
        } else if std::fs::symlink_metadata(path).is_ok() {
            tracing::info!(
                "not removing {}: it is no longer the socket file this master created",
                path.display()
            );
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

/// Sets the process umask for its lifetime and restores the previous one when dropped.
struct UmaskGuard(nix::sys::stat::Mode);

impl UmaskGuard {
    fn set(mask: u32) -> UmaskGuard {
        UmaskGuard(nix::sys::stat::umask(
            nix::sys::stat::Mode::from_bits_truncate(mask),
        ))
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

/// Binds a unix socket at `path` with `mode`, given to `owner` if any: a stale socket file (nobody
/// listening) is replaced, a live one or another kind of file is an error; the file is never more open
/// than `mode`, even briefly (it is born `0600`, given to its owner, then `chmod`ed).
pub fn bind_unix(
    path: &Path,
    backlog: u32,
    mode: u32,
    owner: Option<&Account>,
) -> Result<Listener, StartError> {
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
        // Only a refused connection proves nobody listens: a live server of another user answers
        // EACCES, and one with a full backlog EAGAIN; neither socket may be deleted.
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(StartError::UnixPathTaken {
                    path: path.to_path_buf(),
                    reason: "another server is listening on it",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(_) => {
                return Err(StartError::UnixPathTaken {
                    path: path.to_path_buf(),
                    reason: "a socket is there, and connecting to it to see whether a server listens \
                             failed with an error other than 'connection refused'",
                });
            }
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
    let id = {
        // bind(2) creates the file with mode 0777 minus the umask. The umask is the process's, so this
        // relies on the master being single-threaded (it is; a library user's extra threads are
        // warned about at start): under 0o177 the file is born 0600, and only the chmod below opens
        // it up, so it is never more open than the configured mode. The guard restores the umask on
        // every path out of this block.
        let _umask = UmaskGuard::set(BIND_UMASK);
        socket.bind(&addr).map_err(err)?;
        // The identity of the path as bound (a stat of the path: fstat of the socket would describe
        // the socket's own inode, not the file).
        let id = FileId::of_socket(path).map_err(err)?;
        let handed = match owner {
            Some(account) => crate::shared::privileges::hand_over_socket(path, account),
            None => Ok(()),
        };
        let moded = handed.and_then(|()| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)
        });
        if let Err(e) = moded {
            if id.is_at(path) {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        id
    };
    socket.listen(backlog_i32(backlog)).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    Ok(Listener::Unix(socket.into(), path.to_path_buf(), Some(id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default socket mode (`config` declares it; this layer does not import `config`).
    const DEFAULT_SOCKET_MODE: u32 = 0o660;

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
            DEFAULT_SOCKET_MODE,
            None,
        )
        .unwrap();
        let taken = first[0].describe();
        let spec = BindSpec::parse(&taken).unwrap();
        let err = bind_all(&[spec], 16, DEFAULT_SOCKET_MODE, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&taken), "{err}");
    }

    #[test]
    fn unix_socket_in_missing_dir() {
        let err = bind_all(
            &[BindSpec::Unix("/nonexistent-dir/x.sock".into())],
            16,
            DEFAULT_SOCKET_MODE,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent-dir"), "{err}");
    }

    #[test]
    fn stale_unix_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let first = bind_all(
            &[BindSpec::Unix(path.clone())],
            16,
            DEFAULT_SOCKET_MODE,
            None,
        )
        .unwrap();
        let again = bind_all(
            &[BindSpec::Unix(path.clone())],
            16,
            DEFAULT_SOCKET_MODE,
            None,
        );
        assert!(again.is_err(), "a live socket must not be taken over");
        drop(first);
        assert!(bind_all(&[BindSpec::Unix(path)], 16, DEFAULT_SOCKET_MODE, None).is_ok());
    }

    #[test]
    fn modes_parse_in_octal_only() {
        for (s, n) in [
            ("660", 0o660),
            ("0660", 0o660),
            ("0o660", 0o660),
            ("0O600", 0o600),
            (" 777 ", 0o777),
            ("0", 0),
            ("077", 0o077),
            ("00777", 0o777),
        ] {
            assert_eq!(parse_mode(s), Ok(n), "{s}");
        }
        for bad in [
            "",
            "0o",
            "9x9",
            "8",
            "1000",
            "0o1000",
            "+660",
            "-1",
            "0x1ff",
            "rw-rw----",
            "66 0",
            "4294967296",
        ] {
            let e = parse_mode(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("0660"),
                "{bad}: {e}"
            );
        }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn a_unix_socket_gets_exactly_the_configured_mode() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o660, 0o600, 0o666, 0o640] {
            let path = dir.path().join(format!("{mode:o}.sock"));
            let l = bind_all(&[BindSpec::Unix(path.clone())], 16, mode, None).unwrap();
            assert_eq!(mode_of(&path), mode, "{mode:o}");
            assert_eq!(l[0].file_id(), Some(FileId::of_socket(&path).unwrap()));
        }
    }

    #[test]
    fn file_ids_round_trip_and_reject_junk() {
        let id = FileId { dev: 2049, ino: 77 };
        assert_eq!(FileId::parse(&id.to_string()), Some(id));
        for bad in ["", "1", "1:", ":2", "a:b", "1:2:3", "-1:2"] {
            assert_eq!(FileId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_socket_file_we_bound_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let spec = [BindSpec::Unix(path.clone())];

        // Our own socket, untouched: removed.
        let ours = bind_all(&spec, 16, DEFAULT_SOCKET_MODE, None).unwrap();
        let id = ours[0].file_id().unwrap();
        assert!(id.is_at(&path));
        remove_unix_files(&ours);
        assert!(!path.exists(), "our own socket file was left behind");
        assert!(!id.is_at(&path));
        drop(ours);

        // Replaced by another live socket (renamed over ours): left alone.
        let ours = bind_all(&spec, 16, DEFAULT_SOCKET_MODE, None).unwrap();
        let other_path = dir.path().join("other.sock");
        let other = UnixListener::bind(&other_path).unwrap();
        std::fs::rename(&other_path, &path).unwrap();
        assert!(!ours[0].file_id().unwrap().is_at(&path));
        remove_unix_files(&ours);
        assert!(
            UnixStream::connect(&path).is_ok(),
            "the other socket was removed"
        );
        drop((ours, other));
        std::fs::remove_file(&path).unwrap();

        // Replaced by a regular file: left alone.
        let ours = bind_all(&spec, 16, DEFAULT_SOCKET_MODE, None).unwrap();
        let id = ours[0].file_id().unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not a socket").unwrap();
        assert!(!id.is_at(&path));
        remove_unix_files(&ours);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");

        // A different identity on the same path (another inode): left alone.
        std::fs::remove_file(&path).unwrap();
        let ours = bind_all(&spec, 16, DEFAULT_SOCKET_MODE, None).unwrap();
        let stranger = FileId {
            dev: id.dev,
            ino: ours[0].file_id().unwrap().ino ^ 1,
        };
        assert!(!stranger.is_at(&path));
    }

    #[test]
    fn an_adopted_socket_file_is_never_removed_unless_given_its_identity() {
        use std::os::fd::IntoRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let bound = UnixListener::bind(&path).unwrap();
        let fd = bound.try_clone().unwrap().into_raw_fd();
        // SAFETY: `fd` is a fresh duplicate that nothing else owns.
        let mut adopted = unsafe { Listener::adopt(fd, "test socket") }.unwrap();
        assert_eq!(adopted.file_id(), None);
        remove_unix_files(std::slice::from_ref(&adopted));
        assert!(path.exists(), "a socket passed in (systemd) was removed");
        adopted.set_file_id(Some(FileId::of_socket(&path).unwrap()));
        remove_unix_files(std::slice::from_ref(&adopted));
        assert!(!path.exists());
    }
}
