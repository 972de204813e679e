//! UDP socket engine: QEMU's `-netdev socket,udp=...,localaddr=...` framing, one bare
//! Ethernet frame per datagram.
//!
//! ```text
//!  generator  udp:local=G,peer=P  ──datagram──► P = the switch port's localaddr
//!  sink       udp:local=S         ◄──datagram── the switch port whose udp= is S
//! ```
//!
//! `local` binds (default: any address, any port); `peer` connects, which a sending port
//! needs. Bursts are received with `recvmmsg` and sent as one UDP GSO send (`gso=on`,
//! the default: the stack is crossed once per burst and the datagrams are cut apart
//! before they reach the receiving socket, which sees ordinary datagrams), or with
//! `sendmmsg` (`gso=off`, or where the kernel cannot segment).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use crate::engine::mmsg::{self, Gso, RxBufs, TxErrors, MAX_BURST};
use crate::engine::{Engine, Port, Spec};
use crate::error::{PerfError, Result};
use crate::sys;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "udp",
    about: "UDP datagrams, one Ethernet frame each (QEMU socket,udp= / localaddr=)",
    keys: &["local", "peer", "gso"],
    open,
};

/// A UDP socket carrying frames.
pub struct UdpPort {
    sock: UdpSocket,
    gso: bool,
    rx: RxBufs,
    errors: TxErrors,
    spec: String,
}

fn addr(spec: &Spec, key: &str, text: &str) -> Result<SocketAddr> {
    text.parse()
        .map_err(|e| PerfError::Usage(format!("{spec}: {key}={text}: {e}")))
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let peer = spec
        .get("peer")
        .map(|p| addr(spec, "peer", p))
        .transpose()?;
    let local = match spec.get("local") {
        Some(l) => addr(spec, "local", l)?,
        None if peer.is_some_and(|p| p.is_ipv6()) => "[::]:0".parse().expect("constant"),
        None => "0.0.0.0:0".parse().expect("constant"),
    };
    let gso = match spec.get("gso") {
        None | Some("on") => true,
        Some("off") => false,
        Some(v) => return Err(PerfError::Usage(format!("{spec}: gso={v}: on or off"))),
    };
    let sock = UdpSocket::bind(local).map_err(|source| PerfError::Socket {
        what: format!("{spec}: bind {local}"),
        source,
    })?;
    if let Some(p) = peer {
        sock.connect(p).map_err(|source| PerfError::Socket {
            what: format!("{spec}: connect {p}"),
            source,
        })?;
    }
    sock.set_nonblocking(true)
        .map_err(|source| PerfError::Socket {
            what: format!("{spec}: nonblocking"),
            source,
        })?;
    sys::big_buffers(&sock, sys::SOCKET_BUFFER, true);
    Ok(Box::new(UdpPort {
        sock,
        gso,
        rx: RxBufs::new(MAX_BURST),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

impl UdpPort {
    /// The address the socket is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.sock.local_addr().ok()
    }
}

impl Port for UdpPort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        if self.gso {
            match mmsg::send_gso(self.sock.as_raw_fd(), frames, &mut self.errors) {
                Gso::Sent(n) => return n,
                // One frame, or sizes that differ: this burst only.
                Gso::Unsupported if frames.len() < 2 => {}
                Gso::Unsupported => self.gso = frames.iter().any(|f| f.len() != frames[0].len()),
            }
        }
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
        Ok(Box::new(UdpPort {
            sock,
            gso: self.gso,
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
    use crate::frame::{emit, BROADCAST};

    #[test]
    fn frames_cross_a_loopback_pair_in_bursts() {
        let rx_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rx_addr = rx_sock.local_addr().unwrap();
        drop(rx_sock);
        let mut rx = open_spec(&format!("udp:local={rx_addr}")).unwrap();
        let mut tx = open_spec(&format!("udp:peer={rx_addr}")).unwrap();
        let frames: Vec<Vec<u8>> = (0..40).map(|_| emit(64, BROADCAST, 1)).collect();
        let mut sent = 0;
        while sent < 40 {
            sent += tx.tx_burst(&frames[sent..]);
        }
        let mut t = Tally::new(None);
        let deadline = sys::monotonic_ns() + 2_000_000_000;
        let mut got = 0;
        while got < 40 && sys::monotonic_ns() < deadline {
            got += rx.rx_burst(&mut t);
        }
        assert_eq!(got, 40);
        // All carried sequence 0: one counted, the rest duplicates.
        assert_eq!((t.received, t.duplicates), (1, 39));
        assert_eq!(tx.tx_errors().0, 0);
        let mut clone = rx.try_clone().unwrap();
        assert_eq!(clone.rx_burst(&mut t), 0, "nothing left to read");
    }

    #[test]
    fn gso_and_plain_sends_deliver_the_same_datagrams() {
        for gso in ["on", "off"] {
            let rx_addr = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let mut rx = open_spec(&format!("udp:local={rx_addr}")).unwrap();
            let mut tx = open_spec(&format!("udp:peer={rx_addr},gso={gso}")).unwrap();
            for size in [64usize, 1518, 9000] {
                let frames: Vec<Vec<u8>> = (0..32u64)
                    .map(|seq| {
                        let mut f = emit(size, BROADCAST, 2);
                        crate::frame::Frame::new_unchecked(&mut f[..])
                            .set_seq(seq + 100 * size as u64);
                        f
                    })
                    .collect();
                let mut sent = 0;
                while sent < frames.len() {
                    sent += tx.tx_burst(&frames[sent..]);
                }
                let mut t = Tally::new(None);
                let deadline = sys::monotonic_ns() + 2_000_000_000;
                while t.received < 32 && sys::monotonic_ns() < deadline {
                    rx.rx_burst(&mut t);
                }
                assert_eq!(
                    (t.received, t.bytes),
                    (32, 32 * size as u64),
                    "gso={gso} size={size}"
                );
                assert_eq!((t.foreign, t.reordered, t.duplicates), (0, 0, 0));
            }
        }
        assert!(open_spec("udp:gso=maybe").is_err());
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        assert!(open_spec("udp:peer=nowhere").is_err());
        assert!(open_spec("udp:local=127.0.0.1:99999").is_err());
    }
}
