//! An app with state and hooks, for tests and as a small model: the async start hook builds the
//! state, the app and a job use it, and the stop hook reports on it after the drain.
//!
//! It also extends the command line: `--token TEXT` (env `HOOKS_TOKEN`) is a text the state carries,
//! so a test can see which state answered, and the `token` subcommand prints it and exits without
//! starting a server. `--help` and `--version` name the app, not hyperfork.
//!
//! `HOOKS_START` picks how the start hook behaves: `ok` (default), `error`, `panic`, `pending` (never
//! finishes: the worker's boot timeout ends it) or `block` (blocks the worker's thread, as a
//! `block_on` inside the runtime would: the master's boot timeout ends it).
//!
//! ```text
//! cargo run --example hooks -- --workers 2 --token hello
//! curl localhost:8000/        # "hello slot requests"
//! cargo run --example hooks -- --token hello token
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hyperfork::{Every, JobContext, Server, Worker};

/// The app's own command line; hyperfork adds its flags and subcommands to it.
#[derive(clap::Parser)]
#[command(
    name = "hooks-demo",
    version = "9.9.9",
    about = "An app with state and hooks"
)]
struct AppCli {
    /// A text the app state carries
    #[arg(long, env = "HOOKS_TOKEN", default_value = "none")]
    token: String,
    #[command(subcommand)]
    command: Option<AppCommand>,
}

/// The app's own subcommands.
#[derive(clap::Subcommand)]
enum AppCommand {
    /// Print the token and exit, without starting a server
    Token,
}

/// What each worker builds at start and shares with its routes, its jobs and its stop hook.
struct AppState {
    token: String,
    slot: usize,
    requests: AtomicU64,
}

/// The start hook.
async fn start(slot: usize, token: String) -> Result<AppState, String> {
    match std::env::var("HOOKS_START").as_deref().unwrap_or("ok") {
        "error" => return Err("injected start error: database unreachable".into()),
        "panic" => panic!("injected start panic"),
        "pending" => std::future::pending::<()>().await,
        "block" => {
            // A synchronous wait for something only this worker's own (blocked) runtime would
            // deliver: the thread never runs again.
            let (_tx, rx) = std::sync::mpsc::channel::<()>();
            let _ = rx.recv();
            std::thread::sleep(Duration::from_secs(3600));
        }
        _ => {}
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(AppState {
        token,
        slot,
        requests: AtomicU64::new(0),
    })
}

fn main() -> ExitCode {
    let (server, cli) = Server::from_env_and_args_with::<AppCli>();
    if let Some(AppCommand::Token) = cli.command {
        println!("{}", cli.token);
        return ExitCode::SUCCESS;
    }
    let token = cli.token;
    server
        .state(move |worker: &Worker| start(worker.slot(), token.clone()))
        .app(|worker: &Worker<AppState>| {
            let state = worker.state_arc();
            Router::new().route(
                "/",
                get(move || {
                    let state: Arc<AppState> = state.clone();
                    async move {
                        let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
                        format!("{} {} {n}\n", state.token, state.slot)
                    }
                }),
            )
        })
        .job(
            "look",
            Every::seconds(1),
            |ctx: JobContext<AppState>| async move {
                tracing::info!(
                    job = "look",
                    "job sees token {} in slot {}",
                    ctx.state().token,
                    ctx.state().slot
                );
            },
        )
        .on_stop(|worker: Worker<AppState>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tracing::info!(
                "stop hook ran in slot {} after {} request(s)",
                worker.slot(),
                worker.state().requests.load(Ordering::Relaxed)
            );
        })
        .run()
}
