//! The library's entry point: [`Server`] wraps an application in the hyperfork master.
//!
//! Every binary built on the library gets the same command line, environment variables and TOML file
//! as the `hyperfork` binary. The app factory runs in each worker, after `fork`, inside the worker's
//! tokio runtime; it receives the worker's [`Worker`] identity (slot, pid).

use std::ffi::OsString;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::service::TowerToHyperService;

use crate::app::state::{AnyState, typed};
use crate::app::{BoxError, Worker};
use crate::config::cli::{Cli, Command};
use crate::config::cores;
use crate::config::sizing::Plan;
use crate::config::tls::Tls;
use crate::config::values::{Accept, LogLevel};
use crate::config::{ProcessEnv, Settings, Sourced};
use crate::error::{ConfigError, PrivilegeError};
use crate::error::{EXIT_BOOT, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};
use crate::jobs::schedule::Schedule;
use crate::jobs::store::{StoreConfig, StoreUrl};
use crate::jobs::{Delivery, Job, JobContext, JobResult};
use crate::logging;
use crate::master::{self, MasterArgs, Outcome, Reloaded};
use crate::shared::listener::{self, BindSpec, Listener};
use crate::shared::privileges::{self, Account, Current, ProbeError, Target, Wanted};
use crate::worker::runner::{App, AppFactory, Runner, StartHook, StopHook};
use crate::worker::serve::{self, HttpService, ResponseBody};

/// A pre-fork server: settings, the app, its state and hooks, and its jobs.
///
/// `S` is the app's state, built in each worker by [`Server::state`] (the async start hook) and handed
/// to the app factory, every job run and the stop hook; `()` for an app without state.
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
pub struct Server<S = ()> {
    program: String,
    cli: Result<Cli, clap::Error>,
    /// Why `--env-file` or `-e` could not be loaded, if so.
    env_error: Option<ConfigError>,
    start: Option<StartHook>,
    app: Option<AppFactory>,
    stop: Option<StopHook>,
    jobs: Vec<Job>,
    /// The app's job store URL ([`Server::jobs_store`]), checked by [`Server::run`].
    jobs_store: Option<String>,
    state: PhantomData<fn() -> S>,
}

