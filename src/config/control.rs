//! Where the control socket is: one rule, used by the master (which creates the socket) and by
//! `hyperfork ctl` (which connects to it), so both find the same path from the same settings.
//!
//! 1. `--control-socket` (or `HYPERFORK_CONTROL_SOCKET`, or the TOML `control_socket`): that path,
//!    [`Origin::Explicit`];
//! 2. else systemd's `$RUNTIME_DIRECTORY` (the first of its colon-separated directories):
//!    `<dir>/hyperfork.ctl`;
//! 3. else, with a pid file: the pid file's path with the extension `.ctl` (`/run/app.pid` →
//!    `/run/app.ctl`; `/run/app` → `/run/app.ctl`);
//! 4. else `$XDG_RUNTIME_DIR/hyperfork-<bind>.ctl`, or without it `/tmp/hyperfork-<uid>-<bind>.ctl`,
//!    where `<bind>` is the first listening address with every character other than `A-Z`, `a-z`,
//!    `0-9`, `.` and `-` turned into `_` (`127.0.0.1:8000` → `127.0.0.1_8000`).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::Settings;
use super::layers::Env;
use crate::shared::listener::BindSpec;

/// The longest path a unix socket address holds: `sun_path` is 108 bytes, the last one a NUL.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

/// The file name of the control socket inside `$RUNTIME_DIRECTORY`.
const IN_RUNTIME_DIRECTORY: &str = "hyperfork.ctl";

/// Which rule chose the control socket's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `--control-socket`, `HYPERFORK_CONTROL_SOCKET` or the TOML `control_socket`: the user asked
    /// for this path, so a master that cannot create it should not start.
    Explicit,
    /// `$RUNTIME_DIRECTORY/hyperfork.ctl` (systemd's `RuntimeDirectory=`).
    RuntimeDirectory,
    /// Next to the pid file.
    PidFile,
    /// `$XDG_RUNTIME_DIR/hyperfork-<bind>.ctl` or `/tmp/hyperfork-<uid>-<bind>.ctl`.
    Fallback,
}

/// The control socket's path and the rule that chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ControlPath {
    /// The socket file's path.
    pub path: PathBuf,
    /// Which rule chose it.
    pub origin: Origin,
}

/// A path too long for a unix socket address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "control socket path {} is {len} bytes long; a unix socket path is at most {MAX_SOCKET_PATH} \
     bytes (set a shorter one with --control-socket)",
    path.display()
)]
pub(crate) struct PathTooLong {
    /// The path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: usize,
}

impl ControlPath {
    /// Whether the user named this path (`--control-socket`, its environment variable or TOML key),
    /// rather than a default rule choosing it.
    pub fn is_explicit(&self) -> bool {
        self.origin == Origin::Explicit
    }

    /// The path, if a unix socket can be bound or reached there: at most [`MAX_SOCKET_PATH`] bytes.
    pub fn checked(&self) -> Result<&Path, PathTooLong> {
        let len = self.path.as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return Err(PathTooLong {
                path: self.path.clone(),
                len,
            });
        }
        Ok(&self.path)
    }
}

/// The control socket's path for `settings`, with `$RUNTIME_DIRECTORY` and `$XDG_RUNTIME_DIR` read
/// from `env` (pass [`super::ProcessEnv`]) and this process's effective uid for the `/tmp` fallback.
/// Check the length with [`ControlPath::checked`] before binding or connecting.
pub(crate) fn control_socket(settings: &Settings, env: &dyn Env) -> ControlPath {
    resolve(
        &Inputs {
            explicit: settings.control_socket.as_deref(),
            pid_file: settings.pid_file.as_deref(),
            first_bind: settings.binds.first().map(|b| &b.value),
            uid: nix::unistd::geteuid().as_raw(),
        },
        env,
    )
}

/// What the rule reads from the settings and the process.
struct Inputs<'a> {
    /// `control_socket`, if set.
    explicit: Option<&'a Path>,
    /// `pid`, if set.
    pid_file: Option<&'a Path>,
    /// The first listening address.
    first_bind: Option<&'a BindSpec>,
    /// The effective uid.
    uid: u32,
}

/// The rule (see the module's documentation).
fn resolve(inputs: &Inputs<'_>, env: &dyn Env) -> ControlPath {
    if let Some(path) = inputs.explicit {
        return ControlPath {
            path: path.to_path_buf(),
            origin: Origin::Explicit,
        };
    }
    let runtime_dir = env.get("RUNTIME_DIRECTORY").and_then(|dirs| {
        dirs.split(':')
            .map(str::trim)
            .find(|d| !d.is_empty())
            .map(PathBuf::from)
    });
    if let Some(dir) = runtime_dir {
        return ControlPath {
            path: dir.join(IN_RUNTIME_DIRECTORY),
            origin: Origin::RuntimeDirectory,
        };
    }
    if let Some(pid) = inputs.pid_file {
        return ControlPath {
            path: beside_pid_file(pid),
            origin: Origin::PidFile,
        };
    }
    let bind = inputs
        .first_bind
        .map_or_else(|| "default".to_string(), |b| file_name_part(&b.to_string()));
    let path = match env.get("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join(format!("hyperfork-{bind}.ctl")),
        None => PathBuf::from(format!("/tmp/hyperfork-{}-{bind}.ctl", inputs.uid)),
    };
    ControlPath {
        path,
        origin: Origin::Fallback,
    }
}

/// The pid file's path with the extension `.ctl`; `.ctl` appended if the pid file already ends so.
fn beside_pid_file(pid: &Path) -> PathBuf {
    let path = pid.with_extension("ctl");
    if path == pid {
        let mut name = pid.as_os_str().to_owned();
        name.push(".ctl");
        return PathBuf::from(name);
    }
    path
}

