//! The `x-vxlan` netdev (a pollswitch extension): Ethernet frames in VXLAN (RFC 7348)
//! over UDP, so that switches on several hosts, and the Linux kernel's own `vxlan`
//! devices, form one L2 segment.
//!
//! ```text
//!  UDP payload:  | flags 0x08 | reserved (3) | VNI (3) | reserved | inner frame ... |
//!                  └ I: the VNI is valid
//!
//!  remote=IP:  every frame goes to IP:port
//!  group=MC:   unknown, broadcast and multicast frames go to the group; the source
//!              address of each inner frame is learned from the datagram that carried
//!              it (MAC → remote VTEP), and its unicast then goes to that VTEP only
//! ```
//!
//! The port is a [`TunnelPort`] (`recvmmsg`/`sendmmsg` bursts, no frame copied). A
//! datagram without the I flag or of another VNI is counted as `filtered`, as are this
//! port's own multicast datagrams looped back by the kernel. Learned VTEPs age out
//! (300 s by default, as the kernel's `vxlan` does) and their number is bounded; the
//! table lives in the port, which one worker owns, so it takes no lock.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use switch::wire::Mac;
use switch::DropReason;

use crate::error::Error;
use crate::sys::RawAddr;
use crate::tunnel::{Tunnel, TunnelPort};

/// IANA's VXLAN port.
pub const PORT: u16 = 4789;
/// The VXLAN header.
pub const HDR_LEN: usize = 8;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Default bound on learned VTEP entries.
pub const DEFAULT_FDB_SIZE: usize = 4096;
/// Default life of a learned entry after its last frame.
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
/// The I flag: the VNI is valid.
const FLAG_I: u8 = 0x08;

/// Writes the VXLAN header of `vni` into `out` (8 bytes; a shorter buffer is left alone).
pub fn emit_header(out: &mut [u8], vni: u32) {
    if let Some(h) = out.get_mut(..HDR_LEN) {
        h.fill(0);
        h[0] = FLAG_I;
        h[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
    }
}

/// The VNI of header `h`, when it is a VXLAN header with the I flag.
pub fn header_vni(h: &[u8]) -> Option<u32> {
    let h = h.get(..HDR_LEN)?;
    (h[0] & FLAG_I != 0).then(|| u32::from_be_bytes([0, h[4], h[5], h[6]]))
}

/// Where frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// Every frame to one VTEP.
    Unicast(IpAddr),
    /// Floods to a multicast group (IPv4), unicast to the VTEPs learned.
    Group(Ipv4Addr),
}

/// An `x-vxlan` port, addresses resolved and options checked.
#[derive(Debug, Clone)]
pub struct VxlanConfig {
    /// The segment's VNI.
    pub vni: u32,
    /// Where frames go.
    pub remote: Remote,
    /// The local address (required with a group: the interface that joins it).
    pub local: Option<IpAddr>,
    /// UDP port, local and remote.
    pub port: u16,
    /// TTL of sent datagrams (default: 1 to a group, the system's to a unicast VTEP).
    pub ttl: Option<u32>,
    /// Most VTEP entries learned.
    pub fdb_size: usize,
    /// Life of a learned entry.
    pub ageing: Duration,
}

/// What a VXLAN port counts beyond the port counters, readable while it runs.
#[derive(Debug, Default)]
pub struct VxlanStats {
    /// Addresses now known at a remote VTEP.
    pub vteps: AtomicU64,
    /// Addresses learned (or moved to another VTEP), in all.
    pub learned: AtomicU64,
    /// Addresses not learned because the table was full.
    pub overflow: AtomicU64,
    /// Frames sent to a learned VTEP rather than flooded to the group.
    pub to_vtep: AtomicU64,
}

/// One VXLAN segment's end: what [`TunnelPort`] needs to know of it.
pub struct Vtep {
    cfg: VxlanConfig,
    /// Where floods (or, with a unicast remote, everything) go.
    flood: RawAddr,
    /// Our own address and port, to recognise our multicast coming back.
    own: Option<SocketAddr>,
    /// Learned: inner source MAC → the VTEP it came from, and when (ms since `epoch`).
    table: HashMap<Mac, (IpAddr, RawAddr, u32)>,
    epoch: Instant,
    /// Now, in ms since `epoch`: updated by housekeeping (a frame needs no clock read).
    now_ms: u32,
    last_age: u32,
    stats: Arc<VxlanStats>,
}

