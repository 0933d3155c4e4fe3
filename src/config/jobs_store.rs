//! The job store's settings (`--jobs-store`, `--jobs-lease`, `--jobs-retention`): the URL's kind,
//! the lease's lower bound, and the [`StoreConfig`] the workers get, from the settings or from the
//! app's [`Server::jobs_store`](crate::Server::jobs_store).

use std::time::Duration;

use super::kinds::Kind;
use super::settings::Settings;
use crate::jobs::store::{StoreConfig, StoreUrl};

/// A PostgreSQL URL (`--jobs-store`); shown without its password.
pub(crate) struct JobsStore;

impl Kind for JobsStore {
    type Value = StoreUrl;
    const EXPECTED: &'static str = "a PostgreSQL URL such as postgres://user:password@host:5432/db";
    fn parse(text: &str) -> Result<StoreUrl, String> {
        StoreUrl::parse(text)
    }
    fn show(value: &StoreUrl) -> serde_json::Value {
        serde_json::Value::String(value.to_string())
    }
}

/// The shortest lease: a renewal at half of it must be able to get through.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// `--jobs-lease` is at least a second.
pub(crate) fn lease_at_least_a_second(d: &Duration) -> Result<(), String> {
    if *d < MIN_LEASE {
        return Err(format!(
            "expected a lease of at least 1s, got {}",
            humantime::format_duration(*d)
        ));
    }
    Ok(())
}

impl Settings {
    /// The job store the workers use: `--jobs-store` (any layer), else the app's; none without
    /// either.
    pub(crate) fn jobs_store_config(&self, app: Option<&StoreUrl>) -> Option<StoreConfig> {
        let url = self.jobs_store.clone().or_else(|| app.cloned())?;
        Some(StoreConfig {
            url,
            lease: self.jobs_lease,
            retention: self.jobs_retention,
        })
    }
}
