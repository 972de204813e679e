//! memif's wire: the 128-byte control messages and the layout of rings and descriptors
//! in shared memory, as DPDK's `net_memif`, libmemif and VPP lay them out (memif 2.0).
//!
//! ```text
//!  control (SOCK_SEQPACKET, one message per record, fds in SCM_RIGHTS):
//!   server ── HELLO ──► client                client ── INIT ──► server ── ACK
//!            client ── ADD_REGION (+memfd) ──► ACK     (each region)
//!            client ── ADD_RING (+eventfd) ──► ACK     (each ring, c2s then s2c)
//!            client ── CONNECT ──► server ── CONNECTED; either side: DISCONNECT(reason)
//!
//!  ring (in a region, at the offset ADD_RING gives):
//!   0  cookie u32 | flags u16 | head u16      64  tail u16      128  desc[1 << log2]
//!  desc (16 bytes): flags u16 | region u16 | length u32 | offset u32 | metadata u32
//! ```
//!
//! Every multi-byte field is in the host's byte order (both ends share the machine).
//! Messages are views over a fixed array: `parse` never panics, whatever the peer sent.

/// The first word of every ring.
pub const COOKIE: u32 = 0x03E3_1F20;
/// memif version 2.0, as `(major << 8) | minor`.
pub const VERSION: u16 = 2 << 8;
/// Size of every control message.
pub const MSG_SIZE: usize = 128;
/// Length of names in messages.
pub const NAME_SIZE: usize = 32;
/// Length of the secret.
pub const SECRET_SIZE: usize = 24;
/// Length of a disconnect reason.
pub const REASON_SIZE: usize = 96;
/// Largest ring, as log2 (DPDK's limit).
pub const MAX_LOG2_RING: u8 = 14;

/// Ring header bytes before the descriptors (two 64-byte cache lines).
pub const RING_HEADER: usize = 128;
/// Offset of `flags` in a ring.
pub const RING_FLAGS: usize = 4;
/// Offset of `head` in a ring.
pub const RING_HEAD: usize = 6;
/// Offset of `tail` in a ring.
pub const RING_TAIL: usize = 64;
/// Size of a descriptor.
pub const DESC_SIZE: usize = 16;
/// Ring flag: the consumer polls; the producer need not signal its eventfd.
pub const RING_FLAG_MASK_INT: u16 = 1;
/// Descriptor flag: the frame continues in the next descriptor.
pub const DESC_FLAG_NEXT: u16 = 1;
/// ADD_RING flag: the ring carries client → server frames.
pub const ADD_RING_C2S: u16 = 1;
/// Interface mode: Ethernet (the only one a switch port speaks).
pub const MODE_ETHERNET: u8 = 0;

const _: () = assert!(RING_HEAD + 2 <= RING_TAIL && RING_TAIL + 2 <= RING_HEADER);
const _: () = assert!(
    RING_HEAD.is_multiple_of(2)
        && RING_TAIL.is_multiple_of(2)
        && RING_HEADER.is_multiple_of(DESC_SIZE)
);

/// Bytes a ring of `1 << log2` slots takes in a region.
pub const fn ring_bytes(log2: u8) -> usize {
    RING_HEADER + DESC_SIZE * (1usize << log2)
}

/// Message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MsgType {
    /// Nothing (never sent).
    None = 0,
    /// Acknowledges INIT, ADD_REGION and ADD_RING.
    Ack = 1,
    /// Server → client, first: what the server supports.
    Hello = 2,
    /// Client → server: which interface, and proof of the secret.
    Init = 3,
    /// Client → server: a shared memory region (fd attached).
    AddRegion = 4,
    /// Client → server: a ring (interrupt eventfd attached).
    AddRing = 5,
    /// Client → server: all given, connect.
    Connect = 6,
    /// Server → client: connected.
    Connected = 7,
    /// Either way: the connection ends, with a reason.
    Disconnect = 8,
}

