//! VDE engine: a port of a `vde_switch`, spoken natively (no `vde_plug` in between).
//!
//! ```text
//!  stream ──request_v3{magic,3,port<<8,our dgram path,description}──► SOCK/ctl
//!         ◄──────────────────────── sockaddr_un of the port's data socket
//!  dgram  ══ one Ethernet frame per datagram, both ways ══ vde_switch
//! ```
//!
//! The client is the test bed's ([`testbed::VdePort`]): the control stream stays open
//! for the port's life (closing it frees the port), our datagram socket lives in a private
//! temp dir removed on drop. This engine drives that datagram socket with `sendmmsg` /
//! `recvmmsg`. `sock` is the switch directory (`vde_switch -s`), `port` a port number
//! (default: any free port).

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use testbed::vde;

use crate::engine::mmsg::{self, RxBufs, TxErrors, MAX_BURST};
use crate::engine::{Engine, Port, Spec};
use crate::error::{PerfError, Result};
use crate::sys;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "vde",
    about: "a vde_switch port (request_v3 on SOCK/ctl, then one frame per unix datagram)",
    keys: &["sock", "port"],
    open,
};

/// One port of a vde_switch.
pub struct VdePort {
    port: vde::VdePort,
    rx: RxBufs,
    errors: TxErrors,
    spec: String,
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let sock = PathBuf::from(spec.require("sock")?);
    let port: u32 = match spec.get("port") {
        Some(p) => p
            .parse()
            .map_err(|_| PerfError::Usage(format!("{spec}: port={p}: not a number")))?,
        None => 0,
    };
    let port = vde::VdePort::attach(&sock, port, "pollswitch-perf")?;
    port.data()
        .set_nonblocking(true)
        .map_err(|source| PerfError::Socket {
            what: format!("{spec}: nonblocking"),
            source,
        })?;
    sys::big_buffers(port.data(), sys::SOCKET_BUFFER, false);
    Ok(Box::new(VdePort {
        port,
        rx: RxBufs::new(MAX_BURST),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

impl Port for VdePort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        mmsg::send_burst(self.port.data().as_raw_fd(), frames, &mut self.errors)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        mmsg::recv_burst(self.port.data().as_raw_fd(), &mut self.rx, tally)
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        self.errors.get()
    }

    fn rx_drops(&self) -> Option<u64> {
        sys::socket_drops(self.port.data())
    }

    fn describe(&self) -> String {
        self.spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{emit, BROADCAST};
    use testbed::vde::{VdeOptions, VdeSwitch};

    #[test]
    fn frames_cross_a_vde_hub_in_bursts() {
        let sw = VdeSwitch::launch(&VdeOptions {
            hub: true,
            ..VdeOptions::default()
        })
        .unwrap();
        let spec = format!("vde:sock={}", sw.sock_dir().display());
        let mut tx = crate::engine::open(&spec).unwrap();
        let mut rx = crate::engine::open(&format!("{spec},port=5")).unwrap();
        let frames: Vec<Vec<u8>> = (0..20).map(|_| emit(64, BROADCAST, 1)).collect();
        let mut sent = 0;
        while sent < frames.len() {
            sent += tx.tx_burst(&frames[sent..]);
        }
        let mut t = Tally::new(None);
        let deadline = sys::monotonic_ns() + 2_000_000_000;
        let mut got = 0;
        while got < 20 && sys::monotonic_ns() < deadline {
            got += rx.rx_burst(&mut t);
        }
        assert_eq!(got, 20);
        assert_eq!(rx.rx_drops(), Some(0));
        assert!(crate::engine::open(&format!("{spec},port=x")).is_err());
    }

    #[test]
    fn no_switch_is_an_error() {
        let err = match crate::engine::open("vde:sock=/nonexistent-vde-dir") {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("/nonexistent-vde-dir/ctl"), "{err}");
    }
}