/// An `x-vxlan` port.
pub type VxlanPort = TunnelPort<Vtep>;

fn sock_err(what: &'static str, addr: impl ToString) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Socket {
        what,
        addr: addr.to_string(),
        source,
    }
}

/// Opens the port's socket: bound to `local` (or every address) on the VXLAN port, and
/// for a group, joined to it on `local`'s interface, with the datagrams' TTL set.
pub fn open(cfg: VxlanConfig) -> Result<(VxlanPort, Arc<VxlanStats>), Error> {
    if cfg.vni > MAX_VNI {
        return Err(Error::Config(format!(
            "vni {} is over {MAX_VNI} (24 bits)",
            cfg.vni
        )));
    }
    let (bind, flood, own) = match cfg.remote {
        Remote::Unicast(ip) => {
            if cfg.local.is_some_and(|l| l.is_ipv4() != ip.is_ipv4()) {
                return Err(Error::Config(format!(
                    "local {} and remote {ip} are not of the same address family",
                    cfg.local.map(|l| l.to_string()).unwrap_or_default()
                )));
            }
            let any: IpAddr = if ip.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            let bind = SocketAddr::new(cfg.local.unwrap_or(any), cfg.port);
            (bind, SocketAddr::new(ip, cfg.port), None)
        }
        Remote::Group(g) => {
            let Some(IpAddr::V4(l)) = cfg.local else {
                return Err(Error::Config(format!(
                    "group {g} needs local=, an IPv4 address of the interface that joins it"
                )));
            };
            if !g.is_multicast() {
                return Err(Error::Config(format!(
                    "group {g} is not a multicast address"
                )));
            }
            // Bound to the wildcard: the group's datagrams and the learned VTEPs'
            // unicast both arrive; the VXLAN header tells which are ours.
            let bind = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), cfg.port);
            let own = SocketAddr::new(l.into(), cfg.port);
            (bind, SocketAddr::new(g.into(), cfg.port), Some(own))
        }
    };
    let s = Socket::new(
        Domain::for_address(bind),
        Type::DGRAM.cloexec().nonblocking(),
        Some(Protocol::UDP),
    )
    .map_err(sock_err("socket for", bind))?;
    if let Remote::Group(g) = cfg.remote {
        // Several ends on one host (a test, or two segments) share the port.
        s.set_reuse_address(true)
            .map_err(sock_err("SO_REUSEADDR on", bind))?;
        let l = match cfg.local {
            Some(IpAddr::V4(l)) => l,
            _ => Ipv4Addr::UNSPECIFIED,
        };
        s.bind(&bind.into()).map_err(sock_err("bind", bind))?;
        s.join_multicast_v4(&g, &l)
            .map_err(sock_err("join multicast group", g))?;
        s.set_multicast_if_v4(&l)
            .map_err(sock_err("IP_MULTICAST_IF", l))?;
        s.set_multicast_ttl_v4(cfg.ttl.unwrap_or(1))
            .map_err(sock_err("IP_MULTICAST_TTL", g))?;
        if let Some(t) = cfg.ttl {
            s.set_ttl_v4(t).map_err(sock_err("IP_TTL", g))?;
        }
    } else {
        s.bind(&bind.into()).map_err(sock_err("bind", bind))?;
        if let Some(t) = cfg.ttl {
            if bind.is_ipv4() {
                s.set_ttl_v4(t).map_err(sock_err("IP_TTL", bind))?;
            } else {
                s.set_unicast_hops_v6(t)
                    .map_err(sock_err("IPV6_UNICAST_HOPS", bind))?;
            }
        }
    }
    let vtep = Vtep::new(cfg, flood, own);
    let stats = vtep.stats.clone();
    Ok((TunnelPort::new(s.into(), vtep), stats))
}

impl Vtep {
    fn new(cfg: VxlanConfig, flood: SocketAddr, own: Option<SocketAddr>) -> Vtep {
        Vtep {
            flood: RawAddr::from_std(&flood),
            own,
            table: HashMap::new(),
            epoch: Instant::now(),
            now_ms: 0,
            last_age: 0,
            stats: Arc::new(VxlanStats::default()),
            cfg,
        }
    }

