//! Fuzz targets of the backends' wire formats: each takes arbitrary bytes and checks a
//! property, panicking when it fails. `fuzz/` drives them with libFuzzer
//! (coverage-guided, nightly); the tests replay the committed corpora on stable.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use switch::DropReason;

use crate::l2tpv3::Layout;
use crate::memif::wire::{Msg, MSG_SIZE};
use crate::sys::RawAddr;
use crate::tunnel::Tunnel;
use crate::vxlan::{self, header_vni, Remote, VxlanConfig};

/// memif control messages, as a peer may send them: whatever decodes encodes to bytes
/// that decode to a message which then survives encoding unchanged (names are text:
/// bytes that are not UTF-8 become U+FFFD on the first decode, and a name that fills
/// its whole field, with no NUL, loses its last byte once, as strlcpy would).
pub fn memif_msg(data: &[u8]) {
    let mut b = [0u8; MSG_SIZE];
    let n = data.len().min(MSG_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    if let Some(m) = Msg::parse(&b) {
        let once = Msg::parse(&m.emit()).expect("an emitted message parses");
        let twice = Msg::parse(&once.emit()).expect("an emitted message parses");
        assert_eq!(twice, once);
    }
}

/// L2TPv3 data headers: a layout (from the first byte) accepts the header it emits for
/// any session and cookie, and judges any other bytes without panicking.
pub fn l2tpv3(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let layout = Layout {
        udp: sel & 1 != 0,
        cookie_len: [0, 4, 8, 0][usize::from(sel >> 1 & 3)],
        counter: sel & 8 != 0,
        offset: usize::from(sel >> 4),
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        for (k, b) in rest.iter().skip(i).take(8).enumerate() {
            w[k] = *b;
        }
        u64::from_be_bytes(w)
    };
    let (session, cookie, counter) = (word(0) as u32, word(4), word(12) as u32);
    let mut h = vec![0xa5u8; layout.len()];
    layout.emit(&mut h, session, cookie, counter);
    assert!(
        layout.accepts(&h, session, cookie),
        "{layout:?}: own header refused"
    );
    let _ = layout.accepts(rest, session, cookie);
    // A shorter buffer is left alone, never written past.
    let mut short = vec![0x5au8; layout.len() - 1];
    layout.emit(&mut short, session, cookie, counter);
    assert!(short.iter().all(|&b| b == 0x5a));
}

/// VXLAN: headers round-trip; a learning VTEP fed datagrams (header, source, inner
/// frame) from arbitrary bytes filters what is not its VNI, never learns more than its
/// table holds, and sends every frame to its group or to a VTEP it learned.
pub fn vxlan(data: &[u8]) {
    let vni = u32::from_be_bytes([0, *data.first().unwrap_or(&0), 0, 1]);
    let mut h = [0u8; vxlan::HDR_LEN];
    vxlan::emit_header(&mut h, vni);
    assert_eq!(header_vni(&h), Some(vni));
    let _ = header_vni(data);
    let group = Ipv4Addr::new(239, 1, 1, 1);
    let cfg = VxlanConfig {
        vni,
        remote: Remote::Group(group),
        local: Some(Ipv4Addr::new(10, 0, 0, 1).into()),
        port: vxlan::PORT,
        ttl: None,
        fdb_size: 4,
        ageing: Duration::from_secs(300),
    };
    let mut v = vxlan::Vtep::for_fuzzing(cfg);
    let mut learned = Vec::new();
    // Datagrams of 40 bytes: 8 of header, 2 selecting the source, 30 of frame.
    for d in data.chunks_exact(40).take(64) {
        let from = SocketAddr::new(
            Ipv4Addr::new(10, 0, 1, d[8]).into(),
            4789 + u16::from(d[9] & 1),
        );
        let (hdr, frame) = (&d[..8], &d[10..]);
        let verdict = v.accept(hdr, Some(from), frame);
        if header_vni(hdr) != Some(vni) {
            assert_eq!(verdict, Some(DropReason::Filtered));
        } else if verdict.is_none() {
            learned.push(from.ip());
        }
        let mut to = RawAddr::empty();
        let mut out = [0u8; vxlan::HDR_LEN];
        v.emit(&mut out, frame, 1, &mut to);
        assert_eq!(header_vni(&out), Some(vni));
        let to = to.to_std().expect("a destination");
        assert_eq!(to.port(), vxlan::PORT);
        assert!(
            to.ip() == std::net::IpAddr::from(group) || learned.contains(&to.ip()),
            "sent to {to}, neither the group nor a VTEP it heard from"
        );
        assert!(v.learned_count() <= 4, "the table grew past its bound");
    }
}

/// vde_switch's `sockaddr_un`: whatever reply decodes to a path encodes back to the
/// same path, and a path encodes to an address that decodes back to it.
pub fn vde(data: &[u8]) {
    use crate::vde::{sockaddr_un, sockaddr_un_path, SOCKADDR_UN_LEN};
    use std::os::unix::ffi::OsStrExt;
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    let n = data.len().min(SOCKADDR_UN_LEN);
    sa[..n].copy_from_slice(&data[..n]);
    if let Some(p) = sockaddr_un_path(&sa) {
        // A path filling all 108 bytes (no NUL, as Linux allows) decodes, but cannot be
        // written back with its NUL: refused (a clear error where it is used), never cut.
        match sockaddr_un(&p) {
            Some(again) => assert_eq!(sockaddr_un_path(&again).as_deref(), Some(p.as_path())),
            None => assert_eq!(p.as_os_str().len(), SOCKADDR_UN_LEN - 2),
        }
    }
    let path: Vec<u8> = data.iter().copied().filter(|&b| b != 0).collect();
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
    if let Some(sa) = sockaddr_un(p) {
        let back = sockaddr_un_path(&sa);
        assert_eq!(back.as_deref(), (!path.is_empty()).then_some(p));
    }
}

/// xorshift64: the schedules of the stream and ring targets, from input bytes.
struct Schedule(u64);

impl Schedule {
    fn new(seed: u64) -> Schedule {
        Schedule(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// What cutting a stream gives, frames owned.
#[derive(Debug, PartialEq, Eq)]
enum StreamCut {
    Frame(Vec<u8>),
    Skipped(DropReason),
    OutOfStep,
}

/// QEMU's stream framing as a peer may send it: a byte stream (after a byte choosing
/// the largest frame and one seeding the schedule) read by a [`Reassembler`] in pieces
/// of varying size, its reader pausing after varying numbers of frames, is cut exactly
/// as a reading of the whole stream at once cuts it; a reader waiting for more bytes
/// always has room to read them into (a read of 0 bytes would end the connection); the
/// frames cut, framed again by the send side, cut back to themselves.
///
/// [`Reassembler`]: crate::socket::framing::Reassembler
pub fn stream(data: &[u8]) {
    use crate::socket::framing::{push_frame, Cut, Reassembler, MAX_STREAM_FRAME, PREFIX};
    let [size, seed, stream @ ..] = data else {
        return;
    };
    let max = match size & 3 {
        0 => 1 + usize::from(size >> 2),
        1 => 1518,
        2 => 9216,
        _ => MAX_STREAM_FRAME - usize::from(size >> 2),
    };
    let mut sched = Schedule::new(u64::from(*seed) << 32 | stream.len() as u64);
    let chunk = 1 + sched.below(64);

    // The whole stream at once.
    let mut want = Vec::new();
    let mut i = 0;
    while stream.len() - i >= PREFIX {
        let p = &stream[i..i + PREFIX];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if len > MAX_STREAM_FRAME {
            want.push(StreamCut::OutOfStep);
            break;
        }
        if len == 0 || len > max {
            want.push(StreamCut::Skipped(if len == 0 {
                DropReason::Undersize
            } else {
                DropReason::Oversize
            }));
            i = (i + PREFIX + len).min(stream.len());
            continue;
        }
        if stream.len() - i < PREFIX + len {
            break;
        }
        want.push(StreamCut::Frame(
            stream[i + PREFIX..i + PREFIX + len].to_vec(),
        ));
        i += PREFIX + len;
    }

    // Piece by piece.
    let own = |c: Cut<'_>| match c {
        Cut::Frame(f) => StreamCut::Frame(f.to_vec()),
        Cut::Skipped(why) => StreamCut::Skipped(why),
    };
    let mut r = Reassembler::new(max, chunk);
    let mut got = Vec::new();
    let mut fed = 0;
    'feed: loop {
        let mut waiting = false;
        for _ in 0..sched.below(5) {
            match r.next() {
                None => {
                    waiting = true;
                    break;
                }
                Some(Ok(c)) => got.push(own(c)),
                Some(Err(_)) => {
                    got.push(StreamCut::OutOfStep);
                    assert_eq!(r.buffered(), 0, "out of step, bytes kept");
                    break 'feed;
                }
            }
        }
        if fed == stream.len() {
            loop {
                match r.next() {
                    None => break 'feed,
                    Some(Ok(c)) => got.push(own(c)),
                    Some(Err(_)) => {
                        got.push(StreamCut::OutOfStep);
                        break 'feed;
                    }
                }
            }
        }
        let room = r.room();
        assert!(
            !waiting || !room.is_empty(),
            "waiting for the rest of a frame with no room to read it into"
        );
        if room.is_empty() {
            continue;
        }
        let n = (1 + sched.below(room.len().min(4 * chunk))).min(stream.len() - fed);
        room[..n].copy_from_slice(&stream[fed..fed + n]);
        r.received(n);
        fed += n;
    }
    assert_eq!(got, want, "cut piece by piece vs whole");

    // Framed again, cut back.
    let frames: Vec<&[u8]> = want
        .iter()
        .filter_map(|c| match c {
            StreamCut::Frame(f) => Some(&f[..]),
            _ => None,
        })
        .collect();
    let mut again = Vec::new();
    for f in &frames {
        push_frame(&mut again, f);
    }
    let mut r = Reassembler::new(max, again.len());
    let room = r.room();
    room[..again.len()].copy_from_slice(&again);
    r.received(again.len());
    for f in frames {
        assert_eq!(r.next(), Some(Ok(Cut::Frame(f))), "a framed frame cut back");
    }
    assert_eq!(r.next(), None);
}

/// The peer's side of the memif ring layout, written from the memif 2.0 layout rather
/// than through [`crate::memif::shm::RingView`], so that the property checks do not
/// lean on the code they check.
struct PeerRing<'a> {
    region: &'a crate::memif::shm::Region,
    off: usize,
    size: u16,
}

impl PeerRing<'_> {
    fn desc_at(&self, slot: u16) -> usize {
        use crate::memif::wire::{DESC_SIZE, RING_HEADER};
        self.off + RING_HEADER + DESC_SIZE * usize::from(slot & (self.size - 1))
    }

    fn desc(&self, slot: u16) -> crate::memif::shm::Desc {
        let mut b = [0u8; 12];
        assert!(self.region.read(self.desc_at(slot), &mut b));
        crate::memif::shm::Desc {
            flags: u16::from_ne_bytes([b[0], b[1]]),
            region: u16::from_ne_bytes([b[2], b[3]]),
            length: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            offset: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    fn set_desc(&self, slot: u16, d: crate::memif::shm::Desc) {
        let mut b = [0u8; 12];
        b[..2].copy_from_slice(&d.flags.to_ne_bytes());
        b[2..4].copy_from_slice(&d.region.to_ne_bytes());
        b[4..8].copy_from_slice(&d.length.to_ne_bytes());
        b[8..12].copy_from_slice(&d.offset.to_ne_bytes());
        assert!(self.region.write(self.desc_at(slot), &b));
    }

    /// `head` (true) or `tail`.
    fn index(&self, head: bool) -> u16 {
        use crate::memif::wire::{RING_HEAD, RING_TAIL};
        let mut b = [0u8; 2];
        let at = self.off + if head { RING_HEAD } else { RING_TAIL };
        assert!(self.region.read(at, &mut b));
        u16::from_ne_bytes(b)
    }

    fn set_index(&self, head: bool, v: u16) {
        use crate::memif::wire::{RING_HEAD, RING_TAIL};
        let at = self.off + if head { RING_HEAD } else { RING_TAIL };
        assert!(self.region.write(at, &v.to_ne_bytes()));
    }
}

/// memif rings as the worker reads and fills them, with the peer hostile: after a byte
/// choosing the role (server or client), ring size, buffer size and receive room, the
/// input is a script of peer steps (any descriptor in any slot, any index moved
/// anywhere, or a well-behaved batch) and worker steps (receive a burst, send a burst).
/// Both regions end where inaccessible address space starts and runs past anything a
/// descriptor can name, so a copy outside them faults. Checked against a model: a
/// peer index the ring cannot hold is a fault, and only that; each frame received is
/// copied whole from the buffers its descriptors name when they all lie in their
/// regions and fit the room, is refused as too long or a bad descriptor otherwise, and
/// nothing is written past the room; each frame sent lands in the buffers the peer
/// posted (a server) or in our own (a client), its descriptors naming exactly them,
/// or the ring is full or the buffer refused; the indices we publish are the slots we
/// consumed or filled.
pub fn memif_ring(data: &[u8]) {
    use std::sync::Arc;

    use crate::memif::queue::{Push, Role, RxQueue, Taken, TxQueue};
    use crate::memif::shm::{Desc, Region, Regions, RingView};
    use crate::memif::wire::{ring_bytes, DESC_FLAG_NEXT};

    const PAGE: usize = 4096;
    /// Bytes beyond the room that must stay as they are.
    const CANARY: usize = 64;

    let Some((&sel, mut ops)) = data.split_first() else {
        return;
    };
    let role = if sel & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let log2 = (sel >> 1) & 3;
    let size = 1u16 << log2;
    let slots = usize::from(size);
    let buf = [64usize, 256, 2048, 60][usize::from(sel >> 3 & 3)];
    let room = [60usize, 1518, 9216, 100][usize::from(sel >> 5 & 3)];
    let rb = ring_bytes(log2);
    let bufs_at = 2 * rb;
    let lens = [(bufs_at + 2 * slots * buf).next_multiple_of(PAGE), 5 * PAGE];
    let r0 = Arc::new(Region::create_fenced("fuzz-0", lens[0]).expect("region 0"));
    let r1 = Arc::new(Region::create_fenced("fuzz-1", lens[1]).expect("region 1"));
    // Buffers hold a pattern, so that a copy from the wrong place shows.
    for (r, len) in [(&r0, lens[0]), (&r1, lens[1])] {
        let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        assert!(r.write(0, &pattern));
    }
    let regions = Regions(vec![r0.clone(), r1.clone()]);
    let inside = |region: u16, off: u32, len: u64| {
        lens.get(usize::from(region))
            .is_some_and(|&l| u64::from(off) + len <= l as u64)
    };
    let read = |region: u16, off: u32, len: usize| {
        let mut v = vec![0u8; len];
        assert!(regions.0[usize::from(region)].read(off as usize, &mut v));
        v
    };
    let c2s = RingView::new(r0.clone(), 0, log2).expect("c2s ring");
    let s2c = RingView::new(r0.clone(), rb, log2).expect("s2c ring");
    c2s.init(0);
    s2c.init(0);
    let own = |first: usize| -> Vec<Desc> {
        (0..slots)
            .map(|i| Desc {
                flags: 0,
                region: 0,
                length: buf as u32,
                offset: (bufs_at + (first + i) * buf) as u32,
            })
            .collect()
    };
    let peer_c2s = PeerRing {
        region: &r0,
        off: 0,
        size,
    };
    let peer_s2c = PeerRing {
        region: &r0,
        off: rb,
        size,
    };
    // The worker receives on one ring and sends on the other; the peer writes both.
    let (rxr, txr, rx_view, tx_view) = match role {
        Role::Server => (&peer_c2s, &peer_s2c, c2s, s2c),
        Role::Client => (&peer_s2c, &peer_c2s, s2c, c2s),
    };
    let client = role == Role::Client;
    let tx_bufs = if client { own(slots) } else { Vec::new() };
    let mut rx = RxQueue::new(rx_view, role, if client { own(0) } else { Vec::new() });
    let mut tx = TxQueue::new(tx_view, role, tx_bufs.clone());
    // The model's next slot to read.
    let mut last: u16 = 0;
    let mut dst = vec![0u8; room + CANARY];

    let take = |ops: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        let (a, b) = ops.split_at_checked(n)?;
        *ops = b;
        Some(a.to_vec())
    };
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut steps = 0;
    while let Some(op) = take(&mut ops, 1) {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op[0] % 5 {
            // The peer writes any descriptor into any slot.
            0 => {
                let Some(b) = take(&mut ops, 12) else { break };
                let ring = if b[0] & 1 == 0 { rxr } else { txr };
                ring.set_desc(
                    u16::from(b[1]),
                    Desc {
                        flags: u16::from(b[2] & 3),
                        region: u16::from(b[3] % 3),
                        length: u32_at(&b, 4),
                        offset: u32_at(&b, 8),
                    },
                );
            }
            // The peer moves any index by anything.
            1 => {
                let Some(b) = take(&mut ops, 3) else { break };
                let ring = if b[0] & 1 == 0 { rxr } else { txr };
                let head = b[0] & 2 != 0;
                ring.set_index(head, ring.index(head).wrapping_add(u16_at(&b, 1)));
            }
            // The peer does its part right: fills (or posts, or takes back) n slots.
            2 => {
                let Some(b) = take(&mut ops, 4) else { break };
                let n = u16::from(b[0]) % (size + 1);
                let len = 1 + u32::from(u16_at(&b, 1)) % 2048;
                // Buffers side by side in region 1 (8 of 2 KiB and a bit fit).
                let off = |i: u16| u32::from(i) * len + u32::from(b[3]);
                if b[0] & 0x80 == 0 {
                    // Frames for the worker: a client fills slots from head with its own
                    // buffers (region 1 here); a server fills posted slots from tail,
                    // writing lengths only.
                    let at = rxr.index(!client);
                    for i in 0..n {
                        let s = at.wrapping_add(i);
                        let d = if client {
                            Desc {
                                flags: 0,
                                length: len.min(rxr.desc(s).length),
                                ..rxr.desc(s)
                            }
                        } else {
                            Desc {
                                flags: 0,
                                region: 1,
                                length: len,
                                offset: off(i),
                            }
                        };
                        rxr.set_desc(s, d);
                    }
                    rxr.set_index(!client, at.wrapping_add(n));
                } else if client {
                    // A server done with what the worker sent.
                    txr.set_index(false, txr.index(true));
                } else {
                    // A client posting empty buffers for the worker to fill.
                    let at = txr.index(true);
                    for i in 0..n {
                        txr.set_desc(
                            at.wrapping_add(i),
                            Desc {
                                flags: 0,
                                region: 1,
                                length: len,
                                offset: off(i),
                            },
                        );
                    }
                    txr.set_index(true, at.wrapping_add(n));
                }
            }
            // The worker receives a burst.
            3 => {
                let Some(b) = take(&mut ops, 1) else { break };
                let produced = rxr.index(!client);
                let avail = produced.wrapping_sub(last);
                let begun = rx.begin();
                assert_eq!(
                    begun.is_err(),
                    avail > size,
                    "receive: fault iff impossible"
                );
                let Ok(n) = begun else { return };
                assert_eq!(n, avail);
                // As client, what it had posted: `size` slots from `last` on.
                let posted = last.wrapping_add(size);
                rx.prefetch(&regions, u16::from(b[0]));
                let mut left = avail;
                for _ in 0..b[0] % 40 {
                    dst.fill(0xee);
                    // The model: the frame at `last`, from the descriptors as they are.
                    let want: Result<Option<(Taken, u16)>, ()> = 'model: {
                        if left == 0 {
                            break 'model Ok(None);
                        }
                        let mut n: u16 = 1;
                        while rxr.desc(last.wrapping_add(n - 1)).flags & DESC_FLAG_NEXT != 0 {
                            if n >= size {
                                break 'model Err(());
                            }
                            if n >= left {
                                break 'model Ok(None);
                            }
                            n += 1;
                        }
                        let mut at = 0u64;
                        for i in 0..n {
                            let d = rxr.desc(last.wrapping_add(i));
                            if at + u64::from(d.length) > room as u64 {
                                break 'model Ok(Some((Taken::TooLong, n)));
                            }
                            if !inside(d.region, d.offset, u64::from(d.length)) {
                                break 'model Ok(Some((Taken::BadDesc, n)));
                            }
                            at += u64::from(d.length);
                        }
                        Ok(Some((Taken::Frame(at as usize), n)))
                    };
                    let mut expect = Vec::new();
                    if let Ok(Some((Taken::Frame(_), n))) = want {
                        for i in 0..n {
                            let d = rxr.desc(last.wrapping_add(i));
                            expect.extend(read(d.region, d.offset, d.length as usize));
                        }
                    }
                    let got = rx.next_frame(&regions, &mut dst[..room]);
                    assert!(
                        dst[room..].iter().all(|&x| x == 0xee),
                        "written past the room"
                    );
                    match (want, got) {
                        (Err(()), Err(_)) => return,
                        (Ok(None), Ok(None)) => break,
                        (Ok(Some((w, n))), Ok(Some(g))) => {
                            assert_eq!(g, w, "receive outcome");
                            if let Taken::Frame(len) = g {
                                assert_eq!(&dst[..len], &expect[..], "frame bytes");
                            }
                            last = last.wrapping_add(n);
                            left -= n;
                        }
                        (w, g) => panic!("receive: model {w:?}, queue {g:?}"),
                    }
                }
                // Slots posted and not yet taken are the peer's: left as they are.
                let waiting: Vec<(u16, Desc)> = if client {
                    (0..posted.wrapping_sub(last))
                        .map(|i| last.wrapping_add(i))
                        .map(|s| (s, rxr.desc(s)))
                        .collect()
                } else {
                    Vec::new()
                };
                rx.finish();
                if client {
                    for (s, d) in waiting {
                        assert_eq!(rxr.desc(s), d, "slot {s}, posted and waiting, rewritten");
                    }
                    assert_eq!(rxr.index(true), last.wrapping_add(size), "reposted");
                } else {
                    assert_eq!(rxr.index(false), last, "given back");
                }
            }
            // The worker sends a burst.
            _ => {
                let Some(b) = take(&mut ops, 3) else { break };
                let (head, tail) = (txr.index(true), txr.index(false));
                let (mut slot, free) = if client {
                    (head, size.wrapping_sub(head.wrapping_sub(tail)))
                } else {
                    (tail, head.wrapping_sub(tail))
                };
                let begun = tx.begin();
                assert_eq!(begun.is_err(), free > size, "send: fault iff impossible");
                let Ok(n) = begun else { return };
                assert_eq!(n, free);
                let end = slot.wrapping_add(free);
                tx.prefetch(&regions, u16::from(b[0]));
                let target = |s: u16| {
                    if client {
                        tx_bufs[usize::from(s & (size - 1))]
                    } else {
                        txr.desc(s)
                    }
                };
                for k in 0..b[0] % 8 {
                    let len = 1 + (usize::from(u16_at(&b, 1)) + 61 * usize::from(k)) % 9216;
                    let frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ k ^ 0x5a).collect();
                    // The model: the slots it goes into, or why not.
                    let mut parts = Vec::new();
                    let want: Result<(), Push> = 'model: {
                        let (mut s, mut rest) = (slot, len);
                        let d = target(s);
                        if s != end && len <= d.length as usize {
                            parts.push((d, len));
                            if !inside(d.region, d.offset, len as u64) {
                                break 'model Err(Push::BadBuffer);
                            }
                            break 'model Ok(());
                        }
                        loop {
                            if s == end {
                                break 'model Err(Push::Full);
                            }
                            let d = target(s);
                            let n = rest.min(d.length as usize);
                            parts.push((d, n));
                            if n == 0 || !inside(d.region, d.offset, n as u64) {
                                break 'model Err(Push::BadBuffer);
                            }
                            rest -= n;
                            s = s.wrapping_add(1);
                            if rest == 0 {
                                break 'model Ok(());
                            }
                        }
                    };
                    let got = tx.push(&regions, &frame);
                    // A peer may post a buffer over the rings themselves: the frame then
                    // overwrites descriptors the queue reads next, and only the bounds
                    // (the fences) can be checked. Or buffers that overlap: the last
                    // part written wins.
                    let over = |a: &(Desc, usize), r: u16, off: usize, n: usize| {
                        a.0.region == r
                            && (a.0.offset as usize) < off + n
                            && off < a.0.offset as usize + a.1
                    };
                    if parts.iter().any(|p| over(p, 0, 0, bufs_at)) {
                        return;
                    }
                    let disjoint = parts.iter().enumerate().all(|(i, p)| {
                        parts[i + 1..]
                            .iter()
                            .all(|q| !over(p, q.0.region, q.0.offset as usize, q.1))
                    });
                    match want {
                        Ok(()) => {
                            assert_eq!(got, Push::Sent, "send outcome");
                            let mut at = 0;
                            for (i, (d, n)) in parts.iter().enumerate() {
                                let s = slot.wrapping_add(i as u16);
                                let flags = if i + 1 < parts.len() {
                                    DESC_FLAG_NEXT
                                } else {
                                    0
                                };
                                let wrote = txr.desc(s);
                                assert_eq!(
                                    wrote,
                                    Desc {
                                        flags,
                                        length: *n as u32,
                                        ..*d
                                    },
                                    "descriptor of slot {s}"
                                );
                                if disjoint {
                                    assert_eq!(read(d.region, d.offset, *n), frame[at..at + n]);
                                }
                                at += n;
                            }
                            slot = slot.wrapping_add(parts.len() as u16);
                        }
                        Err(Push::Full) => {
                            assert_eq!(got, Push::Full, "send outcome");
                            break;
                        }
                        Err(why) => {
                            assert_eq!(got, why, "send outcome");
                            // The port ends the connection.
                            return;
                        }
                    }
                }
                tx.commit();
                assert_eq!(txr.index(client), slot, "published what it filled");
            }
        }
    }
}

/// vhost-user frontend messages, as a frontend may send them (see
/// `vhost_user::device::fuzz_messages`).
pub fn vhost_msg(data: &[u8]) {
    crate::vhost_user::device::fuzz_messages(data);
}

/// virtio descriptor chains, as a guest may write them (see
/// `vhost_user::vring::fuzz_chains`).
pub fn virtio_chain(data: &[u8]) {
    crate::vhost_user::vring::fuzz_chains(data);
}
