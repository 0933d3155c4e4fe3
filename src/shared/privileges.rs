//! Dropping privileges (`--user`, `--group`, gunicorn's `-u`/`-g`): the master resolves the account
//! once at start ([`resolve`]), binds its sockets and opens its files as root, and every worker
//! switches to the account right after its fork ([`Account::assume`]), before anything of the app
//! runs; the master itself stays root (see `docs/operations.md`, "Dropping privileges").
//!
//! The supplementary groups are looked up once, in the master ([`getgrouplist`], what `initgroups`
//! does), and set in each child with `setgroups`: a fork then costs no user-database lookup (NSS may
//! be LDAP, slow or down), and every worker of a generation gets the same groups.
//!
//! The files the workers use by path are handed to the account by the master: the log file (the
//! workers reopen it after a rotation, see [`hand_over`]) and the unix listening sockets (so a proxy
//! in the account's group can connect). The control socket and the pid file stay root's.
//!
//! [`getgrouplist`]: nix::unistd::getgrouplist

use std::ffi::CString;
use std::fmt;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};

use crate::error::{PrivilegeError, StartError};

/// What a `--user` or `--group` value was and where it came from, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The value: a name, or a numeric id.
    pub text: &'a str,
    /// Where it came from, e.g. `--user` or `env HYPERFORK_USER`.
    pub from: &'a str,
}

/// The user and groups the workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user id; `None` when only a group was given (the uid stays the master's).
    uid: Option<Uid>,
    /// The group id: `--group`, else the user's primary group.
    gid: Gid,
    /// The supplementary groups (the user's groups from the group database, and `gid`).
    groups: Vec<Gid>,
    /// The user's name and home directory, when the user has an entry in the user database.
    user: Option<(String, PathBuf)>,
    /// How messages name the account, e.g. `user nobody (uid 65534), group nogroup (gid 65534)`.
    label: String,
}

/// What `--user` and `--group` ask of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Neither was given.
    Unchanged,
    /// The process already runs as the account (not root): nothing to switch. The text names it.
    Already(String),
    /// The workers switch to the account.
    Switch(Account),
}

/// The process's current user and group, as [`resolve`] compares them.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    /// The effective uid.
    pub uid: Uid,
    /// The effective gid.
    pub gid: Gid,
}

impl Current {
    /// This process's effective ids.
    pub fn of_process() -> Current {
        Current {
            uid: nix::unistd::geteuid(),
            gid: nix::unistd::getegid(),
        }
    }
}