impl<S> std::fmt::Debug for Server<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("program", &self.program)
            .field("cli", &self.cli)
            .field("start", &self.start.is_some())
            .field("app", &self.app.is_some())
            .field("stop", &self.stop.is_some())
            .field("jobs", &self.jobs)
            .field("jobs_store", &self.jobs_store.is_some())
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
        let program = program_name(&args);
        let env_error = env_file::preload(Cli::command(), &args).err();
        let cli = Cli::command()
            .bin_name(program.clone())
            .try_get_matches_from(args)
            .map(|m| Cli::from_matches(&m));
        Server {
            program,
            cli,
            env_error,
            start: None,
            app: None,
            stop: None,
            jobs: Vec::new(),
            jobs_store: None,
            state: PhantomData,
        }
    }

    /// Parses this process's command line as the app's own (`A`, a `clap::Parser`: its name, version,
    /// about, flags and subcommands) with hyperfork's flags and subcommands added, so `--help` and
    /// `--version` show the app's name and version and hyperfork's settings work as usual. Returns
    /// the server and the app's parsed arguments. Like `clap::Parser::parse`, it ends the process on
    /// `--help` or `--version` (status 0) or a bad command line (one line on stderr, status 2).
    ///
    /// An app subcommand (a `migrate`, say) is the app's to run: check it before [`Server::run`],
    /// which refuses to serve with one. A flag of the app must not reuse a name of hyperfork's.
    ///
    /// ```no_run
    /// #[derive(clap::Parser)]
    /// #[command(name = "realapp", version, about = "The users API")]
    /// struct AppCli {
    ///     /// PostgreSQL URL
    ///     #[arg(long, env = "DATABASE_URL", default_value = "postgres://localhost/app")]
    ///     database_url: String,
    ///     #[command(subcommand)]
    ///     command: Option<AppCommand>,
    /// }
    ///
    /// #[derive(clap::Subcommand)]
    /// enum AppCommand {
    ///     /// Create the tables, then exit
    ///     Migrate,
    /// }
    ///
    /// fn main() -> std::process::ExitCode {
    ///     let (server, cli) = hyperfork::Server::from_env_and_args_with::<AppCli>();
    ///     if let Some(AppCommand::Migrate) = cli.command {
    ///         println!("migrating {}", cli.database_url);
    ///         return std::process::ExitCode::SUCCESS;
    ///     }
    ///     server.app(|_: &hyperfork::Worker| axum::Router::new()).run()
    /// }
    /// ```
    pub fn from_env_and_args_with<A: clap::Parser>() -> (Server, A) {
        let args: Vec<OsString> = std::env::args_os().collect();
        let program = program_name(&args);
        match Server::from_args_with::<A, _, _>(args) {
            Ok(parsed) => parsed,
            Err(e) => std::process::exit(match clap_exit(&program, e) {
                code if code == ExitCode::SUCCESS => 0,
                _ => i32::from(EXIT_USAGE),
            }),
        }
    }

    /// Like [`Server::from_env_and_args_with`] with an explicit command line, returning clap's error
    /// (help and version included) instead of exiting.
    pub fn from_args_with<A, I, T>(args: I) -> Result<(Server, A), clap::Error>
    where
        A: clap::Parser,
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = program_name(&args);
        // Before the real parse: the app's own flags may read the loaded variables (clap's `env`).
        env_file::preload(Cli::add_to(A::command()), &args).map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })?;
        let matches = Cli::add_to(A::command())
            .bin_name(program.clone())
            .try_get_matches_from(args)?;
        let app = A::from_arg_matches(&matches)?;
        let server = Server {
            program,
            cli: Ok(Cli::from_matches(&matches)),
            env_error: None,
            start: None,
            app: None,
            stop: None,
            jobs: Vec::new(),
            jobs_store: None,
            state: PhantomData,
        };
        Ok((server, app))
    }

    /// The async start hook: builds the app's state in each worker, after `fork`, inside its runtime,
    /// before the worker reports ready. An error, a panic, or not finishing within `--boot-timeout`
    /// is a boot failure (exit status 3, restarted with back-off). The app factory, the jobs and the
    /// stop hook registered after this call receive the state.
    ///
    /// ```no_run
    /// # use hyperfork::{Every, JobContext, Server, Worker};
    /// #[derive(Clone)]
    /// struct AppState { greeting: String }
    ///
    /// Server::from_env_and_args()
    ///     .state(|worker: &Worker| {
    ///         let slot = worker.slot();
    ///         async move { Ok::<_, std::io::Error>(AppState { greeting: format!("hello from {slot}") }) }
    ///     })
    ///     .app(|worker: &Worker<AppState>| {
    ///         let state = worker.state().clone();
    ///         axum::Router::new().route("/", axum::routing::get(move || async move { state.greeting }))
    ///     })
    ///     .job("tick", Every::seconds(30), |ctx: JobContext<AppState>| async move {
    ///         tracing::info!("{}", ctx.state().greeting);
    ///     })
    ///     .on_stop(|worker: Worker<AppState>| async move {
    ///         tracing::info!("bye from {}", worker.slot());
    ///     })
    ///     .run();
    /// ```
    pub fn state<T, F, Fut, E>(self, start: F) -> Server<T>
    where
        T: Send + Sync + 'static,
        F: Fn(&Worker) -> Fut + 'static,
        Fut: Future<Output = Result<T, E>> + 'static,
        E: Into<BoxError>,
    {
        let start: StartHook = Box::new(move |worker: &Worker| {
            let fut = start(worker);
            Box::pin(async move {
                let state = fut.await.map_err(Into::into)?;
                Ok(Arc::new(state) as AnyState)
            })
        });
        Server {
            program: self.program,
            cli: self.cli,
            env_error: self.env_error,
            start: Some(start),
            app: self.app,
            stop: self.stop,
            jobs: self.jobs,
            jobs_store: self.jobs_store,
            state: PhantomData,
        }
    }
}

