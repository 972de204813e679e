//! A provided-buffer ring: pool buffers lent to the kernel in advance, so one multishot
//! receive request can complete many times, each time filling a buffer the kernel picks.
//!
//! ```text
//!  memory (page aligned, entries × 16 bytes), shared with the kernel:
//!  ┌──────────────┬──────────────┬─────┐
//!  │ addr len bid │ addr len bid │ ... │   the kernel consumes from its head,
//!  └──────────────┴──────────────┴─────┘   we add at `tail` (u16 at byte 14)
//!  lent[bid]: the packet handle whose buffer the entry points to
//! ```
//!
//! The ring owns what it lends: a packet goes in with [`BufRing::lend`] and comes out
//! only through [`BufRing::take`] with the buffer id of a completion, or when the ring
//! is torn down. Rings live inside the worker's [`crate::uring::Uring`], which
//! registers them and unregisters them before their memory is freed; a backend holds
//! only an [`RxRing`] name for its ring, so safe code cannot free lent memory or forget
//! to unregister it.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

use crate::pool::{Pkt, Pool, HEADROOM};

const ENTRY: usize = 16;

/// A backend's name for one provided-buffer ring of its worker. Not `Clone`: handing it
/// back to [`crate::backend::Io::release_rx_ring`] ends the ring.
#[derive(Debug, PartialEq, Eq)]
pub struct RxRing {
    pub(crate) slot: usize,
    pub(crate) bgid: u16,
    pub(crate) entries: u16,
}

impl RxRing {
    /// The buffer group id to put in requests.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }
    /// Number of entries (the most buffers it can lend).
    pub fn entries(&self) -> u16 {
        self.entries
    }
}

/// The ring's memory, our producer index, and the packets lent.
pub(crate) struct BufRing {
    mem: *mut u8,
    layout: Layout,
    entries: u16,
    tail: u16,
    bgid: u16,
    lent: Box<[Option<Pkt>]>,
    free_bids: Vec<u16>,
}

