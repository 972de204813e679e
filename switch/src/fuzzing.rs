//! Fuzz targets of the data plane's parsers and tables: each takes arbitrary bytes and
//! checks a property, panicking when it fails. `fuzz/` drives them with libFuzzer
//! (coverage-guided, nightly); the tests replay the committed corpora on stable.

use std::sync::Arc;

use crate::fdb::Fdb;
use crate::pool::Pool;
use crate::vlan::{reform, reform_pkt, Form, VidSet, VlanPort, TAG_LEN, TPID};

/// VLAN lists, memberships and retagging: a list prints as one that parses back to
/// the same set; a frame a port takes has a VLAN it is a member of; pushing then popping
/// a tag gives the frame back byte for byte; retagging a pool packet, in place or by
/// copy, leaks no buffer.
pub fn vlan(data: &[u8]) {
    if let Ok(set) = VidSet::parse(&String::from_utf8_lossy(data)) {
        let again = VidSet::parse(&set.to_string()).expect("a printed list parses");
        assert_eq!(again, set);
    }
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let vid = u16::from_be_bytes([rest.first().copied().unwrap_or(0), sel]) & 0x0fff;
    let mut vids = VidSet::empty();
    for c in rest.chunks(2).take(8) {
        vids.insert(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) & 0x0fff);
    }
    let port = match sel % 3 {
        0 => VlanPort::access(vid.max(1)),
        1 => VlanPort::trunk(vids, (sel & 4 != 0).then_some(vid)),
        _ => VlanPort::default(),
    };
    if let Some((v, form)) = port.ingress(rest) {
        assert!(
            port.egress(v).is_some(),
            "took VLAN {v} without being a member"
        );
        if form == Form::Tagged {
            assert_eq!(u16::from_be_bytes([rest[12], rest[13]]), TPID);
        }
    }
    let mut out = vec![0u8; rest.len() + TAG_LEN];
    if let Some(n) = reform(rest, vid, &mut out) {
        let mut back = vec![0u8; n + TAG_LEN];
        let again = reform(&out[..n], vid, &mut back);
        if u16::from_be_bytes([rest[12], rest[13]]) != TPID {
            // Pushed: popping gives the frame back. (A popped frame may itself be a
            // runt that claims a second tag it has no room for; it is refused then.)
            let m = again.expect("a pushed tag pops");
            assert_eq!(&back[..m], rest, "push then pop");
        }
    }
    let pool = Arc::new(Pool::new(8, 1518).expect("pool"));
    {
        let mut cache = pool.cache();
        if let Some(p) = cache.alloc_copy(rest) {
            let shared = sel & 8 != 0;
            let mut fan = pool.fanout(p, if shared { 2 } else { 1 });
            let first = fan.next().expect("one handle");
            let second = fan.next();
            drop(fan);
            if let Some(q) = reform_pkt(&pool, &mut cache, first, vid) {
                let mut want = vec![0u8; rest.len() + TAG_LEN];
                let n = reform(rest, vid, &mut want).expect("reform_pkt did, so reform does");
                assert_eq!(pool.bytes(&q), &want[..n]);
                cache.free(q);
            }
            if let Some(s) = second {
                assert_eq!(
                    pool.bytes(&s),
                    rest,
                    "the other holder's frame is untouched"
                );
                cache.free(s);
            }
        }
    }
    assert_eq!(pool.free_count(), pool.count(), "a buffer leaked");
}

/// The learning table against a model: a sequence of learn, lookup, flush and
/// flush-member operations (6 bytes each) on a table big enough never to overflow;
/// every lookup answers what the model says.
pub fn fdb(data: &[u8]) {
    use std::collections::HashMap;
    use std::time::Duration;
    const AGEING: u32 = 1000;
    let f = Fdb::new(512, Duration::from_millis(u64::from(AGEING)));
    let mut model: HashMap<([u8; 6], u16), (u32, u32)> = HashMap::new();
    let mut now = 1u32;
    for op in data.chunks_exact(6).take(256) {
        let mac = [2, 0, 0, 0, op[1] & 0x3f, op[2] & 1];
        let vid = u16::from(op[3] & 3);
        let member = u32::from(op[4] & 7);
        now = now.wrapping_add(u32::from(op[5]) * 8).max(1);
        let alive = |m: &HashMap<_, (u32, u32)>| {
            m.get(&(mac, vid))
                .filter(|(_, t)| now.wrapping_sub(*t) < AGEING)
                .map(|(m, _)| *m)
        };
        match op[0] % 8 {
            0..=3 => {
                f.learn(&mac, vid, member, now);
                // A refresh of the same member within REFRESH_MS keeps the old stamp.
                let keep = matches!(model.get(&(mac, vid)), Some((m, t)) if *m == member
                    && now.wrapping_sub(*t) < crate::fdb::REFRESH_MS);
                if !keep {
                    model.insert((mac, vid), (member, now));
                }
            }
            4..=6 => assert_eq!(f.lookup(&mac, vid, now), alive(&model), "{mac:?} {vid}"),
            _ if op[1] & 1 == 0 => {
                f.flush_member(member);
                model.retain(|_, (m, _)| *m != member);
            }
            _ => {
                f.flush();
                model.clear();
            }
        }
    }
    assert_eq!(f.overflow(), 0);
}

