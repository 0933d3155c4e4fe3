//! `--env-file PATH` (uvicorn's) and `-e NAME=VALUE` (gunicorn's): environment variables set in this
//! process before any setting is resolved, so settings read them (`UVICORN_WORKERS` in a `.env`, as
//! the seeds keep it), and the app, the workers and the job commands see them, as under uvicorn.
//!
//! The file is dotenv syntax, read with `dotenvy`; a variable already in the environment wins over
//! the file (python-dotenv's and uvicorn's rule), and `-e` wins over both (gunicorn's). A missing file
//! or a bad line is a usage error naming the file and the line.
//!
//! The variables are set in the master, before the real command line is parsed (an app's own flags
//! may read them through clap's `env`), while the process has one thread. What was set is remembered
//! with its value, so that a reload (`SIGHUP`) takes them away before reading the file again (a
//! changed file takes effect, a removed line is gone), a binary upgrade starts the new master without
//! them (it reads the file itself), and `plan` can say which file and line a value came from.

use std::cell::Cell;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::Mutex;

use super::cli::Cli;
use super::layers::{Layers, Origin, ProcessEnv};
use super::settings::{ENV, ENV_FILE};
use crate::error::ConfigError;

/// A variable this process set, its value and where it came from.
#[derive(Debug, Clone)]
struct Set {
    name: String,
    value: String,
    origin: Origin,
}

/// The variables set so far (the master is single-threaded; the lock is for the type system).
static SET: Mutex<Vec<Set>> = Mutex::new(Vec::new());

fn set_list() -> std::sync::MutexGuard<'static, Vec<Set>> {
    SET.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where `name`'s value came from, if this process set it and it still holds that value.
pub(crate) fn origin(name: &str) -> Option<Origin> {
    let set = set_list();
    let s = set.iter().find(|s| s.name == name)?;
    (std::env::var(name).ok().as_deref() == Some(s.value.as_str())).then(|| s.origin.clone())
}

/// Reads `--env-file` and `-e` from `args` (this process's command line, parsed leniently with
/// `cmd`: the real parse comes after, and reports any error) and sets the variables.
pub(crate) fn preload(cmd: clap::Command, args: &[OsString]) -> Result<(), ConfigError> {
    let Ok(matches) = cmd.ignore_errors(true).try_get_matches_from(args) else {
        // `--help`, `--version`: nothing to load.
        return Ok(());
    };
    apply(&Cli::settings_from_matches(&matches))
}

/// Takes away what was set before, then sets the variables of the env file and `-e` that `cli` and
/// the environment name (at start, and again at each reload).
pub(crate) fn apply(cli: &Cli) -> Result<(), ConfigError> {
    let previous = std::mem::take(&mut *set_list());
    let env = ProcessEnv;
    let layers = Layers::new(cli, &env)?;
    let file = layers.get(&ENV_FILE)?;
    let flags = layers.get(&ENV)?.map(|v| v.value).unwrap_or_default();
    if previous.is_empty() && file.is_none() && flags.is_empty() {
        return Ok(());
    }
    let threads = thread_count();
    if threads > 1 {
        return Err(ConfigError::Invalid(format!(
            "--env-file and -e need a single-threaded process to set variables, and this one has \
             {threads} threads: call Server::from_env_and_args first thing in main"
        )));
    }
    for s in &previous {
        if std::env::var(&s.name).ok().as_deref() == Some(s.value.as_str()) {
            // SAFETY: the process has one thread (checked above): nothing reads the environment
            // concurrently.
            unsafe { std::env::remove_var(&s.name) };
        }
    }
    let mut set = Vec::new();
    if let Some(file) = file {
        for (name, value, line) in read(&file.value)? {
            let taken = set.iter().any(|s: &Set| s.name == name);
            if taken || std::env::var_os(&name).is_some() {
                continue;
            }
            set.push(Set {
                name,
                value,
                origin: Origin::File {
                    path: file.value.clone(),
                    line,
                },
            });
        }
    }
    for (name, value) in flags {
        set.retain(|s| s.name != name);
        set.push(Set {
            name,
            value,
            origin: Origin::Flag,
        });
    }
    for s in &set {
        // SAFETY: as above, one thread.
        unsafe { std::env::set_var(&s.name, &s.value) };
    }
    *set_list() = set;
    Ok(())
}

