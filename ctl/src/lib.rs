//! pollswitch control plane.
//!
//! The QAPI types of QEMU's `qapi/net.json` and the two ways of filling them
//! ([`qapi`]: QMP arguments and `-netdev` options), and the daemon's QEMU-style
//! command line ([`cli`]).
#![deny(unsafe_code)]

pub mod cli;
pub mod qapi;
