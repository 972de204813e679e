//! Zero-copy memif rings, for a client NIC whose region 1 is the switch's own packet
//! pool (`x-memif-zero-copy=on`): descriptors name pool buffers, so a frame crosses
//! without a copy on our side — the peer (the server) copies into and out of them, as
//! DPDK's `net_memif` with `zero-copy=yes` has it.
//!
//! ```text
//!  s2c (receive): we post empty pool buffers (desc → buffer + headroom, room = max frame)
//!                 and keep their handles; the server fills them and moves tail; we take
//!                 the handles back as received frames and post fresh buffers.
//!  c2s (send):    desc → the frame inside its pool buffer; the handle is kept until the
//!                 server moves tail past it, then freed.
//! ```
//!
//! The peer can read and write every buffer of the pool, other ports' frames included:
//! zero copy is for applications trusted as much as the switch itself, which is why it
//! is off unless asked for. Every index it writes is still checked ([`Fault`]).

use std::sync::atomic::{fence, Ordering};

use switch::pool::HEADROOM;
use switch::{DropReason, Io, Pkt};

use super::queue::Fault;
use super::shm::{Desc, RingView};
use super::wire::{DESC_FLAG_NEXT, RING_FLAG_MASK_INT};

/// The region index of the pool in a zero-copy connection.
pub const POOL_REGION: u16 = 1;

fn mask(ring: &RingView, s: u16) -> usize {
    usize::from(s & (ring.size() - 1))
}

/// The receive ring (s2c), buffers lent to the server.
#[derive(Debug)]
pub struct ZcRx {
    ring: RingView,
    held: Vec<Option<Pkt>>,
    last: u16,
    irq_on: bool,
}

impl ZcRx {
    /// Takes over `ring` (reset, nothing posted yet).
    pub fn new(ring: RingView) -> ZcRx {
        ring.set_flags(RING_FLAG_MASK_INT);
        let n = usize::from(ring.size());
        ZcRx {
            ring,
            held: (0..n).map(|_| None).collect(),
            last: 0,
            irq_on: false,
        }
    }

    /// Posts a pool buffer in every free slot (as many as the pool gives).
    pub fn refill(&mut self, io: &mut Io<'_>) {
        let size = self.ring.size();
        let room = io.pool().max_frame() as u32;
        let mut head = self.ring.head().load(Ordering::Relaxed);
        let free = size.wrapping_sub(head.wrapping_sub(self.last));
        for _ in 0..free {
            let Some(p) = io.alloc() else { break };
            let Some(at) = io.pool().buffer_in_region(&p) else {
                io.free(p);
                break;
            };
            self.ring.set_desc(
                head,
                Desc {
                    flags: 0,
                    region: POOL_REGION,
                    length: room,
                    offset: (at + HEADROOM) as u32,
                },
            );
            if let Some(old) = self.held[mask(&self.ring, head)].replace(p) {
                io.free(old);
            }
            head = head.wrapping_add(1);
        }
        // Release: the descriptors are written before the server sees them posted.
        self.ring.head().store(head, Ordering::Release);
    }

    /// Hands up to `max` filled buffers to `out` as frames; refills what it took.
    pub fn receive(
        &mut self,
        io: &mut Io<'_>,
        out: &mut Vec<Pkt>,
        max: usize,
    ) -> Result<usize, Fault> {
        if self.irq_on {
            self.ring.set_flags(RING_FLAG_MASK_INT);
            self.irq_on = false;
        }
        let end = self.ring.tail().load(Ordering::Acquire);
        let avail = end.wrapping_sub(self.last);
        let posted = self
            .ring
            .head()
            .load(Ordering::Relaxed)
            .wrapping_sub(self.last);
        if avail > posted {
            return Err(Fault(format!(
                "the server filled {avail} slots of the {posted} posted"
            )));
        }
        let room = io.pool().max_frame();
        let (mut n, mut bytes) = (0usize, 0u64);
        let mut i = 0u16;
        while i < avail && n < max {
            let s = self.last.wrapping_add(i);
            let d = self.ring.desc(s);
            i += 1;
            let Some(mut p) = self.held[mask(&self.ring, s)].take() else {
                continue;
            };
            let len = d.length as usize;
            if d.flags & DESC_FLAG_NEXT != 0 || len > room {
                // Longer than our largest frame (the server chained it): dropped, the
                // rest of the chain with it.
                io.drop_one(p, DropReason::Oversize);
                while i < avail
                    && self.ring.desc(self.last.wrapping_add(i - 1)).flags & DESC_FLAG_NEXT != 0
                {
                    if let Some(q) = self.held[mask(&self.ring, self.last.wrapping_add(i))].take() {
                        io.free(q);
                    }
                    i += 1;
                }
                continue;
            }
            if len < switch::pool::MIN_FRAME {
                io.drop_one(p, DropReason::Undersize);
                continue;
            }
            p.set_span(HEADROOM, len);
            bytes += len as u64;
            out.push(p);
            n += 1;
        }
        self.last = self.last.wrapping_add(i);
        io.counters.rx_many(n as u64, bytes);
        self.refill(io);
        Ok(n)
    }

