//! The readiness path (`--readiness-path`): a path every worker answers itself, before the app sees
//! the request, so that a load balancer's health check learns that this server is going away.
//!
//! - `GET` or `HEAD` on the path: `200` while the pool serves, `503` once the master has marked it
//!   draining (a shutdown started: during `--shutdown-delay`, and during the drain itself for the
//!   connections still open). The flag is read from shared memory on every request (see
//!   [`crate::shared::stats::PoolState`]), so a health check on a kept-alive connection sees the
//!   change on its next request.
//! - Another method on the path: `405` with `Allow: GET, HEAD`.
//! - The query is ignored (`/ready?verbose` is the readiness path); any other path goes to the app.
//!
//! It is readiness ("send me traffic"), not liveness ("do not kill me"): the app's own health route
//! (the built-in app's `/health`) keeps answering `200` through the shutdown delay.

use hyper::{Method, StatusCode};

use crate::shared::stats::PoolState;

/// A worker's readiness path and the pool state it reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    path: &'static str,
    pool: PoolState,
}

impl Readiness {
    /// The readiness of this worker with `--readiness-path` set to `path`; `None` when it is off.
    pub(crate) fn for_worker(path: Option<&str>, pool: PoolState) -> Option<Readiness> {
        // Once per worker process, which lives as long as it serves.
        let path: &'static str = Box::leak(path?.to_string().into_boxed_str());
        Some(Readiness { path, pool })
    }

    /// The status to answer a request for `method` on `path` with, if `path` is the readiness path.
    pub(crate) fn status(&self, method: &Method, path: &str) -> Option<StatusCode> {
        if path != self.path {
            return None;
        }
        Some(match *method {
            Method::GET | Method::HEAD if self.pool.draining() => StatusCode::SERVICE_UNAVAILABLE,
            Method::GET | Method::HEAD => StatusCode::OK,
            _ => StatusCode::METHOD_NOT_ALLOWED,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_answers_200_then_503_once_the_pool_drains() {
        let pool = PoolState::private();
        let r = Readiness::for_worker(Some("/ready"), pool).unwrap();
        assert_eq!(r.status(&Method::GET, "/ready"), Some(StatusCode::OK));
        assert_eq!(r.status(&Method::HEAD, "/ready"), Some(StatusCode::OK));
        assert_eq!(r.status(&Method::GET, "/"), None);
        assert_eq!(r.status(&Method::GET, "/ready/"), None);
        assert_eq!(r.status(&Method::GET, "/readyz"), None);
        assert_eq!(
            r.status(&Method::POST, "/ready"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        pool.set_draining();
        assert_eq!(
            r.status(&Method::GET, "/ready"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            r.status(&Method::HEAD, "/ready"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(r.status(&Method::GET, "/health"), None);
    }

    #[test]
    fn off_without_a_path() {
        assert!(Readiness::for_worker(None, PoolState::private()).is_none());
    }
}
