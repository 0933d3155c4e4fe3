//! What `--reload` watches ([`Spec`], from the settings) and which files of a `--reload-dir` count
//! ([`Filter`], from the include and exclude patterns).

use std::path::{Path, PathBuf};
use std::time::Duration;

use glob::{MatchOptions, Pattern};

use crate::config::Settings;

/// Files and directories that never count in a `--reload-dir`, unless named by `--reload-include`:
/// hidden ones (`.git`, editors' swap files), editors' backups and autosaves, vim's write test, and
/// cargo's output directory (the executable is watched on its own).
pub const DEFAULT_EXCLUDES: [&str; 5] = [".*", "*~", "#*#", "4913", "target"];

/// What `--reload` watches, from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The executable, swapped in by a binary upgrade when it changes; `None` if its path is unknown.
    pub exe: Option<PathBuf>,
    /// Files whose change reloads the workers: the config file, the env file.
    pub files: Vec<PathBuf>,
    /// Directories, watched recursively, whose files' changes reload the workers.
    pub dirs: Vec<PathBuf>,
    /// Glob patterns a file in `dirs` must match (none: every file).
    pub includes: Vec<String>,
    /// Glob patterns of files and directories in `dirs` that never count.
    pub excludes: Vec<String>,
    /// How long a change must be quiet before it is reported.
    pub delay: Duration,
}

impl Spec {
    /// What to watch for `settings`, `None` without `--reload`. An `--reload-include` naming an
    /// existing file or directory adds it as such. A `--reload-dir` that is not a directory is an
    /// error naming it.
    pub fn of(settings: &Settings, exe: Option<&Path>) -> Result<Option<Spec>, String> {
        if !settings.reload.value {
            return Ok(None);
        }
        let mut files: Vec<PathBuf> = settings.config_file.iter().cloned().collect();
        // An env file setting joins here: `files.extend(settings.env_file.iter().cloned());`
        let mut dirs = Vec::new();
        for d in settings.reload_dirs.iter().flatten() {
            if !d.is_dir() {
                return Err(format!(
                    "--reload-dir {}: expected an existing directory",
                    d.display()
                ));
            }
            dirs.push(d.clone());
        }
        let mut includes = Vec::new();
        for p in settings.reload_includes.iter().flatten() {
            let path = Path::new(p);
            if path.is_dir() {
                dirs.push(path.to_path_buf());
            } else if path.is_file() {
                files.push(path.to_path_buf());
            } else {
                includes.push(p.clone());
            }
        }
        let mut excludes: Vec<String> = DEFAULT_EXCLUDES
            .iter()
            .filter(|d| !includes.iter().any(|i| i == *d))
            .map(|d| d.to_string())
            .collect();
        excludes.extend(settings.reload_excludes.iter().flatten().cloned());
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        Ok(Some(Spec {
            exe: exe.map(Path::to_path_buf),
            files: files.into_iter().map(absolute).collect(),
            dirs: dirs.into_iter().map(absolute).collect(),
            includes,
            excludes,
            delay: settings.reload_delay.value,
        }))
    }
}

/// Which files of the `--reload-dir` trees count.
#[derive(Debug)]
pub(super) struct Filter {
    includes: Vec<Pattern>,
    excludes: Vec<Pattern>,
}

impl Filter {
    pub fn new(includes: &[String], excludes: &[String]) -> Filter {
        // The settings checked every pattern already.
        let compile = |ps: &[String]| ps.iter().filter_map(|p| Pattern::new(p).ok()).collect();
        Filter {
            includes: compile(includes),
            excludes: compile(excludes),
        }
    }

    /// Whether `pattern` matches `path` under `root`: one without `/` matches the file name, one
    /// with `/` the path relative to `root` (`templates/*.html`) or the absolute path.
    fn matches(pattern: &Pattern, root: &Path, path: &Path) -> bool {
        let options = MatchOptions {
            require_literal_separator: true,
            ..MatchOptions::new()
        };
        if pattern.as_str().contains('/') {
            path.strip_prefix(root)
                .is_ok_and(|rel| pattern.matches_path_with(rel, options))
                || pattern.matches_path_with(path, options)
        } else {
            path.file_name()
                .is_some_and(|n| pattern.matches_with(&n.to_string_lossy(), options))
        }
    }

    /// Whether a directory or file at `path` is left out.
    pub fn excluded(&self, root: &Path, path: &Path) -> bool {
        self.excludes.iter().any(|p| Self::matches(p, root, path))
    }

    /// Whether a change of the file at `path` counts.
    pub fn counts(&self, root: &Path, path: &Path) -> bool {
        !self.excluded(root, path)
            && (self.includes.is_empty()
                || self.includes.iter().any(|p| Self::matches(p, root, path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_matches_names_and_relative_paths() {
        let f = Filter::new(
            &["*.html".into(), "static/**/*.css".into()],
            &DEFAULT_EXCLUDES.map(String::from),
        );
        let root = Path::new("/p");
        assert!(f.counts(root, Path::new("/p/templates/a.html")));
        assert!(f.counts(root, Path::new("/p/static/x/y.css")));
        assert!(!f.counts(root, Path::new("/p/a.css")));
        assert!(!f.counts(root, Path::new("/p/.a.html.swp")));
        assert!(!f.counts(root, Path::new("/p/a.html~")));
        assert!(f.excluded(root, Path::new("/p/target")));
        assert!(f.excluded(root, Path::new("/p/.git")));
        let every = Filter::new(&[], &["*.tmp".into()]);
        assert!(every.counts(root, Path::new("/p/anything")));
        assert!(!every.counts(root, Path::new("/p/x.tmp")));
    }
}
