//! The Internet checksum (RFC 1071: the ones' complement of the ones' complement sum of
//! 16-bit words), and completing one a sender left partial — as virtio-net's
//! `NEEDS_CSUM` and the kernel's `CHECKSUM_PARTIAL` leave it: the field already holds
//! the pseudo-header's sum, the rest is summed from `start` to the end of the frame.

/// The ones' complement sum of `data` (big-endian 16-bit words, an odd last byte
/// padded with zero) added to `sum`, not yet folded.
pub fn sum(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Four 16-bit words at once: their sum fits, with carries kept above bit 63
        // never reached because each addend is split in halves.
        sum += w >> 32;
        sum += w & 0xffff_ffff;
    }
    let rest = chunks.remainder();
    let mut pairs = rest.chunks_exact(2);
    for p in &mut pairs {
        sum += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum to 16 bits (end-around carries).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum of `data`: what goes into the field.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data, 0))
}

/// Completes a partial checksum in place: sums `frame[start..]` (the field at
/// `start + offset` holds the pseudo-header's sum) and stores the complement there.
/// False, and the frame unchanged, when the field does not fit in the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    if start > frame.len() || at.checked_add(2).is_none_or(|end| end > frame.len()) {
        return false;
    }
    let c = !fold(sum(&frame[start..], 0));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071, 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
        // Odd lengths pad with zero; any split gives the same sum.
        assert_eq!(fold(sum(&[0xab], 0)), 0xab00);
        for n in 0..d.len() {
            let s = fold(sum(&d[n..], sum(&d[..n], 0)));
            if n % 2 == 0 {
                assert_eq!(s, 0xddf2, "split at {n}");
            }
        }
    }

    #[test]
    fn an_ipv4_header_sums_to_all_ones_with_its_checksum() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h, 0)), 0xffff);
    }

    #[test]
    fn partial_checksums_are_completed_or_refused() {
        // A UDP datagram whose checksum field holds the pseudo-header sum.
        let mut f = vec![0u8; 40];
        f[10..12].copy_from_slice(&0x1234u16.to_be_bytes());
        f[20..24].copy_from_slice(b"data");
        assert!(complete_partial(&mut f, 4, 6));
        // A receiver sums the pseudo-header (here the 0x1234 the field held) and the
        // range with the field now set: all ones.
        assert_eq!(fold(sum(&f[4..], 0x1234)), 0xffff);
        let before = f.clone();
        assert!(!complete_partial(&mut f, 39, 1), "field past the end");
        assert!(!complete_partial(&mut f, 41, 0), "start past the end");
        assert!(!complete_partial(&mut f, usize::MAX, 2), "overflow");
        assert_eq!(f, before);
    }
}
