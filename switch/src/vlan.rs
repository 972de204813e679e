//! 802.1Q VLANs on a hub: which VLAN a frame entering a port belongs to, and in which
//! form (tagged or not) a port takes the frames of each VLAN.
//!
//! ```text
//!  untagged:  dst(6) src(6) type(2) payload          (also 802.1ad 0x88a8 frames:
//!  tagged:    dst(6) src(6) 0x8100 TCI(2) type(2) ...  their S-tag is payload here)
//!                                  └ PCP(3) DEI(1) VID(12)
//! ```
//!
//! Every port of a VLAN-aware hub is a [`VlanPort`]: an optional *native* VLAN, whose
//! frames it sends and takes untagged, and a set of *trunk* VLANs it sends and takes
//! tagged. An access port is a native VLAN and no trunk; a port given no VLAN settings
//! is a trunk of every VLAN with VLAN 0 native, so it passes frames exactly as they come.
//! A tag is pushed or popped only where the two ports' forms differ; a pushed tag has
//! PCP 0, a tag that came in keeps its PCP and DEI.

use std::sync::Arc;

use crate::pool::{BufCache, Pkt, Pool, HEADROOM};

/// The 802.1Q tag protocol identifier.
pub const TPID: u16 = 0x8100;
/// Largest usable VLAN id (4095 is reserved).
pub const MAX_VID: u16 = 4094;
/// The bytes a tag adds.
pub const TAG_LEN: usize = 4;

/// A set of VLAN ids (0..4095), a bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct VidSet([u64; 64]);

impl std::fmt::Debug for VidSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl VidSet {
    /// No VLAN.
    pub fn empty() -> VidSet {
        VidSet([0; 64])
    }

    /// Every usable VLAN, 1..=4094.
    pub fn all() -> VidSet {
        let mut s = VidSet::empty();
        for v in 1..=MAX_VID {
            s.insert(v);
        }
        s
    }

    /// Adds `vid` (ids over 4095 are ignored).
    pub fn insert(&mut self, vid: u16) {
        if let Some(w) = self.0.get_mut(usize::from(vid >> 6)) {
            *w |= 1 << (vid & 63);
        }
    }

    /// Whether `vid` is in the set.
    #[inline]
    pub fn contains(&self, vid: u16) -> bool {
        self.0
            .get(usize::from(vid >> 6))
            .is_some_and(|w| w & (1 << (vid & 63)) != 0)
    }

    /// The ids, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..4096u16).filter(|v| self.contains(*v))
    }

    /// Parses a list such as `10:20-29:100` (ids or inclusive ranges, separated by `:`,
    /// the separator QEMU's comma syntax leaves free; `,` is taken too where no comma
    /// syntax is in the way). Every id must be 1..=4094.
    pub fn parse(text: &str) -> Result<VidSet, String> {
        let mut s = VidSet::empty();
        let bad = |part: &str| {
            format!("'{part}' is not a VLAN id (1..={MAX_VID}) or a range of them such as 10-20")
        };
        let id = |t: &str| -> Option<u16> {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|v| (1..=MAX_VID).contains(v))
        };
        for part in text.split([':', ',']) {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (id(a), id(b)),
                None => (id(part), id(part)),
            };
            match (lo, hi) {
                (Some(lo), Some(hi)) if lo <= hi => (lo..=hi).for_each(|v| s.insert(v)),
                _ => return Err(bad(part)),
            }
        }
        Ok(s)
    }
}

impl std::fmt::Display for VidSet {
    /// The shortest list [`VidSet::parse`] reads back: `10:20-29`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        let mut run: Option<(u16, u16)> = None;
        let mut emit = |f: &mut std::fmt::Formatter<'_>, (a, b): (u16, u16)| {
            let sep = if std::mem::take(&mut first) { "" } else { ":" };
            if a == b {
                write!(f, "{sep}{a}")
            } else {
                write!(f, "{sep}{a}-{b}")
            }
        };
        for v in self.iter() {
            run = match run {
                Some((a, b)) if b + 1 == v => Some((a, v)),
                Some(r) => {
                    emit(f, r)?;
                    Some((v, v))
                }
                None => Some((v, v)),
            };
        }
        if let Some(r) = run {
            emit(f, r)?;
        }
        Ok(())
    }
}

