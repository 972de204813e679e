//! The `l2tpv3` netdev: Ethernet frames in static L2TPv3 sessions (RFC 3931, no control
//! connection), over UDP or straight over IP (protocol 115), as QEMU's `-netdev l2tpv3`
//! speaks them.
//!
//! ```text
//!  UDP mode:  | 00 03 00 00 | session | cookie (0/4/8) | counter (0/4) | offset | frame |
//!  IP mode:   [IPv4 header, receive only] | session | cookie | counter | offset | frame |
//! ```
//!
//! The port is a [`TunnelPort`] (`recvmmsg`/`sendmmsg` bursts, no frame copied); this
//! module is the header. A datagram whose session or cookie is not ours is counted as
//! `filtered`; the counter is not checked on receive (as in QEMU).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use switch::DropReason;

use crate::error::Error;
use crate::sys::RawAddr;
use crate::tunnel::{Tunnel, TunnelPort};

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

/// One L2TPv3 session: what [`TunnelPort`] needs to know of it.
pub struct L2tpv3Session {
    cfg: L2tpv3Config,
    dest: RawAddr,
    /// Bytes of IPv4 header in front of the L2TPv3 header in a received datagram.
    ip: usize,
}

/// One L2TPv3 session as a port.
pub type L2tpv3Port = TunnelPort<L2tpv3Session>;

fn sock_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Socket {
        what,
        addr: addr.to_string(),
        source,
    }
}

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
    let ip = if !cfg.layout.udp && cfg.src.is_ipv4() {
        IPV4_HDR
    } else {
        0
    };
    Ok(TunnelPort::new(
        s.into(),
        L2tpv3Session {
            dest: RawAddr::from_std(&cfg.dst),
            ip,
            cfg,
        },
    ))
}

impl Tunnel for L2tpv3Session {
    fn kind(&self) -> &'static str {
        "l2tpv3"
    }

    fn rx_lead(&self) -> usize {
        self.ip + self.cfg.layout.len()
    }

    fn tx_lead(&self) -> usize {
        self.cfg.layout.len()
    }

    fn accept(&mut self, h: &[u8], _: Option<SocketAddr>, _: &[u8]) -> Option<DropReason> {
        let ip = self.ip;
        // Not our session (or an IPv4 header with options, which would move the L2TPv3
        // header where QEMU does not look for it either).
        let ours = (ip == 0 || h.first() == Some(&0x45))
            && h.get(ip..).is_some_and(|h| {
                self.cfg
                    .layout
                    .accepts(h, self.cfg.rxsession, self.cfg.rxcookie)
            });
        (!ours).then_some(DropReason::Filtered)
    }

    fn emit(&mut self, hdr: &mut [u8], _: &[u8], seq: u32, to: &mut RawAddr) {
        let counter = if self.cfg.pincounter { 0 } else { seq };
        self.cfg
            .layout
            .emit(hdr, self.cfg.txsession, self.cfg.txcookie, counter);
        *to = self.dest;
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