/// A decoded control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// ACK.
    Ack,
    /// HELLO.
    Hello {
        /// The server's name.
        name: String,
        /// Lowest version it speaks.
        min_version: u16,
        /// Highest version it speaks.
        max_version: u16,
        /// Highest region index it takes.
        max_region: u16,
        /// Highest server → client ring index it takes.
        max_s2c_ring: u16,
        /// Highest client → server ring index it takes.
        max_c2s_ring: u16,
        /// Largest ring, as log2.
        max_log2_ring_size: u8,
    },
    /// INIT.
    Init {
        /// The version the client speaks.
        version: u16,
        /// The interface it wants.
        id: u32,
        /// Interface mode (0: Ethernet).
        mode: u8,
        /// The secret, as given (NUL-padded).
        secret: [u8; SECRET_SIZE],
        /// The client's name.
        name: String,
    },
    /// ADD_REGION.
    AddRegion {
        /// Region index (0, 1, ... in order).
        index: u16,
        /// Its size in bytes.
        size: u64,
    },
    /// ADD_RING.
    AddRing {
        /// [`ADD_RING_C2S`] or 0.
        flags: u16,
        /// Ring index within its direction.
        index: u16,
        /// The region holding it.
        region: u16,
        /// Its offset there.
        offset: u32,
        /// Its size, as log2.
        log2_ring_size: u8,
        /// Bytes of private header before each buffer (0 here).
        private_hdr_size: u16,
    },
    /// CONNECT.
    Connect {
        /// The client's interface name.
        if_name: String,
    },
    /// CONNECTED.
    Connected {
        /// The server's interface name.
        if_name: String,
    },
    /// DISCONNECT.
    Disconnect {
        /// An error code (0 here).
        code: u32,
        /// Why.
        reason: String,
    },
}

fn u16_at(b: &[u8; MSG_SIZE], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; MSG_SIZE], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; MSG_SIZE], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(w)
}

/// A NUL-padded string field, up to its first NUL (lossy: names are for people).
fn str_at(b: &[u8; MSG_SIZE], at: usize, len: usize) -> String {
    let f = &b[at..at + len];
    let end = f.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&f[..end]).into_owned()
}

fn put_u16(b: &mut [u8; MSG_SIZE], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_ne_bytes());
}