impl fmt::Display for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = User::from_uid(self.uid).ok().flatten().map(|u| u.name);
        match name {
            Some(n) => write!(f, "uid {} ({n})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// Resolves `--user` and `--group` against the user and group databases: a name, or a numeric id (a
/// uid without an entry needs `--group`). Without root, asking for another account than the current
/// one is an error, and asking for the current one changes nothing.
pub fn resolve(
    user: Option<Wanted<'_>>,
    group: Option<Wanted<'_>>,
    current: Current,
) -> Result<Target, PrivilegeError> {
    if user.is_none() && group.is_none() {
        return Ok(Target::Unchanged);
    }
    let found_user = user.map(find_user).transpose()?;
    let found_group = group.map(find_group).transpose()?;
    let gid = match (&found_group, &found_user) {
        (Some(g), _) => g.0,
        (None, Some((_, Some(entry)))) => entry.gid,
        (None, Some((uid, None))) => {
            return Err(PrivilegeError::NoPrimaryGroup {
                uid: uid.as_raw(),
                from: user.map_or_else(String::new, |u| u.from.to_string()),
            });
        }
        (None, None) => unreachable!("a user or a group was given"),
    };
    let uid = found_user.as_ref().map(|(uid, _)| *uid);
    let entry = found_user.and_then(|(_, entry)| entry);
    let groups = match &entry {
        Some(u) => supplementary(u, gid)?,
        None => vec![gid],
    };
    let label = label(uid, entry.as_ref(), gid, found_group.as_ref().map(|g| &g.1));
    let account = Account {
        uid,
        gid,
        groups,
        user: entry.map(|u| (u.name, u.dir)),
        label,
    };
    if current.uid.is_root() {
        return Ok(Target::Switch(account));
    }
    // Not root: only the account this process already is will do (e.g. `user` in a TOML file shared
    // with a unit that sets User=). A group given explicitly must be the current one too.
    let same_user = uid.is_none_or(|u| u == current.uid);
    let same_group = found_group.is_none() || gid == current.gid;
    if same_user && same_group {
        return Ok(Target::Already(account.label));
    }
    let (what, wanted) = match (user, group) {
        (Some(u), _) if !same_user => ("user", u),
        (_, Some(g)) => ("group", g),
        (Some(u), None) => ("user", u),
        (None, None) => unreachable!("a user or a group was given"),
    };
    Err(PrivilegeError::NotRoot {
        what,
        name: wanted.text.to_string(),
        from: wanted.from.to_string(),
        current: current.to_string(),
    })
}

/// A user by name or numeric uid, with its database entry (a numeric uid may have none).
fn find_user(wanted: Wanted<'_>) -> Result<(Uid, Option<User>), PrivilegeError> {
    let text = wanted.text.trim();
    let lookup = |e: Errno| PrivilegeError::Lookup {
        what: "user",
        name: text.to_string(),
        from: wanted.from.to_string(),
        source: e.into(),
    };
    if let Some(id) = numeric(text) {
        let uid = Uid::from_raw(id);
        return Ok((uid, User::from_uid(uid).map_err(lookup)?));
    }
    match User::from_name(text).map_err(lookup)? {
        Some(u) => Ok((u.uid, Some(u))),
        None => Err(PrivilegeError::UnknownUser {
            name: text.to_string(),
            from: wanted.from.to_string(),
        }),
    }
}

/// A group by name or numeric gid, with its name when the group database has it.
fn find_group(wanted: Wanted<'_>) -> Result<(Gid, Option<String>), PrivilegeError> {
    let text = wanted.text.trim();
    let lookup = |e: Errno| PrivilegeError::Lookup {
        what: "group",
        name: text.to_string(),
        from: wanted.from.to_string(),
        source: e.into(),
    };
    if let Some(id) = numeric(text) {
        let gid = Gid::from_raw(id);
        return Ok((gid, Group::from_gid(gid).map_err(lookup)?.map(|g| g.name)));
    }
    match Group::from_name(text).map_err(lookup)? {
        Some(g) => Ok((g.gid, Some(g.name))),
        None => Err(PrivilegeError::UnknownGroup {
            name: text.to_string(),
            from: wanted.from.to_string(),
        }),
    }
}

/// A numeric id, as gunicorn reads one: digits only.
fn numeric(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The user's groups in the group database plus `gid`: what `initgroups(name, gid)` sets.
fn supplementary(user: &User, gid: Gid) -> Result<Vec<Gid>, PrivilegeError> {
    let lookup = |e: Errno| PrivilegeError::Lookup {
        what: "the groups of user",
        name: user.name.clone(),
        from: "the group database".into(),
        source: e.into(),
    };
    let name = CString::new(user.name.as_str()).map_err(|_| lookup(Errno::EINVAL))?;
    let mut groups = nix::unistd::getgrouplist(&name, gid).map_err(lookup)?;
    groups.sort_unstable_by_key(|g| g.as_raw());
    groups.dedup();
    Ok(groups)
}

/// How messages name an account.
fn label(
    uid: Option<Uid>,
    user: Option<&User>,
    gid: Gid,
    group: Option<&Option<String>>,
) -> String {
    let user_part = match (uid, user) {
        (Some(_), Some(u)) => format!("user {} (uid {})", u.name, u.uid),
        (Some(uid), None) => format!("uid {uid}"),
        (None, _) => "the master's uid".to_string(),
    };
    let group_name = match group {
        Some(name) => name.clone(),
        // The user's primary group: named from the database when it has it.
        None => Group::from_gid(gid).ok().flatten().map(|g| g.name),
    };
    match group_name {
        Some(n) => format!("{user_part}, group {n} (gid {gid})"),
        None => format!("{user_part}, gid {gid}"),
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Which step of [`Account::assume`] failed, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot switch to {account}: {step}: {source}")]
pub struct AssumeError {
    /// The account.
    pub account: String,
    /// The step, e.g. `setgroups`.
    pub step: &'static str,
    /// The OS error, or what the check found.
    #[source]
    pub source: std::io::Error,
}

impl Account {
    /// The uid the workers run as; `None` when only the group changes.
    pub fn uid(&self) -> Option<Uid> {
        self.uid
    }

    /// The user's name and home directory, for `USER`, `LOGNAME` and `HOME` in the workers; `None`
    /// without a user, or for a uid without an entry in the user database.
    pub fn login(&self) -> Option<(&str, &Path)> {
        self.user.as_ref().map(|(n, h)| (n.as_str(), h.as_path()))
    }

    /// Switches this process to the account, for good: the supplementary groups, then the gid (real,
    /// effective and saved), then the uid (the same three); then checks with `getresuid` and
    /// `getresgid` that every id is the account's and that root cannot be regained, and makes the
    /// process dumpable again (the kernel clears that on a credential change; see
    /// `docs/operations.md`). Call it in a single-threaded child right after `fork`.
    ///
    /// Changing credentials also clears the parent-death signal: set it after this call.
    pub fn assume(&self) -> Result<(), AssumeError> {
        let fail = |step: &'static str| {
            move |e: Errno| AssumeError {
                account: self.label.clone(),
                step,
                source: e.into(),
            }
        };
        nix::unistd::setgroups(&self.groups).map_err(fail("setgroups"))?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid).map_err(fail("setresgid"))?;
        if let Some(uid) = self.uid {
            nix::unistd::setresuid(uid, uid, uid).map_err(fail("setresuid"))?;
        }
        self.check().map_err(|what| AssumeError {
            account: self.label.clone(),
            step: "check",
            source: std::io::Error::other(what),
        })?;
        if self.uid.is_some() {
            nix::sys::prctl::set_dumpable(true).map_err(fail("prctl(PR_SET_DUMPABLE)"))?;
        }
        Ok(())
    }

    /// Checks the switch: every uid and gid is the account's, the groups are its groups, and a
    /// process of a non-root uid cannot become root again.
    fn check(&self) -> Result<(), String> {
        let g = nix::unistd::getresgid().map_err(|e| format!("getresgid: {e}"))?;
        if [g.real, g.effective, g.saved] != [self.gid; 3] {
            return Err(format!(
                "gids are {}/{}/{} (real/effective/saved), expected {}",
                g.real, g.effective, g.saved, self.gid
            ));
        }
        let mut groups = nix::unistd::getgroups().map_err(|e| format!("getgroups: {e}"))?;
        groups.sort_unstable_by_key(|g| g.as_raw());
        groups.dedup();
        if groups != self.groups {
            return Err(format!(
                "supplementary groups are {groups:?}, expected {:?}",
                self.groups
            ));
        }
        let Some(uid) = self.uid else {
            return Ok(());
        };
        let u = nix::unistd::getresuid().map_err(|e| format!("getresuid: {e}"))?;
        if [u.real, u.effective, u.saved] != [uid; 3] {
            return Err(format!(
                "uids are {}/{}/{} (real/effective/saved), expected {uid}",
                u.real, u.effective, u.saved
            ));
        }
        if !uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err("setuid(0) succeeded: root can be regained".into());
        }
        Ok(())
    }

    /// Forks a child that switches to the account and opens `path` for appending (without creating
    /// it), as a worker does when it reopens the log file after a rotation; waits for it. Run in the
    /// master at start, single-threaded, before the first worker: a switch the system refuses, or a
    /// log file the account cannot reach, stops the start with a clear error rather than failing in
    /// every worker.
    pub fn probe(&self, path: Option<&Path>) -> Result<(), ProbeError> {
        let cpath = path
            .map(|p| CString::new(p.as_os_str().as_encoded_bytes()))
            .transpose()
            .map_err(|_| ProbeError::Os("a log file path holds a NUL byte".into()))?;
        let (read, write) = nix::unistd::pipe()
            .map_err(|e| ProbeError::Os(format!("pipe for the privilege probe: {e}")))?;
        // SAFETY: the master is single-threaded here (before the first worker; `Server::run` warns
        // when it is not), so the child has a consistent copy of memory. The child only switches
        // credentials, opens one file, writes one message to the pipe and `_exit`s: it never returns
        // into the master's code.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                drop(read);
                let message = match self.assume() {
                    Err(e) => format!("S{e}"),
                    Ok(()) => match cpath.as_deref().map(append_only) {
                        Some(Err(e)) => format!("F{e}"),
                        Some(Ok(())) | None => "OK".to_string(),
                    },
                };
                let _ = nix::unistd::write(&write, message.as_bytes());
                // SAFETY: ends the child without running the master's exit handlers or destructors.
                unsafe { libc::_exit(0) }
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => {
                drop(write);
                let mut text = Vec::new();
                let mut buf = [0u8; 512];
                let read_error = loop {
                    match nix::unistd::read(&read, &mut buf) {
                        Ok(0) => break None,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                        Err(Errno::EINTR) => continue,
                        Err(e) => break Some(e),
                    }
                };
                let status = nix::sys::wait::waitpid(child, None);
                let text = String::from_utf8_lossy(&text);
                match (text.split_at_checked(1), read_error) {
                    (Some(("S", why)), _) => Err(ProbeError::Switch(why.to_string())),
                    (Some(("F", why)), _) => Err(ProbeError::LogFile {
                        path: path.map(Path::to_path_buf).unwrap_or_default(),
                        account: self.label.clone(),
                        why: why.to_string(),
                    }),
                    _ if text == "OK" => Ok(()),
                    (_, Some(e)) => Err(ProbeError::Os(format!(
                        "reading the privilege probe's answer: {e}"
                    ))),
                    (_, None) => Err(ProbeError::Os(format!(
                        "the privilege probe ended without an answer: {status:?}"
                    ))),
                }
            }
            Err(e) => Err(ProbeError::Os(format!("fork for the privilege probe: {e}"))),
        }
    }
}

/// Opens `path` for appending, without creating it, and closes it.
fn append_only(path: &std::ffi::CStr) -> Result<(), Errno> {
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_APPEND | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    drop(fd);
    Ok(())
}

/// What [`Account::probe`] found.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The system refused the switch (e.g. root without `CAP_SETUID` in a container).
    #[error(
        "{0} (switching needs root with CAP_SETUID and CAP_SETGID, which a container may drop)"
    )]
    Switch(String),
    /// The account cannot open the log file.
    #[error(
        "the log file {} cannot be opened by the workers' account, {account}: {why}; the workers \
         reopen it after a rotation (SIGUSR1): put it where that account can reach it",
        path.display()
    )]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// The account.
        account: String,
        /// The error the child got.
        why: String,
    },
    /// The probe itself could not run (pipe, fork).
    #[error("{0}")]
    Os(String),
}

