//! A worker's share of a budget the whole pool draws on, such as database connections: the
//! arithmetic behind `Worker::share_of`, and its error.
//!
//! A worker forked for a pool of `n` slots while the master allows a surge of `s` extra workers gets
//! `floor(total / (n + s))`. The master never keeps more live workers than the smallest `n + s` of
//! any live worker (see `master::surge`), so the shares of all live workers, draining and surge ones
//! included, add up to at most `total`.

use std::fmt;

/// A budget too small to give every worker, surge included, a share of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareError {
    /// The budget asked for.
    pub total: usize,
    /// The pool size the worker was forked for.
    pub pool_size: usize,
    /// The surge the master allowed when it forked the worker (`--max-surge`).
    pub max_surge: usize,
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let need = self.pool_size.saturating_add(self.max_surge);
        write!(
            f,
            "a budget of {} cannot give {} workers plus a surge of {} a share of at least 1 each; \
             it must be at least {need} (lower --workers or --max-surge, or raise the budget)",
            self.total, self.pool_size, self.max_surge
        )
    }
}

impl std::error::Error for ShareError {}

/// How the app's workers open database connections: `--db-pool-per-worker N` or `--db-budget N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DbUse {
    /// Each worker's pool opens at most this many.
    PerWorker(usize),
    /// The pool shares this many, each worker taking its share (see `Worker::share_of`).
    Budget(usize),
}

impl DbUse {
    /// The connections one worker of a pool of `pool_size` with a surge of `max_surge` may open.
    pub(crate) fn per_worker(
        self,
        pool_size: usize,
        max_surge: usize,
    ) -> Result<usize, ShareError> {
        match self {
            DbUse::PerWorker(n) => Ok(n),
            DbUse::Budget(total) => share(total, pool_size, max_surge),
        }
    }
}

/// `floor(total / (pool_size + max_surge))`, or an error when that is 0.
pub(crate) fn share(total: usize, pool_size: usize, max_surge: usize) -> Result<usize, ShareError> {
    let parts = pool_size.saturating_add(max_surge).max(1);
    match total / parts {
        0 => Err(ShareError {
            total,
            pool_size,
            max_surge,
        }),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_the_budget_by_the_pool_plus_the_surge() {
        assert_eq!(share(30, 3, 1), Ok(7));
        assert_eq!(share(30, 4, 1), Ok(6));
        assert_eq!(share(30, 3, 3), Ok(5));
        assert_eq!(share(4, 3, 1), Ok(1));
    }

    #[test]
    fn a_budget_below_the_pool_plus_the_surge_is_an_error_naming_the_minimum() {
        let e = share(3, 3, 1).unwrap_err();
        assert_eq!(
            e,
            ShareError {
                total: 3,
                pool_size: 3,
                max_surge: 1
            }
        );
        assert!(e.to_string().contains("at least 4"), "{e}");
    }

    #[test]
    fn the_shares_of_a_full_surge_fit_the_budget() {
        for total in 0..200 {
            for n in 1..12 {
                for s in 1..5 {
                    if let Ok(each) = share(total, n, s) {
                        assert!(each * (n + s) <= total, "{total} {n} {s}");
                    }
                }
            }
        }
    }
}