impl<S: Send + Sync + 'static> Server<S> {
    /// Serves a tower service (an axum `Router`, for instance), built once per worker by `factory`.
    pub fn app<F, T, B>(self, factory: F) -> Server<S>
    where
        F: Fn(&Worker<S>) -> T + 'static,
        T: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
        T::Error: Into<BoxError>,
        B: ResponseBody,
    {
        self.try_app(move |w| Ok::<_, std::convert::Infallible>(factory(w)))
    }

    /// Like [`Server::app`], for a factory that can fail; an error stops the worker with exit status 3
    /// and, when every worker keeps failing, stops the master with the error.
    pub fn try_app<F, T, B, E>(self, factory: F) -> Server<S>
    where
        F: Fn(&Worker<S>) -> Result<T, E> + 'static,
        E: Into<BoxError>,
        T: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
        T::Error: Into<BoxError>,
        B: ResponseBody,
    {
        self.try_hyper_app(move |w| factory(w).map(TowerToHyperService::new))
    }

    /// Serves a hyper service (e.g. from `hyper::service::service_fn`), built once per worker.
    pub fn hyper_app<F, T, B>(self, factory: F) -> Server<S>
    where
        F: Fn(&Worker<S>) -> T + 'static,
        T: HttpService<B>,
        B: ResponseBody,
    {
        self.try_hyper_app(move |w| Ok::<_, std::convert::Infallible>(factory(w)))
    }

    /// Like [`Server::hyper_app`], for a factory that can fail.
    pub fn try_hyper_app<F, T, B, E>(mut self, factory: F) -> Server<S>
    where
        F: Fn(&Worker<S>) -> Result<T, E> + 'static,
        E: Into<BoxError>,
        T: HttpService<B>,
        B: ResponseBody,
    {
        self.app = Some(Box::new(move |w: &Worker, state: &AnyState| {
            let worker = w.with_state(typed::<S>(state)?);
            let service = factory(&worker).map_err(Into::into)?;
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

    /// The async stop hook: runs in each worker after it has drained its connections and its jobs
    /// have ended, before it exits, within what is left of `--graceful-timeout`. It runs whatever
    /// stopped the worker gracefully (`SIGTERM`, a reload, a recycle, `SIGTTOU`), not on a fast
    /// shutdown (`SIGINT`, `SIGQUIT`) or `SIGKILL`. The place to close a database pool or flush
    /// buffered writes.
    pub fn on_stop<F, Fut, R>(mut self, stop: F) -> Server<S>
    where
        F: Fn(Worker<S>) -> Fut + 'static,
        Fut: Future<Output = R> + 'static,
        R: JobResult + 'static,
    {
        self.stop = Some(Box::new(move |w: &Worker, state: &AnyState| {
            let state = typed::<S>(state);
            let fut = state.map(|s| stop(w.with_state(s)));
            Box::pin(async move {
                match fut {
                    Ok(fut) => fut.await.into_outcome().map_err(BoxError::from),
                    Err(e) => Err(e),
                }
            })
        }));
        self
    }

    /// Adds a scheduled job: `f` runs on `schedule` in the worker of slot 0 only, never twice for one
    /// tick, with the app state in [`JobContext::state`]. `f` returns `()` or a `Result` whose error
    /// is logged.
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
    ) -> Server<S>
    where
        F: Fn(JobContext<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: JobResult + 'static,
    {
        self.add_job(Job::<S>::new(name, schedule, f))
    }

    /// Adds a job built with [`Job`] (for a timeout, misfire grace or overlap).
    pub fn add_job(mut self, job: Job<S>) -> Server<S> {
        self.jobs.push(job.erase());
        self
    }

    /// Claims every scheduled tick in this PostgreSQL database (`postgres://user:password@host/db`),
    /// so that the hosts running this service behind a load balancer run each tick once between
    /// them; each run gets a fencing token in [`JobContext::fence`]. `--jobs-store` (or
    /// `HYPERFORK_JOBS_STORE`, or the `jobs_store` TOML key) overrides it. [`Server::run`] checks the
    /// URL: a bad one is a usage error. See "Jobs across several hosts" in the README.
    ///
    /// ```no_run
    /// # use hyperfork::{Every, Server, Worker};
    /// # fn router(_: &Worker) -> axum::Router { axum::Router::new() }
    /// let url = std::env::var("DATABASE_URL").unwrap_or_default();
    /// Server::from_env_and_args()
    ///     .app(router)
    ///     .jobs_store(url)
    ///     .job("record-usage", Every::seconds(30), |ctx| async move {
    ///         tracing::info!("tick {} with token {:?}", ctx.scheduled_at, ctx.fence.map(|f| f.token()));
    ///     })
    ///     .run();
    /// ```
    pub fn jobs_store(mut self, url: impl Into<String>) -> Server<S> {
        self.jobs_store = Some(url.into());
        self
    }

    /// Runs the subcommand (by default: the server) and returns the process's exit status.
    ///
    /// Errors are printed as one line on stderr: status 2 for usage errors, 1 for runtime failures,
    /// 3 when every worker failed to boot.
    pub fn run(self) -> ExitCode {
        let program = self.program.clone();
        match self.try_run() {
            Ok(code) => code,
            Err(Failure::Clap(e)) => clap_exit(&program, e),
            Err(Failure::Exit { code, message }) => {
                eprintln!("{program}: {message}");
                ExitCode::from(code)
            }
        }
    }

    /// [`Server::run`]'s steps: settings, the `ctl` and `plan` subcommands, logging, sockets, the
    /// master.
    fn try_run(self) -> Result<ExitCode, Failure> {
        // Recorded first: a binary upgrade runs the executable from this path.
        let exe = crate::master::upgrade::Program::current();
        // Titles rewrite the arguments' memory; only safe while this is the only thread.
        let threads = thread_count();
        if threads == 1 {
            crate::shared::proctitle::init();
        }
        let Server {
            program,
            cli,
            env_error,
            start,
            app,
            stop,
            jobs: lib_jobs,
            jobs_store: lib_store,
            ..
        } = self;
        let cli = cli.map_err(Failure::Clap)?;
        if let Some(e) = env_error {
            return Err(Failure::usage(e));
        }
        let mut settings = Settings::resolve(&cli, &ProcessEnv).map_err(Failure::usage)?;
        let lib_store = lib_store
            .map(|url| {
                StoreUrl::parse(&url).map_err(|e| {
                    Failure::usage(ConfigError::Invalid(format!("Server::jobs_store: {e}")))
                })
            })
            .transpose()?;
        let jobs_store = settings.jobs_store_config(lib_store.as_ref());
        if let Some(Command::JobsMigrate) = &cli.command {
            // A one-off client, before logging, sockets or the master.
            return Ok(crate::jobs::store::migrate_command(
                jobs_store.as_ref(),
                &program,
            ));
        }
        if let Some(Command::Ctl(args)) = &cli.command {
            // The client: before logging, sockets or the master; it only connects.
            return Ok(crate::ctl::run(&settings, args, &program));
        }
        let plan = Plan::decide(&settings, cores::detect());
        let memory = crate::config::memory::detect();
        // `plan --measure`: boot the pool as `serve` would, on an ephemeral loopback port.
        let mut measure = None;
        match &cli.command {
            Some(Command::Plan {
                json,
                measure: None,
            }) => {
                let live = live_advice(&settings);
                print_plan(
                    &plan.with_memory(&settings, memory, None),
                    *json,
                    live.as_deref(),
                );
                return Ok(ExitCode::from(EXIT_OK));
            }
            Some(Command::Plan {
                json,
                measure: Some(path),
            }) => {
                measure = Some((crate::master::measure::Spec { path: path.clone() }, *json));
                for_measuring(&mut settings);
            }
            Some(Command::App(name)) => {
                return Err(Failure::usage(ConfigError::Invalid(format!(
                    "{name} is the app's own subcommand: handle it before calling Server::run"
                ))));
            }
            Some(Command::Serve | Command::Check | Command::Ctl(_) | Command::JobsMigrate)
            | None => {}
        }
        let mut jobs = with_library_jobs(&settings, &lib_jobs).map_err(Failure::usage)?;
        if measure.is_some() {
            // Measuring must not run the app's jobs ("expire users") beside the real server.
            jobs.clear();
        }
        if let Some(dir) = &settings.chdir {
            if !dir.is_dir() {
                return Err(Failure::usage(ConfigError::Invalid(format!(
                    "--chdir {}: not a directory",
                    dir.display()
                ))));
            }
        }
        if cli.command == Some(Command::Check) {
            return Ok(ExitCode::from(EXIT_OK));
        }
        let factory = app.ok_or_else(|| {
            Failure::usage(ConfigError::Invalid(
                "no app: call Server::app before Server::run".into(),
            ))
        })?;
        let app = App {
            start,
            factory,
            stop,
        };
        let target = workers_account(&settings).map_err(Failure::usage)?;
        let account = match &target {
            Target::Switch(a) => Some(a.clone()),
            Target::Unchanged | Target::Already(_) => None,
        };
        let watch = crate::master::watch::Spec::of(&settings, exe.as_ref().ok().map(|p| p.exe()))
            .map_err(|e| Failure::usage(ConfigError::Invalid(e)))?;
        // The log file is handed to the workers' account, but never /dev/null (`plan --measure`).
        let log_owner = account.clone().filter(|_| measure.is_none());
        start_logging(&settings, &plan, threads, log_owner)?;
        warn_reload_options_unused(&settings);
        check_account(&settings, &target)?;
        // Before any socket or fork: a bad certificate or key is a usage error naming its file.
        // `plan --measure` warms the pool up over plain HTTP.
        let tls = match measure {
            Some(_) => None,
            None => load_tls(&settings).map_err(Failure::usage)?,
        };
        let opened = open_listeners(&settings, account.as_ref())?;
        announce(&settings, &opened.listeners, &plan, &jobs, tls.as_ref());
        announce_store(jobs_store.as_ref(), &jobs);
        check_db_connections(&settings, plan.workers);
        // The cgroup limit less the reserve: the guard's and the advice's budget.
        let budget =
            crate::config::memory_guard::Budget::of_limit(&memory, settings.memory_reserve);
        let guard = plan.guard(budget.as_ref(), settings.max_surge);
        let fixed = FixedAtStart::of(&settings);
        let reload = || reload(&cli, &lib_jobs, lib_store.as_ref(), &fixed);
        let control_socket = if measure.is_some() {
            None
        } else {
            let c = crate::config::control::control_socket(&settings, &ProcessEnv);
            match c.checked() {
                Ok(path) => Some((path.to_path_buf(), c.is_explicit())),
                Err(e) if c.is_explicit() => {
                    return Err(Failure::usage(ConfigError::Invalid(e.to_string())));
                }
                Err(e) => {
                    tracing::warn!("no control socket, `ctl` will not reach this master: {e}");
                    None
                }
            }
        };
        let outcome = master::run(MasterArgs {
            workers: plan.workers,
            threads: settings.threads,
            graceful_timeout: settings.graceful_timeout,
            shutdown_delay: settings.shutdown_delay,
            limits: settings.limits(),
            tls,
            health: settings.health(),
            binds: bind_specs(&settings),
            backlog: settings.backlog,
            socket_mode: settings.socket_mode,
            listeners: opened.listeners,
            app: &app,
            jobs,
            jobs_store: jobs_store.filter(|_| measure.is_none()),
            reload: &reload,
            activated: opened.activated,
            program: exe
                .map_err(|e| {
                    tracing::warn!(
                        "cannot read this executable's path ({e}); SIGUSR2 upgrades are disabled"
                    )
                })
                .ok(),
            predecessor: opened.predecessor,
            pid_file: settings.pid_file.clone(),
            accept: settings.accept,
            max_surge: settings.max_surge,
            metrics_bind: settings.metrics_bind,
            control_socket,
            account,
            watch,
            chdir: settings.chdir.clone(),
            db: settings.db_use(),
            guard,
            cores: plan.cores.count,
            budget,
            measure: measure.as_ref().map(|(spec, _)| spec.clone()),
        });
        match outcome {
            Ok(Outcome::Measured(m)) => {
                let json = measure.as_ref().is_some_and(|(_, json)| *json);
                print_plan(&plan.with_memory(&settings, memory, Some(*m)), json, None);
                Ok(ExitCode::from(EXIT_OK))
            }
            Ok(Outcome::Stopped) if measure.is_some() => Err(Failure::runtime(
                "plan --measure: the pool stopped before it could be measured (see the log above)",
            )),
            Ok(Outcome::Stopped) => Ok(ExitCode::from(EXIT_OK)),
            Ok(Outcome::GaveUp(msg)) => {
                tracing::error!("{msg}");
                Err(Failure::exit(EXIT_BOOT, msg))
            }
            Err(e) => Err(Failure::exit(EXIT_RUNTIME, e)),
        }
    }
}

/// The program's name for messages and `--help`: the file name of the first argument.
fn program_name(args: &[OsString]) -> String {
    args.first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map_or_else(
            || "hyperfork".to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
}

/// Why [`Server::run`] stops early.
enum Failure {
    /// The command line is wrong, or asks for help or the version.
    Clap(clap::Error),
    /// Anything else: the exit status and the line for stderr.
    Exit {
        /// The exit status.
        code: u8,
        /// What went wrong, on one line.
        message: String,
    },
}

impl Failure {
    /// A failure with exit status `code`.
    fn exit(code: u8, e: impl std::fmt::Display) -> Failure {
        Failure::Exit {
            code,
            message: e.to_string(),
        }
    }

    /// A usage error (bad flag, environment variable or config file): exit status 2.
    fn usage(e: impl std::fmt::Display) -> Failure {
        Failure::exit(EXIT_USAGE, e)
    }

    /// A runtime failure (a socket, a file, an OS call): exit status 1.
    fn runtime(e: impl std::fmt::Display) -> Failure {
        Failure::exit(EXIT_RUNTIME, e)
    }
}

/// `hyperfork plan`: the sizing decision as text or JSON on stdout.
/// Prints the plan, with the running master's advice (`live`) when one answered.
fn print_plan(plan: &Plan, json: bool, live: Option<&[String]>) {
    if json {
        let text = plan.to_json();
        match (live, serde_json::from_str::<serde_json::Value>(&text)) {
            (Some(live), Ok(serde_json::Value::Object(mut doc))) => {
                doc.insert("live".into(), serde_json::json!(live));
                let doc = serde_json::Value::Object(doc);
                println!("{}", serde_json::to_string_pretty(&doc).unwrap_or(text));
            }
            _ => println!("{text}"),
        }
    } else {
        print!("{}", plan.to_text());
        for line in live.unwrap_or_default() {
            println!("{:<11}{line}", "live:");
        }
    }
}

/// How long `plan` waits for a running master's status.
const LIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The advice of the master listening on the control socket, if one answers within
/// [`LIVE_TIMEOUT`]; `None` when none does (nothing is running, or it is another version's).
fn live_advice(settings: &Settings) -> Option<Vec<String>> {
    let place = crate::config::control::control_socket(settings, &ProcessEnv);
    let args = crate::config::cli::CtlArgs {
        request: crate::shared::ctl_wire::Request::Status,
        json: false,
        top: None,
        timeout: Some(LIVE_TIMEOUT),
    };
    crate::ctl::status(&place, &args).ok().map(|s| s.advice)
}

/// `plan --measure` boots the pool as `serve` would, but out of the way of a server already
/// running: on an ephemeral loopback port, with balanced accept (which spreads the warm-up's
/// connections over the workers), without a pid file, metrics address, control socket or file
/// watcher. The log keeps its level and access lines, since writing them weighs on a worker too, but
/// goes to `/dev/null`: what matters is in the plan (a pool that cannot boot ends the command with
/// its last boot error).
fn for_measuring(settings: &mut Settings) {
    settings.binds = vec![Sourced {
        value: BindSpec::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        },
        source: crate::config::Source::Default,
    }];
    settings.fds.clear();
    settings.accept = Accept::Balanced;
    settings.pid_file = None;
    settings.metrics_bind = None;
    settings.log_file = Some(PathBuf::from("/dev/null"));
    settings.reload.value = false;
}

/// Logs the pool's database connections against `--db-max-connections`, reload surge included: a
/// warning when they do not fit, an error when a `--db-budget` cannot give each worker one.
fn check_db_connections(settings: &Settings, workers: usize) {
    let Some(db) = settings.db_use() else {
        return;
    };
    let max = settings.db_max_connections.as_ref().map(|m| m.value);
    match crate::config::guide::connections(db, workers, settings.max_surge, max) {
        Ok(c) => match c.allowed {
            Some(allowed) if c.at_reload > allowed => tracing::warn!(
                "database: {workers} workers open up to {} connections, {} during a reload \
                 (--max-surge {}), but max_connections {} admits {allowed} ({} are kept for \
                 superusers): lower --workers or the pool per worker, or raise max_connections",
                c.steady,
                c.at_reload,
                settings.max_surge,
                max.unwrap_or(0),
                crate::config::guide::SUPERUSER_RESERVED
            ),
            _ => tracing::info!(
                "database: {workers} workers open up to {} connections ({} per worker), {} during a \
                 reload{}",
                c.steady,
                c.per_worker,
                c.at_reload,
                c.allowed
                    .map_or(String::new(), |a| format!("; max_connections admits {a}"))
            ),
        },
        Err(e) => tracing::error!("database: {e}"),
    }
}

/// The file's `[[jobs]]` followed by the jobs the library added, checked together.
fn with_library_jobs(settings: &Settings, lib_jobs: &[Job]) -> Result<Vec<Job>, String> {
    let mut jobs = settings.jobs.clone();
    jobs.extend(lib_jobs.iter().cloned());
    crate::jobs::validate(&jobs)?;
    Ok(jobs)
}

/// The account `--user` and `--group` ask for, resolved against the user and group databases;
/// an unknown name, or another account without root, is a usage error.
fn workers_account(settings: &Settings) -> Result<Target, PrivilegeError> {
    let from = |s: &Option<Sourced<String>>| s.as_ref().map(|s| s.source.to_string());
    let (user_from, group_from) = (from(&settings.user), from(&settings.group));
    privileges::resolve(
        wanted(&settings.user, &user_from),
        wanted(&settings.group, &group_from),
        Current::of_process(),
    )
}

/// A `--user` or `--group` value and where it came from, for [`privileges::resolve`].
fn wanted<'a>(
    setting: &'a Option<Sourced<String>>,
    from: &'a Option<String>,
) -> Option<Wanted<'a>> {
    setting.as_ref().zip(from.as_ref()).map(|(s, from)| Wanted {
        text: s.value.as_str(),
        from: from.as_str(),
    })
}

/// Logs what `--user` and `--group` change and, when the workers switch, checks in a forked probe
/// that the system allows the switch (exit 1 if not) and that the account can open the log file,
/// as the workers do after a rotation (exit 2 if not).
fn check_account(settings: &Settings, target: &Target) -> Result<(), Failure> {
    let account = match target {
        Target::Unchanged => return Ok(()),
        Target::Already(label) => {
            tracing::info!("already running as {label}: --user and --group change nothing");
            return Ok(());
        }
        Target::Switch(account) => account,
    };
    if account.uid().is_none() {
        tracing::warn!(
            "--group without --user: the workers change group only and keep the master's uid (root)"
        );
    }
    // Only a regular file is reopened by path in a way the probe can stand for (a device or a
    // pipe is not handed over, and stays whatever it is).
    let log_file = settings
        .log_file
        .as_deref()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file()));
    account.probe(log_file).map_err(|e| match e {
        ProbeError::LogFile { .. } => Failure::usage(e),
        ProbeError::Switch(_) | ProbeError::Os(_) => Failure::runtime(e),
    })?;
    tracing::info!(
        "the workers and their jobs run as {account}; the master stays {} (see \"Dropping \
         privileges\" in docs/operations.md)",
        Current::of_process()
    );
    Ok(())
}