/// Hands a file the master opened and the workers reopen by path (the log file) to the account:
/// `fchown` of the open file to the account's uid and gid, as gunicorn does with its log files. Only a
/// regular file opened through a path that is not a symlink is handed over (`nofollow` says how it
/// was opened), so a link planted where the file was cannot make root give away another file.
/// Returns whether it was handed over.
pub fn hand_over(file: &std::fs::File, account: &Account, nofollow: bool) -> Result<bool, Errno> {
    if !nofollow || !nix::unistd::geteuid().is_root() {
        return Ok(false);
    }
    let stat = nix::sys::stat::fstat(file.as_fd())?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(false);
    }
    nix::unistd::fchown(file.as_fd(), account.uid, Some(account.gid))?;
    Ok(true)
}

/// Gives the unix socket file just bound at `path` to the account (`lchown`: never through a
/// symlink), so that the account's group can be granted access by `--socket-mode`. The caller
/// changes the mode afterwards.
pub fn hand_over_socket(path: &Path, account: &Account) -> Result<(), StartError> {
    std::os::unix::fs::lchown(
        path,
        account.uid.map(Uid::as_raw),
        Some(account.gid.as_raw()),
    )
    .map_err(|source| StartError::Bind {
        address: format!("unix:{}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(text: &str) -> Wanted<'_> {
        Wanted {
            text,
            from: "--user",
        }
    }

    const ROOT: Current = Current {
        uid: Uid::from_raw(0),
        gid: Gid::from_raw(0),
    };

    #[test]
    fn nothing_asked_nothing_changed() {
        assert_eq!(resolve(None, None, ROOT).unwrap(), Target::Unchanged);
    }

    #[test]
    fn a_user_by_name_or_uid_takes_its_primary_group_and_groups() {
        let Target::Switch(by_name) = resolve(Some(wanted("root")), None, ROOT).unwrap() else {
            panic!("root can switch")
        };
        assert_eq!(
            (by_name.uid, by_name.gid),
            (Some(Uid::from_raw(0)), Gid::from_raw(0))
        );
        assert!(by_name.groups.contains(&Gid::from_raw(0)));
        assert_eq!(by_name.login().map(|l| l.0), Some("root"));
        assert!(
            by_name.to_string().starts_with("user root (uid 0), group "),
            "{by_name}"
        );
        let by_id = resolve(Some(wanted("0")), None, ROOT).unwrap();
        assert_eq!(by_id, Target::Switch(by_name));
    }

    #[test]
    fn unknown_names_are_errors_naming_them_and_their_source() {
        let e = resolve(Some(wanted("no-such-user-hf")), None, ROOT).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown user \"no-such-user-hf\" (from --user): expected a user name or numeric uid \
             from the user database"
        );
        let g = Wanted {
            text: "no-such-group-hf",
            from: "env HYPERFORK_GROUP",
        };
        let e = resolve(Some(wanted("root")), Some(g), ROOT).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("unknown group \"no-such-group-hf\" (from env HYPERFORK_GROUP)"),
            "{e}"
        );
    }

    #[test]
    fn a_uid_without_an_entry_needs_a_group() {
        // A uid far above any system's allocation.
        let e = resolve(Some(wanted("3999999999")), None, ROOT).unwrap_err();
        assert!(e.to_string().contains("give --group too"), "{e}");
        let g = Wanted {
            text: "0",
            from: "--group",
        };
        let Target::Switch(a) = resolve(Some(wanted("3999999999")), Some(g), ROOT).unwrap() else {
            panic!("root can switch")
        };
        assert_eq!(a.groups, vec![Gid::from_raw(0)]);
        assert_eq!(a.login(), None);
    }

    #[test]
    fn without_root_only_the_current_account_is_accepted() {
        let me = Current {
            uid: Uid::from_raw(0),
            gid: Gid::from_raw(0),
        };
        // Pretend to be a non-root uid whose account is "root"'s entry: the rule compares ids.
        let not_root = Current {
            uid: Uid::from_raw(3999999998),
            gid: Gid::from_raw(3999999998),
        };
        let e = resolve(Some(wanted("root")), None, not_root).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("user \"root\" (from --user): switching the workers to another user needs root; this process runs as uid 3999999998"),
            "{text}"
        );
        let same = Wanted {
            text: "3999999998",
            from: "--user",
        };
        let group = Wanted {
            text: "3999999998",
            from: "--group",
        };
        assert!(matches!(
            resolve(Some(same), Some(group), not_root).unwrap(),
            Target::Already(_)
        ));
        let other_group = Wanted {
            text: "0",
            from: "--group",
        };
        let e = resolve(Some(same), Some(other_group), not_root).unwrap_err();
        assert!(
            e.to_string().starts_with("group \"0\" (from --group)"),
            "{e}"
        );
        assert!(matches!(
            resolve(Some(wanted("root")), None, me).unwrap(),
            Target::Switch(_)
        ));
    }

    #[test]
    fn numeric_ids_are_digits_only() {
        assert_eq!(numeric("65534"), Some(65534));
        assert_eq!(numeric("+1"), None);
        assert_eq!(numeric("-1"), None);
        assert_eq!(numeric("nobody"), None);
        assert_eq!(numeric("99999999999"), None);
    }
}
