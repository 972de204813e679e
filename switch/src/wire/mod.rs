//! Wire formats as zero-copy views: parse with `new_checked`, after which no accessor
//! can panic; emit into a caller's buffer. Fixtures sit beside each format.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod gso;

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC the way QEMU prints one (`52:54:00:12:34:56`).
pub fn mac_to_string(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Parses `xx:xx:xx:xx:xx:xx` (also with `-`).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip() {
        let m = parse_mac("52:54:00:AB:cd:0f").unwrap();
        assert_eq!(m, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac_to_string(&m), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "52:54:00:ab:cd:xg",
            "5254:00:ab:cd:0f:1",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
