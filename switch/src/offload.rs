//! Offload frames ([`Pkt::offload`]: a GSO super-frame, a partial checksum) made ready
//! for destinations that take no offloads — once per frame, however many such
//! destinations it goes to: the forwarder makes the wire frames here and fans them out.
//!
//! ```text
//!  tap (TSO) ──► 64 KiB super-frame ──┬──────────────────────────► tap (TSO): as it is
//!                                     └─ wire_frames: 45 segments ─► socket, vde, nic…
//! ```
//!
//! The wire frames are ordinary buffers (never GSO buffers, which are few): a socket's
//! send queue holding them cannot starve the taps' reads.

use crate::counters::{DropReason, PortCounters};
use crate::pool::{BufCache, Pkt, Pool, HEADROOM};
use crate::wire::gso::{self, Plan, VnetHdr};

/// Appends to `out` the wire frames for offload frame `p` (left as it is): its segments,
/// or one copy with its checksum finished. False when there are none — the frame is
/// malformed, needs a cut we do not do, or the pool ran dry — counted at `counters` (the
/// port it came from) as `offload`, `oversize` or `no-buffer`.
pub fn wire_frames(
    pool: &Pool,
    cache: &mut BufCache,
    p: &Pkt,
    out: &mut Vec<Pkt>,
    counters: &PortCounters,
) -> bool {
    let Some(h) = pool.vnet_hdr(p).map(VnetHdr::parse) else {
        return copy_plain(cache, pool.bytes(p), out, counters);
    };
    let frame = pool.bytes(p);
    if h.gso() == gso::GSO_NONE {
        let start = out.len();
        if !copy_plain(cache, frame, out, counters) {
            return false;
        }
        let done = out
            .last_mut()
            .and_then(|q| pool.bytes_mut(q))
            .is_some_and(|b| finish(&h, b, counters));
        if !done {
            return undo(cache, out, start, counters, DropReason::Offload);
        }
        return true;
    }
    let Ok(plan) = Plan::new(&h, frame) else {
        counters.count_drop(DropReason::Offload, 1);
        return false;
    };
    if plan.max_len() > pool.max_frame() {
        counters.count_drop(DropReason::Oversize, 1);
        return false;
    }
    let start = out.len();
    for i in 0..plan.count() {
        let Some(mut s) = cache.alloc() else {
            return undo(cache, out, start, counters, DropReason::NoBuffer);
        };
        let n = pool
            .buf_mut(&mut s)
            .and_then(|b| plan.write(frame, i, &mut b[HEADROOM..]));
        match n {
            Some(n) => {
                s.set_span(HEADROOM, n);
                out.push(s);
            }
            None => {
                // Cannot happen for a fresh buffer of the plan's frame; refused safely.
                cache.free(s);
                return undo(cache, out, start, counters, DropReason::Offload);
            }
        }
    }
    counters.gso_cut(plan.count() as u64);
    true
}

/// Turns offload frame `p` into wire frames appended to `out`, consuming it: a partial
/// checksum in an ordinary buffer only this handle holds is finished in place, anything
/// else goes through [`wire_frames`].
pub fn into_wire_frames(
    pool: &Pool,
    cache: &mut BufCache,
    mut p: Pkt,
    out: &mut Vec<Pkt>,
    counters: &PortCounters,
) {
    if let Some(h) = pool.vnet_hdr(&p).map(VnetHdr::parse) {
        if h.gso() == gso::GSO_NONE && !pool.is_gso(&p) {
            if let Some(b) = pool.bytes_mut(&mut p) {
                if finish(&h, b, counters) {
                    p.set_offload(false);
                    out.push(p);
                } else {
                    counters.count_drop(DropReason::Offload, 1);
                    cache.free(p);
                }
                return;
            }
        }
    }
    wire_frames(pool, cache, &p, out, counters);
    cache.free(p);
}

/// Finishes the partial checksum `h` asks for in `frame` (nothing to do without
/// `NEEDS_CSUM`), counting it; false when the frame cannot hold it.
fn finish(h: &VnetHdr, frame: &mut [u8], counters: &PortCounters) -> bool {
    if h.flags & gso::F_NEEDS_CSUM == 0 {
        return true;
    }
    let ok = gso::finish_checksum(h, frame).is_ok();
    if ok {
        counters.csum_finished();
    }
    ok
}

/// Gives back the frames made so far (`out[start..]`) and counts the frame as dropped
/// for `why`; false, for the caller to return.
fn undo(
    cache: &mut BufCache,
    out: &mut Vec<Pkt>,
    start: usize,
    counters: &PortCounters,
    why: DropReason,
) -> bool {
    let mut made: Vec<Pkt> = out.drain(start..).collect();
    cache.free_all(&mut made);
    counters.count_drop(why, 1);
    false
}

