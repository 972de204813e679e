//! Offload metadata (`struct virtio_net_hdr`, as a tap with `IFF_VNET_HDR` and a virtio
//! NIC write it) and what the switch does for a port that cannot take it: cut a GSO
//! super-frame into wire-sized frames, or finish a checksum the sender left partial.
//!
//! ```text
//!  virtio_net_hdr (10 bytes, little-endian):
//!   flags u8 (NEEDS_CSUM 1, DATA_VALID 2) │ gso_type u8 (TCPV4 1, UDP 3, TCPV6 4,
//!   UDP_L4 5, | ECN 0x80) │ hdr_len u16 │ gso_size u16 │ csum_start u16 │ csum_offset u16
//!
//!  super-frame: [eth (+ VLAN tags)] [IPv4 | IPv6] [TCP | UDP] [payload ............]
//!  segment i:   [the same headers, fixed up    ] [payload[i*mss .. (i+1)*mss]]
//! ```
//!
//! The cut follows the kernel's software GSO: every segment repeats the headers; IPv4's
//! total length, identification (+i) and header checksum, IPv6's payload length, TCP's
//! sequence number (+i·mss) and flags (FIN and PSH on the last segment only, CWR on the
//! first only), UDP's length are rewritten, and each segment's TCP or UDP checksum is
//! computed in full — its destination checks checksums and takes no offload. Lengths
//! come from the frame, never from the header fields it claims, so a lying sender gets
//! wrong segments at worst, never an access outside the frame. UFO (`gso_type` 3: IP
//! fragmentation) is not cut: nothing this switch enables produces it.

use super::checksum;
use super::ethernet::{payload_of, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

/// `flags`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: none.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO).
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (not cut here).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO, one datagram per segment).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the TCP stream uses ECN (CWR on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// The header's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`, `DATA_VALID`.
    pub flags: u8,
    /// `GSO_*`, maybe with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint; the cut reads the frame's own).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed part starts.
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header.
    pub fn parse(b: &[u8; 10]) -> VnetHdr {
        let w = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: w(2),
            gso_size: w(4),
            csum_start: w(6),
            csum_offset: w(8),
        }
    }

    /// Writes the header.
    pub fn write(&self, b: &mut [u8; 10]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// The GSO type without the ECN bit.
    pub fn gso(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether the frame needs anything done before a port without offloads can take
    /// it: a cut or a checksum.
    pub fn needs_work(&self) -> bool {
        self.gso() != GSO_NONE || self.flags & F_NEEDS_CSUM != 0
    }
}

/// Why a frame cannot be cut or finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoError {
    /// A GSO type this switch does not cut.
    Type(u8),
    /// The frame is not what its header says.
    Malformed(&'static str),
}

impl std::fmt::Display for GsoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GsoError::Type(t) => write!(f, "GSO type {t} is not supported"),
            GsoError::Malformed(why) => write!(f, "malformed GSO frame: {why}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L3 {
    V4,
    V6,
}

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Where the network header starts and what it is: after the Ethernet header and up to
/// two VLAN tags.
fn l3_of(frame: &[u8]) -> Result<(usize, L3), GsoError> {
    match payload_of(frame) {
        Some((at, ETHERTYPE_IPV4)) => Ok((at, L3::V4)),
        Some((at, ETHERTYPE_IPV6)) => Ok((at, L3::V6)),
        Some(_) => Err(GsoError::Malformed(
            "not IPv4 or IPv6 (or more than two VLAN tags)",
        )),
        None => Err(GsoError::Malformed("short Ethernet header")),
    }
}

/// A super-frame's cut, decided once for all its segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    l3: L3,
    ip: usize,
    l4: usize,
    hdr: usize,
    tcp: bool,
    mss: usize,
    payload: usize,
}