/// Sets the umask, then starts logging (the log file handed to the workers' `account`, if any) and
/// reports the plan's warnings.
fn start_logging(
    settings: &Settings,
    plan: &Plan,
    threads: usize,
    account: Option<Account>,
) -> Result<(), Failure> {
    // gunicorn's --umask: set before the master creates any file (the log file just below, the
    // pid file, and the sockets' mode when --socket-mode is not given), and inherited by the
    // workers. The master is single-threaded here. Without it the inherited umask stays.
    if let Some(mask) = settings.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    logging::hand_files_to(account);
    if let Some(name) = &settings.name {
        crate::shared::proctitle::set_name(name);
    }
    logging::init(
        settings.log_level,
        settings.log_file.as_deref(),
        settings.use_colors,
    )
    .map_err(Failure::runtime)?;
    logging::install_panic_hook();
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    for note in &settings.no_effect {
        tracing::info!("{note}");
    }
    if threads > 1 {
        tracing::warn!(
            "the process has {threads} threads before forking; only the forking thread exists in \
             the workers, so anything those threads hold (locks, runtimes) is unusable there"
        );
    }
    Ok(())
}

/// Warns about `--reload-*` options given without `--reload` (uvicorn warns too): they do nothing.
fn warn_reload_options_unused(settings: &Settings) {
    if settings.reload.value {
        return;
    }
    let given = [
        ("--reload-dir", settings.reload_dirs.is_some()),
        ("--reload-include", settings.reload_includes.is_some()),
        ("--reload-exclude", settings.reload_excludes.is_some()),
        (
            "--reload-delay",
            settings.reload_delay.source != crate::config::Source::Default,
        ),
    ];
    for (name, set) in given {
        if set {
            tracing::warn!("{name} is set but --reload is not: no file is watched");
        }
    }
}

