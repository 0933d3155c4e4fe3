//! The library's entry point: [`Server`] wraps an application in the hyperfork master.
//!
//! Every binary built on the library gets the same command line, environment variables and TOML file
//! as the `hyperfork` binary. The app factory runs in each worker, after `fork`, inside the worker's
//! tokio runtime; it receives the worker's [`Worker`] identity (slot, pid).

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

use crate::app::{AppFactory, BoxError, Runner, Worker};
use crate::config::cli::{Cli, Command};
use crate::config::cores;
use crate::config::sizing::Plan;
use crate::config::{ProcessEnv, Settings};
use crate::error::ConfigError;
use crate::jobs::schedule::Schedule;
use crate::jobs::{Job, JobContext, JobResult};
use crate::logging;
use crate::master::{self, MasterArgs, Outcome, Reloaded};
use crate::shared::listener::{self, Listener};
use crate::worker::serve::{self, HttpService, ResponseBody};

/// Exit status for a clean shutdown.
pub const EXIT_OK: u8 = 0;
/// Exit status for a runtime failure (a socket that cannot be bound, an OS call that fails).
pub const EXIT_RUNTIME: u8 = 1;
/// Exit status for a usage error (bad flag, environment variable or config file).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when every worker failed to boot.
pub const EXIT_BOOT: u8 = 3;

