//! pollswitch's control plane: the QAPI types of `qapi/net.json`, the QEMU-style command
//! line, and the daemon state that turns both into ports of the data plane.
#![deny(unsafe_code)]

pub mod chardev;
pub mod cli;
pub mod daemon;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod log;
pub mod metrics;
pub mod netdev;
pub mod osarg;
pub mod process;
pub mod qapi;
pub mod qmp;

pub use error::CtlError;
