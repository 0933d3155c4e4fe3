//! What crosses the fork: the control pipe between master and workers, the shared-memory accept
//! table, the listening sockets, process titles, the signal mask, the control socket's protocol, and
//! the account the workers switch to (`--user`, `--group`).

pub(crate) mod balance;
pub(crate) mod control;
pub(crate) mod ctl_wire;
pub(crate) mod listener;
pub(crate) mod privileges;
pub(crate) mod proctitle;
pub(crate) mod shm;
pub(crate) mod sigmask;
pub(crate) mod stats;
