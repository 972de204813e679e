//! `vhost-user`: pollswitch as the vhost-user **backend** of one VM NIC. The VM's QEMU
//! (or any frontend: DPDK's `virtio_user`, cloud-hypervisor) runs virtio-net and hands
//! us its memory and virtqueues over a unix socket; the switch then reads the guest's
//! transmit ring and fills its receive ring directly in guest memory.
//!
//! ```text
//!  frontend ──unix socket──► device thread ("vhost-ID"): vhost-user messages
//!    (rust-vmm `vhost`)        features, memory table, vring addresses, kick/call fds
//!                              │ stop → change → start, through each pair's Mailbox
//!                              ▼
//!  worker: QueuePair (one per queue pair, spread over workers)
//!    rx_burst: guest TX vring ──copy──► pool buffers ──► switch
//!    tx_burst: switch ──► pool buffers ──copy──► guest RX vring (mergeable buffers)
//!    idle:     re-enable the guest's kicks; the device thread turns a kick into a wake
//! ```
//!
//! - [`device`]: the protocol side, one thread per port, server or client socket;
//! - [`vring`]: the worker side of one queue pair, and what a started pair is given;
//! - [`guest`]: checked views of guest memory and of split rings (the only `unsafe`).
//!
//! Memory and rings come from rust-vmm on the control side: `vm-memory` maps the
//! frontend's regions, `virtio-queue` checks that a ring fits in them before it starts.
//! On the packet path the worker walks the rings itself through [`guest`]'s checked
//! views (measured: the generic accessors cost a third of the worker); every guest
//! address a ring names is checked there, so a descriptor outside memory is a counted
//! error, never a read or write outside.
//!
//! The control virtqueue, link status and STANDBY live in the frontend: QEMU keeps the
//! control queue to itself and passes only data queues to a vhost-user backend, so the
//! guest's receive filter never reaches us. What does reach us is counted and shown: the
//! negotiated features, the guest's MAC address (learned from its first frame), and the
//! STANDBY bit when a frontend acks it (`FAILOVER_NEGOTIATED`).

pub mod device;
pub mod guest;
pub mod vring;

use std::path::PathBuf;
use std::time::Duration;

pub use device::{open, Events, VhostHandle, VhostInfo};
pub use vring::QueuePair;

/// Where the port's vhost-user socket is and how it is used.
#[derive(Debug, Clone)]
pub struct VhostUserConfig {
    /// The socket path.
    pub socket: PathBuf,
    /// Listen on it (else connect to a frontend listening there).
    pub server: bool,
    /// A client reconnects after this long when its frontend goes away (or is not
    /// there yet); `None`: a client that cannot connect at once is an error, and one
    /// whose frontend went away stays down.
    pub reconnect: Option<Duration>,
    /// Queue pairs offered (MQ when more than one).
    pub queues: u16,
    /// The netdev id (thread name, logs).
    pub name: String,
    /// The switch's largest frame (bounds the MTU a frontend may set).
    pub max_frame: usize,
}

/// The most queue pairs a port offers.
pub const MAX_QUEUES: u16 = 64;