/// How a frame comes out of a port: without a tag, or with one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// No 802.1Q tag.
    Untagged,
    /// An 802.1Q tag carrying the VLAN.
    Tagged,
}

/// The VLAN membership of one hub port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanPort {
    /// The VLAN of its untagged frames, if it takes any.
    pub native: Option<u16>,
    /// The VLANs it carries tagged.
    pub trunk: Option<Arc<VidSet>>,
}

impl Default for VlanPort {
    /// A port with no VLAN settings: every VLAN tagged, untagged frames as VLAN 0.
    fn default() -> VlanPort {
        VlanPort {
            native: Some(0),
            trunk: Some(Arc::new(VidSet::all())),
        }
    }
}

impl std::fmt::Display for VlanPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.native, &self.trunk) {
            (Some(v), None) => write!(f, "access VLAN {v}"),
            (None, None) => f.write_str("no VLAN"),
            (n, Some(t)) => {
                write!(f, "trunk of {t}")?;
                match n {
                    Some(v) => write!(f, ", untagged frames in VLAN {v}"),
                    None => f.write_str(", untagged frames refused"),
                }
            }
        }
    }
}

impl VlanPort {
    /// An access port of VLAN `vid`.
    pub fn access(vid: u16) -> VlanPort {
        VlanPort {
            native: Some(vid),
            trunk: None,
        }
    }

    /// A trunk of `vids`, with untagged frames in `native` (or refused without one).
    pub fn trunk(vids: VidSet, native: Option<u16>) -> VlanPort {
        VlanPort {
            native,
            trunk: Some(Arc::new(vids)),
        }
    }

    /// The VLAN of frame `f` entering this port and its form, or `None` when the port
    /// does not take it (tagged with a VLAN it does not carry, untagged without a native
    /// VLAN, or too short to say).
    #[inline]
    pub fn ingress(&self, f: &[u8]) -> Option<(u16, Form)> {
        if f.len() < 14 {
            return None;
        }
        if u16::from_be_bytes([f[12], f[13]]) != TPID {
            return self.native.map(|v| (v, Form::Untagged));
        }
        if f.len() < 18 {
            return None;
        }
        let vid = u16::from_be_bytes([f[14], f[15]]) & 0x0fff;
        let carried = match &self.trunk {
            // A trunk takes its native VLAN's tagged frames too (as Linux and OVS do).
            Some(t) => t.contains(vid) || self.native == Some(vid),
            // An access port takes no tagged frame.
            None => false,
        };
        if carried {
            Some((vid, Form::Tagged))
        } else {
            None
        }
    }

    /// The form in which this port takes frames of VLAN `vid`; `None`: not a member.
    #[inline]
    pub fn egress(&self, vid: u16) -> Option<Form> {
        if self.native == Some(vid) {
            Some(Form::Untagged)
        } else if self.trunk.as_ref().is_some_and(|t| t.contains(vid)) {
            Some(Form::Tagged)
        } else {
            None
        }
    }
}

/// The frame `f` of VLAN `vid` in the other form, written into `out` (which must hold
/// `f.len() + TAG_LEN` bytes): a tag pushed (PCP 0) when `f` has none, popped when it has
/// one. Returns the new length; `None` when `f` is too short to carry what it claims.
pub fn reform(f: &[u8], vid: u16, out: &mut [u8]) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    if u16::from_be_bytes([f[12], f[13]]) == TPID {
        let n = f.len().checked_sub(TAG_LEN).filter(|n| *n >= 14)?;
        let out = out.get_mut(..n)?;
        out[..12].copy_from_slice(&f[..12]);
        out[12..].copy_from_slice(&f[16..]);
        Some(n)
    } else {
        let n = f.len() + TAG_LEN;
        let out = out.get_mut(..n)?;
        out[..12].copy_from_slice(&f[..12]);
        out[12..14].copy_from_slice(&TPID.to_be_bytes());
        out[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
        out[16..].copy_from_slice(&f[12..]);
        Some(n)
    }
}