/// `text` with every character other than `A-Z`, `a-z`, `0-9`, `.` and `-` turned into `_`.
fn file_name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tcp(host: &str, port: u16) -> BindSpec {
        BindSpec::Tcp {
            host: host.into(),
            port,
        }
    }

    fn inputs<'a>(
        explicit: Option<&'a str>,
        pid: Option<&'a str>,
        bind: &'a BindSpec,
    ) -> Inputs<'a> {
        Inputs {
            explicit: explicit.map(Path::new),
            pid_file: pid.map(Path::new),
            first_bind: Some(bind),
            uid: 1000,
        }
    }

    fn path(p: &str, origin: Origin) -> ControlPath {
        ControlPath {
            path: PathBuf::from(p),
            origin,
        }
    }

    #[test]
    fn an_explicit_path_wins_over_everything() {
        let b = tcp("127.0.0.1", 8000);
        let all = env(&[("RUNTIME_DIRECTORY", "/run/app"), ("XDG_RUNTIME_DIR", "/x")]);
        let got = resolve(&inputs(Some("/srv/ctl"), Some("/run/a.pid"), &b), &all);
        assert_eq!(got, path("/srv/ctl", Origin::Explicit));
        assert!(got.is_explicit());
    }

    #[test]
    fn runtime_directory_takes_its_first_directory() {
        let b = tcp("127.0.0.1", 8000);
        let got = resolve(
            &inputs(None, Some("/run/a.pid"), &b),
            &env(&[("RUNTIME_DIRECTORY", "/run/app:/run/other")]),
        );
        assert_eq!(
            got,
            path("/run/app/hyperfork.ctl", Origin::RuntimeDirectory)
        );
        assert!(!got.is_explicit());
        let got = resolve(
            &inputs(None, None, &b),
            &env(&[("RUNTIME_DIRECTORY", "/run/app")]),
        );
        assert_eq!(
            got,
            path("/run/app/hyperfork.ctl", Origin::RuntimeDirectory)
        );
    }

    #[test]
    fn an_empty_runtime_directory_counts_as_unset() {
        let b = tcp("127.0.0.1", 8000);
        for value in ["", "  ", ":"] {
            let got = resolve(
                &inputs(None, Some("/run/a.pid"), &b),
                &env(&[("RUNTIME_DIRECTORY", value)]),
            );
            assert_eq!(got, path("/run/a.ctl", Origin::PidFile), "{value:?}");
        }
    }

    #[test]
    fn the_pid_file_gets_the_extension_ctl() {
        let b = tcp("127.0.0.1", 8000);
        let cases = [
            ("/run/app.pid", "/run/app.ctl"),
            ("/run/app", "/run/app.ctl"),
            ("/run/app.v2.pid", "/run/app.v2.ctl"),
            ("run/app.pid", "run/app.ctl"),
            ("/run/app.ctl", "/run/app.ctl.ctl"),
        ];
        for (pid, want) in cases {
            let got = resolve(&inputs(None, Some(pid), &b), &env(&[]));
            assert_eq!(got, path(want, Origin::PidFile), "{pid}");
        }
    }

    #[test]
    fn without_those_xdg_runtime_dir_then_tmp_named_after_the_first_address() {
        let b = tcp("127.0.0.1", 8000);
        let got = resolve(
            &inputs(None, None, &b),
            &env(&[("XDG_RUNTIME_DIR", "/run/user/1000")]),
        );
        assert_eq!(
            got,
            path(
                "/run/user/1000/hyperfork-127.0.0.1_8000.ctl",
                Origin::Fallback
            )
        );
        let got = resolve(&inputs(None, None, &b), &env(&[]));
        assert_eq!(
            got,
            path("/tmp/hyperfork-1000-127.0.0.1_8000.ctl", Origin::Fallback)
        );
        let v6 = tcp("::1", 443);
        let got = resolve(&inputs(None, None, &v6), &env(&[]));
        assert_eq!(got.path, PathBuf::from("/tmp/hyperfork-1000-___1__443.ctl"));
        let unix = BindSpec::Unix(PathBuf::from("/run/my app.sock"));
        let got = resolve(&inputs(None, None, &unix), &env(&[]));
        assert_eq!(
            got.path,
            PathBuf::from("/tmp/hyperfork-1000-unix__run_my_app.sock.ctl")
        );
    }

    #[test]
    fn the_settings_feed_the_rule() {
        let mut s = Settings::resolve(
            &crate::config::cli::Cli::try_parse_from(["hyperfork", "--port", "9001"]).unwrap(),
            &env(&[]),
        )
        .unwrap();
        let got = control_socket(&s, &env(&[("XDG_RUNTIME_DIR", "/x")]));
        assert_eq!(
            got,
            path("/x/hyperfork-127.0.0.1_9001.ctl", Origin::Fallback)
        );
        s.pid_file = Some(PathBuf::from("/run/p.pid"));
        assert_eq!(
            control_socket(&s, &env(&[])).path,
            PathBuf::from("/run/p.ctl")
        );
        s.control_socket = Some(PathBuf::from("/c.sock"));
        assert!(control_socket(&s, &env(&[])).is_explicit());
    }

    #[test]
    fn a_path_too_long_for_a_socket_is_one_clear_line() {
        let ok = path(&format!("/{}", "a".repeat(106)), Origin::Explicit);
        assert!(ok.checked().is_ok());
        let long = format!("/{}", "a".repeat(107));
        let e = path(&long, Origin::Fallback).checked().unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&long) && msg.contains("108 bytes long") && msg.contains("at most 107"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
}