/// The addresses the settings ask for.
fn bind_specs(settings: &Settings) -> Vec<BindSpec> {
    settings.binds.iter().map(|b| b.value.clone()).collect()
}

/// The listening sockets and where they came from.
struct Opened {
    /// The sockets.
    listeners: Vec<Listener>,
    /// Whether systemd created them (their files are systemd's).
    activated: bool,
    /// The previous master, when this one was started by a binary upgrade.
    predecessor: Option<crate::master::upgrade::Channel>,
}

/// The previous master's sockets (binary upgrade), else systemd's, else newly bound ones; the unix
/// socket files bound here belong to `owner` (the workers' account), if any.
fn open_listeners(settings: &Settings, owner: Option<&Account>) -> Result<Opened, Failure> {
    let specs = bind_specs(settings);
    let (backlog, mode) = (settings.backlog, settings.socket_mode);
    if let Some(i) = crate::master::upgrade::inherited().map_err(Failure::runtime)? {
        tracing::info!(
            "started by the previous master (pid {}) for a binary upgrade",
            nix::unistd::getppid()
        );
        let listeners = if i.activated {
            i.listeners
        } else {
            listener::reuse_or_bind(&specs, i.listeners, backlog, mode, owner)
                .map_err(Failure::runtime)?
        };
        return Ok(Opened {
            listeners,
            activated: i.activated,
            predecessor: Some(i.channel),
        });
    }
    let (listeners, activated) = match crate::master::systemd::activated_listeners()
        .map_err(Failure::runtime)?
    {
        Some(l) => {
            tracing::info!("using {} socket(s) passed by systemd", l.len());
            (l, true)
        }
        None if !settings.fds.is_empty() => {
            let mut adopted = Vec::new();
            for fd in &settings.fds {
                let what = format!("fd://{} (from {})", fd.value, fd.source);
                // SAFETY: the descriptor was handed to this process to listen on (`--fd`);
                // nothing else in the master owns it.
                adopted
                    .push(unsafe { Listener::adopt(fd.value, &what) }.map_err(Failure::runtime)?);
            }
            // Like systemd's sockets: the descriptors' files are not hyperfork's to remove.
            (adopted, true)
        }
        None => (
            listener::bind_all(&specs, backlog, mode, owner).map_err(Failure::runtime)?,
            false,
        ),
    };
    Ok(Opened {
        listeners,
        activated,
        predecessor: None,
    })
}

