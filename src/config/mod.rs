//! Settings: command line, then environment, then TOML file, then defaults.
//!
//! Each setting is declared once in [`settings`] (flag, environment variables, TOML key, default,
//! kind, help); [`declare`] turns the list into the [`Settings`] struct and the table that the
//! command line ([`cli`]), the TOML key check ([`file`](mod@file)) and the reference table
//! (`reference`, built for tests) are made from. [`Settings::resolve`] looks each setting up through
//! the [`layers`], remembering where each value came from ([`Source`]) so that `hyperfork plan` and
//! the startup log can say why the pool has the size it has, then applies the [`rules`] that tie
//! settings together. An empty environment variable counts as unset.
//!
//! The other modules: [`values`] (domain enums and text parsers), [`kinds`] (how each type of value
//! is read in each layer), [`job_tables`] (`[[jobs]]`), [`jobs_store`] (`--jobs-store`), [`sizing`], [`cores`], [`health`], [`control`]
//! (where the control socket of `hyperfork ctl` is), [`tls`] (the `--ssl-*` files loaded into the
//! rustls configuration), [`foreign`] (uvicorn's and gunicorn's options without a setting: rejected
//! with a reason, or already so), [`env_file`] (`--env-file` and `-e`, loaded before anything is
//! resolved), [`response`] (headers added to every response).

pub(crate) mod access;
pub(crate) mod cgroup;
pub(crate) mod cli;
pub(crate) mod control;
pub(crate) mod cores;
pub(crate) mod declare;
pub(crate) mod env_file;
pub(crate) mod file;
pub(crate) mod footprint;
pub(crate) mod foreign;
pub(crate) mod guide;
pub(crate) mod health;
pub(crate) mod job_tables;
pub(crate) mod jobs_store;
pub(crate) mod kinds;
pub(crate) mod layers;
pub(crate) mod memory;
pub(crate) mod memory_guard;
#[cfg(test)]
mod reference;
pub(crate) mod response;
pub(crate) mod rules;
pub(crate) mod settings;
pub(crate) mod sizing;
pub(crate) mod tls;
pub(crate) mod values;

pub use self::cli::Cli;
pub use self::layers::{Env, ProcessEnv, Source, Sourced};
pub use self::settings::Settings;
#[cfg(test)]
pub use self::values::DEFAULT_SOCKET_MODE;

use self::file::File;
use self::layers::Layers;
use crate::error::ConfigError;

impl Settings {
    /// Merges command line, `GUNICORN_CMD_ARGS`, environment and the TOML file (from `--config` or
    /// `HYPERFORK_CONFIG`).
    pub fn resolve(cli: &Cli, env: &dyn Env) -> Result<Settings, ConfigError> {
        let mut layers = Layers::new(cli, env)?;
        if let Some(path) = layers.get(&settings::CONFIG)? {
            if path.value.extension().is_some_and(|e| e == "py") {
                return Err(ConfigError::Invalid(format!(
                    "{} (from {}) is a Python file, gunicorn's configuration; hyperfork reads a TOML \
                     file: move its settings to flags or TOML keys (see docs/migrating.md)",
                    path.value.display(),
                    path.source
                )));
            }
            let keys: Vec<&str> = declare::toml_order(settings::ALL)
                .iter()
                .filter_map(|d| d.about().toml)
                .collect();
            layers = layers.with_file(File::read(&path.value, &keys)?);
        }
        let mut settings = Settings::from_layers(&layers)?;
        rules::apply(&mut settings, &layers)?;
        Ok(settings)
    }

    /// How the app's workers open database connections (`--db-pool-per-worker`, `--db-budget`; the
    /// rules let only one be given).
    pub fn db_use(&self) -> Option<crate::app::share::DbUse> {
        use crate::app::share::DbUse;
        match (&self.db_pool_per_worker, &self.db_budget) {
            (Some(p), _) => Some(DbUse::PerWorker(p.value)),
            (None, Some(b)) => Some(DbUse::Budget(b.value)),
            (None, None) => None,
        }
    }

    /// The limits each worker enforces on connections and requests.
    pub fn limits(&self) -> crate::config::health::Limits {
        crate::config::health::Limits {
            timeout_keep_alive: self.timeout_keep_alive,
            limit_concurrency: self.limit_concurrency,
            timeout_request_header: self.timeout_request_header,
            limit_request_body: self.limit_request_body,
            limit_request_fields: self.limit_request_fields,
            limit_request_header_size: self.limit_request_header_size,
            access: crate::config::access::AccessSettings {
                format: self.access_log.then(|| {
                    self.access_log_format.clone().unwrap_or_else(|| {
                        std::sync::Arc::new(access::AccessFormat::default_line())
                    })
                }),
                proxy_headers: self.proxy_headers,
                trusted: self.forwarded_allow_ips.clone(),
            },
            response: crate::config::response::ResponseHeaders {
                extra: self.headers.clone(),
                server: self.server_header,
                date: self.date_header,
            },
            readiness_path: self.readiness_path.clone(),
        }
    }

    /// The worker-health settings.
    pub fn health(&self) -> crate::config::health::Health {
        crate::config::health::Health {
            timeout: self.timeout,
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            max_worker_memory: self.max_worker_memory,
            boot_timeout: self.boot_timeout,
        }
    }
}

#[cfg(test)]
mod tests;