/// Turns packet `p` (of `pool`, `cache`'s pool) of VLAN `vid` into the other form: in place when it is the only
/// reference to its buffer (a push uses the headroom), else as a new copy (`p` is given
/// back to the cache). `None` when no buffer was free or the frame is too short; the
/// packet is returned to the cache then.
pub fn reform_pkt(pool: &Pool, cache: &mut BufCache, mut p: Pkt, vid: u16) -> Option<Pkt> {
    let (off, len) = (p.offset(), p.len());
    let tagged = {
        let f = pool.bytes(&p);
        if f.len() < 14 || (f.len() < 18 && u16::from_be_bytes([f[12], f[13]]) == TPID) {
            cache.free(p);
            return None;
        }
        u16::from_be_bytes([f[12], f[13]]) == TPID
    };
    if let Some(buf) = pool.buf_mut(&mut p) {
        if tagged {
            // Pop: the addresses move forward over the tag.
            buf.copy_within(off..off + 12, off + TAG_LEN);
            p.set_span(off + TAG_LEN, len - TAG_LEN);
            return Some(p);
        }
        if off >= TAG_LEN && off + len <= buf.len() {
            // Push: the addresses move back into the headroom, the tag goes after them.
            buf.copy_within(off..off + 12, off - TAG_LEN);
            buf[off + 8..off + 10].copy_from_slice(&TPID.to_be_bytes());
            buf[off + 10..off + 12].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
            p.set_span(off - TAG_LEN, len + TAG_LEN);
            return Some(p);
        }
    }
    let copy = reformed_copy(pool, cache, &p, vid);
    cache.free(p);
    copy
}

/// A new packet holding `p`'s frame of VLAN `vid` in the other form; `p` is untouched.
pub fn reformed_copy(pool: &Pool, cache: &mut BufCache, p: &Pkt, vid: u16) -> Option<Pkt> {
    let mut q = cache.alloc()?;
    let n = pool
        .buf_mut(&mut q)
        .and_then(|buf| reform(pool.bytes(p), vid, buf.get_mut(HEADROOM..)?));
    match n {
        Some(n) => {
            q.set_span(HEADROOM, n);
            Some(q)
        }
        None => {
            cache.free(q);
            None
        }
    }
}

