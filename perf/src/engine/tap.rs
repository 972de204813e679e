//! Tap engine: the kernel side of a tap (or veth) interface, inside a network namespace.
//!
//! ```text
//!  netns A                                   switch's netns
//!  generator ─AF_PACKET─► tapA ══ tap fd ══► switch ══ tap fd ══► tapB ─AF_PACKET─► sink
//!                                                                  netns B
//! ```
//!
//! The switch under test owns the tap's file descriptor; the tool sits on the interface
//! the kernel sees, moved into a namespace of its own, and reaches it with an AF_PACKET
//! socket bound to that interface and to our EtherType: `sendmmsg` transmits through the
//! tap (into the switch), `recvmmsg` receives what the switch wrote. The socket skips the
//! qdisc (frames go straight to the driver) and ignores its own outgoing frames.
//! `netns` names the namespace (`ip netns` name); without it, the tool's own.

use std::os::fd::AsRawFd;

use testbed::raw::{RawOptions, RawSock};
use testbed::Netns;

use crate::engine::mmsg::{self, RxBufs, TxErrors, MAX_BURST};
use crate::engine::{Engine, Port, Spec};
use crate::error::{PerfError, Result};
use crate::frame::ETHERTYPE;
use crate::sys;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "tap",
    about: "kernel side of a tap or veth, via AF_PACKET, optionally inside a netns",
    keys: &["ifname", "netns"],
    open,
};

/// An AF_PACKET socket on one interface.
pub struct TapPort {
    sock: RawSock,
    rx: RxBufs,
    errors: TxErrors,
    spec: String,
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let ifname = spec.require("ifname")?;
    // Our EtherType only, and straight to the driver: the generator measures the
    // switch, not the qdisc.
    let opts = RawOptions {
        protocol: ETHERTYPE,
        qdisc_bypass: true,
    };
    let sock = match spec.get("netns") {
        Some(ns) => RawSock::bind_in(&Netns::borrow(ns), ifname, &opts),
        None => RawSock::bind(ifname, &opts),
    }?;
    sys::big_buffers(&sock, sys::SOCKET_BUFFER, true);
    Ok(Box::new(TapPort {
        sock,
        rx: RxBufs::new(MAX_BURST),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

impl Port for TapPort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        mmsg::send_burst(self.sock.as_raw_fd(), frames, &mut self.errors)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        mmsg::recv_burst(self.sock.as_raw_fd(), &mut self.rx, tally)
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        self.errors.get()
    }

    fn try_clone(&self) -> Result<Box<dyn Port>> {
        let sock = self.sock.try_clone().map_err(|source| PerfError::Socket {
            what: format!("{}: dup", self.spec),
            source,
        })?;
        Ok(Box::new(TapPort {
            sock,
            rx: RxBufs::new(MAX_BURST),
            errors: TxErrors::default(),
            spec: self.spec.clone(),
        }))
    }

    fn rx_drops(&self) -> Option<u64> {
        sys::socket_drops(&self.sock)
    }

    fn describe(&self) -> String {
        self.spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::open as open_spec;
    use crate::frame::{emit, Frame, BROADCAST};
    use testbed::VethPair;

    #[test]
    fn frames_cross_a_veth_pair_between_two_namespaces() {
        let a = Netns::create("pta").unwrap();
        let b = Netns::create("ptb").unwrap();
        let pair = VethPair::create("pa", "pb").unwrap();
        pair.move_ends(&a, &b, 1500).unwrap();
        let mut tx = open_spec(&format!("tap:ifname={},netns={}", pair.a, a.name)).unwrap();
        let mut rx = open_spec(&format!("tap:ifname={},netns={}", pair.b, b.name)).unwrap();
        let frames: Vec<Vec<u8>> = (0..20u64)
            .map(|seq| {
                let mut f = emit(64, BROADCAST, 1);
                Frame::new_unchecked(&mut f[..]).set_seq(seq);
                f
            })
            .collect();
        let mut sent = 0;
        while sent < frames.len() {
            sent += tx.tx_burst(&frames[sent..]);
        }
        let mut t = Tally::new(None);
        let deadline = sys::monotonic_ns() + 2_000_000_000;
        while t.received < 20 && sys::monotonic_ns() < deadline {
            rx.rx_burst(&mut t);
        }
        assert_eq!(t.received, 20);
        // The sender ignores its own outgoing frames.
        let mut back = Tally::new(None);
        assert_eq!(tx.rx_burst(&mut back), 0);
    }

    #[test]
    fn missing_interface_is_an_error() {
        let err = match open_spec("tap:ifname=psnosuch0") {
            Ok(_) => panic!("opened a missing interface"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("no interface psnosuch0"), "{err}");
        assert!(open_spec("tap:netns=x").is_err());
    }
}