/// GSO cuts (`crate::wire::gso`) and the forwarder's offload step
/// (`crate::offload`): the first 10 bytes are a virtio-net header, the rest a frame. A
/// plan is refused or every segment is written in bounds, no longer than the headers
/// and one segment's payload, and the payloads put together are the frame's; every
/// TCP/UDP segment's checksum verifies; finishing a partial checksum never panics; the
/// offload step, given the frame in a GSO buffer, leaks no buffer.
pub fn gso(data: &[u8]) {
    use crate::pool::{HEADROOM, VNET_HDR_LEN};
    use crate::wire::checksum::{fold, sum};
    use crate::wire::gso::{finish_checksum, Plan, VnetHdr};
    let Some((hb, frame)) = data.split_first_chunk::<VNET_HDR_LEN>() else {
        return;
    };
    let h = VnetHdr::parse(hb);
    if let Ok(plan) = Plan::new(&h, frame) {
        let mut out = vec![0u8; frame.len() + 64];
        let mut joined = Vec::with_capacity(frame.len());
        let hdr = plan.header_len();
        for i in 0..plan.count() {
            let n = plan
                .write(frame, i, &mut out)
                .expect("a planned segment is written");
            assert!(n <= plan.max_len(), "segment {i}: {n} > {}", plan.max_len());
            let seg = &out[..n];
            // The network header is where the frame had it; check the L4 sum.
            let (ip, et) = crate::wire::ethernet::payload_of(seg).expect("a segment's header");
            let (l4, proto, addrs) = if et == crate::wire::ethernet::ETHERTYPE_IPV4 {
                (
                    ip + usize::from(seg[ip] & 0xf) * 4,
                    seg[ip + 9],
                    &seg[ip + 12..ip + 20],
                )
            } else {
                (ip + 40, seg[ip + 6], &seg[ip + 8..ip + 40])
            };
            let len = n - l4;
            let s = sum(addrs, 0);
            let s = sum(&[0, proto, (len >> 8) as u8, len as u8], s);
            assert_eq!(fold(sum(&seg[l4..], s)), 0xffff, "segment {i}'s checksum");
            assert_eq!(seg[..12], frame[..12], "segment {i}'s addresses");
            joined.extend_from_slice(&seg[hdr..]);
        }
        assert!(
            joined == frame[hdr..],
            "the segments' payloads are the frame's"
        );
    }
    let mut copy = frame.to_vec();
    let _ = finish_checksum(&h, &mut copy);
    // The offload step over the frame in a GSO buffer.
    let Ok(pool) = Pool::with_gso(64, 1514, 1) else {
        return;
    };
    let pool = Arc::new(pool);
    let mut cache = pool.cache();
    let Some(mut p) = pool.alloc_gso() else {
        return;
    };
    let Some(buf) = pool.buf_mut(&mut p) else {
        return;
    };
    let n = frame.len().min(buf.len() - HEADROOM);
    buf[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
    buf[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(hb);
    p.set_span(HEADROOM, n);
    p.set_offload(true);
    let c = crate::counters::PortCounters::default();
    let mut out = Vec::new();
    crate::offload::into_wire_frames(&pool, &mut cache, p, &mut out, &c);
    assert!(out.iter().all(|f| !f.offload() && !pool.is_gso(f)));
    cache.free_all(&mut out);
    drop(cache);
    assert_eq!(pool.free_count(), 64, "an ordinary buffer leaked");
    assert_eq!(pool.gso_free_count(), 1, "the GSO buffer leaked");
}
