//! The data plane's error type: one variant per step that can fail while setting up or
//! changing the switch. Nothing on the packet path returns these; it counts drops instead.

use std::io;

/// Errors from building and reconfiguring the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The pool must have between 1 and 2^24 buffers.
    #[error("pool size {0} is out of range (1..=16777216 buffers)")]
    PoolSize(u32),
    /// The maximum frame size is outside what the switch carries.
    #[error("maximum frame size {0} is out of range (14..=65535 bytes)")]
    MaxFrame(usize),
    /// Mapping the buffer region failed.
    #[error("cannot map the packet buffer region")]
    PoolMap(#[source] io::Error),
    /// io_uring could not be set up for a worker.
    #[error("cannot set up io_uring for worker {worker}")]
    Uring {
        /// The worker.
        worker: usize,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The worker's wake-up eventfd could not be made.
    #[error("cannot create the worker wake-up eventfd")]
    EventFd(#[source] io::Error),
    /// A worker thread could not be started.
    #[error("cannot start worker thread")]
    Spawn(#[source] io::Error),
    /// A core in the core list does not exist.
    #[error("core {0} does not exist on this host ({1} cores)")]
    NoSuchCore(usize, usize),
    /// At least one worker is needed.
    #[error("at least one worker core is needed")]
    NoWorkers,
    /// A client with this name exists already.
    #[error("Duplicate ID '{0}'")]
    Duplicate(String),
    /// No client has this name.
    #[error("Device '{0}' not found")]
    NotFound(String),
    /// The named peer does not exist.
    #[error("netdev '{0}' not found")]
    PeerNotFound(String),
    /// The named peer is connected to something else already.
    #[error("netdev '{peer}' is already in use by '{user}'")]
    PeerInUse {
        /// The peer asked for.
        peer: String,
        /// What it is connected to.
        user: String,
    },
    /// The pool cannot also serve what a new port or worker would hold.
    #[error(
        "the packet pool is spoken for: this needs {need} buffers, {reserved} of {count} \
         are already reserved by ports, worker rings and caches; delete a port or restart \
         pollswitch with a larger -pool-size"
    )]
    PoolSpokenFor {
        /// Buffers asked for.
        need: u64,
        /// Buffers reserved already.
        reserved: u64,
        /// Buffers in the pool.
        count: u32,
    },
    /// A worker did not answer in time (it is stuck or gone).
    #[error("worker {0} did not answer")]
    WorkerGone(usize),
    /// A backend refused to start on its worker.
    #[error("port '{name}' failed to start: {reason}")]
    PortStart {
        /// The client.
        name: String,
        /// Why.
        reason: String,
    },
}
