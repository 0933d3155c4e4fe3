//! What crosses the fork: the control pipe between master and workers, the shared-memory accept
//! table, the listening sockets, process titles, the signal mask, and the control socket's protocol.

pub(crate) mod balance;
pub(crate) mod control;
pub(crate) mod ctl_wire;
pub(crate) mod listener;
pub(crate) mod proctitle;
pub(crate) mod shm;
pub(crate) mod sigmask;
pub(crate) mod stats;
