//! `--reload`: the files the master watches in development, on one inotify descriptor that the loop
//! polls beside its signalfd (no thread, so forking stays safe).
//!
//! What is watched:
//!
//! - the executable, at the path it was started from: a new build there is swapped in by a binary
//!   upgrade;
//! - the config file (and any file named in [`Spec::files`]), and each `--reload-dir`, recursively,
//!   filtered by the `--reload-include` / `--reload-exclude` patterns: a change there reloads the
//!   workers.
//!
//! Named files are watched through their directory, by name: `cargo build` links a new file and
//! hard-links it over the old name, an editor writes a new file and renames it, so the entry changes
//! while the old inode does not. A directory that disappears (`cargo clean`) is looked for again every
//! second and counts as changed when it comes back.
//!
//! A change is reported by [`Watcher::due`] once nothing was heard for the `--reload-delay` and the
//! executable's size and modification time stayed the same over it. It is reported only if the content
//! really changed: the executable is compared with the running one (`/proc/self/exe`) byte for byte, a
//! named file with its content when last reported; a build already reported (same inode, size and
//! time) is not reported again, so a build that failed to start is left alone until the next one.
//! What to do with a change is the master's decision (see `dev_reload`).

mod spec;
mod stamp;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use self::spec::Filter;
pub(crate) use self::spec::Spec;
use self::stamp::RUNNING;
use self::stamp::{Stamp, same_content};

/// How often a directory that could not be watched is looked for again.
const RETRY: Duration = Duration::from_secs(1);

/// What a named file is to the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The executable.
    Executable,
    /// A file whose change reloads the workers.
    File,
}

/// One watched directory.
#[derive(Debug, Clone)]
struct Watched {
    dir: PathBuf,
    /// Its files watched by name.
    names: HashMap<OsString, Role>,
    /// The `--reload-dir` it is in (itself or below it).
    tree: Option<PathBuf>,
    /// The directory's device and inode when the watch was added.
    id: Option<(u64, u64)>,
}

impl Watched {
    /// Whether losing it matters: it holds a named file or is a `--reload-dir` itself (a lost
    /// subdirectory's parent reports its removal).
    fn looked_for(&self) -> bool {
        !self.names.is_empty() || self.tree.as_deref() == Some(self.dir.as_path())
    }
}

/// A directory's device and inode.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// What changed, once settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// The executable is a new build.
    pub exe: bool,
    /// Other files that changed (for the log).
    pub files: BTreeSet<PathBuf>,
}

impl Change {
    /// Adds what `other` holds.
    pub fn merge(&mut self, other: Change) {
        self.exe |= other.exe;
        self.files.extend(other.files);
    }

    /// The changed files for a log line: the first three, then how many more.
    pub fn describe_files(&self) -> String {
        let mut names: Vec<String> = self
            .files
            .iter()
            .take(3)
            .map(|p| p.display().to_string())
            .collect();
        if self.files.len() > 3 {
            names.push(format!("{} more", self.files.len() - 3));
        }
        names.join(", ")
    }
}

/// What was heard and not reported yet.
#[derive(Debug)]
struct Pending {
    exe: bool,
    files: BTreeSet<PathBuf>,
    /// When the last event arrived: the change is due a delay later.
    last_event: Instant,
    /// The executable's stamp then.
    exe_seen: Option<Stamp>,
}

/// The inotify descriptor, its watches and what it heard.
pub(crate) struct Watcher {
    inotify: Inotify,
    spec: Spec,
    filter: Filter,
    watches: HashMap<WatchDescriptor, Watched>,
    /// Directories to watch that are missing (or whose watch went away): looked for every second.
    lost: Vec<Watched>,
    retry_at: Option<Instant>,
    pending: Option<Pending>,
    /// The content of each named file when last reported (or at start), to skip a rewrite that
    /// changed nothing.
    contents: HashMap<PathBuf, Option<Vec<u8>>>,
    /// The executable's build last reported, not reported again.
    reported: Option<Stamp>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("spec", &self.spec)
            .field("watches", &self.watches.len())
            .field("lost", &self.lost.len())
            .finish()
    }
}

