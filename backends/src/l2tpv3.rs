//! The `l2tpv3` netdev: Ethernet frames in static L2TPv3 sessions (RFC 3931, no control
//! connection), over UDP or straight over IP (protocol 115), as QEMU's `-netdev l2tpv3`
//! speaks them.
//!
//! ```text
//!  UDP mode:  | 00 03 00 00 | session | cookie (0/4/8) | counter (0/4) | offset | frame |
//!  IP mode:   [IPv4 header, receive only] | session | cookie | counter | offset | frame |
//! ```
//!
//! The worker moves frames itself with `recvmmsg`/`sendmmsg` (non-blocking, a burst per
//! call), woken by a multishot io_uring poll: each datagram lands in two iovecs, the
//! header in a scratch area of this port and the frame exactly at the pool buffer's
//! `HEADROOM`, so neither direction copies a frame. A datagram whose session or cookie
//! is not ours is counted as `filtered` and its buffer reused; the counter is not
//! checked on receive (as in QEMU).
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::readiness::Readiness;
use socket2::{Domain, Protocol, Socket, Type};
use switch::pool::{HEADROOM, MIN_FRAME};
use switch::{Backend, DropReason, Io, Pkt, BURST};

use crate::error::Error;
use crate::sys::RawAddr;

/// IP protocol number of L2TPv3 over IP.
pub const IPPROTO_L2TP: i32 = 115;
/// Length of an IPv4 header without options, which a raw IPv4 socket hands us in front
/// of every datagram (QEMU assumes the same length).
const IPV4_HDR: usize = 20;

/// Where the fields of an L2TPv3 data header lie, and what goes in them.
///
/// Zero-copy in both directions: [`Layout::emit`] writes into a header buffer,
/// [`Layout::accepts`] reads one; neither panics on a short buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The 4-byte UDP-mode header (`00 03 00 00`: T=0, version 3) comes first.
    pub udp: bool,
    /// Cookie length: 0, 4 or 8.
    pub cookie_len: usize,
    /// A 32-bit counter follows the cookie.
    pub counter: bool,
    /// Bytes between the header and the frame.
    pub offset: usize,
}

mod field {
    /// The UDP-mode header: flags and version.
    pub const UDP_HDR: [u8; 4] = [0x00, 0x03, 0x00, 0x00];
}

impl Layout {
    fn session_at(&self) -> usize {
        if self.udp {
            4
        } else {
            0
        }
    }

    fn cookie_at(&self) -> usize {
        self.session_at() + 4
    }

    fn counter_at(&self) -> usize {
        self.cookie_at() + self.cookie_len
    }

    /// Bytes in front of the frame.
    pub fn len(&self) -> usize {
        self.counter_at() + if self.counter { 4 } else { 0 } + self.offset
    }

    /// Never true: the session id is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the header into `out` (exactly [`Layout::len`] bytes; a shorter buffer
    /// is left alone).
    pub fn emit(&self, out: &mut [u8], session: u32, cookie: u64, counter: u32) {
        let Some(out) = out.get_mut(..self.len()) else {
            return;
        };
        out.fill(0);
        if self.udp {
            out[..4].copy_from_slice(&field::UDP_HDR);
        }
        let s = self.session_at();
        out[s..s + 4].copy_from_slice(&session.to_be_bytes());
        let c = self.cookie_at();
        match self.cookie_len {
            8 => out[c..c + 8].copy_from_slice(&cookie.to_be_bytes()),
            4 => out[c..c + 4].copy_from_slice(&(cookie as u32).to_be_bytes()),
            _ => {}
        }
        if self.counter {
            let k = self.counter_at();
            out[k..k + 4].copy_from_slice(&counter.to_be_bytes());
        }
    }

    /// Whether header `h` carries our session and cookie. The UDP-mode header's
    /// reserved bytes and the counter are not checked, as QEMU does not.
    pub fn accepts(&self, h: &[u8], session: u32, cookie: u64) -> bool {
        if h.len() < self.len() {
            return false;
        }
        let s = self.session_at();
        if h[s..s + 4] != session.to_be_bytes() {
            return false;
        }
        let c = self.cookie_at();
        match self.cookie_len {
            8 => h[c..c + 8] == cookie.to_be_bytes(),
            4 => h[c..c + 4] == (cookie as u32).to_be_bytes(),
            _ => true,
        }
    }
}