/// Copies a frame into an ordinary buffer.
fn copy_plain(
    cache: &mut BufCache,
    frame: &[u8],
    out: &mut Vec<Pkt>,
    counters: &PortCounters,
) -> bool {
    if frame.len() > cache.pool().max_frame() {
        counters.count_drop(DropReason::Oversize, 1);
        return false;
    }
    match cache.alloc_copy(frame) {
        Some(q) => {
            out.push(q);
            true
        }
        None => {
            counters.count_drop(DropReason::NoBuffer, 1);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::VNET_HDR_LEN;
    use std::sync::Arc;

    fn offload_pkt(pool: &Pool, h: &VnetHdr, frame: &[u8]) -> Pkt {
        let mut p = pool.alloc_gso().unwrap();
        let b = pool.buf_mut(&mut p).unwrap();
        b[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        let mut hb = [0u8; VNET_HDR_LEN];
        h.write(&mut hb);
        b[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&hb);
        p.set_span(HEADROOM, frame.len());
        p.set_offload(true);
        p
    }

    #[test]
    fn a_super_frame_is_cut_into_ordinary_buffers_and_counted() {
        let pool = Arc::new(Pool::with_gso(64, 1514, 2).unwrap());
        let mut cache = pool.cache();
        let c = PortCounters::default();
        let frame = crate::wire::gso::tests_support::super_frame(false, true, 4000);
        let h = VnetHdr {
            flags: gso::F_NEEDS_CSUM,
            gso_type: gso::GSO_TCPV4,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 66,
        };
        let p = offload_pkt(&pool, &h, &frame);
        let mut out = Vec::new();
        assert!(wire_frames(&pool, &mut cache, &p, &mut out, &c));
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| !s.offload() && !pool.is_gso(s)));
        assert_eq!(pool.bytes(&out[0]).len(), 66 + 1448);
        let s = c.snapshot();
        assert_eq!((s.gso_cut, s.gso_segments), (1, 3));
        // The original is untouched, for the destinations that take it whole.
        assert_eq!(pool.bytes(&p), &frame[..]);
        cache.free_all(&mut out);
        into_wire_frames(&pool, &mut cache, p, &mut out, &c);
        assert_eq!(out.len(), 3);
        cache.free_all(&mut out);
        drop(cache);
        assert_eq!((pool.free_count(), pool.gso_free_count()), (64, 2));
    }

    #[test]
    fn a_dry_pool_or_a_bad_frame_drops_the_frame_whole() {
        let pool = Arc::new(Pool::with_gso(2, 1514, 1).unwrap());
        let mut cache = pool.cache();
        let c = PortCounters::default();
        let frame = crate::wire::gso::tests_support::super_frame(true, false, 18 * 5);
        let h = VnetHdr {
            gso_type: gso::GSO_UDP_L4,
            gso_size: 18,
            ..VnetHdr::default()
        };
        let p = offload_pkt(&pool, &h, &frame);
        let mut out = Vec::new();
        assert!(
            !wire_frames(&pool, &mut cache, &p, &mut out, &c),
            "5 segments, 2 buffers"
        );
        assert!(out.is_empty());
        assert_eq!(c.snapshot().dropped(DropReason::NoBuffer), 1);
        pool.free(p);
        let bad = VnetHdr {
            gso_type: gso::GSO_UDP,
            gso_size: 18,
            ..VnetHdr::default()
        };
        let p = offload_pkt(&pool, &bad, &frame);
        into_wire_frames(&pool, &mut cache, p, &mut out, &c);
        assert!(out.is_empty());
        assert_eq!(c.snapshot().dropped(DropReason::Offload), 1);
        drop(cache);
        assert_eq!((pool.free_count(), pool.gso_free_count()), (2, 1));
    }

    #[test]
    fn a_partial_checksum_is_finished_in_place_when_the_frame_is_ours() {
        let pool = Arc::new(Pool::with_gso(4, 1514, 1).unwrap());
        let mut cache = pool.cache();
        let c = PortCounters::default();
        let frame = crate::wire::gso::tests_support::super_frame(false, false, 30);
        let h = VnetHdr {
            flags: gso::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        let mut p = cache.alloc().unwrap();
        let b = pool.buf_mut(&mut p).unwrap();
        b[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
        let mut hb = [0u8; VNET_HDR_LEN];
        h.write(&mut hb);
        b[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&hb);
        p.set_span(HEADROOM, frame.len());
        p.set_offload(true);
        let idx = p.index();
        let mut out = Vec::new();
        into_wire_frames(&pool, &mut cache, p, &mut out, &c);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index(), idx, "no copy");
        assert!(!out[0].offload());
        assert_ne!(&pool.bytes(&out[0])[40..42], &frame[40..42]);
        assert_eq!(c.snapshot().csum_finished, 1);
        cache.free_all(&mut out);
    }
}
