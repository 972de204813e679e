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
//! Unsafe code is fenced: only `sys` (clock, affinity, setns), `engine::mmsg`
//! (sendmmsg/recvmmsg) and `engine::tap` (AF_PACKET) may use it.

#![deny(unsafe_code)]

pub mod bench;
pub mod engine;
pub mod error;
pub mod frame;
pub mod netns;
pub mod peer;
pub mod report;
pub mod svg;
#[allow(unsafe_code)]
pub mod sys;
pub mod tally;
pub mod traffic;

pub use error::{PerfError, Result};