/// An L2TPv3 port, addresses resolved and options checked.
#[derive(Debug, Clone)]
pub struct L2tpv3Config {
    /// Local address (and port, in UDP mode) we bind.
    pub src: SocketAddr,
    /// Where frames go (port 0 in IP mode).
    pub dst: SocketAddr,
    /// The header's shape.
    pub layout: Layout,
    /// Session id we send.
    pub txsession: u32,
    /// Session id we accept.
    pub rxsession: u32,
    /// Cookie we send (when the layout has one).
    pub txcookie: u64,
    /// Cookie we accept.
    pub rxcookie: u64,
    /// The counter stays 0 instead of counting sent frames from 1.
    pub pincounter: bool,
}

/// One L2TPv3 session as a port.
pub struct L2tpv3Port {
    fd: OwnedFd,
    cfg: L2tpv3Config,
    dest: RawAddr,
    /// Bytes in front of the frame in a received datagram (the IPv4 header included).
    rx_lead: usize,
    /// Received headers, `rx_lead` bytes per datagram of a burst.
    rx_hdr: Vec<u8>,
    /// Headers to send, `layout.len()` bytes per frame of a burst.
    tx_hdr: Vec<u8>,
    /// Fresh buffers for the next receive burst (at most [`BURST`], kept between calls
    /// so that an empty socket costs no allocation).
    spare: Vec<Pkt>,
    /// The socket may have datagrams waiting: set by the poll's completions and when a
    /// burst ended at its budget, cleared before reading until the kernel has none.
    readable: bool,
    /// Counter of the last frame sent.
    sent: u32,
    wake: Readiness,
}

fn sock_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Socket {
        what,
        addr: addr.to_string(),
        source,
    }
}