impl Plan {
    /// Reads the headers of `frame`, a GSO super-frame described by `h`.
    pub fn new(h: &VnetHdr, frame: &[u8]) -> Result<Plan, GsoError> {
        let tcp = match h.gso() {
            GSO_TCPV4 | GSO_TCPV6 => true,
            GSO_UDP_L4 => false,
            t => return Err(GsoError::Type(t)),
        };
        let (ip, l3) = l3_of(frame)?;
        let (l4, proto) = match l3 {
            L3::V4 => {
                let b = frame
                    .get(ip..ip + 20)
                    .ok_or(GsoError::Malformed("short IPv4 header"))?;
                if b[0] >> 4 != 4 || (b[0] & 0xf) < 5 {
                    return Err(GsoError::Malformed("bad IPv4 header"));
                }
                (ip + usize::from(b[0] & 0xf) * 4, b[9])
            }
            L3::V6 => {
                let b = frame
                    .get(ip..ip + 40)
                    .ok_or(GsoError::Malformed("short IPv6 header"))?;
                if b[0] >> 4 != 6 {
                    return Err(GsoError::Malformed("bad IPv6 header"));
                }
                // Extension headers are not walked: GSO frames from a tap carry none.
                (ip + 40, b[6])
            }
        };
        if (h.gso() == GSO_TCPV4) != (tcp && l3 == L3::V4)
            || (h.gso() == GSO_TCPV6) != (tcp && l3 == L3::V6)
        {
            return Err(GsoError::Malformed(
                "GSO type does not match the IP version",
            ));
        }
        let hdr = if tcp {
            if proto != IPPROTO_TCP {
                return Err(GsoError::Malformed("TCP GSO on a packet that is not TCP"));
            }
            let doff = frame
                .get(l4 + 12)
                .ok_or(GsoError::Malformed("short TCP header"))?
                >> 4;
            if doff < 5 {
                return Err(GsoError::Malformed("bad TCP header length"));
            }
            l4 + usize::from(doff) * 4
        } else {
            if proto != IPPROTO_UDP {
                return Err(GsoError::Malformed("UDP GSO on a packet that is not UDP"));
            }
            l4 + 8
        };
        if hdr > frame.len() {
            return Err(GsoError::Malformed("headers longer than the frame"));
        }
        if h.gso_size == 0 {
            return Err(GsoError::Malformed("gso_size 0"));
        }
        Ok(Plan {
            l3,
            ip,
            l4,
            hdr,
            tcp,
            mss: usize::from(h.gso_size),
            payload: frame.len() - hdr,
        })
    }

    /// Number of segments (at least one, even for an empty payload).
    pub fn count(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Length of the headers every segment repeats.
    pub fn header_len(&self) -> usize {
        self.hdr
    }

    /// The largest segment's length in bytes.
    pub fn max_len(&self) -> usize {
        self.hdr + self.mss.min(self.payload)
    }

    /// Payload bytes of segment `i`.
    fn chunk(&self, i: usize) -> std::ops::Range<usize> {
        let start = (i * self.mss).min(self.payload);
        let end = (start + self.mss).min(self.payload);
        self.hdr + start..self.hdr + end
    }

    /// Writes segment `i` of `frame` (the frame this plan was made from) into `out`;
    /// returns its length, or `None` when `out` is too short or `i` out of range.
    pub fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) -> Option<usize> {
        if i >= self.count() || frame.len() != self.hdr + self.payload {
            return None;
        }
        let body = self.chunk(i);
        let plen = body.len();
        let len = self.hdr + plen;
        let out = out.get_mut(..len)?;
        out[..self.hdr].copy_from_slice(&frame[..self.hdr]);
        out[self.hdr..].copy_from_slice(&frame[body]);
        let l4_len = len - self.l4;
        let first = i == 0;
        let last = i + 1 == self.count();
        match self.l3 {
            L3::V4 => {
                let ip = &mut out[self.ip..self.l4];
                let tot = (len - self.ip) as u16;
                ip[2..4].copy_from_slice(&tot.to_be_bytes());
                let id = u16::from_be_bytes([ip[4], ip[5]]).wrapping_add(i as u16);
                ip[4..6].copy_from_slice(&id.to_be_bytes());
                ip[10..12].fill(0);
                let c = checksum::checksum(ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            L3::V6 => {
                let pl = (len - self.ip - 40) as u16;
                out[self.ip + 4..self.ip + 6].copy_from_slice(&pl.to_be_bytes());
            }
        }
        let pseudo = self.pseudo_sum(out, l4_len);
        let l4 = &mut out[self.l4..];
        let field = if self.tcp {
            let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]])
                .wrapping_add((i * self.mss) as u32);
            l4[4..8].copy_from_slice(&seq.to_be_bytes());
            if !last {
                l4[13] &= !0x09; // FIN, PSH
            }
            if !first {
                l4[13] &= !0x80; // CWR
            }
            16
        } else {
            l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            6
        };
        l4[field..field + 2].fill(0);
        let mut c = !checksum::fold(checksum::sum(l4, pseudo));
        if !self.tcp && c == 0 {
            c = 0xffff; // UDP: 0 means "no checksum"
        }
        l4[field..field + 2].copy_from_slice(&c.to_be_bytes());
        Some(len)
    }

    /// The pseudo-header's sum for an L4 segment of `l4_len` bytes.
    fn pseudo_sum(&self, out: &[u8], l4_len: usize) -> u64 {
        let proto = if self.tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let addrs = match self.l3 {
            L3::V4 => &out[self.ip + 12..self.ip + 20],
            L3::V6 => &out[self.ip + 8..self.ip + 40],
        };
        // IPv4's zero, protocol and 16-bit length, and IPv6's 32-bit length and
        // next-header word, add up to the same 16-bit words.
        checksum::sum(
            &[0, proto, (l4_len >> 8) as u8, l4_len as u8],
            checksum::sum(addrs, 0),
        )
    }
}

