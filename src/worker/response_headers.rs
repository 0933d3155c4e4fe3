//! The headers every response gets (`--header`, `--server-header`, `--date-header`), added as the
//! response leaves the guard.
//!
//! Nothing is added per request unless asked: without `--header` or `--server-header` the guard holds
//! `None` and skips this module entirely, and `--no-date-header` only switches hyper's own `Date`
//! off. The set is built once per worker and kept for the worker's life (`&'static`), so a
//! connection or a request never copies or counts a reference to it.

use hyper::HeaderMap;
use hyper::header::{HeaderName, HeaderValue, SERVER};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::response::{self, ResponseHeaders};

/// The headers added to every response the app's response lacks.
#[derive(Debug)]
pub(crate) struct Extra {
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Extra {
    /// The headers `config` asks for, kept for the worker's life; `None` when there are none.
    pub(crate) fn for_worker(config: &ResponseHeaders) -> Option<&'static Extra> {
        let mut headers = config.extra.clone();
        if config.server && !headers.iter().any(|(n, _)| n == SERVER) {
            headers.push((SERVER, HeaderValue::from_static(response::SERVER)));
        }
        if headers.is_empty() {
            return None;
        }
        // Once per worker process, which lives as long as it serves.
        Some(Box::leak(Box::new(Extra { headers })))
    }

    /// Adds each header `map` does not have yet.
    pub(crate) fn apply(&self, map: &mut HeaderMap) {
        for (name, value) in &self.headers {
            if !map.contains_key(name) {
                map.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Turns hyper's own `Date` header off for `--no-date-header` (HTTP/1 and HTTP/2).
pub(crate) fn configure(builder: &mut auto::Builder<TokioExecutor>, config: &ResponseHeaders) {
    if !config.date {
        builder.http1().auto_date_header(false);
        builder.http2().auto_date_header(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &[&str], server: bool) -> ResponseHeaders {
        ResponseHeaders {
            extra: extra
                .iter()
                .map(|h| response::parse_header(h).unwrap())
                .collect(),
            server,
            date: true,
        }
    }

    #[test]
    fn nothing_to_add_is_none() {
        assert!(Extra::for_worker(&config(&[], false)).is_none());
    }

    #[test]
    fn headers_are_added_unless_the_app_set_them() {
        let extra = Extra::for_worker(&config(&["X-A: 1", "X-B: 2"], true)).unwrap();
        let mut map = HeaderMap::new();
        map.insert("x-b", HeaderValue::from_static("app"));
        extra.apply(&mut map);
        assert_eq!(map["x-a"], "1");
        assert_eq!(map["x-b"], "app");
        assert_eq!(map[SERVER], "hyperfork");
        // A --header server replaces the default.
        let extra = Extra::for_worker(&config(&["Server: edge"], true)).unwrap();
        let mut map = HeaderMap::new();
        extra.apply(&mut map);
        assert_eq!(map.get_all(SERVER).iter().count(), 1);
        assert_eq!(map[SERVER], "edge");
    }
}
