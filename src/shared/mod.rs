//! What crosses the fork: the control pipe between master and workers, the shared-memory accept
//! table, the listening sockets, process titles, and the signal mask.

pub(crate) mod balance;
pub(crate) mod control;
pub(crate) mod listener;
pub(crate) mod proctitle;
pub(crate) mod sigmask;
