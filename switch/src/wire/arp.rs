//! The RARP frame QEMU's announce-self sends for a NIC's MAC address: 60 bytes,
//! broadcast, reverse request (op 3) with both hardware addresses set to the MAC and
//! both protocol addresses zero, padded with zeros.
//!
//! ```text
//!  dst ff:ff:ff:ff:ff:ff │ src MAC │ 0x8035 │ htype 1 │ ptype 0x0800 │ hlen 6 │ plen 4 │
//!  op 3 │ sender MAC │ sender IP 0 │ target MAC │ target IP 0 │ zeros to 60 bytes
//! ```

use super::ethernet::{BROADCAST, ETHERTYPE_RARP};
use super::Mac;

/// Length of the announce frame (the Ethernet minimum without FCS).
pub const RARP_LEN: usize = 60;

/// Builds the announce frame for `mac`.
pub fn rarp_announce(mac: &Mac) -> [u8; RARP_LEN] {
    let mut f = [0u8; RARP_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // htype: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype: IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // op: reverse request
    f[22..28].copy_from_slice(mac); // sender hardware address
    f[32..38].copy_from_slice(mac); // target hardware address
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 10 sent for 52:54:00:12:34:56 (observed, PEERS.md layout).
    static FIXTURE: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x80, 0x35, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x03, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00,
        0x00, 0x00, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn matches_qemu_layout() {
        let f = rarp_announce(&[0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(&f[..42], &FIXTURE[..]);
        assert!(f[42..].iter().all(|b| *b == 0));
    }
}
