//! The master's pid file: written atomically (a temporary file renamed into place), removed on exit.
//! Its mode is 0666 minus the umask, as for any file the master creates (see `--umask`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::StartError;

/// A pid file this process wrote; removed when dropped, if it still holds this process's pid.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid to `path` (write to a temporary file in the same directory, then
    /// rename, so readers never see a partial file).
    pub fn create(path: &Path) -> Result<PidFile, StartError> {
        let pid = std::process::id();
        let err = |source| StartError::PidFile {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Created 0666 minus the umask (0644 under the usual 022, the master's --umask when given),
        // like any file the master creates; a bare temporary file would be 0600 whatever the umask.
        let mut tmp = tempfile::Builder::new()
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(&dir)
            .map_err(err)?;
        writeln!(tmp, "{pid}").map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(path).map_err(|e| err(e.error))?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }
}

impl PidFile {
    /// Leaves the file in place when this handle goes (another master took it over).
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            return;
        }
        let ours = std::fs::read_to_string(&self.path)
            .map(|s| s.trim() == self.pid.to_string())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
