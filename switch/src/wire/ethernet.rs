//! Ethernet II frames, with an optional 802.1Q tag.
//!
//! ```text
//!  0        6        12        14 (or 18 with a tag)
//!  │ dst    │ src    │ type    │ payload ...
//!                    └ 0x8100: TCI (2) then the real type (2)
//! ```

use super::Mac;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const TCI: Range<usize> = 14..16;
    pub const HEADER_LEN: usize = 14;
    pub const TAGGED_LEN: usize = 18;
}

/// 802.1Q tag protocol identifier.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// 802.1ad (QinQ) service tag protocol identifier.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Reverse ARP.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// The broadcast address.
pub const BROADCAST: Mac = [0xff; 6];

/// A read-only view of an Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Checks that the buffer holds at least a header (and the tag if it says so).
    pub fn new_checked(buf: T) -> Option<Frame<T>> {
        let b = buf.as_ref();
        if b.len() < field::HEADER_LEN {
            return None;
        }
        let tagged = u16::from_be_bytes([b[12], b[13]]) == ETHERTYPE_VLAN;
        if tagged && b.len() < field::TAGGED_LEN {
            return None;
        }
        Some(Frame { buf })
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Destination address.
    pub fn dst(&self) -> Mac {
        self.b()[field::DST].try_into().unwrap_or_default()
    }

    /// Source address.
    pub fn src(&self) -> Mac {
        self.b()[field::SRC].try_into().unwrap_or_default()
    }

    /// The outer EtherType (0x8100 for a tagged frame).
    pub fn ethertype(&self) -> u16 {
        let t = &self.b()[field::ETHERTYPE];
        u16::from_be_bytes([t[0], t[1]])
    }

    /// The VLAN id of a tagged frame.
    pub fn vlan_id(&self) -> Option<u16> {
        if self.ethertype() != ETHERTYPE_VLAN {
            return None;
        }
        let t = &self.b()[field::TCI];
        Some(u16::from_be_bytes([t[0], t[1]]) & 0x0fff)
    }
}

/// Where a frame's payload starts past its Ethernet header and up to two VLAN tags
/// (802.1Q or 802.1ad), and the EtherType that names it (a tag's own when there are
/// more than two); `None` when the frame is too short to say.
pub fn payload_of(f: &[u8]) -> Option<(usize, u16)> {
    let ethertype = |at: usize| f.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut at = field::ETHERTYPE.start;
    for _ in 0..2 {
        let et = ethertype(at)?;
        if et != ETHERTYPE_VLAN && et != ETHERTYPE_QINQ {
            return Some((at + 2, et));
        }
        at += 4;
    }
    Some((at + 2, ethertype(at)?))
}

/// Whether an address is a group (multicast or broadcast) address.
pub fn is_group(m: &Mac) -> bool {
    m[0] & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_found_past_up_to_two_tags() {
        let mut f = UNTAGGED.to_vec();
        assert_eq!(payload_of(&f), Some((14, ETHERTYPE_IPV4)));
        f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(payload_of(&f), Some((18, ETHERTYPE_IPV4)));
        f.splice(12..12, [0x88, 0xa8, 0x00, 0x14]);
        assert_eq!(payload_of(&f), Some((22, ETHERTYPE_IPV4)));
        f.splice(12..12, [0x81, 0x00, 0x00, 0x1e]);
        assert_eq!(
            payload_of(&f),
            Some((22, ETHERTYPE_VLAN)),
            "a third tag is not looked through"
        );
        for n in 0..14 {
            assert_eq!(payload_of(&UNTAGGED[..n]), None, "{n} bytes");
        }
        assert_eq!(
            payload_of(&f[..17]),
            None,
            "a tag without the type behind it"
        );
    }

    static UNTAGGED: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 1, 2, 3, 0x08, 0x00,
    ];
    static TAGGED: [u8; 18] = [
        1, 0, 0x5e, 0, 0, 1, 0x52, 0x54, 0, 1, 2, 3, 0x81, 0x00, 0x20, 0x07, 0x08, 0x00,
    ];

    #[test]
    fn parses_fixtures() {
        let f = Frame::new_checked(&UNTAGGED[..]).unwrap();
        assert_eq!(f.dst(), BROADCAST);
        assert_eq!(f.src(), [0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(f.ethertype(), 0x0800);
        assert_eq!(f.vlan_id(), None);
        let t = Frame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(t.vlan_id(), Some(7));
        assert!(is_group(&t.dst()));
    }

    #[test]
    fn short_buffers_are_refused() {
        assert!(Frame::new_checked(&UNTAGGED[..13]).is_none());
        assert!(Frame::new_checked(&TAGGED[..17]).is_none());
    }
}