// SAFETY: the memory is owned by this struct; the kernel reads it only while the ring is
// registered with the io_uring of the worker that owns the `Uring` holding this struct,
// and that thread alone touches it.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Allocates a ring of `entries` (a power of two, at most 32768) for group `bgid`.
    pub(crate) fn new(entries: u16, bgid: u16) -> Option<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 {
            return None;
        }
        let layout = Layout::from_size_align(usize::from(entries) * ENTRY, 4096).ok()?;
        // SAFETY: the layout has a non-zero size.
        let mem = unsafe { alloc_zeroed(layout) };
        if mem.is_null() {
            return None;
        }
        Some(BufRing {
            mem,
            layout,
            entries,
            tail: 0,
            bgid,
            lent: (0..entries).map(|_| None).collect(),
            free_bids: (0..entries).rev().collect(),
        })
    }

    pub(crate) fn addr(&self) -> u64 {
        self.mem as u64
    }

    pub(crate) fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Packets lent now.
    pub(crate) fn lent(&self) -> usize {
        usize::from(self.entries) - self.free_bids.len()
    }

    /// Lends an exclusively owned packet's buffer from `HEADROOM - lead` on, for at most
    /// `len` bytes (not visible to the kernel until [`BufRing::publish`]). Gives the
    /// packet back when the ring is full, the packet is shared, or the span does not fit.
    pub(crate) fn lend(
        &mut self,
        pool: &Pool,
        mut pkt: Pkt,
        lead: usize,
        len: u32,
    ) -> Result<(), Pkt> {
        let fits = lead <= HEADROOM
            && (HEADROOM - lead).saturating_add(len as usize) <= pool.capacity(&pkt);
        let Some(base) = pool.buf_ptr(&mut pkt).filter(|_| fits) else {
            return Err(pkt);
        };
        let Some(bid) = self.free_bids.pop() else {
            return Err(pkt);
        };
        let i = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `i < entries`, so the 16-byte entry lies inside our allocation. The
        // fields are written one by one so that entry 0's last two bytes (the shared
        // tail) are never overwritten. The address is inside the packet's buffer (`fits`),
        // which the ring now owns: nothing else reads or writes it until `take`.
        unsafe {
            let e = self.mem.add(i * ENTRY);
            e.cast::<u64>().write(base.add(HEADROOM - lead) as u64);
            e.add(8).cast::<u32>().write(len);
            e.add(12).cast::<u16>().write(bid);
        }
        self.lent[usize::from(bid)] = Some(pkt);
        self.tail = self.tail.wrapping_add(1);
        Ok(())
    }

    /// Makes the buffers lent so far visible to the kernel.
    pub(crate) fn publish(&self) {
        // SAFETY: the tail lives at bytes 14..16 of the allocation, is 2-byte aligned
        // (the base is page aligned), and is only ever accessed atomically.
        let tail = unsafe { &*(self.mem.add(14).cast::<AtomicU16>()) };
        // Release: pairs with the kernel's acquire of the tail; the entries written above
        // are visible before it.
        tail.store(self.tail, Ordering::Release);
    }

    /// The packet whose buffer the kernel filled, by the buffer id of its completion.
    pub(crate) fn take(&mut self, bid: u16) -> Option<Pkt> {
        let p = self.lent.get_mut(usize::from(bid))?.take()?;
        self.free_bids.push(bid);
        Some(p)
    }

    /// Every packet still lent (once the kernel no longer reads the ring).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Pkt> + '_ {
        self.free_bids.clear();
        self.free_bids.extend((0..self.entries).rev());
        self.lent.iter_mut().filter_map(Option::take)
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout. The owning `Uring` unregisters the
        // ring (or has closed the io_uring) before dropping it.
        unsafe { dealloc(self.mem, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_tail_do_not_collide() {
        let pool = Pool::new(8, 64).unwrap();
        let mut r = BufRing::new(4, 1).unwrap();
        for _ in 0..4 {
            assert!(r.lend(&pool, pool.alloc().unwrap(), 0, 32).is_ok());
        }
        let extra = pool.alloc().unwrap();
        let extra = r.lend(&pool, extra, 0, 32).unwrap_err();
        pool.free(extra);
        // The kernel used bid 2; lend again, wrapping onto entry 0.
        let p = r.take(2).unwrap();
        assert!(r.take(2).is_none(), "a bid comes back once");
        assert!(r.lend(&pool, p, 0, 32).is_ok());
        r.publish();
        // SAFETY: reading back our own allocation.
        let (tail, bid0) = unsafe {
            (
                *(r.mem.add(14) as *const u16),
                *(r.mem.add(12) as *const u16),
            )
        };
        assert_eq!(tail, 5);
        assert_eq!(bid0, 2, "the fifth lend wrapped onto entry 0");
        assert_eq!(r.lent(), 4);
        for p in r.drain().collect::<Vec<_>>() {
            pool.free(p);
        }
        assert_eq!(pool.free_count(), 8);
        assert!(BufRing::new(3, 1).is_none());
    }

    #[test]
    fn shared_or_oversized_buffers_are_not_lent() {
        let pool = Pool::new(2, 64).unwrap();
        let mut r = BufRing::new(2, 1).unwrap();
        let p = pool.alloc().unwrap();
        let p = r.lend(&pool, p, 0, pool.buf_size() as u32).unwrap_err();
        let p = r.lend(&pool, p, HEADROOM + 1, 8).unwrap_err();
        let mut hs: Vec<Pkt> = pool.fanout(p, 2).collect();
        let q = r.lend(&pool, hs.pop().unwrap(), 0, 8).unwrap_err();
        pool.free(q);
        pool.free(hs.pop().unwrap());
        assert_eq!(r.lent(), 0);
        assert_eq!(pool.free_count(), 2);
    }
}