    /// A VTEP without a socket, its destinations worked out as [`open`] does: for
    /// exercising the protocol alone.
    pub(crate) fn for_fuzzing(cfg: VxlanConfig) -> Vtep {
        let (flood, own) = match (cfg.remote, cfg.local) {
            (Remote::Unicast(ip), _) => (SocketAddr::new(ip, cfg.port), None),
            (Remote::Group(g), l) => (
                SocketAddr::new(g.into(), cfg.port),
                l.map(|l| SocketAddr::new(l, cfg.port)),
            ),
        };
        Vtep::new(cfg, flood, own)
    }

    /// MACs learned now.
    pub(crate) fn learned_count(&self) -> usize {
        self.table.len()
    }

    fn learns(&self) -> bool {
        matches!(self.cfg.remote, Remote::Group(_))
    }

    fn ageing_ms(&self) -> u32 {
        u32::try_from(self.cfg.ageing.as_millis()).unwrap_or(u32::MAX)
    }

    /// Notes that frames from `mac` come from the VTEP at `ip`.
    fn learn(&mut self, mac: Mac, ip: IpAddr) {
        let now = self.now_ms;
        if let Some(e) = self.table.get_mut(&mac) {
            if e.0 != ip {
                *e = (
                    ip,
                    RawAddr::from_std(&SocketAddr::new(ip, self.cfg.port)),
                    now,
                );
                self.stats.learned.fetch_add(1, Ordering::Relaxed);
            } else {
                e.2 = now;
            }
            return;
        }
        if self.table.len() >= self.cfg.fdb_size {
            self.stats.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let raw = RawAddr::from_std(&SocketAddr::new(ip, self.cfg.port));
        self.table.insert(mac, (ip, raw, now));
        self.stats.learned.fetch_add(1, Ordering::Relaxed);
        self.stats
            .vteps
            .store(self.table.len() as u64, Ordering::Relaxed);
    }
}

impl Tunnel for Vtep {
    fn kind(&self) -> &'static str {
        "x-vxlan"
    }

    fn rx_lead(&self) -> usize {
        HDR_LEN
    }

    fn tx_lead(&self) -> usize {
        HDR_LEN
    }

    fn wants_source(&self) -> bool {
        self.learns()
    }

    fn accept(&mut self, hdr: &[u8], from: Option<SocketAddr>, frame: &[u8]) -> Option<DropReason> {
        if header_vni(hdr) != Some(self.cfg.vni) {
            return Some(DropReason::Filtered);
        }
        if let Some(from) = from {
            if Some(from) == self.own {
                // Our own flood, looped back by the kernel.
                return Some(DropReason::Filtered);
            }
            if let Some(src) = frame.get(6..12).and_then(|s| Mac::try_from(s).ok()) {
                if src[0] & 1 == 0 {
                    self.learn(src, from.ip());
                }
            }
        }
        None
    }

