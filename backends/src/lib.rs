//! pollswitch's netdev backends: one module per QAPI netdev type, each implementing the
//! data plane's [`switch::Backend`] trait.
//!
//! Backends are built on the control thread from typed configurations (the control
//! plane turns QAPI `Netdev` values into these), which is where opening devices and
//! binding sockets can still fail with an [`Error`]. From then on they run on one worker
//! and only count what goes wrong.
#![deny(unsafe_code)]

pub mod af_xdp;
pub mod bridge;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod l2tpv3;
pub mod memif;
pub mod netmap;
pub mod nic;
pub mod null;
pub mod readiness;
pub mod socket;
pub mod sys;
pub mod tap;
pub mod tunnel;
pub mod user;
pub mod vde;
pub mod vhost_user;
pub mod vhost_vdpa;
pub mod vxlan;

pub use error::Error;