/// Finishes the partial checksum of a frame whose header says `F_NEEDS_CSUM` (and no
/// GSO); a frame without it is left alone.
pub fn finish_checksum(h: &VnetHdr, frame: &mut [u8]) -> Result<(), GsoError> {
    if h.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    if checksum::complete_partial(frame, usize::from(h.csum_start), usize::from(h.csum_offset)) {
        Ok(())
    } else {
        Err(GsoError::Malformed("checksum field outside the frame"))
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An Ethernet + IPv4/IPv6 + TCP/UDP super-frame with `payload` bytes, as a tap
    /// with TSO/USO hands it over: lengths of the whole thing, partial checksum.
    pub(crate) fn super_frame(v6: bool, tcp: bool, payload: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        let l4_len = if tcp { 32 } else { 8 } + payload;
        if v6 {
            f.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            ip[6] = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
            ip[7] = 64;
            ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            f.extend_from_slice(&ip);
        } else {
            f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
            ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
            ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
            f.extend_from_slice(&ip);
        }
        if tcp {
            let mut t = [0u8; 32];
            t[0..2].copy_from_slice(&40000u16.to_be_bytes());
            t[2..4].copy_from_slice(&5201u16.to_be_bytes());
            t[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
            t[12] = 8 << 4;
            t[13] = 0x80 | 0x10 | 0x08 | 0x01; // CWR ACK PSH FIN
            t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
            f.extend_from_slice(&t);
        } else {
            let mut u = [0u8; 8];
            u[0..2].copy_from_slice(&40000u16.to_be_bytes());
            u[2..4].copy_from_slice(&5201u16.to_be_bytes());
            u[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&u);
        }
        f.extend((0..payload).map(|i| (i * 7 + 3) as u8));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::super_frame;
    use super::*;

    fn hdr(v6: bool, tcp: bool, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (v6, tcp) {
                (false, true) => GSO_TCPV4 | GSO_ECN,
                (true, true) => GSO_TCPV6,
                _ => GSO_UDP_L4,
            },
            hdr_len: 0,
            gso_size: mss,
            csum_start: if v6 { 54 } else { 34 },
            csum_offset: if tcp { 16 } else { 6 },
        }
    }

    /// Whether an L4 segment's checksum verifies, as the receiver's kernel does it.
    fn l4_ok(seg: &[u8], v6: bool, tcp: bool) -> bool {
        let (ip, l4) = if v6 { (14, 54) } else { (14, 34) };
        let len = seg.len() - l4;
        let proto = if tcp { IPPROTO_TCP } else { IPPROTO_UDP };
        let mut s = if v6 {
            checksum::sum(&seg[ip + 8..ip + 40], 0)
        } else {
            checksum::sum(&seg[ip + 12..ip + 20], 0)
        };
        s = checksum::sum(&[0, proto, (len >> 8) as u8, len as u8], s);
        checksum::fold(checksum::sum(&seg[l4..], s)) == 0xffff
    }

    #[test]
    fn a_header_reads_back_as_written() {
        let h = hdr(false, true, 1448);
        let mut b = [0u8; 10];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), h);
        assert_eq!(b[4..6], 1448u16.to_le_bytes());
        assert!(h.needs_work());
        assert!(!VnetHdr::default().needs_work());
    }

    #[test]
    fn tcp_super_frames_are_cut_like_the_kernel_cuts_them() {
        for v6 in [false, true] {
            let payload = 5000;
            let f = super_frame(v6, true, payload);
            let h = hdr(v6, true, 1448);
            let plan = Plan::new(&h, &f).unwrap();
            assert_eq!(plan.count(), 4);
            let mut joined = Vec::new();
            let mut out = vec![0u8; 2000];
            for i in 0..plan.count() {
                let n = plan.write(&f, i, &mut out).unwrap();
                let seg = &out[..n];
                let hl = if v6 { 54 + 32 } else { 34 + 32 };
                let plen = if i < 3 { 1448 } else { payload - 3 * 1448 };
                assert_eq!(n, hl + plen);
                assert!(l4_ok(seg, v6, true), "v6={v6} segment {i} checksum");
                if v6 {
                    assert_eq!(u16::from_be_bytes([seg[18], seg[19]]) as usize, 32 + plen);
                } else {
                    assert_eq!(u16::from_be_bytes([seg[16], seg[17]]) as usize, n - 14);
                    assert_eq!(
                        u16::from_be_bytes([seg[18], seg[19]]),
                        0xfffeu16.wrapping_add(i as u16),
                        "ids count up, wrapping"
                    );
                    assert_eq!(checksum::fold(checksum::sum(&seg[14..34], 0)), 0xffff);
                }
                let tcp = &seg[hl - 32..];
                let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
                assert_eq!(seq, 0xffff_fff0u32.wrapping_add((i * 1448) as u32));
                let flags = tcp[13];
                assert_eq!(flags & 0x10, 0x10, "ACK on every segment");
                assert_eq!(flags & 0x80 != 0, i == 0, "CWR on the first only");
                assert_eq!(flags & 0x09 != 0, i == 3, "FIN, PSH on the last only");
                // Options are repeated.
                assert_eq!(&tcp[20..32], &f[hl - 12..hl]);
                joined.extend_from_slice(&seg[hl..]);
            }
            assert_eq!(
                joined,
                f[f.len() - payload..],
                "the payload, in order, once"
            );
            assert_eq!(plan.write(&f, 4, &mut out), None);
            assert_eq!(
                plan.write(&f, 0, &mut out[..100]),
                None,
                "too short an output"
            );
        }
    }

    #[test]
    fn udp_super_frames_become_one_datagram_per_segment() {
        for v6 in [false, true] {
            let f = super_frame(v6, false, 18 * 10 + 5);
            let plan = Plan::new(&hdr(v6, false, 18), &f).unwrap();
            assert_eq!(plan.count(), 11);
            let mut out = vec![0u8; 200];
            for i in 0..11 {
                let n = plan.write(&f, i, &mut out).unwrap();
                let seg = &out[..n];
                let l4 = if v6 { 54 } else { 34 };
                let plen = if i < 10 { 18 } else { 5 };
                assert_eq!(n, l4 + 8 + plen);
                assert_eq!(
                    u16::from_be_bytes([seg[l4 + 4], seg[l4 + 5]]) as usize,
                    8 + plen
                );
                assert!(l4_ok(seg, v6, false));
                assert_ne!(&seg[l4 + 6..l4 + 8], &[0, 0]);
            }
            // 64-byte frames, as a GSO sender of small datagrams makes them.
            assert_eq!(plan.max_len(), l4_len_of(v6) + 18);
        }
    }

    fn l4_len_of(v6: bool) -> usize {
        if v6 {
            54 + 8
        } else {
            34 + 8
        }
    }

    #[test]
    fn a_vlan_tag_stays_on_every_segment() {
        let mut f = super_frame(false, true, 3000);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        let plan = Plan::new(&hdr(false, true, 1448), &f).unwrap();
        let mut out = vec![0u8; 2000];
        let n = plan.write(&f, 1, &mut out).unwrap();
        assert_eq!(&out[12..16], &[0x81, 0, 0, 0x0a]);
        assert_eq!(n, 18 + 20 + 32 + 1448);
        assert_eq!(checksum::fold(checksum::sum(&out[18..38], 0)), 0xffff);
    }

    #[test]
    fn frames_that_are_not_what_the_header_says_are_refused() {
        let f = super_frame(false, true, 3000);
        let mut h = hdr(false, true, 1448);
        h.gso_type = GSO_UDP;
        assert_eq!(Plan::new(&h, &f), Err(GsoError::Type(GSO_UDP)));
        h.gso_type = GSO_TCPV6;
        assert!(matches!(Plan::new(&h, &f), Err(GsoError::Malformed(_))));
        h.gso_type = GSO_UDP_L4;
        assert!(matches!(Plan::new(&h, &f), Err(GsoError::Malformed(_))));
        let h = hdr(false, true, 0);
        assert!(matches!(Plan::new(&h, &f), Err(GsoError::Malformed(_))));
        let h = hdr(false, true, 1448);
        for cut in [0, 13, 20, 40, 50] {
            assert!(Plan::new(&h, &f[..cut]).is_err(), "cut at {cut}");
        }
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(Plan::new(&h, &arp).is_err());
        // Every prefix of a frame, with any header, is refused or cut within bounds.
        let mut out = vec![0u8; 70000];
        for cut in 0..f.len().min(200) {
            for t in [GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4] {
                let h = VnetHdr {
                    gso_type: t,
                    gso_size: 7,
                    ..VnetHdr::default()
                };
                if let Ok(p) = Plan::new(&h, &f[..cut]) {
                    for i in 0..p.count() {
                        assert!(p.write(&f[..cut], i, &mut out).is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn a_partial_checksum_is_finished() {
        let mut f = super_frame(false, false, 30);
        // The sender leaves the pseudo-header's sum in the field.
        let len = f.len() - 34;
        let s = checksum::sum(&f[26..34], 0);
        let s = checksum::fold(checksum::sum(&[0, IPPROTO_UDP, 0, len as u8], s));
        f[40..42].copy_from_slice(&s.to_be_bytes());
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        finish_checksum(&h, &mut f).unwrap();
        assert!(l4_ok(&f, false, false));
        let bad = VnetHdr {
            csum_start: 1000,
            ..h
        };
        assert!(finish_checksum(&bad, &mut f).is_err());
    }
}
