//! The memif data path of one ring, for either role and either direction: frames
//! copied out of the peer's descriptors on receive, into them on send. Safe code over
//! [`super::shm`]; the worker's port drives it, and tests drive both ends at once.
//!
//! Who moves which index (memif 2.0; c2s = client → server, s2c = server → client):
//!
//! ```text
//!  c2s ring   client: fills slots, head += n  (Release)  ── server reads [last, head)
//!             server: tail = head when done  (Release)  ── client may reuse [tail..)
//!  s2c ring   client: posts empty buffers, head += n     ── server fills [tail, head)
//!             server: tail += n when filled  (Release)  ── client reads [last, tail)
//! ```
//!
//! Every index the peer wrote is checked before use: one that moved by more than the
//! ring holds is a [`Fault`] (the connection ends); a descriptor pointing outside its
//! region costs only that frame (counted by the caller).

use std::sync::atomic::{fence, Ordering};

use super::shm::{Desc, Regions, RingView};
use super::wire::{DESC_FLAG_NEXT, RING_FLAG_MASK_INT};

/// The peer broke the ring protocol; the text says how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault(pub String);

/// The role this end plays on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Listens; the peer brings the memory.
    Server,
    /// Connects; brings the memory.
    Client,
}

/// Outcome of one frame taken from a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Copied: this many bytes.
    Frame(usize),
    /// Longer than the room given.
    TooLong,
    /// A descriptor pointed outside its region.
    BadDesc,
}

/// Outcome of one frame given to a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// In the ring.
    Sent,
    /// No room now; try again later.
    Full,
    /// A buffer the peer posted is unusable (outside its region, or of no size): the
    /// frame is lost, the slots stay for the next.
    BadBuffer,
}

/// A ring this end receives from (c2s as server, s2c as client).
#[derive(Debug)]
pub struct RxQueue {
    ring: RingView,
    role: Role,
    /// Next slot to read.
    last: u16,
    /// Client: the buffer each slot is given back with (fixed in our own region).
    bufs: Vec<Desc>,
    /// Client: where we posted up to (our `head`, kept here: the peer can write the
    /// ring's copy, and a value it made up would have `refill` post up to 65 535 slots).
    posted: u16,
    /// Whether we asked the peer to signal (interrupt mode).
    irq_on: bool,
    /// Filled slots left in the current batch.
    avail: u16,
}

/// A ring this end sends on (s2c as server, c2s as client).
#[derive(Debug)]
pub struct TxQueue {
    ring: RingView,
    role: Role,
    /// Client: the buffer of each slot.
    bufs: Vec<Desc>,
    /// Slots reserved in the current batch: next to fill and the end of what is free.
    slot: u16,
    end: u16,
}

impl RxQueue {
    /// A receive queue on `ring`. As client, `bufs` holds each slot's buffer (ring size
    /// entries) and the ring is filled with them at once.
    pub fn new(ring: RingView, role: Role, bufs: Vec<Desc>) -> RxQueue {
        let posted = ring.head().load(Ordering::Relaxed);
        let mut q = RxQueue {
            ring,
            role,
            last: 0,
            bufs,
            posted,
            irq_on: false,
            avail: 0,
        };
        // Poll mode while awake: the peer need not signal.
        q.ring.set_flags(RING_FLAG_MASK_INT);
        if role == Role::Client {
            q.refill();
        }
        q
    }

    fn produced(&self) -> u16 {
        match self.role {
            Role::Server => self.ring.head().load(Ordering::Acquire),
            Role::Client => self.ring.tail().load(Ordering::Acquire),
        }
    }

    /// Frames waiting, or a fault when the peer's index is impossible.
    pub fn pending(&self) -> Result<u16, Fault> {
        let n = self.produced().wrapping_sub(self.last);
        if n > self.ring.size() {
            return Err(Fault(format!(
                "ring index moved by {n}, past the {} slots of the ring",
                self.ring.size()
            )));
        }
        Ok(n)
    }

    /// Starts a batch: how many slots the peer has filled (a fault when its index is
    /// impossible).
    pub fn begin(&mut self) -> Result<u16, Fault> {
        self.avail = self.pending()?;
        Ok(self.avail)
    }