impl L2tpv3Port {
    /// Opens and binds the socket: UDP in UDP mode, a raw socket of protocol 115 (which
    /// needs CAP_NET_RAW) in IP mode.
    pub fn open(cfg: L2tpv3Config) -> Result<L2tpv3Port, Error> {
        if cfg.src.is_ipv4() != cfg.dst.is_ipv4() {
            return Err(Error::Config(format!(
                "src {} and dst {} are not of the same address family",
                cfg.src.ip(),
                cfg.dst.ip()
            )));
        }
        let domain = Domain::for_address(cfg.src);
        let s = if cfg.layout.udp {
            Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))
        } else {
            Socket::new(
                domain,
                Type::RAW.cloexec(),
                Some(Protocol::from(IPPROTO_L2TP)),
            )
        }
        .map_err(sock_err("socket for", cfg.src))?;
        s.bind(&cfg.src.into()).map_err(sock_err("bind", cfg.src))?;
        let rx_lead = cfg.layout.len()
            + if !cfg.layout.udp && cfg.src.is_ipv4() {
                IPV4_HDR
            } else {
                0
            };
        Ok(L2tpv3Port {
            fd: s.into(),
            dest: RawAddr::from_std(&cfg.dst),
            rx_hdr: vec![0; rx_lead * BURST],
            tx_hdr: vec![0; cfg.layout.len() * BURST],
            rx_lead,
            cfg,
            spare: Vec::with_capacity(BURST),
            sent: 0,
            readable: true,
            wake: Readiness::default(),
        })
    }

    /// One `recvmmsg` of up to `want` datagrams; the accepted frames go to `out`.
    /// Returns how many datagrams the kernel gave (0: none waiting, or an error).
    fn recv_some(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, want: usize) -> usize {
        let pool = io.pool();
        let lead = self.rx_lead;
        let cap = pool.max_frame() + 1;
        // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid empty value.
        let mut iov: [[libc::iovec; 2]; BURST] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        while self.spare.len() < want.min(BURST) {
            let Some(p) = io.alloc() else { break };
            self.spare.push(p);
        }
        let mut k = 0;
        for (i, p) in self.spare.iter_mut().take(want).enumerate() {
            let Some(base) = pool.buf_ptr(p) else { break };
            iov[i] = [
                libc::iovec {
                    iov_base: self.rx_hdr[i * lead..].as_mut_ptr().cast(),
                    iov_len: lead,
                },
                libc::iovec {
                    // SAFETY: buf_size >= HEADROOM + max_frame + 1, so the frame area
                    // of `cap` bytes lies inside the buffer.
                    iov_base: unsafe { base.add(HEADROOM) }.cast(),
                    iov_len: cap,
                },
            ];
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
            k = i + 1;
        }
        if k == 0 {
            return 0;
        }
        // SAFETY: every iovec points into this port's header scratch (`lead` bytes per
        // datagram) or into an exclusively owned pool buffer (`spare`, untouched during
        // the call); the call is synchronous, so nothing outlives it.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                k as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                io.counters.count_drop(DropReason::IoError, 1);
                io.count_op_error();
            }
            return 0;
        }
        let r = r as usize;
        let ip = lead - self.cfg.layout.len();
        for (i, mut pkt) in self.spare.drain(..r).enumerate() {
            let n = msgs[i].msg_len as usize;
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let h = &self.rx_hdr[i * lead..(i + 1) * lead];
            let why = if n < lead {
                Some(DropReason::Undersize)
            } else if (ip > 0 && h[0] != 0x45)
                || !self
                    .cfg
                    .layout
                    .accepts(&h[ip..], self.cfg.rxsession, self.cfg.rxcookie)
            {
                // Not our session (or an IPv4 header with options, which would move
                // the L2TPv3 header where QEMU does not look for it either).
                Some(DropReason::Filtered)
            } else if truncated || n - lead > pool.max_frame() {
                Some(DropReason::Oversize)
            } else if n - lead < MIN_FRAME {
                Some(DropReason::Undersize)
            } else {
                None
            };
            match why {
                Some(w) => io.drop_one(pkt, w),
                None => {
                    pkt.set_span(HEADROOM, n - lead);
                    io.counters.rx(n - lead);
                    out.push(pkt);
                }
            }
        }
        r
    }

    /// One `sendmmsg` of the front of `pkts`; returns how many it took (sent or, when
    /// the kernel refused the first one for a reason other than a full queue, dropped).
    fn send_some(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let pool = io.pool();
        let hl = self.cfg.layout.len();
        let n = pkts.len().min(BURST);
        // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid empty value.
        let mut iov: [[libc::iovec; 2]; BURST] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        let mut bytes = [0usize; BURST];
        for (i, p) in pkts.iter().take(n).enumerate() {
            let counter = match self.cfg.pincounter {
                true => 0,
                false => self.sent.wrapping_add(i as u32 + 1),
            };
            let h = &mut self.tx_hdr[i * hl..(i + 1) * hl];
            self.cfg
                .layout
                .emit(h, self.cfg.txsession, self.cfg.txcookie, counter);
            let d = pool.bytes(p);
            bytes[i] = d.len();
            iov[i] = [
                libc::iovec {
                    iov_base: h.as_mut_ptr().cast(),
                    iov_len: hl,
                },
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                },
            ];
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
            msgs[i].msg_hdr.msg_name =
                (&mut self.dest.storage as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = self.dest.len;
        }
        // SAFETY: the iovecs point at this port's header scratch and at frames whose
        // references `pkts` holds through the call; the destination is ours. The call
        // is synchronous: the kernel keeps no pointer after it returns.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EAGAIN) || e == Some(libc::ENOBUFS) {
                // The socket's queue is full: the rest stays with the caller.
                return 0;
            }
            // An error of this datagram (an ICMP error reported late, an unreachable
            // destination): it is dropped, the others go on.
            self.sent = self.sent.wrapping_add(1);
            let p = pkts.remove(0);
            io.drop_one(p, DropReason::IoError);
            return 1;
        }
        let r = r as usize;
        self.sent = self.sent.wrapping_add(r as u32);
        io.counters
            .tx(r as u64, bytes[..r].iter().sum::<usize>() as u64);
        for p in pkts.drain(..r) {
            io.free(p);
        }
        r
    }
}

