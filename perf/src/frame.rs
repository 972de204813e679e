//! The test frame: an Ethernet frame whose payload carries what the sink needs to count
//! loss and reordering and to measure one-way latency.
//!
//! ```text
//!  0      6      12   14     18       22            30            38 .. size
//!  | dst  | src  | et | magic| stream | sequence    | send time   | zero padding
//!                 88b5 "PSwP" u32 BE   u64 BE        u64 BE ns (CLOCK_MONOTONIC)
//! ```
//!
//! The EtherType is IEEE's "local experimental" 0x88B5, so no host stack on the path
//! claims the frames. `stream` names the port that sent the frame (bit 31 set: sent during
//! warm-up, not counted). The send time is read from `CLOCK_MONOTONIC`, which every
//! process on the machine shares, so a sink in another process still measures one-way
//! latency. A `size` of 64 means 64 bytes of frame as it travels in a datagram or through
//! a tap, without the 4-byte FCS nothing in software carries.

use crate::sys;

/// IEEE 802 local experimental EtherType 1.
pub const ETHERTYPE: u16 = 0x88b5;
/// Marks our frames among whatever else arrives.
pub const MAGIC: [u8; 4] = *b"PSwP";
/// Bytes of header before the padding.
pub const HEADER_LEN: usize = field::STAMP.end;
/// Smallest frame the generator sends.
pub const MIN_SIZE: usize = 64;
/// Largest frame the generator sends.
pub const MAX_SIZE: usize = 9000;
/// Set in `stream` on frames sent during warm-up.
pub const WARMUP_BIT: u32 = 1 << 31;

/// Byte ranges of the fields.
mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const MAGIC: Range<usize> = 14..18;
    pub const STREAM: Range<usize> = 18..22;
    pub const SEQ: Range<usize> = 22..30;
    pub const STAMP: Range<usize> = 30..38;
}

/// A view of a test frame in any byte buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// A view without checks; accessors panic if `buf` is shorter than [`HEADER_LEN`].
    pub fn new_unchecked(buf: T) -> Frame<T> {
        Frame { buf }
    }

    /// A view of `buf` if it is long enough and carries our EtherType and magic; `None`
    /// for anything else (foreign traffic is counted, not an error).
    pub fn new_checked(buf: T) -> Option<Frame<T>> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN
            || b[field::ETHERTYPE] != ETHERTYPE.to_be_bytes()
            || b[field::MAGIC] != MAGIC
        {
            return None;
        }
        Some(Frame { buf })
    }

    /// Destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        array(&self.buf.as_ref()[field::DST])
    }

    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        array(&self.buf.as_ref()[field::SRC])
    }

    /// The sending port's stream id, warm-up bit included.
    pub fn stream(&self) -> u32 {
        u32::from_be_bytes(array(&self.buf.as_ref()[field::STREAM]))
    }

    /// Sequence number within the stream, from 0.
    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(array(&self.buf.as_ref()[field::SEQ]))
    }

    /// Send time, nanoseconds of `CLOCK_MONOTONIC`.
    pub fn stamp_ns(&self) -> u64 {
        u64::from_be_bytes(array(&self.buf.as_ref()[field::STAMP]))
    }

    /// Length of the whole frame.
    pub fn len(&self) -> usize {
        self.buf.as_ref().len()
    }

    /// Never true for a checked frame.
    pub fn is_empty(&self) -> bool {
        self.buf.as_ref().is_empty()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the sequence number.
    pub fn set_seq(&mut self, seq: u64) {
        self.buf.as_mut()[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    }

    /// Sets the send time.
    pub fn set_stamp_ns(&mut self, ns: u64) {
        self.buf.as_mut()[field::STAMP].copy_from_slice(&ns.to_be_bytes());
    }

    /// Sets the stream id.
    pub fn set_stream(&mut self, stream: u32) {
        self.buf.as_mut()[field::STREAM].copy_from_slice(&stream.to_be_bytes());
    }
}

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0; N];
    a.copy_from_slice(b);
    a
}

/// MAC address of stream `stream`'s sender: locally administered, unicast,
/// `02:70:73:` then the stream id's low 24 bits.
pub fn mac(stream: u32) -> [u8; 6] {
    let s = stream.to_be_bytes();
    [0x02, 0x70, 0x73, s[1], s[2], s[3]]
}

/// A `size`-byte test frame from stream `stream` to `dst`, sequence 0, no send time yet.
pub fn emit(size: usize, dst: [u8; 6], stream: u32) -> Vec<u8> {
    let mut buf = vec![0u8; size.max(HEADER_LEN)];
    buf[field::DST].copy_from_slice(&dst);
    buf[field::SRC].copy_from_slice(&mac(stream));
    buf[field::ETHERTYPE].copy_from_slice(&ETHERTYPE.to_be_bytes());
    buf[field::MAGIC].copy_from_slice(&MAGIC);
    let mut f = Frame::new_unchecked(&mut buf[..]);
    f.set_stream(stream);
    buf
}

/// Broadcast MAC: every switch floods it, learning or not.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The time now as the frames carry it.
pub fn now_ns() -> u64 {
    sys::monotonic_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-byte frame from stream 1 to 02:70:73:00:00:02, sequence 0x0102030405060708,
    /// sent at 1 s, as it appears on the wire.
    const FIXTURE: [u8; 64] = [
        0x02, 0x70, 0x73, 0x00, 0x00, 0x02, // dst
        0x02, 0x70, 0x73, 0x00, 0x00, 0x01, // src
        0x88, 0xb5, // ethertype
        b'P', b'S', b'w', b'P', // magic
        0x00, 0x00, 0x00, 0x01, // stream
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // seq
        0x00, 0x00, 0x00, 0x00, 0x3b, 0x9a, 0xca, 0x00, // stamp: 1e9 ns
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parses_fixture() {
        let f = Frame::new_checked(&FIXTURE[..]).expect("fixture is a test frame");
        assert_eq!(f.dst(), mac(2));
        assert_eq!(f.src(), mac(1));
        assert_eq!(f.stream(), 1);
        assert_eq!(f.seq(), 0x0102_0304_0506_0708);
        assert_eq!(f.stamp_ns(), 1_000_000_000);
        assert_eq!(f.len(), 64);
    }

    #[test]
    fn emits_fixture() {
        let mut buf = emit(64, mac(2), 1);
        let mut f = Frame::new_unchecked(&mut buf[..]);
        f.set_seq(0x0102_0304_0506_0708);
        f.set_stamp_ns(1_000_000_000);
        assert_eq!(buf[..], FIXTURE[..]);
    }

    #[test]
    fn rejects_foreign_and_short_frames() {
        assert!(Frame::new_checked(&FIXTURE[..HEADER_LEN - 1]).is_none());
        assert!(Frame::new_checked(&FIXTURE[..HEADER_LEN]).is_some());
        let mut ipv6 = FIXTURE;
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert!(Frame::new_checked(&ipv6[..]).is_none());
        let mut other = FIXTURE;
        other[14] = b'X';
        assert!(Frame::new_checked(&other[..]).is_none());
    }

    #[test]
    fn emit_keeps_size_and_warmup_bit() {
        for size in [MIN_SIZE, 1518, MAX_SIZE] {
            let buf = emit(size, BROADCAST, 7 | WARMUP_BIT);
            let f = Frame::new_checked(&buf[..]).unwrap();
            assert_eq!(f.len(), size);
            assert_eq!(f.stream(), 7 | WARMUP_BIT);
            assert_eq!(f.src(), mac(7));
        }
    }
}
