//! A provided-buffer ring: buffers handed to the kernel in advance, so one multishot
//! receive request can complete many times, each time filling a buffer the kernel picks.
//!
//! ```text
//!  memory (page aligned, entries × 16 bytes), shared with the kernel:
//!  ┌──────────────┬──────────────┬─────┐
//!  │ addr len bid │ addr len bid │ ... │   the kernel consumes from its head,
//!  └──────────────┴──────────────┴─────┘   we add at `tail` (u16 at byte 14)
//! ```
//!
//! The buffer id (`bid`) is ours: a backend uses it as the index of the pool buffer it
//! lent, and gets it back in the completion's flags.
#![allow(unsafe_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

const ENTRY: usize = 16;

/// The ring's memory and our producer index.
pub struct BufRing {
    mem: *mut u8,
    layout: Layout,
    entries: u16,
    tail: u16,
    bgid: u16,
}

// SAFETY: the memory is owned by this struct; the kernel reads it only while the ring is
// registered with the io_uring of the worker that owns the backend holding this struct.
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
        })
    }

    /// The buffer group id to put in requests.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Number of entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub(crate) fn addr(&self) -> u64 {
        self.mem as u64
    }

    /// Adds a buffer (not visible to the kernel until [`BufRing::publish`]).
    ///
    /// # Safety
    /// `addr..addr+len` must stay valid and untouched by us until the kernel returns the
    /// buffer in a completion (or the ring is unregistered).
    pub unsafe fn push(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let i = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `i < entries`, so the 16-byte entry lies inside our allocation. The
        // fields are written one by one so that entry 0's last two bytes (the shared
        // tail) are never overwritten.
        unsafe {
            let e = self.mem.add(i * ENTRY);
            e.cast::<u64>().write(addr as u64);
            e.add(8).cast::<u32>().write(len);
            e.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers pushed so far visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail lives at bytes 14..16 of the allocation, is 2-byte aligned
        // (the base is page aligned), and is only ever accessed atomically.
        let tail = unsafe { &*(self.mem.add(14).cast::<AtomicU16>()) };
        // Release: pairs with the kernel's acquire of the tail; the entries written above
        // are visible before it.
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the owner unregistered the ring
        // (or the io_uring is gone) before dropping it.
        unsafe { dealloc(self.mem, self.layout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_tail_do_not_collide() {
        let mut r = BufRing::new(4, 1).unwrap();
        let mut bufs = [[0u8; 8]; 5];
        for (i, b) in bufs.iter_mut().enumerate() {
            // SAFETY: the buffers outlive the ring in this test; no kernel is involved.
            unsafe { r.push(b.as_mut_ptr(), 8, i as u16) };
        }
        r.publish();
        // SAFETY: reading back our own allocation.
        let (tail, bid0) = unsafe {
            (
                *(r.mem.add(14) as *const u16),
                *(r.mem.add(12) as *const u16),
            )
        };
        assert_eq!(tail, 5);
        assert_eq!(bid0, 4, "the fifth push wrapped onto entry 0");
        assert!(BufRing::new(3, 1).is_none());
    }
}