/// The TLS configuration the settings ask for, loaded and checked, its warnings logged.
fn load_tls(settings: &Settings) -> Result<Option<Tls>, crate::config::tls::TlsError> {
    let tls = Tls::load(settings)?;
    for w in tls.iter().flat_map(Tls::warnings) {
        tracing::warn!("{w}");
    }
    Ok(tls)
}

/// Logs the addresses, the pool and the jobs about to start.
fn announce(
    settings: &Settings,
    listeners: &[Listener],
    plan: &Plan,
    jobs: &[Job],
    tls: Option<&Tls>,
) {
    if let Some(file) = &settings.config_file {
        tracing::info!("config file: {}", file.display());
    }
    if let Some(file) = &settings.env_file {
        tracing::info!("env file: {}", file.display());
    }
    for (name, _) in &settings.env_vars {
        tracing::info!("-e {name}: set for the app");
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    for l in listeners {
        let url = match l {
            Listener::Tcp(_) => format!("{scheme}://{}", l.describe()),
            Listener::Unix(..) if tls.is_some() => format!("{} (TLS)", l.describe()),
            Listener::Unix(..) => l.describe(),
        };
        tracing::info!("listening on {url}");
    }
    if let Some(tls) = tls {
        tracing::info!("TLS certificate: {}", tls.summary());
    }
    tracing::info!("starting {}", plan.summary());
    for j in jobs {
        tracing::info!("job {:?}: {}, in worker 0", j.name, j.schedule);
    }
}

/// Logs where ticks are claimed, and warns about delivery settings that cannot take effect.
fn announce_store(store: Option<&StoreConfig>, jobs: &[Job]) {
    let at_least_once = jobs.iter().filter(|j| j.delivery == Delivery::AtLeastOnce);
    let Some(store) = store else {
        for j in at_least_once {
            tracing::warn!(
                "job {:?}: delivery at-least-once has no effect without --jobs-store: a run lost \
                 with its worker is not run again",
                j.name
            );
        }
        return;
    };
    if jobs.is_empty() {
        tracing::warn!("--jobs-store {} is set, but there is no job", store.url);
        return;
    }
    tracing::info!(
        "job store {}: every tick is claimed there before it runs (lease {}, claims kept {}); \
         `every` ticks count from the Unix epoch",
        store.url,
        humantime::format_duration(store.lease),
        humantime::format_duration(store.retention)
    );
    for j in at_least_once {
        if j.grace() <= store.lease {
            tracing::warn!(
                "job {:?}: delivery at-least-once has no effect: its misfire grace ({}) is not \
                 longer than --jobs-lease ({}), so a lost run's tick is past its grace by the time \
                 its lease expires",
                j.name,
                humantime::format_duration(j.grace()),
                humantime::format_duration(store.lease)
            );
        }
    }
}

/// The settings a reload cannot change, as the master started with them.
struct FixedAtStart {
    log_level: LogLevel,
    accept: Accept,
    umask: Option<u32>,
    log_file: Option<PathBuf>,
    user: Option<String>,
    group: Option<String>,
}

impl FixedAtStart {
    /// The values in `settings`.
    fn of(settings: &Settings) -> FixedAtStart {
        FixedAtStart {
            log_level: settings.log_level,
            accept: settings.accept,
            umask: settings.umask,
            log_file: settings.log_file.clone(),
            user: value_of(&settings.user),
            group: value_of(&settings.group),
        }
    }

    /// Warns about each value `new` changes: it takes effect only after a restart.
    fn warn_about_changes(&self, new: &Settings) {
        if new.log_level != self.log_level {
            tracing::warn!("reload: a log level change needs a restart; keeping the current level");
        }
        let needs_restart = [
            ("an accept strategy", new.accept != self.accept),
            ("a umask", new.umask != self.umask),
            ("a log file", new.log_file != self.log_file),
            ("a user", value_of(&new.user) != self.user),
            ("a group", value_of(&new.group) != self.group),
        ];
        for (what, changed) in needs_restart {
            if changed {
                tracing::warn!(
                    "reload: {what} change needs a restart (or a binary upgrade); keeping the \
                     current one"
                );
            }
        }
    }
}

/// A sourced setting's value, without its source.
fn value_of<T: Clone>(s: &Option<Sourced<T>>) -> Option<T> {
    s.as_ref().map(|s| s.value.clone())
}

/// `SIGHUP`: the settings, plan and jobs read again from the same command line, environment and
/// file; an error rejects the reload.
fn reload(
    cli: &Cli,
    lib_jobs: &[Job],
    lib_store: Option<&StoreUrl>,
    fixed: &FixedAtStart,
) -> Result<Reloaded, String> {
    // The env file again, as it is now: the workers forked from now on see its variables.
    env_file::apply(cli).map_err(|e| e.to_string())?;
    let settings = Settings::resolve(cli, &ProcessEnv).map_err(|e| e.to_string())?;
    let tls = load_tls(&settings).map_err(|e| e.to_string())?;
    let plan = Plan::decide(&settings, cores::detect());
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    fixed.warn_about_changes(&settings);
    let jobs = with_library_jobs(&settings, lib_jobs)?;
    check_db_connections(&settings, plan.workers);
    let memory = crate::config::memory::detect();
    let budget = crate::config::memory_guard::Budget::of_limit(&memory, settings.memory_reserve);
    let guard = plan.guard(budget.as_ref(), settings.max_surge);
    let jobs_store = settings.jobs_store_config(lib_store);
    announce_store(jobs_store.as_ref(), &jobs);
    Ok(Reloaded {
        settings,
        tls,
        plan,
        guard,
        budget,
        jobs,
        jobs_store,
    })
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
            // A bad choice names the accepted ones, and a misspelled flag the nearest, on later
            // lines of clap's message: both go on the one line.
            eprintln!(
                "{program}: {} (see --help)",
                crate::config::cli::one_line(&e)
            );
            ExitCode::from(EXIT_USAGE)
        }
    }
}

use crate::config::env_file::{self, thread_count};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_thread_count_is_readable() {
        assert!(thread_count() >= 1);
    }
}