    fn emit(&mut self, hdr: &mut [u8], frame: &[u8], _seq: u32, to: &mut RawAddr) {
        emit_header(hdr, self.cfg.vni);
        *to = self.flood;
        if !self.learns() {
            return;
        }
        let Some(dst) = frame.get(..6).and_then(|d| Mac::try_from(d).ok()) else {
            return;
        };
        if dst[0] & 1 != 0 {
            return;
        }
        let (now, ageing) = (self.now_ms, self.ageing_ms());
        if let Some((_, raw, t)) = self.table.get(&dst) {
            if now.wrapping_sub(*t) < ageing {
                *to = *raw;
                self.stats.to_vtep.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn housekeeping(&mut self) {
        self.now_ms = u32::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u32::MAX);
        // Ageing once a second is plenty for a 300 s default.
        if self.now_ms.wrapping_sub(self.last_age) >= 1000 {
            self.last_age = self.now_ms;
            let (now, ageing) = (self.now_ms, self.ageing_ms());
            self.table.retain(|_, e| now.wrapping_sub(e.2) < ageing);
            self.stats
                .vteps
                .store(self.table.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_rfc_7348s() {
        let mut h = [0xffu8; 8];
        emit_header(&mut h, 0x12_3456);
        assert_eq!(h, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(header_vni(&h), Some(0x12_3456));
        // Without the I flag the VNI means nothing.
        h[0] = 0;
        assert_eq!(header_vni(&h), None);
        assert_eq!(header_vni(&h[..7]), None);
        // Reserved bits set by a peer are ignored, as the RFC asks.
        assert_eq!(header_vni(&[0x0c, 1, 2, 3, 0, 0, 42, 9]), Some(42));
        let mut short = [0xeeu8; 5];
        emit_header(&mut short, 1);
        assert_eq!(short, [0xee; 5]);
    }

    fn vtep(remote: Remote, fdb_size: usize) -> Vtep {
        Vtep::for_fuzzing(VxlanConfig {
            vni: 42,
            remote,
            local: Some(Ipv4Addr::new(10, 0, 0, 1).into()),
            port: PORT,
            ttl: None,
            fdb_size,
            ageing: Duration::from_millis(500),
        })
    }

    fn frame(dst: Mac, src: Mac) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x88, 0xb5, 1, 2, 3]);
        f
    }

    fn hdr(vni: u32) -> [u8; 8] {
        let mut h = [0; 8];
        emit_header(&mut h, vni);
        h
    }

    #[test]
    fn learns_vteps_from_a_group_and_sends_known_unicast_to_them() {
        let mut v = vtep(Remote::Group(Ipv4Addr::new(239, 1, 1, 1)), 16);
        let (a, b) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let peer = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 40000);
        assert_eq!(v.accept(&hdr(42), Some(peer), &frame([0xff; 6], a)), None);
        let mut to = RawAddr::empty();
        let mut h = [0u8; 8];
        v.emit(&mut h, &frame(a, b), 1, &mut to);
        assert_eq!(
            to.to_std(),
            Some(SocketAddr::new(peer.ip(), PORT)),
            "to the VTEP it came from, on the VXLAN port"
        );
        assert_eq!(header_vni(&h), Some(42));
        v.emit(&mut h, &frame([0xff; 6], b), 2, &mut to);
        assert_eq!(
            to.to_std(),
            Some("239.1.1.1:4789".parse().unwrap()),
            "broadcast floods"
        );
        v.emit(&mut h, &frame([2, 0, 0, 0, 0, 0xc], b), 3, &mut to);
        assert_eq!(
            to.to_std(),
            Some("239.1.1.1:4789".parse().unwrap()),
            "unknown floods"
        );
        // Aged out: floods again (after housekeeping moved the clock).
        v.now_ms = 600;
        v.emit(&mut h, &frame(a, b), 4, &mut to);
        assert_eq!(to.to_std(), Some("239.1.1.1:4789".parse().unwrap()));
        assert_eq!(v.stats.to_vtep.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn refuses_other_vnis_its_own_floods_and_counts_a_full_table() {
        let mut v = vtep(Remote::Group(Ipv4Addr::new(239, 1, 1, 1)), 2);
        let peer = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 4789);
        let f = frame([0xff; 6], [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            v.accept(&hdr(43), Some(peer), &f),
            Some(DropReason::Filtered)
        );
        assert_eq!(
            v.accept(&[0; 8], Some(peer), &f),
            Some(DropReason::Filtered)
        );
        assert_eq!(v.accept(&hdr(42), v.own, &f), Some(DropReason::Filtered));
        for n in 0..5u8 {
            let f = frame([0xff; 6], [2, 0, 0, 0, 1, n]);
            assert_eq!(v.accept(&hdr(42), Some(peer), &f), None);
        }
        assert_eq!(v.table.len(), 2);
        assert_eq!(v.stats.overflow.load(Ordering::Relaxed), 3);
        // Group sources are never learned.
        let mut v = vtep(Remote::Group(Ipv4Addr::new(239, 1, 1, 1)), 2);
        v.accept(&hdr(42), Some(peer), &frame([0xff; 6], [3, 0, 0, 0, 0, 1]));
        assert!(v.table.is_empty());
    }

    #[test]
    fn a_unicast_remote_gets_everything() {
        let ip: IpAddr = Ipv4Addr::new(10, 0, 0, 9).into();
        let mut v = vtep(Remote::Unicast(ip), 16);
        assert!(!v.wants_source());
        let mut to = RawAddr::empty();
        v.emit(
            &mut [0; 8],
            &frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
            1,
            &mut to,
        );
        assert_eq!(to.to_std(), Some(SocketAddr::new(ip, PORT)));
    }
}
