//! memif: the shared-memory packet interface of VPP, DPDK's `net_memif` and libmemif,
//! which the `nic` netdev speaks to the application behind it.
//!
//! - [`wire`]: control messages and the ring layout (memif 2.0);
//! - [`shm`]: mapped regions and bounds-checked ring views (the only `unsafe`);
//! - [`queue`]: the data path of one ring, either role, either direction;
//! - [`control`]: the control thread — sockets, handshakes, hand-over to the worker.
//!
//! Copies: a frame is copied once on each crossing — out of the peer's buffer into a
//! pool buffer on receive, from the pool buffer into the peer's buffer on send —
//! whichever side owns the region, and the pool is never shown to the peer. Except
//! with zero copy ([`zc`], client NICs that ask for it): the pool itself is region 1,
//! and our side copies nothing.
pub mod app;
pub mod control;
pub mod queue;
pub mod shm;
pub mod wire;
pub mod zc;

pub use app::App;
pub use control::{register, Conn, Link, LinkInfo, MemifConfig, PoolShare, Registration};
pub use queue::Role;
