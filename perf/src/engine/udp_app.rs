//! `udp-app` engine: an application's own IPv4 UDP socket, not a switch port. Each test
//! frame the generator makes becomes one datagram that carries only what the sink needs
//! to count it, and a burst leaves as one UDP GSO send (`UDP_SEGMENT`, as QUIC stacks
//! send): the kernel's IP stack builds the frames, and the switch sees them as they come
//! out of the interface the route points at.
//!
//! ```text
//!  netns gen: udp-app:peer=B ─UDP_SEGMENT─► IP stack ─► tap/veth ─► switch ─► tap/veth
//!  netns sink: udp-app:local=B ◄── recvmmsg, one datagram per frame ◄── IP stack ◄─┘
//! ```
//!
//! Sizes count the Ethernet frame as it is on a wire, FCS included: a frame of `size`
//! bytes is a datagram of `size − 46` bytes (14 Ethernet + 20 IPv4 + 8 UDP + 4 FCS), so
//! 64-byte frames are 18-byte datagrams — and the frames inside a tap or veth, which
//! carry no FCS, are 4 bytes shorter than `size` (60 bytes). The receiver rebuilds the
//! test frame a datagram stands for (the generator's length, stream, sequence number and
//! send time) and counts that, so loss, reordering and latency are counted per datagram
//! exactly as per frame, and bytes as frames of `size` on a wire.
//!
//! ```text
//!  datagram: 0    1        2            10           18 .. size − 46
//!            'P'  flags    sequence     send time    zero padding
//!                 bit 7: warm-up, bits 0..6: stream; u64 BE each
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use testbed::Netns;

use crate::engine::mmsg::{self, Gso, RxBufs, TxErrors, MAX_BURST};
use crate::engine::{Engine, Port, Spec};
use crate::error::{PerfError, Result};
use crate::frame::{self, Frame, WARMUP_BIT};
use crate::sys;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "udp-app",
    about: "an application's IPv4 UDP socket (optionally in a netns): a frame of N bytes on \
            the wire is one datagram of N-46, sent with UDP GSO",
    keys: &["local", "peer", "netns", "gso"],
    open,
};

/// Bytes a frame has around its datagram: Ethernet header, IPv4, UDP, FCS.
pub const OVERHEAD: usize = 14 + 20 + 8 + 4;
/// The smallest datagram: marker, flags, sequence, send time.
pub const MIN_PAYLOAD: usize = 18;
const MARK: u8 = b'P';

/// An application's UDP socket.
pub struct UdpAppPort {
    sock: UdpSocket,
    gso: bool,
    rx: RxBufs,
    /// Datagrams of the burst being sent.
    tx: Vec<Vec<u8>>,
    /// Where the receiver rebuilds the frame a datagram stands for.
    scratch: Vec<u8>,
    errors: TxErrors,
    spec: String,
}

fn addr(spec: &Spec, key: &str) -> Result<Option<SocketAddr>> {
    let Some(text) = spec.get(key) else {
        return Ok(None);
    };
    let a: SocketAddr = text
        .parse()
        .map_err(|e| PerfError::Usage(format!("{spec}: {key}={text}: {e}")))?;
    if !a.is_ipv4() {
        return Err(PerfError::Usage(format!(
            "{spec}: {key}={text}: IPv4 only (the frame size is counted for IPv4)"
        )));
    }
    Ok(Some(a))
}