impl Backend for L2tpv3Port {
    fn kind(&self) -> &'static str {
        "l2tpv3"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.wake.arm(io, self.fd.as_fd());
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        self.wake.arm(io, self.fd.as_fd());
        // Without a poll armed nothing would tell us of new datagrams: read every time.
        if !self.readable && self.wake.armed() {
            return 0;
        }
        // Cleared before reading: a datagram queued after the read that finds the
        // socket empty wakes the poll, whose completion sets it again.
        self.readable = false;
        let mut got = 0;
        while got < max {
            let before = out.len();
            let want = (max - got).min(BURST);
            let r = self.recv_some(io, out, want);
            got += out.len() - before;
            if r < want {
                break;
            }
        }
        if got >= max || self.spare.is_empty() {
            // The budget (or the pool) ended the burst, not the socket: more may wait.
            self.readable = true;
        }
        got
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        let mut taken = 0;
        while !pkts.is_empty() {
            let r = self.send_some(io, pkts);
            if r == 0 {
                break;
            }
            taken += r;
        }
        taken
    }

    fn complete(&mut self, _io: &mut Io<'_>, op: u8, _tag: u32, _res: i32, flags: u32) {
        if self.wake.complete(op, flags) {
            self.readable = true;
        }
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        let mut spare = std::mem::take(&mut self.spare);
        io.free_all(&mut spare);
        self.wake.stop(io, self.fd.as_fd())
    }

    /// The spare receive buffers: received frames are handed on within the same
    /// `rx_burst`, and frames to send are sent and freed within one `tx_burst`.
    fn max_held(&self, _pool: &switch::Pool) -> usize {
        BURST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UDP32_COUNTER: Layout = Layout {
        udp: true,
        cookie_len: 4,
        counter: true,
        offset: 2,
    };

    #[test]
    fn udp_header_with_cookie_and_counter() {
        // What QEMU 10 sent with udp=on,txsession=0x10,txcookie=0xaabbccdd,counter=on,
        // offset=2 for its first frame.
        let want = [
            0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0xaa, 0xbb, 0xcc, 0xdd, 0x00, 0x00,
            0x00, 0x01, 0x00, 0x00,
        ];
        assert_eq!(UDP32_COUNTER.len(), want.len());
        let mut out = [0xffu8; 18];
        UDP32_COUNTER.emit(&mut out, 0x10, 0xaabb_ccdd, 1);
        assert_eq!(out, want);
        assert!(UDP32_COUNTER.accepts(&want, 0x10, 0xaabb_ccdd));
        assert!(!UDP32_COUNTER.accepts(&want, 0x11, 0xaabb_ccdd));
        assert!(!UDP32_COUNTER.accepts(&want, 0x10, 0xaabb_ccde));
        assert!(!UDP32_COUNTER.accepts(&want[..17], 0x10, 0xaabb_ccdd));
    }

    #[test]
    fn ip_header_with_64_bit_cookie() {
        let l = Layout {
            udp: false,
            cookie_len: 8,
            counter: false,
            offset: 0,
        };
        let mut out = [0u8; 12];
        l.emit(&mut out, 7, 0x0102_0304_0506_0708, 99);
        assert_eq!(out, [0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(l.accepts(&out, 7, 0x0102_0304_0506_0708));
        assert!(!l.accepts(&out, 7, 0x0102_0304_0506_0709));
        // A short buffer is left alone, never a panic.
        let mut short = [0xeeu8; 5];
        l.emit(&mut short, 7, 0, 0);
        assert_eq!(short, [0xee; 5]);
    }

    #[test]
    fn bare_session_header() {
        let l = Layout {
            udp: false,
            cookie_len: 0,
            counter: false,
            offset: 0,
        };
        assert_eq!(l.len(), 4);
        assert!(l.accepts(&[0, 0, 1, 0], 256, 12345));
    }
}