/// A pre-fork server: settings plus an app factory.
///
/// ```no_run
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::{Request, Response, body::{Bytes, Incoming}};
///
/// fn main() -> std::process::ExitCode {
///     hyperfork::Server::from_env_and_args()
///         .hyper_app(|worker: &hyperfork::Worker| {
///             let slot = worker.slot();
///             hyper::service::service_fn(move |_req: Request<Incoming>| async move {
///                 Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("slot {slot}\n")))))
///             })
///         })
///         .run()
/// }
/// ```
pub struct Server {
    program: String,
    cli: Result<Cli, clap::Error>,
    app: Option<AppFactory>,
    jobs: Vec<Job>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("program", &self.program)
            .field("cli", &self.cli)
            .field("app", &self.app.is_some())
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl Server {
    /// Reads the command line of this process; environment and TOML file are read by [`Server::run`].
    pub fn from_env_and_args() -> Server {
        Server::from_args(std::env::args_os())
    }

    /// Like [`Server::from_env_and_args`] with an explicit command line (the first item is the program).
    pub fn from_args<I, T>(args: I) -> Server
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = args
            .first()
            .and_then(|a| std::path::Path::new(a).file_name())
            .map_or_else(
                || "hyperfork".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
        let cli = Cli::command()
            .bin_name(program.clone())
            .try_get_matches_from(args)
            .map(|m| Cli::from_matches(&m));
        Server {
            program,
            cli,
            app: None,
            jobs: Vec::new(),
        }
    }

    /// Serves a tower service (an axum `Router`, for instance), built once per worker by `factory`.
    pub fn app<F, S, B>(self, factory: F) -> Server
    where
        F: Fn(&Worker) -> S + 'static,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: ResponseBody,
    {
        self.try_app(move |w| Ok::<_, std::convert::Infallible>(factory(w)))
    }

    /// Like [`Server::app`], for a factory that can fail; an error stops the worker with exit status 3
    /// and, when every worker keeps failing, stops the master with the error.
    pub fn try_app<F, S, B, E>(self, factory: F) -> Server
    where
        F: Fn(&Worker) -> Result<S, E> + 'static,
        E: Into<BoxError>,
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: ResponseBody,
    {
        self.try_hyper_app(move |w| factory(w).map(TowerToHyperService::new))
    }

    /// Serves a hyper service (e.g. from `hyper::service::service_fn`), built once per worker.
    pub fn hyper_app<F, S, B>(self, factory: F) -> Server
    where
        F: Fn(&Worker) -> S + 'static,
        S: HttpService<B>,
        B: ResponseBody,
    {
        self.try_hyper_app(move |w| Ok::<_, std::convert::Infallible>(factory(w)))
    }

    /// Like [`Server::hyper_app`], for a factory that can fail.
    pub fn try_hyper_app<F, S, B, E>(mut self, factory: F) -> Server
    where
        F: Fn(&Worker) -> Result<S, E> + 'static,
        E: Into<BoxError>,
        S: HttpService<B>,
        B: ResponseBody,
    {
        self.app = Some(Box::new(move |w: &Worker| {
            let service = factory(w).map_err(Into::into)?;
            let runner: Runner = Box::new(move |listeners, control| {
                Box::pin(async move {
                    serve::serve(listeners, service, control)
                        .await
                        .map_err(|e| Box::new(e) as BoxError)
                })
            });
            Ok(runner)
        }));
        self
    }

    /// Adds a scheduled job: `f` runs on `schedule` in the worker of slot 0 only, never twice for one
    /// tick. `f` returns `()` or a `Result` whose error is logged.
    ///
    /// ```no_run
    /// # use hyperfork::{Every, Server, Worker};
    /// # fn router(_: &Worker) -> axum::Router { axum::Router::new() }
    /// Server::from_env_and_args()
    ///     .app(router)
    ///     .job("record-usage", Every::seconds(30), |ctx| async move {
    ///         tracing::info!("tick {}", ctx.scheduled_at);
    ///     })
    ///     .run();
    /// ```
    pub fn job<F, Fut, R>(
        self,
        name: impl Into<String>,
        schedule: impl Into<Schedule>,
        f: F,
    ) -> Server
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: JobResult + 'static,
    {
        self.add_job(Job::new(name, schedule, f))
    }

    /// Adds a job built with [`Job`] (for a timeout, misfire grace or overlap).
    pub fn add_job(mut self, job: Job) -> Server {
        self.jobs.push(job);
        self
    }

    /// Runs the subcommand (by default: the server) and returns the process's exit status.
    ///
    /// Errors are printed as one line on stderr: status 2 for usage errors, 1 for runtime failures,
    /// 3 when every worker failed to boot.
    pub fn run(self) -> ExitCode {
        // Recorded first: a binary upgrade runs the executable from this path.
        let exe = crate::master::upgrade::Program::current();
        // Titles rewrite the arguments' memory; only safe while this is the only thread.
        let threads = thread_count();
        if threads == 1 {
            crate::shared::proctitle::init();
        }
        let program = self.program.clone();
        let fail = |code: u8, msg: &dyn std::fmt::Display| {
            eprintln!("{program}: {msg}");
            ExitCode::from(code)
        };
        let cli = match self.cli {
            Ok(cli) => cli,
            Err(e) => return clap_exit(&program, e),
        };
        let settings = match Settings::resolve(&cli, &ProcessEnv) {
            Ok(s) => s,
            Err(e) => return fail(EXIT_USAGE, &e),
        };
        let plan = Plan::decide(&settings, cores::detect());
        if let Some(Command::Plan { json }) = cli.command {
            if json {
                println!("{}", plan.to_json());
            } else {
                print!("{}", plan.to_text());
            }
            return ExitCode::from(EXIT_OK);
        }
        let lib_jobs = self.jobs;
        let mut jobs = settings.jobs.clone();
        jobs.extend(lib_jobs.iter().cloned());
        if let Err(e) = crate::jobs::validate(&jobs) {
            return fail(EXIT_USAGE, &e);
        }
        let Some(app) = self.app else {
            return fail(
                EXIT_USAGE,
                &ConfigError::Invalid("no app: call Server::app before Server::run".into()),
            );
        };

        let log_level = settings.log_level;
        let log_file = settings.log_file.clone();
        let accept = settings.accept;
        let umask = settings.umask;
        // gunicorn's --umask: set before the master creates any file (the log file just below, the
        // pid file, and the sockets' mode when --socket-mode is not given), and inherited by the
        // workers. The master is single-threaded here. Without it the inherited umask stays.
        if let Some(mask) = umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
        }
        if let Err(e) = logging::init(log_level, log_file.as_deref()) {
            return fail(EXIT_RUNTIME, &e);
        }
        logging::install_panic_hook();
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        if threads > 1 {
            tracing::warn!(
                "the process has {threads} threads before forking; only the forking thread exists in \
                 the workers, so anything those threads hold (locks, runtimes) is unusable there"
            );
        }
        let specs: Vec<_> = settings.binds.iter().map(|b| b.value.clone()).collect();
        let inherited = match crate::master::upgrade::inherited() {
            Ok(i) => i,
            Err(e) => return fail(EXIT_RUNTIME, &e),
        };
        let (listeners, activated, predecessor) = match inherited {
            Some(i) => {
                tracing::info!(
                    "started by the previous master (pid {}) for a binary upgrade",
                    nix::unistd::getppid()
                );
                let listeners = if i.activated {
                    i.listeners
                } else {
                    match listener::reuse_or_bind(
                        &specs,
                        i.listeners,
                        settings.backlog,
                        settings.socket_mode,
                    ) {
                        Ok(l) => l,
                        Err(e) => return fail(EXIT_RUNTIME, &e),
                    }
                };
                (listeners, i.activated, Some(i.channel))
            }
            None => match crate::master::systemd::activated_listeners() {
                Ok(Some(l)) => {
                    tracing::info!("using {} socket(s) passed by systemd", l.len());
                    (l, true, None)
                }
                Ok(None) => {
                    match listener::bind_all(&specs, settings.backlog, settings.socket_mode) {
                        Ok(l) => (l, false, None),
                        Err(e) => return fail(EXIT_RUNTIME, &e),
                    }
                }
                Err(e) => return fail(EXIT_RUNTIME, &e),
            },
        };
        for l in &listeners {
            let url = match l {
                Listener::Tcp(_) => format!("http://{}", l.describe()),
                Listener::Unix(..) => l.describe(),
            };
            tracing::info!("listening on {url}");
        }
        tracing::info!("starting {}", plan.summary());
        for j in &jobs {
            tracing::info!("job {:?}: {}, in worker 0", j.name, j.schedule);
        }

        let reload = || -> Result<Reloaded, String> {
            let settings = Settings::resolve(&cli, &ProcessEnv).map_err(|e| e.to_string())?;
            let plan = Plan::decide(&settings, cores::detect());
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            if settings.log_level != log_level {
                tracing::warn!(
                    "reload: a log level change needs a restart; keeping the current level"
                );
            }
            if settings.accept != accept {
                tracing::warn!(
                    "reload: an accept strategy change needs a restart (or a binary upgrade); \
                     keeping the current one"
                );
            }
            if settings.umask != umask {
                tracing::warn!(
                    "reload: a umask change needs a restart (or a binary upgrade); keeping the \
                     current one"
                );
            }
            if settings.log_file != log_file {
                tracing::warn!(
                    "reload: a log file change needs a restart (or a binary upgrade); keeping the \
                     current one"
                );
            }
            let mut jobs = settings.jobs.clone();
            jobs.extend(lib_jobs.iter().cloned());
            crate::jobs::validate(&jobs)?;
            Ok(Reloaded {
                settings,
                plan,
                jobs,
            })
        };
        let outcome = master::run(MasterArgs {
            workers: plan.workers,
            threads: settings.threads,
            graceful_timeout: settings.graceful_timeout,
            limits: settings.limits(),
            health: settings.health(),
            binds: specs,
            backlog: settings.backlog,
            socket_mode: settings.socket_mode,
            listeners,
            app: &app,
            jobs,
            reload: &reload,
            activated,
            program: match exe {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(
                        "cannot read this executable's path ({e}); SIGUSR2 upgrades are disabled"
                    );
                    None
                }
            },
            predecessor,
            pid_file: settings.pid_file.clone(),
            accept: settings.accept,
        });
        match outcome {
            Ok(Outcome::Stopped) => ExitCode::from(EXIT_OK),
            Ok(Outcome::GaveUp(msg)) => {
                tracing::error!("{msg}");
                fail(EXIT_BOOT, &msg)
            }
            Err(e) => fail(EXIT_RUNTIME, &e),
        }
    }
}

/// Prints a clap error: help and version in full (exit 0), anything else as one line (exit 2).
fn clap_exit(program: &str, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::from(EXIT_OK)
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // A bad choice names the accepted ones, on a later line of clap's message.
            let expected = rendered
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("[possible values:"))
                .map(|l| {
                    format!(
                        "; expected one of: {}",
                        l.trim_start_matches("[possible values:")
                            .trim_end_matches(']')
                            .trim()
                    )
                })
                .unwrap_or_default();
            eprintln!("{program}: {first}{expected} (see --help)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Threads in this process, from `/proc/self/stat`; 1 if unknown.
fn thread_count() -> usize {
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

    #[test]
    fn this_test_thread_count_is_readable() {
        assert!(thread_count() >= 1);
    }
}