fn socket(spec: &Spec, local: SocketAddr, peer: Option<SocketAddr>) -> Result<UdpSocket> {
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
    Ok(sock)
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let peer = addr(spec, "peer")?;
    let local = addr(spec, "local")?.unwrap_or_else(|| "0.0.0.0:0".parse().expect("constant"));
    let gso = match spec.get("gso") {
        None | Some("on") => true,
        Some("off") => false,
        Some(v) => return Err(PerfError::Usage(format!("{spec}: gso={v}: on or off"))),
    };
    // A socket made inside the namespace belongs to it for life.
    let sock = match spec.get("netns") {
        Some(ns) => Netns::borrow(ns).try_enter(|| socket(spec, local, peer))??,
        None => socket(spec, local, peer)?,
    };
    sock.set_nonblocking(true)
        .map_err(|source| PerfError::Socket {
            what: format!("{spec}: nonblocking"),
            source,
        })?;
    sys::big_buffers(&sock, sys::SOCKET_BUFFER, true);
    Ok(Box::new(UdpAppPort {
        sock,
        gso,
        rx: RxBufs::new(MAX_BURST),
        tx: Vec::new(),
        scratch: frame::emit(frame::MAX_SIZE, frame::BROADCAST, 0),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

/// The datagram standing for test frame `f` into `out` (cleared first).
fn encode(f: &[u8], out: &mut Vec<u8>) {
    let v = Frame::new_unchecked(f);
    let stream = v.stream();
    let flags = (stream & 0x7f) as u8 | if stream & WARMUP_BIT != 0 { 0x80 } else { 0 };
    out.clear();
    out.push(MARK);
    out.push(flags);
    out.extend_from_slice(&v.seq().to_be_bytes());
    out.extend_from_slice(&v.stamp_ns().to_be_bytes());
    out.resize(f.len().saturating_sub(OVERHEAD).max(MIN_PAYLOAD), 0);
}

/// The test frame datagram `d` stands for (its length as the generator made it, FCS
/// counted), rebuilt in `scratch`; `None` when it is not one of ours.
fn decode<'a>(d: &[u8], scratch: &'a mut [u8]) -> Option<&'a [u8]> {
    if d.len() < MIN_PAYLOAD || d[0] != MARK || d.len() + OVERHEAD > scratch.len() {
        return None;
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[i..i + 8]);
        u64::from_be_bytes(b)
    };
    let flags = d[1];
    let mut stream = u32::from(flags & 0x7f);
    if flags & 0x80 != 0 {
        stream |= WARMUP_BIT;
    }
    let frame = &mut scratch[..d.len() + OVERHEAD];
    let mut f = Frame::new_unchecked(&mut *frame);
    f.set_stream(stream);
    f.set_seq(u64_at(2));
    f.set_stamp_ns(u64_at(10));
    Some(frame)
}

impl Port for UdpAppPort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        let n = frames.len().min(MAX_BURST);
        self.tx.resize_with(n, Vec::new);
        for (f, d) in frames[..n].iter().zip(self.tx.iter_mut()) {
            encode(f, d);
        }
        let fd = self.sock.as_raw_fd();
        if self.gso {
            match mmsg::send_gso(fd, &self.tx[..n], &mut self.errors) {
                Gso::Sent(k) => return k,
                Gso::Unsupported if n < 2 => {}
                // The route or kernel cannot segment: plain sends from now on.
                Gso::Unsupported => self.gso = false,
            }
        }
        mmsg::send_burst(fd, &self.tx[..n], &mut self.errors)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        let scratch = &mut self.scratch;
        mmsg::recv_each(self.sock.as_raw_fd(), &mut self.rx, |d, now| {
            match decode(d, scratch) {
                Some(f) => tally.record(f, now),
                // Counted as foreign.
                None => tally.record(&[], now),
            }
        })
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        self.errors.get()
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

    #[test]
    fn a_datagram_stands_for_its_frame() {
        for size in [64usize, 65, 1518] {
            let mut f = frame::emit(size, frame::mac(1), 3 | WARMUP_BIT);
            let mut v = Frame::new_unchecked(&mut f[..]);
            v.set_seq(0x0102_0304_0506_0708);
            v.set_stamp_ns(42);
            let mut d = Vec::new();
            encode(&f, &mut d);
            assert_eq!(d.len(), size - OVERHEAD);
            assert_eq!(&d[..4], &[b'P', 0x83, 1, 2]);
            let mut scratch = frame::emit(frame::MAX_SIZE, frame::BROADCAST, 0);
            let back = Frame::new_checked(decode(&d, &mut scratch).unwrap()).unwrap();
            assert_eq!(back.len(), size);
            assert_eq!(
                (back.stream(), back.seq(), back.stamp_ns()),
                (3 | WARMUP_BIT, 0x0102_0304_0506_0708, 42)
            );
        }
        let mut scratch = vec![0u8; 100];
        assert!(decode(&[b'X'; 18], &mut scratch).is_none());
        assert!(decode(&[b'P'; 17], &mut scratch).is_none());
        assert!(
            decode(&[b'P'; 60], &mut scratch).is_none(),
            "scratch too small"
        );
    }

    #[test]
    fn datagrams_cross_loopback_with_and_without_gso() {
        for gso in ["on", "off"] {
            let b = UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            let mut rx = open_spec(&format!("udp-app:local={b}")).unwrap();
            let mut tx = open_spec(&format!("udp-app:peer={b},gso={gso}")).unwrap();
            let frames: Vec<Vec<u8>> = (0..32u64)
                .map(|seq| {
                    let mut f = frame::emit(64, frame::BROADCAST, 0);
                    Frame::new_unchecked(&mut f[..]).set_seq(seq);
                    f
                })
                .collect();
            let mut sent = 0;
            while sent < frames.len() {
                sent += tx.tx_burst(&frames[sent..]);
            }
            let mut t = Tally::new(Some(1)).expect_len(64);
            let deadline = sys::monotonic_ns() + 2_000_000_000;
            while t.received < 32 && sys::monotonic_ns() < deadline {
                rx.rx_burst(&mut t);
            }
            assert_eq!((t.received, t.bytes), (32, 32 * 64), "gso={gso}");
            assert_eq!((t.foreign, t.bad_length, t.reordered), (0, 0, 0));
            assert_eq!(tx.tx_errors().0, 0);
        }
        assert!(open_spec("udp-app:peer=[::1]:9").is_err(), "IPv4 only");
        assert!(open_spec("udp-app:gso=maybe").is_err());
    }
}
