//! pollswitch-perf: a traffic generator and sink for every transport a switch port can
//! use, latency histograms, and benchmark scenarios that measure pollswitch side by side
//! with real peers (QEMU's hub, vde_switch, the Linux bridge, dpdk-testpmd) in the same
//! run, on the same machine.
//!
//! ```text
//!  main.rs ── run / gen / sink ──► traffic::run ──► engine::{udp,tcp,tap,vde} (Port)
//!         └── bench NAME ──► bench::{udp_hub,tap_hub,latency,idle,scale,io_baseline,workers}
//!                              │ start a system ──► peer::{pollswitch,qemu,vde,bridge,testpmd}
//!                              │ measure A B A B … with traffic::run
//!                              └ report (JSON, table) + svg (plot)
//! ```
//!
//! Namespaces, links, raw sockets, child processes, QEMU, vde_switch, QMP and core
//! pinning come from the `testbed` crate the integration tests share; so does the
//! signal handler that removes everything a run made when it is interrupted.
//!
//! Unsafe code is fenced: only `sys` (the `SO_MEMINFO` drop counter) and `engine::mmsg`
//! (sendmmsg/recvmmsg, UDP GSO) may use it.

#![deny(unsafe_code)]

pub mod bench;
pub mod engine;
pub mod error;
pub mod frame;
pub mod peer;
pub mod report;
pub mod svg;
#[allow(unsafe_code)]
pub mod sys;
pub mod tally;
pub mod traffic;

pub use error::{PerfError, Result};
