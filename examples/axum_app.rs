//! An axum app under the hyperfork master: the same CLI, environment and TOML file as `hyperfork`.
//!
//! ```text
//! cargo run --release --example axum_app -- --workers 2 --port 8000
//! curl localhost:8000/            # which worker answered
//! curl 'localhost:8000/slow?ms=2000'
//! ```
//!
//! Worker 0 also runs a scheduled job, `record-usage`, every 30 seconds.

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::Query;
use axum::routing::get;
use serde::Deserialize;

#[derive(Deserialize)]
struct SlowParams {
    /// How long to take, in milliseconds.
    ms: Option<u64>,
}

/// Builds the router for one worker; called in the worker, after `fork`.
fn make_router(worker: &hyperfork::Worker) -> Router {
    let slot = worker.slot();
    let pid = worker.pid();
    Router::new()
        .route(
            "/",
            get(move || async move { format!("Hello from axum, worker {slot} (pid {pid})\n") }),
        )
        .route(
            "/slow",
            get(|Query(p): Query<SlowParams>| async move {
                let ms = p.ms.unwrap_or(1000).min(60_000);
                tracing::info!("slow request started ({ms} ms)");
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slow done after {ms} ms\n")
            }),
        )
        .route(
            "/worker",
            get(move || async move {
                axum::Json(serde_json::json!({ "worker": slot, "pid": pid }))
            }),
        )
}

fn main() -> ExitCode {
    hyperfork::Server::from_env_and_args()
        .app(make_router)
        // Runs in worker 0 only, once per tick, even while workers are replaced.
        .job(
            "record-usage",
            hyperfork::Every::seconds(30),
            |ctx: hyperfork::JobContext| async move {
                tracing::info!("recording usage for tick {}", ctx.scheduled_at);
            },
        )
        .run()
}