    /// See [`super::queue::RxQueue::arm`].
    pub fn arm(&mut self) -> bool {
        if !self.irq_on {
            self.ring.set_flags(0);
            self.irq_on = true;
        }
        fence(Ordering::SeqCst);
        self.ring.tail().load(Ordering::Acquire) != self.last
    }

    /// Takes every lent buffer back (the connection is over).
    pub fn drain(&mut self, io: &mut Io<'_>) {
        for h in &mut self.held {
            if let Some(p) = h.take() {
                io.free(p);
            }
        }
    }
}

/// The send ring (c2s): frames lent to the server until it is done with them.
#[derive(Debug)]
pub struct ZcTx {
    ring: RingView,
    held: Vec<Option<Pkt>>,
    /// Slots up to here were given back and their buffers freed.
    reclaimed: u16,
    spare: Vec<Pkt>,
}

impl ZcTx {
    /// Takes over `ring` (reset).
    pub fn new(ring: RingView) -> ZcTx {
        let n = usize::from(ring.size());
        ZcTx {
            ring,
            held: (0..n).map(|_| None).collect(),
            reclaimed: 0,
            spare: Vec::with_capacity(switch::backend::BURST),
        }
    }

    /// Frees the buffers of the frames the server is done with.
    fn reclaim(&mut self, io: &mut Io<'_>) -> Result<(), Fault> {
        let tail = self.ring.tail().load(Ordering::Acquire);
        let head = self.ring.head().load(Ordering::Relaxed);
        if tail.wrapping_sub(self.reclaimed) > head.wrapping_sub(self.reclaimed) {
            return Err(Fault("the server moved tail past head".into()));
        }
        while self.reclaimed != tail {
            if let Some(p) = self.held[mask(&self.ring, self.reclaimed)].take() {
                io.free(p);
            }
            self.reclaimed = self.reclaimed.wrapping_add(1);
        }
        Ok(())
    }

    /// Lends the frames at the front of `pkts` (those `keep` accepts) to the server
    /// while the ring has room; what it took leaves `pkts` (rejected ones counted as
    /// `filtered`). True when the server wants a signal.
    pub fn send(
        &mut self,
        io: &mut Io<'_>,
        pkts: &mut Vec<Pkt>,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<bool, Fault> {
        self.reclaim(io)?;
        let size = self.ring.size();
        let mut head = self.ring.head().load(Ordering::Relaxed);
        let free = size.wrapping_sub(head.wrapping_sub(self.reclaimed));
        let (mut sent, mut bytes) = (0u16, 0u64);
        // One pass: what the ring takes goes into its keeping, what it has no room for
        // goes back to `pkts` (a spare vector, so no allocation).
        std::mem::swap(pkts, &mut self.spare);
        for p in self.spare.drain(..) {
            if sent >= free {
                pkts.push(p);
                continue;
            }
            let pool = io.pool();
            let at = pool.frame_in_region(&p);
            let Some((at, len)) = at.filter(|_| keep(pool.bytes(&p))) else {
                io.drop_one(p, DropReason::Filtered);
                continue;
            };
            self.ring.set_desc(
                head,
                Desc {
                    flags: 0,
                    region: POOL_REGION,
                    length: len as u32,
                    offset: at as u32,
                },
            );
            if let Some(old) = self.held[mask(&self.ring, head)].replace(p) {
                io.free(old);
            }
            head = head.wrapping_add(1);
            sent += 1;
            bytes += len as u64;
        }
        io.counters.tx(u64::from(sent), bytes);
        if sent == 0 {
            return Ok(false);
        }
        // Release: the descriptors are written before the server sees head move.
        self.ring.head().store(head, Ordering::Release);
        fence(Ordering::SeqCst);
        Ok(self.ring.flags() & RING_FLAG_MASK_INT == 0)
    }

    /// Takes every lent buffer back (the connection is over).
    pub fn drain(&mut self, io: &mut Io<'_>) {
        for h in &mut self.held {
            if let Some(p) = h.take() {
                io.free(p);
            }
        }
    }
}