    /// Fetches the buffers of the next `n` filled slots ahead of copying them.
    pub fn prefetch(&self, regions: &Regions, n: u16) {
        self.ring.prefetch_descs(self.last, n.min(self.avail));
        for i in 0..n.min(self.avail) {
            // A filled buffer: its length is the frame's; four lines start a long one.
            regions.prefetch(&self.ring.desc(self.last.wrapping_add(i)), 4);
        }
    }

    /// Copies the next frame of the batch into `dst` (gathering a chain) and consumes
    /// its slots; `None` when the batch holds no complete frame.
    pub fn next_frame(
        &mut self,
        regions: &Regions,
        dst: &mut [u8],
    ) -> Result<Option<Taken>, Fault> {
        if self.avail == 0 {
            return Ok(None);
        }
        let d = self.ring.desc(self.last);
        if d.flags & DESC_FLAG_NEXT == 0 {
            // One buffer, the common case.
            let outcome = if d.length as usize > dst.len() {
                Taken::TooLong
            } else if !regions.read_buf(&d, dst, 0) {
                Taken::BadDesc
            } else {
                Taken::Frame(d.length as usize)
            };
            self.last = self.last.wrapping_add(1);
            self.avail -= 1;
            return Ok(Some(outcome));
        }
        // The chain's extent: slots up to one without NEXT.
        let mut n: u16 = 1;
        while self.ring.desc(self.last.wrapping_add(n - 1)).flags & DESC_FLAG_NEXT != 0 {
            if n >= self.ring.size() {
                return Err(Fault("a frame chained over the whole ring".into()));
            }
            if n >= self.avail {
                // Incomplete: the rest comes later.
                return Ok(None);
            }
            n += 1;
        }
        let mut at = 0usize;
        let mut outcome = None;
        for i in 0..n {
            let d = self.ring.desc(self.last.wrapping_add(i));
            if outcome.is_some() {
                continue;
            }
            if at + d.length as usize > dst.len() {
                outcome = Some(Taken::TooLong);
            } else if !regions.read_buf(&d, dst, at) {
                outcome = Some(Taken::BadDesc);
            } else {
                at += d.length as usize;
            }
        }
        self.last = self.last.wrapping_add(n);
        self.avail -= n;
        Ok(Some(outcome.unwrap_or(Taken::Frame(at))))
    }

    /// Ends the batch: gives the consumed slots back to the peer.
    pub fn finish(&mut self) {
        match self.role {
            // Release: our reads of those slots are done before the peer reuses them.
            Role::Server => self.ring.tail().store(self.last, Ordering::Release),
            Role::Client => self.refill(),
        }
    }

    /// Client: posts every free slot again with its own buffer at full size (the slots
    /// consumed since the last refill: `last` never passes what was posted).
    fn refill(&mut self) {
        let size = self.ring.size();
        let mut head = self.posted;
        let free = size.wrapping_sub(head.wrapping_sub(self.last));
        for _ in 0..free {
            if let Some(d) = self.bufs.get(usize::from(head & (size - 1))) {
                self.ring.set_desc(head, *d);
            }
            head = head.wrapping_add(1);
        }
        self.posted = head;
        // Release: the descriptors are written before the peer sees them posted.
        self.ring.head().store(head, Ordering::Release);
    }

    /// On the way to sleep: asks the peer to signal, then says whether frames came in
    /// meanwhile (then the caller must not sleep).
    pub fn arm(&mut self) -> bool {
        if !self.irq_on {
            self.ring.set_flags(0);
            self.irq_on = true;
        }
        // SeqCst: our flag store is visible before we look at the peer's index, so a
        // producer that fences too either sees the flag or its frame is seen here.
        fence(Ordering::SeqCst);
        !matches!(self.pending(), Ok(0))
    }

    /// Awake: back to polling.
    pub fn disarm(&mut self) {
        if self.irq_on {
            self.ring.set_flags(RING_FLAG_MASK_INT);
            self.irq_on = false;
        }
    }
}

impl TxQueue {
    /// A send queue on `ring`; as client, `bufs` holds each slot's buffer.
    pub fn new(ring: RingView, role: Role, bufs: Vec<Desc>) -> TxQueue {
        TxQueue {
            ring,
            role,
            bufs,
            slot: 0,
            end: 0,
        }
    }

