//! pollswitch's data plane.
//!
//! Packets live in one preallocated [`pool`]; [`worker`]s, each pinned to a core, own
//! port queues ([`backend::Backend`]) and move bursts of packet handles between them by
//! the forwarding table of [`topology`], handing frames to other workers through
//! lock-free SPSC [`ring`]s. The control thread drives it all through [`switch::Switch`]
//! by message; nothing here knows JSON or QMP.
#![deny(unsafe_code)]

pub mod backend;
pub mod bufring;
pub mod capture;
pub mod counters;
pub mod error;
pub mod fdb;
#[doc(hidden)]
pub mod fuzzing;
pub mod loopback;
pub mod offload;
pub mod pool;
pub mod ring;
pub mod switch;
pub mod topology;
pub mod uring;
pub mod vlan;
pub mod wake;
pub mod wire;
pub mod worker;

pub use backend::{Backend, Io, BURST};
pub use counters::{CounterSnapshot, DropReason, PortCounters};
pub use error::SwitchError;
pub use pool::{BufCache, Pkt, Pool};
pub use switch::{ClientSpec, SpecKind, Switch, SwitchConfig};