fn put_u32(b: &mut [u8; MSG_SIZE], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// Copies `s` into a field of `len` bytes, cut to leave a terminating NUL (strlcpy).
fn put_str(b: &mut [u8; MSG_SIZE], at: usize, len: usize, s: &[u8]) {
    let n = s.len().min(len - 1);
    b[at..at + n].copy_from_slice(&s[..n]);
}

impl Msg {
    /// Decodes a message; `None` for an unknown type.
    pub fn parse(b: &[u8; MSG_SIZE]) -> Option<Msg> {
        // The union starts right after the 16-bit type (the struct is packed).
        const U: usize = 2;
        Some(match u16_at(b, 0) {
            1 => Msg::Ack,
            2 => Msg::Hello {
                name: str_at(b, U, NAME_SIZE),
                min_version: u16_at(b, U + 32),
                max_version: u16_at(b, U + 34),
                max_region: u16_at(b, U + 36),
                // `max_m2s_ring` then `max_s2m_ring` (server = master).
                max_s2c_ring: u16_at(b, U + 38),
                max_c2s_ring: u16_at(b, U + 40),
                max_log2_ring_size: b[U + 42],
            },
            3 => {
                let mut secret = [0u8; SECRET_SIZE];
                secret.copy_from_slice(&b[U + 7..U + 7 + SECRET_SIZE]);
                Msg::Init {
                    version: u16_at(b, U),
                    id: u32_at(b, U + 2),
                    mode: b[U + 6],
                    secret,
                    name: str_at(b, U + 7 + SECRET_SIZE, NAME_SIZE),
                }
            }
            4 => Msg::AddRegion {
                index: u16_at(b, U),
                size: u64_at(b, U + 2),
            },
            5 => Msg::AddRing {
                flags: u16_at(b, U),
                index: u16_at(b, U + 2),
                region: u16_at(b, U + 4),
                offset: u32_at(b, U + 6),
                log2_ring_size: b[U + 10],
                private_hdr_size: u16_at(b, U + 11),
            },
            6 => Msg::Connect {
                if_name: str_at(b, U, NAME_SIZE),
            },
            7 => Msg::Connected {
                if_name: str_at(b, U, NAME_SIZE),
            },
            8 => Msg::Disconnect {
                code: u32_at(b, U),
                reason: str_at(b, U + 4, REASON_SIZE),
            },
            _ => return None,
        })
    }

    /// Encodes the message.
    pub fn emit(&self) -> [u8; MSG_SIZE] {
        const U: usize = 2;
        let mut b = [0u8; MSG_SIZE];
        let ty = match self {
            Msg::Ack => MsgType::Ack,
            Msg::Hello {
                name,
                min_version,
                max_version,
                max_region,
                max_s2c_ring,
                max_c2s_ring,
                max_log2_ring_size,
            } => {
                put_str(&mut b, U, NAME_SIZE, name.as_bytes());
                put_u16(&mut b, U + 32, *min_version);
                put_u16(&mut b, U + 34, *max_version);
                put_u16(&mut b, U + 36, *max_region);
                put_u16(&mut b, U + 38, *max_s2c_ring);
                put_u16(&mut b, U + 40, *max_c2s_ring);
                b[U + 42] = *max_log2_ring_size;
                MsgType::Hello
            }
            Msg::Init {
                version,
                id,
                mode,
                secret,
                name,
            } => {
                put_u16(&mut b, U, *version);
                put_u32(&mut b, U + 2, *id);
                b[U + 6] = *mode;
                b[U + 7..U + 7 + SECRET_SIZE].copy_from_slice(secret);
                put_str(&mut b, U + 7 + SECRET_SIZE, NAME_SIZE, name.as_bytes());
                MsgType::Init
            }
            Msg::AddRegion { index, size } => {
                put_u16(&mut b, U, *index);
                b[U + 2..U + 10].copy_from_slice(&size.to_ne_bytes());
                MsgType::AddRegion
            }
            Msg::AddRing {
                flags,
                index,
                region,
                offset,
                log2_ring_size,
                private_hdr_size,
            } => {
                put_u16(&mut b, U, *flags);
                put_u16(&mut b, U + 2, *index);
                put_u16(&mut b, U + 4, *region);
                put_u32(&mut b, U + 6, *offset);
                b[U + 10] = *log2_ring_size;
                put_u16(&mut b, U + 11, *private_hdr_size);
                MsgType::AddRing
            }
            Msg::Connect { if_name } => {
                put_str(&mut b, U, NAME_SIZE, if_name.as_bytes());
                MsgType::Connect
            }
            Msg::Connected { if_name } => {
                put_str(&mut b, U, NAME_SIZE, if_name.as_bytes());
                MsgType::Connected
            }
            Msg::Disconnect { code, reason } => {
                put_u32(&mut b, U, *code);
                put_str(&mut b, U + 4, REASON_SIZE, reason.as_bytes());
                MsgType::Disconnect
            }
        };
        put_u16(&mut b, 0, ty as u16);
        b
    }
}

/// A secret as INIT carries it: NUL-padded, at most 24 bytes.
pub fn secret_field(s: &str) -> Option<[u8; SECRET_SIZE]> {
    let b = s.as_bytes();
    if b.len() > SECRET_SIZE || b.contains(&0) {
        return None;
    }
    let mut f = [0u8; SECRET_SIZE];
    f[..b.len()].copy_from_slice(b);
    Some(f)
}

/// Whether an INIT's secret matches ours (DPDK compares up to the first NUL, 24 bytes).
pub fn secret_matches(ours: &[u8; SECRET_SIZE], theirs: &[u8; SECRET_SIZE]) -> bool {
    let end = |s: &[u8; SECRET_SIZE]| s.iter().position(|&c| c == 0).unwrap_or(SECRET_SIZE);
    ours[..end(ours)] == theirs[..end(theirs)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut secret = [0u8; SECRET_SIZE];
        secret[..3].copy_from_slice(b"abc");
        for m in [
            Msg::Ack,
            Msg::Hello {
                name: "pollswitch".into(),
                min_version: VERSION,
                max_version: VERSION,
                max_region: 255,
                max_s2c_ring: 255,
                max_c2s_ring: 254,
                max_log2_ring_size: 14,
            },
            Msg::Init {
                version: VERSION,
                id: 7,
                mode: MODE_ETHERNET,
                secret,
                name: "app".into(),
            },
            Msg::AddRegion {
                index: 1,
                size: 1 << 33,
            },
            Msg::AddRing {
                flags: ADD_RING_C2S,
                index: 3,
                region: 0,
                offset: 4224,
                log2_ring_size: 10,
                private_hdr_size: 0,
            },
            Msg::Connect {
                if_name: "net_memif0".into(),
            },
            Msg::Connected {
                if_name: "n0".into(),
            },
            Msg::Disconnect {
                code: 0,
                reason: "ID not found".into(),
            },
        ] {
            assert_eq!(Msg::parse(&m.emit()), Some(m.clone()), "{m:?}");
        }
    }

    /// Byte positions of the packed C structs (`memif_msg_t`), written out by hand.
    #[test]
    fn fields_sit_where_the_c_structs_put_them() {
        let b = Msg::AddRing {
            flags: 0x0102,
            index: 0x0304,
            region: 0x0506,
            offset: 0x0708_090a,
            log2_ring_size: 0x0b,
            private_hdr_size: 0x0c0d,
        }
        .emit();
        let mut want = [0u8; 16];
        want[..2].copy_from_slice(&5u16.to_ne_bytes());
        want[2..4].copy_from_slice(&0x0102u16.to_ne_bytes());
        want[4..6].copy_from_slice(&0x0304u16.to_ne_bytes());
        want[6..8].copy_from_slice(&0x0506u16.to_ne_bytes());
        want[8..12].copy_from_slice(&0x0708_090au32.to_ne_bytes());
        want[12] = 0x0b;
        want[13..15].copy_from_slice(&0x0c0du16.to_ne_bytes());
        assert_eq!(&b[..16], &want);
        // INIT: version @2, id @4, mode @8, secret @9..33, name @33..65.
        let b = Msg::Init {
            version: VERSION,
            id: 0x1122_3344,
            mode: 0,
            secret: secret_field("s3cret").unwrap(),
            name: "x".into(),
        }
        .emit();
        assert_eq!(&b[4..8], &0x1122_3344u32.to_ne_bytes());
        assert_eq!(&b[9..15], b"s3cret");
        assert_eq!(b[33], b'x');
        // DISCONNECT: code @2, reason @6.
        let b = Msg::Disconnect {
            code: 9,
            reason: "bye".into(),
        }
        .emit();
        assert_eq!(&b[6..9], b"bye");
    }

    #[test]
    fn long_names_are_cut_and_unknown_types_refused() {
        let long = "n".repeat(100);
        let b = Msg::Connect {
            if_name: long.clone(),
        }
        .emit();
        assert_eq!(
            Msg::parse(&b),
            Some(Msg::Connect {
                if_name: "n".repeat(NAME_SIZE - 1)
            })
        );
        let mut b = [0u8; MSG_SIZE];
        b[0] = 99;
        assert_eq!(Msg::parse(&b), None);
        b[0] = 0;
        assert_eq!(Msg::parse(&b), None, "type NONE is never a message");
        // Anything else decodes without panicking.
        for t in 1..=8u8 {
            let mut b = [0xffu8; MSG_SIZE];
            b[0] = t;
            b[1] = 0;
            let _ = Msg::parse(&b);
        }
    }

    #[test]
    fn secrets() {
        let a = secret_field("abc").unwrap();
        assert!(secret_matches(&a, &secret_field("abc").unwrap()));
        assert!(!secret_matches(&a, &secret_field("abd").unwrap()));
        assert!(!secret_matches(&a, &[0; SECRET_SIZE]));
        assert!(secret_field(&"x".repeat(25)).is_none());
        assert!(secret_field(&"x".repeat(24)).is_some());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(ring_bytes(10), 128 + 16 * 1024);
    }
}