    /// Starts a batch: finds the free slots. A fault when the peer's index is impossible.
    pub fn begin(&mut self) -> Result<u16, Fault> {
        let size = self.ring.size();
        let (slot, free) = match self.role {
            Role::Server => {
                let tail = self.ring.tail().load(Ordering::Relaxed);
                // Acquire: the client's posted descriptors are visible.
                (
                    tail,
                    self.ring.head().load(Ordering::Acquire).wrapping_sub(tail),
                )
            }
            Role::Client => {
                let head = self.ring.head().load(Ordering::Relaxed);
                let used = head.wrapping_sub(self.ring.tail().load(Ordering::Acquire));
                (head, size.wrapping_sub(used))
            }
        };
        if free > size {
            return Err(Fault(format!(
                "ring index moved by {}, past the {size} slots of the ring",
                free.wrapping_sub(size)
            )));
        }
        self.slot = slot;
        self.end = slot.wrapping_add(free);
        Ok(free)
    }

    /// Fetches the buffers of the next `n` free slots ahead of filling them.
    pub fn prefetch(&self, regions: &Regions, n: u16) {
        let free = self.end.wrapping_sub(self.slot);
        if self.role == Role::Server {
            self.ring.prefetch_descs(self.slot, n.min(free));
        }
        for i in 0..n.min(free) {
            // An empty buffer: its length is its room, not the frame's; one line.
            regions.prefetch(&self.target(self.slot.wrapping_add(i)), 1);
        }
    }

    /// The buffer slot `s` may be filled into.
    fn target(&self, s: u16) -> Desc {
        match self.role {
            // The client posted it: its region, offset and room.
            Role::Server => self.ring.desc(s),
            Role::Client => self
                .bufs
                .get(usize::from(s & (self.ring.size() - 1)))
                .copied()
                .unwrap_or_default(),
        }
    }

    /// Copies one frame into the next slots (chained when it is longer than a buffer).
    pub fn push(&mut self, regions: &Regions, frame: &[u8]) -> Push {
        let mut s = self.slot;
        if s == self.end {
            return Push::Full;
        }
        let d = self.target(s);
        if frame.len() <= d.length as usize && !frame.is_empty() {
            // One buffer, the common case.
            let d = Desc {
                flags: 0,
                length: frame.len() as u32,
                ..d
            };
            if !regions.write_buf(&d, frame) {
                return Push::BadBuffer;
            }
            self.ring.set_desc(s, d);
            self.slot = s.wrapping_add(1);
            return Push::Sent;
        }
        let mut rest = frame;
        loop {
            if s == self.end {
                return Push::Full;
            }
            let d = self.target(s);
            let n = rest.len().min(d.length as usize);
            if n == 0 && !rest.is_empty() {
                return Push::BadBuffer;
            }
            if !regions.write_buf(
                &Desc {
                    length: n as u32,
                    ..d
                },
                &rest[..n],
            ) {
                return Push::BadBuffer;
            }
            rest = &rest[n..];
            let flags = if rest.is_empty() { 0 } else { DESC_FLAG_NEXT };
            // Server: the client's region and offset stay as posted; client: ours.
            self.ring.set_desc(
                s,
                Desc {
                    flags,
                    length: n as u32,
                    ..d
                },
            );
            s = s.wrapping_add(1);
            if rest.is_empty() {
                self.slot = s;
                return Push::Sent;
            }
        }
    }

