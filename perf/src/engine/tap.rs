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

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

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

// From <linux/if_packet.h>.
const PACKET_QDISC_BYPASS: i32 = 20;
const PACKET_IGNORE_OUTGOING: i32 = 23;

/// An AF_PACKET socket on one interface.
pub struct TapPort {
    fd: OwnedFd,
    rx: RxBufs,
    errors: TxErrors,
    spec: String,
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let ifname = spec.require("ifname")?.to_string();
    let what = spec.to_string();
    let fd = match spec.get("netns") {
        Some(ns) => sys::in_netns(ns, move || packet_socket(&ifname, &what))?,
        None => packet_socket(&ifname, &what)?,
    };
    Ok(Box::new(TapPort {
        fd,
        rx: RxBufs::new(MAX_BURST),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

/// A non-blocking AF_PACKET socket for our EtherType, bound to `ifname` in the calling
/// thread's namespace.
fn packet_socket(ifname: &str, what: &str) -> Result<OwnedFd> {
    let name = CString::new(ifname)
        .map_err(|_| PerfError::Usage(format!("{what}: interface name has a NUL")))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(PerfError::socket(format!("{what}: no interface {ifname}")));
    }
    let proto = (ETHERTYPE).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(PerfError::socket(format!("{what}: AF_PACKET socket")));
    }
    // SAFETY: `raw` is a fresh descriptor this function alone owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain data; all-zero is valid before the fields are set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll whose size is passed with it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(PerfError::socket(format!("{what}: bind to {ifname}")));
    }
    let sol = libc::SOL_PACKET;
    sys::setsockopt_int(fd.as_raw_fd(), sol, PACKET_QDISC_BYPASS, 1).map_err(|source| {
        PerfError::Socket {
            what: format!("{what}: PACKET_QDISC_BYPASS"),
            source,
        }
    })?;
    // Without it the socket would also read the frames it sends itself (kernels < 4.20
    // lack it; then the frames are ours, and counted as echoed, not lost).
    if let Err(e) = sys::setsockopt_int(fd.as_raw_fd(), sol, PACKET_IGNORE_OUTGOING, 1) {
        if e.raw_os_error() != Some(libc::ENOPROTOOPT) {
            return Err(PerfError::Socket {
                what: format!("{what}: PACKET_IGNORE_OUTGOING"),
                source: e,
            });
        }
    }
    sys::big_buffers(fd.as_raw_fd(), sys::SOCKET_BUFFER, true);
    Ok(fd)
}

impl Port for TapPort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        mmsg::send_burst(self.fd.as_raw_fd(), frames, &mut self.errors)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        mmsg::recv_burst(self.fd.as_raw_fd(), &mut self.rx, tally)
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        self.errors.get()
    }

    fn try_clone(&self) -> Result<Box<dyn Port>> {
        let fd = self.fd.try_clone().map_err(|source| PerfError::Socket {
            what: format!("{}: dup", self.spec),
            source,
        })?;
        Ok(Box::new(TapPort {
            fd,
            rx: RxBufs::new(MAX_BURST),
            errors: TxErrors::default(),
            spec: self.spec.clone(),
        }))
    }

    fn rx_drops(&self) -> Option<u64> {
        sys::socket_drops(self.fd.as_raw_fd())
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
    use crate::netns::{Netns, VethPair};

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