/// The events a watched directory reports: an entry created, replaced, written, removed.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::DELETE
        | WatchMask::CLOSE_WRITE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
}

impl Watcher {
    /// Opens the inotify descriptor and watches what `spec` names. A directory missing now is
    /// looked for every second.
    pub fn new(spec: Spec, now: Instant) -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        let filter = Filter::new(&spec.includes, &spec.excludes);
        let mut w = Watcher {
            inotify,
            filter,
            watches: HashMap::new(),
            lost: Vec::new(),
            retry_at: None,
            pending: None,
            contents: HashMap::new(),
            reported: None,
            buf: vec![0u8; 64 * 1024],
            spec,
        };
        let mut parents: Vec<Watched> = Vec::new();
        let named = w
            .spec
            .exe
            .iter()
            .map(|p| (p.clone(), Role::Executable))
            .chain(w.spec.files.iter().map(|p| (p.clone(), Role::File)));
        for (path, role) in named.collect::<Vec<_>>() {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
                continue;
            };
            match parents.iter_mut().find(|p| p.dir == dir) {
                Some(p) => {
                    p.names.insert(name.to_os_string(), role);
                }
                None => parents.push(Watched {
                    dir: dir.to_path_buf(),
                    names: HashMap::from([(name.to_os_string(), role)]),
                    tree: None,
                    id: None,
                }),
            }
            if role == Role::File {
                w.contents.insert(path.clone(), std::fs::read(&path).ok());
            }
        }
        for p in parents {
            w.add(p, now);
        }
        for root in w.spec.dirs.clone() {
            w.add_tree(&root, &root, now);
        }
        // A new master started by an upgrade, while another build landed: the path already names
        // a file other than the one running.
        if let Some(exe) = w.spec.exe.clone() {
            if let (Some(on_disk), Some(running)) = (Stamp::of(&exe), Stamp::of(Path::new(RUNNING)))
            {
                if !on_disk.same_file(&running) {
                    w.heard(now).exe = true;
                }
            }
        }
        Ok(w)
    }

    /// What it watches.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// The descriptor, for a forked worker to close.
    pub fn raw_fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }

    /// How many directories of the `--reload-dir` trees are watched.
    pub fn tree_dirs(&self) -> usize {
        self.watches.values().filter(|w| w.tree.is_some()).count()
    }

    /// When [`Watcher::due`] has something to do: a pending change's end of quiet, or a retry.
    pub fn deadline(&self) -> Option<Instant> {
        let quiet = self
            .pending
            .as_ref()
            .map(|p| p.last_event + self.spec.delay);
        quiet.into_iter().chain(self.retry_at).min()
    }

    /// Watches one directory; a failure puts it on the lost list (and says why, once).
    fn add(&mut self, mut w: Watched, now: Instant) -> bool {
        match self.inotify.watches().add(&w.dir, mask()) {
            Ok(wd) => {
                w.id = dir_id(&w.dir);
                // The same directory twice (a named file's and a tree's) is one watch: merge.
                match self.watches.get_mut(&wd) {
                    Some(existing) => {
                        existing.names.extend(w.names);
                        existing.tree = existing.tree.take().or(w.tree);
                    }
                    None => {
                        self.watches.insert(wd, w);
                    }
                }
                true
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    tracing::warn!(
                        "--reload: cannot watch {}: the inotify watch limit is reached (raise \
                         fs.inotify.max_user_watches, or narrow --reload-dir)",
                        w.dir.display()
                    );
                } else if w.looked_for() {
                    tracing::warn!(
                        "--reload: cannot watch {} ({e}); looking for it every second",
                        w.dir.display()
                    );
                    self.lost.push(w);
                    self.retry_at.get_or_insert(now + RETRY);
                }
                false
            }
        }
    }

    /// Watches `dir` and every directory below it that is not excluded, as part of the tree `root`.
    fn add_tree(&mut self, root: &Path, dir: &Path, now: Instant) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let w = Watched {
                dir: d.clone(),
                names: HashMap::new(),
                tree: Some(root.to_path_buf()),
                id: None,
            };
            if !self.add(w, now) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) && !self.filter.excluded(root, &path) {
                    stack.push(path);
                }
            }
        }
    }

    /// The pending change, created if there is none; its quiet starts again now.
    fn heard(&mut self, now: Instant) -> &mut Pending {
        let p = self.pending.get_or_insert_with(|| Pending {
            exe: false,
            files: BTreeSet::new(),
            last_event: now,
            exe_seen: None,
        });
        p.last_event = now;
        p
    }

    /// Reads every event queued on the descriptor.
    pub fn read(&mut self, now: Instant) {
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let events: Vec<(WatchDescriptor, EventMask, Option<OsString>)> =
                match self.inotify.read_events(&mut buf) {
                    Ok(events) => events
                        .map(|e| (e.wd, e.mask, e.name.map(|n| n.to_os_string())))
                        .collect(),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("--reload: cannot read file events: {e}");
                        Vec::new()
                    }
                };
            self.buf = buf;
            if events.is_empty() {
                return;
            }
            for (wd, mask, name) in events {
                self.on_event(wd, mask, name, now);
            }
        }
    }

    fn on_event(
        &mut self,
        wd: WatchDescriptor,
        mask: EventMask,
        name: Option<OsString>,
        now: Instant,
    ) {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!("--reload: file events were lost (queue overflow); checking everything");
            let exe = self.spec.exe.is_some();
            let all: Vec<PathBuf> = self
                .spec
                .files
                .iter()
                .chain(&self.spec.dirs)
                .cloned()
                .collect();
            let seen = self.spec.exe.as_deref().and_then(Stamp::of);
            let p = self.heard(now);
            if exe {
                p.exe = true;
                p.exe_seen = seen;
            }
            p.files.extend(all);
            return;
        }
        if mask.contains(EventMask::IGNORED) || mask.contains(EventMask::MOVE_SELF) {
            // Deleted or moved away: its watch is gone (or no longer names the path).
            if let Some(w) = self.watches.remove(&wd) {
                if mask.contains(EventMask::MOVE_SELF) {
                    let _ = self.inotify.watches().remove(wd);
                }
                if w.looked_for() {
                    self.lose(w, now);
                }
            }
            return;
        }
        let Some(name) = name else {
            return;
        };
        let Some(w) = self.watches.get(&wd) else {
            return;
        };
        let path = w.dir.join(&name);
        let role = w.names.get(&name).copied();
        let tree = w.tree.clone();
        match role {
            Some(Role::Executable) => {
                let seen = Stamp::of(&path);
                let p = self.heard(now);
                p.exe = true;
                p.exe_seen = seen;
            }
            Some(Role::File) => {
                self.heard(now).files.insert(path.clone());
            }
            None => {}
        }
        let Some(root) = tree else {
            return;
        };
        if mask.contains(EventMask::ISDIR) {
            if self.filter.excluded(&root, &path) {
                return;
            }
            if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                self.add_tree(&root, &path, now);
            }
            self.heard(now).files.insert(path);
        } else if self.filter.counts(&root, &path) {
            self.heard(now).files.insert(path);
        }
    }

    /// Puts each directory that matters and is no longer the one watched (removed, or replaced by
    /// another) on the lost list. The kernel does not always say: a directory holding a running
    /// executable (`rm -rf target` under `cargo clean`) is kept alive by it and reports nothing.
    fn revalidate(&mut self, now: Instant) {
        let stale: Vec<WatchDescriptor> = self
            .watches
            .iter()
            .filter(|(_, w)| w.looked_for() && dir_id(&w.dir) != w.id)
            .map(|(wd, _)| wd.clone())
            .collect();
        for wd in stale {
            if let Some(w) = self.watches.remove(&wd) {
                let _ = self.inotify.watches().remove(wd);
                self.lose(w, now);
            }
        }
    }

    /// A directory that matters is gone: look for it every second.
    fn lose(&mut self, w: Watched, now: Instant) {
        tracing::info!(
            "--reload: {} is gone; looking for it every second",
            w.dir.display()
        );
        self.lost.push(w);
        self.retry_at.get_or_insert(now + RETRY);
    }

    /// Looks for the lost directories again; one found counts as changed.
    fn retry_lost(&mut self, now: Instant) {
        self.retry_at = None;
        for w in std::mem::take(&mut self.lost) {
            if !w.dir.is_dir() {
                self.lost.push(w);
                continue;
            }
            tracing::info!("--reload: {} is back; watching it again", w.dir.display());
            let exe = w.names.values().any(|r| *r == Role::Executable);
            let files: Vec<PathBuf> = w
                .names
                .iter()
                .filter(|(_, r)| **r == Role::File)
                .map(|(n, _)| w.dir.join(n))
                .collect();
            let root = w.tree.clone();
            let dir = w.dir.clone();
            match &root {
                Some(root) => self.add_tree(root, &dir, now),
                None => {
                    self.add(w, now);
                }
            }
            let seen = self.spec.exe.as_deref().and_then(Stamp::of);
            let p = self.heard(now);
            if exe {
                p.exe = true;
                p.exe_seen = seen;
            }
            p.files.extend(files);
            if root.is_some() {
                p.files.insert(dir);
            }
        }
        if !self.lost.is_empty() {
            self.retry_at = Some(now + RETRY);
        }
    }

    /// The change heard, once it settled (quiet for the delay, the executable's stamp unchanged over
    /// it) and only what really changed; `None` while nothing is due.
    pub fn due(&mut self, now: Instant) -> Option<Change> {
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_lost(now);
        }
        let p = self.pending.as_ref()?;
        if now < p.last_event + self.spec.delay {
            return None;
        }
        self.revalidate(now);
        let p = self.pending.as_ref()?;
        if p.exe {
            if let Some(exe) = self.spec.exe.clone() {
                let stamp = Stamp::of(&exe);
                if stamp.is_some() && stamp != p.exe_seen {
                    // Still being written: wait for another quiet delay.
                    let p = self.heard(now);
                    p.exe_seen = stamp;
                    return None;
                }
            }
        }
        let p = self.pending.take()?;
        let mut change = Change::default();
        if p.exe {
            change.exe = self.exe_changed();
        }
        for f in p.files {
            if self.file_changed(&f) {
                change.files.insert(f);
            }
        }
        (change.exe || !change.files.is_empty()).then_some(change)
    }

    /// Reports the executable again after another quiet delay, although it is the build already
    /// reported: it could not be started yet (still open for writing).
    pub fn try_again(&mut self, now: Instant) {
        self.reported = None;
        let seen = self.spec.exe.as_deref().and_then(Stamp::of);
        let p = self.heard(now);
        p.exe = true;
        p.exe_seen = seen;
    }

    /// Whether the executable on disk is a build not reported yet, with other bytes than the
    /// running one.
    fn exe_changed(&mut self) -> bool {
        let Some(exe) = self.spec.exe.as_deref() else {
            return false;
        };
        let Some(stamp) = Stamp::of(exe) else {
            tracing::debug!(
                "--reload: {} is missing; waiting for a build",
                exe.display()
            );
            return false;
        };
        let running = Path::new(RUNNING);
        if Stamp::of(running).is_some_and(|r| r.same_file(&stamp)) {
            return false;
        }
        if self.reported == Some(stamp) {
            tracing::debug!("--reload: {} is the build already tried", exe.display());
            return false;
        }
        self.reported = Some(stamp);
        match same_content(exe, running) {
            Ok(true) => {
                tracing::info!(
                    "--reload: {} was rewritten with the same content as the running executable; \
                     nothing to do",
                    exe.display()
                );
                false
            }
            Ok(false) => true,
            Err(e) => {
                // Cannot compare: let the upgrade try, and say why if it fails.
                tracing::debug!(
                    "--reload: cannot compare {} with {RUNNING}: {e}",
                    exe.display()
                );
                true
            }
        }
    }

    /// Whether a changed file counts: a named file only if its content differs from when last
    /// reported.
    fn file_changed(&mut self, path: &Path) -> bool {
        let Some(before) = self.contents.get(path) else {
            return true;
        };
        let now = std::fs::read(path).ok();
        if *before == now {
            tracing::debug!("--reload: {} was rewritten unchanged", path.display());
            return false;
        }
        self.contents.insert(path.to_path_buf(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::spec::DEFAULT_EXCLUDES;
    use super::*;

    fn spec(dir: &Path) -> Spec {
        Spec {
            exe: None,
            files: vec![dir.join("app.toml")],
            dirs: vec![dir.join("templates")],
            includes: vec![],
            excludes: DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
            delay: Duration::from_millis(50),
        }
    }

    /// Reads events and asks for the change until it is due or `limit` passes.
    fn settle(w: &mut Watcher) -> Option<Change> {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            w.read(now);
            if let Some(c) = w.due(now) {
                return Some(c);
            }
            if w.pending.is_none() && w.lost.is_empty() {
                // Give late events a moment, then stop.
                std::thread::sleep(Duration::from_millis(100));
                w.read(Instant::now());
                w.pending.as_ref()?;
            }
        }
        None
    }

    #[test]
    fn a_renamed_config_file_and_a_new_file_in_a_tree_are_reported_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("app.toml");
        std::fs::write(&config, "workers = 1\n").unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        let mut w = Watcher::new(spec(dir.path()), Instant::now()).unwrap();
        assert_eq!((w.watches.len(), w.tree_dirs()), (2, 1));

        // An editor's save: a new file renamed over the old name.
        let tmp = dir.path().join(".app.toml.tmp");
        std::fs::write(&tmp, "workers = 2\n").unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        let c = settle(&mut w).expect("the config change");
        assert!(!c.exe);
        assert_eq!(c.files, BTreeSet::from([config.clone()]));

        // The same content again: nothing.
        std::fs::write(&config, "workers = 2\n").unwrap();
        assert_eq!(settle(&mut w), None);

        // A file in a new subdirectory of the tree (watched as it appears); a swap file does not count.
        let sub = dir.path().join("templates/pages");
        std::fs::create_dir(&sub).unwrap();
        assert!(settle(&mut w).is_some(), "a new directory counts");
        std::fs::write(sub.join(".index.html.swp"), "x").unwrap();
        assert_eq!(settle(&mut w), None);
        std::fs::write(sub.join("index.html"), "<p>").unwrap();
        let c = settle(&mut w).expect("the template change");
        assert_eq!(c.files, BTreeSet::from([sub.join("index.html")]));
    }

    #[test]
    fn a_directory_that_comes_back_is_watched_again() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("templates");
        let mut w = Watcher::new(spec(dir.path()), Instant::now()).unwrap();
        assert_eq!(w.lost.len(), 1, "the missing tree waits");
        std::fs::create_dir(&tree).unwrap();
        let c = settle(&mut w).expect("the tree appearing");
        assert!(c.files.contains(&tree));
        std::fs::write(tree.join("a.html"), "a").unwrap();
        let c = settle(&mut w).expect("a file in the tree");
        assert_eq!(c.files, BTreeSet::from([tree.join("a.html")]));
    }
}