    /// Publishes the batch; true when the peer wants to be signalled.
    pub fn commit(&mut self) -> bool {
        // Release: the frames are written before the peer sees the index move.
        match self.role {
            Role::Server => self.ring.tail().store(self.slot, Ordering::Release),
            Role::Client => self.ring.head().store(self.slot, Ordering::Release),
        }
        // SeqCst: the index store comes before the flag load (a consumer arming its
        // interrupt fences the other way round).
        fence(Ordering::SeqCst);
        self.ring.flags() & RING_FLAG_MASK_INT == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memif::shm::Region;
    use crate::memif::wire::ring_bytes;
    use std::sync::Arc;

    const LOG2: u8 = 3;
    const BUF: u32 = 64;

    /// One region: a c2s ring, an s2c ring, then a buffer per slot of each (the client's
    /// layout), seen through both ends' queues.
    struct Pair {
        regions: Regions,
        ctx: TxQueue,
        srx: RxQueue,
        stx: TxQueue,
        crx: RxQueue,
    }

    fn pair() -> Pair {
        let rb = ring_bytes(LOG2);
        let slots = 1usize << LOG2;
        let len = 2 * rb + 2 * slots * BUF as usize;
        let region = Arc::new(Region::create("t", len).unwrap());
        let c2s = RingView::new(region.clone(), 0, LOG2).unwrap();
        let s2c = RingView::new(region.clone(), rb, LOG2).unwrap();
        c2s.init(0);
        s2c.init(0);
        let bufs = |first: usize| -> Vec<Desc> {
            (0..slots)
                .map(|i| Desc {
                    flags: 0,
                    region: 0,
                    length: BUF,
                    offset: (2 * rb + (first + i) * BUF as usize) as u32,
                })
                .collect()
        };
        Pair {
            regions: Regions(vec![region]),
            ctx: TxQueue::new(c2s.clone(), Role::Client, bufs(0)),
            srx: RxQueue::new(c2s, Role::Server, Vec::new()),
            crx: RxQueue::new(s2c.clone(), Role::Client, bufs(slots)),
            stx: TxQueue::new(s2c, Role::Server, Vec::new()),
        }
    }

    fn send(q: &mut TxQueue, regions: &Regions, frames: &[Vec<u8>]) -> usize {
        q.begin().unwrap();
        let mut n = 0;
        for f in frames {
            if q.push(regions, f) != Push::Sent {
                break;
            }
            n += 1;
        }
        q.commit();
        n
    }

    fn recv(q: &mut RxQueue, regions: &Regions, max: usize) -> Vec<Result<Vec<u8>, Taken>> {
        let mut out = Vec::new();
        q.begin().unwrap();
        let mut b = vec![0u8; 200];
        while out.len() < max {
            match q.next_frame(regions, &mut b).unwrap() {
                None => break,
                Some(Taken::Frame(n)) => out.push(Ok(b[..n].to_vec())),
                Some(other) => out.push(Err(other)),
            }
        }
        q.finish();
        out
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn frames_cross_both_ways_and_the_rings_wrap() {
        let mut p = pair();
        for round in 0..5u8 {
            let frames: Vec<_> = (0..5)
                .map(|i| frame(14 + i * 9, round * 10 + i as u8))
                .collect();
            assert_eq!(send(&mut p.ctx, &p.regions, &frames), 5);
            let got = recv(&mut p.srx, &p.regions, 32);
            assert_eq!(got, frames.iter().cloned().map(Ok).collect::<Vec<_>>());
            assert_eq!(send(&mut p.stx, &p.regions, &frames), 5);
            let got = recv(&mut p.crx, &p.regions, 32);
            assert_eq!(got, frames.iter().cloned().map(Ok).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_full_ring_takes_no_more_until_the_peer_reads() {
        let mut p = pair();
        let frames: Vec<_> = (0..10).map(|i| frame(20, i)).collect();
        assert_eq!(send(&mut p.ctx, &p.regions, &frames), 8, "eight slots");
        assert_eq!(send(&mut p.ctx, &p.regions, &frames), 0, "full");
        assert_eq!(recv(&mut p.srx, &p.regions, 3).len(), 3);
        assert_eq!(send(&mut p.ctx, &p.regions, &frames), 3, "three given back");
        // Server side: as many as the client posted.
        assert_eq!(send(&mut p.stx, &p.regions, &frames), 8);
        assert_eq!(send(&mut p.stx, &p.regions, &frames), 0);
        assert_eq!(recv(&mut p.crx, &p.regions, 32).len(), 8);
        assert_eq!(send(&mut p.stx, &p.regions, &frames), 8, "reposted");
    }

    #[test]
    fn long_frames_chain_over_several_buffers() {
        let mut p = pair();
        let big = frame(150, 3); // three 64-byte buffers
        assert_eq!(send(&mut p.ctx, &p.regions, std::slice::from_ref(&big)), 1);
        assert_eq!(p.srx.pending(), Ok(3));
        assert_eq!(recv(&mut p.srx, &p.regions, 32), vec![Ok(big.clone())]);
        assert_eq!(send(&mut p.stx, &p.regions, std::slice::from_ref(&big)), 1);
        assert_eq!(recv(&mut p.crx, &p.regions, 32), vec![Ok(big.clone())]);
        // Longer than the receiver's room: dropped, its slots consumed.
        let huge = frame(64 * 4, 1);
        assert_eq!(send(&mut p.ctx, &p.regions, std::slice::from_ref(&huge)), 1);
        assert_eq!(recv(&mut p.srx, &p.regions, 32), vec![Err(Taken::TooLong)]);
        assert_eq!(p.srx.pending(), Ok(0));
        // Longer than the whole ring: cannot be sent at all.
        let ctx = &mut p.ctx;
        ctx.begin().unwrap();
        assert_eq!(ctx.push(&p.regions, &frame(64 * 9, 0)), Push::Full);
    }

    #[test]
    fn an_incomplete_chain_waits_for_its_end() {
        let mut p = pair();
        // Two slots written by hand, the first saying NEXT, only one published.
        let c2s = p.ctx.ring.clone();
        let d = p.ctx.bufs[0];
        p.regions.write_buf(&d, &[7u8; 64]);
        c2s.set_desc(
            0,
            Desc {
                flags: DESC_FLAG_NEXT,
                length: 64,
                ..d
            },
        );
        c2s.head().store(1, Ordering::Release);
        assert!(recv(&mut p.srx, &p.regions, 32).is_empty());
        let d1 = p.ctx.bufs[1];
        p.regions.write_buf(&d1, &[8u8; 10]);
        c2s.set_desc(
            1,
            Desc {
                flags: 0,
                length: 10,
                ..d1
            },
        );
        c2s.head().store(2, Ordering::Release);
        let got = recv(&mut p.srx, &p.regions, 32);
        let mut want = vec![7u8; 64];
        want.extend_from_slice(&[8u8; 10]);
        assert_eq!(got, vec![Ok(want)]);
    }

    #[test]
    fn a_peer_that_breaks_the_rules_is_caught() {
        let mut p = pair();
        let c2s = p.ctx.ring.clone();
        // An index moved further than the ring holds.
        c2s.head().store(100, Ordering::Release);
        assert!(p.srx.pending().is_err());
        assert!(p.srx.begin().is_err());
        // A descriptor outside the region: that frame only.
        c2s.head().store(0, Ordering::Release);
        let mut q = RxQueue::new(c2s.clone(), Role::Server, Vec::new());
        c2s.set_desc(
            0,
            Desc {
                flags: 0,
                region: 0,
                length: 10,
                offset: u32::MAX - 4,
            },
        );
        c2s.set_desc(
            1,
            Desc {
                flags: 0,
                region: 9,
                length: 10,
                offset: 0,
            },
        );
        c2s.head().store(2, Ordering::Release);
        assert_eq!(
            recv(&mut q, &p.regions, 8),
            vec![Err(Taken::BadDesc), Err(Taken::BadDesc)]
        );
        // A client that posts more empty buffers than the ring has.
        let s2c = p.stx.ring.clone();
        s2c.head().store(
            s2c.tail().load(Ordering::Relaxed).wrapping_add(9),
            Ordering::Release,
        );
        assert!(p.stx.begin().is_err());
    }

    #[test]
    fn a_server_that_moves_the_clients_head_cannot_make_it_repost_what_waits() {
        let mut p = pair();
        // The server fills two of the eight posted slots; the client takes them.
        assert_eq!(
            send(&mut p.stx, &p.regions, &[frame(20, 1), frame(20, 2)]),
            2
        );
        let s2c = p.crx.ring.clone();
        // Slot 3 is posted and waiting; the server has written into it already.
        let mut d = s2c.desc(3);
        d.length = 33;
        s2c.set_desc(3, d);
        // And makes up the client's own index.
        s2c.head().store(1000, Ordering::Relaxed);
        assert_eq!(recv(&mut p.crx, &p.regions, 32).len(), 2);
        // Only the two slots taken were posted again: slot 3 is as the server left it.
        assert_eq!(s2c.head().load(Ordering::Relaxed), 10);
        assert_eq!(s2c.desc(3).length, 33);
        assert_eq!(s2c.desc(8 + 1), p.crx.bufs[1]);
    }

    #[test]
    fn interrupts_are_asked_for_only_on_the_way_to_sleep() {
        let mut p = pair();
        assert!(!p.ctx.commit(), "the server polls: no signal wanted");
        assert!(!p.srx.arm(), "nothing pending");
        p.ctx.begin().unwrap();
        assert_eq!(p.ctx.push(&p.regions, &frame(20, 0)), Push::Sent);
        assert!(p.ctx.commit(), "the server sleeps: signal it");
        assert!(p.srx.arm(), "a frame arrived: do not sleep");
        p.srx.disarm();
        assert!(!p.ctx.commit());
    }
}