/// Leaves out of a new master's environment the variables this process set (still at the value it
/// set): the new master reads the env file and `-e` itself.
pub(crate) fn leave_out(cmd: &mut std::process::Command) {
    for s in set_list().iter() {
        if std::env::var(&s.name).ok().as_deref() == Some(s.value.as_str()) {
            cmd.env_remove(&s.name);
        }
    }
}

/// The variables of a dotenv file in order, each with its line (the last line of a value written
/// over several lines).
pub(crate) fn read(path: &Path) -> Result<Vec<(String, String, usize)>, ConfigError> {
    let file = std::fs::File::open(path).map_err(|source| ConfigError::ReadEnvFile {
        path: path.to_path_buf(),
        source,
    })?;
    let lines = Rc::new(Cell::new((0usize, true)));
    let reader = LineReader {
        inner: BufReader::new(file),
        lines: lines.clone(),
    };
    let mut out = Vec::new();
    for item in dotenvy::from_read_iter(reader) {
        let (done, ended) = lines.get();
        let line = if ended { done } else { done + 1 };
        match item {
            Ok((name, value)) => out.push((name, value, line)),
            Err(dotenvy::Error::LineParse(text, _)) => {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    line: line.max(1),
                    message: format!(
                        "expected NAME=VALUE (dotenv syntax), got {:?}",
                        text.trim_end()
                    ),
                });
            }
            Err(e) => {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    line: line.max(1),
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Hands dotenvy at most one line per read, counting the lines handed out, so that after each
/// variable the count is the line it ended on.
struct LineReader<R> {
    inner: BufReader<R>,
    /// Lines handed out in full, and whether the last read ended a line.
    lines: Rc<Cell<(usize, bool)>>,
}

impl<R: Read> Read for LineReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.inner.fill_buf()?;
        if available.is_empty() {
            return Ok(0);
        }
        let end = available
            .iter()
            .position(|b| *b == b'\n')
            .map_or(available.len(), |i| i + 1);
        let n = end.min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        let ended = available[n - 1] == b'\n';
        self.inner.consume(n);
        let (done, _) = self.lines.get();
        self.lines.set((if ended { done + 1 } else { done }, ended));
        Ok(n)
    }
}

/// Threads in this process, from `/proc/self/stat`; 1 if unknown.
pub(crate) fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().nth(17)?.parse().ok()
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(body: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    #[test]
    fn variables_come_with_their_lines() {
        let f = file(
            "# .env\n\nUVICORN_WORKERS=4  # Use exactly 4 workers\nexport A='x y'\nB=\"multi\nline\"\nC=3",
        );
        let vars = read(f.path()).unwrap();
        let got: Vec<(&str, &str, usize)> = vars
            .iter()
            .map(|(n, v, l)| (n.as_str(), v.as_str(), *l))
            .collect();
        assert_eq!(
            got,
            [
                ("UVICORN_WORKERS", "4", 3),
                ("A", "x y", 4),
                ("B", "multi\nline", 6),
                ("C", "3", 7)
            ]
        );
    }

    #[test]
    fn a_bad_line_and_a_missing_file_are_named() {
        let f = file("A=1\nB=2\nthis is not a variable\n");
        let e = read(f.path()).unwrap_err().to_string();
        let p = f.path().display().to_string();
        assert!(e.starts_with(&format!("{p}:3: ")), "{e}");
        assert!(e.contains("this is not a variable"), "{e}");
        let e = read(Path::new("/nonexistent/.env"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/.env"), "{e}");
    }
}