/// The VLAN facts of one port's forwarding entry on a VLAN-aware hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortVlans {
    /// The port's own membership (for frames entering it).
    pub me: VlanPort,
    /// Each destination's, in the order of the entry's destinations.
    pub dests: Box<[VlanPort]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        if let Some(tci) = tag {
            f.extend_from_slice(&TPID.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend((0..46u8).map(|i| i.wrapping_mul(7)));
        f
    }

    #[test]
    fn lists_parse_and_print_back() {
        let s = VidSet::parse("10:20-23,4094").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10, 20, 21, 22, 23, 4094]);
        assert_eq!(s.to_string(), "10:20-23:4094");
        assert_eq!(VidSet::parse(&s.to_string()).unwrap(), s);
        for bad in ["", "0", "4095", "5-3", "x", "10:", "1-"] {
            assert!(VidSet::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(VidSet::all().iter().count(), 4094);
    }

    #[test]
    fn access_ports_take_untagged_and_refuse_tagged() {
        let p = VlanPort::access(10);
        assert_eq!(p.ingress(&frame(None)), Some((10, Form::Untagged)));
        assert_eq!(p.ingress(&frame(Some(20))), None);
        assert_eq!(p.ingress(&frame(Some(10))), None, "not even its own VLAN's");
        assert_eq!(p.egress(10), Some(Form::Untagged));
        assert_eq!(p.egress(20), None);
        // An 802.1ad outer tag is not a VLAN tag here: the frame is the port's VLAN's.
        let mut qinq = frame(None);
        qinq[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        assert_eq!(p.ingress(&qinq), Some((10, Form::Untagged)));
        assert_eq!(p.ingress(&frame(None)[..13]), None);
    }

    #[test]
    fn trunks_take_their_vlans_tagged_and_the_native_one_untagged() {
        let p = VlanPort::trunk(VidSet::parse("20-30").unwrap(), Some(5));
        assert_eq!(
            p.ingress(&frame(Some(0x2000 | 25))),
            Some((25, Form::Tagged))
        );
        assert_eq!(p.ingress(&frame(Some(31))), None);
        assert_eq!(p.ingress(&frame(None)), Some((5, Form::Untagged)));
        assert_eq!(p.ingress(&frame(Some(5))), Some((5, Form::Tagged)));
        assert_eq!(p.egress(25), Some(Form::Tagged));
        assert_eq!(p.egress(5), Some(Form::Untagged));
        let no_native = VlanPort::trunk(VidSet::parse("20").unwrap(), None);
        assert_eq!(no_native.ingress(&frame(None)), None);
        // A short tagged frame is refused, not read past its end.
        assert_eq!(no_native.ingress(&frame(Some(20))[..16]), None);
    }

    #[test]
    fn a_port_without_settings_passes_frames_as_they_are() {
        let p = VlanPort::default();
        assert_eq!(p.ingress(&frame(None)), Some((0, Form::Untagged)));
        assert_eq!(p.ingress(&frame(Some(7))), Some((7, Form::Tagged)));
        assert_eq!(p.egress(0), Some(Form::Untagged));
        assert_eq!(p.egress(7), Some(Form::Tagged));
    }

    #[test]
    fn packets_are_retagged_in_place_or_copied_when_shared() {
        let pool = Arc::new(crate::pool::Pool::new(16, 1518).unwrap());
        let mut cache = pool.cache();
        let f = frame(None);
        let p = cache.alloc_copy(&f).unwrap();
        let idx = p.index();
        let t = reform_pkt(&pool, &mut cache, p, 42).unwrap();
        assert_eq!(t.index(), idx, "pushed in place");
        assert_eq!(pool.bytes(&t), &frame(Some(42))[..]);
        // Shared: the other holders keep the tagged frame, the popped one is a copy.
        let mut fan = pool.fanout(t, 2);
        let (a, b) = (fan.next().unwrap(), fan.next().unwrap());
        drop(fan);
        let u = reform_pkt(&pool, &mut cache, a, 42).unwrap();
        assert_ne!(u.index(), idx, "copied");
        assert_eq!(pool.bytes(&u), &f[..]);
        assert_eq!(pool.bytes(&b), &frame(Some(42))[..]);
        // The last holder pops in place.
        let b = reform_pkt(&pool, &mut cache, b, 42).unwrap();
        assert_eq!((b.index(), pool.bytes(&b)), (idx, &f[..]));
        cache.free(b);
        cache.free(u);
        // A frame too short for its tag is refused and returned.
        let short = cache.alloc_copy(&frame(Some(3))[..16]).unwrap();
        assert!(reform_pkt(&pool, &mut cache, short, 3).is_none());
        drop(cache);
        assert_eq!(pool.free_count(), pool.count(), "nothing leaked");
    }

    #[test]
    fn push_then_pop_gives_the_frame_back_byte_for_byte() {
        let f = frame(None);
        let mut t = vec![0; f.len() + TAG_LEN];
        assert_eq!(reform(&f, 42, &mut t), Some(f.len() + 4));
        assert_eq!(t, frame(Some(42)));
        let mut back = vec![0; t.len() + TAG_LEN];
        let n = reform(&t, 42, &mut back).unwrap();
        assert_eq!(&back[..n], &f[..]);
        // Too small an output, or a truncated tag, is refused.
        assert_eq!(reform(&f, 42, &mut t[..10]), None);
        assert_eq!(reform(&t[..15], 42, &mut back), None);
    }
}
